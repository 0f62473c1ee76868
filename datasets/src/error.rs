//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while generating, reading or writing a data set.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A file or folder could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file or folder at fault.
        path: PathBuf,
        /// The underlying I/O error (in the message, not the `source()`, so it prints once).
        error: std::io::Error,
    },

    /// A file is not a valid JSON array of samples.
    #[error("{path}: invalid JSON: {error}")]
    Json {
        /// The file at fault.
        path: PathBuf,
        /// The parser error (it carries the line and column).
        error: serde_json::Error,
    },

    /// A generator configuration cannot produce valid samples.
    #[error("invalid {dataset} configuration: field `{field}`: {reason}")]
    InvalidConfig {
        /// "ProsQA" or "ProntoQA".
        dataset: &'static str,
        /// The field at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// The generator kept drawing rejected or duplicate samples: the configuration is too
    /// narrow for the number of distinct questions asked for.
    #[error("{dataset}: no new valid sample after {attempts} attempts ({have} generated so far)")]
    Exhausted {
        /// "ProsQA" or "ProntoQA".
        dataset: &'static str,
        /// Attempts made for the sample that failed.
        attempts: usize,
        /// Samples generated before giving up.
        have: usize,
    },
}
