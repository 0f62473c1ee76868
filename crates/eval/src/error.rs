//! The one error type of this crate.

/// What can go wrong when evaluating or asking a model.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A prompt does not fit the model's context: its positions would run past the model's
    /// last (GPT-2's position table, a rotary model's `max_position_embeddings`).
    #[error(
        "the prompt takes {prompt_tokens} positions ({question_tokens} of the question, \
         {thoughts} thought slots, the markers around them) and the model has {max_positions}: \
         shorten the question or ask for fewer thoughts"
    )]
    PromptTooLong {
        /// Tokens of the question.
        question_tokens: usize,
        /// Thought (or pause) slots asked for.
        thoughts: usize,
        /// Positions of the whole prompt.
        prompt_tokens: usize,
        /// The model's positions.
        max_positions: usize,
    },
}
