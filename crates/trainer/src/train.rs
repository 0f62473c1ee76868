//! The staged training loop: one curriculum stage per `epochs_per_stage` epochs, AdamW with
//! gradient accumulation, checkpoints at epoch ends (and every N steps), exact resume.
//!
//! Every source of randomness is derived from the seed and the position in the run (epoch,
//! sample, step), never from state carried along: the shuffle of an epoch, the stage drawn
//! for a sample with `uniform_prob`, and the dropout of a step (torch is reseeded from the
//! global step). A run resumed from any checkpoint therefore ends with the same weights as
//! an uninterrupted one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use coconut_curriculum::{
    batches, collate_training, length_grouped_batches, load_samples, sample_stage,
    tokenize_samples, training_sample, Sample, StagedSample, TokenizedSample,
};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::adamw::AdamW;
use crate::checkpoint::{
    checkpoint_name, copy_model_folder, list_checkpoints, prune_checkpoints, read_state,
    recover_checkpoints, save_checkpoint, save_sharded_checkpoint, DiskIo, TrainState,
};
use crate::config::{OptimizerReset, RunConfig};
use crate::error::TrainError;
use crate::gradients::Gradients;
use crate::metrics::{EpochEval, MetricLine, MetricsFile};
use crate::model_setup::{check_model_paths, LoadedModel};
use crate::ranks::Ranks;
use crate::run_lock::RunLock;
use crate::start::resume_or_start;
use crate::state::LossSums;
use crate::validation::{check_sample_lengths, teacher_forced_sums};
use coconut_latent::{training_loss, DeviceBatch};

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
    // Whether some rank's stop flag was set when the last optimizer step summed them: what
    // every rank decides on (a signal reaches the ranks at different moments).
    stop_agreed: bool,
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
        set_threads(config.train.threads, ranks.world_size());
        check_model_paths(&config, config_path)?;
        config.usable_device(config_path)?;
        let run_dir = config.run_dir();
        let lock = if ranks.is_main() { Some(take_run_folder(&run_dir)?) } else { None };
        let (train_samples, valid_samples) = load_splits(&config)?;
        // The optimizer holds the f32 masters; the model computes in the state's precision.
        let (loaded, optimizer, state) =
            resume_or_start(&config, config_path, &ranks, &train_samples)?;
        tracing::info!("computing in {}", state.precision().name());
        let train = tokenize_samples(&loaded.tokenizer, &train_samples);
        let valid = tokenize_samples(&loaded.tokenizer, &valid_samples);
        // Every split is checked before any training: a sample too long for the model would
        // otherwise fail in generation after the whole run.
        let (c, positions) = (&config, loaded.model.shape().max_positions);
        check_sample_lengths(&c.data.train, &train, &c.curriculum, None, positions)?;
        let generated = Some(c.eval.max_new_tokens);
        check_sample_lengths(&c.data.valid, &valid, &c.curriculum, generated, positions)?;
        let grads = Gradients::for_ranks(loaded.vs.variables(), optimizer.partition().ranks);
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
            stop_agreed: false,
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
        let mut metrics = self.open_metrics()?;
        let mut last_checkpoint = list_checkpoints(&ckpt_dir).pop();
        let first_epoch = self.state.epoch;
        let num_epochs = self.config.train.num_epochs;
        for epoch in first_epoch..num_epochs {
            let started = Instant::now();
            let stage = self.config.curriculum.stage_of_epoch(epoch);
            if self.state.step_in_epoch == 0 && self.optimizer_resets_at(epoch) {
                self.optimizer.reset();
            }
            let train_loss =
                self.train_epoch(epoch, stage, &ckpt_dir, &mut metrics, &mut last_checkpoint)?;
            let valid_loss = self.validation_loss(stage)?;
            // The epoch's last update has not met a training loss yet: the validation loss
            // is the first to read those weights, and nothing is saved if it is not finite.
            if !valid_loss.is_finite() {
                return Err(self.diverged("validation", epoch, valid_loss, &ckpt_dir));
            }
            let eval = if self.config.eval.every_epoch || epoch + 1 == num_epochs {
                // Every rank calls it (the command line's shares the samples out); rank 0's
                // result is the one written.
                evaluate(self, epoch)?
            } else {
                EpochEval::default()
            };
            tracing::info!(epoch, stage, train_loss, valid_loss, accuracy = ?eval.accuracy, "epoch done");
            let improved = self.record_accuracy(eval.accuracy);
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
            self.state.losses = LossSums::default();
            let saved = self.checkpoint(&ckpt_dir)?;
            if self.config.train.save_only_improve && improved && self.ranks.is_main() {
                // `best/` is an HF folder of the best model so far, replaced atomically.
                copy_model_folder(&saved, &self.run_dir)?;
            }
            last_checkpoint = Some(saved);
            // Every rank's flag, summed: the ranks stop here together or go on together.
            let mut flag = [self.stop.load(Ordering::SeqCst) as f64];
            self.ranks.sum(&mut flag)?;
            self.agree_on_stop(flag[0]);
            self.stop_if_agreed(last_checkpoint.as_deref())?;
        }
        Ok(TrainSummary {
            run_dir: self.run_dir.clone(),
            last_checkpoint,
            epochs_run: num_epochs.saturating_sub(first_epoch),
            global_step: self.state.global_step,
        })
    }

    /// Writes the resolved config into the run folder and opens `metrics.jsonl` (rank 0;
    /// the other ranks write nowhere).
    fn open_metrics(&self) -> Result<MetricsFile, TrainError> {
        if !self.ranks.is_main() {
            return Ok(MetricsFile::sink());
        }
        let resolved = self.run_dir.join("config.toml");
        let toml = toml::to_string_pretty(&self.config).expect("the config serialises");
        std::fs::write(&resolved, toml)
            .map_err(|error| TrainError::Io { path: resolved, error })?;
        MetricsFile::open(&self.run_dir.join("metrics.jsonl"), &self.state)
    }

    /// Whether the optimizer state is reset at the start of `epoch`.
    fn optimizer_resets_at(&self, epoch: usize) -> bool {
        let curriculum = &self.config.curriculum;
        let previous_stage = epoch.checked_sub(1).map(|e| curriculum.stage_of_epoch(e));
        match self.config.train.optimizer_reset {
            OptimizerReset::Epoch => true,
            OptimizerReset::Stage => previous_stage != Some(curriculum.stage_of_epoch(epoch)),
            OptimizerReset::Never => false,
        }
    }

    /// Keeps `accuracy` as the best so far when it is; returns whether it was.
    fn record_accuracy(&mut self, accuracy: Option<f64>) -> bool {
        let improved = match (accuracy, self.state.best_accuracy) {
            (Some(a), Some(best)) => a > best,
            (Some(_), None) => true,
            _ => false,
        };
        if improved {
            self.state.best_accuracy = accuracy;
        }
        improved
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
        let order = self.epoch_order(epoch, stage);
        // An optimizer step takes `grad_accum` micro-batches per rank from one order shared by
        // all ranks; rank r takes the step's micro-batches r, r + W, ... The last step of an
        // epoch takes what is left, shared out the same way (a rank may get none).
        let per_step = self.config.train.grad_accum * self.ranks.world_size();
        let steps = order.len().div_ceil(per_step);
        let bar = if self.ranks.is_main() {
            progress_bar(steps as u64, epoch, stage)
        } else {
            ProgressBar::hidden()
        };
        bar.set_position(self.state.step_in_epoch as u64);
        // Resumed mid-epoch, the sums continue from the checkpoint's.
        let mut window = LossWindow::new(&self.state.losses);
        for step in self.state.step_in_epoch..steps {
            let micro = &order[step * per_step..((step + 1) * per_step).min(order.len())];
            let (step_loss, step_tokens) = self.optimizer_step(epoch, stage, micro, ckpt_dir)?;
            self.state.step_in_epoch = step + 1;
            self.state.losses.epoch += step_loss;
            self.state.losses.epoch_steps += 1;
            window.add(step_loss, step_tokens);
            bar.inc(1);
            bar.set_message(format!("loss {step_loss:.4}"));
            let log_every = self.config.train.log_every_steps.max(1);
            if window.steps >= log_every || step + 1 == steps {
                let (loss, tokens_per_s) = window.take();
                let global_step = self.state.global_step;
                metrics.write(&MetricLine::Step {
                    epoch,
                    stage,
                    global_step,
                    loss,
                    tokens_per_s,
                })?;
                bar.set_message(format!("loss {loss:.4} | {tokens_per_s:.0} tok/s"));
            }
            (self.state.losses.window, self.state.losses.window_steps) =
                (window.loss, window.steps);
            // A stop asked for mid-epoch checkpoints this position (once, even when it is
            // also a `save_every_steps` position); at the epoch's end the epoch checkpoint
            // serves.
            let stopping = self.stop_agreed;
            let every = self.config.train.save_every_steps as u64;
            let periodic = every > 0 && self.state.global_step.is_multiple_of(every);
            if (stopping || periodic) && step + 1 < steps {
                *last_checkpoint = Some(self.checkpoint(ckpt_dir)?);
                self.stop_if_agreed(last_checkpoint.as_deref())?;
            }
        }
        bar.finish_and_clear();
        let sums = self.state.losses;
        Ok(if sums.epoch_steps > 0 { sums.epoch / sums.epoch_steps as f64 } else { f64::NAN })
    }

    /// The micro-batches of `epoch`, as indices into the training samples, in order.
    fn epoch_order(&self, epoch: usize, stage: usize) -> Vec<Vec<usize>> {
        let t = &self.config.train;
        if !t.group_by_length {
            return batches(self.train.len(), t.batch_size, Some(t.seed), epoch);
        }
        let latent = self.loaded.tokenizer.special().latent;
        let shape: Vec<(usize, usize)> = (0..self.train.len())
            .map(|i| {
                let ids = self.staged_sample(i, epoch, stage).input_ids;
                let first_latent = ids.iter().position(|&id| id == latent).unwrap_or(0);
                (first_latent, ids.len() - first_latent)
            })
            .collect();
        length_grouped_batches(&shape, t.batch_size, t.seed, epoch)
    }

    /// One optimizer step over the micro-batches `micro` shared by all ranks (this rank
    /// runs its share), then one all-reduce and the update. Returns the step's loss and the
    /// real tokens it processed, summed over the ranks.
    fn optimizer_step(
        &mut self,
        epoch: usize,
        stage: usize,
        micro: &[Vec<usize>],
        ckpt_dir: &Path,
    ) -> Result<(f64, usize), TrainError> {
        let t = &self.config.train;
        let total_samples: usize = micro.iter().map(Vec::len).sum();
        self.grads.clear();
        // The loss stays on the device until the step's one host read.
        let mut step_loss = Tensor::zeros([], (Kind::Float, self.loaded.vs.device()));
        let mut step_tokens = 0usize;
        let mine =
            micro.iter().enumerate().skip(self.ranks.rank()).step_by(self.ranks.world_size());
        for (index_in_step, indices) in mine {
            // Dropout draws from a seed keyed by the micro-batch's place in the run, so
            // that which rank runs it does not matter.
            tch::manual_seed(micro_batch_seed(t.seed, self.state.global_step, index_in_step));
            let staged: Vec<StagedSample> =
                indices.iter().map(|&i| self.staged_sample(i, epoch, stage)).collect();
            let batch = collate_training(&staged, &self.loaded.tokenizer.special());
            step_tokens += batch.attention_mask.iter().filter(|&&m| m == 1).count();
            let model = self.loaded.model.as_ref();
            let device_batch = DeviceBatch::new(&batch, self.loaded.vs.device(), model.kind());
            if device_batch.supervised_tokens() == 0 {
                continue;
            }
            let loss = training_loss(model, &device_batch, t.gradient_checkpointing);
            // Weight each micro-batch by its share of the samples of the step.
            let weight = indices.len() as f64 / total_samples as f64;
            step_loss += loss.value.detach() * weight;
            loss.backward(model, &mut self.grads, weight);
        }
        // One all-reduce: the gradients, with the loss, the tokens and whether any rank
        // was asked to stop, so that every rank takes the same decisions.
        let stop = self.stop.load(Ordering::SeqCst) as f64;
        let mut scalars = [step_loss.double_value(&[]), step_tokens as f64, stop];
        let partition = self.optimizer.partition();
        self.ranks.sum_gradients(&mut self.grads, &mut scalars, partition)?;
        let [step_loss, step_tokens, stops] = scalars;
        self.agree_on_stop(stops);
        if !step_loss.is_finite() {
            return Err(self.diverged("training", epoch, step_loss, ckpt_dir));
        }
        if let Some(max_norm) = self.config.train.grad_clip {
            self.ranks.clip_gradients(&mut self.grads, max_norm, &self.optimizer)?;
        }
        self.optimizer.step(&mut self.grads);
        self.ranks.gather_weights(&self.optimizer)?;
        self.state.global_step += 1;
        Ok((step_loss, step_tokens as usize))
    }

    /// Writes a checkpoint of the current position, then prunes older ones. Rank 0 writes
    /// it, except the parts of a sharded optimizer state, which each rank writes.
    fn checkpoint(&mut self, ckpt_dir: &Path) -> Result<PathBuf, TrainError> {
        let saved = if self.optimizer.partition().is_whole() {
            if !self.ranks.is_main() {
                // The others only need its name.
                return Ok(ckpt_dir.join(checkpoint_name(&self.state)));
            }
            save_checkpoint(&DiskIo, ckpt_dir, &self.loaded, &self.optimizer, &self.state)?
        } else {
            let masters = self.ranks.gather_masters(&self.optimizer, &mut self.grads)?;
            let (loaded, optimizer, state) = (&self.loaded, &self.optimizer, &self.state);
            save_sharded_checkpoint(
                &DiskIo,
                ckpt_dir,
                loaded,
                optimizer,
                masters,
                state,
                &self.ranks,
            )?
        };
        if self.ranks.is_main() {
            prune_checkpoints(&DiskIo, ckpt_dir, self.config.train.keep_last)?;
        }
        Ok(saved)
    }

    /// Records whether the ranks stop, from their stop flags summed (`flags`); a rank
    /// stopping because another was asked to marks its own flag.
    fn agree_on_stop(&mut self, flags: f64) {
        self.stop_agreed = flags > 0.0;
        if self.stop_agreed && self.stop.load(Ordering::SeqCst) == 0 {
            self.stop.store(STOPPED_BY_ANOTHER_RANK, Ordering::SeqCst);
        }
    }

    /// [`TrainError::Interrupted`] when the ranks agreed to stop; `saved` holds the
    /// position. A flag set since the last agreement waits for the next.
    fn stop_if_agreed(&self, saved: Option<&Path>) -> Result<(), TrainError> {
        if !self.stop_agreed {
            return Ok(());
        }
        Err(TrainError::Interrupted {
            signal: self.stop.load(Ordering::SeqCst) as i32,
            checkpoint: saved.map(Path::to_path_buf),
        })
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

    /// The validation samples that per-epoch evaluation and the validation loss use: the
    /// first `data.max_valid_samples` (all when 0), as text and tokenized.
    pub fn valid_split(&self) -> (&[Sample], &[TokenizedSample]) {
        let n = match self.config.data.max_valid_samples {
            0 => self.valid.len(),
            n => n.min(self.valid.len()),
        };
        (&self.valid_samples[..n], &self.valid[..n])
    }

    /// Teacher-forced loss on the validation set at `stage`, averaged over supervised tokens.
    pub fn validation_loss(&self, stage: usize) -> Result<f64, TrainError> {
        // Each rank takes every W-th sample; the sums over the ranks give the mean.
        let (rank, world) = (self.ranks.rank(), self.ranks.world_size());
        let mine: Vec<TokenizedSample> =
            self.valid_split().1.iter().skip(rank).step_by(world).cloned().collect();
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
}

/// Sets torch's thread count: `threads`, or when 0 in a run of several ranks the cores
/// shared out among them (0 alone leaves torch's default).
fn set_threads(threads: usize, world_size: usize) {
    let threads = match threads {
        0 if world_size > 1 => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores / world_size).max(1)
        }
        n => n,
    };
    if threads > 0 {
        tch::set_num_threads(threads as i32);
    }
}

/// Takes the run folder for this process (held until the lock is dropped), then tidies
/// what an earlier process left among its checkpoints.
fn take_run_folder(run_dir: &Path) -> Result<RunLock, TrainError> {
    let lock = RunLock::acquire(run_dir)?;
    recover_checkpoints(&DiskIo, &run_dir.join("checkpoints"))?;
    Ok(lock)
}

/// The training samples (the first `data.max_train_samples`, all when 0) and the
/// validation samples.
fn load_splits(config: &RunConfig) -> Result<(Vec<Sample>, Vec<Sample>), TrainError> {
    let mut train = load_samples(&config.data.train)?;
    if config.data.max_train_samples > 0 {
        train.truncate(config.data.max_train_samples);
    }
    Ok((train, load_samples(&config.data.valid)?))
}

/// The training loss and throughput since the last `metrics.jsonl` step line.
struct LossWindow {
    loss: f64,
    steps: usize,
    tokens: usize,
    start: Instant,
}

impl LossWindow {
    /// A window holding the steps `sums` counts since the last step line (their tokens
    /// are not counted: a resumed window's rate covers the steps it timed).
    fn new(sums: &LossSums) -> Self {
        Self { loss: sums.window, steps: sums.window_steps, tokens: 0, start: Instant::now() }
    }

    fn add(&mut self, loss: f64, tokens: usize) {
        self.loss += loss;
        self.steps += 1;
        self.tokens += tokens;
    }

    /// The mean loss and the tokens per second of the window; starts a new one.
    fn take(&mut self) -> (f64, f64) {
        let seconds = self.start.elapsed().as_secs_f64();
        let figures = (self.loss / self.steps as f64, self.tokens as f64 / seconds.max(1e-9));
        *self = Self::new(&LossSums::default());
        figures
    }
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

/// The stop flag's value on a rank that stops because another rank was asked to (SIGTERM's
/// number: the launcher sends the signal to every rank anyway).
const STOPPED_BY_ANOTHER_RANK: usize = 15;

/// The dropout seed of the micro-batch `index_in_step` of optimizer step `global_step`.
fn micro_batch_seed(seed: u64, global_step: u64, index_in_step: usize) -> i64 {
    (seed as i64)
        .wrapping_add((global_step as i64).wrapping_mul(1 << 20))
        .wrapping_add(index_in_step as i64)
}
