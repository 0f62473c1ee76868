//! The tokenizer: a HF `tokenizer.json` (GPT-2's BPE for pretrained GPT-2) or a byte-level BPE
//! trained here for models trained from scratch, plus the curriculum's special tokens.
//!
//! docs/DESIGN.md, "Tokens": pad = eos; three added tokens `<|start-latent|>`, `<|end-latent|>`,
//! `<|latent|>` (GPT-2 ids 50257, 50258, 50259), and `<pause>` (50260) for the pause baselines.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

use crate::data::Sample;
use crate::error::CurriculumError;

/// Opens the continuous-thought span (the paper's `<bot>`).
pub const START_LATENT: &str = "<|start-latent|>";
/// Closes the continuous-thought span (the paper's `<eot>`).
pub const END_LATENT: &str = "<|end-latent|>";
/// A slot whose input embedding is the previous position's last hidden state.
pub const LATENT: &str = "<|latent|>";
/// A learned filler token for the `pause-token` and `pause-as-thought` baselines.
pub const PAUSE: &str = "<pause>";
/// End of text; also the padding id.
pub const EOS: &str = "<|endoftext|>";

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

/// The ids of the tokens the curriculum and the model treat specially. Padding uses `eos`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialTokens {
    /// `<|endoftext|>`: ends every answer, and pads batches.
    pub eos: u32,
    /// `<|start-latent|>`.
    pub start_latent: u32,
    /// `<|end-latent|>`.
    pub end_latent: u32,
    /// `<|latent|>`.
    pub latent: u32,
    /// `<pause>`.
    pub pause: u32,
}

/// A `tokenizers` tokenizer that is known to hold [`EOS`] and the four added tokens.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    special: SpecialTokens,
}

impl fmt::Debug for Tokenizer {
    // The derived form would print the whole vocabulary and merge list.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("special", &self.special)
            .finish()
    }
}

impl Tokenizer {
    /// Loads a HF `tokenizer.json`. [`EOS`] must be in it; [`START_LATENT`], [`END_LATENT`],
    /// [`LATENT`] and [`PAUSE`] are added as special tokens where absent, in that order, so
    /// GPT-2's file gives them 50257, 50258, 50259 and 50260.
    pub fn from_file(path: &Path) -> Result<Self, CurriculumError> {
        let context = path.display().to_string();
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| {
            CurriculumError::Tokenizer { context: context.clone(), message: e.to_string() }
        })?;
        Self::with_added_tokens(inner, &context)
    }

    /// Trains a byte-level BPE like GPT-2's (ByteLevel pre-tokenizer, decoder and
    /// post-processor, no prefix space) on `texts`, for models trained from scratch.
    ///
    /// [`EOS`] gets id 0 and the four added tokens ids 1 to 4, then come the 256 byte symbols
    /// and the merges, up to `vocab_size` entries in all. Training is deterministic: the
    /// trainer sorts its alphabet and breaks ties between equally frequent pairs by pair id.
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
        Self::with_added_tokens(inner, context)
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
    /// identical ids (the added tokens are saved in it).
    pub fn save(&self, path: &Path) -> Result<(), CurriculumError> {
        self.inner.save(path, true).map_err(|e| CurriculumError::Tokenizer {
            context: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// A canonical SHA-256 (hex) of what decides the ids: the vocabulary by id, the merges
    /// and the added tokens. Saving and loading the tokenizer keeps it; another tokenizer of
    /// the same size (trained on other text, say) has another.
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
            .unwrap_or(serde_json::Value::Null);
        let mut added: Vec<(u32, String, bool)> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .map(|(id, t)| (id, t.content, t.special))
            .collect();
        added.sort();
        let canonical = serde_json::json!({ "vocab": vocab, "merges": merges, "added": added });
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

    /// Decodes `ids` to text, special tokens included (`<|latent|>` is written out).
    ///
    /// # Panics
    /// If the tokenizers crate fails, which the byte-level decoder never does.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, false).unwrap_or_else(|e| panic!("decoding {ids:?}: {e}"))
    }

    /// The ids of [`EOS`] and the four added tokens.
    pub fn special(&self) -> SpecialTokens {
        self.special
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

    /// Checks [`EOS`], adds the missing added tokens and records the special ids.
    fn with_added_tokens(
        mut inner: tokenizers::Tokenizer,
        context: &str,
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

        let eos = inner.token_to_id(EOS).ok_or_else(|| missing(EOS))?;
        // One at a time, so that the ids follow the order of ADDED.
        for token in ADDED {
            if inner.token_to_id(token).is_none() {
                inner.add_special_tokens([AddedToken::from(token, true)]).map_err(tok_err)?;
            }
        }
        let id = |token: &str| inner.token_to_id(token).ok_or_else(|| missing(token));
        let special = SpecialTokens {
            eos,
            start_latent: id(START_LATENT)?,
            end_latent: id(END_LATENT)?,
            latent: id(LATENT)?,
            pause: id(PAUSE)?,
        };
        Ok(Self { inner, special })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

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
                eos: 50256,
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
            SpecialTokens { eos: 0, start_latent: 1, end_latent: 2, latent: 3, pause: 4 }
        );
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
}
