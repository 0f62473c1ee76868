//! Dropout with a cheaper mask on a CPU.

use coconut_torch_ext::dropout_mask;
use tch::Tensor;

/// `x` with each element zeroed with probability `p` and the rest scaled by 1 / (1 - p) when
/// `train`; `x` itself otherwise. The same distribution as `Tensor::dropout`.
///
/// On a CPU, LibTorch draws each element's keep-or-drop as a Bernoulli of a 64-bit draw
/// (two steps of its Mersenne twister and a double-precision uniform); docs/BENCHMARKS.md
/// ("Where the time goes") measures its share of a training step. A single-precision
/// uniform takes one 32-bit draw: the mask is [`dropout_mask`], `x` times it one operator,
/// and so is the backward pass. On a GPU the fused kernel stays.
pub fn dropout(x: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p == 0.0 {
        return x.shallow_clone();
    }
    if x.device().is_cuda() {
        return x.dropout(p, train);
    }
    x * dropout_mask(x, p).expect("a dropout mask")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn drops_a_fraction_p_and_keeps_the_expectation() {
        tch::manual_seed(0);
        let x = Tensor::ones([1000, 1000], (Kind::Float, Device::Cpu));
        let y = dropout(&x, 0.1, true);
        let dropped = y.eq(0.0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        assert!((dropped - 0.1).abs() < 0.002, "dropped {dropped}");
        let kept: Vec<f32> = Vec::try_from(y.masked_select(&y.ne(0.0))).unwrap();
        assert!(kept.iter().all(|&v| (v - 1.0 / 0.9).abs() < 1e-6), "kept values scaled");
        let mean = y.mean(Kind::Float).double_value(&[]);
        assert!((mean - 1.0).abs() < 0.003, "mean {mean}");
        assert!(dropout(&x, 0.1, false).equal(&x) && dropout(&x, 0.0, true).equal(&x));
        // Gradients flow through the kept elements only, with the same scale.
        let leaf = x.set_requires_grad(true);
        let y = dropout(&leaf, 0.5, true);
        y.sum(Kind::Float).backward();
        assert!(leaf.grad().equal(&(y.detach() / &leaf.detach())));
    }
}
