//! Where a run stands, as a checkpoint records it in `train_state.json`: read by the
//! checkpoint loader and by the model setup (which checks a checkpoint's tokenizer), so it
//! lives apart from both.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::precision::Precision;
use crate::TrainError;

/// File of the training position inside a checkpoint; written last.
pub const STATE_FILE: &str = "train_state.json";

/// Where training stands: enough to continue exactly where a checkpoint was taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// The epoch to continue with.
    pub epoch: usize,
    /// Optimizer steps of `epoch` already done (0 at an epoch boundary).
    pub step_in_epoch: usize,
    /// Optimizer steps since the start of the run.
    pub global_step: u64,
    /// Best validation accuracy so far, if evaluated.
    pub best_accuracy: Option<f64>,
    /// The resolved configuration of the run.
    pub config: RunConfig,
    /// [`coconut_curriculum::Tokenizer::fingerprint`] of the run's tokenizer: loading the
    /// checkpoint with any other `tokenizer.json` is refused. (Absent in checkpoints written
    /// before it was recorded.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer_sha256: Option<String>,
    /// The number of data-parallel ranks that trained up to here: with `grad_accum` it
    /// gives the micro-batches of an optimizer step, which a resume must keep.
    #[serde(default = "one_rank")]
    pub ranks: usize,
    /// The precision the run computes in, `f32` or `bf16` (`auto` resolved on its first
    /// start); a resume keeps it. Absent in checkpoints written before it was recorded: see
    /// [`TrainState::precision`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
}

impl TrainState {
    /// The precision the run trained in: the recorded one, or for an older checkpoint the
    /// one its config's `bf16` flag gave.
    pub fn precision(&self) -> Precision {
        self.precision.unwrap_or(match self.config.train.precision() {
            Precision::Bf16 => Precision::Bf16,
            _ => Precision::F32,
        })
    }
}

fn one_rank() -> usize {
    1
}

/// Reads a checkpoint's training state.
pub fn read_state(ckpt: &Path) -> Result<TrainState, TrainError> {
    let path = ckpt.join(STATE_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|error| TrainError::Io { path: path.clone(), error })?;
    serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint { path, message: e.to_string() })
}
