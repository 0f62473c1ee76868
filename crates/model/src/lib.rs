//! Causal language models on libtorch for Coconut: GPT-2 and the Llama family (Llama 2 and
//! 3.x, Qwen2/2.5), each a forward over input embeddings with an explicit KV cache that
//! returns the last hidden state, and HF checkpoint loading and saving.
//!
//! The crate is split by concern:
//! - `causal_lm.rs`: the [`CausalLm`] trait every architecture implements, and the forward
//!   passes written once on top of it (why a trait: see there);
//! - `kv_cache.rs`: the [`KvCache`], with its storage regimes spelled out;
//! - `recompute.rs`: gradient checkpointing ([`RecomputedPass`]);
//! - `attention.rs`: attention biases and attention over cached chunks, shared;
//! - `gpt2.rs`, `llama.rs`: one file per architecture, each reading top-down;
//! - `checkpoint.rs`: HF folders in and out, the architecture chosen by `config.json`.
//!
//! ```no_run
//! use coconut_model::{causal_bias, load_pretrained};
//! use tch::{nn::VarStore, Device, Kind, Tensor};
//! let vs = VarStore::new(Device::Cpu);
//! let model = load_pretrained(&vs, std::path::Path::new("models/gpt2")).unwrap();
//! let ids = Tensor::from_slice(&[15496i64, 995]).unsqueeze(0); // (1, 2)
//! let mask = ids.ones_like();
//! let positions = Tensor::arange(2, (Kind::Int64, Device::Cpu)).unsqueeze(0);
//! let (logits, hidden) = model.forward(&ids, &positions, &causal_bias(&mask, Kind::Float), None, false);
//! ```

#![warn(missing_docs)]

mod attention;
mod causal_lm;
mod checkpoint;
mod dropout;
mod embedding;
mod error;
mod gpt2;
mod kv_cache;
mod llama;
mod memory;
mod packing;
mod recompute;
#[cfg(feature = "testing")]
pub mod testing;
mod tiny;

pub use attention::{causal_bias, cudnn_attention_enabled, disable_cudnn_attention, padding_bias};
pub use causal_lm::{draw_seed, CausalLm, ModelShape, PassInputs};
pub use checkpoint::{
    is_finite, load_pretrained, model_from_config, pretrained_files, save_pretrained,
    serialize_tensors, CONFIG_FILE, WEIGHTS_FILE, WEIGHTS_INDEX_FILE,
};
pub use dropout::dropout;
pub use error::ModelError;
pub use gpt2::{Gpt2, Gpt2Config};
pub use kv_cache::{KeysValues, KvCache};
pub use llama::{Llama, Llama3Scaling, LlamaConfig, LlamaShape, Rope};
pub use memory::keep_freed_memory;
pub use packing::{upload, Packing};
pub use recompute::{gradient_root, RecomputedPass};
pub use tiny::{tiny_models, tiny_models_on};
