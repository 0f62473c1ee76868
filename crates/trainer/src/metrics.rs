//! `metrics.jsonl`: one JSON line per logged step and per epoch, appended to by the
//! trainer and read back by whoever reports on the run.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::state::TrainState;

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
    /// Opens `path` for appending, for a run at `position`: the lines an earlier start of the
    /// run wrote past that position (before it was interrupted, or from checkpoints a resume
    /// could not use) are dropped first, so that the file holds exactly what an uninterrupted
    /// run would have written up to there. The file is rewritten whole and renamed into place
    /// only when there is something to drop.
    pub(crate) fn open(path: &Path, position: &TrainState) -> Result<Self, TrainError> {
        let io_error = |error| TrainError::Io { path: path.to_path_buf(), error };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let kept: Vec<&str> =
                    text.lines().filter(|line| written_by(line, position)).collect();
                if kept.len() != text.lines().count() || !text.is_empty() && !text.ends_with('\n') {
                    let mut rewritten = kept.join("\n");
                    if !rewritten.is_empty() {
                        rewritten.push('\n');
                    }
                    coconut_datasets::write_atomic(path, rewritten.as_bytes()).map_err(io_error)?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error(error)),
        }
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

/// Whether `line` of `metrics.jsonl` belongs to a run up to `position`: a step line up to its
/// optimizer step, an epoch line of an epoch it finished. A line that does not parse (the
/// end of one a killed process was writing) belongs to none.
fn written_by(line: &str, position: &TrainState) -> bool {
    match serde_json::from_str::<MetricLine>(line) {
        Ok(MetricLine::Step { global_step, .. }) => global_step <= position.global_step,
        Ok(MetricLine::Epoch { epoch, .. }) => epoch < position.epoch,
        Err(_) => false,
    }
}
