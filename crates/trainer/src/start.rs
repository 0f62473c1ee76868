//! Where a run starts: the newest checkpoint of its folder that loads, or a model built
//! afresh. Rank 0 chooses; every rank then holds the same weights and position.

use std::collections::BTreeMap;
use std::path::Path;

use coconut_curriculum::Sample;

use crate::adamw::{AdamW, AdamWConfig};
use crate::checkpoint::{
    checkpoint_name, incomplete_checkpoints, list_checkpoints, load_checkpoint, TrainState,
    STATE_FILE,
};
use crate::config::RunConfig;
use crate::error::TrainError;
use crate::flat::Partition;
use crate::model_setup::{build_model, LoadedModel};
use crate::precision::Precision;
use crate::ranks::Ranks;
use crate::state::LossSums;

/// The model, the optimizer and the position a run continues from.
pub(crate) type Start = (LoadedModel, AdamW, TrainState);

/// Resumes from the newest complete checkpoint of the run folder when `train.resume` is
/// set, or builds the model from `config` (trained on `train` when from scratch). A
/// checkpoint that fails to load is reported and the one before it is tried; a folder with
/// checkpoints none of which may be resumed is an error.
pub(crate) fn resume_or_start(
    config: &RunConfig,
    config_path: &Path,
    ranks: &Ranks,
    train: &[Sample],
) -> Result<Start, TrainError> {
    let adamw = adamw_config(config);
    let partition = ranks.partition(config.train.shard_optimizer);
    let mut resumed = if ranks.is_main() {
        newest_loadable(config, config_path, adamw, partition)?
    } else {
        None
    };
    // Rank 0 names the checkpoint it resumes from (none: a fresh start); the others load
    // that one.
    let mut chosen = match &resumed {
        Some((_, _, state)) => checkpoint_name(state).into_bytes(),
        None => Vec::new(),
    };
    ranks.broadcast(&mut chosen)?;
    if !ranks.is_main() && !chosen.is_empty() {
        let name = String::from_utf8_lossy(&chosen).to_string();
        let ckpt = config.run_dir().join("checkpoints").join(name);
        resumed = Some(load_checkpoint(&ckpt, config.device(), adamw, partition)?);
    }
    match resumed {
        Some((loaded, optimizer, state)) => {
            let shape = loaded.model.shape();
            let state = continued_state(state, config, config_path, ranks.world_size(), shape)?;
            Ok((loaded, optimizer, state))
        }
        None => fresh_start(config, ranks, train, adamw, partition),
    }
}

/// The newest checkpoint of the run folder that loads, if it may be resumed; `None` when
/// the folder holds none. A run folder that holds checkpoints is never started afresh over
/// them: that would mix two runs and prune the new one.
fn newest_loadable(
    config: &RunConfig,
    config_path: &Path,
    adamw: AdamWConfig,
    partition: Partition,
) -> Result<Option<Start>, TrainError> {
    let run_dir = config.run_dir();
    let existing = list_checkpoints(&run_dir.join("checkpoints"));
    let incomplete = incomplete_checkpoints(&run_dir.join("checkpoints"));
    if existing.is_empty() && incomplete.is_empty() {
        return Ok(None);
    }
    let mut failures = Vec::new();
    if config.train.resume {
        for ckpt in &incomplete {
            let why = format!("no {STATE_FILE}: a save that did not finish");
            tracing::warn!("skipping checkpoint {}: {why}", ckpt.display());
            failures.push(format!("{}: {why}", ckpt.display()));
        }
        for ckpt in existing.iter().rev() {
            match load_checkpoint(ckpt, config.device(), adamw, partition) {
                Ok(found) => {
                    tracing::info!("resuming from {}", ckpt.display());
                    return Ok(Some(found));
                }
                Err(e) => {
                    tracing::warn!("skipping checkpoint {}: {e}", ckpt.display());
                    failures.push(e.to_string());
                }
            }
        }
    }
    if existing.is_empty() {
        return Ok(None);
    }
    let why = if config.train.resume {
        format!("none of its checkpoints loads ({})", failures.join("; "))
    } else {
        "train.resume is false".to_string()
    };
    Err(TrainError::Config {
        path: config_path.to_path_buf(),
        message: format!(
            "{} already holds checkpoints and {why}: choose another name or output_dir, or move that folder away",
            run_dir.display()
        ),
    })
}

/// The position of a resumed checkpoint, continued under `config` by `ranks` ranks: the
/// checkpoint's position with this file's harmless settings (e.g. more epochs). Settings
/// that would make it another run are an error listing them.
fn continued_state(
    mut state: TrainState,
    config: &RunConfig,
    config_path: &Path,
    ranks: usize,
    shape: coconut_model::ModelShape,
) -> Result<TrainState, TrainError> {
    let mut changed = incompatible_changes(&state.config, config);
    // Another number of ranks continues the same run when an optimizer step still takes as
    // many micro-batches.
    let (then, now) = (&state.config.train, &config.train);
    if then.grad_accum * state.ranks != now.grad_accum * ranks {
        changed.push(format!(
            "train.grad_accum x ranks: {} x {} then, {} x {} now",
            then.grad_accum, state.ranks, now.grad_accum, ranks
        ));
    }
    // A resumed run keeps its precision; `auto` accepts it, an explicit other one is refused.
    // A state that records none (older checkpoints) trained as its config's `bf16` key said:
    // `auto` accepts it only where it resolves to the same.
    let kept = state.precision();
    let asked = config.train.precision();
    if asked != Precision::Auto && asked != kept {
        changed.push(format!("train.precision: {} then, {} now", kept.name(), asked.name()));
    }
    let auto = asked.resolve(config.train.device, shape);
    if asked == Precision::Auto && state.precision.is_none() && auto != kept {
        changed.push(format!(
            "train.precision: {} then (the checkpoint records none), auto resolves to {} here; \
             set train.precision = \"{}\" to continue it",
            kept.name(),
            auto.name(),
            kept.name()
        ));
    }
    if !changed.is_empty() {
        return Err(TrainError::Config {
            path: config_path.to_path_buf(),
            message: format!(
                "the run in {} was trained with other settings ({}); resuming would not continue the same run",
                config.run_dir().display(),
                changed.join(", ")
            ),
        });
    }
    check_data(&mut state, config, config_path)?;
    state.config = config.clone();
    state.ranks = ranks;
    state.precision = Some(kept);
    Ok(state)
}

/// The SHA-256 of the run's data files, by config key.
fn data_fingerprints(config: &RunConfig) -> Result<BTreeMap<String, String>, TrainError> {
    let d = &config.data;
    let files = [("data.train", &d.train), ("data.valid", &d.valid)];
    let mut out = BTreeMap::new();
    for (key, path) in files {
        let hash = coconut_datasets::file_sha256(path)
            .map_err(|error| TrainError::Io { path: path.clone(), error })?;
        out.insert(key.to_string(), hash);
    }
    Ok(out)
}

/// A resume trains on the data its checkpoint was trained on: a data file whose content
/// changed is refused, naming it, unless `train.accept_changed_data` accepts it (recorded in
/// the state). A checkpoint that recorded no hashes takes the present ones.
fn check_data(
    state: &mut TrainState,
    config: &RunConfig,
    config_path: &Path,
) -> Result<(), TrainError> {
    let now = data_fingerprints(config)?;
    if state.data_sha256.is_empty() {
        state.data_sha256 = now;
        return Ok(());
    }
    for (key, hash) in &now {
        let Some(then) = state.data_sha256.get(key).filter(|then| *then != hash) else { continue };
        let file = match key.as_str() {
            "data.train" => &config.data.train,
            _ => &config.data.valid,
        };
        if !config.train.accept_changed_data {
            return Err(TrainError::Config {
                path: config_path.to_path_buf(),
                message: format!(
                    "{}: {key} changed since the run trained on it (SHA-256 {then} then, {hash} \
                     now); resuming would train on two data sets. Restore it, or set \
                     train.accept_changed_data = true to continue on the new data",
                    file.display()
                ),
            });
        }
        let change =
            format!("{key} {} at step {}: {then} -> {hash}", file.display(), state.global_step);
        tracing::warn!("resuming on changed data (train.accept_changed_data): {change}");
        state.accepted_data_changes.push(change);
    }
    state.data_sha256 = now;
    Ok(())
}

/// A run's first position: the model built from `config`, rank 0's weights on every rank,
/// and a fresh optimizer holding `partition`'s part of the state.
fn fresh_start(
    config: &RunConfig,
    ranks: &Ranks,
    train: &[Sample],
    adamw: AdamWConfig,
    partition: Partition,
) -> Result<Start, TrainError> {
    let loaded = build_model(config, train)?;
    ranks.broadcast_variables(&loaded.vs)?;
    let precision = config.train.precision().resolve(config.train.device, loaded.model.shape());
    let optimizer = AdamW::sharded(loaded.vs.variables(), adamw, precision.kind(), partition);
    let state = TrainState {
        epoch: config.train.start_epoch,
        step_in_epoch: 0,
        global_step: 0,
        best_accuracy: None,
        config: config.clone(),
        tokenizer_sha256: Some(loaded.tokenizer.fingerprint()),
        ranks: ranks.world_size(),
        precision: Some(precision),
        data_sha256: data_fingerprints(config)?,
        accepted_data_changes: Vec::new(),
        losses: LossSums::default(),
    };
    Ok((loaded, optimizer, state))
}

/// The settings that differ between a checkpoint's run config and a new one, other than
/// those that may change when a run is resumed: the run's name and output folder (a moved
/// run resumes where it is), epochs, evaluation, device, checkpoint frequency and
/// retention, logging, and the learning rate and gradient clipping (what one changes to
/// resume past a divergence). The thread count may not change: torch's CPU kernels split
/// their sums by thread, so another count gives other weights.
fn incompatible_changes(old: &RunConfig, new: &RunConfig) -> Vec<String> {
    let neutral = |c: &RunConfig| {
        let mut c = c.clone();
        c.train.num_epochs = 0;
        c.train.grad_accum = 0; // compared with the number of ranks, see `continued_state`
        c.train.lr = 1.0;
        c.train.grad_clip = None;
        c.train.device = tch::Device::Cpu;
        c.train.precision = None; // compared after resolution, see `continued_state`
        c.train.bf16 = None;
        c.train.save_every_steps = 0;
        c.train.keep_last = 0;
        c.train.save_only_improve = false;
        c.train.accept_changed_data = false; // data is compared by content, see `check_data`
        c.train.shard_optimizer = false; // the state is re-partitioned on load
        c.train.log_every_steps = 0;
        c.data.max_valid_samples = 0;
        c.eval = Default::default();
        serde_json::to_value(c).expect("the config serialises")
    };
    let (a, b) = (neutral(old), neutral(new));
    let mut changed = Vec::new();
    // Not `name` and `output_dir`: a run folder that was moved or renamed resumes where it is.
    for section in ["data", "model", "curriculum", "train"] {
        match (&a[section], &b[section]) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                for key in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                    if x.get(key) != y.get(key) {
                        changed.push(format!("{section}.{key}"));
                    }
                }
            }
            (x, y) if x != y => changed.push(section.to_string()),
            _ => {}
        }
    }
    changed
}

fn adamw_config(config: &RunConfig) -> AdamWConfig {
    let t = &config.train;
    AdamWConfig { lr: t.lr, betas: t.betas, eps: t.eps, weight_decay: t.weight_decay }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coconut_model::ModelShape;

    /// A state of an older checkpoint records no precision: its config's old `bf16` key (absent:
    /// f32) says what it trained in. Resumed under `auto`, it is refused where `auto` resolves
    /// to another precision for this model on this machine, naming the key.
    #[test]
    fn a_state_without_precision_is_refused_where_auto_resolves_otherwise() {
        let text = "name = \"old\"\n[data]\ntrain = \"t.json\"\nvalid = \"v.json\"\n[model]\n";
        let config = RunConfig::parse(text, Path::new("old.toml")).unwrap();
        let state = TrainState {
            epoch: 1,
            step_in_epoch: 0,
            global_step: 4,
            best_accuracy: None,
            config: config.clone(),
            tokenizer_sha256: None,
            ranks: 1,
            precision: None,
            data_sha256: BTreeMap::new(),
            accepted_data_changes: Vec::new(),
            losses: LossSums::default(),
        };
        assert_eq!(state.precision(), Precision::F32);
        let wide = ModelShape { vocab_size: 100, hidden_size: 4096, n_layer: 2, max_positions: 64 };
        let outcome = continued_state(state, &config, Path::new("old.toml"), 1, wide);
        let refused = outcome.as_ref().err().map(ToString::to_string).unwrap_or_default();
        if Precision::Auto.resolve(config.train.device, wide) == Precision::Bf16 {
            assert!(refused.contains("train.precision: f32 then"), "{refused}");
            assert!(refused.contains("auto resolves to bf16"), "{refused}");
        } else {
            // Accepted: what fails next is the absent data, not the precision.
            assert!(!refused.contains("train.precision"), "{refused}");
        }
    }
}
