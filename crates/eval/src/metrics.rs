//! Accuracy and the other figures of the paper's Table 1, over a whole split.

use std::time::Instant;

use coconut_curriculum::{eval_prompt, CurriculumConfig, Sample, TokenizedSample, Tokenizer};
use coconut_model::CausalLm;
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::generate::{generate, Generation};

/// How to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalOptions {
    /// Curriculum stage of the evaluation prompt.
    pub stage: usize,
    /// Greedy decoding stops after this many tokens.
    pub max_new_tokens: usize,
    /// Prompts decoded together.
    pub batch_size: usize,
    /// Where the model lives.
    pub device: Device,
}

/// One sample's outcome (a line of `predictions.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Index of the sample in the split.
    pub index: usize,
    /// The reference answer.
    pub answer: String,
    /// What the model answered (text after the last `#`, commas removed).
    pub prediction: String,
    /// Exact match.
    pub correct: bool,
    /// Everything the model generated after the prompt.
    pub generated: String,
    /// Continuous thoughts in the prompt.
    pub thoughts: usize,
    /// Generated tokens, eos excluded.
    pub generated_tokens: usize,
    /// Whether the generated reasoning before `###` equals the reference's remaining steps.
    pub cot_match: bool,
}

/// Aggregate figures of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// Samples evaluated.
    pub samples: usize,
    /// Stage of the prompt.
    pub stage: usize,
    /// Exact-match accuracy in [0, 1].
    pub accuracy: f64,
    /// Mean generated tokens counting the thoughts (as the paper does).
    pub mean_tokens: f64,
    /// Mean generated tokens without the thoughts.
    pub mean_tokens_without_thoughts: f64,
    /// Share of samples whose generated reasoning matches the reference exactly.
    pub cot_exact_match: f64,
    /// Wall-clock seconds of the generation.
    pub seconds: f64,
}

impl EvalMetrics {
    /// The figures of `predictions`, made at `stage` in `seconds`.
    pub fn of(predictions: &[Prediction], stage: usize, seconds: f64) -> Self {
        let n = predictions.len().max(1) as f64;
        let mean = |f: &dyn Fn(&Prediction) -> f64| predictions.iter().map(f).sum::<f64>() / n;
        EvalMetrics {
            samples: predictions.len(),
            stage,
            accuracy: mean(&|p| p.correct as u8 as f64),
            mean_tokens: mean(&|p| (p.generated_tokens + p.thoughts) as f64),
            mean_tokens_without_thoughts: mean(&|p| p.generated_tokens as f64),
            cot_exact_match: mean(&|p| p.cot_match as u8 as f64),
            seconds,
        }
    }
}

/// The answer in a generated text: after the last `#`, commas removed, trimmed.
pub fn extract_answer(text: &str) -> String {
    let tail = text.rsplit('#').next().unwrap_or("");
    tail.replace(',', "").trim().to_string()
}

/// Normalises a reference answer the same way (commas removed, trimmed).
pub fn normalize_answer(answer: &str) -> String {
    answer.replace(',', "").trim().to_string()
}

/// The reasoning steps a model should still write at `stage` (the ones not replaced by
/// thoughts), as the text the curriculum trains on.
fn expected_reasoning(config: &CurriculumConfig, sample: &Sample, stage: usize) -> String {
    let removed = config.steps_removed(stage, sample.steps.len());
    sample.steps[removed..].iter().map(|s| format!("{s}\n")).collect::<String>().trim().to_string()
}

/// Greedy-decodes every sample after its stage-`stage` prompt and scores the answers.
/// Prompts are decoded in batches of similar length, so little is spent on padding.
pub fn evaluate(
    model: &dyn CausalLm,
    tokenizer: &Tokenizer,
    config: &CurriculumConfig,
    samples: &[Sample],
    tokenized: &[TokenizedSample],
    options: &EvalOptions,
) -> (EvalMetrics, Vec<Prediction>) {
    let special = tokenizer.special();
    let started = Instant::now();
    let prompts: Vec<Vec<u32>> =
        tokenized.iter().map(|s| eval_prompt(config, &special, s, options.stage)).collect();
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| prompts[i].len());
    let mut generations = vec![None; prompts.len()];
    for chunk in order.chunks(options.batch_size.max(1)) {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
        let out = generate(
            model,
            &batch,
            &special,
            tokenizer.stop_ids(),
            options.max_new_tokens,
            options.device,
        );
        for (&i, g) in chunk.iter().zip(out) {
            generations[i] = Some(g);
        }
    }
    let seconds = started.elapsed().as_secs_f64();

    let mut predictions = Vec::with_capacity(samples.len());
    for (index, (sample, generation)) in samples.iter().zip(generations).enumerate() {
        let (generated, generated_tokens) =
            decode_generation(tokenizer, generation.expect("every prompt decoded"));
        let prediction = extract_answer(&generated);
        let reasoning = generated.split("###").next().unwrap_or("").trim().to_string();
        // Only continuous thoughts count as generated (the paper counts pause tokens as
        // part of the prompt).
        let thoughts = prompts[index].iter().filter(|&&t| t == special.latent).count();
        predictions.push(Prediction {
            index,
            correct: prediction == normalize_answer(&sample.answer),
            answer: sample.answer.clone(),
            prediction,
            cot_match: reasoning == expected_reasoning(config, sample, options.stage),
            generated,
            thoughts,
            generated_tokens,
        });
    }
    let metrics = EvalMetrics::of(&predictions, options.stage, seconds);
    (metrics, predictions)
}

/// The text of a generation without its closing eos, and its number of tokens.
pub(crate) fn decode_generation(tokenizer: &Tokenizer, generation: Generation) -> (String, usize) {
    let mut tokens = generation.tokens;
    if generation.stopped {
        tokens.pop();
    }
    (tokenizer.decode(&tokens), tokens.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_after_the_last_hash_without_commas() {
        assert_eq!(extract_answer("<<2*3=6>>\n### 1,200"), "1200");
        assert_eq!(extract_answer("Tom is a wumpus.\n### Tom is a lempus."), "Tom is a lempus.");
        assert_eq!(extract_answer("no answer"), "no answer");
        assert_eq!(extract_answer("### "), "");
        assert_eq!(normalize_answer(" 3,000 "), "3000");
    }
}
