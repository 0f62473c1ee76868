//! What every architecture's attention shares: the additive biases that encode causality and
//! padding, and softmax attention over keys and values held in one chunk or several, with
//! as many query heads per key-value head as the architecture groups (GQA).

use coconut_torch_ext::{chunked_attention, SdpBackend};
use tch::{Kind, Tensor};

use crate::kv_cache::KeysValues;

/// Builds the additive attention bias for a whole sequence: causal plus key padding.
///
/// `attention_mask` is (B, T) with 1 for real tokens and 0 for padding. The result is
/// (B, 1, T, T): 0 where query t may attend to key s (s <= t and s is real), a large negative
/// number elsewhere. A large finite number rather than -inf keeps the softmax of a padded
/// query row (which sees no real key) finite, so padding never produces NaN.
pub fn causal_bias(attention_mask: &Tensor, kind: Kind) -> Tensor {
    let (_, t) = attention_mask.size2().expect("attention_mask must be (B, T)");
    let device = attention_mask.device();
    let causal = Tensor::ones([t, t], (Kind::Bool, device)).tril(0); // (T, T)
    let keys = attention_mask.to_kind(Kind::Bool).unsqueeze(1).unsqueeze(1); // (B, 1, 1, T)
    let allowed = keys.logical_and(&causal); // (B, 1, T, T)
    Tensor::zeros(allowed.size(), (kind, device)).masked_fill(&allowed.logical_not(), NEG_INF)
}

/// The bias for one query column that may see every real key (incremental decoding):
/// `attention_mask` is (B, T_keys); the result is (B, 1, 1, T_keys).
pub fn padding_bias(attention_mask: &Tensor, kind: Kind) -> Tensor {
    let masked = attention_mask.eq(0).unsqueeze(1).unsqueeze(1); // (B, 1, 1, Tk)
    Tensor::zeros(masked.size(), (kind, attention_mask.device())).masked_fill(&masked, NEG_INF)
}

/// Whether [`attend`] has switched cuDNN attention off (see [`disable_cudnn_attention`]).
static CUDNN_ATTENTION_OFF: std::sync::Once = std::sync::Once::new();

/// Large enough to zero a softmax weight, small enough not to overflow f32 or bf16.
const NEG_INF: f64 = -1e9;

/// softmax(q K^T / sqrt(hs) + bias) V for queries `q` (B, nh, Tq, hs) over keys and values
/// held in `chunks` ((B, n_kv, T_chunk, hs) each), where query head h reads key-value head
/// h / (nh / n_kv), with dropout on the probabilities. `bias` is (B, 1, Tq, T_all) in the
/// kind of `q`. Returns the heads merged, (B, Tq, nh * hs).
///
/// On a GPU, LibTorch's fused kernel (no (Tq, T) score matrix in memory, one launch; the
/// memory-efficient kernel takes dropout) is worth a copy of the chunks into one. On a CPU
/// its fused kernel takes neither dropout nor chunks, and a copy of the chunks into one
/// costs as much as the products: there the chunks are read side by side by
/// [`chunked_attention`], one autograd function.
fn attend(q: &Tensor, chunks: &[KeysValues], bias: &Tensor, dropout: f64) -> Tensor {
    let nh = q.size()[1];
    if q.device().is_cuda() {
        CUDNN_ATTENTION_OFF.call_once(|| {
            if !disable_cudnn_attention() {
                eprintln!("warning: cuDNN attention stays on: bf16 attention will be slow");
            }
        });
    }
    let n_kv = chunks.first().expect("at least one chunk").0.size()[1];
    let sdpa = |k: &Tensor, v: &Tensor| {
        let y = Tensor::scaled_dot_product_attention(
            q,
            k,
            v,
            Some(bias),
            dropout,
            false,
            None,
            nh != n_kv,
        );
        merge_heads(&y)
    };
    match (chunks, q.device().is_cuda()) {
        ([(k, v)], true) => sdpa(k, v),
        (_, true) => {
            let k = Tensor::cat(&chunks.iter().map(|(k, _)| k).collect::<Vec<_>>(), 2);
            let v = Tensor::cat(&chunks.iter().map(|(_, v)| v).collect::<Vec<_>>(), 2);
            sdpa(&k, &v)
        }
        ([(k, v)], false) if dropout == 0.0 => sdpa(k, v),
        _ => chunked_attention(q, chunks, bias, dropout).expect("attention over the chunks"),
    }
}

/// Joins heads (B, n, T, hs) back into (B, T, n * hs).
fn merge_heads(y: &Tensor) -> Tensor {
    let (b, n, t, hs) = y.size4().expect("(B, n, T, hs)");
    y.transpose(1, 2).reshape([b, t, n * hs])
}

/// Switches off LibTorch's cuDNN attention kernel; returns whether it could. On recent GPUs
/// `scaled_dot_product_attention` prefers cuDNN for bf16, and cuDNN builds an execution plan
/// for every new sequence length, as at every decode step and every latent pass (see
/// docs/BENCHMARKS.md for the H200 figures); the memory-efficient kernel chosen without it
/// needs no plan. The first attention on a GPU calls this (once per process).
pub fn disable_cudnn_attention() -> bool {
    coconut_torch_ext::set_sdp_backend(SdpBackend::CuDnn, false).is_ok()
}

/// Whether LibTorch may choose cuDNN's attention kernel (see [`disable_cudnn_attention`]);
/// `None` when the setting cannot be read.
pub fn cudnn_attention_enabled() -> Option<bool> {
    coconut_torch_ext::sdp_backend_enabled(SdpBackend::CuDnn).ok()
}

/// One layer's attention step shared by every architecture: the new keys and values `k`,
/// `v` (B, n_kv, T, hs) of all T columns join the layer's cache, and the queries `q`
/// (B, nh, Tq, hs) of the last Tq columns attend to everything held. `bias` is the pass's
/// (B, 1, T, T_past + T) bias; `dropout` applies to the attention probabilities (0 outside
/// train mode). Returns (B, Tq, nh * hs).
pub(crate) fn cached_attention(
    q: &Tensor,
    (k, v): KeysValues,
    layer: usize,
    cache: Option<&mut crate::KvCache>,
    bias: &Tensor,
    dropout: f64,
) -> Tensor {
    let tq = q.size()[2];
    // With a cache, the new keys and values join those of every earlier position.
    let chunks = match cache {
        Some(cache) => cache.append(layer, k, v),
        None => vec![(k, v)],
    };
    // (B, 1, Tq, T_past + T) (a bias broadcast over queries stays so)
    let rows = bias.size()[2];
    let bias = if tq < rows { bias.narrow(2, rows - tq, tq) } else { bias.shallow_clone() };
    debug_assert_eq!(bias.kind(), q.kind(), "the bias is built in the model's kind");
    attend(q, &chunks, &bias, dropout) // (B, Tq, nh * hs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cudnn_attention_is_switched_off() {
        assert!(cudnn_attention_enabled().is_some(), "the setting is found and read");
        assert!(disable_cudnn_attention());
        assert_eq!(cudnn_attention_enabled(), Some(false));
    }
}
