//! `bench --with-reference`: the PyTorch implementation of the official algorithm
//! (`benches/reference/coconut_reference.py`) measured in the same invocation, on the
//! batches and prompts this bench builds, so that both sides of every ratio ran the same
//! work on the same machine at the same time.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use coconut_curriculum::{
    collate_training, eval_prompt, load_samples, tokenize_samples, training_sample, Batch,
    StagedSample, Tokenizer,
};
use serde_json::{json, Value};

use crate::measure::{reference_curriculum, GENERATED_TOKENS, MEASUREMENTS, OPS_STAGE};
use crate::records::ResultLine;
use crate::BenchArgs;

/// What the reference runs: (name, model, batch, stage, warmup steps, measured steps). The
/// same work as our measurements of these names, fewer steps (its steps are slower). The
/// op counts run one uncounted step, then count a stage-0 and a stage-k step.
const REFERENCE_MEASUREMENTS: [(&str, &str, usize, usize, usize, usize); 9] = [
    ("train_step", "tiny", 8, 6, 1, 3),
    ("plain_step", "tiny", 8, 6, 1, 3),
    ("train_step", "tiny", 8, 0, 1, 2),
    ("train_step", "gpt2", 8, 6, 0, 1),
    ("plain_step", "gpt2", 8, 6, 0, 1),
    ("generate_reference", "tiny", 1, 6, 0, 2),
    ("generate_batched", "tiny", 32, 6, 0, 1),
    ("ops_per_latent_pass", "gpt2", 8, OPS_STAGE, 1, 2),
    ("ops_per_latent_pass_bf16", "gpt2", 8, OPS_STAGE, 1, 2),
];

/// Whether `python` imports torch and transformers; the reason when it does not.
fn python_ready(python: &str) -> Result<(), String> {
    let output = Command::new(python)
        .args(["-c", "import torch, transformers"])
        .output()
        .map_err(|e| format!("could not start `{python}`: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(format!(
            "`{python} -c \"import torch, transformers\"` failed: {}",
            stderr.lines().last().unwrap_or_default()
        ))
    }
}

/// Runs every reference measurement (each in its own Python process, so that its peak
/// memory is its own), prints and writes its lines to `<out>-reference.jsonl`, and returns
/// them; `None`, with a line saying why, when Python cannot import torch and transformers.
pub(super) fn run_reference(args: &BenchArgs) -> Result<Option<Vec<ResultLine>>> {
    if let Err(why) = python_ready(&args.python) {
        println!(
            "# reference: not run: {why}. Install them (docs/BENCHMARKS.md) or pass --python \
             or --reference FILE"
        );
        return Ok(None);
    }
    let inputs = write_inputs(args)?;
    let out_path = reference_out(&args.out);
    let mut out = std::fs::File::create(&out_path)
        .with_context(|| format!("creating {}", out_path.display()))?;
    let mut lines = Vec::new();
    let skip = |model: &str| args.skip_gpt2 && model == "gpt2";
    for (name, model, batch, stage, ..) in REFERENCE_MEASUREMENTS.iter().filter(|m| !skip(m.1)) {
        let line =
            run_measurement(args, inputs.path(), &format!("{name}:{model}:{batch}:{stage}"))?;
        println!("{line}");
        writeln!(out, "{line}")?;
        lines.push(serde_json::from_str(&line)?);
    }
    Ok(Some(lines))
}

/// Runs the reference's measurement `key` alone and prints its line (`--only reference:KEY`).
pub(super) fn run_one(args: &BenchArgs, key: &str) -> Result<()> {
    if let Err(why) = python_ready(&args.python) {
        bail!("the reference cannot run: {why}");
    }
    let known = REFERENCE_MEASUREMENTS
        .iter()
        .any(|(name, model, batch, stage, ..)| format!("{name}:{model}:{batch}:{stage}") == key);
    if !known {
        bail!("the reference has no measurement {key}");
    }
    let inputs = write_inputs(args)?;
    println!("{}", run_measurement(args, inputs.path(), key)?);
    Ok(())
}

/// The reference's inputs in a temporary file, removed when dropped.
fn write_inputs(args: &BenchArgs) -> Result<tempfile::NamedTempFile> {
    if !args.reference_script.exists() {
        bail!("{}: the reference implementation is not there", args.reference_script.display());
    }
    let inputs = tempfile::NamedTempFile::new()?;
    serde_json::to_writer(inputs.as_file(), &reference_inputs(args)?)?;
    Ok(inputs)
}

/// One reference measurement in its own Python process; returns its JSON line.
fn run_measurement(args: &BenchArgs, inputs: &Path, key: &str) -> Result<String> {
    let output = Command::new(&args.python)
        .arg(&args.reference_script)
        .arg("--inputs")
        .arg(inputs)
        .args(["--measurement", key, "--threads", "1", "--device", &args.device])
        .output()
        .with_context(|| format!("starting {}", args.python))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!("reference measurement {key} failed: {stderr}");
    }
    let text = String::from_utf8(output.stdout)?;
    let line = text.lines().rfind(|l| l.starts_with('{')).context("no output")?;
    Ok(line.to_string())
}

/// `bench-results.jsonl` -> `bench-results-reference.jsonl`.
fn reference_out(out: &Path) -> PathBuf {
    let stem = out.file_stem().map_or("bench-results".into(), |s| s.to_string_lossy());
    out.with_file_name(format!("{stem}-reference.jsonl"))
}

/// The reference's inputs: the vocabulary, the special ids, and for every measurement the
/// collated batch (training) or the prompts (generation) our measurement of it uses.
fn reference_inputs(args: &BenchArgs) -> Result<Value> {
    let tokenizer = Tokenizer::from_file(&args.tokenizer)?;
    let special = tokenizer.special();
    let samples = load_samples(&args.data)?;
    let curriculum = reference_curriculum();
    let mut measurements = serde_json::Map::new();
    for (name, model, batch, stage, warmup, steps) in REFERENCE_MEASUREMENTS {
        let key = format!("{name}:{model}:{batch}:{stage}");
        // The same prompts as our measurement of this key decodes.
        let ours = MEASUREMENTS.iter().find(|m| {
            (m.name, m.model, m.batch, m.stage) == (name, model, batch, stage)
                && !m.gradient_checkpointing
        });
        let n = match ours {
            Some(m) if name.starts_with("generate") => m.prompts_decoded(),
            _ => batch,
        };
        if samples.len() < n {
            bail!("{}: {} samples, the benchmark needs {n}", args.data.display(), samples.len());
        }
        let tokenized = tokenize_samples(&tokenizer, &samples[..n]);
        let value = if name.starts_with("generate") {
            let prompts: Vec<Vec<u32>> =
                tokenized.iter().map(|s| eval_prompt(&curriculum, &special, s, stage)).collect();
            json!({"prompts": prompts, "max_new": GENERATED_TOKENS})
        } else {
            let batch_at = |stage: usize| {
                let staged: Vec<StagedSample> = tokenized
                    .iter()
                    .map(|s| training_sample(&curriculum, &special, s, stage))
                    .collect();
                batch_json(&collate_training(&staged, &special))
            };
            json!({"batch": batch_at(stage), "batch0": batch_at(0), "warmup": warmup, "steps": steps})
        };
        measurements.insert(key, value);
    }
    Ok(json!({
        "vocab_size": tokenizer.vocab_size(),
        "latent_id": special.latent,
        "pad_id": special.pad,
        "measurements": measurements,
    }))
}

/// A collated batch as rows.
fn batch_json(batch: &Batch) -> Value {
    let rows = |flat: &[i64]| -> Vec<Vec<i64>> {
        flat.chunks(batch.seq_len.max(1)).map(<[i64]>::to_vec).collect()
    };
    json!({
        "input_ids": rows(&batch.input_ids),
        "attention_mask": rows(&batch.attention_mask),
        "position_ids": rows(&batch.position_ids),
        "labels": rows(&batch.labels),
        "latent_columns": batch.latent_columns,
    })
}
