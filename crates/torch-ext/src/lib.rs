//! What tch does not expose, written in C++ against the LibTorch that tch links
//! (`csrc/torch_ext.cpp`, built with torch-sys's include folders and ABI): LibTorch's fused
//! AdamW kernel, the switches of the attention backends, and a counter of the operators the
//! dispatcher runs. The C++ makes dispatcher calls only, so the same crate builds against the
//! CPU and the CUDA LibTorch without a CUDA toolkit.

#![warn(missing_docs)]

use std::ffi::{c_char, CStr};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tch::{TchError, Tensor};

mod ffi {
    use std::ffi::c_char;

    /// `at::Tensor*`, as tch hands its tensors to C++.
    pub type TensorPtr = *const std::ffi::c_void;

    extern "C" {
        pub fn torch_ext_free_error(message: *mut c_char);
        pub fn torch_ext_fused_adamw(
            lists: *const [*const TensorPtr; 5],
            n: usize,
            step: *const super::AdamWStep,
        ) -> *mut c_char;
        pub fn torch_ext_set_sdp_backend(backend: i32, enabled: bool) -> *mut c_char;
        pub fn torch_ext_sdp_backend_enabled(backend: i32, enabled: *mut bool) -> *mut c_char;
        pub fn torch_ext_op_counter_start(names: bool, handle: *mut u64) -> *mut c_char;
        pub fn torch_ext_op_counter_stop(handle: u64) -> *mut c_char;
        pub fn torch_ext_op_count() -> u64;
        pub fn torch_ext_op_names() -> *mut c_char;
        pub fn torch_ext_dropout_mask(
            like: TensorPtr,
            p: f64,
            out: *mut *mut torch_sys::C_tensor,
        ) -> *mut c_char;
        pub fn torch_ext_chunked_attention(
            q: TensorPtr,
            keys: *const TensorPtr,
            values: *const TensorPtr,
            n: usize,
            bias: TensorPtr,
            dropout: f64,
            out: *mut *mut torch_sys::C_tensor,
        ) -> *mut c_char;
    }
}

/// Takes a message the C++ side allocated (or none) and frees it.
fn take_message(message: *mut c_char) -> Option<String> {
    if message.is_null() {
        return None;
    }
    // SAFETY: a non-null message is a NUL-terminated string from `copy_message`, owned here.
    let text = unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned();
    // SAFETY: freed once, by the function that pairs with its allocation.
    unsafe { ffi::torch_ext_free_error(message) };
    Some(text)
}

/// `Ok` for a null message, the C++ exception's text otherwise.
fn check(message: *mut c_char) -> Result<(), TchError> {
    match take_message(message) {
        None => Ok(()),
        Some(text) => Err(TchError::Torch(text)),
    }
}

fn pointers(tensors: &[&Tensor]) -> Vec<ffi::TensorPtr> {
    tensors.iter().map(|t| t.as_ptr().cast()).collect()
}

/// The hyperparameters of one AdamW update (PyTorch's `AdamW`, decoupled weight decay).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)] // read by the C++ side as `AdamWStep`
pub struct AdamWStep {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Decoupled weight decay: parameters are first scaled by `1 - lr * weight_decay`.
    pub weight_decay: f64,
    /// Added to the second moment's root.
    pub eps: f64,
}

/// One AdamW update of every `params[i]` from `grads[i]`, with the moments `exp_avgs[i]` and
/// `exp_avg_sqs[i]`, in one call of LibTorch's fused kernel (`_fused_adamw_`, CPU and CUDA):
/// a single operator however many tensors there are. `steps[i]` is the f32 step count (on
/// the parameters' device) after this update's increment; it sets the bias corrections.
/// The lists have one length; each entry's tensors share shape, kind and device.
pub fn fused_adamw(
    params: &[&Tensor],
    grads: &[&Tensor],
    exp_avgs: &[&Tensor],
    exp_avg_sqs: &[&Tensor],
    steps: &[&Tensor],
    step: AdamWStep,
) -> Result<(), TchError> {
    let n = params.len();
    if [grads.len(), exp_avgs.len(), exp_avg_sqs.len(), steps.len()].iter().any(|&l| l != n) {
        return Err(TchError::Shape("fused_adamw: lists of different lengths".to_string()));
    }
    let (p, g, m, v, s) = (
        pointers(params),
        pointers(grads),
        pointers(exp_avgs),
        pointers(exp_avg_sqs),
        pointers(steps),
    );
    let lists = [p.as_ptr(), g.as_ptr(), m.as_ptr(), v.as_ptr(), s.as_ptr()];
    // SAFETY: every pointer is a live tensor of tch's for the duration of the call (each list
    // holds `n`); the kernel writes the parameters and moments in place, which the caller
    // owns.
    check(unsafe { ffi::torch_ext_fused_adamw(&lists, n, &step) })
}

/// A dropout mask shaped and typed like `like`: each element `1 / (1 - p)` with probability
/// `1 - p`, else 0, drawn from torch's generator as one f32 uniform per element. On a CPU the
/// draw becomes the mask in one loop (three operators in all, where comparing, casting and
/// scaling with tensor operators takes about fifteen).
pub fn dropout_mask(like: &Tensor, p: f64) -> Result<Tensor, TchError> {
    let mut out = std::ptr::null_mut();
    // SAFETY: `like` is a live tensor; `out` receives a tensor allocated with `new`, which
    // tch takes over and frees.
    check(unsafe { ffi::torch_ext_dropout_mask(like.as_ptr().cast(), p, &mut out) })?;
    // SAFETY: on success `out` is a new tensor owned by nobody else.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// softmax(q K^T / sqrt(hs) + bias) V for queries `q` (B, nh, Tq, hs) over keys and values
/// held in `chunks` ((B, n_kv, T_j, hs) each, read side by side, never concatenated), where
/// query head h reads key-value head h / (nh / n_kv), with dropout `p` on the probabilities
/// (the mask drawn from torch's generator). `bias` is (B, 1, Tq, T), T the chunks' total, in
/// `q`'s kind. Returns the heads merged, (B, Tq, nh * hs).
///
/// One autograd function in C++ (`csrc/torch_ext.cpp`): its backward pass computes the
/// gradients of `q` and of every chunk with the few batched products they need, where the
/// same attention written with tensor operations records a dozen nodes and their views.
pub fn chunked_attention(
    q: &Tensor,
    chunks: &[(Tensor, Tensor)],
    bias: &Tensor,
    dropout: f64,
) -> Result<Tensor, TchError> {
    if chunks.is_empty() {
        return Err(TchError::Shape("chunked_attention: no chunk of keys and values".into()));
    }
    let keys: Vec<ffi::TensorPtr> = chunks.iter().map(|(k, _)| k.as_ptr().cast()).collect();
    let values: Vec<ffi::TensorPtr> = chunks.iter().map(|(_, v)| v.as_ptr().cast()).collect();
    let mut out = std::ptr::null_mut();
    // SAFETY: every pointer is a live tensor of tch's for the duration of the call; `out`
    // receives a tensor allocated with `new`, which tch takes over and frees.
    check(unsafe {
        ffi::torch_ext_chunked_attention(
            q.as_ptr().cast(),
            keys.as_ptr(),
            values.as_ptr(),
            chunks.len(),
            bias.as_ptr().cast(),
            dropout,
            &mut out,
        )
    })?;
    // SAFETY: on success `out` is a new tensor owned by nobody else.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// The kernels `scaled_dot_product_attention` chooses among.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdpBackend {
    /// FlashAttention (CUDA; also LibTorch's CPU kernel without dropout).
    Flash,
    /// The memory-efficient kernel (CUDA), which takes dropout.
    MemoryEfficient,
    /// The composite of ordinary operators.
    Math,
    /// cuDNN's kernel (CUDA).
    CuDnn,
}

impl SdpBackend {
    fn code(self) -> i32 {
        match self {
            SdpBackend::Flash => 0,
            SdpBackend::MemoryEfficient => 1,
            SdpBackend::Math => 2,
            SdpBackend::CuDnn => 3,
        }
    }
}

/// Allows or forbids `backend` to every later `scaled_dot_product_attention` of the process.
pub fn set_sdp_backend(backend: SdpBackend, enabled: bool) -> Result<(), TchError> {
    // SAFETY: sets a flag of LibTorch's global context.
    check(unsafe { ffi::torch_ext_set_sdp_backend(backend.code(), enabled) })
}

/// Whether `scaled_dot_product_attention` may choose `backend`.
pub fn sdp_backend_enabled(backend: SdpBackend) -> Result<bool, TchError> {
    let mut enabled = false;
    // SAFETY: reads a flag of LibTorch's global context into a live bool.
    check(unsafe { ffi::torch_ext_sdp_backend_enabled(backend.code(), &mut enabled) })?;
    Ok(enabled)
}

/// One op counter at a time: the count lives in one global of the C++ side.
static COUNTING: Mutex<()> = Mutex::new(());

/// Counts the operators the dispatcher runs for this thread from its start until it is
/// dropped: every `aten::` event the torch profiler would list, nested operators and those
/// of the backward passes this thread starts included.
///
/// Counters wait for each other (one runs at a time), and count nothing of other threads.
/// A counter is tied to the thread that started it.
pub struct OpCounter {
    handle: u64,
    _one_at_a_time: MutexGuard<'static, ()>,
}

impl OpCounter {
    /// Starts counting from zero.
    pub fn start() -> Result<Self, TchError> {
        Self::start_with(false)
    }

    /// Starts counting from zero, keeping each operator's count ([`OpCounter::by_name`]).
    pub fn start_by_name() -> Result<Self, TchError> {
        Self::start_with(true)
    }

    fn start_with(names: bool) -> Result<Self, TchError> {
        let guard = COUNTING.lock().unwrap_or_else(PoisonError::into_inner);
        let mut handle = 0;
        // SAFETY: registers a callback of the C++ side for this thread.
        check(unsafe { ffi::torch_ext_op_counter_start(names, &mut handle) })?;
        Ok(Self { handle, _one_at_a_time: guard })
    }

    /// The operators counted so far.
    pub fn count(&self) -> u64 {
        // SAFETY: reads an atomic.
        unsafe { ffi::torch_ext_op_count() }
    }

    /// Each operator's count so far, by name (empty unless started with
    /// [`OpCounter::start_by_name`]).
    pub fn by_name(&self) -> Vec<(String, u64)> {
        // SAFETY: returns a string owned by the caller (never null).
        let text = take_message(unsafe { ffi::torch_ext_op_names() }).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let (name, count) = line.split_once('\t')?;
                Some((name.to_string(), count.parse().ok()?))
            })
            .collect()
    }
}

impl Drop for OpCounter {
    fn drop(&mut self) {
        // SAFETY: removes the callback this counter registered, on its thread (a
        // `MutexGuard` field keeps the counter on the thread that made it).
        let _ = check(unsafe { ffi::torch_ext_op_counter_stop(self.handle) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn counts_every_dispatched_operator_forward_and_backward() {
        let x = Tensor::ones([2, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let counter = OpCounter::start_by_name().unwrap();
        let y = (&x * 2.0).sum(Kind::Float);
        let forward = counter.count();
        assert!(forward >= 2, "mul and sum at least: {forward}");
        y.backward();
        assert!(counter.count() > forward, "the backward pass runs operators too");
        let names = counter.by_name();
        assert!(names.iter().any(|(n, _)| n == "aten::mul"), "{names:?}");
        assert!(names.iter().all(|(n, _)| n.starts_with("aten::")), "{names:?}");
        assert_eq!(names.iter().map(|(_, c)| c).sum::<u64>(), counter.count());
        let counted = counter.count();
        drop(counter);
        let _ = &x * 3.0; // after the counter: not counted by the next one
        let next = OpCounter::start().unwrap();
        assert_eq!(next.count(), 0);
        let _ = &x + 1.0;
        assert!(next.count() >= 1 && counted > 0);
    }

    #[test]
    fn the_fused_update_is_pytorch_adamw() {
        // Two steps of AdamW (lr 0.1, betas (0.9, 0.99), eps 1e-8, weight decay 0.1) on
        // p = [1, -2] with gradients [0.5, 0.25] then [-1, 2], by the formula:
        // p <- p (1 - lr wd); m <- lerp(m, g, 1 - b1); v <- lerp(v, g^2, 1 - b2);
        // p <- p - lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps).
        let (lr, b1, b2, wd, eps) = (0.1f64, 0.9f64, 0.99f64, 0.1f64, 1e-8f64);
        let mut p = [1.0f64, -2.0];
        let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
        let params = Tensor::from_slice(&[1.0f32, -2.0]);
        let (exp_avg, exp_avg_sq) = (params.zeros_like(), params.zeros_like());
        let steps = Tensor::zeros([1], (Kind::Float, Device::Cpu));
        for (t, g) in [[0.5f64, 0.25], [-1.0, 2.0]].iter().enumerate() {
            let t = (t + 1) as i32;
            for i in 0..2 {
                p[i] *= 1.0 - lr * wd;
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                let denom = (v[i] / (1.0 - b2.powi(t))).sqrt() + eps;
                p[i] -= lr / (1.0 - b1.powi(t)) * m[i] / denom;
            }
            let grads = Tensor::from_slice(&[g[0] as f32, g[1] as f32]);
            let _ = steps.shallow_clone().g_add_scalar_(1.0);
            let step = AdamWStep { lr, beta1: b1, beta2: b2, weight_decay: wd, eps };
            fused_adamw(&[&params], &[&grads], &[&exp_avg], &[&exp_avg_sq], &[&steps], step)
                .unwrap();
        }
        let got: Vec<f32> = Vec::try_from(&params).unwrap();
        for (g, e) in got.iter().zip(p) {
            assert!((*g as f64 - e).abs() <= 1e-6 * e.abs(), "{got:?} against {p:?}");
        }
    }

    /// Attention over chunks against LibTorch's attention over the concatenated keys and
    /// values (grouped query heads, a padding bias), in output and in every gradient; with
    /// dropout, the dropped fraction of the probabilities.
    #[test]
    fn chunked_attention_is_attention_over_the_concatenated_chunks() {
        tch::manual_seed(1);
        let (b, nh, n_kv, tq, hs) = (2, 4, 2, 3, 8);
        let leaf = |shape: &[i64]| {
            Tensor::randn(shape, (Kind::Float, Device::Cpu)).set_requires_grad(true)
        };
        let q = leaf(&[b, nh, tq, hs]);
        let chunks = vec![
            (leaf(&[b, n_kv, 5, hs]), leaf(&[b, n_kv, 5, hs])),
            (leaf(&[b, n_kv, 1, hs]), leaf(&[b, n_kv, 1, hs])),
            (leaf(&[b, n_kv, 3, hs]), leaf(&[b, n_kv, 3, hs])),
        ];
        // The first key of row 1 is padding.
        let bias = Tensor::zeros([b, 1, tq, 9], (Kind::Float, Device::Cpu));
        let _ = bias.get(1).narrow(2, 0, 1).fill_(-1e9);
        let y = chunked_attention(&q, &chunks, &bias, 0.0).unwrap();
        assert_eq!(y.size(), [b, tq, nh * hs]);
        let k = Tensor::cat(&chunks.iter().map(|(k, _)| k).collect::<Vec<_>>(), 2);
        let v = Tensor::cat(&chunks.iter().map(|(_, v)| v).collect::<Vec<_>>(), 2);
        let expected =
            Tensor::scaled_dot_product_attention(&q, &k, &v, Some(&bias), 0.0, false, None, true)
                .transpose(1, 2)
                .reshape([b, tq, nh * hs]);
        let close = |a: &Tensor, e: &Tensor, what: &str| {
            let error = (a - e).abs().max().double_value(&[]);
            let size = e.abs().max().double_value(&[]);
            assert!(error <= 1e-5 * size.max(1e-6), "{what}: {error} off (size {size})");
        };
        close(&y, &expected, "output");
        let weights = Tensor::randn([b, tq, nh * hs], (Kind::Float, Device::Cpu));
        let mut inputs = vec![&q];
        inputs.extend(chunks.iter().flat_map(|(k, v)| [k, v]));
        let ours = Tensor::run_backward(&[(&y * &weights).sum(Kind::Float)], &inputs, false, false);
        let theirs =
            Tensor::run_backward(&[(&expected * &weights).sum(Kind::Float)], &inputs, false, false);
        for (i, (a, e)) in ours.iter().zip(&theirs).enumerate() {
            close(a, e, &format!("gradient of input {i}"));
        }
        // Dropout 0.5 on uniform probabilities over 9 keys: each kept one becomes 2/9.
        let flat = Tensor::zeros([1, 1, 4000, 9], (Kind::Float, Device::Cpu));
        let ones = Tensor::ones([1, 1, 9, 1], (Kind::Float, Device::Cpu));
        let q = Tensor::zeros([1, 1, 4000, 1], (Kind::Float, Device::Cpu));
        let y = chunked_attention(&q, &[(ones.copy(), ones)], &flat, 0.5).unwrap();
        let mean = y.mean(Kind::Float).double_value(&[]);
        assert!((mean - 1.0).abs() < 0.03, "the expectation is kept: {mean}");
    }

    #[test]
    fn dropout_masks_keep_one_minus_p_scaled_up() {
        tch::manual_seed(3);
        for kind in [Kind::Float, Kind::BFloat16] {
            let like = Tensor::zeros([1000, 1000], (kind, Device::Cpu));
            let mask = dropout_mask(&like, 0.1).unwrap();
            assert_eq!((mask.size(), mask.kind()), (like.size(), kind));
            let dropped = mask.eq(0.0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
            assert!((dropped - 0.1).abs() < 0.002, "{kind:?}: dropped {dropped}");
            let kept = mask.masked_select(&mask.ne(0.0)).to_kind(Kind::Float);
            let scale = (1.0f32 / 0.9) as f64;
            let off = (kept - scale).abs().max().double_value(&[]);
            assert!(off <= scale * 4e-3, "{kind:?}: kept values are 1 / (1 - p): {off}");
        }
        tch::manual_seed(5);
        let a = dropout_mask(&Tensor::zeros([64], (Kind::Float, Device::Cpu)), 0.5).unwrap();
        tch::manual_seed(5);
        let b = dropout_mask(&Tensor::zeros([64], (Kind::Float, Device::Cpu)), 0.5).unwrap();
        assert!(a.equal(&b), "torch's seed decides the mask");
    }

    #[test]
    fn attention_backends_switch_off_and_on() {
        assert!(sdp_backend_enabled(SdpBackend::CuDnn).is_ok());
        set_sdp_backend(SdpBackend::Math, false).unwrap();
        assert!(!sdp_backend_enabled(SdpBackend::Math).unwrap());
        set_sdp_backend(SdpBackend::Math, true).unwrap();
        assert!(sdp_backend_enabled(SdpBackend::Math).unwrap());
        let bad = fused_adamw(
            &[],
            &[],
            &[],
            &[],
            &[&Tensor::new()],
            AdamWStep { lr: 0.1, beta1: 0.9, beta2: 0.99, weight_decay: 0.0, eps: 1e-8 },
        );
        assert!(bad.is_err(), "lists of different lengths are refused");
    }
}
