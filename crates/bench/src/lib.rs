//! Measurements of this implementation: [`run`] (`coconut bench`) and the device check
//! ([`check_device`]).
//!
//! `bench`: the training step and generation at one thread, with the shapes of the PyTorch
//! reference (`tiny` = 4 layers x 256, and the GPT-2 124M shape; random weights; the GPT-2
//! tokenizer; ProsQA batches of 8), and a Llama of the tiny shape (`tiny_llama`: 4 query
//! heads sharing 2 key-value heads, SwiGLU). Each measurement runs in a child process so that its
//! peak RSS is its own. One JSON line per measurement, then the ratios scripts read.

#![warn(missing_docs)]

pub mod check_device;
mod ddp;
mod measure;
mod records;
mod reference;

use measure::{bench_model, median, reference_curriculum, REFERENCE_ADAMW};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use measure::{Measurement, MEASUREMENTS, OPS_STAGE};

/// Operators of one GPT-2-shape thought pass, forward and backward (batch 8, dropout 0.1,
/// [`OPS_STAGE`] against stage 0), as commit a3f3124 runs it: the base the op-count targets
/// divide (docs/BENCHMARKS.md, "Op counts").
const BASELINE_OPS_PER_PASS_F32: f64 = 6132.5;
/// [`BASELINE_OPS_PER_PASS_F32`] computing in bf16.
const BASELINE_OPS_PER_PASS_BF16: f64 = 7831.5;
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
    /// Also run the PyTorch implementation of the official algorithm in this invocation, on
    /// the same batches (needs `python3 -c "import torch, transformers"` to work).
    #[arg(long, conflicts_with = "reference")]
    with_reference: bool,
    /// The Python that runs the reference.
    #[arg(long, default_value = "python3")]
    python: String,
    /// The reference implementation.
    #[arg(long, default_value = "benches/reference/coconut_reference.py")]
    reference_script: PathBuf,
    /// Saved reference results (JSON lines) to print speedups against, instead of running it.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Skip the GPT-2-shape measurements (training steps of about 2 minutes each, the op
    /// counts).
    #[arg(long)]
    skip_gpt2: bool,
    /// The device both sides run on (`cpu`, `cuda`, `cuda:N`); the default run's shape and
    /// the data-parallel lines are measured on the CPU only.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Run one measurement in this process (`name:model:batch:stage`, as the JSON lines
    /// name them), or the reference's (`reference:name:model:batch:stage`), and print its line.
    #[arg(long)]
    only: Option<String>,
}

fn key(m: &Measurement) -> String {
    let recompute = if m.gradient_checkpointing { ":gradient_checkpointing" } else { "" };
    format!("{}:{}:{}:{}{recompute}", m.name, m.model, m.batch, m.stage)
}

/// Runs every measurement in a child process and prints the ratios. The children are this
/// executable started as `coconut bench --only KEY`, so the caller is the `coconut` binary
/// or one that dispatches the same command line.
pub fn run(args: &BenchArgs) -> Result<()> {
    if let Some(only) = args.only.as_deref().and_then(|o| o.strip_prefix("ddp:")) {
        let (threads, sharded) = match only.strip_suffix(":sharded") {
            Some(threads) => (threads, true),
            None => (only, false),
        };
        let threads: usize = threads.parse().context("ddp:<threads>[:sharded]")?;
        return ddp::measure_ddp(&args.data, &args.tokenizer, threads, sharded);
    }
    if let Some(key) = args.only.as_deref().and_then(|o| o.strip_prefix("reference:")) {
        return reference::run_one(args, key);
    }
    if let Some(only) = &args.only {
        let m = MEASUREMENTS
            .iter()
            .find(|m| key(m) == *only)
            .with_context(|| format!("no measurement {only}"))?;
        let device = coconut_trainer::usable_device(&args.device).map_err(anyhow::Error::msg)?;
        println!("{}", measure::measure(&args.data, &args.tokenizer, device, m)?);
        return Ok(());
    }
    check_inputs(args)?;
    println!("# {}", cpu_description());
    let exe = std::env::current_exe()?;
    let lines = run_measurements(args, &exe)?;
    let ddp = ddp::ddp_ratios(&args.data, &args.tokenizer, &exe, &mut out_lines(&args.out)?)?;
    let theirs = match &args.reference {
        Some(path) => Some(read_reference(path)?),
        None if args.with_reference => reference::run_reference(args)?,
        None => None,
    };
    if let Some(theirs) = &theirs {
        print_speedups(&lines, theirs);
    }
    println!("\n# {}", cpu_description());
    print_contract(&lines, theirs.as_deref(), ddp);
    Ok(())
}

/// The CPU's model name and the flags that decide which kernels run (AVX-512, AMX, bf16).
fn cpu_description() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        info.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map_or(String::new(), |(_, v)| v.trim().to_string())
    };
    let flags = field("flags");
    let wanted = ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"];
    let present: Vec<&str> = flags.split_whitespace().filter(|f| wanted.contains(f)).collect();
    format!(
        "cpu: {} ({} threads available; {}), one thread per measurement",
        field("model name"),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        present.join(" ")
    )
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
    let device = coconut_trainer::usable_device(&args.device).map_err(anyhow::Error::msg)?;
    let (on_cpu, native_bf16) = (device == tch::Device::Cpu, coconut_trainer::native_bf16(device));
    let wanted = |m: &&Measurement| {
        !(args.skip_gpt2 && m.model == "gpt2")
            && (!m.needs_native_bf16() || native_bf16)
            && (on_cpu || m.model != "default")
    };
    for m in MEASUREMENTS.iter().filter(wanted) {
        let oom_before = coconut_runs::child::oom_kills();
        let output = Command::new(exe)
            .args(["bench", "--only", &key(m), "--device", &args.device, "--data"])
            .arg(&args.data)
            .arg("--tokenizer")
            .arg(&args.tokenizer)
            .output()?;
        if !output.status.success() {
            let how = coconut_runs::child::failure(output.status, oom_before);
            bail!("measurement {} {how}: {}", key(m), String::from_utf8_lossy(&output.stderr));
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

/// The closing lines, one contract: each `name=value` with its target in brackets; `n/a`
/// where this run could not measure it (no reference, no native bf16, no MPI).
fn print_contract(ours: &[ResultLine], theirs: Option<&[ResultLine]>, ddp: Option<ddp::DdpRatios>) {
    let find = |lines: &[ResultLine], name: &str, model: &str, stage: u64| {
        lines
            .iter()
            .find(|l| {
                l.name == name
                    && l.model == model
                    && l.stage == stage
                    && l.gradient_checkpointing != Some(true)
            })
            .cloned()
    };
    let ours_of = |name: &str, model: &str, stage: u64| find(ours, name, model, stage);
    let theirs_of =
        |name: &str, model: &str, stage: u64| theirs.and_then(|t| find(t, name, model, stage));
    let step_speedup = |model: &str| {
        let ours = ours_of("train_step", model, 6)?.median_s?;
        Some(theirs_of("train_step", model, 6)?.median_s? / ours)
    };
    let generation = || {
        let ours = ours_of("generate_batched", "tiny", 6)?.samples_per_s?;
        Some(ours / theirs_of("generate_batched", "tiny", 6)?.samples_per_s?)
    };
    let bf16 = |model: &str, stage: u64| {
        let f32_step = ours_of("train_step", model, stage)?.median_s?;
        Some(f32_step / ours_of("train_step_bf16", model, stage)?.median_s?)
    };
    let overhead = |model: &str| ours_of("latent_overhead", model, 6)?.ratio;
    let collate = ours_of("train_step", "tiny", 6).and_then(|l| l.collate_share);
    let ops = |lines: Option<&[ResultLine]>, name: &str| {
        find(lines?, name, "gpt2", OPS_STAGE as u64)?.ops_per_latent_pass
    };
    let optimizer_ops = ours_of("ops_per_latent_pass", "gpt2", OPS_STAGE as u64)
        .and_then(|l| l.optimizer_ops_per_step);
    let ops_target = |baseline: f64, reference: Option<f64>| {
        let half = reference.map_or("n/a".to_string(), |r| format!("{:.0}", r / 2.0));
        format!("<= {:.0}, a third of {baseline}; <= {half}, half the reference's", baseline / 3.0)
    };
    let (ops_f32, ops_bf16) =
        (ops(theirs, "ops_per_latent_pass"), ops(theirs, "ops_per_latent_pass_bf16"));
    let ops_lines = [
        (
            "ops_per_latent_pass_gpt2_f32",
            ops(Some(ours), "ops_per_latent_pass"),
            ops_target(BASELINE_OPS_PER_PASS_F32, ops_f32),
        ),
        (
            "ops_per_latent_pass_gpt2_bf16",
            ops(Some(ours), "ops_per_latent_pass_bf16"),
            ops_target(BASELINE_OPS_PER_PASS_BF16, ops_bf16),
        ),
        ("ops_per_latent_pass_reference_f32", ops_f32, "the reference, f32".to_string()),
        (
            "ops_per_latent_pass_reference_bf16",
            ops_bf16,
            "the reference, bf16 autocast".to_string(),
        ),
        ("optimizer_ops_per_step", optimizer_ops, "<= 20".to_string()),
    ];
    for (name, value, target) in ops_lines {
        match value {
            Some(v) => println!("{name}={v:.0} [{target}]"),
            None => println!("{name}=n/a [{target}]"),
        }
    }
    let hash = ours_of("checkpoint_hash", "gpt2", 0).and_then(|l| l.hash_share_of_save);
    let contract: [(&str, Option<f64>, usize, &str); 14] = [
        ("speedup_tiny_stage6", step_speedup("tiny"), 2, ">= 6"),
        ("speedup_gpt2_stage6", step_speedup("gpt2"), 2, ">= 2.5"),
        ("generation_batched_vs_reference", generation(), 2, ">= 2"),
        ("bf16_speedup_gpt2", bf16("gpt2", 6), 2, ">= 1.8 on AMX"),
        ("bf16_speedup_default", bf16("default", 3), 2, DEFAULT_RUN_AUTO),
        ("latent_overhead_stage6", overhead("tiny"), 3, "<= 1.10"),
        ("latent_overhead_stage6_llama", overhead("tiny_llama"), 3, "<= 1.10"),
        ("ddp_speedup_2ranks", ddp.map(|d| d.speedup_2ranks), 2, ">= 1.6"),
        ("ddp_vs_threads_2", ddp.map(|d| d.vs_threads_2), 2, ">= 1"),
        ("allreduce_share", ddp.map(|d| d.allreduce_share), 3, "< 0.1"),
        ("optimizer_state_bytes_ratio_2ranks", ddp.map(|d| d.state_bytes_ratio), 3, "0.5"),
        ("zero1_step_vs_ddp_2ranks", ddp.map(|d| d.zero1_step_vs_ddp), 3, "<= 1.05"),
        ("collate_share", collate, 5, "< 0.02"),
        ("checkpoint_hash_share_gpt2", hash, 3, "<= 0.05"),
    ];
    for (name, value, digits, target) in contract {
        match value {
            Some(v) => println!("{name}={v:.digits$} [{target}]"),
            None => println!("{name}=n/a [{target}]"),
        }
    }
}

/// The target of `bf16_speedup_default`: `precision = "auto"` takes bf16 on a CPU only from
/// [`coconut_trainer::MIN_CPU_BF16_WIDTH`], so the default run (128 wide) computes in f32 and
/// is never slowed down; the line says by how much bf16 would.
const DEFAULT_RUN_AUTO: &str = "auto takes f32 for the default run: < 1 expected";

/// Appends to the results file (the DDP lines come after the renamed file is complete).
fn out_lines(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("appending to {}", path.display()))
}

/// Saved reference results: the JSON lines of a file.
fn read_reference(path: &Path) -> Result<Vec<ResultLine>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

/// For every measurement with a counterpart in the reference's results, ours beside theirs.
fn print_speedups(lines: &[ResultLine], theirs: &[ResultLine]) {
    println!("\n| measurement | reference | ours | speedup | RSS reference | RSS ours |\n|---|---|---|---|---|---|");
    // Operator counts are printed in the contract, beside the reference's.
    for ours in lines.iter().filter(|l| l.median_s.is_some() || l.samples_per_s.is_some()) {
        let same =
            |r: &&ResultLine| r.name == ours.name && r.model == ours.model && r.stage == ours.stage;
        let Some(r) = theirs.iter().filter(same).find(|r| r.batch == ours.batch) else {
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
}
