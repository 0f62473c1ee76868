//! The model crate's error: what can go wrong reading or writing a checkpoint.

use std::path::PathBuf;

/// What can go wrong when reading or writing a checkpoint. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file could not be read or written.
    ///
    /// The OS error is part of the message and deliberately not the error's `source()`, so
    /// that chain printers (`anyhow`'s `{:#}`) show it once.
    #[error("{path}: {error}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// `config.json` is not a valid configuration of a supported architecture.
    #[error("{path}: invalid model config: {message}")]
    Config {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The weights file is not a readable safetensors file.
    #[error("{path}: invalid weights: {message}")]
    Weights {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A parameter of the model is absent from the file.
    #[error("{path}: missing tensor {name}")]
    MissingTensor {
        /// The file at fault.
        path: PathBuf,
        /// The parameter's checkpoint key.
        name: String,
    },
    /// The file holds a tensor the model has no parameter for.
    #[error("{path}: unexpected tensor {name} (not a parameter of this model)")]
    UnexpectedTensor {
        /// The file at fault.
        path: PathBuf,
        /// The unknown key.
        name: String,
    },
    /// A tensor's shape disagrees with `config.json`.
    #[error("{path}: tensor {name} has shape {found:?}, the config implies {expected:?}")]
    ShapeMismatch {
        /// The file at fault.
        path: PathBuf,
        /// The checkpoint key.
        name: String,
        /// Shape implied by the config.
        expected: Vec<i64>,
        /// Shape found in the file.
        found: Vec<i64>,
    },
    /// A tensor holds NaN or infinite values (a diverged or damaged checkpoint).
    #[error("{path}: tensor {name} holds NaN or infinite values")]
    NonFiniteTensor {
        /// The file at fault.
        path: PathBuf,
        /// The tensor's key.
        name: String,
    },
}
