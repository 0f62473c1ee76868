//! `bench`: the training step and generation at one thread, with the shapes of the PyTorch
//! reference (`tiny` = 4 layers x 256, and the GPT-2 124M shape; random weights; the GPT-2
//! tokenizer; ProsQA batches of 8), and a Llama of the tiny shape (`tiny_llama`: 4 query
//! heads sharing 2 key-value heads, SwiGLU). Each measurement runs in a child process so that its
//! peak RSS is its own. One JSON line per measurement, then the ratios scripts read.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use coconut_curriculum::{
    collate_training, eval_prompt, load_samples, tokenize_samples, training_sample,
    CurriculumConfig, Mode, Sample, StagedSample, Tokenizer,
};
use coconut_eval::{generate, generate_without_cache};
use coconut_model::{CausalLm, Gpt2, Gpt2Config, Llama, LlamaConfig};
use coconut_trainer::adamw::{AdamW, AdamWConfig};
use coconut_trainer::gradients::Gradients;
use coconut_trainer::{training_loss, DeviceBatch};
use serde_json::{json, Value};
use tch::{nn::VarStore, Device, Kind};

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

/// One measurement of the fixed set.
struct Measurement {
    name: &'static str,
    model: &'static str,
    batch: usize,
    stage: usize,
    steps: usize,
    /// Train with `train.gradient_checkpointing` (the long passes recomputed in backward).
    gradient_checkpointing: bool,
}

const fn measurement(
    name: &'static str,
    model: &'static str,
    batch: usize,
    stage: usize,
    steps: usize,
    gradient_checkpointing: bool,
) -> Measurement {
    Measurement { name, model, batch, stage, steps, gradient_checkpointing }
}

/// The fixed set.
const MEASUREMENTS: [Measurement; 11] = [
    measurement("train_step", "tiny", 8, 6, 5, false),
    measurement("plain_step", "tiny", 8, 6, 5, false),
    measurement("latent_overhead", "tiny", 8, 6, 7, false),
    measurement("train_step", "tiny_llama", 8, 6, 5, false),
    measurement("latent_overhead", "tiny_llama", 8, 6, 7, false),
    measurement("train_step", "tiny", 8, 0, 2, false),
    measurement("train_step", "gpt2", 8, 6, 1, false),
    measurement("train_step", "gpt2", 8, 6, 1, true),
    measurement("plain_step", "gpt2", 8, 6, 1, false),
    measurement("generate_reference", "tiny", 1, 6, 2, false),
    measurement("generate_batched", "tiny", 32, 6, 1, false),
];

fn key(m: &Measurement) -> String {
    let recompute = if m.gradient_checkpointing { ":gradient_checkpointing" } else { "" };
    format!("{}:{}:{}:{}{recompute}", m.name, m.model, m.batch, m.stage)
}

/// Runs every measurement in a child process and prints the ratios.
pub fn run(args: &BenchArgs) -> Result<()> {
    if let Some(only) = args.only.as_deref().and_then(|o| o.strip_prefix("ddp:")) {
        let threads: usize = only.parse().context("ddp:<threads>")?;
        return measure_ddp(args, threads);
    }
    if let Some(only) = &args.only {
        let m = MEASUREMENTS
            .iter()
            .find(|m| key(m) == *only)
            .with_context(|| format!("no measurement {only}"))?;
        let line = measure(args, m)?;
        println!("{line}");
        return Ok(());
    }
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
    let exe = std::env::current_exe()?;
    // Written beside the target and renamed at the end: a failed run leaves an earlier file intact.
    let partial = args.out.with_extension("partial");
    let mut out = std::fs::File::create(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let mut lines: Vec<Value> = Vec::new();
    for m in MEASUREMENTS.iter().filter(|m| !(args.skip_gpt2 && m.model == "gpt2")) {
        let output = Command::new(&exe)
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
    let find = |name: &str, model: &str, stage: u64| {
        lines
            .iter()
            .find(|l| {
                l["name"] == name
                    && l["model"] == model
                    && l["stage"] == stage
                    && l["gradient_checkpointing"] != true
            })
            .cloned()
    };
    for (model, suffix) in [("tiny", ""), ("tiny_llama", "_llama")] {
        if let Some(overhead) = find("latent_overhead", model, 6) {
            let ratio = overhead["ratio"].as_f64().unwrap_or(f64::NAN);
            println!("latent_overhead_stage6{suffix}={ratio:.3}");
        }
    }
    let train = find("train_step", "tiny", 6);
    if let (Some(b), Some(r)) =
        (find("generate_batched", "tiny", 6), find("generate_reference", "tiny", 6))
    {
        println!(
            "batched_eval_speedup={:.1}",
            b["samples_per_s"].as_f64().unwrap_or(0.0)
                / r["samples_per_s"].as_f64().unwrap_or(f64::NAN)
        );
    }
    if let Some(t) = &train {
        println!("collate_share={:.5}", t["collate_share"].as_f64().unwrap_or(f64::NAN));
    }
    ddp_ratios(args, &exe, &mut out_lines(&args.out)?)?;
    if let Some(reference) = &args.reference {
        print_speedups(&lines, reference)?;
    }
    Ok(())
}

/// Appends to the results file (the DDP lines come after the renamed file is complete).
fn out_lines(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("appending to {}", path.display()))
}

/// Data-parallel training on the tiny shape: 1 rank at one thread, 2 ranks (`mpirun`) at
/// one thread each, and 1 rank at 2 threads; prints the tokens-per-second ratios and the
/// all-reduce's share of the 2-rank step. Skipped (with a line saying so) where `mpirun`
/// or the `mpi` feature is missing.
fn ddp_ratios(args: &BenchArgs, exe: &Path, out: &mut std::fs::File) -> Result<()> {
    if cfg!(not(feature = "mpi")) || Command::new("mpirun").arg("--version").output().is_err() {
        println!("# ddp: skipped (needs mpirun and a build with the `mpi` feature)");
        return Ok(());
    }
    let mut run = |ranks: usize, threads: usize| -> Result<Value> {
        let mut cmd = if ranks == 1 {
            Command::new(exe)
        } else {
            let mut c = Command::new("mpirun");
            c.args(["-n", &ranks.to_string(), "--oversubscribe", "--bind-to", "none"])
                .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
                .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
                .arg(exe);
            c
        };
        let output = cmd
            .args(["bench", "--only", &format!("ddp:{threads}"), "--data"])
            .arg(&args.data)
            .arg("--tokenizer")
            .arg(&args.tokenizer)
            .output()?;
        if !output.status.success() {
            bail!("ddp {ranks} ranks failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        let text = String::from_utf8(output.stdout)?;
        let line = text.lines().rfind(|l| l.starts_with('{')).context("no output")?;
        println!("{line}");
        writeln!(out, "{line}")?;
        Ok(serde_json::from_str(line)?)
    };
    let one = run(1, 1)?;
    let two = run(2, 1)?;
    let threads = run(1, 2)?;
    let rate = |v: &Value| v["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
    println!("ddp_speedup_2ranks={:.2}", rate(&two) / rate(&one));
    println!("ddp_vs_threads_2={:.2}", rate(&two) / rate(&threads));
    println!("allreduce_share={:.3}", two["allreduce_share"].as_f64().unwrap_or(f64::NAN));
    Ok(())
}

/// One data-parallel measurement, run by every rank (rank 0 prints the line): optimizer
/// steps of the tiny shape at stage 6, each rank a micro-batch of 8 per step, `threads`
/// threads per rank.
fn measure_ddp(args: &BenchArgs, threads: usize) -> Result<()> {
    let ranks = coconut_trainer::Ranks::from_launcher(Device::Cpu)?;
    let (rank, world) = (ranks.rank(), ranks.world_size());
    tch::set_num_threads(threads as i32);
    tch::manual_seed(0);
    let tokenizer = Tokenizer::from_file(&args.tokenizer)?;
    let samples = load_samples(&args.data)?;
    let curriculum = reference_curriculum();
    let vs = VarStore::new(Device::Cpu);
    let model = bench_model(&vs, "tiny", tokenizer.vocab_size());
    ranks.broadcast_variables(&vs)?;
    let mut optimizer = AdamW::new(vs.variables(), REFERENCE_ADAMW);
    let mut grads = Gradients::new(vs.variables());
    let special = tokenizer.special();
    let (batch, warmup, steps) = (8, 2, 6);
    let (mut step_s, mut reduce_s, mut tokens) = (Vec::new(), Vec::new(), 0.0);
    for step in 0..warmup + steps {
        ranks.barrier()?;
        let started = Instant::now();
        // This rank's micro-batch of the step: the (step * W + rank)-th 8 samples.
        let first = ((step * world + rank) * batch) % (samples.len() - batch);
        let tokenized = tokenize_samples(&tokenizer, &samples[first..first + batch]);
        let staged: Vec<StagedSample> =
            tokenized.iter().map(|s| training_sample(&curriculum, &special, s, 6)).collect();
        let collated = collate_training(&staged, &special);
        let real = collated.attention_mask.iter().filter(|&&m| m == 1).count() as f64;
        let device_batch = DeviceBatch::new(&collated, Device::Cpu, Kind::Float);
        let loss = training_loss(model.as_ref(), &device_batch, false);
        loss.backward(model.as_ref(), &mut grads, 1.0 / world as f64);
        let reduce_started = Instant::now();
        let mut scalars = [real];
        ranks.sum_gradients(&mut grads, &mut scalars)?;
        let reduced = reduce_started.elapsed().as_secs_f64();
        optimizer.step(grads.take());
        ranks.barrier()?;
        if step >= warmup {
            step_s.push(started.elapsed().as_secs_f64());
            reduce_s.push(reduced);
            tokens += scalars[0];
        }
    }
    if rank == 0 {
        let total: f64 = step_s.iter().sum();
        println!(
            "{}",
            json!({
                "name": "ddp_step", "model": "tiny", "stage": 6, "batch_per_rank": batch,
                "ranks": world, "threads_per_rank": threads, "steps": steps,
                "median_step_s": median(&step_s), "tokens_per_s": tokens / total,
                "allreduce_share": reduce_s.iter().sum::<f64>() / total,
                "peak_rss_mb": peak_rss_mb(),
            })
        );
    }
    Ok(())
}

/// For every measurement with a counterpart in the reference file, ours beside theirs.
fn print_speedups(lines: &[Value], reference: &Path) -> Result<()> {
    let text = std::fs::read_to_string(reference)
        .with_context(|| format!("reading {}", reference.display()))?;
    let theirs: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    println!("\n| measurement | reference | ours | speedup | RSS reference | RSS ours |\n|---|---|---|---|---|---|");
    for ours in lines {
        let same = |r: &&Value| {
            r["name"] == ours["name"] && r["model"] == ours["model"] && r["stage"] == ours["stage"]
        };
        let Some(r) = theirs
            .iter()
            .filter(same)
            .find(|r| r["batch"] == ours["batch"] || ours["name"] == "generate_batched")
        else {
            continue;
        };
        let (label, a, b, speedup) = if ours["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("generate"))
        {
            let (a, b) = (
                r["samples_per_s"].as_f64().unwrap_or(0.0),
                ours["samples_per_s"].as_f64().unwrap_or(0.0),
            );
            ("samples/s", a, b, b / a)
        } else {
            let (a, b) =
                (r["median_s"].as_f64().unwrap_or(0.0), ours["median_s"].as_f64().unwrap_or(0.0));
            ("s", a, b, a / b)
        };
        let recompute = if ours["gradient_checkpointing"] == true { " (recomputed)" } else { "" };
        println!(
            "| {}{recompute} {} b{} stage {} | {a:.3} {label} | {b:.3} {label} | {speedup:.2}x | {:.0} MB | {:.0} MB |",
            ours["name"].as_str().unwrap_or(""),
            ours["model"].as_str().unwrap_or(""),
            ours["batch"],
            ours["stage"],
            r["peak_rss_mb"].as_f64().unwrap_or(0.0),
            ours["peak_rss_mb"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}

/// Peak resident memory of this process so far, in MB (`VmHWM`).
fn peak_rss_mb() -> f64 {
    rss_field("VmHWM:")
}

/// Current resident memory of this process, in MB (`VmRSS`).
fn rss_mb() -> f64 {
    rss_field("VmRSS:")
}

fn rss_field(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The reference's stage-k sample: k latents even past the last step.
pub(crate) fn reference_curriculum() -> CurriculumConfig {
    CurriculumConfig {
        mode: Mode::Coconut,
        max_latent_stage: 6,
        pad_latent_to_max: true,
        ..CurriculumConfig::default()
    }
}

/// The reference's optimizer settings.
pub(crate) const REFERENCE_ADAMW: AdamWConfig =
    AdamWConfig { lr: 1e-4, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.01 };

/// The measured model, freshly initialised: GPT-2 with the reference's dropout of 0.1, or
/// the Llama of the tiny shape (no dropout, as Llama trains).
pub(crate) fn bench_model(vs: &VarStore, name: &str, vocab: usize) -> Box<dyn CausalLm> {
    if name == "tiny_llama" {
        let config =
            LlamaConfig::new(vocab, 1024, 256, 4, 4, 2, 704, 0.0).expect("a valid Llama shape");
        return Box::new(Llama::new(&vs.root(), &config));
    }
    let (n_layer, n_embd, n_head) = if name == "gpt2" { (12, 768, 12) } else { (4, 256, 4) };
    let mut config = Gpt2Config::new(vocab, 1024, n_embd, n_layer, n_head);
    (config.embd_pdrop, config.attn_pdrop, config.resid_pdrop) = (0.1, 0.1, 0.1);
    Box::new(Gpt2::new(&vs.root(), &config))
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One measurement, in this process, at one thread.
fn measure(args: &BenchArgs, m: &Measurement) -> Result<String> {
    let Measurement { name, model: model_name, batch, stage, steps, gradient_checkpointing } = *m;
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let tokenizer = Tokenizer::from_file(&args.tokenizer)?;
    let special = tokenizer.special();
    let samples = load_samples(&args.data)?;
    if samples.len() < batch.max(steps) {
        bail!(
            "{}: {} samples, the benchmark needs {}",
            args.data.display(),
            samples.len(),
            batch.max(steps)
        );
    }
    let curriculum = reference_curriculum();
    let vs = VarStore::new(Device::Cpu);
    let model = bench_model(&vs, model_name, tokenizer.vocab_size());
    let model = model.as_ref();

    if name.starts_with("generate") {
        let n = batch.max(steps);
        let started = Instant::now();
        let tokenized = tokenize_samples(&tokenizer, &samples[..n]);
        let prompts: Vec<Vec<u32>> =
            tokenized.iter().map(|s| eval_prompt(&curriculum, &special, s, stage)).collect();
        let tokenize_s = started.elapsed().as_secs_f64();
        let max_new = 64;
        let started = Instant::now();
        let generated: usize = if name == "generate_batched" {
            generate(model, &prompts, &special, &[], max_new, Device::Cpu)
                .iter()
                .map(|g| g.tokens.len())
                .sum()
        } else {
            prompts
                .iter()
                .map(|p| {
                    generate_without_cache(model, p, &special, &[], max_new, Device::Cpu)
                        .tokens
                        .len()
                })
                .sum()
        };
        let total = started.elapsed().as_secs_f64();
        let mean_prompt = prompts.iter().map(Vec::len).sum::<usize>() as f64 / n as f64;
        return Ok(json!({
            "name": name, "model": model_name, "batch": batch, "stage": stage, "n_samples": n, "max_new": max_new,
            "ignore_eos": true, "mean_prompt_len": mean_prompt, "generated_tokens": generated,
            "total_s": total, "samples_per_s": n as f64 / total, "gen_tokens_per_s": generated as f64 / total,
            "tokenize_s": tokenize_s, "peak_rss_mb": peak_rss_mb(), "threads": 1,
        })
        .to_string());
    }

    let mut optimizer = AdamW::new(vs.variables(), REFERENCE_ADAMW);
    let mut grads = Gradients::new(vs.variables());
    // The first steps of a process run slower while the allocator takes memory from the
    // system; a GPT-2 step is long enough for one to do.
    let warmup = if model_name == "gpt2" { 1 } else { 2 };
    let inputs = StepInputs {
        tokenizer: &tokenizer,
        samples: &samples,
        curriculum: &curriculum,
        batch,
        stage,
    };
    let mut step = |index: usize, plain: bool| {
        // Dropout draws from a seed per step, as in training, so that measurements of the
        // same step with and without recomputation end with the same loss.
        tch::manual_seed(index as i64);
        let timing =
            timed_step(model, &mut optimizer, &mut grads, &inputs, plain, gradient_checkpointing);
        eprintln!(
            "# {name} {model_name} step {index} (plain {plain}): loss {:.4}, {:.3} s",
            timing.loss, timing.total_s
        );
        timing
    };

    if name == "latent_overhead" {
        // The stage-6 step and the plain step on the same tokens, alternating in one
        // process, so that the machine's drift over a run weighs on both alike.
        let (mut latent, mut plain) = (Vec::new(), Vec::new());
        for index in 0..warmup + steps {
            let order = if index % 2 == 0 { [false, true] } else { [true, false] };
            for is_plain in order {
                let timing = step(index, is_plain);
                if index >= warmup {
                    if is_plain { &mut plain } else { &mut latent }.push(timing.total_s);
                }
            }
        }
        let (latent_s, plain_s) = (median(&latent), median(&plain));
        return Ok(json!({
            "name": name, "model": model_name, "batch": batch, "stage": stage, "steps": steps, "warmup": warmup,
            "latent_median_s": latent_s, "plain_median_s": plain_s, "ratio": latent_s / plain_s,
            "latent_all_s": latent, "plain_all_s": plain, "peak_rss_mb": peak_rss_mb(), "threads": 1,
        })
        .to_string());
    }

    let plain = name == "plain_step";
    let (mut times, mut fwd, mut bwd, mut opt, mut rss) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut last = None;
    for index in 0..warmup + steps {
        let timing = step(index, plain);
        if index >= warmup {
            times.push(timing.total_s);
            fwd.push(timing.forward_s);
            bwd.push(timing.backward_s);
            opt.push(timing.optimizer_s);
        }
        rss.push(rss_mb());
        last = Some(timing);
    }
    let StepTiming {
        tokenize_s,
        collate_s,
        loss: final_loss,
        seq_len,
        real,
        supervised,
        calls,
        ..
    } = last.context("no step ran")?;
    let med = median(&times);
    Ok(json!({
        "name": name, "model": model_name, "batch": batch, "stage": stage, "seq_len": seq_len,
        "real_tokens": real, "supervised_tokens": supervised, "model_calls": calls, "steps": steps, "warmup": warmup,
        "median_s": med, "min_s": times.iter().copied().fold(f64::INFINITY, f64::min),
        "max_s": times.iter().copied().fold(0.0, f64::max),
        "fwd_s": median(&fwd), "bwd_s": median(&bwd), "opt_s": median(&opt),
        "padded_tokens_per_s": (batch * seq_len) as f64 / med, "real_tokens_per_s": real as f64 / med,
        "tokenize_s": tokenize_s, "collate_s": collate_s, "collate_share": (tokenize_s + collate_s) / med,
        "final_loss": final_loss, "all_s": times, "rss_mb_after_each_step": rss,
        "rss_growth_mb": rss.last().copied().unwrap_or(0.0) - rss.get(1).copied().unwrap_or(0.0),
        "peak_rss_mb": peak_rss_mb(), "threads": 1, "gradient_checkpointing": gradient_checkpointing,
    })
    .to_string())
}

/// What a training step of the benchmark reads.
struct StepInputs<'a> {
    tokenizer: &'a Tokenizer,
    samples: &'a [Sample],
    curriculum: &'a CurriculumConfig,
    batch: usize,
    stage: usize,
}

/// The times and shape of one training step.
struct StepTiming {
    tokenize_s: f64,
    collate_s: f64,
    forward_s: f64,
    backward_s: f64,
    optimizer_s: f64,
    total_s: f64,
    loss: f64,
    seq_len: usize,
    real: usize,
    supervised: i64,
    calls: usize,
}

/// One training step on the first `batch` samples at `stage`, from tokenization to the
/// optimizer update. `plain` treats the latents as ordinary tokens: the same tokens in one
/// pass.
fn timed_step(
    model: &dyn CausalLm,
    optimizer: &mut AdamW,
    grads: &mut Gradients,
    inputs: &StepInputs,
    plain: bool,
    gradient_checkpointing: bool,
) -> StepTiming {
    let special = inputs.tokenizer.special();
    let t0 = Instant::now();
    // Collation is part of the step: it runs for every batch of a real epoch.
    let tokenized = tokenize_samples(inputs.tokenizer, &inputs.samples[..inputs.batch]);
    let t1 = Instant::now();
    let staged: Vec<StagedSample> = tokenized
        .iter()
        .map(|s| training_sample(inputs.curriculum, &special, s, inputs.stage))
        .collect();
    let mut collated = collate_training(&staged, &special);
    if plain {
        collated.latent_columns.iter_mut().for_each(Vec::clear);
    }
    let device_batch = DeviceBatch::new(&collated, Device::Cpu, Kind::Float);
    let t2 = Instant::now();
    let loss = training_loss(model, &device_batch, gradient_checkpointing);
    let t3 = Instant::now();
    let loss_value = loss.value.double_value(&[]);
    loss.backward(model, grads, 1.0);
    let t4 = Instant::now();
    optimizer.step(grads.take());
    let t5 = Instant::now();
    StepTiming {
        tokenize_s: (t1 - t0).as_secs_f64(),
        collate_s: (t2 - t1).as_secs_f64(),
        forward_s: (t3 - t2).as_secs_f64(),
        backward_s: (t4 - t3).as_secs_f64(),
        optimizer_s: (t5 - t4).as_secs_f64(),
        total_s: (t5 - t0).as_secs_f64(),
        loss: loss_value,
        seq_len: collated.seq_len,
        real: collated.attention_mask.iter().filter(|&&m| m == 1).count(),
        supervised: device_batch.supervised_tokens(),
        calls: if plain { 1 } else { device_batch.max_latents() + 1 },
    }
}
