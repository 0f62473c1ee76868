//! Training checkpoints: an HF-compatible model folder plus the training state, written
//! atomically, found again on resume, and pruned to the newest few.
//!
//! ```text
//! <run>/checkpoints/e003-s0000120/
//!     config.json  model.safetensors  tokenizer.json   (loads with from_pretrained)
//!     optimizer.safetensors                            (AdamW moments and step)
//!     train_state.json                                 (written last: marks completeness)
//! ```
//!
//! A checkpoint is first written into a hidden temporary folder and renamed into place, so
//! an interrupted save never leaves a half-written checkpoint under a real name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use coconut_model::save_pretrained;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::adamw::{AdamW, AdamWConfig};
use crate::config::RunConfig;
use crate::model_setup::{load_model_dir, LoadedModel, TOKENIZER_FILE};
use crate::TrainError;

/// File of the optimizer state inside a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
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
}

/// A checkpoint folder's name: sorts by epoch, then step.
pub fn checkpoint_name(state: &TrainState) -> String {
    format!("e{:03}-s{:07}", state.epoch, state.global_step)
}

/// Writes a checkpoint into `dir/<name>` atomically and returns its path.
pub fn save_checkpoint(
    dir: &Path,
    loaded: &LoadedModel,
    optimizer: &AdamW,
    state: &TrainState,
) -> Result<PathBuf, TrainError> {
    let name = checkpoint_name(state);
    let tmp = dir.join(format!(".tmp-{name}"));
    let dst = dir.join(&name);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TrainError::Io { path, source }
    };
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    save_pretrained(&loaded.vs, &loaded.model, &tmp)?;
    loaded.tokenizer.save(&tmp.join(TOKENIZER_FILE))?;
    let opt_path = tmp.join(OPTIMIZER_FILE);
    Tensor::write_safetensors(&optimizer.state(), &opt_path)
        .map_err(|e| TrainError::Checkpoint { path: opt_path.clone(), message: e.to_string() })?;
    let state_path = tmp.join(STATE_FILE);
    let json = serde_json::to_string_pretty(state).expect("the state serialises");
    std::fs::write(&state_path, json).map_err(io(&state_path))?;
    if dst.exists() {
        std::fs::remove_dir_all(&dst).map_err(io(&dst))?;
    }
    std::fs::rename(&tmp, &dst).map_err(io(&dst))?;
    Ok(dst)
}

/// Complete checkpoint folders of `dir`, oldest first.
pub fn list_checkpoints(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with('e') && p.join(STATE_FILE).exists()
        })
        .collect();
    found.sort();
    found
}

/// Reads a checkpoint's training state.
pub fn read_state(ckpt: &Path) -> Result<TrainState, TrainError> {
    let path = ckpt.join(STATE_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|source| TrainError::Io { path: path.clone(), source })?;
    serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint { path, message: e.to_string() })
}

/// Loads a checkpoint: the model and tokenizer, an optimizer with the saved moments, and
/// the training state. Any missing or corrupt file is an error naming it.
pub fn load_checkpoint(
    ckpt: &Path,
    device: Device,
    adamw: AdamWConfig,
) -> Result<(LoadedModel, AdamW, TrainState), TrainError> {
    let state = read_state(ckpt)?;
    let loaded = load_model_dir(ckpt, device, &state.config.model.latent_init_token)?;
    let mut optimizer = AdamW::new(loaded.vs.variables(), adamw);
    let opt_path = ckpt.join(OPTIMIZER_FILE);
    let moments: BTreeMap<String, Tensor> = Tensor::read_safetensors(&opt_path)
        .map_err(|e| TrainError::Checkpoint { path: opt_path.clone(), message: e.to_string() })?
        .into_iter()
        .map(|(n, t)| (n, t.to_device(device)))
        .collect();
    optimizer
        .load_state(&moments)
        .map_err(|message| TrainError::Checkpoint { path: opt_path, message })?;
    Ok((loaded, optimizer, state))
}

/// Deletes all but the newest `keep` checkpoints (0 keeps everything).
pub fn prune_checkpoints(dir: &Path, keep: usize) -> Result<(), TrainError> {
    let all = list_checkpoints(dir);
    if keep == 0 || all.len() <= keep {
        return Ok(());
    }
    for old in &all[..all.len() - keep] {
        std::fs::remove_dir_all(old)
            .map_err(|source| TrainError::Io { path: old.clone(), source })?;
    }
    Ok(())
}
