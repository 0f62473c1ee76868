//! Helpers for tests: tensor comparisons with [`coconut_testing::is_close`]'s rule (the
//! semantics of `torch.testing.assert_close`) applied to every element, and one tiny random
//! model of every architecture, so that a test of the trainer or of generation runs for
//! each.

use coconut_testing::Tolerance;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::{CausalLm, Gpt2, Gpt2Config, Llama, LlamaConfig};

/// A tiny random model of every architecture, each in its own `VarStore` on the CPU seeded
/// with `seed`: width 16, `n_layer` layers, a vocabulary of `vocab` and 64 positions.
/// `dropout` goes wherever the architecture has dropout.
///
/// - `gpt2`: two heads, tied head.
/// - `llama`: four query heads sharing two key-value heads, an untied head, Llama 3's rope
///   scaling (with an original context short enough that it changes some frequencies).
/// - `qwen2`: biases on the query, key and value projections, tied head, one key-value head.
pub fn tiny_models(
    vocab: usize,
    n_layer: usize,
    dropout: f64,
    seed: i64,
) -> Vec<(&'static str, VarStore, Box<dyn CausalLm>)> {
    tiny_models_on(vocab, 64, n_layer, dropout, seed, Device::Cpu)
}

/// [`tiny_models`] with `positions` positions, built on `device` with the same weights as on
/// the CPU (they are drawn on the CPU and copied: each device has its own random generator).
pub fn tiny_models_on(
    vocab: usize,
    positions: usize,
    n_layer: usize,
    dropout: f64,
    seed: i64,
    device: Device,
) -> Vec<(&'static str, VarStore, Box<dyn CausalLm>)> {
    let mut gpt2 = Gpt2Config::new(vocab, positions, 16, n_layer, 2);
    (gpt2.embd_pdrop, gpt2.attn_pdrop, gpt2.resid_pdrop) = (dropout, dropout, dropout);
    let llama = |extra: serde_json::Value| {
        let mut json = serde_json::json!({
            "model_type": "llama", "vocab_size": vocab, "hidden_size": 16,
            "intermediate_size": 24, "num_hidden_layers": n_layer, "max_position_embeddings": positions,
            "rms_norm_eps": 1e-5, "attention_dropout": dropout,
        });
        for (k, v) in extra.as_object().expect("an object") {
            json[k] = v.clone();
        }
        LlamaConfig::from_hf(json).expect("a valid tiny config")
    };
    let llama3 = llama(serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "num_attention_heads": 4,
        "num_key_value_heads": 2, "tie_word_embeddings": false, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
    }));
    let qwen2 = llama(serde_json::json!({
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
        "num_attention_heads": 2, "num_key_value_heads": 1, "tie_word_embeddings": true,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    }));
    let build = |name, make: &dyn Fn(&VarStore) -> Box<dyn CausalLm>| {
        tch::manual_seed(seed);
        let vs = VarStore::new(Device::Cpu);
        let model = make(&vs);
        // Fresh norms are the identity and fresh biases zero; perturb every parameter so
        // that a test also sees them applied.
        // In name order: the draws must not depend on a hash map's order, or two calls with
        // one seed would give different weights.
        let variables: std::collections::BTreeMap<String, Tensor> =
            vs.variables().into_iter().collect();
        tch::no_grad(|| {
            for mut v in variables.into_values() {
                let _ = v.g_add_(&(v.randn_like() * 0.05));
            }
        });
        if device == Device::Cpu {
            return (name, vs, model);
        }
        let mut on_device = VarStore::new(device);
        let model = make(&on_device);
        on_device.copy(&vs).expect("the same variables");
        (name, on_device, model)
    };
    vec![
        build("gpt2", &|vs| Box::new(Gpt2::new(&vs.root(), &gpt2))),
        build("llama", &|vs| Box::new(Llama::new(&vs.root(), &llama3))),
        build("qwen2", &|vs| Box::new(Llama::new(&vs.root(), &qwen2))),
    ]
}

/// Panics unless `actual` and `expected` have one shape and every element of `actual`
/// is within `tol` of the expected element. The message names `what`, the number of
/// elements out of tolerance, and the worst one with its index and both values.
#[track_caller]
pub fn assert_close(actual: &Tensor, expected: &Tensor, tol: Tolerance, what: &str) {
    assert_eq!(actual.size(), expected.size(), "{what}: shapes differ");
    let a = actual.detach().to_kind(Kind::Double).to_device(tch::Device::Cpu).flatten(0, -1);
    let e = expected.detach().to_kind(Kind::Double).to_device(tch::Device::Cpu).flatten(0, -1);
    if e.numel() == 0 {
        return;
    }
    let scale = e.abs().max().double_value(&[]);
    let atol = tol.atol_for(scale);
    let diff = (&a - &e).abs();
    let allowed = e.abs() * tol.rtol + atol;
    // NaN in either makes the element fail: `le` is false for NaN.
    let ok = diff.le_tensor(&allowed);
    let bad = ok.logical_not().sum(Kind::Int64).int64_value(&[]);
    if bad == 0 {
        return;
    }
    let excess = (&diff - &allowed).nan_to_num(f64::INFINITY, None, None);
    let worst = excess.argmax(None, false).int64_value(&[]);
    panic!(
        "{what}: {bad} of {} elements out of tolerance (rtol {:e}, atol {:e}); worst at \
         flat index {worst}: {} against {} (difference {:e})",
        e.numel(),
        tol.rtol,
        atol,
        a.double_value(&[worst]),
        e.double_value(&[worst]),
        diff.double_value(&[worst]),
    );
}

#[cfg(test)]
mod tests {
    use super::{assert_close, Tolerance};
    use tch::Tensor;

    #[test]
    fn tensor_entries_near_zero_are_judged_against_the_scale() {
        let expected = Tensor::from_slice(&[460.0f64, 0.0, -3.0]);
        let actual = Tensor::from_slice(&[460.00003f64, 1e-4, -3.00001]);
        assert_close(&actual, &expected, Tolerance::scaled(1e-6), "gradient");
    }

    #[test]
    #[should_panic(expected = "1 of 3 elements out of tolerance")]
    fn a_tensor_failure_counts_the_bad_elements() {
        let expected = Tensor::from_slice(&[1.0f64, 2.0, 3.0]);
        let actual = Tensor::from_slice(&[1.0f64, 2.1, 3.0]);
        assert_close(&actual, &expected, Tolerance::scaled(1e-3), "x");
    }

    #[test]
    #[should_panic(expected = "out of tolerance")]
    fn nan_is_never_close() {
        let expected = Tensor::from_slice(&[1.0f64, f64::NAN]);
        assert_close(&expected, &expected, Tolerance::scaled(1e-3), "x");
    }
}
