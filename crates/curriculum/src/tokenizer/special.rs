//! Which ids of a tokenizer are its BOS, EOS, padding and stop ids: read from a model
//! folder's JSON files and the tokenizer itself, by the rules of the parent module's docs.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::names::{
    EOS, GENERATION_CONFIG_FILE, MODEL_CONFIG_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE,
};
use crate::error::CurriculumError;

/// The text encoded with and without special tokens to see what the post-processor adds.
const BOS_PROBE: &str = "Hello world";

/// What a model folder's JSON files say about special tokens; empty for a bare
/// `tokenizer.json` or a trained tokenizer.
#[derive(Debug, Default)]
pub(super) struct SideFiles {
    /// `tokenizer_config.json`, when present.
    tokenizer_config: Option<TokenizerConfig>,
    /// `generation_config.json` then `config.json`, those present.
    model_ids: Vec<ModelIds>,
    /// The names of the files read, `tokenizer.json` first (for the no-EOS error).
    read: Vec<&'static str>,
}

/// The special-token keys of `tokenizer_config.json`.
#[derive(Debug)]
struct TokenizerConfig {
    path: PathBuf,
    bos: Option<String>,
    eos: Option<String>,
    pad: Option<String>,
    add_bos: bool,
}

/// The special-token ids of `generation_config.json` or `config.json`.
#[derive(Debug)]
struct ModelIds {
    path: PathBuf,
    eos: Vec<u32>,
    pad: Option<u32>,
}

impl SideFiles {
    /// Reads the JSON files of the model folder `dir`, those present.
    pub(super) fn read(dir: &Path) -> Result<Self, CurriculumError> {
        let mut side = SideFiles { read: vec![TOKENIZER_FILE], ..SideFiles::default() };
        let path = dir.join(TOKENIZER_CONFIG_FILE);
        if let Some(obj) = read_object(&path)? {
            side.read.push(TOKENIZER_CONFIG_FILE);
            side.tokenizer_config = Some(TokenizerConfig {
                bos: token_key(&obj, &path, "bos_token")?,
                eos: token_key(&obj, &path, "eos_token")?,
                pad: token_key(&obj, &path, "pad_token")?,
                add_bos: bool_key(&obj, &path, "add_bos_token")?,
                path,
            });
        }
        for name in [GENERATION_CONFIG_FILE, MODEL_CONFIG_FILE] {
            let path = dir.join(name);
            if let Some(obj) = read_object(&path)? {
                side.read.push(name);
                let eos = id_key(&obj, &path, "eos_token_id")?;
                let pad = match id_key(&obj, &path, "pad_token_id")?[..] {
                    [] => None,
                    [id] => Some(id),
                    _ => return Err(bad_key(&path, "pad_token_id", "expected one id, not a list")),
                };
                side.model_ids.push(ModelIds { path, eos, pad });
            }
        }
        Ok(side)
    }
}

/// The special-token choices of one tokenizer, before the added tokens.
pub(super) struct Choices {
    pub(super) bos: Option<u32>,
    pub(super) eos: u32,
    pub(super) pad: u32,
    pub(super) stop_ids: Vec<u32>,
}

/// Applies the rules of the module docs to `inner` and what `side` says.
pub(super) fn choose_special(
    inner: &tokenizers::Tokenizer,
    context: &str,
    side: &SideFiles,
    dir: Option<&Path>,
) -> Result<Choices, CurriculumError> {
    // Every token and id the files name is checked, whether the rules end up using it or not.
    let (mut tc_bos, mut tc_eos, mut tc_pad) = (None, None, None);
    if let Some(tc) = &side.tokenizer_config {
        let id = |key: &'static str, token: &Option<String>| {
            token
                .as_deref()
                .map(|t| {
                    inner.token_to_id(t).ok_or_else(|| {
                        bad_key(&tc.path, key, format!("`{t}` is not in the vocabulary"))
                    })
                })
                .transpose()
        };
        (tc_bos, tc_eos, tc_pad) =
            (id("bos_token", &tc.bos)?, id("eos_token", &tc.eos)?, id("pad_token", &tc.pad)?);
    }
    let vocab = inner.get_vocab_size(true);
    for m in &side.model_ids {
        let named = m.eos.iter().map(|&id| ("eos_token_id", id));
        for (key, id) in named.chain(m.pad.map(|id| ("pad_token_id", id))) {
            if id as usize >= vocab {
                let reason = format!("id {id} is outside the vocabulary of {vocab} tokens");
                return Err(bad_key(&m.path, key, reason));
            }
        }
    }

    let eos = tc_eos
        .or_else(|| side.model_ids.iter().find_map(|m| m.eos.first().copied()))
        .or_else(|| inner.token_to_id(EOS));
    let Some(eos) = eos else {
        return Err(match dir {
            Some(dir) => {
                CurriculumError::NoEos { dir: dir.to_path_buf(), read: side.read.join(", ") }
            }
            None => CurriculumError::MissingToken {
                context: context.to_string(),
                token: EOS.to_string(),
            },
        });
    };
    let pad = tc_pad.or_else(|| side.model_ids.iter().find_map(|m| m.pad)).unwrap_or(eos);

    let mut bos = post_processor_bos(inner, context)?;
    if let Some(tc) = side.tokenizer_config.as_ref().filter(|tc| tc.add_bos) {
        match (bos, tc_bos) {
            (Some(added), Some(named)) if added != named => {
                let token = tc.bos.as_deref().unwrap_or_default();
                let reason = format!(
                    "`{token}` (id {named}) with `add_bos_token`, but the post-processor of \
                     {context} puts id {added} in front of every text"
                );
                return Err(bad_key(&tc.path, "bos_token", reason));
            }
            (None, named) => bos = named,
            _ => {}
        }
    }

    let mut stop_ids: Vec<u32> = std::iter::once(eos)
        .chain(side.model_ids.iter().flat_map(|m| m.eos.iter().copied()))
        .collect();
    stop_ids.sort_unstable();
    stop_ids.dedup();
    Ok(Choices { bos, eos, pad, stop_ids })
}

/// The token the post-processor of `inner` puts in front of every text, if any: what
/// encoding [`BOS_PROBE`] with special tokens gives before the ids it gives without them.
/// Tokens put after the text (an EOS) are ignored: [`Tokenizer::encode`] never adds them and
/// the answer's EOS is ours. More than one token in front is an error.
fn post_processor_bos(
    inner: &tokenizers::Tokenizer,
    context: &str,
) -> Result<Option<u32>, CurriculumError> {
    if inner.get_post_processor().is_none() {
        return Ok(None);
    }
    let err =
        |message: String| CurriculumError::Tokenizer { context: context.to_string(), message };
    let encode = |special: bool| {
        inner.encode(BOS_PROBE, special).map(|e| e.get_ids().to_vec()).map_err(|e| {
            err(format!("encoding {BOS_PROBE:?} to see what the post-processor adds: {e}"))
        })
    };
    let (with, without) = (encode(true)?, encode(false)?);
    let front =
        (0..=with.len().saturating_sub(without.len())).find(|&k| with[k..].starts_with(&without));
    match front {
        Some(0) => Ok(None),
        Some(1) => Ok(Some(with[0])),
        Some(n) => Err(err(format!(
            "the post-processor puts {n} tokens in front of every text ({:?}); one (a BOS) \
             is supported",
            &with[..n]
        ))),
        None => Err(err(format!(
            "the post-processor changes the text's own ids ({BOS_PROBE:?}: {without:?} \
             becomes {with:?})"
        ))),
    }
}

/// The JSON object in `path`; `None` when there is no such file.
fn read_object(path: &Path) -> Result<Option<Map<String, Value>>, CurriculumError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(CurriculumError::Io { path: path.to_path_buf(), error }),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|error| CurriculumError::Json { path: path.to_path_buf(), error })
}

/// The error for `key` of the file `path`.
fn bad_key(path: &Path, key: &'static str, reason: impl Into<String>) -> CurriculumError {
    CurriculumError::SpecialToken { path: path.to_path_buf(), key, reason: reason.into() }
}

/// A token key of `tokenizer_config.json`: a string, an object with a `content` string, or
/// null (absent alike).
fn token_key(
    obj: &Map<String, Value>,
    path: &Path,
    key: &'static str,
) -> Result<Option<String>, CurriculumError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(token)) => Ok(Some(token.clone())),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(token)) => Ok(Some(token.clone())),
            _ => Err(bad_key(path, key, "an object without a `content` string")),
        },
        Some(other) => Err(bad_key(
            path,
            key,
            format!("expected a token (a string, an object with `content`, or null), not {other}"),
        )),
    }
}

/// A boolean key; absent or null is false.
fn bool_key(
    obj: &Map<String, Value>,
    path: &Path,
    key: &'static str,
) -> Result<bool, CurriculumError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(bad_key(path, key, format!("expected true or false, not {other}"))),
    }
}

/// A token-id key: one id, a list of ids, or null (absent alike, an empty list).
fn id_key(
    obj: &Map<String, Value>,
    path: &Path,
    key: &'static str,
) -> Result<Vec<u32>, CurriculumError> {
    let one = |v: &Value| {
        v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| {
            bad_key(path, key, format!("expected a token id or a list of them, not {v}"))
        })
    };
    match obj.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(one).collect(),
        Some(v) => one(v).map(|id| vec![id]),
    }
}
