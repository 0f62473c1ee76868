//! The health of the continuous thoughts over many questions: how large each thought is
//! against the token embeddings, whether the questions' thoughts are all alike (a collapse:
//! the thought then carries nothing about its question), how much consecutive thoughts of
//! one question differ, and how sure the LM head is when it reads a thought.
//!
//! A run whose latent stages fail tends to show it here before its accuracy does; the
//! trainer records these figures after every epoch (`metrics.jsonl`, the report's plot) and
//! for the final model (`thoughts.json`).

use std::collections::BTreeMap;

use coconut_curriculum::{
    collate_prompts, eval_prompt, CurriculumConfig, TokenizedSample, Tokenizer,
};
use coconut_latent::{latent_hidden_states, DeviceBatch};
use coconut_model::{CausalLm, KvCache};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::inspect::mean_embedding_norm;
use crate::EvalOptions;

/// The figures of every thought index over a set of questions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThoughtDiagnostics {
    /// Questions whose prompts hold at least one thought.
    pub questions: usize,
    /// Mean L2 norm of the questions' token embeddings: the scale of the model's own inputs,
    /// which a thought replaces.
    pub embedding_norm: f64,
    /// One entry per thought index, in order.
    pub thoughts: Vec<ThoughtStats>,
}

/// The figures of thought `index` over the questions that have it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThoughtStats {
    /// Which thought (0 = the first after `<|start-latent|>`).
    pub index: usize,
    /// Questions that have this thought.
    pub questions: usize,
    /// Mean L2 norm of the thought.
    pub norm_mean: f64,
    /// Largest L2 norm of the thought.
    pub norm_max: f64,
    /// Mean cosine similarity of this thought between two different questions: near 1 when
    /// every question's thought is alike. `None` with fewer than two questions.
    pub cosine_across_questions: Option<f64>,
    /// Mean cosine similarity between this thought and the next one of the same question;
    /// `None` for the last thought.
    pub cosine_to_next: Option<f64>,
    /// Mean entropy, in nats, of the LM head's distribution over the vocabulary read from
    /// this thought.
    pub entropy: f64,
}

/// The diagnostics of the thoughts of `samples`' stage-`options.stage` prompts, the latent
/// passes run in batches of `options.batch_size`; `None` when no prompt has a thought
/// (stage 0, or a mode without thoughts).
pub fn thought_diagnostics(
    model: &dyn CausalLm,
    tokenizer: &Tokenizer,
    config: &CurriculumConfig,
    samples: &[TokenizedSample],
    options: &EvalOptions,
) -> Option<ThoughtDiagnostics> {
    let special = tokenizer.special();
    let prompts: Vec<Vec<u32>> =
        samples.iter().map(|s| eval_prompt(config, &special, s, options.stage)).collect();
    // Rows of one batch share their thoughts' columns only when they have as many thoughts.
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let thoughts = prompt.iter().filter(|&&t| t == special.latent).count();
        if thoughts > 0 {
            groups.entry(thoughts).or_default().push(i);
        }
    }
    if groups.is_empty() {
        return None;
    }
    // Every question's thoughts, (K, C) f32 each.
    let mut per_question: Vec<Tensor> = Vec::new();
    tch::no_grad(|| {
        for (&thoughts, rows) in &groups {
            for chunk in rows.chunks(options.batch_size.max(1)) {
                let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
                let batch = collate_prompts(&batch, &special);
                let device_batch = DeviceBatch::new(&batch, options.device, model.kind());
                let hidden =
                    latent_hidden_states(model, &device_batch, &mut KvCache::new(), false, 0);
                // Thought k is the hidden state of the column before latent k; every row's
                // latents take the same columns.
                let before_latents = device_batch.first_latent - 1;
                let all = hidden.narrow(1, before_latents, thoughts as i64); // (B, K, C)
                per_question.extend(all.to_kind(Kind::Float).unbind(0));
            }
        }
    });
    let question_ids: Vec<u32> = samples.iter().flat_map(|s| s.question.iter().copied()).collect();
    let embedding_norm = mean_embedding_norm(model, &question_ids, options.device);
    let most = per_question.iter().map(|t| t.size()[0]).max().unwrap_or(0) as usize;
    let thoughts = tch::no_grad(|| {
        (0..most).map(|index| thought_stats(model, &per_question, index)).collect()
    });
    Some(ThoughtDiagnostics { questions: per_question.len(), embedding_norm, thoughts })
}

/// The figures of thought `index` over the questions of `per_question` that have it.
fn thought_stats(model: &dyn CausalLm, per_question: &[Tensor], index: usize) -> ThoughtStats {
    let k = index as i64;
    let having: Vec<&Tensor> = per_question.iter().filter(|t| t.size()[0] > k).collect();
    let thoughts = Tensor::stack(&having.iter().map(|t| t.get(k)).collect::<Vec<_>>(), 0); // (n, C)
    let n = thoughts.size()[0];
    let norms = thoughts.norm_scalaropt_dim(2, [-1], false); // (n)
    let unit = &thoughts / norms.unsqueeze(-1).clamp_min(1e-12);
    // The mean over the n (n - 1) ordered pairs of different questions of their cosine:
    // |sum of unit vectors|^2 counts every pair twice and each vector with itself once.
    let cosine_across_questions = (n > 1).then(|| {
        let total = unit.sum_dim_intlist([0i64].as_slice(), false, Kind::Float);
        let pairs = total.dot(&total).double_value(&[]) - n as f64;
        pairs / (n * (n - 1)) as f64
    });
    let with_next: Vec<(Tensor, Tensor)> =
        having.iter().filter(|t| t.size()[0] > k + 1).map(|t| (t.get(k), t.get(k + 1))).collect();
    let cosine_to_next = (!with_next.is_empty()).then(|| {
        let (a, b): (Vec<Tensor>, Vec<Tensor>) = with_next.into_iter().unzip();
        let (a, b) = (Tensor::stack(&a, 0), Tensor::stack(&b, 0));
        let cosine = Tensor::cosine_similarity(&a, &b, -1, 1e-12);
        cosine.mean(Kind::Float).double_value(&[])
    });
    let logits = model.lm_head(&thoughts.to_kind(model.kind())).to_kind(Kind::Float); // (n, V)
    let log_p = logits.log_softmax(-1, Kind::Float);
    let entropy = -(log_p.exp() * &log_p).sum_dim_intlist([-1i64].as_slice(), false, Kind::Float);
    ThoughtStats {
        index,
        questions: n as usize,
        norm_mean: norms.mean(Kind::Float).double_value(&[]),
        norm_max: norms.max().double_value(&[]),
        cosine_across_questions,
        cosine_to_next,
        entropy: entropy.mean(Kind::Float).double_value(&[]),
    }
}
