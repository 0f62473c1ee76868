//! `metrics.jsonl`: one JSON line per logged step and per epoch, appended to by the
//! trainer and read back by whoever reports on the run.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::TrainError;

/// What the caller's evaluation reports at the end of an epoch (the trainer knows nothing
/// of generation; the eval crate does).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochEval {
    /// Validation accuracy in [0, 1].
    pub accuracy: Option<f64>,
    /// Anything else worth logging (token counts, ...).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// One line of `metrics.jsonl`, as written and as read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MetricLine {
    /// Logged every `log_every_steps` optimizer steps.
    Step {
        /// Epoch.
        epoch: usize,
        /// Curriculum stage of the epoch.
        stage: usize,
        /// Optimizer steps since the start of the run.
        global_step: u64,
        /// Mean training loss over the steps since the last line.
        loss: f64,
        /// Real (non-pad) tokens processed per second.
        tokens_per_s: f64,
    },
    /// Logged at each epoch end.
    Epoch {
        /// Epoch.
        epoch: usize,
        /// Curriculum stage of the epoch.
        stage: usize,
        /// Optimizer steps since the start of the run.
        global_step: u64,
        /// Mean training loss of the epoch.
        train_loss: f64,
        /// Teacher-forced validation loss at this stage.
        valid_loss: f64,
        /// What the evaluation callback reported.
        eval: EpochEval,
        /// Seconds spent in this epoch, evaluation included.
        seconds: f64,
    },
}

/// `metrics.jsonl`, appended to (a resumed run continues the same file).
pub(crate) struct MetricsFile {
    path: PathBuf,
    file: Option<std::fs::File>, // none on ranks other than 0
}

impl MetricsFile {
    /// Opens `path` for appending.
    pub(crate) fn open(path: &Path) -> Result<Self, TrainError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|error| TrainError::Io { path: path.to_path_buf(), error })?;
        Ok(Self { path: path.to_path_buf(), file: Some(file) })
    }

    /// Where the ranks other than 0 write their metrics: nowhere.
    pub(crate) fn sink() -> Self {
        Self { path: PathBuf::new(), file: None }
    }

    /// Appends one line.
    pub(crate) fn write(&mut self, line: &MetricLine) -> Result<(), TrainError> {
        let Some(file) = &mut self.file else { return Ok(()) };
        let json = serde_json::to_string(line).expect("metrics serialise");
        writeln!(file, "{json}").map_err(|error| TrainError::Io { path: self.path.clone(), error })
    }
}
