//! The run configuration: one TOML file, deserialised with `deny_unknown_fields`, validated
//! once at load, and saved beside every checkpoint.

use std::path::{Path, PathBuf};

use coconut_curriculum::CurriculumConfig;
use coconut_datasets::GenerateConfig;
use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::precision::Precision;

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

/// A pretrained HF model folder (GPT-2, Llama or Qwen2), or the architecture and shape of a
/// model trained from scratch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// HF model folder (config.json, the weights, tokenizer.json; its config.json names the
    /// architecture). When absent a model of the architecture and shape below is trained
    /// from scratch with a tokenizer trained on the data.
    #[serde(default)]
    pub pretrained: Option<PathBuf>,
    /// Start from this checkpoint of an earlier run (for example the CoT run's) instead.
    #[serde(default)]
    pub init_checkpoint: Option<PathBuf>,
    /// Token whose embedding initialises the added latent tokens (the reference uses `<<`).
    #[serde(default = "default_init_token")]
    pub latent_init_token: String,
    /// Architecture of a model trained from scratch: `gpt2` or `llama` (RMSNorm, rotary
    /// positions, grouped-query attention, SwiGLU, tied embeddings).
    #[serde(default)]
    pub architecture: Architecture,
    /// Key-value heads of a Llama trained from scratch (grouped-query attention when fewer
    /// than `n_head`); defaults to `n_head`.
    #[serde(default)]
    pub n_kv_head: Option<usize>,
    /// MLP inner size of a Llama trained from scratch; defaults to 8/3 of `n_embd`
    /// rounded up to a multiple of 64 (SwiGLU's three matrices then hold about as many
    /// weights as GPT-2's two of 4 x `n_embd`).
    #[serde(default)]
    pub intermediate_size: Option<usize>,
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
    /// probabilities and the residual branches (GPT-2 uses 0.1); a Llama has it on the
    /// attention probabilities only, as HF's does. A pretrained model keeps its own.
    #[serde(default)]
    pub dropout: f64,
}

/// The architectures a model trained from scratch can have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// GPT-2: LayerNorm, learned positions, GELU MLP, tied head.
    #[default]
    Gpt2,
    /// Llama: RMSNorm, rotary positions, grouped-query attention, SwiGLU, tied head.
    Llama,
}

impl ModelConfig {
    /// Key-value heads of a Llama trained from scratch.
    pub fn kv_heads(&self) -> usize {
        self.n_kv_head.unwrap_or(self.n_head)
    }

    /// MLP inner size of a Llama trained from scratch.
    pub fn llama_intermediate_size(&self) -> usize {
        self.intermediate_size.unwrap_or((8 * self.n_embd).div_ceil(3).div_ceil(64) * 64)
    }
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
    /// `cpu`, `cuda` (device 0) or `cuda:N` in the file; parsed once, at load.
    #[serde(with = "device_by_name")]
    pub device: tch::Device,
    /// `"auto"` (when absent), `"f32"` or `"bf16"`: see [`Precision`]; read it with
    /// [`TrainConfig::precision`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    /// The older spelling, still read: `true` is `precision = "bf16"`, `false` is `"f32"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bf16: Option<bool>,
    /// With several data-parallel ranks, each rank holds and updates only its part of the
    /// optimizer state (ZeRO-1): the AdamW moments, and in bf16 the f32 master weights,
    /// are split across the ranks, the gradients are reduce-scattered instead of
    /// all-reduced, and the updated weights all-gathered. The same weights as without it;
    /// a checkpoint resumes sharded or not, on any number of ranks.
    pub shard_optimizer: bool,
    /// Torch intra-op threads (0 = leave the default).
    pub threads: usize,
    /// Also checkpoint every N optimizer steps (0 = only at epoch ends).
    pub save_every_steps: usize,
    /// Keep this many newest checkpoints (0 = all).
    pub keep_last: usize,
    /// Also keep the model of the best validation accuracy so far in `<run>/best` (an HF
    /// folder, replaced when the accuracy improves); epoch checkpoints are kept as usual.
    pub save_only_improve: bool,
    /// Start from the newest complete checkpoint of the run folder, if any.
    pub resume: bool,
    /// Resume even though a data file differs from the one the run trained on (its content
    /// hash is in the checkpoint); the state records each change accepted. Otherwise such a
    /// resume is refused, naming the file.
    pub accept_changed_data: bool,
    /// First epoch to run when starting from `init_checkpoint` (for example stage 1 of GSM8k).
    pub start_epoch: usize,
    /// Log the training loss every N optimizer steps.
    pub log_every_steps: usize,
}

impl TrainConfig {
    /// The precision asked for: `precision`, else the older `bf16` key, else `auto`.
    pub fn precision(&self) -> Precision {
        match (self.precision, self.bf16) {
            (Some(precision), _) => precision,
            (None, Some(true)) => Precision::Bf16,
            (None, Some(false)) => Precision::F32,
            (None, None) => Precision::Auto,
        }
    }
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
            device: tch::Device::Cpu,
            precision: None,
            bf16: None,
            shard_optimizer: false,
            threads: 0,
            save_every_steps: 0,
            keep_last: 3,
            save_only_improve: false,
            resume: true,
            accept_changed_data: false,
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
            .map_err(|error| TrainError::Io { path: path.to_path_buf(), error })?;
        Self::parse(&text, path)
    }

    /// Parses and validates TOML text; `path` is used in error messages only.
    pub fn parse(text: &str, path: &Path) -> Result<Self, TrainError> {
        Self::parse_with_overrides(text, path, &[])
    }

    /// Parses TOML text, applies `overrides` (`key=value` with a dotted TOML key, as
    /// `--set train.lr=3e-4` gives them) and validates the result. A value that is not a TOML
    /// value (`train.device=cuda:0`) is taken as a string. A key the config does not have is
    /// an error, as it is in the file.
    pub fn parse_with_overrides(
        text: &str,
        path: &Path,
        overrides: &[String],
    ) -> Result<Self, TrainError> {
        let error = |message: String| TrainError::Config { path: path.to_path_buf(), message };
        let config: RunConfig = if overrides.is_empty() {
            toml::from_str(text).map_err(|e| error(e.to_string()))?
        } else {
            let mut table: toml::Table = toml::from_str(text).map_err(|e| error(e.to_string()))?;
            for item in overrides {
                apply_override(&mut table, item)
                    .map_err(|m| error(format!("--set {item}: {m}")))?;
            }
            let list = overrides.join(", ");
            toml::Value::Table(table)
                .try_into()
                .map_err(|e| error(format!("with --set {list}: {e}")))?
        };
        config.validate().map_err(error)?;
        Ok(config)
    }

    /// Checks values that parse but make no sense, or that would not survive being saved
    /// in a checkpoint and read back (JSON has no NaN or infinity; TOML integers stop at
    /// `i64::MAX`). Every message names the key.
    pub fn validate(&self) -> Result<(), String> {
        self.curriculum.validate().map_err(|e| e.to_string())?;
        let c = &self.curriculum;
        if c.max_latent_stage > LIMIT_STAGES || c.c_thought > LIMIT_STAGES {
            return Err(format!(
                "curriculum.max_latent_stage ({}) and curriculum.c_thought ({}) must be at most {LIMIT_STAGES}",
                c.max_latent_stage, c.c_thought
            ));
        }
        if self.name.is_empty()
            || self.name == "."
            || self.name == ".."
            || self.name.contains(['/', '\\'])
        {
            return Err(format!("name ({:?}) must be a plain folder name", self.name));
        }

        validate_train(&self.train)?;
        validate_data(&self.data)?;
        validate_model(&self.model)?;
        at_least("eval.batch_size", self.eval.batch_size, 1, LIMIT_COUNT)?;
        at_least("eval.max_new_tokens", self.eval.max_new_tokens, 1, LIMIT_POSITIONS)?;
        Ok(())
    }

    /// The run folder.
    pub fn run_dir(&self) -> PathBuf {
        self.output_dir.join(&self.name)
    }

    /// The device named by `train.device`, if this process can use it (see
    /// [`usable_device`]); errors name `config_path`.
    pub fn usable_device(&self, config_path: &Path) -> Result<tch::Device, TrainError> {
        usable_device(&device_name(self.train.device))
            .map_err(|message| TrainError::Config { path: config_path.to_path_buf(), message })
    }

    /// The device named by `train.device`.
    pub fn device(&self) -> tch::Device {
        self.train.device
    }
}

/// The `[train]` values that parse but make no sense.
fn validate_train(t: &TrainConfig) -> Result<(), String> {
    at_least("train.batch_size", t.batch_size, 1, LIMIT_COUNT)?;
    at_least("train.grad_accum", t.grad_accum, 1, LIMIT_COUNT)?;
    at_least("train.num_epochs", t.num_epochs, 1, LIMIT_COUNT)?;
    at_least("train.threads", t.threads, 0, LIMIT_THREADS)?;
    for (key, value) in [
        ("train.save_every_steps", t.save_every_steps),
        ("train.keep_last", t.keep_last),
        ("train.log_every_steps", t.log_every_steps),
    ] {
        at_least(key, value, 0, LIMIT_COUNT)?;
    }
    if t.seed > i64::MAX as u64 {
        return Err(format!("train.seed ({}) must be at most {}", t.seed, i64::MAX));
    }
    positive("train.lr", t.lr)?;
    positive("train.eps", t.eps)?;
    if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
        return Err(format!("train.weight_decay ({}) must be finite and >= 0", t.weight_decay));
    }
    for (key, beta) in [("train.betas[0]", t.betas.0), ("train.betas[1]", t.betas.1)] {
        if !(0.0..1.0).contains(&beta) {
            return Err(format!("{key} ({beta}) must be in [0, 1)"));
        }
    }
    if let Some(clip) = t.grad_clip {
        // Zero would freeze training, a negative value would ascend the gradient.
        positive("train.grad_clip", clip)?;
    }
    if t.precision.is_some() && t.bf16.is_some() {
        return Err("train.precision and train.bf16 are both set: keep train.precision \
                    (bf16 = true is precision = \"bf16\")"
            .into());
    }
    if t.start_epoch >= t.num_epochs {
        return Err(format!(
            "train.start_epoch ({}) must be below train.num_epochs ({})",
            t.start_epoch, t.num_epochs
        ));
    }
    Ok(())
}

/// The `[data]` values that parse but make no sense.
fn validate_data(data: &DataConfig) -> Result<(), String> {
    if let Some(generate) = &data.generate {
        generate.validate()?;
    }
    at_least("data.max_train_samples", data.max_train_samples, 0, LIMIT_SAMPLES)?;
    at_least("data.max_valid_samples", data.max_valid_samples, 0, LIMIT_SAMPLES)?;
    Ok(())
}

/// The shape of a model trained from scratch (a pretrained one brings its own).
fn validate_model(m: &ModelConfig) -> Result<(), String> {
    if !(0.0..1.0).contains(&m.dropout) {
        return Err(format!("model.dropout ({}) must be in [0, 1)", m.dropout));
    }
    at_least("model.n_layer", m.n_layer, 1, LIMIT_LAYERS)?;
    at_least("model.n_head", m.n_head, 1, LIMIT_WIDTH)?;
    at_least("model.n_embd", m.n_embd, 1, LIMIT_WIDTH)?;
    at_least("model.n_positions", m.n_positions, 1, LIMIT_POSITIONS)?;
    let min_vocab = coconut_curriculum::MIN_TRAINED_VOCAB;
    at_least("model.vocab_size", m.vocab_size, min_vocab, LIMIT_VOCAB)?;
    if !m.n_embd.is_multiple_of(m.n_head) {
        return Err(format!(
            "model.n_embd ({}) must be a multiple of model.n_head ({})",
            m.n_embd, m.n_head
        ));
    }
    if m.architecture == Architecture::Gpt2 {
        for (key, set) in [
            ("model.n_kv_head", m.n_kv_head.is_some()),
            ("model.intermediate_size", m.intermediate_size.is_some()),
        ] {
            if set {
                return Err(format!("{key} applies to architecture = \"llama\" only"));
            }
        }
    } else {
        at_least("model.n_kv_head", m.kv_heads(), 1, LIMIT_WIDTH)?;
        at_least("model.intermediate_size", m.llama_intermediate_size(), 1, LIMIT_WIDTH)?;
        if !m.n_head.is_multiple_of(m.kv_heads()) || !(m.n_embd / m.n_head).is_multiple_of(2) {
            return Err(format!(
                "model.n_head ({}) must be a multiple of model.n_kv_head ({}), and the head \
                 width n_embd / n_head ({}) even",
                m.n_head,
                m.kv_heads(),
                m.n_embd / m.n_head
            ));
        }
    }
    Ok(())
}

/// Bounds that keep every count far from overflow (a count times a count stays in `usize`)
/// and within what a TOML integer holds.
const LIMIT_COUNT: usize = 1 << 30;
/// Curriculum stages and thoughts per step: `c_thought * max_latent_stage` stays small.
const LIMIT_STAGES: usize = 1 << 10;
/// Torch takes its thread count as an `i32`.
const LIMIT_THREADS: usize = 1 << 12;
/// Samples in a split.
const LIMIT_SAMPLES: usize = 1 << 30;
/// Layers of a model trained from scratch.
const LIMIT_LAYERS: usize = 1 << 10;
/// Hidden size and heads of a model trained from scratch.
const LIMIT_WIDTH: usize = 1 << 16;
/// Context length (Llama 3's is 131,072).
const LIMIT_POSITIONS: usize = 1 << 20;
/// Vocabulary of a tokenizer trained from scratch.
const LIMIT_VOCAB: usize = 1 << 20;

/// `key`'s value must lie in `min..=max`.
fn at_least(key: &str, value: usize, min: usize, max: usize) -> Result<(), String> {
    if (min..=max).contains(&value) {
        Ok(())
    } else if value < min {
        Err(format!("{key} ({value}) must be at least {min}"))
    } else {
        Err(format!("{key} ({value}) must be at most {max}"))
    }
}

/// `key`'s value must be a finite positive number.
fn positive(key: &str, value: f64) -> Result<(), String> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(format!("{key} ({value}) must be a finite positive number"))
    }
}

/// Sets one dotted key of a parsed TOML document: `train.lr=3e-4`.
fn apply_override(table: &mut toml::Table, item: &str) -> Result<(), String> {
    let (key, raw) = item.split_once('=').ok_or("expected KEY=VALUE")?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("{key:?} is not a dotted key"));
    }
    let raw = raw.trim();
    let value = match toml::from_str::<toml::Table>(&format!("value = {raw}")) {
        Ok(mut parsed) => parsed.remove("value").expect("the key just written"),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let (last, sections) = parts.split_last().expect("split gives at least one part");
    let mut current = table;
    for section in sections {
        let entry = current.entry(section.to_string()).or_insert_with(|| toml::Table::new().into());
        current =
            entry.as_table_mut().ok_or_else(|| format!("{section} is a value, not a section"))?;
    }
    current.insert(last.to_string(), value);
    Ok(())
}

/// `name` (`cpu`, `cuda`, `cuda:N`) as a device this process can use: a CUDA device needs
/// a binary built against the CUDA LibTorch and the device itself. The messages say which
/// is missing, in one line.
pub fn usable_device(name: &str) -> Result<tch::Device, String> {
    let device = parse_device(name)?;
    if let tch::Device::Cuda(index) = device {
        if cuda_backend_version().is_none() {
            return Err(format!(
                "device {name:?}: this binary was built without CUDA: cargo xtask setup --cuda"
            ));
        }
        let count = tch::Cuda::device_count();
        if index as i64 >= count {
            return Err(format!("device {name:?}: no CUDA device {index} ({count} found)"));
        }
    }
    Ok(device)
}

/// The CUDA runtime version LibTorch's CUDA backend was built with, or `None` when this
/// binary has no CUDA backend (built against the CPU LibTorch). Unlike `tch::utils::has_cuda`,
/// which also asks for a device, it answers on a machine without a GPU.
pub fn cuda_backend_version() -> Option<i64> {
    // Without the backend LibTorch raises an error, which tch turns into a panic: caught
    // here, with the panic message silenced.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let version = std::panic::catch_unwind(tch::utils::version_cudart).ok();
    std::panic::set_hook(hook);
    version
}

/// A device as a run config names it: `cpu` or `cuda:N`.
pub fn device_name(device: tch::Device) -> String {
    match device {
        tch::Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".to_string(),
    }
}

/// `train.device` in the TOML file and in a checkpoint's JSON: the device's name.
mod device_by_name {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(device: &tch::Device, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::device_name(*device))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<tch::Device, D::Error> {
        super::parse_device(&String::deserialize(d)?).map_err(D::Error::custom)
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

#[cfg(test)]
mod tests {
    use super::*;
    use coconut_datasets::DatasetConfig;

    const MINIMAL: &str = r#"
name = "t"
[data]
train = "a.json"
valid = "b.json"
[model]
[train]
lr = 1e-3
"#;

    fn parse(overrides: &[&str]) -> Result<RunConfig, TrainError> {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        RunConfig::parse_with_overrides(MINIMAL, Path::new("run.toml"), &overrides)
    }

    #[test]
    fn overrides_set_dotted_keys_with_typed_values() {
        let c = parse(&[
            "train.lr=3e-4",
            "train.device=cuda:1",
            "curriculum.mode=\"cot\"",
            "eval.batch_size = 7",
            "name=other",
        ])
        .unwrap();
        assert_eq!(c.train.lr, 3e-4);
        assert_eq!(c.train.device, tch::Device::Cuda(1));
        assert_eq!(c.curriculum.mode, coconut_curriculum::Mode::Cot);
        assert_eq!(c.eval.batch_size, 7);
        assert_eq!(c.name, "other");
        assert_eq!(parse(&[]).unwrap().train.lr, 1e-3);
    }

    #[test]
    fn a_generator_shape_replaces_the_presets_fields_by_name() {
        let generate = r#"data.generate={ kind = "prosqa", preset = "small", sizes = [8, 2, 2], shape = { min_steps = 3, max_steps = 4, max_nodes = 13 } }"#;
        let c = parse(&[generate]).unwrap();
        let g = c.data.generate.as_ref().unwrap();
        let DatasetConfig::ProsQa(shape) = g.dataset_config().unwrap() else { panic!("ProsQA") };
        let small = coconut_datasets::ProsQaConfig::small();
        assert_eq!((shape.min_steps, shape.max_steps, shape.max_nodes), (3, 4, 13));
        assert_eq!((shape.min_nodes, shape.mean_parents), (small.min_nodes, small.mean_parents));
        // Through the resolved config.toml and back.
        let toml = toml::to_string_pretty(&c).unwrap();
        assert_eq!(RunConfig::parse(&toml, Path::new("config.toml")).unwrap(), c);

        for (bad, expected) in [
            ("shape = { min_hops = 3 }", "unknown field `min_hops`"),
            ("shape = { min_steps = 5, max_steps = 4 }", "max_steps"),
        ] {
            let text =
                generate.replace("shape = { min_steps = 3, max_steps = 4, max_nodes = 13 }", bad);
            let err = parse(&[&text]).unwrap_err().to_string();
            assert!(err.contains("data.generate.shape") && err.contains(expected), "{err}");
            assert!(err.contains("run.toml"), "the error names the file: {err}");
        }
    }

    /// Sets `field` to a value from a pool of ordinary and extreme values (zero, the limits
    /// of the type, NaN, infinities) one time in six; otherwise it keeps its valid value.
    fn pick<T: Copy>(rng: &mut impl rand::Rng, field: &mut T, pool: &[T]) {
        if rng.random_range(0..6) == 0 {
            *field = pool[rng.random_range(0..pool.len())];
        }
    }

    /// Every run config the repository ships parses and validates.
    #[test]
    fn every_shipped_config_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                RunConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
                count += 1;
            }
        }
        assert!(count >= 20, "{count} configs");
    }

    /// Every config that validates survives a checkpoint: its training state (JSON) and the
    /// resolved `config.toml` read back equal. Values that cannot (NaN in JSON, integers
    /// above `i64::MAX` in TOML) must be rejected by validation instead.
    #[test]
    fn every_valid_config_round_trips_through_a_checkpoint() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let floats = [0.0, 1e-4, 0.5, 0.999, 1.0, 3.0, -1.0, f64::NAN, f64::INFINITY, 1e300];
        let sizes = [0, 1, 2, 3, 64, 1 << 12, 1 << 40, usize::MAX];
        let (mut valid, mut rejected) = (0, 0);
        for _ in 0..3000 {
            let mut c = parse(&[]).unwrap();
            pick(&mut rng, &mut c.train.lr, &floats);
            pick(&mut rng, &mut c.train.weight_decay, &floats);
            pick(&mut rng, &mut c.train.eps, &floats);
            pick(&mut rng, &mut c.train.betas.0, &floats);
            pick(&mut rng, &mut c.train.betas.1, &floats);
            pick(&mut rng, &mut c.train.grad_clip, &[None, Some(0.0), Some(-1.0), Some(1.0)]);
            pick(&mut rng, &mut c.train.threads, &sizes);
            pick(&mut rng, &mut c.train.batch_size, &sizes);
            pick(&mut rng, &mut c.train.num_epochs, &sizes);
            pick(&mut rng, &mut c.train.seed, &[0, 1, u64::MAX]);
            pick(&mut rng, &mut c.model.n_layer, &sizes);
            pick(&mut rng, &mut c.model.n_embd, &sizes);
            pick(&mut rng, &mut c.model.n_head, &sizes);
            pick(&mut rng, &mut c.model.n_positions, &sizes);
            pick(&mut rng, &mut c.model.vocab_size, &[0, 260, 261, 400, 1 << 40]);
            pick(&mut rng, &mut c.model.dropout, &floats);
            pick(&mut rng, &mut c.model.architecture, &[Architecture::Gpt2, Architecture::Llama]);
            let options = [None, Some(0), Some(1), Some(2), Some(1 << 40), Some(usize::MAX)];
            pick(&mut rng, &mut c.model.n_kv_head, &options);
            pick(&mut rng, &mut c.model.intermediate_size, &options);
            pick(&mut rng, &mut c.curriculum.c_thought, &sizes);
            pick(&mut rng, &mut c.curriculum.max_latent_stage, &sizes);
            pick(&mut rng, &mut c.curriculum.uniform_prob, &floats);
            pick(&mut rng, &mut c.eval.max_new_tokens, &sizes);
            if c.validate().is_err() {
                rejected += 1;
                continue;
            }
            valid += 1;
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(serde_json::from_str::<RunConfig>(&json).unwrap(), c, "{json}");
            let toml = toml::to_string_pretty(&c).unwrap();
            let back = RunConfig::parse(&toml, Path::new("config.toml")).unwrap();
            assert_eq!(back, c, "{toml}");
            // What the curriculum multiplies stays far from overflow.
            assert!(c.curriculum.max_thoughts() <= LIMIT_STAGES * LIMIT_STAGES);
        }
        assert!(valid > 20 && rejected > 20, "{valid} valid, {rejected} rejected");
    }

    #[test]
    fn values_that_break_a_run_are_rejected_with_their_key() {
        let cases = [
            ("train.weight_decay=nan", "train.weight_decay"),
            ("train.grad_clip=0.0", "train.grad_clip"),
            ("train.grad_clip=-1.0", "train.grad_clip"),
            ("train.threads=4294967296", "train.threads"),
            ("model.n_layer=0", "model.n_layer"),
            ("model.n_embd=0", "model.n_embd"),
            ("model.n_positions=100000000000", "model.n_positions"),
            ("model.vocab_size=100", "model.vocab_size"),
            ("curriculum.c_thought=4611686018427387904", "curriculum"),
            ("curriculum.max_latent_stage=4611686018427387904", "curriculum"),
            ("train.betas=[0.9, 1.5]", "train.betas[1]"),
            ("name=\"../x\"", "name"),
        ];
        for (item, key) in cases {
            let err = parse(&[item]).unwrap_err().to_string();
            assert!(err.contains(key), "{item}: {err}");
        }
    }

    #[test]
    fn a_bad_override_is_an_error_naming_it() {
        let err = parse(&["train.lrr=1"]).unwrap_err().to_string();
        assert!(err.contains("run.toml") && err.contains("lrr"), "{err}");
        let err = parse(&["train.lr"]).unwrap_err().to_string();
        assert!(err.contains("--set train.lr") && err.contains("KEY=VALUE"), "{err}");
        let err = parse(&["name.x=1"]).unwrap_err().to_string();
        assert!(err.contains("name is a value"), "{err}");
        let err = parse(&["train.batch_size=0"]).unwrap_err().to_string();
        assert!(err.contains("batch_size"), "{err}");
    }
}
