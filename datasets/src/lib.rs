//! Generators of ProsQA-style and ProntoQA-style reasoning data sets, their checkers and
//! statistics.
//!
//! Pure Rust, no model code. Samples are the Coconut JSON objects `{question, steps, answer}`
//! plus the graph fields of the released files (docs/DESIGN.md, "Data"), so the generated files
//! load wherever the real ones do.
//!
//! Every item is at the crate root; the files split it by concern:
//! - `prosqa.rs`: questions over random DAGs (Coconut appendix A.2), tuned to the
//!   statistics of the released validation split, and [`check_prosqa_answer`] (graph
//!   search);
//! - `prontoqa.rs`: questions over a fictional ontology with the skeleton of the real 5-hop
//!   files, and [`check_prontoqa_answer`] (forward chaining over the parsed text);
//! - `stats.rs`: [`DatasetStats`] of a file or a list of samples, and a side-by-side table;
//! - `generate_config.rs`: [`GenerateConfig`], the `data.generate` section of a run config;
//! - `names.rs`: the people and the "-pus" concept names.
//!
//! Generation is deterministic: one `u64` seed gives the same bytes on every machine.

#![warn(missing_docs)]

mod error;
mod generate_config;
mod names;
mod prontoqa;
mod prosqa;
mod stats;

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

pub use error::DatasetError;
pub use generate_config::GenerateConfig;
pub use prontoqa::{check_prontoqa_answer, parse_statement, ProntoQaConfig, Statement};
pub use prosqa::{check_prosqa_answer, parse_question, ParsedQuestion, ProsQaConfig};
pub use stats::{format_side_by_side, DatasetStats};

/// One sample, in the field order of the released files. Training reads only `question`,
/// `steps` and `answer`; the graph fields describe how the question was built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// The question given to the model.
    pub question: String,
    /// The language reasoning steps, in order.
    pub steps: Vec<String>,
    /// The final answer: "Tom is a lempus." (ProsQA) or "True"/"False" (ProntoQA).
    pub answer: String,
    /// Node names: people and concepts (ProsQA: the whole graph; ProntoQA: the person, the
    /// chain, then the other concepts in alphabetical order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idx_to_symbol: Option<Vec<String>>,
    /// Directed "is a" edges `[sub, super]` as indices into `idx_to_symbol`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edges: Option<Vec<[usize; 2]>>,
    /// Index of the person asked about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<usize>,
    /// Index of the answer concept (ProsQA) or of the concept carrying the queried property
    /// (ProntoQA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<usize>,
    /// Index of the wrong option (ProsQA) or, in generated ProntoQA, of the distractor concept
    /// carrying the queried property with the opposite sign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neg_target: Option<usize>,
    /// ProntoQA: the chain of concepts from the person to the queried property.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_concepts: Option<Vec<String>>,
}

/// Which kind of data set (`"prosqa"` or `"prontoqa"` in configuration files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DatasetKind {
    /// Questions over random DAGs: "Is Tom a A or B?".
    #[serde(rename = "prosqa")]
    ProsQa,
    /// Questions over a fictional ontology: "True or false: Alex is happy.".
    #[serde(rename = "prontoqa")]
    ProntoQa,
}

impl DatasetKind {
    /// Every kind.
    pub const ALL: [DatasetKind; 2] = [DatasetKind::ProsQa, DatasetKind::ProntoQa];

    /// The paper's split sizes (train, valid, test): ProsQA 17,886/300/500, ProntoQA
    /// 9,000/200/800.
    pub fn paper_sizes(self) -> (usize, usize, usize) {
        match self {
            DatasetKind::ProsQa => (17_886, 300, 500),
            DatasetKind::ProntoQa => (9_000, 200, 800),
        }
    }

    /// `prosqa` or `prontoqa`: the kind as configuration files and the command line write it.
    pub fn key(self) -> &'static str {
        match self {
            DatasetKind::ProsQa => "prosqa",
            DatasetKind::ProntoQa => "prontoqa",
        }
    }

    /// "ProsQA" or "ProntoQA".
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::ProsQa => "ProsQA",
            DatasetKind::ProntoQa => "ProntoQA",
        }
    }
}

impl std::str::FromStr for DatasetKind {
    type Err = String;

    /// The kind of [`DatasetKind::key`] `name`.
    fn from_str(name: &str) -> Result<Self, String> {
        by_key(&Self::ALL, Self::key, "dataset kind", name)
    }
}

/// How hard and how large a generated data set is (`"small"` or `"paper"` in
/// configuration files).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Easier questions, for fast CPU training.
    #[default]
    Small,
    /// The paper's difficulty.
    Paper,
}

impl Preset {
    /// Every preset.
    pub const ALL: [Preset; 2] = [Preset::Small, Preset::Paper];

    /// `small` or `paper`: the preset as configuration files and the command line write it.
    pub fn key(self) -> &'static str {
        match self {
            Preset::Small => "small",
            Preset::Paper => "paper",
        }
    }
}

impl std::str::FromStr for Preset {
    type Err = String;

    /// The preset of [`Preset::key`] `name`.
    fn from_str(name: &str) -> Result<Self, String> {
        by_key(&Self::ALL, Self::key, "preset", name)
    }
}

/// The one of `all` whose `key` is `name`; the error names `what` and lists the keys.
fn by_key<T: Copy>(
    all: &[T],
    key: fn(T) -> &'static str,
    what: &str,
    name: &str,
) -> Result<T, String> {
    all.iter().copied().find(|&t| key(t) == name).ok_or_else(|| {
        let keys: Vec<&str> = all.iter().map(|&t| key(t)).collect();
        format!("unknown {what} {name:?} ({})", keys.join(" or "))
    })
}

/// A generator configuration of either kind (`{"prosqa": {...}}` or `{"prontoqa": {...}}`
/// in configuration files).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DatasetConfig {
    /// ProsQA generator settings.
    #[serde(rename = "prosqa")]
    ProsQa(ProsQaConfig),
    /// ProntoQA generator settings.
    #[serde(rename = "prontoqa")]
    ProntoQa(ProntoQaConfig),
}

impl DatasetConfig {
    /// The paper-like configuration of `kind`.
    pub fn paper(kind: DatasetKind) -> Self {
        match kind {
            DatasetKind::ProsQa => DatasetConfig::ProsQa(ProsQaConfig::default()),
            DatasetKind::ProntoQa => DatasetConfig::ProntoQa(ProntoQaConfig::default()),
        }
    }

    /// The small preset of `kind`, for fast CPU training.
    pub fn small(kind: DatasetKind) -> Self {
        match kind {
            DatasetKind::ProsQa => DatasetConfig::ProsQa(ProsQaConfig::small()),
            DatasetKind::ProntoQa => DatasetConfig::ProntoQa(ProntoQaConfig::small()),
        }
    }

    /// The configuration of `kind` at `preset`.
    pub fn preset(kind: DatasetKind, preset: Preset) -> Self {
        match preset {
            Preset::Small => Self::small(kind),
            Preset::Paper => Self::paper(kind),
        }
    }

    /// Which kind this configuration generates.
    pub fn kind(&self) -> DatasetKind {
        match self {
            DatasetConfig::ProsQa(_) => DatasetKind::ProsQa,
            DatasetConfig::ProntoQa(_) => DatasetKind::ProntoQa,
        }
    }

    /// Checks the configuration once, before generating.
    pub fn validate(&self) -> Result<(), DatasetError> {
        match self {
            DatasetConfig::ProsQa(c) => c.validate(),
            DatasetConfig::ProntoQa(c) => c.validate(),
        }
    }

    /// One sample; `flag` is the balanced property: the correct option first (ProsQA) or the
    /// answer "True" (ProntoQA).
    fn sample(&self, rng: &mut StdRng, flag: bool) -> Result<Sample, DatasetError> {
        match self {
            DatasetConfig::ProsQa(c) => prosqa::generate_sample(c, rng, flag),
            DatasetConfig::ProntoQa(c) => Ok(prontoqa::generate_sample(c, rng, flag)),
        }
    }
}

/// The three splits of a data set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splits {
    /// Training samples.
    pub train: Vec<Sample>,
    /// Validation samples.
    pub valid: Vec<Sample>,
    /// Test samples.
    pub test: Vec<Sample>,
}

/// Draws for one new distinct sample before giving up (the question space is too small).
const MAX_DUPLICATE_ATTEMPTS: usize = 1_000;

/// Generates train, valid and test splits of `sizes` = (train, valid, test) samples from one
/// seed. No question appears twice, within or across splits. Valid and test are drawn first,
/// so they do not change when only the training size does. In each split the balanced
/// property (ProsQA: correct option first; ProntoQA: answer "True") holds for exactly half
/// the samples (odd sizes round at random).
pub fn generate_splits(
    cfg: &DatasetConfig,
    sizes: (usize, usize, usize),
    seed: u64,
) -> Result<Splits, DatasetError> {
    cfg.validate()?;
    let (n_train, n_valid, n_test) = sizes;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen = HashSet::new();
    let valid = fill(cfg, &mut rng, n_valid, &mut seen)?;
    let test = fill(cfg, &mut rng, n_test, &mut seen)?;
    let train = fill(cfg, &mut rng, n_train, &mut seen)?;
    Ok(Splits { train, valid, test })
}

/// Generates `n` distinct samples from `seed`, balanced as in [`generate_splits`].
pub fn generate_distinct(
    cfg: &DatasetConfig,
    n: usize,
    seed: u64,
) -> Result<Vec<Sample>, DatasetError> {
    cfg.validate()?;
    let mut rng = StdRng::seed_from_u64(seed);
    fill(cfg, &mut rng, n, &mut HashSet::new())
}

fn fill(
    cfg: &DatasetConfig,
    rng: &mut StdRng,
    n: usize,
    seen: &mut HashSet<String>,
) -> Result<Vec<Sample>, DatasetError> {
    fill_with(cfg.kind().name(), rng, n, seen, |rng, flag| cfg.sample(rng, flag))
}

/// [`fill`] over any sampler, so the exhaustion path can be tested without a huge run.
fn fill_with(
    dataset: &'static str,
    rng: &mut StdRng,
    n: usize,
    seen: &mut HashSet<String>,
    mut sample: impl FnMut(&mut StdRng, bool) -> Result<Sample, DatasetError>,
) -> Result<Vec<Sample>, DatasetError> {
    // Exactly half the flags set, in random order, so the balance is exact, not just expected.
    let mut flags: Vec<bool> = (0..n).map(|i| i < n / 2).collect();
    if n % 2 == 1 {
        flags[n - 1] = rng.random_bool(0.5);
    }
    flags.shuffle(rng);
    let mut samples = Vec::with_capacity(n);
    for flag in flags {
        let mut attempts = 0;
        loop {
            let s = sample(rng, flag)?;
            if seen.insert(s.question.clone()) {
                samples.push(s);
                break;
            }
            attempts += 1;
            if attempts == MAX_DUPLICATE_ATTEMPTS {
                return Err(DatasetError::Exhausted { dataset, attempts, have: samples.len() });
            }
        }
    }
    Ok(samples)
}

/// SHA-256 of `bytes`, in hex: the content hash the data manifest and a run's state record.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(bytes))
}

/// [`sha256_hex`] of the file at `path`, read in pieces.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// Writes `train.json`, `valid.json` and `test.json` (pretty JSON arrays) into `dir`,
/// creating it if needed.
pub fn write_splits(dir: &Path, splits: &Splits) -> Result<(), DatasetError> {
    fs::create_dir_all(dir).map_err(|error| DatasetError::Io { path: dir.to_path_buf(), error })?;
    for (name, samples) in
        [("train", &splits.train), ("valid", &splits.valid), ("test", &splits.test)]
    {
        write_samples(&dir.join(format!("{name}.json")), samples)?;
    }
    Ok(())
}

/// Writes `samples` to `path` as a pretty JSON array.
pub fn write_samples(path: &Path, samples: &[Sample]) -> Result<(), DatasetError> {
    write_atomic(path, samples_json(samples).as_bytes())
        .map_err(|error| DatasetError::Io { path: path.to_path_buf(), error })
}

/// The text [`write_samples`] writes: a pretty JSON array and a closing newline.
pub fn samples_json(samples: &[Sample]) -> String {
    serde_json::to_string_pretty(samples).expect("samples always serialise") + "\n"
}

/// Writes `bytes` to `path` so that `path` holds either its old content or all of the new:
/// a temporary file beside it (named per process) is written and flushed to disk, then
/// renamed over `path`, and the folder is flushed so the rename survives a power loss.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "a file path is needed")
    })?;
    let tmp =
        path.with_file_name(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let written = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::File::open(dir)?.sync_all()
}

/// Reads a JSON array of samples (generated or released files; extra graph fields optional).
pub fn read_samples(path: &Path) -> Result<Vec<Sample>, DatasetError> {
    let text = fs::read_to_string(path)
        .map_err(|error| DatasetError::Io { path: path.to_path_buf(), error })?;
    serde_json::from_str(&text)
        .map_err(|error| DatasetError::Json { path: path.to_path_buf(), error })
}

#[cfg(test)]
mod tests {
    use super::*;
    use coconut_testing::Tolerance;

    /// A share of a few hundred samples: exact up to the last bits.
    const EXACT: Tolerance = Tolerance::new(1e-12, 0.0);

    fn bytes(s: &Splits) -> Vec<u8> {
        serde_json::to_vec(&(&s.train, &s.valid, &s.test)).unwrap()
    }

    const KINDS: [DatasetKind; 2] = [DatasetKind::ProsQa, DatasetKind::ProntoQa];

    #[test]
    fn same_seed_same_bytes_and_different_seeds_differ() {
        for kind in KINDS {
            for cfg in [DatasetConfig::paper(kind), DatasetConfig::small(kind)] {
                let a = generate_splits(&cfg, (60, 10, 10), 42).unwrap();
                let b = generate_splits(&cfg, (60, 10, 10), 42).unwrap();
                let c = generate_splits(&cfg, (60, 10, 10), 43).unwrap();
                assert_eq!(bytes(&a), bytes(&b), "{kind:?}");
                assert_ne!(bytes(&a), bytes(&c), "{kind:?}");
                assert!(a.train.iter().all(|s| !c.train.contains(s)), "{kind:?}: seeds overlap");
            }
        }
    }

    #[test]
    fn splits_never_share_a_question_and_are_balanced() {
        for kind in KINDS {
            let cfg = DatasetConfig::small(kind);
            let s = generate_splits(&cfg, (2_000, 200, 200), 9).unwrap();
            assert_eq!((s.train.len(), s.valid.len(), s.test.len()), (2_000, 200, 200));
            let mut all = HashSet::new();
            for sample in s.train.iter().chain(&s.valid).chain(&s.test) {
                assert!(all.insert(sample.question.as_str()), "{kind:?}: repeated question");
            }
            let valid = DatasetStats::from_samples(&s.valid);
            let share = valid.first_option_correct_share.or(valid.true_share).unwrap();
            coconut_testing::assert_close(share, 0.5, EXACT, &format!("{kind:?}: share"));
        }
    }

    #[test]
    fn valid_and_test_do_not_depend_on_the_training_size() {
        let cfg = DatasetConfig::small(DatasetKind::ProsQa);
        let a = generate_splits(&cfg, (10, 20, 20), 1).unwrap();
        let b = generate_splits(&cfg, (50, 20, 20), 1).unwrap();
        assert_eq!((a.valid, a.test), (b.valid, b.test));
    }

    #[test]
    fn written_splits_read_back_and_keep_the_real_field_order() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DatasetConfig::paper(DatasetKind::ProsQa);
        let splits = generate_splits(&cfg, (5, 3, 2), 0).unwrap();
        write_splits(dir.path(), &splits).unwrap();
        assert_eq!(read_samples(&dir.path().join("train.json")).unwrap(), splits.train);
        assert_eq!(read_samples(&dir.path().join("valid.json")).unwrap(), splits.valid);
        assert_eq!(read_samples(&dir.path().join("test.json")).unwrap(), splits.test);
        let text = fs::read_to_string(dir.path().join("test.json")).unwrap();
        let order = [
            "\"question\"",
            "\"steps\"",
            "\"answer\"",
            "\"idx_to_symbol\"",
            "\"edges\"",
            "\"root\"",
        ];
        let at: Vec<usize> = order.iter().map(|k| text.find(k).unwrap()).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
    }

    #[test]
    fn configs_round_trip_through_json_and_reject_unknown_fields() {
        for kind in KINDS {
            let cfg = DatasetConfig::small(kind);
            let text = serde_json::to_string(&cfg).unwrap();
            assert!(text.starts_with(&format!("{{\"{}\"", kind.name().to_lowercase())), "{text}");
            assert_eq!(serde_json::from_str::<DatasetConfig>(&text).unwrap(), cfg);
        }
        let partial: ProsQaConfig = serde_json::from_str(r#"{"max_steps": 5}"#).unwrap();
        assert_eq!(partial, ProsQaConfig { max_steps: 5, ..ProsQaConfig::default() });
        assert!(serde_json::from_str::<ProntoQaConfig>(r#"{"hops": 3}"#).is_err());
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.json");
        fs::write(&bad, "[{\"question\": 1}]").unwrap();
        let err = read_samples(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.json"), "{err}");
        let cfg =
            DatasetConfig::ProntoQa(ProntoQaConfig { min_hops: 0, ..ProntoQaConfig::default() });
        let err = generate_splits(&cfg, (1, 1, 1), 0).unwrap_err().to_string();
        assert!(err.contains("min_hops"), "{err}");
        // A sampler with one possible question cannot fill two slots.
        let one = read_samples(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/datasets/prosqa/prosqa_valid.json"
        )))
        .unwrap()
        .swap_remove(0);
        let mut rng = StdRng::seed_from_u64(0);
        let result = fill_with("test", &mut rng, 2, &mut HashSet::new(), |_, _| Ok(one.clone()));
        let err = result.map(|s| s.len()).unwrap_err();
        assert!(matches!(err, DatasetError::Exhausted { have: 1, .. }), "{err}");
    }
}
