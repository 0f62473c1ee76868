//! `data.generate` of a run config: which generator makes a run's data, with which preset,
//! sizes, seed and shape.

use serde::{Deserialize, Serialize};

use crate::{DatasetConfig, DatasetKind, Preset};

/// Settings of the dataset generators for a run that makes its own data (the `[data]`
/// section's `generate` of a run config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateConfig {
    /// `prosqa` or `prontoqa`.
    pub kind: DatasetKind,
    /// `small` (fast CPU training) or `paper`.
    #[serde(default)]
    pub preset: Preset,
    /// Number of train, valid and test samples.
    pub sizes: [usize; 3],
    /// Generator seed.
    #[serde(default)]
    pub seed: u64,
    /// Generator settings that replace the preset's, by name: for ProsQA `min_steps`,
    /// `max_steps`, `min_nodes`, `max_nodes`, `mean_parents`, ...; for ProntoQA `min_hops`,
    /// `max_hops`, `side_branches`, ... (the fields of `ProsQaConfig` / `ProntoQaConfig`).
    /// For example `shape = { min_steps = 3, max_steps = 4 }`.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub shape: serde_json::Map<String, serde_json::Value>,
}

/// The most samples a generated split may hold.
const MAX_SAMPLES: usize = 1 << 30;

impl GenerateConfig {
    /// The generator's settings: the preset's, with `shape` put over them.
    pub fn dataset_config(&self) -> Result<DatasetConfig, String> {
        let config = match DatasetConfig::preset(self.kind, self.preset) {
            DatasetConfig::ProsQa(c) => DatasetConfig::ProsQa(self.overlaid(c)?),
            DatasetConfig::ProntoQa(c) => DatasetConfig::ProntoQa(self.overlaid(c)?),
        };
        config.validate().map_err(|e| format!("data.generate.shape: {e}"))?;
        Ok(config)
    }

    /// The values that parse but make no sense: an empty training or validation split, a
    /// split or a seed too large, a shape the generator refuses. Errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        for (split, size) in ["train", "valid", "test"].iter().zip(self.sizes) {
            let minimum = usize::from(*split != "test");
            let key = format!("data.generate.sizes ({split})");
            if size < minimum {
                return Err(format!("{key} ({size}) must be at least {minimum}"));
            }
            if size > MAX_SAMPLES {
                return Err(format!("{key} ({size}) must be at most {MAX_SAMPLES}"));
            }
        }
        if self.seed > i64::MAX as u64 {
            return Err(format!("data.generate.seed ({}) must be at most {}", self.seed, i64::MAX));
        }
        self.dataset_config().map(drop)
    }

    /// `preset` with the fields of `shape` replaced (an unknown one is an error).
    fn overlaid<T: Serialize + serde::de::DeserializeOwned>(&self, preset: T) -> Result<T, String> {
        let err = |e: serde_json::Error| format!("data.generate.shape: {e}");
        let serde_json::Value::Object(mut fields) = serde_json::to_value(preset).map_err(err)?
        else {
            unreachable!("a generator config serialises to an object")
        };
        fields.extend(self.shape.clone());
        serde_json::from_value(serde_json::Value::Object(fields)).map_err(err)
    }
}
