//! Small random models of every architecture (GPT-2, Llama 3 with grouped key-value heads
//! and rope scaling, Qwen2), for checking a device against the CPU (`check-device`) and for
//! tests that should run once per architecture.

use tch::nn::VarStore;
use tch::{Device, Tensor};

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
