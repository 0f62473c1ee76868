//! One question of one's own: the prompt with a chosen number of continuous thoughts,
//! greedy decoding, and what each thought holds.

use coconut_curriculum::{
    prompt_with_slots, tokenize_samples, CurriculumConfig, Sample, Tokenizer,
};
use coconut_model::CausalLm;
use serde::Serialize;
use tch::Device;

use crate::error::EvalError;
use crate::generate::generate;
use crate::inspect::{inspect_prompt, Thought};
use crate::metrics::{decode_generation, extract_answer};

/// The model's reply to one question.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reply {
    /// Thought (or pause) slots in the prompt.
    pub slots: usize,
    /// Everything generated after the prompt, without the closing eos.
    pub generated: String,
    /// The answer read from it (after the last `#`), as evaluation reads it.
    pub answer: String,
    /// Each continuous thought with its top tokens through the LM head.
    pub thoughts: Vec<Thought>,
}

/// How [`ask`] answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AskOptions {
    /// Thought (or pause) slots in the prompt.
    pub thoughts: usize,
    /// Decoding limit, in new tokens (fewer where the model's context ends first).
    pub max_new_tokens: usize,
    /// Tokens shown per thought, read through the LM head.
    pub top_k: usize,
    /// The device the model is on.
    pub device: Device,
}

/// Answers `question` with `options.thoughts` thought slots in the prompt of `config.mode`
/// (see [`coconut_curriculum::prompt_with_slots`]): the question is encoded and the answer
/// decoded exactly as [`crate::evaluate`] does, so a sample's question gives the same text
/// here as in an evaluation whose prompt has the same number of thoughts. A prompt longer
/// than the model's context is an error, before any work.
pub fn ask(
    model: &dyn CausalLm,
    tokenizer: &Tokenizer,
    config: &CurriculumConfig,
    question: &str,
    options: &AskOptions,
) -> Result<Reply, EvalError> {
    let sample =
        Sample { question: question.to_string(), steps: Vec::new(), answer: String::new() };
    let tokenized = tokenize_samples(tokenizer, &[sample]).remove(0);
    let special = tokenizer.special();
    let slots = options.thoughts;
    let (question_tokens, max_positions) = (tokenized.question.len(), model.shape().max_positions);
    let too_long = |prompt_tokens| EvalError::PromptTooLong {
        question_tokens,
        thoughts: slots,
        prompt_tokens,
        max_positions,
    };
    // More slots than positions cannot fit, and a count of billions must not be allocated.
    if slots > max_positions {
        return Err(too_long(question_tokens.saturating_add(slots)));
    }
    let prompt = prompt_with_slots(config, &special, &tokenized.question, slots);
    if prompt.len() > max_positions {
        return Err(too_long(prompt.len()));
    }
    let device = options.device;
    let generation = generate(
        model,
        std::slice::from_ref(&prompt),
        &special,
        tokenizer.stop_ids(),
        options.max_new_tokens,
        device,
    )
    .pop()
    .expect("one prompt, one generation");
    let (generated, _) = decode_generation(tokenizer, generation);
    Ok(Reply {
        slots,
        answer: extract_answer(&generated),
        generated,
        thoughts: inspect_prompt(model, tokenizer, &prompt, options.top_k, device),
    })
}
