//! The TOML an import writes: keys in a fixed order of sections.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A TOML string.
pub(super) fn s(v: &str) -> toml::Value {
    toml::Value::String(v.to_string())
}

/// A TOML integer.
pub(super) fn int(v: usize) -> toml::Value {
    toml::Value::Integer(v as i64)
}

/// `key = value` lines of one table.
type Entries = Vec<(&'static str, toml::Value)>;

/// The TOML being written: top-level keys, then one table per section in a fixed order.
#[derive(Default)]
pub(super) struct Toml {
    top: Entries,
    /// Keyed by the index in [`SECTIONS`].
    sections: BTreeMap<usize, Entries>,
}

const SECTIONS: [&str; 5] = ["data", "model", "curriculum", "train", "eval"];

impl Toml {
    /// Adds a top-level key.
    pub(super) fn top(&mut self, key: &'static str, value: toml::Value) {
        self.top.push((key, value));
    }

    /// Adds `key` to `section`.
    pub(super) fn key(&mut self, section: &'static str, key: &'static str, value: toml::Value) {
        let index = SECTIONS.iter().position(|&s| s == section).expect("a known section");
        self.sections.entry(index).or_default().push((key, value));
    }

    /// The TOML text: top-level keys, then each section.
    pub(super) fn render(&self) -> String {
        let mut text = String::new();
        for (key, value) in &self.top {
            let _ = writeln!(text, "{key} = {value}");
        }
        for (index, keys) in &self.sections {
            let _ = writeln!(text, "\n[{}]", SECTIONS[*index]);
            for (key, value) in keys {
                let _ = writeln!(text, "{key} = {value}");
            }
        }
        text
    }
}
