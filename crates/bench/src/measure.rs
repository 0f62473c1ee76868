//! One measurement of the set, in this process, at one thread: generation, the latent
//! passes' overhead, or training steps.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use coconut_curriculum::{
    collate_training, eval_prompt, load_samples, tokenize_samples, training_sample,
    CurriculumConfig, Mode, Sample, StagedSample, Tokenizer,
};
use coconut_eval::{generate, generate_without_cache};
use coconut_model::{CausalLm, Gpt2, Gpt2Config, Llama, LlamaConfig, LlamaShape};
use coconut_torch_ext::OpCounter;
use coconut_trainer::adamw::{AdamW, AdamWConfig};
use coconut_trainer::gradients::Gradients;
use coconut_trainer::{training_loss, DeviceBatch};
use tch::{nn::VarStore, Device, Kind};

use crate::records::{
    json_line, GenerateRecord, HashRecord, OpCountRecord, OverheadRecord, StepRecord,
};

/// One measurement of the fixed set.
pub(super) struct Measurement {
    pub(super) name: &'static str,
    pub(super) model: &'static str,
    pub(super) batch: usize,
    pub(super) stage: usize,
    pub(super) steps: usize,
    /// Train with `train.gradient_checkpointing` (the long passes recomputed in backward).
    pub(super) gradient_checkpointing: bool,
    /// Compute in bf16 (f32 master weights); timed only on a CPU with native bf16.
    pub(super) bf16: bool,
}

impl Measurement {
    /// Whether it is skipped on a CPU without native bf16: a bf16 timing means nothing
    /// there, a bf16 op count does.
    pub(super) fn needs_native_bf16(&self) -> bool {
        self.bf16 && !self.counts_ops()
    }

    /// Whether it counts operators rather than timing them.
    pub(super) fn counts_ops(&self) -> bool {
        self.name.starts_with("ops_")
    }

    /// The kind the model computes in.
    pub(super) fn compute_kind(&self) -> Kind {
        if self.bf16 {
            Kind::BFloat16
        } else {
            Kind::Float
        }
    }

    /// The prompts a generation measurement decodes: the first max(batch, steps) samples'.
    pub(super) fn prompts_decoded(&self) -> usize {
        self.batch.max(self.steps)
    }
}

const fn measurement(
    name: &'static str,
    model: &'static str,
    batch: usize,
    stage: usize,
    steps: usize,
    gradient_checkpointing: bool,
) -> Measurement {
    Measurement { name, model, batch, stage, steps, gradient_checkpointing, bf16: false }
}

/// The fixed set.
pub(super) const MEASUREMENTS: [Measurement; 17] = [
    measurement("train_step", "tiny", 8, 6, 5, false),
    measurement("plain_step", "tiny", 8, 6, 5, false),
    measurement("latent_overhead", "tiny", 8, 6, 7, false),
    measurement("train_step", "tiny_llama", 8, 6, 5, false),
    measurement("latent_overhead", "tiny_llama", 8, 6, 7, false),
    measurement("train_step", "tiny", 8, 0, 2, false),
    measurement("train_step", "gpt2", 8, 6, 1, false),
    measurement("train_step", "gpt2", 8, 6, 1, true),
    measurement("plain_step", "gpt2", 8, 6, 1, false),
    Measurement { bf16: true, ..measurement("train_step_bf16", "gpt2", 8, 6, 1, false) },
    measurement("generate_reference", "tiny", 1, 6, 2, false),
    measurement("generate_batched", "tiny", 32, 6, 1, false),
    measurement("train_step", "default", 16, 3, 10, false),
    Measurement { bf16: true, ..measurement("train_step_bf16", "default", 16, 3, 10, false) },
    measurement("checkpoint_hash", "gpt2", 1, 0, 3, false),
    measurement("ops_per_latent_pass", "gpt2", 8, OPS_STAGE, 1, false),
    Measurement {
        bf16: true,
        ..measurement("ops_per_latent_pass_bf16", "gpt2", 8, OPS_STAGE, 1, false)
    },
];

/// The stage whose training step the op counts compare with stage 0's: its thought passes
/// are the difference (the reference counts the same way).
pub(super) const OPS_STAGE: usize = 4;

/// New tokens per prompt in generation, ours and the reference's (no stop token: a fixed
/// amount of work).
pub(super) const GENERATED_TOKENS: usize = 64;

/// Runs the measurement `m` on `device` and returns its JSON line: on the ProsQA samples of
/// `data`, tokenized with the GPT-2 `tokenizer.json` at `tokenizer`, or for the `default`
/// model on the default run's own data, tokenizer and curriculum.
pub(super) fn measure(
    data: &Path,
    tokenizer: &Path,
    device: Device,
    m: &Measurement,
) -> Result<String> {
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let setup = if m.model == "default" {
        default_run_setup()?
    } else {
        let tokenizer = Tokenizer::from_file(tokenizer)?;
        let vs = VarStore::new(device);
        let model = bench_model(&vs, m.model, tokenizer.vocab_size());
        let samples = load_samples(data)?;
        Setup { vs, model, tokenizer, samples, curriculum: reference_curriculum() }
    };
    if m.name == "checkpoint_hash" {
        return Ok(json_line(&measure_checkpoint_hash(setup, m)?));
    }
    let needed = m.batch.max(m.steps);
    if setup.samples.len() < needed {
        bail!("{}: {} samples, the benchmark needs {needed}", data.display(), setup.samples.len());
    }
    let inputs = StepInputs {
        tokenizer: &setup.tokenizer,
        samples: &setup.samples,
        curriculum: &setup.curriculum,
        batch: m.batch,
        stage: m.stage,
        device,
    };
    let (model, vs) = (setup.model.as_ref(), &setup.vs);
    if m.name.starts_with("generate") {
        return Ok(json_line(&measure_generation(model, &inputs, m)));
    }
    if m.counts_ops() {
        return Ok(json_line(&count_ops(model, vs, &inputs, m)?));
    }
    let mut steps = Steps::new(model, vs, &inputs, m);
    Ok(if m.name == "latent_overhead" {
        json_line(&steps.latent_overhead())
    } else {
        json_line(&steps.train_steps()?)
    })
}

/// A measured model and what its steps read.
struct Setup {
    vs: VarStore,
    model: Box<dyn CausalLm>,
    tokenizer: Tokenizer,
    samples: Vec<Sample>,
    curriculum: CurriculumConfig,
}

/// The default run's shape (the embedded configs/default.toml), on the CPU it is made for:
/// its model built as the run builds it (a tokenizer trained on its data, a fresh model of
/// its size), its curriculum, and questions of its generator, ordered by length (its batches
/// group similar lengths).
fn default_run_setup() -> Result<Setup> {
    let config = coconut_trainer::RunConfig::parse(
        coconut_runs::DEFAULT_CONFIG,
        Path::new("configs/default.toml"),
    )?;
    let generate = config.data.generate.as_ref().context("the default run generates its data")?;
    let generator = generate.dataset_config().map_err(anyhow::Error::msg)?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("train.json");
    coconut_datasets::write_samples(
        &path,
        &coconut_datasets::generate_distinct(&generator, 2000, 0)?,
    )?;
    let mut samples = load_samples(&path)?;
    let loaded = coconut_trainer::build_model(&config, &samples)?;
    let length = |s: &Sample| s.question.len() + s.steps.iter().map(String::len).sum::<usize>();
    samples.sort_by_key(length);
    samples.drain(..samples.len() / 2); // a batch of the middle lengths first
    Ok(Setup {
        vs: loaded.vs,
        model: loaded.model,
        tokenizer: loaded.tokenizer,
        samples,
        curriculum: config.curriculum,
    })
}

/// Greedy generation of 64 tokens after the stage-k prompts of the first samples: one
/// prompt at a time without the KV cache (as the reference does), or all batched.
fn measure_generation(
    model: &dyn CausalLm,
    inputs: &StepInputs,
    m: &Measurement,
) -> GenerateRecord {
    let special = inputs.tokenizer.special();
    let n = m.prompts_decoded();
    let started = Instant::now();
    let tokenized = tokenize_samples(inputs.tokenizer, &inputs.samples[..n]);
    let prompts: Vec<Vec<u32>> =
        tokenized.iter().map(|s| eval_prompt(inputs.curriculum, &special, s, m.stage)).collect();
    let tokenize_s = started.elapsed().as_secs_f64();
    let max_new = GENERATED_TOKENS;
    let started = Instant::now();
    let device = inputs.device;
    let generated: usize = if m.name == "generate_batched" {
        generate(model, &prompts, &special, &[], max_new, device)
            .iter()
            .map(|g| g.tokens.len())
            .sum()
    } else {
        prompts
            .iter()
            .map(|p| generate_without_cache(model, p, &special, &[], max_new, device).tokens.len())
            .sum()
    };
    inputs.synchronize();
    let total = started.elapsed().as_secs_f64();
    GenerateRecord {
        name: m.name,
        model: m.model,
        batch: m.batch,
        stage: m.stage,
        n_samples: n,
        max_new,
        ignore_eos: true,
        mean_prompt_len: prompts.iter().map(Vec::len).sum::<usize>() as f64 / n as f64,
        generated_tokens: generated,
        total_s: total,
        samples_per_s: n as f64 / total,
        gen_tokens_per_s: generated as f64 / total,
        tokenize_s,
        peak_rss_mb: peak_rss_mb(),
        threads: 1,
    }
}

/// Training steps of one measurement: the model, its optimizer and what each step reads.
struct Steps<'a> {
    model: &'a dyn CausalLm,
    optimizer: AdamW,
    grads: Gradients,
    inputs: &'a StepInputs<'a>,
    m: &'a Measurement,
    /// Steps run before the measured ones.
    warmup: usize,
}

impl<'a> Steps<'a> {
    fn new(
        model: &'a dyn CausalLm,
        vs: &VarStore,
        inputs: &'a StepInputs<'a>,
        m: &'a Measurement,
    ) -> Self {
        // The first steps of a process run slower while the allocator takes memory from the
        // system; a GPT-2 step is long enough for one to do.
        let warmup = if m.model == "gpt2" { 1 } else { 2 };
        // The model computes in the optimizer's kind from here on.
        let optimizer = AdamW::new(vs.variables(), REFERENCE_ADAMW, m.compute_kind());
        let grads = Gradients::new(vs.variables());
        Self { model, optimizer, grads, inputs, m, warmup }
    }

    /// Step `index`, on the latent passes or (`plain`) on the same tokens in one pass.
    fn step(&mut self, index: usize, plain: bool) -> StepTiming {
        // Dropout draws from a seed per step, as in training, so that measurements of the
        // same step with and without recomputation end with the same loss.
        tch::manual_seed(index as i64);
        let recompute = self.m.gradient_checkpointing;
        let timing = timed_step(
            self.model,
            &mut self.optimizer,
            &mut self.grads,
            self.inputs,
            plain,
            recompute,
        );
        eprintln!(
            "# {} {} step {index} (plain {plain}): loss {:.4}, {:.3} s",
            self.m.name, self.m.model, timing.loss, timing.total_s
        );
        timing
    }

    /// The stage-k step and the plain step on the same tokens, alternating in one process,
    /// so that the machine's drift over a run weighs on both alike.
    fn latent_overhead(&mut self) -> OverheadRecord {
        let (mut latent, mut plain) = (Vec::new(), Vec::new());
        for index in 0..self.warmup + self.m.steps {
            let order = if index % 2 == 0 { [false, true] } else { [true, false] };
            for is_plain in order {
                let timing = self.step(index, is_plain);
                if index >= self.warmup {
                    if is_plain { &mut plain } else { &mut latent }.push(timing.total_s);
                }
            }
        }
        let (latent_s, plain_s) = (median(&latent), median(&plain));
        OverheadRecord {
            name: self.m.name,
            model: self.m.model,
            batch: self.m.batch,
            stage: self.m.stage,
            steps: self.m.steps,
            warmup: self.warmup,
            latent_median_s: latent_s,
            plain_median_s: plain_s,
            ratio: latent_s / plain_s,
            latent_all_s: latent,
            plain_all_s: plain,
            peak_rss_mb: peak_rss_mb(),
            threads: 1,
        }
    }

    /// Training steps (`plain_step`: without the latent passes), timed part by part.
    fn train_steps(&mut self) -> Result<StepRecord> {
        let plain = self.m.name == "plain_step";
        let (mut times, mut fwd, mut bwd, mut opt, mut rss) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut last = None;
        for index in 0..self.warmup + self.m.steps {
            let timing = self.step(index, plain);
            if index >= self.warmup {
                times.push(timing.total_s);
                fwd.push(timing.forward_s);
                bwd.push(timing.backward_s);
                opt.push(timing.optimizer_s);
            }
            rss.push(rss_mb());
            last = Some(timing);
        }
        let last = last.context("no step ran")?;
        let (m, med) = (self.m, median(&times));
        Ok(StepRecord {
            name: m.name,
            model: m.model,
            batch: m.batch,
            stage: m.stage,
            seq_len: last.seq_len,
            real_tokens: last.real,
            supervised_tokens: last.supervised,
            model_calls: last.calls,
            steps: m.steps,
            warmup: self.warmup,
            median_s: med,
            min_s: times.iter().copied().fold(f64::INFINITY, f64::min),
            max_s: times.iter().copied().fold(0.0, f64::max),
            fwd_s: median(&fwd),
            bwd_s: median(&bwd),
            opt_s: median(&opt),
            padded_tokens_per_s: (m.batch * last.seq_len) as f64 / med,
            real_tokens_per_s: last.real as f64 / med,
            tokenize_s: last.tokenize_s,
            collate_s: last.collate_s,
            collate_share: (last.tokenize_s + last.collate_s) / med,
            final_loss: last.loss,
            all_s: times,
            rss_growth_mb: rss.last().copied().unwrap_or(0.0) - rss.get(1).copied().unwrap_or(0.0),
            rss_mb_after_each_step: rss,
            peak_rss_mb: peak_rss_mb(),
            threads: 1,
            gradient_checkpointing: m.gradient_checkpointing,
        })
    }
}

/// The dispatcher operators of one thought pass, forward and backward, counted as the torch
/// profiler counts them (every `aten::` event, nested ones included): a stage-k training
/// step's count minus the stage-0 step's on the same samples, divided by k. Then the
/// operators of an optimizer update after the last backward pass, gradient clipping
/// included.
fn count_ops(
    model: &dyn CausalLm,
    vs: &VarStore,
    inputs: &StepInputs,
    m: &Measurement,
) -> Result<OpCountRecord> {
    let mut optimizer = AdamW::new(vs.variables(), REFERENCE_ADAMW, m.compute_kind());
    let mut grads = Gradients::new(vs.variables());
    let special = inputs.tokenizer.special();
    let tokenized = tokenize_samples(inputs.tokenizer, &inputs.samples[..inputs.batch]);
    let batch_at = |stage: usize| {
        let staged: Vec<StagedSample> = tokenized
            .iter()
            .map(|s| training_sample(inputs.curriculum, &special, s, stage))
            .collect();
        DeviceBatch::new(&collate_training(&staged, &special), inputs.device, model.kind())
    };
    let (plain, latent) = (batch_at(0), batch_at(inputs.stage));
    let step = |batch: &DeviceBatch, grads: &mut Gradients| -> Result<Vec<(String, u64)>> {
        tch::manual_seed(0);
        let counter = OpCounter::start_by_name()?;
        training_loss(model, batch, false).backward(model, grads, 1.0);
        Ok(counter.by_name())
    };
    // A first step may set things up once (the optimizer's and clipping's constants).
    step(&latent, &mut grads)?;
    grads.clip_norm(1.0);
    optimizer.step(&mut grads);
    grads.clear();
    let stage0 = step(&plain, &mut grads)?;
    grads.clear();
    let stage_k = step(&latent, &mut grads)?;
    print_ops_per_pass(&stage0, &stage_k, inputs.stage);
    let total = |counts: &[(String, u64)]| counts.iter().map(|(_, c)| c).sum::<u64>();
    let (stage0, stage_k) = (total(&stage0), total(&stage_k));
    let counter = OpCounter::start()?;
    grads.clip_norm(1.0);
    optimizer.step(&mut grads);
    let optimizer_ops = counter.count();
    Ok(OpCountRecord {
        name: m.name,
        model: m.model,
        batch: m.batch,
        stage: m.stage,
        latent_passes: latent.max_latents(),
        ops_stage0: stage0,
        ops_stage_k: stage_k,
        ops_per_latent_pass: (stage_k as f64 - stage0 as f64) / inputs.stage as f64,
        optimizer_ops_per_step: optimizer_ops,
    })
}

/// The checksums of a checkpoint against its save: a checkpoint of the measured model (its
/// weights and its optimizer state) written `m.steps` times into a temporary folder, and its
/// manifest made alone from the same bytes; then the checksum of a file the size of a 1B
/// model's f32 checkpoint weights (Llama 3.2 1B: 4.9 GB), written first and read back as a
/// load checks it.
fn measure_checkpoint_hash(setup: Setup, m: &Measurement) -> Result<HashRecord> {
    use coconut_trainer::checkpoint::{checkpoint_files, save_checkpoint, DiskIo, TrainState};
    let Setup { vs, model, tokenizer, .. } = setup;
    let optimizer = AdamW::new(vs.variables(), REFERENCE_ADAMW, Kind::Float);
    let loaded = coconut_trainer::LoadedModel { vs, model, tokenizer };
    let config = coconut_trainer::RunConfig::parse(
        coconut_runs::DEFAULT_CONFIG,
        Path::new("configs/default.toml"),
    )?;
    let state = TrainState {
        epoch: 1,
        step_in_epoch: 0,
        global_step: 1,
        best_accuracy: None,
        config,
        tokenizer_sha256: None,
        ranks: 1,
        precision: None,
        data_sha256: Default::default(),
        accepted_data_changes: Vec::new(),
        losses: Default::default(),
    };
    let dir = tempfile::tempdir()?;
    let (mut save_s, mut hash_s) = (Vec::new(), Vec::new());
    let mut bytes = 0;
    for _ in 0..m.steps {
        let started = Instant::now();
        save_checkpoint(&DiskIo, dir.path(), &loaded, &optimizer, &state)?;
        save_s.push(started.elapsed().as_secs_f64());
        let files = checkpoint_files(&loaded, &optimizer, &state)?;
        let (manifest, rest) = files.split_last().context("a manifest last")?;
        debug_assert_eq!(manifest.0, coconut_trainer::manifest::MANIFEST_FILE);
        bytes = rest.iter().map(|(_, b)| b.len()).sum::<usize>();
        let started = Instant::now();
        std::hint::black_box(coconut_trainer::manifest::manifest_file(rest));
        hash_s.push(started.elapsed().as_secs_f64());
    }
    // A 1B model's f32 weights (1.24 billion parameters), written in pieces of varied bytes.
    let big = dir.path().join("weights-1b.bin");
    let piece: Vec<u8> =
        (0..(1u32 << 24)).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let mut file = std::fs::File::create(&big)?;
    let big_bytes: u64 = 4_960_000_000;
    let mut written = 0u64;
    while written < big_bytes {
        let n = (big_bytes - written).min(piece.len() as u64) as usize;
        std::io::Write::write_all(&mut file, &piece[..n])?;
        written += n as u64;
    }
    file.sync_all()?;
    drop(file);
    let started = Instant::now();
    std::hint::black_box(coconut_trainer::manifest::file_checksum(&big)?);
    let big_hash_s = started.elapsed().as_secs_f64();
    let (save, hash) = (median(&save_s), median(&hash_s));
    Ok(HashRecord {
        name: m.name,
        model: m.model,
        batch: m.batch,
        stage: m.stage,
        checkpoint_bytes: bytes,
        save_s: save,
        hash_s: hash,
        hash_share_of_save: hash / save,
        hash_gb_per_s: bytes as f64 / hash / 1e9,
        file_1b_bytes: big_bytes,
        file_1b_hash_s: big_hash_s,
        file_1b_gb_per_s: big_bytes as f64 / big_hash_s / 1e9,
    })
}

/// The operators of one thought pass by name, most frequent first, on stderr (`--only`
/// shows them): where the count comes from.
fn print_ops_per_pass(stage0: &[(String, u64)], stage_k: &[(String, u64)], k: usize) {
    let before: std::collections::HashMap<&str, u64> =
        stage0.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    let mut per_pass: Vec<(f64, &str)> = stage_k
        .iter()
        .map(|(n, c)| {
            (
                (*c as f64 - before.get(n.as_str()).copied().unwrap_or(0) as f64) / k as f64,
                n.as_str(),
            )
        })
        .filter(|(c, _)| *c != 0.0)
        .collect();
    per_pass.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (count, name) in per_pass {
        eprintln!("# per thought pass: {count:7.1} {name}");
    }
}

/// What a training step of the benchmark reads.
struct StepInputs<'a> {
    tokenizer: &'a Tokenizer,
    samples: &'a [Sample],
    curriculum: &'a CurriculumConfig,
    batch: usize,
    stage: usize,
    device: Device,
}

impl StepInputs<'_> {
    /// Waits for the device's queued work (a GPU's kernels run after the host returns).
    fn synchronize(&self) {
        if let Device::Cuda(index) = self.device {
            tch::Cuda::synchronize(index as i64);
        }
    }
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
    let device_batch = DeviceBatch::new(&collated, inputs.device, model.kind());
    let t2 = Instant::now();
    let loss = training_loss(model, &device_batch, gradient_checkpointing);
    let loss_value = loss.value.double_value(&[]); // waits for the forward pass
    let t3 = Instant::now();
    grads.clear();
    loss.backward(model, grads, 1.0);
    inputs.synchronize();
    let t4 = Instant::now();
    optimizer.step(grads);
    inputs.synchronize();
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

/// Peak resident memory of this process so far, in MB (`VmHWM`).
pub(super) fn peak_rss_mb() -> f64 {
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
        let shape = LlamaShape {
            vocab_size: vocab,
            max_positions: 1024,
            hidden_size: 256,
            n_layer: 4,
            n_head: 4,
            n_kv_head: 2,
            intermediate_size: 704,
            attention_dropout: 0.0,
        };
        let config = LlamaConfig::new(&shape).expect("a valid Llama shape");
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
