//! One question of one's own: the prompt with a chosen number of continuous thoughts,
//! greedy decoding, and what each thought holds.

use coconut_curriculum::{
    prompt_with_slots, tokenize_samples, CurriculumConfig, Sample, Tokenizer,
};
use coconut_model::CausalLm;
use serde::Serialize;
use tch::Device;

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

/// Answers `question` with `slots` thought slots in the prompt of `config.mode` (see
/// [`coconut_curriculum::prompt_with_slots`]): the question is encoded and the answer
/// decoded exactly as [`crate::evaluate`] does, so a sample's question gives the same
/// text here as in an evaluation whose prompt has the same number of thoughts.
#[allow(clippy::too_many_arguments)]
pub fn ask(
    model: &dyn CausalLm,
    tokenizer: &Tokenizer,
    config: &CurriculumConfig,
    question: &str,
    slots: usize,
    max_new_tokens: usize,
    top_k: usize,
    device: Device,
) -> Reply {
    let sample =
        Sample { question: question.to_string(), steps: Vec::new(), answer: String::new() };
    let tokenized = tokenize_samples(tokenizer, &[sample]).remove(0);
    let special = tokenizer.special();
    let prompt = prompt_with_slots(config, &special, &tokenized.question, slots);
    let generation = generate(
        model,
        std::slice::from_ref(&prompt),
        &special,
        tokenizer.stop_ids(),
        max_new_tokens,
        device,
    )
    .pop()
    .expect("one prompt, one generation");
    let (generated, _) = decode_generation(tokenizer, generation);
    Reply {
        slots,
        answer: extract_answer(&generated),
        generated,
        thoughts: inspect_prompt(model, tokenizer, &prompt, top_k, device),
    }
}
