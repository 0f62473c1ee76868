//! Building the model and tokenizer a run trains: a pretrained HF folder (GPT-2, Llama,
//! Qwen2), an earlier checkpoint, or a small GPT-2 or Llama trained from scratch with a
//! tokenizer trained on the data.

use std::path::Path;

use coconut_curriculum::{Mode, Sample, Tokenizer};
use coconut_model::{load_pretrained, CausalLm, Gpt2, Gpt2Config, Llama, LlamaConfig, LlamaShape};
use tch::{nn::VarStore, Device};

use crate::config::{Architecture, RunConfig};
use crate::error::TrainError;
use crate::state::{read_state, STATE_FILE};

use coconut_curriculum::TOKENIZER_FILE;

/// A model, its variables and its tokenizer.
#[derive(Debug)]
pub struct LoadedModel {
    /// The variables, named by their HF checkpoint keys.
    pub vs: VarStore,
    /// The model.
    pub model: Box<dyn CausalLm>,
    /// The tokenizer, with the latent tokens added.
    pub tokenizer: Tokenizer,
}

/// Checks that the model folders a config names exist, before any data is loaded or made.
pub fn check_model_paths(config: &RunConfig, config_path: &Path) -> Result<(), TrainError> {
    let m = &config.model;
    for (key, dir) in
        [("model.init_checkpoint", &m.init_checkpoint), ("model.pretrained", &m.pretrained)]
    {
        if let Some(dir) = dir {
            if !dir.join("config.json").exists() {
                return Err(TrainError::Config {
                    path: config_path.to_path_buf(),
                    message: format!(
                        "{key} = {:?}: no model folder there (config.json, model.safetensors, tokenizer.json); \
                         for GPT-2, download it where a model hub is reachable (for example \
                         `huggingface-cli download gpt2 --local-dir models/gpt2`) and point {key} at it",
                        dir.display()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Builds the model a run starts from (before any resume). The model folders it names are
/// those [`check_model_paths`] checks; [`crate::Trainer::new`] checks them first.
pub fn build_model(config: &RunConfig, train: &[Sample]) -> Result<LoadedModel, TrainError> {
    let device = config.device();
    let m = &config.model;
    if let Some(dir) = &m.init_checkpoint {
        let mut loaded = load_model_dir(dir, device, &m.latent_init_token)?;
        let earlier_mode = read_state(dir).ok().map(|s| s.config.curriculum.mode);
        if matches!(earlier_mode, Some(Mode::Cot | Mode::NoCot | Mode::NoThoughts)) {
            // That run never fed the latent markers, but its softmax kept pushing their tied
            // rows down. Start them afresh from the init token, as the reference does when
            // Coconut starts from the CoT checkpoint.
            let init = single_token(
                &loaded.tokenizer,
                &m.latent_init_token,
                loaded.model.shape().vocab_size,
                dir,
            )?;
            let added = loaded.tokenizer.special().added().map(i64::from);
            loaded.model.copy_token_embedding(&added, init);
        }
        return Ok(loaded);
    }
    if let Some(dir) = &m.pretrained {
        return load_model_dir(dir, device, &m.latent_init_token);
    }
    // From scratch: a byte-level BPE trained on the training text, then a fresh GPT-2.
    let tokenizer = Tokenizer::train_on_samples(train, m.vocab_size)?;
    tch::manual_seed(config.train.seed as i64);
    let vs = VarStore::new(device);
    let model = from_scratch(&vs, m, &tokenizer);
    Ok(LoadedModel { vs, model, tokenizer })
}

/// A freshly initialised model of the configured architecture and shape for `tokenizer`.
fn from_scratch(
    vs: &VarStore,
    m: &crate::config::ModelConfig,
    tokenizer: &Tokenizer,
) -> Box<dyn CausalLm> {
    // The trained tokenizer's ids, so that transformers' `generate` stops at our EOS (it
    // would otherwise assume GPT-2's 50256, beyond this vocabulary). Padding is EOS too.
    let eos = tokenizer.special().eos;
    let special_ids = ["bos_token_id", "eos_token_id", "pad_token_id"].map(|k| (k, eos));
    let vocab = tokenizer.vocab_size();
    match m.architecture {
        Architecture::Gpt2 => {
            let mut config = Gpt2Config::new(vocab, m.n_positions, m.n_embd, m.n_layer, m.n_head);
            (config.embd_pdrop, config.attn_pdrop, config.resid_pdrop) =
                (m.dropout, m.dropout, m.dropout);
            for (key, id) in special_ids {
                config.extra.insert(key.to_string(), id.into());
            }
            Box::new(Gpt2::new(&vs.root(), &config))
        }
        Architecture::Llama => {
            let shape = LlamaShape {
                vocab_size: vocab,
                max_positions: m.n_positions,
                hidden_size: m.n_embd,
                n_layer: m.n_layer,
                n_head: m.n_head,
                n_kv_head: m.kv_heads(),
                intermediate_size: m.llama_intermediate_size(),
                attention_dropout: m.dropout,
            };
            let mut config =
                LlamaConfig::new(&shape).expect("RunConfig::validate checks the shape");
            for (key, id) in special_ids {
                config.hf.insert(key.to_string(), id.into());
            }
            Box::new(Llama::new(&vs.root(), &config))
        }
    }
}

/// Loads a model folder with `config.json`, `model.safetensors` and `tokenizer.json` (an
/// HF GPT-2 folder or one of our checkpoints, whose files are first checked against its
/// manifest, see [`crate::manifest`]). When the tokenizer gains the latent tokens,
/// the embedding grows and the new rows copy the embedding of `init_token`. A tokenizer
/// that does not fit the model is an error naming both files.
pub fn load_model_dir(
    dir: &Path,
    device: Device,
    init_token: &str,
) -> Result<LoadedModel, TrainError> {
    // Every file but the optimizer state (which a model alone does not read) against the
    // checkpoint's manifest, before anything is read.
    crate::manifest::verify(dir, |file| !crate::checkpoint::is_optimizer_file(file))?;
    let tokenizer_path = dir.join(TOKENIZER_FILE);
    let tokenizer = Tokenizer::from_model_dir(dir)?;
    // A checkpoint of ours names its tokenizer: a `tokenizer.json` of another run (of the
    // same size, say) would silently give other ids.
    let state_path = dir.join(STATE_FILE);
    if state_path.exists() {
        let state = read_state(dir)?;
        if let Some(expected) = state.tokenizer_sha256 {
            let found = tokenizer.fingerprint();
            if found != expected {
                return Err(TrainError::TokenizerChanged {
                    tokenizer: tokenizer_path,
                    state: state_path,
                    expected,
                    found,
                });
            }
        }
    }
    let vs = VarStore::new(device);
    let mut model = load_pretrained(&vs, dir)?;
    let (model_vocab, tok_vocab) = (model.shape().vocab_size, tokenizer.vocab_size());
    // The ids the file itself defines must all have rows. A model may have a few rows more
    // than its tokenizer (Qwen2.5 pads its embedding for speed), but a tokenizer far
    // smaller than the model belongs to another model.
    let file_vocab = tok_vocab - tokenizer.newly_added().len();
    if file_vocab > model_vocab || model_vocab - file_vocab > UNUSED_ROWS_ALLOWED {
        return Err(TrainError::TokenizerMismatch {
            tokenizer: tokenizer_path.clone(),
            model: dir.join("config.json"),
            tokenizer_vocab: file_vocab,
            model_vocab,
        });
    }
    // Tokens the file lacked (the latent markers) whose rows the model does not hold as
    // exactly its last rows: they take the rows after the file's ids (padding rows where
    // the model has them, new rows otherwise), all starting from the init token's, as the
    // reference initialises them. A model with exactly one row per id (an official
    // checkpoint converted with its trained marker rows) keeps its rows.
    if !tokenizer.newly_added().is_empty() && tok_vocab != model_vocab {
        let init = single_token(&tokenizer, init_token, file_vocab, dir)?;
        model.resize_token_embeddings(model_vocab.max(tok_vocab), init);
        let added: Vec<i64> = tokenizer.newly_added().iter().map(|&id| i64::from(id)).collect();
        model.copy_token_embedding(&added, init);
    }
    Ok(LoadedModel { vs, model, tokenizer })
}

/// How many more embedding rows than tokenizer ids a model may have (rows padded for speed).
const UNUSED_ROWS_ALLOWED: usize = 1024;

/// The id of `token`, which must be a single token the model already had.
fn single_token(
    tokenizer: &Tokenizer,
    token: &str,
    model_vocab: usize,
    dir: &Path,
) -> Result<i64, TrainError> {
    match tokenizer.encode(token).as_slice() {
        [id] if (*id as usize) < model_vocab => Ok(*id as i64),
        other => Err(TrainError::Config {
            path: dir.join(TOKENIZER_FILE),
            message: format!("latent_init_token {token:?} must be one token the model already has, not {other:?}"),
        }),
    }
}
