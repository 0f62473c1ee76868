//! The staged training loop: one curriculum stage per `epochs_per_stage` epochs, AdamW with
//! gradient accumulation, checkpoints at epoch ends (and every N steps), exact resume.
//!
//! Every source of randomness is derived from the seed and the position in the run (epoch,
//! sample, step), never from state carried along: the shuffle of an epoch, the stage drawn
//! for a sample with `uniform_prob`, and the dropout of a step (torch is reseeded from the
//! global step). A run resumed from any checkpoint therefore ends with the same weights as
//! an uninterrupted one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use coconut_curriculum::{
    batches, collate_training, length_grouped_batches, load_samples, sample_stage,
    tokenize_samples, training_sample, CurriculumConfig, Sample, StagedSample, TokenizedSample,
};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::adamw::{AdamW, AdamWConfig};
use crate::checkpoint::{
    list_checkpoints, load_checkpoint, prune_checkpoints, read_state, recover_checkpoints,
    save_checkpoint, write_checkpoint, DiskIo, TrainState,
};
use crate::coconut::{coconut_loss, training_loss, DeviceBatch};
use crate::config::{OptimizerReset, RunConfig};
use crate::gradients::Gradients;
use crate::model_setup::{build_model, check_model_paths, LoadedModel};
use crate::ranks::Ranks;
use crate::run_lock::RunLock;
use crate::TrainError;

/// What the caller's evaluation reports at the end of an epoch (the trainer knows nothing
/// of generation; the eval crate does).
#[derive(Debug, Clone, Default, Serialize)]
pub struct EpochEval {
    /// Validation accuracy in [0, 1].
    pub accuracy: Option<f64>,
    /// Anything else worth logging (token counts, ...).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Serialize)]
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

/// The result of [`Trainer::run`].
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    /// The run folder.
    pub run_dir: PathBuf,
    /// The newest checkpoint.
    pub last_checkpoint: Option<PathBuf>,
    /// Epochs run in this call (0 when the run was already complete).
    pub epochs_run: usize,
    /// Optimizer steps since the start of the run.
    pub global_step: u64,
}

/// A training run: configuration, data, model, optimizer and position.
pub struct Trainer {
    /// The configuration.
    pub config: RunConfig,
    /// The model, its variables and its tokenizer.
    pub loaded: LoadedModel,
    /// Raw validation samples (for evaluation callbacks).
    pub valid_samples: Vec<Sample>,
    train: Vec<TokenizedSample>,
    valid: Vec<TokenizedSample>,
    optimizer: AdamW,
    // Summed over an optimizer step's micro-batches, then handed to the optimizer.
    grads: Gradients,
    state: TrainState,
    run_dir: PathBuf,
    // The ranks of a data-parallel run (one rank alone otherwise).
    ranks: Arc<Ranks>,
    // Held by rank 0 from before the checkpoints are listed until the trainer is dropped.
    _lock: Option<RunLock>,
    // Non-zero (a signal number) when the run should checkpoint and stop.
    stop: Arc<AtomicUsize>,
}

impl Trainer {
    /// Loads the data and builds the model, or resumes from the newest complete checkpoint
    /// of the run folder when `train.resume` is set. A checkpoint that fails to load is
    /// reported and the one before it is tried.
    pub fn new(config: RunConfig, config_path: &Path) -> Result<Self, TrainError> {
        Self::with_ranks(config, config_path, Arc::new(Ranks::single()))
    }

    /// [`Trainer::new`] as one of the `ranks` of a data-parallel run: rank 0 takes the run
    /// folder and picks the checkpoint to resume from, every rank loads it (or builds the
    /// model, then takes rank 0's weights), and threads default to the cores shared out.
    pub fn with_ranks(
        config: RunConfig,
        config_path: &Path,
        ranks: Arc<Ranks>,
    ) -> Result<Self, TrainError> {
        let threads = match config.train.threads {
            0 if ranks.world_size() > 1 => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                (cores / ranks.world_size()).max(1)
            }
            n => n,
        };
        if threads > 0 {
            tch::set_num_threads(threads as i32);
        }
        check_model_paths(&config, config_path)?;
        config.usable_device(config_path)?;
        let run_dir = config.run_dir();
        let lock = if ranks.is_main() {
            let lock = RunLock::acquire(&run_dir)?;
            recover_checkpoints(&DiskIo, &run_dir.join("checkpoints"))?;
            Some(lock)
        } else {
            None
        };
        let mut train_samples = load_samples(&config.data.train)?;
        if config.data.max_train_samples > 0 {
            train_samples.truncate(config.data.max_train_samples);
        }
        let valid_samples = load_samples(&config.data.valid)?;
        let adamw = adamw_config(&config);

        // Resume from the newest checkpoint that loads. A run folder that holds checkpoints
        // is never started afresh over them: that would mix two runs and prune the new one.
        let existing = if ranks.is_main() {
            list_checkpoints(&run_dir.join("checkpoints"))
        } else {
            Vec::new()
        };
        let mut resumed = None;
        let mut failures = Vec::new();
        if config.train.resume {
            for ckpt in existing.iter().rev() {
                match load_checkpoint(ckpt, config.device(), adamw) {
                    Ok(found) => {
                        tracing::info!("resuming from {}", ckpt.display());
                        resumed = Some(found);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!("skipping unreadable checkpoint: {e}");
                        failures.push(e.to_string());
                    }
                }
            }
        }
        // Rank 0 names the checkpoint it resumes from (none: a fresh start); the others load
        // that one.
        let mut chosen = match &resumed {
            Some((_, _, state)) => crate::checkpoint::checkpoint_name(state).into_bytes(),
            None => Vec::new(),
        };
        if resumed.is_none() && !existing.is_empty() {
            let why = if config.train.resume {
                format!("none of its checkpoints loads ({})", failures.join("; "))
            } else {
                "train.resume is false".to_string()
            };
            return Err(TrainError::Config {
                path: config_path.to_path_buf(),
                message: format!(
                    "{} already holds checkpoints and {why}: choose another name or output_dir, or move that folder away",
                    run_dir.display()
                ),
            });
        }
        ranks.broadcast(&mut chosen)?;
        if !ranks.is_main() && !chosen.is_empty() {
            let name = String::from_utf8_lossy(&chosen).to_string();
            resumed = Some(load_checkpoint(
                &run_dir.join("checkpoints").join(name),
                config.device(),
                adamw,
            )?);
        }
        let (loaded, optimizer, state) = match resumed {
            Some((loaded, optimizer, mut state)) => {
                let mut changed = incompatible_changes(&state.config, &config);
                // Another number of ranks continues the same run when an optimizer step
                // still takes as many micro-batches.
                let per_step = |accum: usize, ranks: usize| accum * ranks;
                if per_step(state.config.train.grad_accum, state.ranks)
                    != per_step(config.train.grad_accum, ranks.world_size())
                {
                    changed.push(format!(
                        "train.grad_accum x ranks: {} x {} then, {} x {} now",
                        state.config.train.grad_accum,
                        state.ranks,
                        config.train.grad_accum,
                        ranks.world_size()
                    ));
                }
                if !changed.is_empty() {
                    return Err(TrainError::Config {
                        path: config_path.to_path_buf(),
                        message: format!(
                            "the run in {} was trained with other settings ({}); resuming would not continue the same run",
                            run_dir.display(),
                            changed.join(", ")
                        ),
                    });
                }
                // The checkpoint's position, this file's harmless settings (e.g. more epochs).
                state.config = config.clone();
                state.ranks = ranks.world_size();
                (loaded, optimizer, state)
            }
            None => {
                let loaded = build_model(&config, config_path, &train_samples)?;
                ranks.broadcast_variables(&loaded.vs)?;
                let optimizer = AdamW::new(loaded.vs.variables(), adamw);
                let state = TrainState {
                    epoch: config.train.start_epoch,
                    step_in_epoch: 0,
                    global_step: 0,
                    best_accuracy: None,
                    config: config.clone(),
                    tokenizer_sha256: Some(loaded.tokenizer.fingerprint()),
                    ranks: ranks.world_size(),
                };
                (loaded, optimizer, state)
            }
        };
        let mut loaded = loaded;
        if config.train.bf16 {
            loaded.model.set_compute_kind(Kind::BFloat16);
        }
        let train = tokenize_samples(&loaded.tokenizer, &train_samples);
        let valid = tokenize_samples(&loaded.tokenizer, &valid_samples);
        // Every split is checked before any training: a sample too long for the model would
        // otherwise fail in generation after the whole run.
        let positions = loaded.model.shape().max_positions;
        let c = &config;
        check_sample_lengths(&c.data.train, &train, &c.curriculum, None, positions)?;
        let generated = Some(c.eval.max_new_tokens);
        check_sample_lengths(&c.data.valid, &valid, &c.curriculum, generated, positions)?;
        let grads = Gradients::new(loaded.vs.variables());
        Ok(Self {
            config,
            loaded,
            valid_samples,
            train,
            valid,
            optimizer,
            grads,
            state,
            run_dir,
            ranks,
            _lock: lock,
            stop: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The flag that stops the run cleanly: once something (a signal handler: the command
    /// line sets it on SIGINT and SIGTERM) stores a non-zero signal number in it, the run
    /// finishes the optimizer step under way, checkpoints its position and returns
    /// [`TrainError::Interrupted`]. The same command then resumes exactly there.
    pub fn stop_flag(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.stop)
    }

    /// The run folder.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The ranks of the run (one rank alone unless launched among several).
    pub fn ranks(&self) -> &Ranks {
        &self.ranks
    }

    /// Where training stands.
    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// Trains until `num_epochs`, checkpointing as configured and calling `evaluate` after
    /// every epoch (with the model in eval mode semantics: no gradients are recorded).
    pub fn run(
        &mut self,
        evaluate: &mut dyn FnMut(&Trainer, usize) -> Result<EpochEval, TrainError>,
    ) -> Result<TrainSummary, TrainError> {
        let ckpt_dir = self.run_dir.join("checkpoints");
        std::fs::create_dir_all(&ckpt_dir)
            .map_err(|error| TrainError::Io { path: ckpt_dir.clone(), error })?;
        let mut metrics = MetricsFile::sink();
        if self.ranks.is_main() {
            let resolved = self.run_dir.join("config.toml");
            let toml = toml::to_string_pretty(&self.config).expect("the config serialises");
            std::fs::write(&resolved, toml)
                .map_err(|error| TrainError::Io { path: resolved, error })?;
            metrics = MetricsFile::open(&self.run_dir.join("metrics.jsonl"))?;
        }

        let mut last_checkpoint = list_checkpoints(&ckpt_dir).pop();
        let first_epoch = self.state.epoch;
        let cfg = self.config.clone();
        for epoch in first_epoch..cfg.train.num_epochs {
            let started = Instant::now();
            let stage = cfg.curriculum.stage_of_epoch(epoch);
            if self.state.step_in_epoch == 0 {
                let previous_stage = epoch.checked_sub(1).map(|e| cfg.curriculum.stage_of_epoch(e));
                let reset = match cfg.train.optimizer_reset {
                    OptimizerReset::Epoch => true,
                    OptimizerReset::Stage => previous_stage != Some(stage),
                    OptimizerReset::Never => false,
                };
                if reset {
                    self.optimizer.reset();
                }
            }
            let train_loss =
                self.train_epoch(epoch, stage, &ckpt_dir, &mut metrics, &mut last_checkpoint)?;
            let valid_loss = self.validation_loss(stage)?;
            // The epoch's last update has not met a training loss yet: the validation loss
            // is the first to read those weights, and nothing is saved if it is not finite.
            if !valid_loss.is_finite() {
                return Err(self.diverged("validation", epoch, valid_loss, &ckpt_dir));
            }
            let eval = if cfg.eval.every_epoch || epoch + 1 == cfg.train.num_epochs {
                // Every rank calls it (the command line's shares the samples out); rank 0's
                // result is the one written.
                evaluate(self, epoch)?
            } else {
                EpochEval::default()
            };
            tracing::info!(epoch, stage, train_loss, valid_loss, accuracy = ?eval.accuracy, "epoch done");
            let improved = match (eval.accuracy, self.state.best_accuracy) {
                (Some(a), Some(best)) => a > best,
                (Some(_), None) => true,
                _ => false,
            };
            if improved {
                self.state.best_accuracy = eval.accuracy;
            }
            metrics.write(&MetricLine::Epoch {
                epoch,
                stage,
                global_step: self.state.global_step,
                train_loss,
                valid_loss,
                eval,
                seconds: started.elapsed().as_secs_f64(),
            })?;
            self.state.epoch = epoch + 1;
            self.state.step_in_epoch = 0;
            last_checkpoint = Some(self.checkpoint(&ckpt_dir)?);
            if cfg.train.save_only_improve && improved && self.ranks.is_main() {
                // `best/` is an HF folder of the best model so far, replaced atomically.
                let saved = last_checkpoint.as_ref().expect("just saved");
                copy_model_folder(saved, &self.run_dir)?;
            }
            self.stop_if_asked(last_checkpoint.as_deref())?;
        }
        Ok(TrainSummary {
            run_dir: self.run_dir.clone(),
            last_checkpoint,
            epochs_run: cfg.train.num_epochs.saturating_sub(first_epoch),
            global_step: self.state.global_step,
        })
    }

    /// Trains one epoch (from `state.step_in_epoch` when resuming) and returns its mean loss.
    fn train_epoch(
        &mut self,
        epoch: usize,
        stage: usize,
        ckpt_dir: &Path,
        metrics: &mut MetricsFile,
        last_checkpoint: &mut Option<PathBuf>,
    ) -> Result<f64, TrainError> {
        let cfg = self.config.clone();
        let t = &cfg.train;
        let order = if t.group_by_length {
            let latent = self.loaded.tokenizer.special().latent;
            let shape: Vec<(usize, usize)> = (0..self.train.len())
                .map(|i| {
                    let ids = self.staged_sample(i, epoch, stage).input_ids;
                    let first_latent = ids.iter().position(|&id| id == latent).unwrap_or(0);
                    (first_latent, ids.len() - first_latent)
                })
                .collect();
            length_grouped_batches(&shape, t.batch_size, t.seed, epoch)
        } else {
            batches(self.train.len(), t.batch_size, Some(t.seed), epoch)
        };
        // An optimizer step takes `grad_accum` micro-batches per rank from one order shared by
        // all ranks; rank r takes the step's micro-batches r, r + W, ... The last step of an
        // epoch takes what is left, shared out the same way (a rank may get none).
        let world = self.ranks.world_size();
        let per_step = t.grad_accum * world;
        let steps = order.len().div_ceil(per_step);
        let bar = if self.ranks.is_main() {
            progress_bar(steps as u64, epoch, stage)
        } else {
            ProgressBar::hidden()
        };
        bar.set_position(self.state.step_in_epoch as u64);
        let (mut epoch_loss, mut epoch_steps) = (0.0, 0usize);
        let (mut window_loss, mut window_steps, mut window_tokens) = (0.0, 0usize, 0usize);
        let mut window_start = Instant::now();
        for step in self.state.step_in_epoch..steps {
            let micro = &order[step * per_step..((step + 1) * per_step).min(order.len())];
            let total_samples: usize = micro.iter().map(Vec::len).sum();
            self.grads.clear();
            // The loss stays on the device until the step's one host read.
            let (mut step_loss, mut step_tokens) =
                (Tensor::zeros([], (Kind::Float, self.loaded.vs.device())), 0usize);
            let mine = micro.iter().enumerate().skip(self.ranks.rank()).step_by(world);
            for (index_in_step, indices) in mine {
                // Dropout draws from a seed keyed by the micro-batch's place in the run, so
                // that which rank runs it does not matter.
                tch::manual_seed(micro_batch_seed(t.seed, self.state.global_step, index_in_step));
                let staged: Vec<StagedSample> =
                    indices.iter().map(|&i| self.staged_sample(i, epoch, stage)).collect();
                let batch = collate_training(&staged, &self.loaded.tokenizer.special());
                step_tokens += batch.attention_mask.iter().filter(|&&m| m == 1).count();
                let device_batch = DeviceBatch::new(&batch, self.loaded.vs.device(), Kind::Float);
                if device_batch.supervised_tokens() == 0 {
                    continue;
                }
                let loss = training_loss(
                    self.loaded.model.as_ref(),
                    &device_batch,
                    t.gradient_checkpointing,
                );
                // Weight each micro-batch by its share of the samples of the step.
                let weight = indices.len() as f64 / total_samples as f64;
                step_loss += loss.value.detach() * weight;
                loss.backward(self.loaded.model.as_ref(), &mut self.grads, weight);
            }
            // One all-reduce: the gradients, with the loss, the tokens and whether any rank
            // was asked to stop, so that every rank takes the same decisions.
            let mut scalars = [
                step_loss.double_value(&[]),
                step_tokens as f64,
                self.stop.load(Ordering::SeqCst) as f64,
            ];
            self.ranks.sum_gradients(&mut self.grads, &mut scalars)?;
            let step_loss = scalars[0];
            window_tokens += scalars[1] as usize;
            if scalars[2] > 0.0 && self.stop.load(Ordering::SeqCst) == 0 {
                self.stop.store(STOPPED_BY_ANOTHER_RANK, Ordering::SeqCst);
            }
            if !step_loss.is_finite() {
                return Err(self.diverged("training", epoch, step_loss, ckpt_dir));
            }
            if let Some(max_norm) = t.grad_clip {
                self.grads.clip_norm(max_norm);
            }
            self.optimizer.step(self.grads.take());
            self.state.global_step += 1;
            self.state.step_in_epoch = step + 1;
            epoch_loss += step_loss;
            epoch_steps += 1;
            window_loss += step_loss;
            window_steps += 1;
            bar.inc(1);
            bar.set_message(format!("loss {step_loss:.4}"));
            if window_steps >= t.log_every_steps.max(1) || step + 1 == steps {
                let seconds = window_start.elapsed().as_secs_f64();
                metrics.write(&MetricLine::Step {
                    epoch,
                    stage,
                    global_step: self.state.global_step,
                    loss: window_loss / window_steps as f64,
                    tokens_per_s: window_tokens as f64 / seconds.max(1e-9),
                })?;
                bar.set_message(format!(
                    "loss {:.4} | {:.0} tok/s",
                    window_loss / window_steps as f64,
                    window_tokens as f64 / seconds
                ));
                (window_loss, window_steps, window_tokens) = (0.0, 0, 0);
                window_start = Instant::now();
            }
            // A stop asked for mid-epoch checkpoints this position (once, even when it is
            // also a `save_every_steps` position); at the epoch's end the epoch checkpoint
            // serves.
            let stopping = self.stop.load(Ordering::SeqCst) != 0;
            let periodic = t.save_every_steps > 0
                && self.state.global_step.is_multiple_of(t.save_every_steps as u64);
            if (stopping || periodic) && step + 1 < steps {
                *last_checkpoint = Some(self.checkpoint(ckpt_dir)?);
                self.stop_if_asked(last_checkpoint.as_deref())?;
            }
        }
        bar.finish_and_clear();
        Ok(if epoch_steps > 0 { epoch_loss / epoch_steps as f64 } else { f64::NAN })
    }

    /// Writes a checkpoint of the current position, then prunes older ones.
    fn checkpoint(&self, ckpt_dir: &Path) -> Result<PathBuf, TrainError> {
        if !self.ranks.is_main() {
            // Rank 0 writes it; the others only need its name.
            return Ok(ckpt_dir.join(crate::checkpoint::checkpoint_name(&self.state)));
        }
        let saved = save_checkpoint(&DiskIo, ckpt_dir, &self.loaded, &self.optimizer, &self.state)?;
        prune_checkpoints(&DiskIo, ckpt_dir, self.config.train.keep_last)?;
        Ok(saved)
    }

    /// [`TrainError::Interrupted`] when the stop flag is set; `saved` holds the position.
    fn stop_if_asked(&self, saved: Option<&Path>) -> Result<(), TrainError> {
        match self.stop.load(Ordering::SeqCst) {
            0 => Ok(()),
            signal => Err(TrainError::Interrupted {
                signal: signal as i32,
                checkpoint: saved.map(Path::to_path_buf),
            }),
        }
    }

    /// The error for a non-finite `loss` computed from the current weights. A checkpoint
    /// that holds those weights (saved after the last update) is renamed to
    /// `diverged-<name>`, which no resume reads, so the newest checkpoint left holds weights
    /// that gave a finite loss.
    fn diverged(
        &self,
        which: &'static str,
        epoch: usize,
        loss: f64,
        ckpt_dir: &Path,
    ) -> TrainError {
        let step = self.state.global_step;
        let mut outcome = String::new();
        // Rank 0 owns the folder; the other ranks leave it alone.
        let checkpoints =
            if self.ranks.is_main() { list_checkpoints(ckpt_dir) } else { Vec::new() };
        for ckpt in checkpoints {
            if read_state(&ckpt).is_ok_and(|s| s.global_step == step) {
                let name = ckpt.file_name().expect("a checkpoint folder").to_string_lossy();
                let aside = ckpt_dir.join(format!("diverged-{name}"));
                outcome += &match std::fs::rename(&ckpt, &aside) {
                    Ok(()) => format!(
                        "{} holds those weights: moved to {}. ",
                        ckpt.display(),
                        aside.display()
                    ),
                    Err(e) => format!(
                        "{} holds those weights and could not be moved aside ({e}). ",
                        ckpt.display()
                    ),
                };
            }
        }
        outcome += &match list_checkpoints(ckpt_dir).pop() {
            Some(last) => format!(
                "A resume starts from {}, the newest checkpoint of earlier weights; lower train.lr or set train.grad_clip first.",
                last.display()
            ),
            None => "No checkpoint holds earlier weights: start again with a lower train.lr or a train.grad_clip.".to_string(),
        };
        TrainError::NonFiniteLoss { which, epoch, step, loss, outcome }
    }

    /// The stage-k training sample of training example `index` in `epoch`.
    fn staged_sample(&self, index: usize, epoch: usize, epoch_stage: usize) -> StagedSample {
        let sample = &self.train[index];
        // A per-sample generator keyed by (seed, epoch, index): reproducible and order-free.
        let key = self.config.train.seed
            ^ ((epoch as u64) << 32)
            ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut rng = rand::rngs::StdRng::seed_from_u64(key);
        let stage =
            sample_stage(&self.config.curriculum, epoch_stage, sample.steps.len(), &mut rng);
        training_sample(&self.config.curriculum, &self.loaded.tokenizer.special(), sample, stage)
    }

    /// Teacher-forced loss on the validation set at `stage`, averaged over supervised tokens.
    pub fn validation_loss(&self, stage: usize) -> Result<f64, TrainError> {
        let n = match self.config.data.max_valid_samples {
            0 => self.valid.len(),
            n => n.min(self.valid.len()),
        };
        // Each rank takes every W-th sample; the sums over the ranks give the mean.
        let (rank, world) = (self.ranks.rank(), self.ranks.world_size());
        let mine: Vec<TokenizedSample> =
            self.valid[..n].iter().skip(rank).step_by(world).cloned().collect();
        let (total, tokens) = teacher_forced_sums(
            &self.loaded,
            &self.config.curriculum,
            &mine,
            stage,
            self.config.eval.batch_size,
        );
        let mut sums = [total, tokens];
        self.ranks.sum(&mut sums)?;
        Ok(sums[0] / sums[1].max(1.0))
    }

    /// The tokenized validation samples.
    pub fn valid_tokenized(&self) -> &[TokenizedSample] {
        &self.valid
    }
}

/// Checks that every sample of `file` fits a model of `positions` positions, before any
/// work is spent on it: its longest training form (every step kept, plus the most thoughts
/// and the two markers) and, for a split that is evaluated (`max_new_tokens` given), its
/// longest prompt plus the tokens generation may add. The error names the file and the
/// sample.
pub fn check_sample_lengths(
    file: &Path,
    samples: &[TokenizedSample],
    curriculum: &CurriculumConfig,
    max_new_tokens: Option<usize>,
    positions: usize,
) -> Result<(), TrainError> {
    let thoughts = curriculum.max_thoughts() + 2;
    for (index, s) in samples.iter().enumerate() {
        let steps: usize = s.steps.iter().map(Vec::len).sum();
        let training = s.question.len() + steps + s.answer.len() + thoughts;
        let generation = max_new_tokens.map_or(0, |n| s.question.len() + thoughts + n);
        let needed = training.max(generation);
        if needed > positions {
            let what = if generation > training {
                format!("{} for its prompt and eval.max_new_tokens", needed)
            } else {
                format!("{needed} in training")
            };
            return Err(TrainError::SampleTooLong {
                path: file.to_path_buf(),
                index,
                message: format!(
                    "needs {what}, the model has {positions}: raise model.n_positions or shorten the data"
                ),
            });
        }
    }
    Ok(())
}

/// The loss of the stage-`stage` training sequences of `samples` (no gradients), averaged
/// over their supervised tokens: the paper's validation loss.
pub fn teacher_forced_loss(
    loaded: &LoadedModel,
    curriculum: &CurriculumConfig,
    samples: &[TokenizedSample],
    stage: usize,
    batch_size: usize,
) -> f64 {
    let (total, tokens) = teacher_forced_sums(loaded, curriculum, samples, stage, batch_size);
    total / tokens.max(1.0)
}

/// [`teacher_forced_loss`] as the sum of the supervised tokens' losses and their number.
fn teacher_forced_sums(
    loaded: &LoadedModel,
    curriculum: &CurriculumConfig,
    samples: &[TokenizedSample],
    stage: usize,
    batch_size: usize,
) -> (f64, f64) {
    let special = loaded.tokenizer.special();
    // The sum stays on the device, read once at the end.
    let (mut total, mut tokens) = (Tensor::zeros([], (Kind::Float, loaded.vs.device())), 0i64);
    tch::no_grad(|| {
        for indices in batches(samples.len(), batch_size, None, 0) {
            let staged: Vec<StagedSample> = indices
                .iter()
                .map(|&i| training_sample(curriculum, &special, &samples[i], stage))
                .collect();
            let batch = DeviceBatch::new(
                &collate_training(&staged, &special),
                loaded.vs.device(),
                Kind::Float,
            );
            let count = batch.supervised_tokens();
            if count > 0 {
                total += coconut_loss(loaded.model.as_ref(), &batch, false) * count as f64;
                tokens += count;
            }
        }
    });
    (total.double_value(&[]), tokens as f64)
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
        c.train.grad_accum = 0; // compared with the number of ranks, see `with_ranks`
        c.train.lr = 1.0;
        c.train.grad_clip = None;
        c.train.device = String::new();
        c.train.bf16 = false;
        c.train.save_every_steps = 0;
        c.train.keep_last = 0;
        c.train.save_only_improve = false;
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

fn progress_bar(steps: u64, epoch: usize, stage: usize) -> ProgressBar {
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} steps {msg} ({elapsed}<{eta})",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(format!("epoch {epoch} stage {stage}"));
    bar
}

/// Copies the HF part of a checkpoint (config, weights, tokenizer, and the tokenizer and
/// generation configs where the checkpoint has them) to `<run>/best`, written and replaced
/// the way checkpoints are (see [`crate::checkpoint::write_checkpoint`]).
fn copy_model_folder(src: &Path, run_dir: &Path) -> Result<(), TrainError> {
    let mut files = Vec::new();
    let required = [
        coconut_model::CONFIG_FILE,
        coconut_model::WEIGHTS_FILE,
        crate::model_setup::TOKENIZER_FILE,
    ];
    let optional =
        [coconut_curriculum::TOKENIZER_CONFIG_FILE, coconut_curriculum::GENERATION_CONFIG_FILE];
    for (file, required) in
        required.iter().map(|f| (*f, true)).chain(optional.iter().map(|f| (*f, false)))
    {
        let path = src.join(file);
        if !required && !path.exists() {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|error| TrainError::Io { path, error })?;
        files.push((file, bytes));
    }
    let writer = std::process::id().to_string();
    write_checkpoint(&DiskIo, run_dir, &writer, "best", &files)?;
    Ok(())
}

/// `metrics.jsonl`, appended to (a resumed run continues the same file).
struct MetricsFile {
    path: PathBuf,
    file: Option<std::fs::File>, // none on ranks other than 0
}

impl MetricsFile {
    fn open(path: &Path) -> Result<Self, TrainError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|error| TrainError::Io { path: path.to_path_buf(), error })?;
        Ok(Self { path: path.to_path_buf(), file: Some(file) })
    }

    /// Where the ranks other than 0 write their metrics: nowhere.
    fn sink() -> Self {
        Self { path: PathBuf::new(), file: None }
    }

    fn write(&mut self, line: &MetricLine) -> Result<(), TrainError> {
        let Some(file) = &mut self.file else { return Ok(()) };
        let json = serde_json::to_string(line).expect("metrics serialise");
        writeln!(file, "{json}").map_err(|error| TrainError::Io { path: self.path.clone(), error })
    }
}

/// The stop flag's value on a rank that stops because another rank was asked to (SIGTERM's
/// number: the launcher sends the signal to every rank anyway).
const STOPPED_BY_ANOTHER_RANK: usize = 15;

/// The dropout seed of the micro-batch `index_in_step` of optimizer step `global_step`.
fn micro_batch_seed(seed: u64, global_step: u64, index_in_step: usize) -> i64 {
    (seed as i64)
        .wrapping_add((global_step as i64).wrapping_mul(1 << 20))
        .wrapping_add(index_in_step as i64)
}
