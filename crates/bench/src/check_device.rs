//! `check-device`: the device path checked in one command, against the CPU.
//!
//! First the plumbing, on small random models of every architecture and a fixed batch of
//! ProsQA questions: the multi-pass loss and every gradient, an AdamW step, batched cached
//! generation against one prompt at a time, a checkpoint written on the device and read on
//! the CPU, and a bf16 step; on a GPU, an optimizer step whose gradients go through NCCL at
//! one rank against the same step without it. Then, unless `--skip-timings`, the GPT-2 124M
//! shape at the paper's batch of 32 per device: the training step at stages 0, 3 and 6 in
//! f32 and bf16, and batched generation, each in a child process so that the device memory
//! it leaves in use (the caching allocator keeps its high-water mark) is its own; and the
//! paper's ProsQA schedule projected from them. One line per check; the last reads `device_check=pass` or
//! `device_check=fail`.
//!
//! With `--device cpu` the CPU is compared with itself, which proves the plumbing only.
//! f32 matmuls on CUDA run without TF32 (libtorch's default), so f32 results agree closely.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use coconut_collective::{Collective, Nccl};
use coconut_curriculum::{
    collate_training, eval_prompt, load_samples, tokenize_samples, training_sample, Batch,
    StagedSample, TokenizedSample, Tokenizer,
};
use coconut_eval::generate;
use coconut_model::{load_pretrained, save_pretrained, tiny_models_on, CausalLm};
use coconut_trainer::adamw::AdamW;
use coconut_trainer::gradients::Gradients;
use coconut_trainer::{cuda_backend_version, training_loss, usable_device, DeviceBatch, RunConfig};
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::{bench_model, median, reference_curriculum, REFERENCE_ADAMW};

/// Arguments of `coconut check-device`.
#[derive(clap::Args, Debug)]
pub struct CheckDeviceArgs {
    /// The device checked against the CPU (`cuda`, `cuda:N`; `cpu` checks the plumbing only).
    #[arg(long, default_value = "cuda:0")]
    device: String,
    /// ProsQA-format questions for the batches (at least 32).
    #[arg(long, default_value = "fixtures/datasets/prosqa/prosqa_valid.json")]
    data: PathBuf,
    /// The GPT-2 `tokenizer.json` (the timed shape is GPT-2's, vocabulary included).
    #[arg(long, default_value = "fixtures/tiny-gpt2/tokenizer.json")]
    tokenizer: PathBuf,
    /// Only the correctness checks (seconds), not the timings.
    #[arg(long)]
    skip_timings: bool,
    /// The shape timed: `gpt2` (124M, the paper's) or `tiny` (4 layers x 256).
    #[arg(long, default_value = "gpt2", value_parser = ["gpt2", "tiny"])]
    timed_model: String,
    /// Run one timing in this process (used by the parent run).
    #[arg(long, hide = true)]
    only: Option<String>,
    /// The batch of that timing (the parent's choice, see `timed_batch`).
    #[arg(long, hide = true, default_value_t = TIMED_BATCH)]
    timed_batch: usize,
}

/// Questions in the batch of the correctness checks.
const CHECK_BATCH: usize = 8;
/// The stage of the correctness checks' batch: thoughts and language steps both present.
const CHECK_STAGE: usize = 3;
/// Relative tolerance of the f32 loss, and of each f32 gradient and parameter as a whole.
const F32_TOLERANCE: f64 = 1e-4;
/// How far the bf16 loss may be from the f32 loss, relatively.
const BF16_TOLERANCE: f64 = 0.02;
/// The paper's batch per device.
const TIMED_BATCH: usize = 32;
/// The stages timed; the others are interpolated.
const TIMED_STAGES: [usize; 3] = [0, 3, 6];
/// New tokens per question in the timed generation (no stop token: the model is random).
const TIMED_NEW_TOKENS: usize = 32;
/// Questions in the training split of the paper's ProsQA.
const PROSQA_TRAIN_QUESTIONS: usize = 17_886;

/// Runs every check, prints one line each and `device_check=pass|fail` last; an error when
/// any failed. The timings run in children, this executable started as `coconut
/// check-device`, so the caller is the `coconut` binary or one with the same command line.
pub fn run(args: &CheckDeviceArgs) -> Result<()> {
    if let Some(only) = &args.only {
        let timing = timing_in_this_process(args, only.parse()?)?;
        println!("{}", serde_json::to_string(&timing)?);
        return Ok(());
    }
    let backend = cuda_backend_version();
    let devices = if backend.is_some() { tch::Cuda::device_count() } else { 0 };
    println!(
        "backend: {}, {devices} CUDA device(s), cuDNN {}",
        backend.map_or("no CUDA backend".to_string(), |v| format!("CUDA runtime {v}")),
        if devices > 0 && tch::Cuda::cudnn_is_available() { "available" } else { "not available" },
    );
    println!("cuda_backend={}", if backend.is_some() { "compiled" } else { "absent" });
    let device = match usable_device(&args.device) {
        Ok(device) => device,
        Err(message) => {
            println!("device: FAIL ({message})");
            println!("device_check=fail");
            bail!(message);
        }
    };
    let tokenizer = Tokenizer::from_file(&args.tokenizer)
        .with_context(|| format!("{}: the GPT-2 tokenizer", args.tokenizer.display()))?;
    let data = CheckData::load(&tokenizer, &args.data)?;
    let mut passed = true;
    for arch in ["gpt2", "llama", "qwen2"] {
        passed &= check_architecture(arch, &tokenizer, &data, device)?;
    }
    match device {
        Device::Cuda(index) => {
            passed &= check("nccl_one_rank[gpt2]", || {
                nccl_one_rank_step(tokenizer.vocab_size(), &data, index)
            });
        }
        _ => println!("nccl_one_rank[gpt2]: skipped (NCCL needs a CUDA device)"),
    }
    if !args.skip_timings {
        passed &= timings(args)?;
    }
    println!("device_check={}", if passed { "pass" } else { "fail" });
    if !passed {
        bail!("device check failed on {}", args.device);
    }
    Ok(())
}

/// Prints `name: ok (detail)` or `name: FAIL (detail)`; a panic inside (libtorch reports
/// its errors as panics) is a failure with its message.
fn check(name: &str, f: impl FnOnce() -> Result<String, String>) -> bool {
    let outcome = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".to_string())
            .lines()
            .next()
            .unwrap_or_default()
            .to_string())
    });
    match &outcome {
        Ok(detail) => println!("{name}: ok ({detail})"),
        Err(detail) => println!("{name}: FAIL ({detail})"),
    }
    outcome.is_ok()
}

/// The questions of the correctness checks.
struct CheckData {
    /// The first [`CHECK_BATCH`] questions of the data.
    questions: Vec<TokenizedSample>,
    /// Their training samples at stage [`CHECK_STAGE`], collated.
    batch: Batch,
}

impl CheckData {
    fn load(tokenizer: &Tokenizer, data: &Path) -> Result<Self> {
        let samples = load_samples(data).with_context(|| format!("{}", data.display()))?;
        if samples.len() < TIMED_BATCH {
            bail!("{}: {} questions, the check needs {TIMED_BATCH}", data.display(), samples.len());
        }
        let special = tokenizer.special();
        let questions = tokenize_samples(tokenizer, &samples[..CHECK_BATCH]);
        let staged: Vec<StagedSample> = questions
            .iter()
            .map(|s| training_sample(&reference_curriculum(), &special, s, CHECK_STAGE))
            .collect();
        Ok(Self { batch: collate_training(&staged, &special), questions })
    }
}

/// `‖a - b‖ / ‖b‖` (b's norm floored at a tiny number), with `a` brought to b's device.
fn relative_difference(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_device(b.device()).to_kind(Kind::Double);
    let b = b.to_kind(Kind::Double);
    (&a - &b).norm().double_value(&[]) / b.norm().double_value(&[]).max(1e-30)
}

/// The worst relative difference over tensors of the same names, and its name; an error
/// names a tensor that is missing or not on `device`.
fn worst_difference(
    on_device: &BTreeMap<String, Tensor>,
    on_cpu: &BTreeMap<String, Tensor>,
    device: Device,
) -> Result<(f64, String), String> {
    let mut worst = (0.0, String::new());
    for (name, expected) in on_cpu {
        let actual = on_device.get(name).ok_or_else(|| format!("{name} is missing"))?;
        if actual.device() != device {
            return Err(format!("{name} is on {:?}, not on {device:?}", actual.device()));
        }
        let difference = relative_difference(actual, expected);
        if difference.is_nan() || difference >= worst.0 {
            worst = (difference, name.clone());
        }
    }
    Ok(worst)
}

/// The loss and the parameter gradients of one training step on `batch` (no dropout: the
/// tiny models have none).
fn loss_and_gradients(
    vs: &VarStore,
    model: &dyn CausalLm,
    batch: &Batch,
) -> (f64, BTreeMap<String, Tensor>) {
    let device_batch = DeviceBatch::new(batch, vs.device(), model.kind());
    let loss = training_loss(model, &device_batch, false);
    let value = loss.value.double_value(&[]);
    let mut grads = Gradients::new(vs.variables());
    loss.backward(model, &mut grads, 1.0);
    (value, grads.sums())
}

/// One architecture's tiny model twice, with the same weights: on the CPU and on the
/// checked device, and the CPU's loss and gradients on the check batch.
struct Pair {
    cpu_vs: VarStore,
    cpu_loss: f64,
    cpu_grads: BTreeMap<String, Tensor>,
    vs: VarStore,
    model: Box<dyn CausalLm>,
    device: Device,
}

/// `Ok(detail)` when `passed`, else `Err(detail)`.
fn verdict(passed: bool, detail: String) -> Result<String, String> {
    if passed {
        Ok(detail)
    } else {
        Err(detail)
    }
}

/// Every check of one architecture's tiny model on `device` against the same model on the
/// CPU. Returns whether all passed.
fn check_architecture(
    arch: &str,
    tokenizer: &Tokenizer,
    data: &CheckData,
    device: Device,
) -> Result<bool> {
    let (vocab, positions) = (tokenizer.vocab_size(), data.batch.seq_len + 64);
    let find = |models: Vec<(&'static str, VarStore, Box<dyn CausalLm>)>| {
        models.into_iter().find(|(name, _, _)| *name == arch).map(|(_, vs, model)| (vs, model))
    };
    let (cpu_vs, cpu_model) =
        find(tiny_models_on(vocab, positions, 2, 0.0, 0, Device::Cpu)).context("no such model")?;
    let (vs, model) =
        find(tiny_models_on(vocab, positions, 2, 0.0, 0, device)).context("no such model")?;
    let (cpu_loss, cpu_grads) = loss_and_gradients(&cpu_vs, cpu_model.as_ref(), &data.batch);
    drop(cpu_model);
    let mut pair = Pair { cpu_vs, cpu_loss, cpu_grads, vs, model, device };
    let mut passed = check(&format!("loss_and_gradients[{arch}]"), || {
        same_loss_and_gradients(&pair, &data.batch)
    });
    passed &= check(&format!("adamw_step[{arch}]"), || same_adamw_step(&pair));
    passed &= check(&format!("generation[{arch}]"), || {
        batched_generation_as_alone(&pair, tokenizer, data)
    });
    passed &= check(&format!("checkpoint[{arch}]"), || checkpoint_read_on_the_cpu(&pair));
    passed &= check(&format!("bf16_step[{arch}]"), || bf16_step(&mut pair, &data.batch));
    Ok(passed)
}

/// The multi-pass loss and every gradient on the device against the CPU's.
fn same_loss_and_gradients(pair: &Pair, batch: &Batch) -> Result<String, String> {
    let (loss, grads) = loss_and_gradients(&pair.vs, pair.model.as_ref(), batch);
    let cpu_loss = pair.cpu_loss;
    let loss_difference = (loss - cpu_loss).abs() / cpu_loss.abs();
    let (worst, name) = worst_difference(&grads, &pair.cpu_grads, pair.device)?;
    let detail = format!(
        "loss {loss:.6} against {cpu_loss:.6}; {} gradients, the worst {name} at a relative \
         difference of {worst:.1e}",
        grads.len()
    );
    verdict(loss_difference <= F32_TOLERANCE && worst <= 10.0 * F32_TOLERANCE, detail)
}

/// One AdamW update on each side from the CPU's gradients: parameters and moments agree,
/// and the device's moments live on the device.
fn same_adamw_step(pair: &Pair) -> Result<String, String> {
    let mut on_cpu = AdamW::new(pair.cpu_vs.variables(), REFERENCE_ADAMW, Kind::Float);
    let mut on_device = AdamW::new(pair.vs.variables(), REFERENCE_ADAMW, Kind::Float);
    let mut cpu_grads = Gradients::new(pair.cpu_vs.variables());
    let mut device_grads = Gradients::new(pair.vs.variables());
    for (name, g) in &pair.cpu_grads {
        cpu_grads.accumulate(name, g);
        device_grads.accumulate(name, &g.to_device(pair.device));
    }
    on_cpu.step(&mut cpu_grads);
    on_device.step(&mut device_grads);
    let moments = |opt: &AdamW| -> BTreeMap<String, Tensor> {
        opt.state().into_iter().filter(|(n, _)| n != "step").collect()
    };
    let (worst_moment, _) = worst_difference(&moments(&on_device), &moments(&on_cpu), pair.device)?;
    let parameters =
        |vs: &VarStore| -> BTreeMap<String, Tensor> { vs.variables().into_iter().collect() };
    let (worst, name) =
        worst_difference(&parameters(&pair.vs), &parameters(&pair.cpu_vs), pair.device)?;
    let detail =
        format!("parameters within {worst:.1e} (worst {name}), moments within {worst_moment:.1e}");
    verdict(worst <= F32_TOLERANCE && worst_moment <= F32_TOLERANCE, detail)
}

/// An optimizer step whose gradients went through NCCL in a world of one rank, the way a
/// data-parallel rank sends them (the all-reduce of the flat buffer; or, for a sharded
/// optimizer, the reduce-scatter of each group, then the all-gather of the updated
/// weights), against the same step without NCCL, from the same weights and batch: the
/// weights must come out bit-equal.
fn nccl_one_rank_step(vocab: usize, data: &CheckData, index: usize) -> Result<String, String> {
    let device = Device::Cuda(index);
    let id = Nccl::unique_id().map_err(|e| e.to_string())?;
    let mut nccl = Nccl::new(0, 1, id, index).map_err(|e| e.to_string())?;
    let mut step = |route: NcclRoute| -> Result<Vec<(String, Tensor)>, String> {
        let positions = data.batch.seq_len + 64;
        let models = tiny_models_on(vocab, positions, 2, 0.0, 0, device);
        let (_, vs, model) = models.into_iter().find(|(name, _, _)| *name == "gpt2").expect("gpt2");
        let mut optimizer = AdamW::new(vs.variables(), REFERENCE_ADAMW, Kind::Float);
        let mut grads = Gradients::new(vs.variables());
        let batch = DeviceBatch::new(&data.batch, device, model.kind());
        training_loss(model.as_ref(), &batch, false).backward(model.as_ref(), &mut grads, 1.0);
        let flat = grads.flat().shallow_clone();
        // SAFETY (every call below): each buffer is a contiguous tensor on the device, alive
        // and written by nothing else until the call has run (what follows reads it on the
        // same stream).
        let failed = |e: coconut_collective::CollectiveError| e.to_string();
        match route {
            NcclRoute::Alone => {}
            NcclRoute::AllReduce => {
                unsafe { nccl.all_reduce_sum_device(flat.data_ptr() as u64, flat.numel()) }
                    .map_err(failed)?
            }
            NcclRoute::Sharded => {
                for group in grads.group_views() {
                    let (ptr, len) = (group.data_ptr() as u64, group.numel());
                    unsafe { nccl.reduce_scatter_sum_device(ptr, len) }.map_err(failed)?;
                }
            }
        }
        optimizer.step(&mut grads);
        if route == NcclRoute::Sharded {
            for group in optimizer.layout().group_views(optimizer.weights()) {
                let (ptr, bytes) = (group.data_ptr() as u64, group.numel() * 4);
                unsafe { nccl.all_gather_shards_device(ptr, bytes) }.map_err(failed)?;
            }
        }
        let masters = optimizer.masters().expect("a whole optimizer");
        Ok(masters.into_iter().map(|(n, t)| (n, t.to_device(Device::Cpu))).collect())
    };
    let alone = step(NcclRoute::Alone)?;
    let mut details = Vec::new();
    let mut passed = true;
    for route in [NcclRoute::AllReduce, NcclRoute::Sharded] {
        let through = step(route)?;
        let differing: Vec<&str> = alone
            .iter()
            .zip(&through)
            .filter(|((_, a), (_, b))| !a.equal(b))
            .map(|((name, _), _)| name.as_str())
            .collect();
        passed &= differing.is_empty();
        details.push(format!("{route:?}: {} differ {differing:?}", differing.len()));
    }
    let detail = format!(
        "{} parameters after one step through NCCL {} at one rank; {}",
        alone.len(),
        nccl.nccl_version(),
        details.join("; ")
    );
    verdict(passed, detail)
}

/// How the gradients of [`nccl_one_rank_step`] travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NcclRoute {
    /// Not through NCCL: the step to match.
    Alone,
    /// The all-reduce of replicated ranks.
    AllReduce,
    /// The reduce-scatter and all-gather of a sharded optimizer.
    Sharded,
}

/// Batched cached generation on the device decodes every prompt as it does alone.
fn batched_generation_as_alone(
    pair: &Pair,
    tokenizer: &Tokenizer,
    data: &CheckData,
) -> Result<String, String> {
    let special = tokenizer.special();
    let prompts: Vec<Vec<u32>> = data
        .questions
        .iter()
        .map(|s| eval_prompt(&reference_curriculum(), &special, s, CHECK_STAGE))
        .collect();
    let model = pair.model.as_ref();
    let batched = generate(model, &prompts, &special, &[], 16, pair.device);
    let same = prompts
        .iter()
        .zip(&batched)
        .filter(|(p, b)| {
            let alone = generate(model, std::slice::from_ref(*p), &special, &[], 16, pair.device);
            alone[0].tokens == b.tokens
        })
        .count();
    let detail = format!("{same} of {} prompts decode the same batched and alone", prompts.len());
    verdict(same == prompts.len(), detail)
}

/// A checkpoint written from the device reads back on the CPU bit for bit.
fn checkpoint_read_on_the_cpu(pair: &Pair) -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    save_pretrained(&pair.vs, pair.model.as_ref(), dir.path()).map_err(|e| e.to_string())?;
    let read = VarStore::new(Device::Cpu);
    load_pretrained(&read, dir.path()).map_err(|e| e.to_string())?;
    let written = pair.vs.variables();
    let mut differing = Vec::new();
    for (name, value) in read.variables() {
        let original = written.get(&name).ok_or_else(|| format!("{name} was not written"))?;
        if !value.equal(&original.to_device(Device::Cpu)) {
            differing.push(name);
        }
    }
    let detail = format!(
        "{} tensors written on {:?} and read on the CPU, {} differ {differing:?}",
        written.len(),
        pair.device,
        differing.len()
    );
    verdict(differing.is_empty() && read.variables().len() == written.len(), detail)
}

/// A training step computed in bf16: the loss within [`BF16_TOLERANCE`] of f32's, finite
/// gradients, an AdamW update on the f32 master weights.
fn bf16_step(pair: &mut Pair, batch: &Batch) -> Result<String, String> {
    let (f32_loss, _) = loss_and_gradients(&pair.vs, pair.model.as_ref(), batch);
    // From here the model computes in bf16: its variables are copies of f32 masters.
    let mut optimizer = AdamW::new(pair.vs.variables(), REFERENCE_ADAMW, Kind::BFloat16);
    let device_batch = DeviceBatch::new(batch, pair.vs.device(), pair.model.kind());
    let loss = training_loss(pair.model.as_ref(), &device_batch, false);
    let bf16_loss = loss.value.double_value(&[]);
    let mut grads = Gradients::new(pair.vs.variables());
    loss.backward(pair.model.as_ref(), &mut grads, 1.0);
    let finite = coconut_model::is_finite(grads.flat());
    optimizer.step(&mut grads);
    pair.vs.float();
    let difference = (bf16_loss - f32_loss).abs() / f32_loss.abs();
    let detail = format!(
        "loss {bf16_loss:.4} against {f32_loss:.4} in f32 ({:.2}%), gradients {}",
        100.0 * difference,
        if finite { "finite" } else { "not finite" }
    );
    verdict(difference <= BF16_TOLERANCE && finite, detail)
}

/// One timed measurement of the GPT-2 shape, run in a child process: `train:f32:6`,
/// `generate:bf16`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct TimingJob {
    /// Compute in bf16 (f32 master weights) rather than f32.
    bf16: bool,
    /// The training step at this stage, or batched generation when `None`.
    stage: Option<usize>,
}

impl std::str::FromStr for TimingJob {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(':').collect();
        let bf16 = match parts.get(1) {
            Some(&"bf16") => true,
            Some(&"f32") => false,
            _ => bail!("{s:?}: expected train:<f32|bf16>:<stage> or generate:<f32|bf16>"),
        };
        match (parts[0], parts.get(2)) {
            ("train", Some(stage)) => Ok(Self { bf16, stage: Some(stage.parse()?) }),
            ("generate", None) => Ok(Self { bf16, stage: None }),
            _ => bail!("{s:?}: expected train:<f32|bf16>:<stage> or generate:<f32|bf16>"),
        }
    }
}

impl std::fmt::Display for TimingJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let precision = if self.bf16 { "bf16" } else { "f32" };
        match self.stage {
            Some(stage) => write!(f, "train:{precision}:{stage}"),
            None => write!(f, "generate:{precision}"),
        }
    }
}

/// What a timing child reports.
#[derive(Debug, Serialize, Deserialize)]
struct Timing {
    /// Median seconds of a training step, or seconds of the whole generation.
    seconds: f64,
    /// Questions per second.
    questions_per_s: f64,
    /// Device memory in use at the end, in MB (the allocator's cache and the CUDA context
    /// included), when the device is a GPU.
    memory_mb: Option<f64>,
}

/// The batch the timings run at: the paper's [`TIMED_BATCH`] on a GPU; on a CPU the largest
/// of 32, 16, 8, 4, 2 or 1 whose step fits in four fifths of the memory available (estimated
/// from measured peaks), or why none does.
fn timed_batch(args: &CheckDeviceArgs) -> Result<usize, String> {
    if args.device != "cpu" {
        return Ok(TIMED_BATCH);
    }
    // Peak resident memory of a stage-6 step, fixed part and per question, measured: the
    // GPT-2 shape takes 7.4 GB at batch 8, the tiny one 1.2 GB.
    let (fixed_mb, per_question_mb) =
        if args.timed_model == "gpt2" { (1_400.0, 750.0) } else { (250.0, 120.0) };
    let available_mb = available_memory_mb().ok_or("the memory available is unknown")?;
    let fits = |batch: usize| fixed_mb + per_question_mb * batch as f64 <= 0.8 * available_mb;
    [32, 16, 8, 4, 2, 1].into_iter().find(|&b| fits(b)).ok_or_else(|| {
        format!(
            "a step of one question of the {} shape needs about {:.0} MB, {available_mb:.0} MB \
             are available",
            args.timed_model,
            fixed_mb + per_question_mb
        )
    })
}

/// `MemAvailable` of `/proc/meminfo`, in MB.
fn available_memory_mb() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Times every job in its own child process, prints a line each and the projected ProsQA
/// schedule. Returns whether bf16 met its target (at least 3x the f32 step at stage 6 on a
/// GPU; on a CPU nothing is asked of it).
fn timings(args: &CheckDeviceArgs) -> Result<bool> {
    let exe = std::env::current_exe()?;
    let batch = match timed_batch(args) {
        Ok(batch) => batch,
        Err(why) => {
            println!("time: skipped ({why})");
            return Ok(true);
        }
    };
    if batch < TIMED_BATCH {
        println!(
            "time: at batch {batch}, the largest that fits this machine's memory (the paper's \
             {TIMED_BATCH} is projected from it)"
        );
    }
    let mut measured: BTreeMap<String, Timing> = BTreeMap::new();
    for bf16 in [false, true] {
        let jobs = TIMED_STAGES.iter().map(|&s| TimingJob { bf16, stage: Some(s) });
        for job in jobs.chain([TimingJob { bf16, stage: None }]) {
            let oom_before = coconut_runs::child::oom_kills();
            let output = Command::new(&exe)
                .args(["check-device", "--only", &job.to_string(), "--device", &args.device])
                .args(["--timed-model", &args.timed_model, "--timed-batch", &batch.to_string()])
                .arg("--data")
                .arg(&args.data)
                .arg("--tokenizer")
                .arg(&args.tokenizer)
                .output()?;
            let text = String::from_utf8_lossy(&output.stdout);
            let timing: Option<Timing> =
                text.lines().last().and_then(|l| serde_json::from_str(l).ok());
            let Some(timing) = timing.filter(|_| output.status.success()) else {
                let stderr = String::from_utf8_lossy(&output.stderr);
                let last = stderr.lines().last().unwrap_or_default();
                let how = coconut_runs::child::failure(output.status, oom_before);
                let why = if last.is_empty() { how } else { format!("{how}: {last}") };
                println!("time[{job}]: FAIL ({why})");
                return Ok(false);
            };
            let memory = timing.memory_mb.map_or(String::new(), |m| format!(", {m:.0} MB in use"));
            let what = match job.stage {
                Some(stage) => {
                    format!("{:.3} s per step of {batch} at stage {stage}", timing.seconds)
                }
                None => format!("{:.1} questions/s", timing.questions_per_s),
            };
            println!("time[{job}]: {what}{memory}");
            measured.insert(job.to_string(), timing);
        }
    }
    // A step of the paper's batch, from the one measured (a step's time grows with its
    // questions).
    let step = |bf16: bool, stage: usize| {
        let seconds = measured[&TimingJob { bf16, stage: Some(stage) }.to_string()].seconds;
        seconds * TIMED_BATCH as f64 / batch as f64
    };
    let speedup = step(false, 6) / step(true, 6);
    println!("bf16_speedup_stage6={speedup:.2}");
    for bf16 in [false, true] {
        let generation = &measured[&TimingJob { bf16, stage: None }.to_string()];
        let minutes =
            projected_prosqa_seconds(|stage| step(bf16, stage), generation.questions_per_s)? / 60.0;
        let precision = if bf16 { "bf16" } else { "f32" };
        println!("projected_prosqa_minutes_{precision}={minutes:.1}");
    }
    Ok(speedup >= 3.0 || args.device == "cpu")
}

/// The seconds of the paper's ProsQA schedule (its config, 17,886 training questions) on one
/// device: each epoch's micro-batches at the epoch's stage, with `step_s` measured at
/// [`TIMED_STAGES`] and interpolated between them, plus one generation over the 300
/// validation questions per epoch.
fn projected_prosqa_seconds(step_s: impl Fn(usize) -> f64, questions_per_s: f64) -> Result<f64> {
    let text = include_str!("../../../configs/prosqa-coconut.toml");
    let config = RunConfig::parse(text, Path::new("configs/prosqa-coconut.toml"))?;
    let batches = PROSQA_TRAIN_QUESTIONS.div_ceil(config.train.batch_size) as f64;
    let interpolated = |stage: usize| {
        let upper = TIMED_STAGES.iter().position(|&s| s >= stage).unwrap_or(TIMED_STAGES.len() - 1);
        let (b, a) = (TIMED_STAGES[upper], TIMED_STAGES[upper.saturating_sub(1)]);
        if a == b {
            return step_s(b);
        }
        let w = (stage - a) as f64 / (b - a) as f64;
        (1.0 - w) * step_s(a) + w * step_s(b)
    };
    let c = &config.curriculum;
    let training: f64 = (0..config.train.num_epochs)
        .map(|epoch| batches * interpolated(c.stage_of_epoch(epoch).min(c.max_latent_stage)))
        .sum();
    let evaluation = config.train.num_epochs as f64 * 300.0 / questions_per_s;
    Ok(training + evaluation)
}

/// One timing of the `--timed-model` shape (random weights, dropout 0.1) on the checked
/// device.
fn timing_in_this_process(args: &CheckDeviceArgs, job: TimingJob) -> Result<Timing> {
    let device = usable_device(&args.device).map_err(anyhow::Error::msg)?;
    tch::manual_seed(0);
    let tokenizer = Tokenizer::from_file(&args.tokenizer)?;
    let special = tokenizer.special();
    let samples = load_samples(&args.data)?;
    let questions = tokenize_samples(&tokenizer, &samples);
    let curriculum = reference_curriculum();
    let vs = VarStore::new(device);
    let model = bench_model(&vs, &args.timed_model, tokenizer.vocab_size());
    let kind = if job.bf16 { Kind::BFloat16 } else { Kind::Float };
    let synchronize = || {
        if let Device::Cuda(index) = device {
            tch::Cuda::synchronize(index as i64);
        }
    };
    let Some(stage) = job.stage else {
        let prompts: Vec<Vec<u32>> =
            questions.iter().map(|s| eval_prompt(&curriculum, &special, s, 6)).collect();
        // The paper's evaluation batch.
        let started = Instant::now();
        for chunk in prompts.chunks(64) {
            generate(model.as_ref(), chunk, &special, &[], TIMED_NEW_TOKENS, device);
        }
        synchronize();
        let seconds = started.elapsed().as_secs_f64();
        let questions_per_s = prompts.len() as f64 / seconds;
        return Ok(Timing {
            seconds,
            questions_per_s,
            memory_mb: device
                .is_cuda()
                .then(coconut_trainer::cuda_runtime::memory_in_use_mb)
                .flatten(),
        });
    };
    let staged: Vec<StagedSample> = questions[..args.timed_batch.min(questions.len())]
        .iter()
        .map(|s| training_sample(&curriculum, &special, s, stage))
        .collect();
    let batch = collate_training(&staged, &special);
    // The model computes in `kind` from here on.
    let mut optimizer = AdamW::new(vs.variables(), REFERENCE_ADAMW, kind);
    let mut grads = Gradients::new(vs.variables());
    let mut times = Vec::new();
    for step in 0..6 {
        let started = Instant::now();
        let device_batch = DeviceBatch::new(&batch, device, kind);
        let loss = training_loss(model.as_ref(), &device_batch, false);
        let _ = loss.value.double_value(&[]); // the one host read of a training step
        grads.clear();
        loss.backward(model.as_ref(), &mut grads, 1.0);
        optimizer.step(&mut grads);
        synchronize();
        if step >= 2 {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    let seconds = median(&times);
    Ok(Timing {
        seconds,
        questions_per_s: args.timed_batch as f64 / seconds,
        memory_mb: device.is_cuda().then(coconut_trainer::cuda_runtime::memory_in_use_mb).flatten(),
    })
}
