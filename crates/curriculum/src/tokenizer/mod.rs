//! The tokenizer: a model folder's HF `tokenizer.json` (GPT-2, Llama 3, Qwen2 and the like)
//! or a byte-level BPE trained here for models trained from scratch, plus the special tokens
//! the curriculum needs (docs/DESIGN.md, "Tokens").
//!
//! # Special tokens of a model folder
//!
//! No special token is a constant of ours: [`Tokenizer::from_model_dir`] reads them from the
//! folder, from `tokenizer.json` and, where present, `tokenizer_config.json` (keys
//! `bos_token`, `eos_token`, `pad_token`, `add_bos_token`; a token is written as a string, an
//! object with a `content` string, or null), `generation_config.json` and `config.json`
//! (keys `eos_token_id`, one id or a list, and `pad_token_id`).
//!
//! - **EOS**, the id put after every answer: `tokenizer_config.json`'s `eos_token`; failing
//!   that, the first id of `eos_token_id` in `generation_config.json`, then in `config.json`;
//!   failing that, [`EOS`] (`<|endoftext|>`) when the vocabulary has it. With none of these
//!   the folder cannot be used.
//! - **Stop ids**, where generation ends ([`Tokenizer::stop_ids`]): the EOS and every id of
//!   `eos_token_id` in both JSON files. A chat model lists more than one (Llama 3 instruct
//!   ends a turn with `<|eot_id|>` and a document with `<|end_of_text|>`).
//! - **BOS**: a model whose tokenizer puts a token in front of every text it encodes (its
//!   post-processor; found by encoding a probe text with and without special tokens), or whose
//!   `tokenizer_config.json` says `add_bos_token: true` and names a `bos_token`, saw that token
//!   at the start of every pretraining sequence, so ours start with it too: once, in front of
//!   the question ([`Tokenizer::encode_question`]). [`Tokenizer::encode`] never adds it, since
//!   the steps and the answer are encoded on their own and must not carry one. A
//!   `bos_token_id` in the model's config is not read: Qwen2 names one its tokenizer never
//!   adds.
//! - **Padding**: `tokenizer_config.json`'s `pad_token`; failing that, `pad_token_id` in
//!   `generation_config.json`, then `config.json`; failing that, the EOS (Llama 3 has no
//!   padding token). Which id pads does not matter: padded positions are masked out of
//!   attention and labelled -100, so no real position reads them and the loss skips them.
//!
//! A token named in `tokenizer_config.json` that the vocabulary lacks, an id outside the
//! vocabulary, or a key of the wrong type is an error naming the file and the key. A bare
//! `tokenizer.json` ([`Tokenizer::from_file`]) follows the same rules without the JSON files,
//! which leaves GPT-2's: [`EOS`] must be in it.
//!
//! The four tokens of the curriculum, [`START_LATENT`], [`END_LATENT`], [`LATENT`] and
//! [`PAUSE`], are then added where absent, in that order, after the existing vocabulary:
//! GPT-2 gets them as 50257 to 50260.
//!
//! Our checkpoints keep these choices: [`Tokenizer::config_files`] gives the
//! `tokenizer_config.json` to write next to `tokenizer.json`. The extra stop ids belong to the
//! model's `generation_config.json` (its `eos_token_id`), which the model's side writes.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

use crate::data::Sample;
use crate::error::CurriculumError;

mod names;
mod special;

pub use names::{
    EOS, GENERATION_CONFIG_FILE, MODEL_CONFIG_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE,
};
use special::{choose_special, SideFiles};

/// Opens the continuous-thought span (the paper's `<bot>`).
pub const START_LATENT: &str = "<|start-latent|>";
/// Closes the continuous-thought span (the paper's `<eot>`).
pub const END_LATENT: &str = "<|end-latent|>";
/// A slot whose input embedding is the previous position's last hidden state.
pub const LATENT: &str = "<|latent|>";
/// A learned filler token for the `pause-token` and `pause-as-thought` baselines.
pub const PAUSE: &str = "<pause>";
/// The tokens added to every vocabulary, in the order they get their ids.
const ADDED: [&str; 4] = [START_LATENT, END_LATENT, LATENT, PAUSE];

/// The smallest vocabulary [`Tokenizer::train`] makes: [`EOS`], the four added tokens and
/// the 256 byte symbols.
pub const MIN_TRAINED_VOCAB: usize = 1 + ADDED.len() + 256;

/// At most this much text trains a tokenizer (the first texts, in order).
pub const TRAINING_TEXT_BYTES: usize = 64 << 20;

/// Longer runs without whitespace are cut into pieces of this many bytes for training.
pub const TRAINING_WORD_BYTES: usize = 64;

/// The texts the BPE trainer sees: at most [`TRAINING_TEXT_BYTES`] in all, each run of
/// non-whitespace longer than [`TRAINING_WORD_BYTES`] cut into pieces (each its own text, so
/// no character is invented between them). Texts without long runs pass unchanged.
fn bounded_training_texts(texts: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(texts.len());
    let mut budget = TRAINING_TEXT_BYTES;
    for text in texts {
        if budget == 0 {
            break;
        }
        let text = &text[..floor_char_boundary(text, budget)];
        budget -= text.len();
        let mut kept = String::new();
        for piece in text.split_inclusive(char::is_whitespace) {
            let word = piece.trim_end_matches(char::is_whitespace);
            if word.len() <= TRAINING_WORD_BYTES {
                kept.push_str(piece);
                continue;
            }
            let mut rest = word;
            while !rest.is_empty() {
                let cut = floor_char_boundary(rest, TRAINING_WORD_BYTES).max(
                    // A character wider than the piece size still goes whole.
                    rest.chars().next().map_or(0, char::len_utf8),
                );
                out.push(rest[..cut].to_string());
                rest = &rest[cut..];
            }
            kept.push_str(&piece[word.len()..]);
        }
        out.push(kept);
    }
    out
}

/// The largest char boundary of `text` at or below `index`.
fn floor_char_boundary(text: &str, index: usize) -> usize {
    if index >= text.len() {
        return text.len();
    }
    (0..=index).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0)
}

/// The ids of the tokens the curriculum and the model treat specially (the module docs say
/// where each comes from).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialTokens {
    /// The token every sequence starts with, once, in front of the question; `None` for a
    /// model that has none (GPT-2, Qwen2, a trained tokenizer).
    pub bos: Option<u32>,
    /// Ends every answer (`<|endoftext|>` for GPT-2, `<|eot_id|>` for Llama 3 instruct).
    pub eos: u32,
    /// Fills padded positions of a batch (masked out, never supervised); the EOS when the
    /// model names no padding token.
    pub pad: u32,
    /// `<|start-latent|>`.
    pub start_latent: u32,
    /// `<|end-latent|>`.
    pub end_latent: u32,
    /// `<|latent|>`.
    pub latent: u32,
    /// `<pause>`.
    pub pause: u32,
}

impl SpecialTokens {
    /// The ids of the four tokens added to every vocabulary, in the order they get their
    /// ids: start-latent, end-latent, latent, pause.
    pub fn added(&self) -> [u32; 4] {
        [self.start_latent, self.end_latent, self.latent, self.pause]
    }
}

/// A `tokenizers` tokenizer with its special tokens chosen and the four added tokens in it.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    special: SpecialTokens,
    /// Sorted, deduplicated, the EOS among them.
    stop_ids: Vec<u32>,
    /// The ids of the added tokens that the file lacked and loading added.
    newly_added: Vec<u32>,
}

impl fmt::Debug for Tokenizer {
    // The derived form would print the whole vocabulary and merge list.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("special", &self.special)
            .field("stop_ids", &self.stop_ids)
            .finish()
    }
}

impl Tokenizer {
    /// Loads the tokenizer of a model folder (an HF model folder, or one of our checkpoints):
    /// `dir/tokenizer.json`, with the special tokens chosen from it and from
    /// `tokenizer_config.json`, `generation_config.json` and `config.json` where present, as
    /// the module docs describe; then the four added tokens are added where absent.
    ///
    /// Errors name the file and the key at fault; a folder where no EOS can be found is an
    /// error naming the folder and the files read.
    pub fn from_model_dir(dir: &Path) -> Result<Self, CurriculumError> {
        let path = dir.join(TOKENIZER_FILE);
        let inner = load_tokenizer_json(&path)?;
        let side = SideFiles::read(dir)?;
        Self::build(inner, &path.display().to_string(), &side, Some(dir))
    }

    /// Loads a bare HF `tokenizer.json`, without the JSON files of a model folder: the rules
    /// of [`Tokenizer::from_model_dir`] then leave GPT-2's, so [`EOS`] must be in it (it also
    /// pads), and there is a BOS only when the file's post-processor adds one. The four added
    /// tokens are added where absent, in order, so GPT-2's file gives them 50257 to 50260.
    pub fn from_file(path: &Path) -> Result<Self, CurriculumError> {
        let inner = load_tokenizer_json(path)?;
        Self::build(inner, &path.display().to_string(), &SideFiles::default(), None)
    }

    /// Trains a byte-level BPE like GPT-2's (ByteLevel pre-tokenizer, decoder and
    /// post-processor, no prefix space) on `texts`, for models trained from scratch.
    ///
    /// [`EOS`] gets id 0 (it also pads; there is no BOS) and the four added tokens ids 1 to 4,
    /// then come the 256 byte symbols and the merges, up to `vocab_size` entries in all.
    /// Training is deterministic: the trainer sorts its alphabet and breaks ties between
    /// equally frequent pairs by pair id.
    ///
    /// The trainer's work is bounded whatever the texts hold: it reads at most
    /// [`TRAINING_TEXT_BYTES`] of them, and runs without whitespace longer than
    /// [`TRAINING_WORD_BYTES`] are cut into pieces of that size (counting merges inside one
    /// word costs the square of its length; a 300 KB word took minutes). Encoding is not
    /// affected: every byte stays encodable.
    pub fn train(texts: &[String], vocab_size: usize) -> Result<Self, CurriculumError> {
        // Every byte must stay encodable, whatever the texts hold.
        if vocab_size < MIN_TRAINED_VOCAB {
            return Err(CurriculumError::Config {
                field: "model.vocab_size",
                reason: format!(
                    "{vocab_size} is below {MIN_TRAINED_VOCAB} (5 special tokens + 256 byte symbols)"
                ),
            });
        }
        let texts = bounded_training_texts(texts);
        let context = "training";
        if texts.is_empty() {
            return Err(CurriculumError::Tokenizer {
                context: context.into(),
                message: "no training texts".into(),
            });
        }
        let specials =
            std::iter::once(EOS).chain(ADDED).map(|t| AddedToken::from(t, true)).collect();
        let trainer = BpeTrainer::builder()
            .vocab_size(vocab_size)
            .min_frequency(0)
            .show_progress(false)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .special_tokens(specials)
            .build();
        let mut trainer = TrainerWrapper::BpeTrainer(trainer);

        // GPT-2's settings (its tokenizer.json): no prefix space, GPT-2's split regex.
        let byte_level = ByteLevel::new(false, true, true);
        let mut inner = tokenizers::Tokenizer::new(BPE::default());
        inner.with_pre_tokenizer(Some(byte_level));
        inner.with_decoder(Some(byte_level));
        inner.with_post_processor(Some(byte_level));
        inner.train(&mut trainer, texts.iter()).map_err(|e| CurriculumError::Tokenizer {
            context: context.into(),
            message: e.to_string(),
        })?;
        Self::build(inner, context, &SideFiles::default(), None)
    }

    /// [`Tokenizer::train`] on the text of `samples` as the model reads it: question, steps
    /// and `### answer`, one per line.
    pub fn train_on_samples(
        samples: &[Sample],
        vocab_size: usize,
    ) -> Result<Self, CurriculumError> {
        let texts: Vec<String> = samples
            .iter()
            .map(|s| format!("{}\n{}\n### {}", s.question, s.steps.join("\n"), s.answer))
            .collect();
        Self::train(&texts, vocab_size)
    }

    /// Writes the tokenizer as a HF `tokenizer.json`; [`Tokenizer::from_file`] reloads it with
    /// identical ids (the added tokens are saved in it). A tokenizer whose special tokens are
    /// not GPT-2's also needs the files of [`Tokenizer::config_files`] beside it, and
    /// [`Tokenizer::from_model_dir`] to reload.
    pub fn save(&self, path: &Path) -> Result<(), CurriculumError> {
        self.inner.save(path, true).map_err(|e| CurriculumError::Tokenizer {
            context: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// The files to write beside `tokenizer.json` so that [`Tokenizer::from_model_dir`] (and
    /// HF transformers' `AutoTokenizer`) make the same special-token choices: (file name,
    /// JSON text) pairs. Today one, `tokenizer_config.json`, with `bos_token`, `eos_token`,
    /// `pad_token` and `add_bos_token` (true exactly when there is a BOS).
    ///
    /// The stop ids other than the EOS are not in it: they are the model's
    /// `generation_config.json` `eos_token_id`, which the model's side writes (with
    /// [`Tokenizer::stop_ids`]). Without that file a reload stops at the EOS alone.
    pub fn config_files(&self) -> Vec<(&'static str, String)> {
        let name = |id: u32| self.inner.id_to_token(id);
        let config = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.special.bos.and_then(name),
            "eos_token": name(self.special.eos),
            "pad_token": name(self.special.pad),
            "add_bos_token": self.special.bos.is_some(),
            "add_eos_token": false,
            "clean_up_tokenization_spaces": false,
        });
        vec![(TOKENIZER_CONFIG_FILE, format!("{config:#}\n"))]
    }

    /// A canonical SHA-256 (hex) of what decides the ids: the vocabulary by id, the merges,
    /// the added tokens, and the BOS, EOS and padding choices. Saving and loading the
    /// tokenizer keeps it; another tokenizer of the same size (trained on other text, say),
    /// or the same vocabulary with another EOS, has another.
    ///
    /// GPT-2's choices (no BOS, `<|endoftext|>` as EOS and padding) leave the special ids out
    /// of the hash, so fingerprints recorded before they were covered still match.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        use tokenizers::Model;
        let model = self.inner.get_model();
        let mut vocab: Vec<(u32, String)> =
            model.get_vocab().into_iter().map(|(token, id)| (id, token)).collect();
        vocab.sort();
        let merges = serde_json::to_value(model)
            .ok()
            .and_then(|m| m.get("merges").cloned())
            .unwrap_or(Value::Null);
        let mut added: Vec<(u32, String, bool)> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .map(|(id, t)| (id, t.content, t.special))
            .collect();
        added.sort();
        let mut canonical = serde_json::json!({ "vocab": vocab, "merges": merges, "added": added });
        let s = &self.special;
        let gpt2_choices =
            s.bos.is_none() && s.pad == s.eos && self.inner.token_to_id(EOS) == Some(s.eos);
        if !gpt2_choices {
            canonical["special"] = serde_json::json!({ "bos": s.bos, "eos": s.eos, "pad": s.pad });
        }
        format!("{:x}", Sha256::digest(canonical.to_string().as_bytes()))
    }

    /// The HF `tokenizer.json` text [`Tokenizer::save`] writes.
    pub fn to_json(&self) -> Result<String, CurriculumError> {
        self.inner.to_string(true).map_err(|e| CurriculumError::Tokenizer {
            context: "serialising".into(),
            message: e.to_string(),
        })
    }

    /// Encodes `text` without adding any special token (no BOS/EOS post-processing). Added
    /// tokens written literally in `text` (`<|latent|>`) map to their ids.
    ///
    /// # Panics
    /// If the tokenizers crate fails, which a BPE model without an unknown token (GPT-2's,
    /// or one from [`Tokenizer::train`]) never does; use [`Tokenizer::try_encode`] otherwise.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.try_encode(text).unwrap_or_else(|e| panic!("encoding {text:?}: {e}"))
    }

    /// [`Tokenizer::encode`], returning the tokenizers crate's failure as an error.
    pub fn try_encode(&self, text: &str) -> Result<Vec<u32>, CurriculumError> {
        self.inner.encode(text, false).map(|enc| enc.get_ids().to_vec()).map_err(|e| {
            CurriculumError::Tokenizer { context: "encode".into(), message: e.to_string() }
        })
    }

    /// A question as every sequence starts: the BOS when the model has one, then
    /// `enc(question + "\n")`. [`crate::tokenize_samples`] encodes questions with it; a
    /// question encoded any other way would lack the BOS.
    ///
    /// # Panics
    /// As [`Tokenizer::encode`].
    pub fn encode_question(&self, question: &str) -> Vec<u32> {
        let mut ids: Vec<u32> = self.special.bos.into_iter().collect();
        ids.extend(self.encode(&format!("{question}\n")));
        ids
    }

    /// Decodes `ids` to text, special tokens included (`<|latent|>` is written out).
    ///
    /// # Panics
    /// If the tokenizers crate fails, which the byte-level decoder never does.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, false).unwrap_or_else(|e| panic!("decoding {ids:?}: {e}"))
    }

    /// The ids of the BOS, EOS, padding and the four added tokens.
    pub fn special(&self) -> SpecialTokens {
        self.special
    }

    /// The ids at which generation stops, sorted and deduplicated: the EOS and every id of
    /// `eos_token_id` in the folder's `generation_config.json` and `config.json`.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// The ids of the added tokens (latent markers, pause) that the loaded file lacked: a
    /// model loaded with this tokenizer has no trained rows for them yet.
    pub fn newly_added(&self) -> &[u32] {
        &self.newly_added
    }

    /// The number of ids, added tokens included: the embedding table needs this many rows.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of `token` (a vocabulary entry or an added token), if it has one.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary entry of `id` (in the byte-level alphabet, so a space is `Ġ`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Switches off truncation and padding, chooses the special tokens, adds the missing
    /// added tokens and records the ids. `dir` is the model folder, `None` for a bare file.
    fn build(
        mut inner: tokenizers::Tokenizer,
        context: &str,
        side: &SideFiles,
        dir: Option<&Path>,
    ) -> Result<Self, CurriculumError> {
        let missing = |token: &str| CurriculumError::MissingToken {
            context: context.to_string(),
            token: token.to_string(),
        };
        let tok_err = |e: tokenizers::Error| CurriculumError::Tokenizer {
            context: context.to_string(),
            message: e.to_string(),
        };
        // A tokenizer.json may carry truncation or padding settings; applied inside
        // `encode`, they would silently cut or pad every sample.
        inner.with_truncation(None).map_err(tok_err)?;
        inner.with_padding(None);

        let choices = choose_special(&inner, context, side, dir)?;
        // One at a time, so that the ids follow the order of ADDED.
        let mut newly_added = Vec::new();
        for token in ADDED {
            if inner.token_to_id(token).is_none() {
                inner.add_special_tokens([AddedToken::from(token, true)]).map_err(tok_err)?;
                newly_added.extend(inner.token_to_id(token));
            }
        }
        let id = |token: &str| inner.token_to_id(token).ok_or_else(|| missing(token));
        let special = SpecialTokens {
            bos: choices.bos,
            eos: choices.eos,
            pad: choices.pad,
            start_latent: id(START_LATENT)?,
            end_latent: id(END_LATENT)?,
            latent: id(LATENT)?,
            pause: id(PAUSE)?,
        };
        Ok(Self { inner, special, stop_ids: choices.stop_ids, newly_added })
    }
}

/// Reads a HF `tokenizer.json`; errors name it.
fn load_tokenizer_json(path: &Path) -> Result<tokenizers::Tokenizer, CurriculumError> {
    tokenizers::Tokenizer::from_file(path).map_err(|e| CurriculumError::Tokenizer {
        context: path.display().to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::batch::collate_prompts;
    use crate::curriculum::{
        eval_prompt, tokenize_samples, training_sample, CurriculumConfig, Mode,
    };
    use serde_json::json;
    use tokenizers::processors::sequence::Sequence;
    use tokenizers::processors::template::TemplateProcessing;

    pub(crate) fn gpt2() -> Tokenizer {
        Tokenizer::from_file(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/tiny-gpt2/tokenizer.json"
        )))
        .unwrap()
    }

    #[test]
    fn the_fingerprint_survives_saving_and_tells_tokenizers_apart() {
        let texts = |word: &str| vec![format!("Tom is a {word}. Every {word} is a yumpus.")];
        let a = Tokenizer::train(&texts("wumpus"), 270).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        a.save(&path).unwrap();
        let reloaded = Tokenizer::from_file(&path).unwrap();
        assert_eq!(reloaded.fingerprint(), a.fingerprint());
        let b = Tokenizer::train(&texts("lempus"), 270).unwrap();
        assert_eq!(a.vocab_size(), b.vocab_size());
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_ne!(gpt2().fingerprint(), a.fingerprint());
    }

    #[test]
    fn training_texts_are_bounded() {
        let plain = vec!["Tom is a wumpus.\nEvery wumpus is a yumpus.".to_string()];
        assert_eq!(bounded_training_texts(&plain), plain);
        let long = format!("x {} y", "é".repeat(100)); // a 200-byte word
        let texts = bounded_training_texts(&[long]);
        assert!(texts.iter().all(|t| t.len() <= TRAINING_WORD_BYTES + 4), "{texts:?}");
        // The pieces become texts of their own; the rest of the text keeps its whitespace.
        assert_eq!(texts.len(), 5);
        assert_eq!(texts[4], "x  y");
        assert_eq!(texts[..4].concat(), "é".repeat(100));
        let many = vec!["abc ".repeat(1 << 20); 20]; // 80 MiB
        let total: usize = bounded_training_texts(&many).iter().map(String::len).sum();
        assert_eq!(total, TRAINING_TEXT_BYTES);
    }

    #[test]
    fn a_long_word_trains_quickly_and_still_encodes() {
        // Before the bound, 300 KB without a space kept the trainer busy for minutes.
        let word = "ab".repeat(150_000);
        let tok = Tokenizer::train(&[word.clone(), "a b".into()], 300).unwrap();
        assert_eq!(tok.decode(&tok.encode(&word)), word);
    }

    #[test]
    fn gpt2_ids_match_hugging_face() {
        let tok = gpt2();
        // Ids from HF transformers' GPT2TokenizerFast.
        assert_eq!(tok.encode("Hello world"), [15496, 995]);
        assert_eq!(tok.encode(" the"), [262]);
        assert_eq!(tok.encode("<<"), [16791]);
        assert_eq!(tok.encode("\n"), [198]);
        assert_eq!(tok.encode("### 42"), [21017, 5433]);
        assert_eq!(tok.encode("<|endoftext|>"), [50256]);
        assert_eq!(tok.decode(&[15496, 995]), "Hello world");
    }

    #[test]
    fn gpt2_gets_the_added_tokens_in_order() {
        let tok = gpt2();
        assert_eq!(
            tok.special(),
            SpecialTokens {
                bos: None,
                eos: 50256,
                pad: 50256,
                start_latent: 50257,
                end_latent: 50258,
                latent: 50259,
                pause: 50260,
            }
        );
        assert_eq!(tok.vocab_size(), 50261);
        assert_eq!(tok.token_id(LATENT), Some(50259));
        assert_eq!(tok.id_to_token(50260).as_deref(), Some(PAUSE));
        assert_eq!(tok.id_to_token(262).as_deref(), Some("Ġthe"));
        // Written literally in text, an added token is one id, and decodes back to itself.
        let ids = tok.encode("a<|latent|><|end-latent|>");
        assert_eq!(ids[1..], [50259, 50258]);
        assert_eq!(tok.decode(&ids), "a<|latent|><|end-latent|>");
    }

    #[test]
    fn gpt2_save_and_reload_keeps_ids() {
        let tok = gpt2();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        tok.save(&path).unwrap();
        let back = Tokenizer::from_file(&path).unwrap();
        assert_eq!(back.special(), tok.special());
        assert_eq!(back.vocab_size(), tok.vocab_size());
        let text = "Every wumpus is a yumpus.\n<|start-latent|><|latent|><|end-latent|>### True";
        assert_eq!(back.encode(text), tok.encode(text));
    }

    #[test]
    fn a_file_without_eos_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no_eos.json");
        let json = r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"a": 0, "[UNK]": 1}, "unk_token": "[UNK]"}}"#;
        std::fs::write(&path, json).unwrap();
        let e = Tokenizer::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("no_eos.json") && e.contains(EOS), "{e}");

        let e = Tokenizer::from_file(&dir.path().join("absent.json")).unwrap_err().to_string();
        assert!(e.contains("absent.json"), "{e}");
    }

    fn corpus() -> Vec<String> {
        (0..200)
            .map(|i| {
                format!(
                    "Every wumpus is a yumpus. Alex is a wumpus number {i}.\n### True Ünïcödé 😀"
                )
            })
            .collect()
    }

    #[test]
    fn trained_tokenizer_round_trips_and_is_deterministic() {
        let texts = corpus();
        let tok = Tokenizer::train(&texts, 400).unwrap();
        assert_eq!(tok.vocab_size(), 400);
        assert_eq!(
            tok.special(),
            SpecialTokens {
                bos: None,
                eos: 0,
                pad: 0,
                start_latent: 1,
                end_latent: 2,
                latent: 3,
                pause: 4
            }
        );
        assert_eq!(tok.stop_ids(), [0]);
        for text in texts.iter().take(5).chain([&"unseen: Zyx 12 ~".to_string()]) {
            let ids = tok.encode(text);
            assert_eq!(&tok.decode(&ids), text);
        }
        // Merges were learned: a frequent word is a single token.
        assert_eq!(tok.encode(" wumpus").len(), 1);

        let again = Tokenizer::train(&texts, 400).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
        tok.save(&a).unwrap();
        again.save(&b).unwrap();
        assert_eq!(std::fs::read_to_string(&a).unwrap(), std::fs::read_to_string(&b).unwrap());

        let back = Tokenizer::from_file(&a).unwrap();
        assert_eq!(back.special(), tok.special());
        assert_eq!(back.vocab_size(), tok.vocab_size());
        let text =
            "Alex is a yumpus.\n<|start-latent|><|latent|><|end-latent|>### False<|endoftext|>";
        assert_eq!(back.encode(text), tok.encode(text));
        assert_eq!(tok.decode(&tok.encode(text)), text);
    }

    #[test]
    fn training_rejects_a_vocabulary_below_the_byte_alphabet() {
        let e = Tokenizer::train(&corpus(), 100).unwrap_err().to_string();
        assert!(e.contains("vocab_size"), "{e}");
        assert!(Tokenizer::train(&[], 400).is_err());
    }

    /// A byte-level BPE trained on a little text, then `specials` added after its vocabulary
    /// (where Llama 3 and Qwen2 have theirs); their ids are returned in order.
    fn byte_level_bpe<const N: usize>(specials: [&str; N]) -> (tokenizers::Tokenizer, [u32; N]) {
        let trainer = BpeTrainer::builder()
            .vocab_size(300)
            .min_frequency(0)
            .show_progress(false)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut trainer = TrainerWrapper::BpeTrainer(trainer);
        let byte_level = ByteLevel::new(false, true, true);
        let mut tok = tokenizers::Tokenizer::new(BPE::default());
        tok.with_pre_tokenizer(Some(byte_level));
        tok.with_decoder(Some(byte_level));
        tok.with_post_processor(Some(byte_level));
        let text =
            ["Alex is a wumpus. Every wumpus is a yumpus. Alex is a yumpus. True".to_string()];
        tok.train(&mut trainer, text.iter()).unwrap();
        let ids = specials.map(|t| {
            tok.add_special_tokens([AddedToken::from(t, true)]).unwrap();
            tok.token_to_id(t).unwrap()
        });
        (tok, ids)
    }

    fn write_json(dir: &Path, name: &str, value: &Value) {
        std::fs::write(dir.join(name), format!("{value:#}")).unwrap();
    }

    /// A Llama 3 instruct style folder: a post-processor that puts `<|begin_of_text|>` in
    /// front of every text, no padding token, EOS `<|eot_id|>`, and generation stopping at
    /// `<|end_of_text|>` too. Ids: begin of text, end of text, end of turn.
    fn llama3_dir() -> (tempfile::TempDir, [u32; 3]) {
        let (mut tok, ids) = byte_level_bpe(["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]);
        let [begin, end, eot] = ids;
        let template = TemplateProcessing::builder()
            .try_single("<|begin_of_text|> $A")
            .unwrap()
            .try_pair("<|begin_of_text|> $A <|begin_of_text|> $B:1")
            .unwrap()
            .special_tokens(vec![("<|begin_of_text|>", begin)])
            .build()
            .unwrap();
        let byte_level = ByteLevel::new(true, false, true);
        tok.with_post_processor(Some(Sequence::new(vec![byte_level.into(), template.into()])));
        let dir = tempfile::tempdir().unwrap();
        tok.save(dir.path().join(TOKENIZER_FILE), true).unwrap();
        let config = json!({
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|eot_id|>",
            "model_max_length": 131072,
            "tokenizer_class": "PreTrainedTokenizerFast",
        });
        write_json(dir.path(), TOKENIZER_CONFIG_FILE, &config);
        let generation = json!({ "bos_token_id": begin, "eos_token_id": [end, eot] });
        write_json(dir.path(), GENERATION_CONFIG_FILE, &generation);
        write_json(
            dir.path(),
            MODEL_CONFIG_FILE,
            &json!({ "bos_token_id": begin, "eos_token_id": end }),
        );
        (dir, ids)
    }

    /// A Qwen2.5 instruct style folder: no BOS (though config.json names a `bos_token_id`),
    /// EOS `<|im_end|>`, padding `<|endoftext|>`. Ids: end of text, im start, im end.
    fn qwen_dir() -> (tempfile::TempDir, [u32; 3]) {
        let (tok, ids) = byte_level_bpe([EOS, "<|im_start|>", "<|im_end|>"]);
        let [endoftext, _, im_end] = ids;
        let dir = tempfile::tempdir().unwrap();
        tok.save(dir.path().join(TOKENIZER_FILE), true).unwrap();
        let config = json!({
            "add_bos_token": false,
            "bos_token": null,
            "eos_token": { "content": "<|im_end|>", "lstrip": false, "special": true },
            "pad_token": EOS,
        });
        write_json(dir.path(), TOKENIZER_CONFIG_FILE, &config);
        let generation = json!({ "eos_token_id": [im_end, endoftext], "pad_token_id": endoftext });
        write_json(dir.path(), GENERATION_CONFIG_FILE, &generation);
        let model = json!({ "bos_token_id": endoftext, "eos_token_id": im_end });
        write_json(dir.path(), MODEL_CONFIG_FILE, &model);
        (dir, ids)
    }

    fn wumpus() -> Sample {
        Sample {
            question: "Alex is a wumpus.".into(),
            steps: vec!["Every wumpus is a yumpus.".into(), "Alex is a yumpus.".into()],
            answer: "True".into(),
        }
    }

    #[test]
    fn llama3_folder_starts_with_bos_ends_at_eot_and_stops_at_both() {
        let (dir, [begin, end, eot]) = llama3_dir();
        let tok = Tokenizer::from_model_dir(dir.path()).unwrap();
        let sp = tok.special();
        assert_eq!((sp.bos, sp.eos, sp.pad), (Some(begin), eot, eot));
        assert_eq!(tok.stop_ids(), [end, eot]);
        // The added tokens come after the existing vocabulary.
        assert_eq!(sp.added(), [1, 2, 3, 4].map(|i| eot + i));
        // `encode` adds nothing; only the question gets the BOS.
        assert!(!tok.encode("Alex is a wumpus.").contains(&begin));
        let mut question = vec![begin];
        question.extend(tok.encode("Alex is a wumpus.\n"));
        assert_eq!(tok.encode_question("Alex is a wumpus."), question);

        let t = tokenize_samples(&tok, &[wumpus()]).remove(0);
        assert_eq!(t.question, question);
        assert!(t.steps.iter().chain([&t.answer]).all(|part| !part.contains(&begin)));
        assert_eq!(t.answer.last(), Some(&eot));
        // Whatever the mode and stage, the sequence and the prompt hold the BOS once, first.
        for mode in [Mode::Coconut, Mode::Cot, Mode::NoCot, Mode::NoThoughts, Mode::PauseToken] {
            let cfg = CurriculumConfig { mode, max_latent_stage: 2, ..Default::default() };
            for stage in 0..=3 {
                for ids in [
                    training_sample(&cfg, &sp, &t, stage).input_ids,
                    eval_prompt(&cfg, &sp, &t, stage),
                ] {
                    assert_eq!(ids[0], begin, "{mode:?} stage {stage}");
                    assert_eq!(ids.iter().filter(|&&id| id == begin).count(), 1);
                }
            }
        }
    }

    #[test]
    fn qwen_folder_pads_with_endoftext_and_has_no_bos() {
        let (dir, [endoftext, _, im_end]) = qwen_dir();
        let tok = Tokenizer::from_model_dir(dir.path()).unwrap();
        let sp = tok.special();
        assert_eq!((sp.bos, sp.eos, sp.pad), (None, im_end, endoftext));
        assert_eq!(tok.stop_ids(), [endoftext, im_end]);
        let t = tokenize_samples(&tok, &[wumpus()]).remove(0);
        assert_eq!(t.question, tok.encode("Alex is a wumpus.\n"));
        assert_eq!(t.answer.last(), Some(&im_end));
        // Batches pad with the padding token, not the EOS.
        let b = collate_prompts(&[t.question.clone(), vec![t.question[0]]], &sp);
        let n = t.question.len();
        assert_eq!(b.input_ids[n..2 * n - 1], vec![i64::from(endoftext); n - 1]);
    }

    #[test]
    fn gpt2_folder_gives_the_ids_of_its_bare_file() {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny-gpt2"));
        let tok = Tokenizer::from_model_dir(dir).unwrap();
        assert_eq!(tok.special(), gpt2().special());
        assert_eq!(tok.special().bos, None);
        assert_eq!((tok.special().eos, tok.special().pad), (50256, 50256));
        assert_eq!(tok.stop_ids(), [50256]);
        assert_eq!(gpt2().stop_ids(), [50256]);
        assert_eq!(tok.encode_question("Hello world"), [15496, 995, 198]);
        // GPT-2's choices keep the fingerprints recorded before they were covered.
        let legacy = "3603a408efff9044ae983e3c82266480ff0e8a3fca031b638a6ec5bcfc02e59f";
        assert_eq!(tok.fingerprint(), legacy);
        assert_eq!(gpt2().fingerprint(), legacy);
        let trained = Tokenizer::train(&["Tom is a wumpus. Every wumpus is a yumpus.".into()], 270);
        let legacy = "e60f3e887dcb33ebb2290f754e883ad3dff622b88849b755f7764674b80b5e3d";
        assert_eq!(trained.unwrap().fingerprint(), legacy);
    }

    #[test]
    fn the_fingerprint_covers_the_special_tokens() {
        let (dir, _) = qwen_dir();
        let qwen = Tokenizer::from_model_dir(dir.path()).unwrap();
        let mut fingerprints = vec![qwen.fingerprint()];
        for config in
            [json!({ "eos_token": EOS, "pad_token": EOS }), json!({ "eos_token": "<|im_end|>" })]
        {
            write_json(dir.path(), TOKENIZER_CONFIG_FILE, &config);
            // The generation config's padding would otherwise still apply.
            std::fs::remove_file(dir.path().join(GENERATION_CONFIG_FILE)).ok();
            let other = Tokenizer::from_model_dir(dir.path()).unwrap();
            assert_eq!(other.vocab_size(), qwen.vocab_size());
            fingerprints.push(other.fingerprint());
        }
        // Qwen's EOS and padding; GPT-2's choices; Qwen's EOS padding itself.
        assert_ne!(fingerprints[0], fingerprints[1]);
        assert_ne!(fingerprints[0], fingerprints[2]);
        assert_ne!(fingerprints[1], fingerprints[2]);
    }

    #[test]
    fn add_bos_token_gives_a_bos_that_must_agree_with_the_post_processor() {
        let (tok, [bos, eos]) = byte_level_bpe(["<s>", "</s>"]);
        let dir = tempfile::tempdir().unwrap();
        tok.save(dir.path().join(TOKENIZER_FILE), true).unwrap();
        let config =
            |add: bool| json!({ "bos_token": "<s>", "eos_token": "</s>", "add_bos_token": add });
        write_json(dir.path(), TOKENIZER_CONFIG_FILE, &config(true));
        let t = Tokenizer::from_model_dir(dir.path()).unwrap();
        assert_eq!((t.special().bos, t.special().eos, t.special().pad), (Some(bos), eos, eos));
        assert_eq!(t.encode_question("a")[0], bos);
        write_json(dir.path(), TOKENIZER_CONFIG_FILE, &config(false));
        assert_eq!(Tokenizer::from_model_dir(dir.path()).unwrap().special().bos, None);

        // Llama 3's post-processor adds <|begin_of_text|>: add_bos_token may name it, not
        // another token.
        let (dir, [begin, _, eot]) = llama3_dir();
        let config = json!({ "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "add_bos_token": true });
        write_json(dir.path(), TOKENIZER_CONFIG_FILE, &config);
        assert_eq!(Tokenizer::from_model_dir(dir.path()).unwrap().special().bos, Some(begin));
        let config =
            json!({ "bos_token": "<|eot_id|>", "eos_token": "<|eot_id|>", "add_bos_token": true });
        write_json(dir.path(), TOKENIZER_CONFIG_FILE, &config);
        let e = Tokenizer::from_model_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains(TOKENIZER_CONFIG_FILE) && e.contains("bos_token"), "{e}");
        assert!(e.contains(&eot.to_string()) && e.contains(&begin.to_string()), "{e}");
    }

    #[test]
    fn bad_special_token_keys_are_errors_naming_file_and_key() {
        let (dir, [endoftext]) = {
            let (tok, ids) = byte_level_bpe([EOS]);
            let dir = tempfile::tempdir().unwrap();
            tok.save(dir.path().join(TOKENIZER_FILE), true).unwrap();
            (dir, ids)
        };
        let cases = [
            (TOKENIZER_CONFIG_FILE, json!({ "eos_token": "<|im_end|>" }), "eos_token"),
            (TOKENIZER_CONFIG_FILE, json!({ "pad_token": { "content": "<pad>" } }), "pad_token"),
            (TOKENIZER_CONFIG_FILE, json!({ "bos_token": "<s>" }), "bos_token"),
            (TOKENIZER_CONFIG_FILE, json!({ "eos_token": 5 }), "eos_token"),
            (TOKENIZER_CONFIG_FILE, json!({ "eos_token": { "id": 5 } }), "eos_token"),
            (TOKENIZER_CONFIG_FILE, json!({ "add_bos_token": "yes" }), "add_bos_token"),
            (
                GENERATION_CONFIG_FILE,
                json!({ "eos_token_id": [endoftext, 99_999] }),
                "eos_token_id",
            ),
            (GENERATION_CONFIG_FILE, json!({ "eos_token_id": -1 }), "eos_token_id"),
            (MODEL_CONFIG_FILE, json!({ "pad_token_id": "0" }), "pad_token_id"),
            (MODEL_CONFIG_FILE, json!({ "pad_token_id": [0, 1] }), "pad_token_id"),
        ];
        for (file, value, key) in cases {
            write_json(dir.path(), file, &value);
            let e = Tokenizer::from_model_dir(dir.path()).unwrap_err().to_string();
            assert!(e.contains(file) && e.contains(&format!("`{key}`")), "{value}: {e}");
            std::fs::remove_file(dir.path().join(file)).unwrap();
        }
        // The missing token is named too; a file that is not JSON is named.
        write_json(dir.path(), TOKENIZER_CONFIG_FILE, &json!({ "eos_token": "<|im_end|>" }));
        let e = Tokenizer::from_model_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("<|im_end|>"), "{e}");
        std::fs::write(dir.path().join(MODEL_CONFIG_FILE), "{ not json").unwrap();
        std::fs::remove_file(dir.path().join(TOKENIZER_CONFIG_FILE)).unwrap();
        let e = Tokenizer::from_model_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains(MODEL_CONFIG_FILE), "{e}");
        std::fs::remove_file(dir.path().join(MODEL_CONFIG_FILE)).unwrap();
        assert_eq!(Tokenizer::from_model_dir(dir.path()).unwrap().special().eos, endoftext);
    }

    #[test]
    fn a_folder_without_any_eos_is_an_error_naming_it_and_the_files_read() {
        let (tok, _) = byte_level_bpe(["<s>"]);
        let dir = tempfile::tempdir().unwrap();
        tok.save(dir.path().join(TOKENIZER_FILE), true).unwrap();
        write_json(
            dir.path(),
            MODEL_CONFIG_FILE,
            &json!({ "bos_token_id": 0, "eos_token_id": null }),
        );
        write_json(dir.path(), TOKENIZER_CONFIG_FILE, &json!({ "bos_token": "<s>" }));
        let e = Tokenizer::from_model_dir(dir.path()).unwrap_err().to_string();
        let folder = dir.path().display().to_string();
        assert!(e.contains(&folder) && e.contains("eos_token_id") && e.contains(EOS), "{e}");
        assert!(
            e.contains("files read: tokenizer.json, tokenizer_config.json, config.json"),
            "{e}"
        );
        // Without tokenizer.json there is nothing to load.
        let empty = tempfile::tempdir().unwrap();
        let e = Tokenizer::from_model_dir(empty.path()).unwrap_err().to_string();
        assert!(e.contains(TOKENIZER_FILE), "{e}");
    }

    #[test]
    fn config_files_keep_the_special_token_choices() {
        let (llama, _) = llama3_dir();
        let (qwen, _) = qwen_dir();
        let gpt2_dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny-gpt2"));
        let tokenizers = [
            Tokenizer::from_model_dir(llama.path()).unwrap(),
            Tokenizer::from_model_dir(qwen.path()).unwrap(),
            Tokenizer::from_model_dir(gpt2_dir).unwrap(),
            Tokenizer::train(&corpus(), 300).unwrap(),
        ];
        for tok in tokenizers {
            let files = tok.config_files();
            assert_eq!(
                files.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
                [TOKENIZER_CONFIG_FILE]
            );
            let config: Value = serde_json::from_str(&files[0].1).unwrap();
            assert_eq!(config["add_bos_token"], json!(tok.special().bos.is_some()));

            let dir = tempfile::tempdir().unwrap();
            tok.save(&dir.path().join(TOKENIZER_FILE)).unwrap();
            for (name, text) in &files {
                std::fs::write(dir.path().join(name), text).unwrap();
            }
            let back = Tokenizer::from_model_dir(dir.path()).unwrap();
            assert_eq!(back.special(), tok.special());
            assert_eq!(back.fingerprint(), tok.fingerprint());
            assert_eq!(
                back.encode_question("Alex is a wumpus."),
                tok.encode_question("Alex is a wumpus.")
            );
            // The other stop ids live in the model's generation_config.json.
            assert_eq!(back.stop_ids(), [tok.special().eos]);
            write_json(
                dir.path(),
                GENERATION_CONFIG_FILE,
                &json!({ "eos_token_id": tok.stop_ids() }),
            );
            let back = Tokenizer::from_model_dir(dir.path()).unwrap();
            assert_eq!(back.special(), tok.special());
            assert_eq!(back.stop_ids(), tok.stop_ids());
        }
    }
}
