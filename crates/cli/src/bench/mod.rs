//! `bench`: the training step and generation at one thread, with the shapes of the PyTorch
//! reference (`tiny` = 4 layers x 256, and the GPT-2 124M shape; random weights; the GPT-2
//! tokenizer; ProsQA batches of 8), and a Llama of the tiny shape (`tiny_llama`: 4 query
//! heads sharing 2 key-value heads, SwiGLU). Each measurement runs in a child process so that its
//! peak RSS is its own. One JSON line per measurement, then the ratios scripts read.

mod ddp;
mod measure;
mod records;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use measure::{Measurement, MEASUREMENTS};
use records::ResultLine;

/// Arguments of `coconut bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// ProsQA-format samples for the batches (the real validation split matches the reference).
    #[arg(long, default_value = "fixtures/datasets/prosqa/prosqa_valid.json")]
    data: PathBuf,
    /// The GPT-2 `tokenizer.json` (the benchmark needs GPT-2's 50k vocabulary).
    #[arg(long, default_value = "fixtures/tiny-gpt2/tokenizer.json")]
    tokenizer: PathBuf,
    /// Where the JSON lines go (a later run can be compared with it).
    #[arg(long, default_value = "bench-results.jsonl")]
    out: PathBuf,
    /// The reference's results (JSON lines) to print speedups against.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Skip the GPT-2-shape training steps (about 2 minutes each).
    #[arg(long)]
    skip_gpt2: bool,
    /// Run one measurement in this process (used by the parent run).
    #[arg(long, hide = true)]
    only: Option<String>,
}

fn key(m: &Measurement) -> String {
    let recompute = if m.gradient_checkpointing { ":gradient_checkpointing" } else { "" };
    format!("{}:{}:{}:{}{recompute}", m.name, m.model, m.batch, m.stage)
}

/// Runs every measurement in a child process and prints the ratios.
pub fn run(args: &BenchArgs) -> Result<()> {
    if let Some(only) = args.only.as_deref().and_then(|o| o.strip_prefix("ddp:")) {
        let threads: usize = only.parse().context("ddp:<threads>")?;
        return ddp::measure_ddp(&args.data, &args.tokenizer, threads);
    }
    if let Some(only) = &args.only {
        let m = MEASUREMENTS
            .iter()
            .find(|m| key(m) == *only)
            .with_context(|| format!("no measurement {only}"))?;
        println!("{}", measure::measure(&args.data, &args.tokenizer, m)?);
        return Ok(());
    }
    check_inputs(args)?;
    let exe = std::env::current_exe()?;
    let lines = run_measurements(args, &exe)?;
    print_ratios(&lines);
    ddp::ddp_ratios(&args.data, &args.tokenizer, &exe, &mut out_lines(&args.out)?)?;
    if let Some(reference) = &args.reference {
        print_speedups(&lines, reference)?;
    }
    Ok(())
}

/// The files a run reads exist, and the results will not replace the reference.
fn check_inputs(args: &BenchArgs) -> Result<()> {
    if !args.tokenizer.exists() {
        bail!("{}: no GPT-2 tokenizer.json there (pass --tokenizer)", args.tokenizer.display());
    }
    if !args.data.exists() {
        bail!(
            "{}: no ProsQA data there (run `cargo xtask data`, or pass --data)",
            args.data.display()
        );
    }
    if args.reference.as_deref() == Some(args.out.as_path()) {
        bail!(
            "--out and --reference are the same file ({}): the results would replace the reference",
            args.out.display()
        );
    }
    Ok(())
}

/// Runs each measurement of the set in a child process of `exe`, prints its line and
/// writes it to `args.out`; returns the lines read back.
fn run_measurements(args: &BenchArgs, exe: &Path) -> Result<Vec<ResultLine>> {
    // Written beside the target and renamed at the end: a failed run leaves an earlier file intact.
    let partial = args.out.with_extension("partial");
    let mut out = std::fs::File::create(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let mut lines = Vec::new();
    for m in MEASUREMENTS.iter().filter(|m| !(args.skip_gpt2 && m.model == "gpt2")) {
        let output = Command::new(exe)
            .args(["bench", "--only", &key(m), "--data"])
            .arg(&args.data)
            .arg("--tokenizer")
            .arg(&args.tokenizer)
            .output()?;
        if !output.status.success() {
            bail!("measurement {} failed: {}", key(m), String::from_utf8_lossy(&output.stderr));
        }
        let text = String::from_utf8(output.stdout)?;
        let line = text.lines().last().context("no output")?.to_string();
        println!("{line}");
        writeln!(out, "{line}")?;
        lines.push(serde_json::from_str(&line)?);
    }
    drop(out);
    std::fs::rename(&partial, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    Ok(lines)
}

/// The `name=value` lines scripts read: the latent passes' overhead, the batched
/// generation's speedup and the share of a step spent preparing its batch.
fn print_ratios(lines: &[ResultLine]) {
    let find = |name: &str, model: &str, stage: u64| {
        lines.iter().find(|l| {
            l.name == name
                && l.model == model
                && l.stage == stage
                && l.gradient_checkpointing != Some(true)
        })
    };
    for (model, suffix) in [("tiny", ""), ("tiny_llama", "_llama")] {
        if let Some(overhead) = find("latent_overhead", model, 6) {
            let ratio = overhead.ratio.unwrap_or(f64::NAN);
            println!("latent_overhead_stage6{suffix}={ratio:.3}");
        }
    }
    if let (Some(b), Some(r)) =
        (find("generate_batched", "tiny", 6), find("generate_reference", "tiny", 6))
    {
        println!(
            "batched_eval_speedup={:.1}",
            b.samples_per_s.unwrap_or(0.0) / r.samples_per_s.unwrap_or(f64::NAN)
        );
    }
    if let Some(t) = find("train_step", "tiny", 6) {
        println!("collate_share={:.5}", t.collate_share.unwrap_or(f64::NAN));
    }
}

/// Appends to the results file (the DDP lines come after the renamed file is complete).
fn out_lines(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("appending to {}", path.display()))
}

/// For every measurement with a counterpart in the reference file, ours beside theirs.
fn print_speedups(lines: &[ResultLine], reference: &Path) -> Result<()> {
    let text = std::fs::read_to_string(reference)
        .with_context(|| format!("reading {}", reference.display()))?;
    let theirs: Vec<ResultLine> =
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    println!("\n| measurement | reference | ours | speedup | RSS reference | RSS ours |\n|---|---|---|---|---|---|");
    for ours in lines {
        let same =
            |r: &&ResultLine| r.name == ours.name && r.model == ours.model && r.stage == ours.stage;
        let Some(r) = theirs
            .iter()
            .filter(same)
            .find(|r| r.batch == ours.batch || ours.name == "generate_batched")
        else {
            continue;
        };
        let (label, a, b, speedup) = if ours.name.starts_with("generate") {
            let (a, b) = (r.samples_per_s.unwrap_or(0.0), ours.samples_per_s.unwrap_or(0.0));
            ("samples/s", a, b, b / a)
        } else {
            let (a, b) = (r.median_s.unwrap_or(0.0), ours.median_s.unwrap_or(0.0));
            ("s", a, b, a / b)
        };
        let recompute =
            if ours.gradient_checkpointing == Some(true) { " (recomputed)" } else { "" };
        let batch = ours.batch.map_or("null".to_string(), |b| b.to_string());
        println!(
            "| {}{recompute} {} b{batch} stage {} | {a:.3} {label} | {b:.3} {label} | {speedup:.2}x | {:.0} MB | {:.0} MB |",
            ours.name,
            ours.model,
            ours.stage,
            r.peak_rss_mb.unwrap_or(0.0),
            ours.peak_rss_mb.unwrap_or(0.0)
        );
    }
    Ok(())
}
