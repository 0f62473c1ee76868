//! Gradients with a home of their own: an accumulator that backward passes add into and
//! the optimizer takes from. Between the two is where data-parallel training reduces them
//! across ranks, and where gradient clipping reads their global norm.
//!
//! Gradients live here rather than in each parameter's `.grad`: they exist from the first
//! backward pass of an optimizer step to the update and no longer, so the next forward pass
//! never shares memory with a model-sized set of stale gradients (PyTorch's
//! `zero_grad(set_to_none=True)`).

use std::collections::BTreeMap;

use tch::Tensor;

/// The summed gradients of a set of named parameters.
#[derive(Debug)]
pub struct Gradients {
    params: BTreeMap<String, Tensor>,
    sums: BTreeMap<String, Tensor>,
}

impl Gradients {
    /// An empty accumulator for `params` (shallow clones of the model's variables).
    pub fn new(params: impl IntoIterator<Item = (String, Tensor)>) -> Self {
        Self { params: params.into_iter().collect(), sums: BTreeMap::new() }
    }

    /// Backpropagates `loss` and adds the parameters' gradients to the sums. A parameter
    /// the loss does not reach gets none (and is not updated, as in PyTorch).
    pub fn backward(&mut self, loss: &Tensor) {
        self.backward_and_grads(loss, &[], false);
    }

    /// [`Gradients::backward`] that also returns the gradients of `others`, tensors of the
    /// graph that are not parameters (undefined where the loss does not reach one). With
    /// `keep_graph` the graph can be walked again from another root.
    pub fn backward_and_grads(
        &mut self,
        loss: &Tensor,
        others: &[&Tensor],
        keep_graph: bool,
    ) -> Vec<Tensor> {
        let inputs: Vec<&Tensor> = self.params.values().chain(others.iter().copied()).collect();
        let mut grads = Tensor::run_backward(&[loss], &inputs, keep_graph, false);
        let others_grads = grads.split_off(self.params.len());
        tch::no_grad(|| {
            for (name, g) in self.params.keys().zip(grads) {
                if !g.defined() {
                    continue;
                }
                match self.sums.get_mut(name) {
                    Some(sum) => {
                        let _ = sum.g_add_(&g);
                    }
                    None => {
                        self.sums.insert(name.clone(), g);
                    }
                }
            }
        });
        others_grads
    }

    /// The sums so far, by parameter name.
    pub fn sums(&self) -> &BTreeMap<String, Tensor> {
        &self.sums
    }

    /// The global L2 norm of the sums (0 when there are none).
    pub fn norm(&self) -> f64 {
        tch::no_grad(|| {
            let norms: Vec<Tensor> = self.sums.values().map(Tensor::norm).collect();
            if norms.is_empty() {
                return 0.0;
            }
            Tensor::stack(&norms, 0).norm().double_value(&[])
        })
    }

    /// Scales the sums by `min(1, max_norm / (norm + 1e-6))`, as PyTorch's
    /// `clip_grad_norm_` does, without reading the norm on the host (on a GPU a read would
    /// wait for every queued kernel).
    pub fn clip_norm(&mut self, max_norm: f64) {
        tch::no_grad(|| {
            let norms: Vec<Tensor> = self.sums.values().map(Tensor::norm).collect();
            if norms.is_empty() {
                return;
            }
            let total = Tensor::stack(&norms, 0).norm(); // a scalar on the device
            let scale = (total + 1e-6).reciprocal().g_mul_scalar(max_norm).clamp_max(1.0);
            for g in self.sums.values_mut() {
                let _ = g.g_mul_(&scale);
            }
        });
    }

    /// Hands the sums over (to the optimizer) and starts afresh.
    pub fn take(&mut self) -> BTreeMap<String, Tensor> {
        std::mem::take(&mut self.sums)
    }

    /// Drops the sums.
    pub fn clear(&mut self) {
        self.sums.clear();
    }

    /// Every parameter in name order, with its shape and whether it has a sum: the layout
    /// of [`Gradients::flatten`].
    pub fn layout(&self) -> Vec<(String, Vec<i64>, bool)> {
        self.params
            .iter()
            .map(|(name, p)| (name.clone(), p.size(), self.sums.contains_key(name)))
            .collect()
    }

    /// Every parameter's sum (zeros where it has none) in one contiguous f32 tensor on the
    /// parameters' device, in the order of `layout`.
    pub fn flatten(&self, layout: &[(String, Vec<i64>, bool)]) -> Tensor {
        tch::no_grad(|| {
            let parts: Vec<Tensor> = layout
                .iter()
                .map(|(name, _, _)| match self.sums.get(name) {
                    Some(sum) => sum.to_kind(tch::Kind::Float).flatten(0, -1),
                    None => self.params[name].zeros_like().to_kind(tch::Kind::Float).flatten(0, -1),
                })
                .collect();
            Tensor::cat(&parts, 0)
        })
    }

    /// The sums read back from `flat` (laid out by `layout`), for the parameters `present`
    /// marks; the others have none.
    pub fn unflatten(
        &mut self,
        layout: &[(String, Vec<i64>, bool)],
        flat: &Tensor,
        present: &[bool],
    ) {
        self.sums.clear();
        let mut offset = 0;
        for ((name, size, _), &has) in layout.iter().zip(present) {
            let n: i64 = size.iter().product();
            if has {
                let kind = self.params[name].kind();
                self.sums.insert(
                    name.clone(),
                    flat.narrow(0, offset, n).view(size.as_slice()).to_kind(kind),
                );
            }
            offset += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coconut_testing::Tolerance;
    use tch::Kind;

    #[test]
    fn backward_passes_add_up_and_clipping_bounds_the_norm() {
        let w = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let mut grads = Gradients::new([("w".to_string(), w.shallow_clone())]);
        grads.backward(&(&w * &w).sum(Kind::Float)); // 2w
        grads.backward(&w.sum(Kind::Float)); // + 1
        let expected = Tensor::from_slice(&[3.0f32, -3.0]);
        let tol = Tolerance::scaled(1e-6);
        coconut_model::testing::assert_close(&grads.sums()["w"], &expected, tol, "sum");
        coconut_testing::assert_close(grads.norm(), 18f64.sqrt(), tol, "norm");
        grads.clip_norm(1.0);
        coconut_testing::assert_close(grads.norm(), 1.0, Tolerance::scaled(1e-5), "clipped");
        let clipped = grads.sums()["w"].shallow_clone().copy();
        grads.clip_norm(2.0); // already within: unchanged
        coconut_model::testing::assert_close(&grads.sums()["w"], &clipped, tol, "unclipped");
        assert_eq!(grads.take().len(), 1);
        assert!(grads.sums().is_empty());
    }
}
