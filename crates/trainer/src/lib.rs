//! Coconut training: the multi-pass latent forward ([`training_loss`],
//! [`latent_hidden_states`]), the staged schedule with AdamW, checkpoints and exact resume
//! ([`Trainer`]), driven by a TOML [`RunConfig`].
//!
//! Every item has one path: the optimizer ([`adamw`]), the gradient accumulator
//! ([`gradients`]), the flat layout both share ([`flat`]), the checkpoint folders
//! ([`checkpoint`]) and the CUDA runtime's answers ([`cuda_runtime`]) are modules of their
//! own; everything else is at the crate root.

#![warn(missing_docs)]

pub mod adamw;
pub mod checkpoint;
mod config;
pub mod cuda_runtime;
mod error;
pub mod flat;
pub mod gradients;
pub mod manifest;
mod metrics;
mod model_setup;
mod precision;
mod ranks;
mod run_lock;
mod start;
mod state;
mod train;
mod validation;

pub use coconut_latent::{
    coconut_loss, latent_hidden_states, pass_ranges, training_loss, DeviceBatch, TrainingLoss,
};
pub use config::{
    cuda_backend_version, device_name, usable_device, Architecture, DataConfig, EvalConfig,
    ModelConfig, OptimizerReset, RunConfig, TrainConfig,
};
pub use error::TrainError;
pub use metrics::{EpochEval, MetricLine};
pub use model_setup::{build_model, check_model_paths, load_model_dir, LoadedModel};
pub use precision::{native_bf16, Precision, MIN_CPU_BF16_WIDTH};
pub use ranks::Ranks;
pub use train::{TrainSummary, Trainer};
pub use validation::{check_sample_lengths, teacher_forced_loss};
