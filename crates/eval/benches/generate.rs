//! Greedy generation after the last-stage prompt (3 thoughts) with the embedded default
//! run's model shape, at one thread: 32 prompts batched with the KV cache, against the
//! reference's way (one prompt at a time, the whole prefix recomputed for every token).
//! Both produce 16 new tokens per prompt (eos ignored), so the ratio of the two times
//! divided by 32 is the speedup per sample.
//!
//! `cargo bench -p coconut-eval`; `cargo xtask bench` measures the reference's shapes.

use coconut_curriculum::{eval_prompt, tokenize_samples, CurriculumConfig, Sample, Tokenizer};
use coconut_datasets::{generate_distinct, DatasetConfig, DatasetKind};
use coconut_eval::{generate, generate_without_cache};
use coconut_model::{Gpt2, Gpt2Config};
use criterion::{criterion_group, criterion_main, Criterion};
use tch::{nn::VarStore, Device};

const PROMPTS: usize = 32;
const NEW_TOKENS: usize = 16;

fn bench_generation(c: &mut Criterion) {
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let generated = generate_distinct(&DatasetConfig::small(DatasetKind::ProsQa), PROMPTS, 0)
        .expect("the small ProsQA preset generates");
    let samples: Vec<Sample> = generated
        .into_iter()
        .map(|s| Sample { question: s.question, steps: s.steps, answer: s.answer })
        .collect();
    let tokenizer = Tokenizer::train_on_samples(&samples, 400).expect("a tokenizer trains");
    let special = tokenizer.special();
    let curriculum =
        CurriculumConfig { max_latent_stage: 3, pad_latent_to_max: true, ..Default::default() };
    let prompts: Vec<Vec<u32>> = tokenize_samples(&tokenizer, &samples)
        .iter()
        .map(|s| eval_prompt(&curriculum, &special, s, 4))
        .collect();
    let vs = VarStore::new(Device::Cpu);
    let model = Gpt2::new(&vs.root(), &Gpt2Config::new(tokenizer.vocab_size(), 256, 128, 2, 4));

    c.bench_function("generate/batched_32", |b| {
        b.iter(|| generate(&model, &prompts, &special, &[], NEW_TOKENS, Device::Cpu))
    });
    c.bench_function("generate/one_at_a_time_no_cache_32", |b| {
        b.iter(|| {
            prompts
                .iter()
                .map(|p| generate_without_cache(&model, p, &special, &[], NEW_TOKENS, Device::Cpu))
                .collect::<Vec<_>>()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench_generation
}
criterion_main!(benches);
