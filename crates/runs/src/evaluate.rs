//! `eval`: evaluate one or more checkpoints and print one comparison table.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use coconut_curriculum::{load_samples, tokenize_samples, CurriculumConfig, Sample};
use coconut_eval::{comparison_table, evaluate, inspect_samples, thoughts_report, TableRow};
use coconut_trainer::checkpoint::{read_state, STATE_FILE};
use coconut_trainer::{check_sample_lengths, load_model_dir, teacher_forced_loss, RunConfig};

use crate::data::Split;
use crate::run::{write_file, write_predictions};

/// Arguments of `coconut eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Run config giving the data and, for HF folders without a run state, the curriculum.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Checkpoint folders (ours, or an HF GPT-2 folder with tokenizer.json).
    #[arg(long = "checkpoint", required = true)]
    pub checkpoints: Vec<PathBuf>,
    /// Which split to evaluate.
    #[arg(long, default_value = "valid")]
    pub split: Split,
    /// Prompt stage (default: the final stage of the checkpoint's curriculum).
    #[arg(long)]
    pub stage: Option<usize>,
    /// Evaluate only the first N samples (0 = all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Inspect the thoughts of this many samples.
    #[arg(long, default_value_t = 3)]
    pub inspect: usize,
    /// Where to write metrics, predictions and the table (default: `<run>/eval/<checkpoint>`
    /// for a checkpoint of a run, `<folder>/eval` for a bare model folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The device to evaluate on (`cpu`, `cuda`, `cuda:N`); the config's `train.device`
    /// when absent.
    #[arg(long)]
    pub device: Option<String>,
    /// Prompts decoded together; the config's `eval.batch_size` when absent.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Override a config key, for example `--set eval.max_new_tokens=64` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

/// Evaluates every checkpoint on the split and writes metrics, predictions, thoughts and the
/// comparison table (`comparison.md`, `comparison.json`) into the first one's output folder.
pub fn run(args: &EvalArgs) -> Result<()> {
    // The flags are shorthands for their keys.
    let mut overrides = args.overrides.clone();
    overrides.extend(args.device.as_ref().map(|d| format!("train.device={d}")));
    overrides.extend(args.batch_size.map(|b| format!("eval.batch_size={b}")));
    let (config, config_path) = crate::run::load_config(args.config.as_deref(), &overrides)?;
    let data = split_file(&config, &config_path, args.split)?;
    config.usable_device(&config_path)?;
    crate::data::ensure_generated(&config)?;
    let mut samples = load_samples(&data)?;
    if args.limit > 0 {
        samples.truncate(args.limit);
    }
    let checkpoints = &args.checkpoints;
    let dirs = output_dirs(checkpoints, args.out.as_deref())?;
    let run = EvalRun {
        config: &config,
        data: &data,
        samples: &samples,
        split: args.split.name(),
        stage: args.stage,
        inspect: args.inspect,
    };
    let mut rows = Vec::new();
    for (ckpt, dir) in checkpoints.iter().zip(&dirs) {
        rows.push(run.checkpoint(ckpt, dir)?);
    }
    let table = comparison_table(&rows);
    println!("\n{table}");
    let dir = &dirs[0];
    write_file(&dir.join("comparison.md"), &table)?;
    write_file(&dir.join("comparison.json"), serde_json::to_string_pretty(&rows)?)?;
    Ok(())
}

/// The data file of `split`.
fn split_file(config: &RunConfig, config_path: &Path, split: Split) -> Result<PathBuf> {
    Ok(match split {
        Split::Valid => config.data.valid.clone(),
        Split::Test => match &config.data.test {
            Some(t) => t.clone(),
            None => {
                bail!("{}: data.test is not set, so there is no test split", config_path.display())
            }
        },
    })
}

/// The output folder of each checkpoint, every one made (and so checked writable) before
/// any evaluation runs.
fn output_dirs(checkpoints: &[PathBuf], out: Option<&Path>) -> Result<Vec<PathBuf>> {
    let dirs: Vec<PathBuf> = checkpoints
        .iter()
        .map(|ckpt| out.map_or_else(|| default_output(ckpt), Path::to_path_buf))
        .collect();
    for dir in &dirs {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("{} is not writable", dir.display()))?;
    }
    Ok(dirs)
}

/// What every checkpoint of one `eval` is evaluated on.
struct EvalRun<'a> {
    config: &'a RunConfig,
    data: &'a Path,
    samples: &'a [Sample],
    split: &'static str,
    /// The stage asked for; by default each checkpoint's own.
    stage: Option<usize>,
    /// How many samples' thoughts to inspect.
    inspect: usize,
}

impl EvalRun<'_> {
    /// Evaluates `ckpt`, writes its metrics, predictions and thoughts into `dir`, prints a
    /// summary and returns its row of the comparison table.
    fn checkpoint(&self, ckpt: &Path, dir: &Path) -> Result<TableRow> {
        let config = self.config;
        let (curriculum, stage) = self.curriculum_and_stage(ckpt)?;
        let loaded = load_model_dir(ckpt, config.device(), &config.model.latent_init_token)?;
        let tokenized = tokenize_samples(&loaded.tokenizer, self.samples);
        let positions = loaded.model.shape().max_positions;
        let max_new_tokens = Some(config.eval.max_new_tokens);
        check_sample_lengths(self.data, &tokenized, &curriculum, max_new_tokens, positions)?;
        let options = crate::run::eval_options(config, stage);
        let (model, tokenizer) = (loaded.model.as_ref(), &loaded.tokenizer);
        let (metrics, predictions) =
            evaluate(model, tokenizer, &curriculum, self.samples, &tokenized, &options);
        let batch_size = config.eval.batch_size;
        let valid_loss = teacher_forced_loss(&loaded, &curriculum, &tokenized, stage, batch_size);
        let (samples, inspect) = (self.samples, self.inspect);
        let thoughts =
            inspect_samples(model, tokenizer, &curriculum, samples, &tokenized, inspect, &options);

        let (name, split) = (checkpoint_label(ckpt), self.split);
        let json = serde_json::json!({
            "checkpoint": ckpt, "split": split, "mode": curriculum.mode, "metrics": metrics, "teacher_forced_loss": valid_loss,
        });
        write_file(
            &dir.join(format!("metrics_{name}_{split}.json")),
            serde_json::to_string_pretty(&json)?,
        )?;
        write_predictions(&dir.join(format!("predictions_{name}_{split}.jsonl")), &predictions)?;
        write_file(
            &dir.join(format!("thoughts_{name}_{split}.json")),
            serde_json::to_string_pretty(&thoughts)?,
        )?;
        if !thoughts.iter().all(|t| t.thoughts.is_empty()) {
            println!("{}", thoughts_report(&thoughts));
        }
        println!(
            "{}: accuracy {:.1}% on {} {split} samples at stage {stage}, teacher-forced loss {valid_loss:.4} ({})",
            ckpt.display(),
            100.0 * metrics.accuracy,
            metrics.samples,
            dir.display()
        );
        Ok(TableRow { method: format!("{name} ({:?})", curriculum.mode), metrics })
    }

    /// The curriculum `ckpt` is evaluated with, and the stage. Our checkpoints carry their
    /// run config; a bare HF folder uses --config's curriculum. Default stage: the one the
    /// checkpoint was last trained at (the final one for a bare HF folder).
    fn curriculum_and_stage(&self, ckpt: &Path) -> Result<(CurriculumConfig, usize)> {
        let (run, last_epoch) = if ckpt.join(STATE_FILE).exists() {
            let state = read_state(ckpt)?;
            (state.config, state.epoch.saturating_sub(1))
        } else {
            (self.config.clone(), self.config.train.num_epochs.saturating_sub(1))
        };
        let stage = self.stage.unwrap_or_else(|| run.curriculum.stage_of_epoch(last_epoch));
        Ok((run.curriculum, stage))
    }
}

/// Where `eval` writes when `--out` is absent: `<run>/eval/<checkpoint>` for a checkpoint of
/// a run (never inside the checkpoint folder, which pruning deletes), `<folder>/eval` for a
/// bare model folder.
fn default_output(ckpt: &Path) -> PathBuf {
    let parent = ckpt.parent().filter(|p| p.file_name().is_some_and(|n| n == "checkpoints"));
    match (parent.and_then(Path::parent), ckpt.file_name()) {
        (Some(run), Some(name)) => run.join("eval").join(name),
        _ => ckpt.join("eval"),
    }
}

/// A short name for a checkpoint folder: `<run>/<checkpoint>` when it sits in a run.
fn checkpoint_label(ckpt: &Path) -> String {
    let name =
        |p: &Path| p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    match ckpt.parent().filter(|p| name(p) == "checkpoints").and_then(Path::parent) {
        Some(run) => format!("{}-{}", name(run), name(ckpt)),
        None => name(ckpt),
    }
}
