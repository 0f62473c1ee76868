//! The one error type of this crate.
//!
//! Every variant names what a person needs to fix the input: the file, the sample index
//! (0-based, JSON arrays) or line number (1-based, text and JSONL files), and the field.

use std::path::PathBuf;

/// Everything that can go wrong while loading data, building a tokenizer or checking a
/// curriculum configuration.
#[derive(Debug, thiserror::Error)]
pub enum CurriculumError {
    /// The file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// The underlying I/O error (in the message, not the `source()`, so it prints once).
        error: std::io::Error,
    },

    /// The path is not a regular file (a folder, a device such as `/dev/zero`, a pipe), or
    /// the file is larger than a data file may be: reading it could not end or would not fit.
    #[error("{path}: {reason}")]
    NotDataFile {
        /// The path at fault.
        path: PathBuf,
        /// What it is instead, with the bound.
        reason: String,
    },

    /// The file is not valid JSON, or not a JSON array of samples.
    #[error("{path}: invalid JSON: {error}")]
    Json {
        /// The file at fault.
        path: PathBuf,
        /// The parser error (it carries the line and column).
        error: serde_json::Error,
    },

    /// A field of one sample is missing, has the wrong type or an invalid value.
    #[error("{path}: {location}: field `{field}`: {reason}")]
    Field {
        /// The file at fault.
        path: PathBuf,
        /// Where in the file: `sample 12` (JSON array, 0-based) or `line 13` (1-based).
        location: String,
        /// The field at fault (`question`, `steps[2]`, `answer`, ...).
        field: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The file holds no sample at all (never treated as an empty data set).
    #[error("{path}: no samples in the file")]
    Empty {
        /// The file at fault.
        path: PathBuf,
    },

    /// The extension does not say which of the three formats the file is in.
    #[error("{path}: unknown data format (expected .json, .txt or .jsonl)")]
    UnknownFormat {
        /// The file at fault.
        path: PathBuf,
    },

    /// The tokenizers crate failed (bad tokenizer.json, training failure, ...).
    #[error("tokenizer {context}: {message}")]
    Tokenizer {
        /// The file, or the operation when no file is involved (`training`).
        context: String,
        /// The tokenizers crate's message.
        message: String,
    },

    /// A token the curriculum needs is not in the vocabulary.
    #[error("tokenizer {context}: required token `{token}` is missing")]
    MissingToken {
        /// The file, or the operation when no file is involved.
        context: String,
        /// The missing token.
        token: String,
    },

    /// A special-token key of a model folder's JSON file (`tokenizer_config.json`,
    /// `generation_config.json`, `config.json`) has the wrong type, names a token the
    /// vocabulary lacks, or an id outside it.
    #[error("{path}: key `{key}`: {reason}")]
    SpecialToken {
        /// The file at fault.
        path: PathBuf,
        /// The key at fault (`eos_token`, `eos_token_id`, ...).
        key: &'static str,
        /// What is wrong with its value.
        reason: String,
    },

    /// A model folder names no end-of-text token, and its vocabulary has no `<|endoftext|>`.
    #[error(
        "{dir}: no end-of-text token: no `eos_token` in tokenizer_config.json, no \
         `eos_token_id` in generation_config.json or config.json, and no `<|endoftext|>` in \
         the vocabulary (files read: {read})"
    )]
    NoEos {
        /// The model folder.
        dir: PathBuf,
        /// The files of it that were read, comma-separated.
        read: String,
    },

    /// A configuration key has a value the curriculum cannot run with.
    #[error("{field}: {reason}")]
    Config {
        /// The key at fault, with its section (`curriculum.c_thought`, `model.vocab_size`).
        field: &'static str,
        /// Why its value is invalid.
        reason: String,
    },
}
