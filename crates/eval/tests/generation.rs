//! Batched cached generation against one-at-a-time decoding without a cache, and evaluation
//! and thought inspection on the real tiny-gpt2 checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use coconut_curriculum::{load_samples, tokenize_samples, CurriculumConfig, Mode, SpecialTokens};
use coconut_eval::{evaluate, generate, generate_without_cache, inspect_thoughts, EvalOptions};
use coconut_model::testing::{assert_close, tiny_models};
use coconut_model::CausalLm;
use coconut_testing::Tolerance;
use coconut_trainer::{latent_hidden_states, load_model_dir, DeviceBatch};
use tch::{nn::VarStore, Device, Kind, Tensor};

const SPECIAL: SpecialTokens = SpecialTokens {
    bos: None,
    eos: 0,
    pad: 0,
    start_latent: 40,
    end_latent: 41,
    latent: 42,
    pause: 43,
};

/// One random model of every architecture, with weights large enough that greedy decoding
/// varies from token to token.
fn random_models(seed: i64) -> Vec<(&'static str, VarStore, Box<dyn CausalLm>)> {
    let models = tiny_models(44, 2, 0.0, seed);
    for (_, vs, _) in &models {
        tch::no_grad(|| {
            for (_, mut v) in vs.variables() {
                let _ = v.g_mul_scalar_(20.0);
            }
        });
    }
    models
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
        for (arch, _vs, model) in random_models(seed) {
            let mut prompts = vec![
                prompt(&[5, 6, 7, 8, 9, 10, 11], 3),
                prompt(&[12, 13], 3),
                prompt(&[20, 21, 22, 23], 1), // another thought count: decoded as its own group
                prompt(&[30, 31, 32, 33, 34], 0),
                prompt(&[3], 3),
            ];
            // Enough 3-thought prompts of mixed lengths for several prompt-phase chunks,
            // whose caches are stacked left-padded before decoding.
            prompts.extend((0..12u32).map(|i| {
                let len = (i * 7) % 13 + 1;
                prompt(&(0..len).map(|j| 1 + (i + 3 * j) % 38).collect::<Vec<u32>>(), 3)
            }));
            let stop = [SPECIAL.eos];
            let model = model.as_ref();
            let batched = generate(model, &prompts, &SPECIAL, &stop, 12, Device::Cpu);
            for (p, b) in prompts.iter().zip(&batched) {
                let alone = generate_without_cache(model, p, &SPECIAL, &stop, 12, Device::Cpu);
                assert_eq!(b, &alone, "{arch}, seed {seed}, prompt {p:?}");
            }
            let distinct: std::collections::HashSet<_> =
                batched.iter().flat_map(|g| g.tokens.clone()).collect();
            assert!(distinct.len() > 3, "{arch}: the model should not repeat one token");
        }
    }
}

#[test]
fn rows_stop_at_any_stop_id() {
    for (arch, _vs, model) in random_models(4) {
        let model = model.as_ref();
        let prompts = vec![prompt(&[5, 6], 2), prompt(&[7, 8, 9], 2)];
        let unstopped = generate(model, &prompts, &SPECIAL, &[], 40, Device::Cpu);
        assert!(unstopped.iter().all(|g| g.tokens.len() == 40 && !g.stopped));
        // Stop at whatever the first row produced third, and at the EOS.
        let stop = [SPECIAL.eos, unstopped[0].tokens[2]];
        let stopping = generate(model, &prompts, &SPECIAL, &stop, 40, Device::Cpu);
        for (s, u) in stopping.iter().zip(&unstopped) {
            // Until a stop id the two agree; a row that met one ends there.
            match u.tokens.iter().position(|t| stop.contains(t)) {
                Some(at) => assert!(s.stopped && s.tokens == u.tokens[..=at], "{arch}"),
                None => assert_eq!(s.tokens, u.tokens, "{arch}"),
            }
        }
        assert!(stopping[0].tokens.len() <= 3, "{arch}: the first row stops by its third token");
    }
}

/// Coconut's latent passes and greedy decoding as transformers runs them
/// (`fixtures/make_llama_fixtures.py`): the prompts' last hidden states after every pass,
/// the logits of every decoding step and the generated ids, for the Llama and Qwen2
/// fixtures with the latent markers added.
#[test]
fn latent_passes_and_decoding_match_transformers() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    for arch in ["llama", "qwen2"] {
        let r: HashMap<String, Tensor> =
            Tensor::read_safetensors(fixtures.join(format!("reference/{arch}.safetensors")))
                .unwrap()
                .into_iter()
                .collect();
        let dir: PathBuf = fixtures.join(format!("tiny-{arch}"));
        let loaded = load_model_dir(&dir, Device::Cpu, "<<").unwrap();
        let (model, special) = (loaded.model.as_ref(), loaded.tokenizer.special());
        // The reference adds the three markers; we add <pause> too, one row more.
        let vocab = r["latent.vocab_size"].int64_value(&[0]);
        assert_eq!(model.shape().vocab_size as i64, vocab + 1, "{arch}");
        let ids = &r["latent.input_ids"];
        let prompts: Vec<Vec<u32>> = (0..ids.size()[0])
            .map(|row| {
                Vec::<i64>::try_from(ids.get(row)).unwrap().iter().map(|&t| t as u32).collect()
            })
            .collect();
        assert!(prompts.iter().all(|p| p.iter().filter(|&&t| t == special.latent).count() == 2));

        let batch = coconut_curriculum::collate_prompts(&prompts, &special);
        let batch = DeviceBatch::new(&batch, Device::Cpu, Kind::Float);
        let hidden = tch::no_grad(|| {
            latent_hidden_states(model, &batch, &mut coconut_model::KvCache::new(), false, 0)
        });
        assert_close(
            &hidden,
            &r["latent.hidden"],
            Tolerance::scaled(1e-4),
            &format!("{arch}: hidden"),
        );

        let generated = generate(model, &prompts, &special, &[], 6, Device::Cpu);
        for (row, g) in generated.iter().enumerate() {
            let expected: Vec<i64> = Vec::try_from(r["latent.generated"].get(row as i64)).unwrap();
            let found: Vec<i64> = g.tokens.iter().map(|&t| i64::from(t)).collect();
            assert_eq!(found, expected, "{arch}: row {row}");
        }
        // The logits of every step, teacher-forced on the generated ids, over the
        // reference's vocabulary.
        let mut steps = Vec::new();
        for (row, prompt) in prompts.iter().enumerate() {
            let mut full = prompt.clone();
            full.extend(&generated[row].tokens[..5]);
            let batch = coconut_curriculum::collate_prompts(&[full], &special);
            let batch = DeviceBatch::new(&batch, Device::Cpu, Kind::Float);
            let hidden = tch::no_grad(|| {
                latent_hidden_states(model, &batch, &mut coconut_model::KvCache::new(), false, 0)
            });
            let t = hidden.size()[1];
            steps.push(model.lm_head(&hidden.narrow(1, t - 6, 6)).narrow(2, 0, vocab));
        }
        let steps = Tensor::cat(&steps, 0);
        assert_close(
            &steps,
            &r["latent.step_logits"],
            Tolerance::scaled(1e-4),
            &format!("{arch}: step logits"),
        );
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

/// The value of a name is its probability through the token that ends it, so names that
/// prefix one another get their own values; against a plain forward over the whole text.
#[test]
fn continuation_probabilities_score_prefixing_names_apart() {
    use coconut_eval::latent_search::continuation_probabilities;
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let tokenizer =
        coconut_curriculum::Tokenizer::from_file(&shared.join("tiny-gpt2/tokenizer.json")).unwrap();
    let special = tokenizer.special();
    for (arch, _vs, model) in tiny_models(tokenizer.vocab_size(), 2, 0.0, 5) {
        let model = model.as_ref();
        let mut prompt = tokenizer.encode("Tom is a rompus. Every rompus is a wumpus.\n");
        prompt.extend([special.start_latent, special.latent, special.end_latent]);
        prompt.extend(tokenizer.encode("Every"));
        let names: Vec<Vec<u32>> =
            [" rompus is", " rompuses is", " wumpus is"].map(|n| tokenizer.encode(n)).to_vec();
        // " rompus" is a prefix of " rompuses": their first tokens are the same.
        assert_eq!(names[0][..2], names[1][..2], "{names:?}");
        let values = continuation_probabilities(model, &prompt, &names, &special, Device::Cpu);
        for (name, &value) in names.iter().zip(&values) {
            // The whole text in one pass (its thought spliced in by the same multi-pass).
            let mut full = prompt.clone();
            full.extend(name);
            let batch = coconut_curriculum::collate_prompts(&[full.clone()], &special);
            let batch = DeviceBatch::new(&batch, Device::Cpu, Kind::Float);
            let hidden = tch::no_grad(|| {
                latent_hidden_states(model, &batch, &mut coconut_model::KvCache::new(), false, 0)
            });
            let log_probs = model.lm_head(&hidden).log_softmax(-1, Kind::Float);
            let expected: f64 = (0..name.len())
                .map(|i| {
                    let at = (prompt.len() + i - 1) as i64;
                    log_probs.double_value(&[0, at, i64::from(name[i])])
                })
                .sum::<f64>()
                .exp();
            coconut_testing::assert_close(value, expected, Tolerance::new(1e-4, 1e-12), arch);
        }
        assert_ne!(values[0], values[1], "{arch}: a name and its extension are scored apart");
    }
}
