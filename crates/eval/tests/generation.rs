//! Batched cached generation against one-at-a-time decoding without a cache, and evaluation
//! and thought inspection on the real tiny-gpt2 checkpoint.

use std::path::Path;

use coconut_curriculum::{load_samples, tokenize_samples, CurriculumConfig, Mode, SpecialTokens};
use coconut_eval::{evaluate, generate, generate_without_cache, inspect_thoughts, EvalOptions};
use coconut_model::{Gpt2, Gpt2Config};
use coconut_trainer::load_model_dir;
use tch::{nn::VarStore, Device};

const SPECIAL: SpecialTokens =
    SpecialTokens { eos: 0, start_latent: 40, end_latent: 41, latent: 42, pause: 43 };

fn random_model(seed: i64) -> Gpt2 {
    tch::manual_seed(seed);
    let vs = VarStore::new(Device::Cpu);
    // Larger init than GPT-2's so that greedy decoding varies from token to token.
    let model = Gpt2::new(&vs.root(), &Gpt2Config::new(44, 96, 32, 2, 4));
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            let _ = v.g_mul_scalar_(20.0);
        }
    });
    model
}

/// Question ids, then `<bot>`, `n` latents, `<eot>`.
fn prompt(question: &[u32], n: usize) -> Vec<u32> {
    let mut p = question.to_vec();
    p.push(SPECIAL.start_latent);
    p.extend(std::iter::repeat_n(SPECIAL.latent, n));
    p.push(SPECIAL.end_latent);
    p
}

#[test]
fn batched_generation_matches_decoding_each_prompt_alone_without_cache() {
    for seed in [1, 2, 3] {
        let model = random_model(seed);
        let mut prompts = vec![
            prompt(&[5, 6, 7, 8, 9, 10, 11], 3),
            prompt(&[12, 13], 3),
            prompt(&[20, 21, 22, 23], 1), // another thought count: decoded as its own group
            prompt(&[30, 31, 32, 33, 34], 0),
            prompt(&[3], 3),
        ];
        // Enough 3-thought prompts of mixed lengths for several prompt-phase chunks, whose
        // caches are stacked left-padded before decoding.
        prompts.extend((0..12u32).map(|i| {
            let len = (i * 7) % 13 + 1;
            prompt(&(0..len).map(|j| 1 + (i + 3 * j) % 38).collect::<Vec<u32>>(), 3)
        }));
        let batched = generate(&model, &prompts, &SPECIAL, 12, false, Device::Cpu);
        for (p, b) in prompts.iter().zip(&batched) {
            let alone = generate_without_cache(&model, p, &SPECIAL, 12, false, Device::Cpu);
            assert_eq!(b, &alone, "seed {seed}, prompt {p:?}");
        }
        let distinct: std::collections::HashSet<_> =
            batched.iter().flat_map(|g| g.tokens.clone()).collect();
        assert!(distinct.len() > 3, "the model should not repeat one token: {batched:?}");
    }
}

#[test]
fn rows_stop_at_eos_unless_told_to_ignore_it() {
    let model = random_model(4);
    let prompts = vec![prompt(&[5, 6], 2), prompt(&[7, 8, 9], 2)];
    let ignoring = generate(&model, &prompts, &SPECIAL, 40, true, Device::Cpu);
    assert!(ignoring.iter().all(|g| g.tokens.len() == 40 && !g.stopped_at_eos));
    let stopping = generate(&model, &prompts, &SPECIAL, 40, false, Device::Cpu);
    for (s, i) in stopping.iter().zip(&ignoring) {
        // Until eos the two agree; a row that met eos ends there.
        match i.tokens.iter().position(|&t| t == SPECIAL.eos) {
            Some(at) => assert!(s.stopped_at_eos && s.tokens == i.tokens[..=at]),
            None => assert_eq!(s.tokens, i.tokens),
        }
    }
}

#[test]
fn evaluates_and_inspects_the_real_tiny_gpt2() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let loaded = load_model_dir(&shared.join("tiny-gpt2"), Device::Cpu, "<<").unwrap();
    // GPT-2's 50257 tokens plus the three latent markers and <pause>.
    assert_eq!(loaded.model.shape().vocab_size, 50261);
    let samples =
        load_samples(&shared.join("datasets/prosqa/prosqa_valid.json")).unwrap()[..6].to_vec();
    let tokenized = tokenize_samples(&loaded.tokenizer, &samples);
    let config = CurriculumConfig {
        mode: Mode::Coconut,
        max_latent_stage: 6,
        pad_latent_to_max: true,
        ..Default::default()
    };
    let options = EvalOptions { stage: 2, max_new_tokens: 8, batch_size: 4, device: Device::Cpu };
    let (metrics, predictions) =
        evaluate(loaded.model.as_ref(), &loaded.tokenizer, &config, &samples, &tokenized, &options);
    assert_eq!(metrics.samples, 6);
    assert_eq!(predictions.len(), 6);
    assert!(predictions.iter().all(|p| p.thoughts == 2 && p.generated_tokens <= 8));
    coconut_testing::assert_close(
        metrics.mean_tokens - metrics.mean_tokens_without_thoughts,
        2.0,
        coconut_testing::Tolerance::new(1e-12, 0.0),
        "thoughts per sample",
    );
    // A random 2-dimensional model answers nothing right.
    assert_eq!(metrics.accuracy, 0.0);

    let thoughts = inspect_thoughts(
        loaded.model.as_ref(),
        &loaded.tokenizer,
        &config,
        &tokenized[0],
        3,
        5,
        Device::Cpu,
    );
    assert_eq!(thoughts.len(), 3);
    for t in &thoughts {
        assert!(t.norm.is_finite() && t.norm > 0.0);
        assert_eq!(t.top_tokens.len(), 5);
        assert!(t.top_tokens.windows(2).all(|w| w[0].1 >= w[1].1), "sorted by probability");
    }
}
