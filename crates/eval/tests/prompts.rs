//! Prompt building never panics, whatever a user asks: `ask` with any thought count and
//! question length answers or refuses with the sizes, and an evaluation at any stage of
//! samples that `check_sample_lengths` let through answers (the eval command and training
//! check every sample first).

use std::path::Path;

use coconut_curriculum::{tokenize_samples, CurriculumConfig, Mode, Sample};
use coconut_eval::{ask, evaluate, AskOptions, EvalError, EvalOptions};
use coconut_trainer::{check_sample_lengths, load_model_dir, LoadedModel};
use proptest::prelude::*;
use tch::Device;

/// The real tiny GPT-2 (2 wide, 1024 positions) with the GPT-2 tokenizer.
fn tiny_gpt2() -> LoadedModel {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-gpt2");
    load_model_dir(&dir, Device::Cpu, "<<").unwrap()
}

fn curriculum() -> CurriculumConfig {
    CurriculumConfig { mode: Mode::Coconut, max_latent_stage: 6, ..Default::default() }
}

/// A question of about `words` words.
fn question(words: usize) -> String {
    let mut text = String::from("Every wumpus is a yumpus.");
    for i in 0..words {
        text.push_str(if i % 7 == 0 { " Is Tom a yumpus?" } else { " sterpus" });
    }
    text
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn ask_answers_or_names_the_sizes(
        thoughts in prop_oneof![0usize..64, 900usize..1100, 0usize..usize::MAX],
        words in prop_oneof![0usize..40, 0usize..3000],
    ) {
        let loaded = tiny_gpt2();
        let options = AskOptions { thoughts, max_new_tokens: 4, top_k: 2, device: Device::Cpu };
        let reply = ask(loaded.model.as_ref(), &loaded.tokenizer, &curriculum(), &question(words), &options);
        match reply {
            Ok(reply) => prop_assert_eq!(reply.slots, thoughts),
            Err(EvalError::PromptTooLong { prompt_tokens, max_positions, thoughts: asked, .. }) => {
                prop_assert!(prompt_tokens > max_positions);
                prop_assert_eq!(asked, thoughts);
            }
        }
    }

    #[test]
    fn an_evaluation_of_checked_samples_answers(stage in 0usize..12, words in 0usize..1200) {
        let loaded = tiny_gpt2();
        let sample = Sample {
            question: question(words),
            steps: vec!["Tom is a wumpus.".into(), "Every wumpus is a yumpus.".into()],
            answer: "Tom is a yumpus.".into(),
        };
        let samples = vec![sample];
        let tokenized = tokenize_samples(&loaded.tokenizer, &samples);
        let positions = loaded.model.shape().max_positions;
        let checked = check_sample_lengths(Path::new("q.json"), &tokenized, &curriculum(), Some(4), positions);
        if checked.is_ok() {
            let options = EvalOptions { stage, max_new_tokens: 4, batch_size: 2, device: Device::Cpu };
            let model = loaded.model.as_ref();
            let (metrics, _) = evaluate(model, &loaded.tokenizer, &curriculum(), &samples, &tokenized, &options);
            prop_assert_eq!(metrics.samples, 1);
        } else {
            let message = checked.unwrap_err().to_string();
            prop_assert!(message.contains("q.json") && message.contains("1024"), "{}", message);
        }
    }
}
