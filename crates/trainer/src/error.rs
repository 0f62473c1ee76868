//! The trainer's error: what can go wrong in a run.

use std::path::PathBuf;

/// What can go wrong in a run. File errors name the file.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file could not be read or written.
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
    /// The loss became NaN or infinite. Checkpoints holding the weights that gave it were
    /// set aside; `outcome` says which, and which checkpoint a resume would start from.
    #[error("the {which} loss became {loss} at epoch {epoch}, after {step} optimizer steps: stopping. {outcome}")]
    NonFiniteLoss {
        /// `training` or `validation`.
        which: &'static str,
        /// Epoch.
        epoch: usize,
        /// Optimizer steps done when the loss was computed (the weights of that step gave it).
        step: u64,
        /// The loss value.
        loss: f64,
        /// What happened to the checkpoints.
        outcome: String,
    },
    /// A checkpoint's tokenizer is not the one its run trained with.
    #[error("{tokenizer} is not the tokenizer this checkpoint was trained with (its fingerprint is {found}, {state} records {expected})")]
    TokenizerChanged {
        /// The tokenizer file.
        tokenizer: PathBuf,
        /// The training state that records the fingerprint.
        state: PathBuf,
        /// The recorded fingerprint.
        expected: String,
        /// The fingerprint of the file found.
        found: String,
    },
    /// A sample does not fit the model's context.
    #[error("{path}: sample {index} {message}")]
    SampleTooLong {
        /// The data file.
        path: PathBuf,
        /// The sample's index in the file (0-based).
        index: usize,
        /// How many positions it needs and what to do.
        message: String,
    },
    /// Another process holds the run folder.
    #[error("{path} is in use by process {holder} (another run of the same name and output_dir): wait for it to end, or choose another name or output_dir")]
    RunInUse {
        /// The run folder's lock file.
        path: PathBuf,
        /// The holder's process id, as it wrote it.
        holder: String,
    },
    /// The run was asked to stop (a signal) and checkpointed its position.
    #[error("stopped by signal {signal}; {} holds the position: the same command resumes from it", checkpoint.as_ref().map_or_else(|| "the last checkpoint".to_string(), |c| c.display().to_string()))]
    Interrupted {
        /// The signal number (2 for SIGINT, 15 for SIGTERM).
        signal: i32,
        /// The checkpoint written at the stop.
        checkpoint: Option<PathBuf>,
    },
    /// The data-parallel ranks could not start or talk to each other. (The collective's
    /// error is in the message, not the `source()`, as for [`TrainError::Io`].)
    #[error("data-parallel ranks: {0}")]
    Ranks(coconut_collective::CollectiveError),
    /// The process was launched among ranks in a way this binary cannot join; the message
    /// says how to launch it.
    #[error("{0}")]
    Launch(String),
    /// The caller's evaluation at the end of an epoch failed.
    #[error("evaluation")]
    Evaluation(#[source] Box<dyn std::error::Error + Send + Sync>),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message of an error and its `source()` chain, as `anyhow`'s `{:#}` joins them.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut text = e.to_string();
        let mut next = e.source();
        while let Some(cause) = next {
            text = format!("{text}: {cause}");
            next = cause.source();
        }
        text
    }

    #[test]
    fn an_io_error_prints_the_os_error_once() {
        let os = std::io::Error::from_raw_os_error(28);
        let os_text = os.to_string();
        let path = PathBuf::from("run/checkpoints/e001-s0000010/model.safetensors");
        let errors: Vec<Box<dyn std::error::Error>> = vec![
            Box::new(TrainError::Io { path: path.clone(), error: os }),
            Box::new(TrainError::Model(coconut_model::ModelError::Io {
                path: path.clone(),
                error: std::io::Error::from_raw_os_error(28),
            })),
            Box::new(TrainError::Data(coconut_curriculum::CurriculumError::Io {
                path: path.clone(),
                error: std::io::Error::from_raw_os_error(28),
            })),
        ];
        for e in errors {
            let text = chain(e.as_ref());
            assert_eq!(text.matches(&os_text).count(), 1, "{text}");
            assert!(text.starts_with(&path.display().to_string()), "{text}");
        }
    }
}
