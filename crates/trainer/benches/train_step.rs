//! One optimizer step of the embedded default run's model (GPT-2 layout, 2 layers x 128, a
//! 400-token BPE trained on the data) on a batch of 16 generated small-ProsQA questions, at
//! one thread: collation, the stage-0 (CoT) step, the last-stage Coconut step, and the same
//! last-stage tokens in one plain pass (the multi-pass overhead is their ratio).
//!
//! `cargo bench -p coconut-trainer`; `cargo xtask bench` measures the reference's shapes.

use coconut_curriculum::{
    collate_training, tokenize_samples, training_sample, Batch, CurriculumConfig, Sample,
    StagedSample, Tokenizer,
};
use coconut_datasets::{generate_distinct, DatasetConfig, DatasetKind};
use coconut_model::{Gpt2, Gpt2Config};
use coconut_trainer::adamw::{AdamW, AdamWConfig};
use coconut_trainer::gradients::Gradients;
use coconut_trainer::{coconut_loss, DeviceBatch};
use criterion::{criterion_group, criterion_main, Criterion};
use tch::{nn::VarStore, Device, Kind};

const BATCH: usize = 16;

fn bench_training_step(c: &mut Criterion) {
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let generated = generate_distinct(&DatasetConfig::small(DatasetKind::ProsQa), BATCH, 0)
        .expect("the small ProsQA preset generates");
    let samples: Vec<Sample> = generated
        .into_iter()
        .map(|s| Sample { question: s.question, steps: s.steps, answer: s.answer })
        .collect();
    let tokenizer = Tokenizer::train_on_samples(&samples, 400).expect("a tokenizer trains");
    let special = tokenizer.special();
    let tokenized = tokenize_samples(&tokenizer, &samples);
    let curriculum =
        CurriculumConfig { max_latent_stage: 3, pad_latent_to_max: true, ..Default::default() };
    let staged = |stage: usize| -> Vec<StagedSample> {
        tokenized.iter().map(|s| training_sample(&curriculum, &special, s, stage)).collect()
    };

    let vs = VarStore::new(Device::Cpu);
    let model = Gpt2::new(&vs.root(), &Gpt2Config::new(tokenizer.vocab_size(), 256, 128, 2, 4));
    let mut optimizer = AdamW::new(
        vs.variables(),
        AdamWConfig { lr: 1e-3, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.01 },
        Kind::Float,
    );
    let mut grads = Gradients::new(vs.variables());
    let mut step = |batch: &Batch| {
        let device_batch = DeviceBatch::new(batch, Device::Cpu, Kind::Float);
        grads.clear();
        grads.backward(&coconut_loss(&model, &device_batch, true));
        optimizer.step(&mut grads);
    };

    let last = staged(4);
    c.bench_function("collate/stage4", |b| b.iter(|| collate_training(&last, &special)));
    let cot = collate_training(&staged(0), &special);
    c.bench_function("train_step/stage0", |b| b.iter(|| step(&cot)));
    let coconut = collate_training(&last, &special);
    c.bench_function("train_step/stage4", |b| b.iter(|| step(&coconut)));
    let mut plain = coconut.clone();
    plain.latent_columns.iter_mut().for_each(Vec::clear); // the latents as ordinary tokens
    c.bench_function("plain_step/stage4", |b| b.iter(|| step(&plain)));
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench_training_step
}
criterion_main!(benches);
