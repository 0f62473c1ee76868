//! Where a run stands, as a checkpoint records it in `train_state.json`: read by the
//! checkpoint loader and by the model setup (which checks a checkpoint's tokenizer), so it
//! lives apart from both.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::error::TrainError;
use crate::precision::Precision;

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
    /// The SHA-256 of each data file the run trained on, by its config key (`data.train`,
    /// `data.valid`): a resume against other data is refused (see
    /// `train.accept_changed_data`). Empty in checkpoints written before it was recorded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data_sha256: BTreeMap<String, String>,
    /// Each change of the data a resume accepted (`train.accept_changed_data`): the key, the
    /// file, the step, the hashes before and after.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accepted_data_changes: Vec<String>,
    /// The sums behind the losses `metrics.jsonl` reports, as they stood at this position:
    /// a run resumed mid-epoch reports what an uninterrupted one does.
    #[serde(default)]
    pub losses: LossSums,
}

/// The running sums of the losses `metrics.jsonl` reports: the epoch's `train_loss` (the
/// mean over the epoch's optimizer steps) and a step line's `loss` (the mean over the steps
/// since the previous line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LossSums {
    /// The summed step losses of the epoch so far.
    pub epoch: f64,
    /// The epoch's optimizer steps so far.
    pub epoch_steps: usize,
    /// The summed step losses since the last step line.
    pub window: f64,
    /// The optimizer steps since the last step line.
    pub window_steps: usize,
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
