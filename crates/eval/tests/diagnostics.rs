//! Thought diagnostics, batched over questions of different thought counts, against the same
//! figures computed one question at a time with plain loops.

use std::path::Path;

use coconut_curriculum::{
    collate_prompts, eval_prompt, load_samples, tokenize_samples, CurriculumConfig, Mode,
};
use coconut_eval::{thought_diagnostics, EvalOptions};
use coconut_latent::{latent_hidden_states, DeviceBatch};
use coconut_model::{CausalLm, KvCache};
use coconut_testing::{assert_close, Tolerance};
use coconut_trainer::load_model_dir;
use tch::{Device, Kind, Tensor};

/// Every thought of one prompt, run alone: (K, C) f32.
fn thoughts_alone(
    model: &dyn CausalLm,
    prompt: &[u32],
    special: &coconut_curriculum::SpecialTokens,
) -> Vec<Tensor> {
    let batch = collate_prompts(&[prompt.to_vec()], special);
    tch::no_grad(|| {
        let device_batch = DeviceBatch::new(&batch, Device::Cpu, model.kind());
        let hidden = latent_hidden_states(model, &device_batch, &mut KvCache::new(), false, 0);
        batch.latent_columns[0]
            .iter()
            .map(|&c| hidden.get(0).get(c as i64 - 1).to_kind(Kind::Float))
            .collect()
    })
}

fn cosine(a: &Tensor, b: &Tensor) -> f64 {
    a.dot(b).double_value(&[]) / (a.norm().double_value(&[]) * b.norm().double_value(&[]))
}

#[test]
fn batched_diagnostics_match_one_question_at_a_time() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let loaded = load_model_dir(&shared.join("tiny-gpt2"), Device::Cpu, "<<").unwrap();
    let model = loaded.model.as_ref();
    let samples =
        load_samples(&shared.join("datasets/prosqa/prosqa_valid.json")).unwrap()[..9].to_vec();
    let tokenized = tokenize_samples(&loaded.tokenizer, &samples);
    // Without padding to the stage's count, a question with fewer steps has fewer thoughts.
    let config = CurriculumConfig {
        mode: Mode::Coconut,
        max_latent_stage: 6,
        pad_latent_to_max: false,
        ..Default::default()
    };
    let options = EvalOptions { stage: 4, max_new_tokens: 8, batch_size: 2, device: Device::Cpu };
    let found =
        thought_diagnostics(model, &loaded.tokenizer, &config, &tokenized, &options).unwrap();

    let special = loaded.tokenizer.special();
    let alone: Vec<Vec<Tensor>> = tokenized
        .iter()
        .map(|s| thoughts_alone(model, &eval_prompt(&config, &special, s, options.stage), &special))
        .filter(|t| !t.is_empty())
        .collect();
    let counts: std::collections::BTreeSet<usize> = alone.iter().map(Vec::len).collect();
    assert!(counts.len() > 1, "questions of several thought counts: {counts:?}");
    assert_eq!(found.questions, alone.len());
    assert_eq!(found.thoughts.len(), *counts.last().unwrap());
    let tol = Tolerance::new(1e-4, 1e-6);
    for stats in &found.thoughts {
        let k = stats.index;
        let having: Vec<&Vec<Tensor>> = alone.iter().filter(|t| t.len() > k).collect();
        assert_eq!(stats.questions, having.len());
        let norms: Vec<f64> = having.iter().map(|t| t[k].norm().double_value(&[])).collect();
        let mean = norms.iter().sum::<f64>() / norms.len() as f64;
        assert_close(stats.norm_mean, mean, tol, &format!("thought {k}: mean norm"));
        let max = norms.iter().copied().fold(0.0, f64::max);
        assert_close(stats.norm_max, max, tol, &format!("thought {k}: max norm"));
        let mut pairs = Vec::new();
        for (i, a) in having.iter().enumerate() {
            for (j, b) in having.iter().enumerate() {
                if i != j {
                    pairs.push(cosine(&a[k], &b[k]));
                }
            }
        }
        match stats.cosine_across_questions {
            Some(c) => {
                let expected = pairs.iter().sum::<f64>() / pairs.len() as f64;
                assert_close(c, expected, tol, &format!("thought {k}: across questions"));
            }
            None => assert!(pairs.is_empty()),
        }
        let next: Vec<f64> =
            having.iter().filter(|t| t.len() > k + 1).map(|t| cosine(&t[k], &t[k + 1])).collect();
        match stats.cosine_to_next {
            Some(c) => {
                let expected = next.iter().sum::<f64>() / next.len() as f64;
                assert_close(c, expected, tol, &format!("thought {k}: to the next"));
            }
            None => assert!(next.is_empty()),
        }
        let entropies: Vec<f64> = having
            .iter()
            .map(|t| {
                let p = tch::no_grad(|| model.lm_head(&t[k]).softmax(-1, Kind::Double));
                let p: Vec<f64> = Vec::try_from(&p).unwrap();
                -p.iter().filter(|&&p| p > 0.0).map(|p| p * p.ln()).sum::<f64>()
            })
            .collect();
        let expected = entropies.iter().sum::<f64>() / entropies.len() as f64;
        assert_close(stats.entropy, expected, tol, &format!("thought {k}: entropy"));
    }

    // Stage 0 has no thoughts.
    let stage0 = EvalOptions { stage: 0, ..options };
    assert!(thought_diagnostics(model, &loaded.tokenizer, &config, &tokenized, &stage0).is_none());
}
