//! `ask`: one question of one's own to a trained checkpoint, with its continuous thoughts.

use std::path::Path;

use anyhow::{bail, Context, Result};
use coconut_curriculum::{prompt_slots, Mode};
use coconut_eval::{ask, AskOptions, Reply};
use coconut_trainer::checkpoint::{read_state, STATE_FILE};
use coconut_trainer::{load_model_dir, usable_device};

/// What `coconut ask` was asked.
pub struct AskArgs<'a> {
    /// The checkpoint folder.
    pub checkpoint: &'a Path,
    /// The run config for a bare HF folder (ours carry their own).
    pub config: Option<&'a Path>,
    /// The question, as a sample's `question` field would hold it.
    pub question: &'a str,
    /// Thought slots in the prompt; `None` for the count of the checkpoint's stage.
    pub thoughts: Option<usize>,
    /// Tokens shown per thought.
    pub top: usize,
    /// Decoding limit; `None` for the run's `eval.max_new_tokens`.
    pub max_new_tokens: Option<usize>,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: &'a str,
    /// Print the reply as JSON.
    pub json: bool,
}

/// Answers the question and prints the answer and each thought's top tokens.
pub fn run(args: &AskArgs) -> Result<()> {
    // The checkpoint's own run config and the stage it was trained at, as `eval` takes them.
    let (run, last_epoch) = if args.checkpoint.join(STATE_FILE).exists() {
        let state = read_state(args.checkpoint)?;
        (state.config, state.epoch.saturating_sub(1))
    } else {
        let (run, _) = crate::run::load_config(args.config, &[])?;
        let last = run.train.num_epochs.saturating_sub(1);
        (run, last)
    };
    let curriculum = &run.curriculum;
    let stage = curriculum.stage_of_epoch(last_epoch);
    let slots = args.thoughts.unwrap_or_else(|| prompt_slots(curriculum, stage, None));
    let thoughtless = matches!(curriculum.mode, Mode::Cot | Mode::NoCot | Mode::NoThoughts);
    if thoughtless && slots > 0 {
        bail!(
            "{}: a {:?} checkpoint takes no thoughts; leave --thoughts out",
            args.checkpoint.display(),
            curriculum.mode
        );
    }
    let device = usable_device(args.device).map_err(anyhow::Error::msg)?;
    let loaded = load_model_dir(args.checkpoint, device, &run.model.latent_init_token)?;
    let options = AskOptions {
        thoughts: slots,
        max_new_tokens: args.max_new_tokens.unwrap_or(run.eval.max_new_tokens),
        top_k: args.top,
        device,
    };
    let model = loaded.model.as_ref();
    let reply = ask(model, &loaded.tokenizer, curriculum, args.question, &options)
        .with_context(|| format!("{}", args.checkpoint.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
    } else {
        print!("{}", format_reply(&reply));
    }
    Ok(())
}

/// The reply as text: one line per thought, then the generated text and the answer.
fn format_reply(reply: &Reply) -> String {
    let mut out = format!("thoughts in the prompt: {}\n", reply.slots);
    for t in &reply.thoughts {
        let tokens: Vec<String> =
            t.top_tokens.iter().map(|(tok, p)| format!("{:?} {p:.3}", tok.trim())).collect();
        out.push_str(&format!("thought {} (norm {:.2}): {}\n", t.index, t.norm, tokens.join(", ")));
    }
    out.push_str(&format!("generated:\n{}\nanswer: {}\n", reply.generated, reply.answer));
    out
}
