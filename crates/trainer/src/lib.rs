//! Coconut training: the multi-pass latent forward ([`coconut`]), the staged schedule with
//! AdamW, checkpoints and exact resume ([`Trainer`]), driven by a TOML [`RunConfig`].

pub mod adamw;
pub mod checkpoint;
pub mod coconut;
pub mod config;
pub mod model_setup;
pub mod train;

use std::path::PathBuf;

pub use coconut::{
    coconut_loss, latent_hidden_states, pass_ranges, training_loss, DeviceBatch, TrainingLoss,
};
pub use config::{
    DataConfig, EvalConfig, GenerateConfig, ModelConfig, OptimizerReset, RunConfig, TrainConfig,
};
pub use model_setup::{
    build_model, check_model_paths, load_model_dir, LoadedModel, TOKENIZER_FILE,
};
pub use train::{teacher_forced_loss, EpochEval, MetricLine, TrainSummary, Trainer};

/// What can go wrong in a run. File errors name the file.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The run configuration is invalid.
    #[error("{path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong, with the key.
        message: String,
    },
    /// Data or tokenizer problem.
    #[error(transparent)]
    Data(#[from] coconut_curriculum::CurriculumError),
    /// Model checkpoint problem.
    #[error(transparent)]
    Model(#[from] coconut_model::ModelError),
    /// A training checkpoint is incomplete or corrupt.
    #[error("{path}: corrupt checkpoint: {message}")]
    Checkpoint {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The tokenizer does not belong to the model.
    #[error("{tokenizer} has {tokenizer_vocab} tokens but the model of {model} has {model_vocab}: they do not belong together")]
    TokenizerMismatch {
        /// The tokenizer file.
        tokenizer: PathBuf,
        /// The model config file.
        model: PathBuf,
        /// Tokens in the tokenizer (with added tokens).
        tokenizer_vocab: usize,
        /// Rows of the model's embedding.
        model_vocab: usize,
    },
    /// The loss became NaN or infinite; the last checkpoint is kept.
    #[error("the training loss became {loss} at epoch {epoch}, step {step}: stopping (the last checkpoint is kept)")]
    NonFiniteLoss {
        /// Epoch.
        epoch: usize,
        /// Global optimizer step.
        step: u64,
        /// The loss value.
        loss: f64,
    },
    /// Anything else (evaluation callbacks, ...).
    #[error("{0}")]
    Other(String),
}
