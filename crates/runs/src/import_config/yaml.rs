//! Reading an official args file: one flat YAML mapping, its values typed as PyYAML's
//! `safe_load` types them, its keys checked against the official set.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Every key of the official args files, in their order; they are exactly the arguments
/// `run.py` and `dataset.py` read.
pub(super) const OFFICIAL_KEYS: [&str; 28] = [
    "project",
    "save_path",
    "name",
    "only_eval",
    "coconut",
    "cot",
    "no_thoughts",
    "no_cot",
    "c_thought",
    "epochs_per_stage",
    "max_latent_stage",
    "pad_latent_to_max",
    "save_only_improve",
    "uniform_prob",
    "model_id",
    "load_model_path",
    "seed",
    "resume",
    "bf16",
    "train_path",
    "val_path",
    "reset_optimizer",
    "batch_size_training",
    "debug",
    "gradient_accumulation_steps",
    "num_epochs",
    "lr",
    "weight_decay",
];

/// Keys `run.py` may do without: `project` is read only when wandb logs.
const OPTIONAL_KEYS: [&str; 1] = ["project"];

/// One scalar of the YAML mapping, with what decides its type.
#[derive(Debug)]
struct Scalar {
    value: String,
    style: TScalarStyle,
    tag: Option<Tag>,
    line: usize,
}

/// A resolved YAML value, with the YAML 1.1 rules of PyYAML's `safe_load` (which run.py
/// uses): `True`/`False`/`yes`/`no`/`on`/`off` are booleans, `None` is a string, `null` and
/// `~` are null, `!!float "1e-4"` is a float.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
        }
    }
}

/// The flat mapping of an official args file.
pub(super) struct Args {
    file: String,
    values: BTreeMap<String, (Value, usize)>,
}

#[derive(Default)]
struct Events(Vec<(Event, Marker)>);

impl MarkedEventReceiver for Events {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        self.0.push((ev, mark));
    }
}

impl Args {
    /// Parses `text`, checks the key set and resolves every value.
    pub(super) fn read(text: &str, file: &str) -> Result<Self> {
        let mut events = Events::default();
        Parser::new_from_str(text)
            .load(&mut events, true)
            .map_err(|e| anyhow::anyhow!("{file}: not valid YAML: {e}"))?;
        let mut it = events
            .0
            .into_iter()
            .filter(|(e, _)| !matches!(e, Event::StreamStart | Event::StreamEnd | Event::Nothing));
        let not_mapping = || anyhow::anyhow!("{file}: expected one mapping of `key: value` lines");
        match it.next() {
            Some((Event::DocumentStart, _)) => {}
            _ => return Err(not_mapping()),
        }
        match it.next() {
            Some((Event::MappingStart(..), _)) => {}
            _ => return Err(not_mapping()),
        }
        let mut values = BTreeMap::new();
        loop {
            let (key, mark) = match it.next() {
                Some((Event::MappingEnd, _)) => break,
                Some((Event::Scalar(key, ..), mark)) => (key, mark),
                Some((_, mark)) => {
                    bail!("{file}:{}: keys must be plain words", mark.line())
                }
                None => return Err(not_mapping()),
            };
            let scalar = match it.next() {
                Some((Event::Scalar(value, style, _, tag), mark)) => {
                    Scalar { value, style, tag, line: mark.line() }
                }
                Some((_, mark)) => bail!(
                    "{file}:{}: key `{key}` has a nested value or an alias; the official args \
                     are flat `key: value` lines",
                    mark.line()
                ),
                None => return Err(not_mapping()),
            };
            let value = resolve(&scalar)
                .map_err(|m| anyhow::anyhow!("{file}:{}: key `{key}`: {m}", scalar.line))?;
            if values.insert(key.clone(), (value, scalar.line)).is_some() {
                bail!("{file}:{}: key `{key}` is given twice", mark.line());
            }
        }
        match it.next() {
            Some((Event::DocumentEnd, _)) => {}
            _ => return Err(not_mapping()),
        }
        if let Some((_, mark)) = it.next() {
            bail!("{file}:{}: a second YAML document; an args file holds one", mark.line());
        }

        let unknown: Vec<String> = values
            .keys()
            .filter(|k| !OFFICIAL_KEYS.contains(&k.as_str()))
            .map(|k| format!("`{k}`"))
            .collect();
        if !unknown.is_empty() {
            bail!(
                "{file}: unknown key(s) {}: not an argument of the official run.py (its keys: {})",
                unknown.join(", "),
                OFFICIAL_KEYS.join(", ")
            );
        }
        let missing: Vec<String> = OFFICIAL_KEYS
            .iter()
            .filter(|k| !OPTIONAL_KEYS.contains(k) && !values.contains_key(**k))
            .map(|k| format!("`{k}`"))
            .collect();
        if !missing.is_empty() {
            bail!(
                "{file}: missing key(s) {}: run.py reads them, and guessing them here would hide \
                 a difference",
                missing.join(", ")
            );
        }
        Ok(Self { file: file.to_string(), values })
    }

    fn get(&self, key: &str) -> (&Value, usize) {
        let (v, line) = self.values.get(key).expect("required keys are checked at read");
        (v, *line)
    }

    fn wrong(&self, key: &str, line: usize, want: &str, got: &Value) -> anyhow::Error {
        anyhow::anyhow!("{}:{line}: key `{key}` must be {want}, not {}", self.file, got.kind())
    }

    /// The boolean `key`.
    pub(super) fn bool(&self, key: &str) -> Result<bool> {
        match self.get(key) {
            (Value::Bool(b), _) => Ok(*b),
            (v, line) => Err(self.wrong(key, line, "True or False", v)),
        }
    }

    /// The non-negative integer `key`.
    pub(super) fn usize(&self, key: &str) -> Result<usize> {
        match self.get(key) {
            (Value::Int(i), line) => usize::try_from(*i).map_err(|_| {
                anyhow::anyhow!("{}:{line}: key `{key}` must not be negative ({i})", self.file)
            }),
            (v, line) => Err(self.wrong(key, line, "an integer", v)),
        }
    }

    /// The number `key`.
    pub(super) fn float(&self, key: &str) -> Result<f64> {
        match self.get(key) {
            (Value::Float(f), _) => Ok(*f),
            (Value::Int(i), _) => Ok(*i as f64),
            (v, line) => Err(self.wrong(key, line, "a number (for example !!float \"1e-4\")", v)),
        }
    }

    /// The string `key`.
    pub(super) fn string(&self, key: &str) -> Result<String> {
        match self.get(key) {
            (Value::Str(s), _) => Ok(s.clone()),
            (v, line) => Err(self.wrong(key, line, "a string", v)),
        }
    }

    /// A string, or `None` for an absent key or a null value.
    pub(super) fn optional_string(&self, key: &str) -> Result<Option<String>> {
        match self.values.get(key) {
            None | Some((Value::Null, _)) => Ok(None),
            Some((Value::Str(s), _)) => Ok(Some(s.clone())),
            Some((v, line)) => Err(self.wrong(key, *line, "a string", v)),
        }
    }
}

/// Resolves one scalar as PyYAML's `safe_load` would (a number PyYAML reads as a string
/// only for want of a dot, such as `1e-4`, is read as the number that was meant).
fn resolve(scalar: &Scalar) -> Result<Value, String> {
    let v = scalar.value.as_str();
    if let Some(tag) = &scalar.tag {
        let suffix = match tag.handle.as_str() {
            "tag:yaml.org,2002:" | "!!" => tag.suffix.as_str(),
            _ => return Err(format!("unsupported tag {}{}", tag.handle, tag.suffix)),
        };
        return match suffix {
            "float" => parse_float(v).map(Value::Float).ok_or(format!("{v:?} is not a float")),
            "int" => parse_int(v).map(Value::Int).ok_or(format!("{v:?} is not an integer")),
            "bool" => parse_bool(v).map(Value::Bool).ok_or(format!("{v:?} is not a boolean")),
            "str" => Ok(Value::Str(v.to_string())),
            "null" => Ok(Value::Null),
            other => Err(format!("unsupported tag !!{other}")),
        };
    }
    if scalar.style != TScalarStyle::Plain {
        return Ok(Value::Str(v.to_string()));
    }
    if matches!(v, "" | "~" | "null" | "Null" | "NULL") {
        return Ok(Value::Null);
    }
    if let Some(b) = parse_bool(v) {
        return Ok(Value::Bool(b));
    }
    if let Some(i) = parse_int(v) {
        return Ok(Value::Int(i));
    }
    if let Some(f) = parse_float(v) {
        return Ok(Value::Float(f));
    }
    Ok(Value::Str(v.to_string()))
}

/// YAML 1.1 booleans.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => Some(true),
        "false" | "False" | "FALSE" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

/// Decimal integers with an optional sign and `_` separators.
fn parse_int(v: &str) -> Option<i64> {
    let digits = v.strip_prefix(['+', '-']).unwrap_or(v);
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit() || c == '_') {
        return None;
    }
    v.replace('_', "").parse().ok()
}

/// Decimal floats (`0.01`, `1e-4`, `1.0e-4`, `.5`) and YAML's `.inf` / `.nan`.
fn parse_float(v: &str) -> Option<f64> {
    let t = v.replace('_', "");
    let lower = t.to_lowercase();
    let body = lower.strip_prefix(['+', '-']).unwrap_or(&lower);
    if body == ".inf" {
        return Some(if lower.starts_with('-') { f64::NEG_INFINITY } else { f64::INFINITY });
    }
    if body == ".nan" {
        return Some(f64::NAN);
    }
    // Only digits, one dot and an exponent: Rust's parser also takes `inf` and `nan`.
    if !body.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | '+' | '-'))
        || !body.starts_with(|c: char| c.is_ascii_digit() || c == '.')
    {
        return None;
    }
    t.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn yaml_values_resolve_as_pyyaml_does() {
        let scalar = |value: &str, style, tag: Option<(&str, &str)>| Scalar {
            value: value.into(),
            style,
            tag: tag.map(|(h, s)| Tag { handle: h.into(), suffix: s.into() }),
            line: 1,
        };
        let plain = |v: &str| resolve(&scalar(v, TScalarStyle::Plain, None)).unwrap();
        assert_eq!(plain("False"), Value::Bool(false));
        assert_eq!(plain("yes"), Value::Bool(true));
        assert_eq!(plain("None"), Value::Str("None".into()));
        assert_eq!(plain("~"), Value::Null);
        assert_eq!(plain("32"), Value::Int(32));
        assert_eq!(plain("0.01"), Value::Float(0.01));
        assert_eq!(plain("1e-4"), Value::Float(1e-4));
        assert_eq!(plain("inf"), Value::Str("inf".into()));
        assert_eq!(plain("openai-community/gpt2"), Value::Str("openai-community/gpt2".into()));
        let quoted = resolve(&scalar("1e-4", TScalarStyle::DoubleQuoted, None)).unwrap();
        assert_eq!(quoted, Value::Str("1e-4".into()));
        let tagged =
            scalar("1e-4", TScalarStyle::DoubleQuoted, Some(("tag:yaml.org,2002:", "float")));
        assert_eq!(resolve(&tagged).unwrap(), Value::Float(1e-4));
        assert!(resolve(&scalar("x", TScalarStyle::Plain, Some(("!", "custom")))).is_err());
        // The official files' own spelling, through the parser.
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/official/args/prosqa_coconut.yaml");
        let args = Args::read(&std::fs::read_to_string(&path).unwrap(), "f.yaml").unwrap();
        assert_eq!(args.get("lr").0, &Value::Float(1e-4));
        assert_eq!(args.get("load_model_path").0, &Value::Str("None".into()));
        assert_eq!(args.get("only_eval").0, &Value::Bool(false));
    }
}
