//! `train-all-stages` and `compare`: a config's whole schedule, its evaluations and report.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use coconut_curriculum::{load_samples, tokenize_samples, Mode};
use coconut_eval::{
    comparison_table, evaluate, inspect_thoughts, mean_embedding_norm, thoughts_report,
    EvalOptions, Prediction, SampleThoughts, TableRow,
};
use coconut_trainer::{check_model_paths, EpochEval, RunConfig, TrainError, Trainer};

use crate::{data, report, DEFAULT_CONFIG};

/// Reads a run config, or the embedded default.
pub fn load_config(path: Option<&Path>) -> Result<(RunConfig, PathBuf)> {
    Ok(match path {
        Some(p) => (RunConfig::load(p)?, p.to_path_buf()),
        None => {
            let p = PathBuf::from("configs/default.toml");
            (RunConfig::parse(DEFAULT_CONFIG, &p)?, p)
        }
    })
}

/// Trains every stage of `config`, evaluates after every epoch and at the end, and writes
/// the report. Returns the run folder.
pub fn train_all_stages(config: RunConfig, config_path: &Path) -> Result<PathBuf> {
    check_model_paths(&config, config_path)?;
    data::ensure_generated(&config)?;
    let mut trainer = Trainer::new(config.clone(), config_path)?;
    let device = config.device();
    let limit = match config.data.max_valid_samples {
        0 => trainer.valid_samples.len(),
        n => n.min(trainer.valid_samples.len()),
    };
    let mut per_epoch = |t: &Trainer, epoch: usize| -> Result<EpochEval, TrainError> {
        let options = EvalOptions {
            stage: t.config.curriculum.stage_of_epoch(epoch),
            max_new_tokens: t.config.eval.max_new_tokens,
            batch_size: t.config.eval.batch_size,
            device,
        };
        let (m, _) = evaluate(
            &t.loaded.model,
            &t.loaded.tokenizer,
            &t.config.curriculum,
            &t.valid_samples[..limit],
            &t.valid_tokenized()[..limit],
            &options,
        );
        let serde_json::Value::Object(extra) = serde_json::to_value(&m).expect("metrics serialise")
        else {
            unreachable!("a struct serialises to an object")
        };
        Ok(EpochEval { accuracy: Some(m.accuracy), extra })
    };
    let summary = trainer.run(&mut per_epoch)?;
    let run_dir = summary.run_dir.clone();

    // The final model on the test split (or valid when there is none), at the final stage.
    let (split, samples) = match &config.data.test {
        Some(test) => ("test", load_samples(test)?),
        None => ("valid", trainer.valid_samples.clone()),
    };
    let tokenized = tokenize_samples(&trainer.loaded.tokenizer, &samples);
    let final_stage = config.curriculum.stage_of_epoch(config.train.num_epochs.saturating_sub(1));
    let options = EvalOptions {
        stage: final_stage,
        max_new_tokens: config.eval.max_new_tokens,
        batch_size: config.eval.batch_size,
        device,
    };
    let (metrics, predictions) = evaluate(
        &trainer.loaded.model,
        &trainer.loaded.tokenizer,
        &config.curriculum,
        &samples,
        &tokenized,
        &options,
    );
    write_predictions(&run_dir.join(format!("predictions_{split}.jsonl")), &predictions)?;
    let thoughts: Vec<SampleThoughts> = (0..samples.len().min(3))
        .map(|i| SampleThoughts {
            sample: i,
            question: samples[i].question.clone(),
            mean_token_embedding_norm: mean_embedding_norm(
                &trainer.loaded.model,
                &tokenized[i].question,
                device,
            ),
            thoughts: inspect_thoughts(
                &trainer.loaded.model,
                &trainer.loaded.tokenizer,
                &config.curriculum,
                &tokenized[i],
                final_stage,
                5,
                device,
            ),
        })
        .collect();
    std::fs::write(run_dir.join("thoughts.json"), serde_json::to_string_pretty(&thoughts)?)?;
    std::fs::write(run_dir.join("thoughts.md"), thoughts_report(&thoughts))?;
    report::write_report(&run_dir, &config, split, &metrics, &predictions, &thoughts)?;
    println!(
        "\n{}",
        comparison_table(&[TableRow { method: format!("{} ({split})", config.name), metrics }])
    );
    Ok(run_dir)
}

/// Writes one JSON line per prediction.
pub fn write_predictions(path: &Path, predictions: &[Prediction]) -> Result<()> {
    let mut text = String::new();
    for p in predictions {
        text.push_str(&serde_json::to_string(p)?);
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Trains Coconut, CoT and No-CoT on the data and budget of `config` and prints the table.
pub fn compare(config: RunConfig, config_path: &Path) -> Result<()> {
    let mut rows = Vec::new();
    for mode in [Mode::Cot, Mode::NoCot, Mode::Coconut] {
        let mut c = config.clone();
        c.curriculum.mode = mode;
        c.name =
            format!("{}-{}", config.name, serde_json::to_value(mode)?.as_str().unwrap_or("mode"));
        let dir = train_all_stages(c.clone(), config_path)?;
        let summary: report::Summary =
            serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json"))?)?;
        rows.push(TableRow { method: format!("{mode:?}"), metrics: summary.final_metrics });
    }
    let table = comparison_table(&rows);
    let path = config.output_dir.join(format!("{}-comparison.md", config.name));
    std::fs::write(&path, &table)?;
    println!("\n{table}\nwritten to {}", path.display());
    Ok(())
}
