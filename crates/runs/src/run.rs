//! `train-all-stages`: a config's whole schedule, its evaluations and report.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

use anyhow::{Context, Result};
use coconut_curriculum::{load_samples, tokenize_samples};
use coconut_eval::{
    comparison_table, evaluate, inspect_samples, thought_diagnostics, thoughts_report, EvalMetrics,
    EvalOptions, Prediction, TableRow,
};
use coconut_trainer::{
    check_model_paths, check_sample_lengths, EpochEval, Ranks, RunConfig, TrainError, Trainer,
};

use crate::{analyze, data, report, DEFAULT_CONFIG};

/// Reads a run config, or the embedded default, and applies `--set KEY=VALUE` overrides.
pub fn load_config(path: Option<&Path>, overrides: &[String]) -> Result<(RunConfig, PathBuf)> {
    let (text, path) = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading the run config {}", p.display()))?;
            (text, p.to_path_buf())
        }
        None => (DEFAULT_CONFIG.to_string(), PathBuf::from("configs/default.toml")),
    };
    Ok((RunConfig::parse_with_overrides(&text, &path, overrides)?, path))
}

/// Trains every stage of `config` as one of `ranks`, evaluates after every epoch and at the
/// end, and writes the report. Returns the run folder. Rank 0 makes the data before the
/// others start, and alone evaluates and reports.
pub fn train_all_stages(
    config: RunConfig,
    config_path: &Path,
    ranks: &Arc<Ranks>,
) -> Result<PathBuf> {
    check_model_paths(&config, config_path)?;
    if ranks.is_main() {
        data::ensure_generated(&config)?;
    }
    ranks.barrier()?;
    let mut trainer = Trainer::with_ranks(config.clone(), config_path, Arc::clone(ranks))?;
    // The final model is evaluated on the test split (or valid when there is none); its
    // lengths are checked now, before any training.
    let (split, samples) = match &config.data.test {
        Some(test) => ("test", load_samples(test)?),
        None => ("valid", trainer.valid_samples.clone()),
    };
    let tokenized = tokenize_samples(&trainer.loaded.tokenizer, &samples);
    let positions = trainer.loaded.model.shape().max_positions;
    let test_file = config.data.test.as_ref().unwrap_or(&config.data.valid);
    let max_new_tokens = Some(config.eval.max_new_tokens);
    check_sample_lengths(test_file, &tokenized, &config.curriculum, max_new_tokens, positions)?;
    let mut per_epoch = |t: &Trainer, epoch: usize| -> Result<EpochEval, TrainError> {
        let options = eval_options(&t.config, t.config.curriculum.stage_of_epoch(epoch));
        let (samples, tokenized) = t.valid_split();
        let (m, _) = sharded_evaluate(t.ranks(), t, samples, tokenized, &options)
            .map_err(|e| TrainError::Evaluation(e.into()))?;
        // Rank 0's figures are the ones written.
        let thoughts = t.ranks().is_main().then(|| {
            let (model, tokenizer) = (t.loaded.model.as_ref(), &t.loaded.tokenizer);
            thought_diagnostics(model, tokenizer, &t.config.curriculum, tokenized, &options)
        });
        Ok(report::epoch_eval(&m, thoughts.flatten().as_ref()))
    };
    let summary = {
        let _signals = StopOnSignals::register(&trainer.stop_flag())?;
        trainer.run(&mut per_epoch)?
    };
    let run_dir = summary.run_dir.clone();

    // The final model on the test split, at the final stage.
    let final_stage = config.curriculum.stage_of_epoch(config.train.num_epochs.saturating_sub(1));
    let options = eval_options(&config, final_stage);
    let (metrics, predictions) = sharded_evaluate(ranks, &trainer, &samples, &tokenized, &options)?;
    if !ranks.is_main() {
        return Ok(run_dir);
    }
    write_predictions(&run_dir.join(format!("predictions_{split}.jsonl")), &predictions)?;
    let model = trainer.loaded.model.as_ref();
    let (tokenizer, curriculum) = (&trainer.loaded.tokenizer, &config.curriculum);
    let thoughts = inspect_samples(model, tokenizer, curriculum, &samples, &tokenized, 3, &options);
    let diagnostics = thought_diagnostics(model, tokenizer, curriculum, &tokenized, &options);
    let json = serde_json::json!({ "diagnostics": diagnostics, "samples": thoughts });
    write_file(&run_dir.join("thoughts.json"), serde_json::to_string_pretty(&json)?)?;
    write_file(&run_dir.join("thoughts.md"), thoughts_report(&thoughts))?;
    let last = report::FinalEvaluation {
        split,
        metrics: &metrics,
        predictions: &predictions,
        thoughts: &thoughts,
        diagnostics: diagnostics.as_ref(),
    };
    report::write_report(&run_dir, &config, &last)?;
    if let Some(ckpt) = summary.last_checkpoint.as_deref() {
        // On ProsQA data, the paper's latent-search analysis of the final model.
        if analyze::applies(test_file, config.curriculum.mode) {
            let out = run_dir.join("analysis");
            let args = analyze::AnalyzeArgs::for_run(ckpt, test_file, &out, config.device());
            analyze::run(&args)?;
            report::append_latent_search(
                &run_dir,
                &analyze::summary_table_of(&out.join("latent_search.json"))?,
            )?;
        }
    }
    println!(
        "\n{}",
        comparison_table(&[TableRow { method: format!("{} ({split})", config.name), metrics }])
    );
    Ok(run_dir)
}

/// [`evaluate`] with the samples shared out over the ranks (rank r takes samples r, r + W,
/// ...) and the predictions gathered, in order, on every rank.
fn sharded_evaluate(
    ranks: &Ranks,
    trainer: &Trainer,
    samples: &[coconut_curriculum::Sample],
    tokenized: &[coconut_curriculum::TokenizedSample],
    options: &EvalOptions,
) -> Result<(EvalMetrics, Vec<Prediction>)> {
    let (rank, world) = (ranks.rank(), ranks.world_size());
    let mine: Vec<usize> = (rank..samples.len()).step_by(world).collect();
    let my_samples: Vec<_> = mine.iter().map(|&i| samples[i].clone()).collect();
    let my_tokenized: Vec<_> = mine.iter().map(|&i| tokenized[i].clone()).collect();
    let (metrics, mut predictions) = evaluate(
        trainer.loaded.model.as_ref(),
        &trainer.loaded.tokenizer,
        &trainer.config.curriculum,
        &my_samples,
        &my_tokenized,
        options,
    );
    for p in &mut predictions {
        p.index = mine[p.index];
    }
    if world == 1 {
        return Ok((metrics, predictions));
    }
    let mut all: Vec<Prediction> = Vec::with_capacity(samples.len());
    for bytes in ranks.gather(&serde_json::to_vec(&predictions)?)? {
        all.extend(serde_json::from_slice::<Vec<Prediction>>(&bytes)?);
    }
    all.sort_by_key(|p| p.index);
    Ok((EvalMetrics::of(&all, options.stage, metrics.seconds), all))
}

/// SIGINT (Ctrl-C) and SIGTERM (how clusters preempt a job) while training: the first one
/// makes the trainer checkpoint and stop after its current step; a second one ends the
/// process at once. The handlers are removed when this is dropped, so outside training the
/// signals keep their usual effect.
struct StopOnSignals(Vec<signal_hook::SigId>);

impl StopOnSignals {
    fn register(stop: &Arc<AtomicUsize>) -> Result<Self> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        use signal_hook::flag;
        let armed = Arc::new(AtomicBool::new(false));
        let mut ids = Vec::new();
        for signal in [SIGINT, SIGTERM] {
            // In order: exit if a signal came before, remember this one, arm.
            ids.push(flag::register_conditional_shutdown(signal, 128 + signal, armed.clone())?);
            ids.push(flag::register_usize(signal, stop.clone(), signal as usize)?);
            ids.push(flag::register(signal, armed.clone())?);
        }
        Ok(Self(ids))
    }
}

impl Drop for StopOnSignals {
    fn drop(&mut self) {
        for id in self.0.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// The options of a run's evaluations at `stage`: its `eval` settings and its device.
pub fn eval_options(config: &RunConfig, stage: usize) -> EvalOptions {
    EvalOptions {
        stage,
        max_new_tokens: config.eval.max_new_tokens,
        batch_size: config.eval.batch_size,
        device: config.device(),
    }
}

/// Writes `contents` to `path`; an error names the file (a full disk, say).
pub fn write_file(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// Writes one JSON line per prediction.
pub fn write_predictions(path: &Path, predictions: &[Prediction]) -> Result<()> {
    let mut text = String::new();
    for p in predictions {
        text.push_str(&serde_json::to_string(p)?);
        text.push('\n');
    }
    write_file(path, text)
}
