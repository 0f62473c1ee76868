//! What the continuous thoughts hold: for every thought of a sample, its norm and the
//! tokens the LM head reads from it (paper section 5: a thought decoded through the head
//! spreads its probability over several candidate next nodes, a breadth-first frontier).

use coconut_curriculum::{
    collate_prompts, eval_prompt, CurriculumConfig, Sample, TokenizedSample, Tokenizer,
};
use coconut_latent::{latent_hidden_states, DeviceBatch};
use coconut_model::{CausalLm, KvCache};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::EvalOptions;

/// The tokens read from each thought by [`inspect_samples`].
const TOP_TOKENS: usize = 5;

/// One continuous thought.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thought {
    /// Which thought (0 = the first after `<|start-latent|>`).
    pub index: usize,
    /// L2 norm of the thought vector.
    pub norm: f64,
    /// The most likely tokens when the thought goes through the LM head, with probabilities.
    pub top_tokens: Vec<(String, f64)>,
}

/// The thoughts of one sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleThoughts {
    /// Index of the sample in the split.
    pub sample: usize,
    /// The question.
    pub question: String,
    /// Mean norm of the prompt's ordinary token embeddings, for scale.
    pub mean_token_embedding_norm: f64,
    /// Every thought, in order.
    pub thoughts: Vec<Thought>,
}

/// The thoughts of the first `count` samples (fewer when there are fewer) in their prompts
/// at `options.stage`, each thought with its five most likely tokens, and each
/// sample with the mean norm of its question's token embeddings for scale.
pub fn inspect_samples(
    model: &dyn CausalLm,
    tokenizer: &Tokenizer,
    config: &CurriculumConfig,
    samples: &[Sample],
    tokenized: &[TokenizedSample],
    count: usize,
    options: &EvalOptions,
) -> Vec<SampleThoughts> {
    let device = options.device;
    (0..samples.len().min(count))
        .map(|i| SampleThoughts {
            sample: i,
            question: samples[i].question.clone(),
            mean_token_embedding_norm: mean_embedding_norm(model, &tokenized[i].question, device),
            thoughts: inspect_thoughts(
                model,
                tokenizer,
                config,
                &tokenized[i],
                options.stage,
                TOP_TOKENS,
                device,
            ),
        })
        .collect()
}

/// Runs the latent passes of the stage-`stage` prompt of one sample and reads its thoughts.
pub fn inspect_thoughts(
    model: &dyn CausalLm,
    tokenizer: &Tokenizer,
    config: &CurriculumConfig,
    sample: &TokenizedSample,
    stage: usize,
    top_k: usize,
    device: Device,
) -> Vec<Thought> {
    let prompt = eval_prompt(config, &tokenizer.special(), sample, stage);
    inspect_prompt(model, tokenizer, &prompt, top_k, device)
}

/// Runs the latent passes of one prompt and reads each continuous thought: its norm and
/// the `top_k` tokens the LM head gives it.
pub fn inspect_prompt(
    model: &dyn CausalLm,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    top_k: usize,
    device: Device,
) -> Vec<Thought> {
    let special = tokenizer.special();
    let batch = collate_prompts(&[prompt.to_vec()], &special);
    let columns = batch.latent_columns[0].clone();
    tch::no_grad(|| {
        let device_batch = DeviceBatch::new(&batch, device, model.kind());
        let hidden = latent_hidden_states(model, &device_batch, &mut KvCache::new(), false, 0)
            .squeeze_dim(0); // (T, C)
        columns
            .iter()
            .enumerate()
            .map(|(index, &col)| {
                // Thought `index` is the hidden state of the column before its latent.
                let thought = hidden.get(col as i64 - 1); // (C)
                let probs = model.lm_head(&thought).softmax(-1, Kind::Float); // (V)
                let (p, ids) = probs.topk(top_k as i64, -1, true, true);
                let p: Vec<f64> = Vec::try_from(&p).expect("probabilities");
                let ids: Vec<i64> = Vec::try_from(&ids).expect("ids");
                let top_tokens =
                    ids.iter().zip(p).map(|(&id, p)| (tokenizer.decode(&[id as u32]), p)).collect();
                Thought { index, norm: thought.norm().double_value(&[]), top_tokens }
            })
            .collect()
    })
}

/// Mean L2 norm of the embeddings of `ids`, the scale a thought is compared with.
pub fn mean_embedding_norm(model: &dyn CausalLm, ids: &[u32], device: Device) -> f64 {
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    tch::no_grad(|| {
        let e = model.embed(&Tensor::from_slice(&ids).to_device(device)); // (N, C)
        e.norm_scalaropt_dim(2, [-1], false).mean(Kind::Float).double_value(&[])
    })
}

/// A readable report of several samples' thoughts (markdown).
pub fn thoughts_report(samples: &[SampleThoughts]) -> String {
    let mut out = String::from("# Continuous thoughts\n\n");
    for s in samples {
        out.push_str(&format!(
            "## Sample {}\n\n{}\n\nMean token embedding norm: {:.2}\n\n| thought | norm | top tokens through the LM head |\n|---|---|---|\n",
            s.sample, s.question, s.mean_token_embedding_norm
        ));
        for t in &s.thoughts {
            let tokens: Vec<String> =
                t.top_tokens.iter().map(|(tok, p)| format!("`{}` {:.2}", tok.trim(), p)).collect();
            out.push_str(&format!("| {} | {:.2} | {} |\n", t.index, t.norm, tokens.join(", ")));
        }
        out.push('\n');
    }
    out
}
