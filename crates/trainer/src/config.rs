//! The run configuration: one TOML file, deserialised with `deny_unknown_fields`, validated
//! once at load, and saved beside every checkpoint.

use std::path::{Path, PathBuf};

use coconut_curriculum::CurriculumConfig;
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// A whole run: data, model, curriculum, optimisation and evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Name of the run; the run folder is `<output_dir>/<name>`.
    pub name: String,
    /// Where run folders go (relative paths are taken from the working directory).
    #[serde(default = "default_output_dir")]
    pub output_dir: PathBuf,
    /// Training, validation and test data.
    pub data: DataConfig,
    /// The model to train.
    pub model: ModelConfig,
    /// The stage-k curriculum.
    #[serde(default)]
    pub curriculum: CurriculumConfig,
    /// Optimisation and checkpointing.
    #[serde(default)]
    pub train: TrainConfig,
    /// Evaluation after every epoch and at the end.
    #[serde(default)]
    pub eval: EvalConfig,
}

fn default_output_dir() -> PathBuf {
    PathBuf::from("runs")
}

/// Which dataset files to use, or how to generate them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Training samples (Coconut JSON, iCoT text lines or GSM8k jsonl).
    pub train: PathBuf,
    /// Validation samples.
    pub valid: PathBuf,
    /// Test samples (optional).
    #[serde(default)]
    pub test: Option<PathBuf>,
    /// Generate the three files first if they are missing.
    #[serde(default)]
    pub generate: Option<GenerateConfig>,
    /// Use only the first N training samples (0 = all).
    #[serde(default)]
    pub max_train_samples: usize,
    /// Use only the first N validation samples in per-epoch evaluation (0 = all).
    #[serde(default)]
    pub max_valid_samples: usize,
}

/// Settings of the dataset generators for a run that makes its own data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateConfig {
    /// `prosqa` or `prontoqa`.
    pub kind: String,
    /// `small` (fast CPU training) or `paper`.
    #[serde(default = "default_preset")]
    pub preset: String,
    /// Number of train, valid and test samples.
    pub sizes: [usize; 3],
    /// Generator seed.
    #[serde(default)]
    pub seed: u64,
}

fn default_preset() -> String {
    "small".to_string()
}

/// A pretrained HF GPT-2 folder, or the shape of a model trained from scratch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// HF GPT-2 folder (config.json, model.safetensors, tokenizer.json). When absent a
    /// model of the shape below is trained from scratch with a tokenizer trained on the data.
    #[serde(default)]
    pub pretrained: Option<PathBuf>,
    /// Start from this checkpoint of an earlier run (for example the CoT run's) instead.
    #[serde(default)]
    pub init_checkpoint: Option<PathBuf>,
    /// Token whose embedding initialises the added latent tokens (the reference uses `<<`).
    #[serde(default = "default_init_token")]
    pub latent_init_token: String,
    /// Layers of a model trained from scratch.
    #[serde(default = "default_n_layer")]
    pub n_layer: usize,
    /// Hidden size of a model trained from scratch.
    #[serde(default = "default_n_embd")]
    pub n_embd: usize,
    /// Attention heads of a model trained from scratch.
    #[serde(default = "default_n_head")]
    pub n_head: usize,
    /// Context length of a model trained from scratch.
    #[serde(default = "default_n_positions")]
    pub n_positions: usize,
    /// Vocabulary size of the tokenizer trained for a model trained from scratch.
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    /// Dropout of a model trained from scratch, on the embeddings, the attention
    /// probabilities and the residual branches (GPT-2 uses 0.1). A pretrained model keeps
    /// its own.
    #[serde(default)]
    pub dropout: f64,
}

fn default_init_token() -> String {
    "<<".to_string()
}
fn default_n_layer() -> usize {
    2
}
fn default_n_embd() -> usize {
    128
}
fn default_n_head() -> usize {
    4
}
fn default_n_positions() -> usize {
    512
}
fn default_vocab() -> usize {
    512
}

/// When the AdamW moments are reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerReset {
    /// At every stage switch (the paper).
    Stage,
    /// At every epoch (what the reference code does).
    Epoch,
    /// Never.
    Never,
}

/// Optimisation, devices and checkpointing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Total number of epochs.
    pub num_epochs: usize,
    /// Samples per forward pass.
    pub batch_size: usize,
    /// Forward passes whose gradients are summed before one optimizer step.
    pub grad_accum: usize,
    /// AdamW learning rate (constant, as in the paper).
    pub lr: f64,
    /// AdamW decoupled weight decay, applied to 2-D parameters only.
    pub weight_decay: f64,
    /// AdamW betas.
    pub betas: (f64, f64),
    /// AdamW epsilon.
    pub eps: f64,
    /// When the optimizer state is reset.
    pub optimizer_reset: OptimizerReset,
    /// Batch samples of similar length together (shuffled windows sorted by length), which
    /// cuts the padding a batch computes on; off, batches are plain shuffled draws as in the
    /// reference.
    pub group_by_length: bool,
    /// Clip the global gradient norm to this value (none in the paper).
    pub grad_clip: Option<f64>,
    /// Recompute the long passes (the question, and the final pass after the thoughts) block
    /// by block in the backward pass instead of keeping their activations: far less memory
    /// for one more forward.
    pub gradient_checkpointing: bool,
    /// Seed of initialisation, shuffling and dropout.
    pub seed: u64,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// Compute in bf16 with f32 master weights (CUDA only).
    pub bf16: bool,
    /// Torch intra-op threads (0 = leave the default).
    pub threads: usize,
    /// Also checkpoint every N optimizer steps (0 = only at epoch ends).
    pub save_every_steps: usize,
    /// Keep this many newest checkpoints (0 = all).
    pub keep_last: usize,
    /// Keep an epoch checkpoint only when validation accuracy improved.
    pub save_only_improve: bool,
    /// Start from the newest complete checkpoint of the run folder, if any.
    pub resume: bool,
    /// First epoch to run when starting from `init_checkpoint` (for example stage 1 of GSM8k).
    pub start_epoch: usize,
    /// Log the training loss every N optimizer steps.
    pub log_every_steps: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            num_epochs: 50,
            batch_size: 32,
            grad_accum: 1,
            lr: 1e-4,
            weight_decay: 0.01,
            betas: (0.9, 0.999),
            eps: 1e-8,
            optimizer_reset: OptimizerReset::Stage,
            group_by_length: false,
            grad_clip: None,
            gradient_checkpointing: false,
            seed: 0,
            device: "cpu".to_string(),
            bf16: false,
            threads: 0,
            save_every_steps: 0,
            keep_last: 3,
            save_only_improve: false,
            resume: true,
            start_epoch: 0,
            log_every_steps: 10,
        }
    }
}

/// Evaluation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Greedy decoding stops after this many new tokens (64 for GSM8k, 128 otherwise).
    pub max_new_tokens: usize,
    /// Prompts decoded together.
    pub batch_size: usize,
    /// Evaluate accuracy on the validation set after every epoch.
    pub every_epoch: bool,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self { max_new_tokens: 128, batch_size: 32, every_epoch: true }
    }
}

impl RunConfig {
    /// Reads and validates a TOML run config. Errors name the file and the place.
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| TrainError::Io { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates TOML text; `path` is used in error messages only.
    pub fn parse(text: &str, path: &Path) -> Result<Self, TrainError> {
        let config: RunConfig = toml::from_str(text)
            .map_err(|e| TrainError::Config { path: path.to_path_buf(), message: e.to_string() })?;
        config
            .validate()
            .map_err(|message| TrainError::Config { path: path.to_path_buf(), message })?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), String> {
        self.curriculum.validate().map_err(|e| e.to_string())?;
        let t = &self.train;
        if t.batch_size == 0 || t.grad_accum == 0 {
            return Err("train.batch_size and train.grad_accum must be at least 1".into());
        }
        if t.lr.is_nan() || t.lr <= 0.0 || t.weight_decay < 0.0 {
            return Err("train.lr must be positive and train.weight_decay non-negative".into());
        }
        parse_device(&t.device)?;
        if t.bf16 && t.device == "cpu" {
            return Err("train.bf16 needs a CUDA device".into());
        }
        if t.start_epoch >= t.num_epochs.max(1) {
            return Err(format!(
                "train.start_epoch ({}) must be below num_epochs ({})",
                t.start_epoch, t.num_epochs
            ));
        }
        if let Some(g) = &self.data.generate {
            if g.kind != "prosqa" && g.kind != "prontoqa" {
                return Err(format!(
                    "data.generate.kind must be `prosqa` or `prontoqa`, not {:?}",
                    g.kind
                ));
            }
            if g.preset != "small" && g.preset != "paper" {
                return Err(format!(
                    "data.generate.preset must be `small` or `paper`, not {:?}",
                    g.preset
                ));
            }
        }
        let m = &self.model;
        if !(0.0..1.0).contains(&m.dropout) {
            return Err(format!("model.dropout ({}) must be in [0, 1)", m.dropout));
        }
        if m.pretrained.is_none() && (m.n_head == 0 || !m.n_embd.is_multiple_of(m.n_head)) {
            return Err(format!(
                "model.n_embd ({}) must be a multiple of model.n_head ({})",
                m.n_embd, m.n_head
            ));
        }
        if self.eval.batch_size == 0 || self.eval.max_new_tokens == 0 {
            return Err("eval.batch_size and eval.max_new_tokens must be at least 1".into());
        }
        Ok(())
    }

    /// The run folder.
    pub fn run_dir(&self) -> PathBuf {
        self.output_dir.join(&self.name)
    }

    /// The device named by `train.device` (validated at load).
    pub fn device(&self) -> tch::Device {
        parse_device(&self.train.device).expect("validated at load")
    }
}

/// `cpu`, `cuda` (device 0) or `cuda:N`.
fn parse_device(name: &str) -> Result<tch::Device, String> {
    let bad = || format!("train.device must be `cpu`, `cuda` or `cuda:N`, not {name:?}");
    match name {
        "cpu" => Ok(tch::Device::Cpu),
        "cuda" => Ok(tch::Device::Cuda(0)),
        _ => {
            let index = name.strip_prefix("cuda:").ok_or_else(bad)?;
            index.parse().map(tch::Device::Cuda).map_err(|_| bad())
        }
    }
}
