//! Data-parallel training on the tiny shape, through `mpirun`.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use coconut_curriculum::{
    collate_training, load_samples, tokenize_samples, training_sample, StagedSample, Tokenizer,
};
use coconut_trainer::adamw::AdamW;
use coconut_trainer::gradients::Gradients;
use coconut_trainer::{training_loss, DeviceBatch, Ranks};
use tch::{nn::VarStore, Device, Kind};

use crate::measure::{bench_model, median, peak_rss_mb, reference_curriculum, REFERENCE_ADAMW};
use crate::records::{json_line, DdpRecord, ResultLine};

/// The data-parallel figures of the bench's closing lines.
#[derive(Debug, Clone, Copy)]
pub(super) struct DdpRatios {
    /// Tokens per second of 2 ranks at one thread each over 1 rank at one thread (the
    /// same samples in every step: 1 rank runs both micro-batches).
    pub speedup_2ranks: f64,
    /// 2 ranks at one thread each over 1 rank at 2 threads.
    pub vs_threads_2: f64,
    /// The all-reduce's share of the 2-rank step.
    pub allreduce_share: f64,
    /// The step of 2 ranks with the optimizer state sharded (ZeRO-1) over the replicated
    /// step, on the same micro-batches.
    pub zero1_step_vs_ddp: f64,
    /// A sharded rank's optimizer state at 2 ranks over the whole state of 1 rank.
    pub state_bytes_ratio: f64,
}

/// Data-parallel training on the tiny shape: 1 rank at one thread, 2 ranks (`mpirun`) at
/// one thread each, and 1 rank at 2 threads. `None` (with a line saying so) where `mpirun`
/// or the `mpi` feature is missing.
pub(super) fn ddp_ratios(
    data: &Path,
    tokenizer: &Path,
    exe: &Path,
    out: &mut std::fs::File,
) -> Result<Option<DdpRatios>> {
    if cfg!(not(feature = "mpi")) || Command::new("mpirun").arg("--version").output().is_err() {
        println!("# ddp: skipped (needs mpirun and a build with the `mpi` feature)");
        return Ok(None);
    }
    let mut run = |ranks: usize, threads: usize, sharded: bool| -> Result<ResultLine> {
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
        let only = format!("ddp:{threads}{}", if sharded { ":sharded" } else { "" });
        let output = cmd
            .args(["bench", "--only", &only, "--data"])
            .arg(data)
            .arg("--tokenizer")
            .arg(tokenizer)
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
    let one = run(1, 1, false)?;
    let two = run(2, 1, false)?;
    let sharded = run(2, 1, true)?;
    let threads = run(1, 2, false)?;
    let rate = |v: &ResultLine| v.tokens_per_s.unwrap_or(f64::NAN);
    let step = |v: &ResultLine| v.median_step_s.unwrap_or(f64::NAN);
    let bytes = |v: &ResultLine| v.optimizer_state_bytes.map_or(f64::NAN, |b| b as f64);
    Ok(Some(DdpRatios {
        speedup_2ranks: rate(&two) / rate(&one),
        vs_threads_2: rate(&two) / rate(&threads),
        allreduce_share: two.allreduce_share.unwrap_or(f64::NAN),
        zero1_step_vs_ddp: step(&sharded) / step(&two),
        state_bytes_ratio: bytes(&sharded) / bytes(&one),
    }))
}

/// Micro-batches in every optimizer step of the data-parallel measurement, whatever the
/// number of ranks: 1 rank runs both (accumulating), 2 ranks one each, so that every
/// configuration trains the same samples step by step and only the time differs.
const MICRO_BATCHES_PER_STEP: usize = 2;

/// One data-parallel measurement, run by every rank (rank 0 prints the line): optimizer
/// steps of the tiny shape at stage 6 over [`MICRO_BATCHES_PER_STEP`] micro-batches of 8,
/// shared out among the ranks, `threads` threads per rank, the optimizer state `sharded`
/// across the ranks or not.
pub(super) fn measure_ddp(
    data: &Path,
    tokenizer: &Path,
    threads: usize,
    sharded: bool,
) -> Result<()> {
    let ranks = Ranks::from_launcher(Device::Cpu)?;
    let (rank, world) = (ranks.rank(), ranks.world_size());
    tch::set_num_threads(threads as i32);
    tch::manual_seed(0);
    let tokenizer = Tokenizer::from_file(tokenizer)?;
    let samples = load_samples(data)?;
    let curriculum = reference_curriculum();
    let vs = VarStore::new(Device::Cpu);
    let model = bench_model(&vs, "tiny", tokenizer.vocab_size());
    ranks.broadcast_variables(&vs)?;
    let partition = ranks.partition(sharded);
    let mut optimizer = AdamW::sharded(vs.variables(), REFERENCE_ADAMW, Kind::Float, partition);
    let mut grads = Gradients::for_ranks(vs.variables(), partition.ranks);
    let special = tokenizer.special();
    if !MICRO_BATCHES_PER_STEP.is_multiple_of(world) {
        bail!("{world} ranks do not share {MICRO_BATCHES_PER_STEP} micro-batches evenly");
    }
    let (batch, warmup, steps) = (8, 2, 6);
    let (mut step_s, mut reduce_s, mut wait_s, mut tokens) =
        (Vec::new(), Vec::new(), Vec::new(), 0.0);
    for step in 0..warmup + steps {
        ranks.barrier()?;
        let started = Instant::now();
        let mut real = 0.0;
        grads.clear();
        // This rank's micro-batches of the step: the (step * M + micro)-th 8 samples for
        // micro = rank, rank + W, ...
        for micro in (rank..MICRO_BATCHES_PER_STEP).step_by(world) {
            let index = step * MICRO_BATCHES_PER_STEP + micro;
            let first = (index * batch) % (samples.len() - batch);
            let tokenized = tokenize_samples(&tokenizer, &samples[first..first + batch]);
            let staged: Vec<StagedSample> =
                tokenized.iter().map(|s| training_sample(&curriculum, &special, s, 6)).collect();
            let collated = collate_training(&staged, &special);
            real += collated.attention_mask.iter().filter(|&&m| m == 1).count() as f64;
            let device_batch = DeviceBatch::new(&collated, Device::Cpu, model.kind());
            let loss = training_loss(model.as_ref(), &device_batch, false);
            loss.backward(model.as_ref(), &mut grads, 1.0 / MICRO_BATCHES_PER_STEP as f64);
        }
        // The ranks meet before the all-reduce, so that its time is the reduction's own and
        // not the wait of a rank whose micro-batch was shorter (timed apart).
        let wait_started = Instant::now();
        ranks.barrier()?;
        let waited = wait_started.elapsed().as_secs_f64();
        let reduce_started = Instant::now();
        let mut scalars = [real];
        ranks.sum_gradients(&mut grads, &mut scalars, partition)?;
        let mut reduced = reduce_started.elapsed().as_secs_f64();
        optimizer.step(&mut grads);
        let gather_started = Instant::now();
        ranks.gather_weights(&optimizer)?;
        reduced += gather_started.elapsed().as_secs_f64();
        ranks.barrier()?;
        if step >= warmup {
            step_s.push(started.elapsed().as_secs_f64());
            reduce_s.push(reduced);
            wait_s.push(waited);
            tokens += scalars[0];
        }
    }
    if rank == 0 {
        let total: f64 = step_s.iter().sum();
        let record = DdpRecord {
            name: "ddp_step",
            model: "tiny",
            stage: 6,
            micro_batch: batch,
            micro_batches_per_step: MICRO_BATCHES_PER_STEP,
            ranks: world,
            sharded: !partition.is_whole(),
            optimizer_state_bytes: optimizer.state_bytes(),
            threads_per_rank: threads,
            steps,
            median_step_s: median(&step_s),
            tokens_per_s: tokens / total,
            allreduce_share: reduce_s.iter().sum::<f64>() / total,
            rank_wait_share: wait_s.iter().sum::<f64>() / total,
            peak_rss_mb: peak_rss_mb(),
        };
        println!("{}", json_line(&record));
    }
    Ok(())
}
