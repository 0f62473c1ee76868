//! `data` and `stats`: generated ProsQA / ProntoQA splits, GSM8k conversion, statistics.
//! Existing files are never overwritten unless `--force` says so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use coconut_curriculum::{load_samples, save_samples};
use coconut_datasets::{
    format_side_by_side, generate_splits, samples_json, sha256_hex, write_atomic, write_samples,
    DatasetConfig, DatasetKind, DatasetStats, GenerateConfig, Preset,
};
use coconut_trainer::RunConfig;

/// A split of a dataset.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The validation split.
    Valid,
    /// The test split.
    Test,
}

impl Split {
    /// `valid` or `test`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Valid => "valid",
            Split::Test => "test",
        }
    }
}

/// Arguments of `coconut data`.
#[derive(clap::Args, Debug)]
pub struct DataArgs {
    /// Folder that receives `<name>/{train,valid,test}.json`.
    #[arg(long, default_value = "datasets")]
    out: PathBuf,
    /// Which generated datasets (default: both, unless GSM8k files are given to convert).
    #[arg(long = "kind", value_parser = one_of::<DatasetKind>(DatasetKind::ALL.map(DatasetKind::key)))]
    kinds: Vec<DatasetKind>,
    /// `paper` (the paper's difficulty and split sizes) or `small` (fast CPU training).
    #[arg(long, default_value = "paper", value_parser = one_of::<Preset>(Preset::ALL.map(Preset::key)))]
    preset: Preset,
    /// Train, valid and test sizes, e.g. `5000,200,300` (default: the paper's).
    #[arg(long)]
    sizes: Option<String>,
    /// Generator seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// GSM8k training file to convert (iCoT `.txt`, Coconut `.json` or original `.jsonl`).
    #[arg(long)]
    gsm8k_train: Option<PathBuf>,
    /// GSM8k validation file to convert.
    #[arg(long)]
    gsm8k_valid: Option<PathBuf>,
    /// GSM8k test file to convert.
    #[arg(long)]
    gsm8k_test: Option<PathBuf>,
    /// Replace files that already exist.
    #[arg(long)]
    force: bool,
}

/// A parser of the argument values `names`, each read as a `T` (and listed by `--help`).
fn one_of<T>(names: [&'static str; 2]) -> impl clap::builder::TypedValueParser<Value = T>
where
    T: std::str::FromStr<Err = String> + Clone + Send + Sync + 'static,
{
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(names)
        .map(|name| name.parse::<T>().expect("one of the names listed"))
}

/// Generates the requested datasets and converts GSM8k files.
pub fn run(args: &DataArgs) -> Result<()> {
    // With GSM8k files to convert and no --kind, only the conversion runs.
    let converting =
        [&args.gsm8k_train, &args.gsm8k_valid, &args.gsm8k_test].iter().any(|f| f.is_some());
    let kinds = match (args.kinds.is_empty(), converting) {
        (false, _) => args.kinds.clone(),
        (true, true) => Vec::new(),
        (true, false) => DatasetKind::ALL.to_vec(),
    };
    for kind in kinds {
        let name = kind.key();
        let sizes = match &args.sizes {
            Some(s) => parse_sizes(s)?,
            None => kind.paper_sizes(),
        };
        let dir = args.out.join(match args.preset {
            Preset::Small => format!("{name}-small"),
            Preset::Paper => name.to_string(),
        });
        let paths = ["train", "valid", "test"].map(|s| dir.join(format!("{s}.json")));
        let missing: Vec<&PathBuf> = paths.iter().filter(|p| args.force || !p.exists()).collect();
        if missing.is_empty() {
            println!("{}: all three splits exist (use --force to regenerate)", dir.display());
            continue;
        }
        let splits = generate_splits(&DatasetConfig::preset(kind, args.preset), sizes, args.seed)?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (path, samples) in paths.iter().zip([&splits.train, &splits.valid, &splits.test]) {
            if missing.contains(&path) {
                write_samples(path, samples)?;
                println!("wrote {} ({} samples)", path.display(), samples.len());
            }
        }
    }
    for (split, file) in
        [("train", &args.gsm8k_train), ("valid", &args.gsm8k_valid), ("test", &args.gsm8k_test)]
    {
        let Some(file) = file else { continue };
        let dst = args.out.join("gsm8k").join(format!("{split}.json"));
        if dst.exists() && !args.force {
            bail!("{} exists (use --force to replace it)", dst.display());
        }
        let samples = load_samples(file)?;
        std::fs::create_dir_all(dst.parent().expect("a folder"))?;
        save_samples(&dst, &samples)?;
        println!("converted {} -> {} ({} samples)", file.display(), dst.display(), samples.len());
    }
    Ok(())
}

fn parse_sizes(text: &str) -> Result<(usize, usize, usize)> {
    let parts: Vec<usize> =
        text.split(',').map(|p| p.trim().parse::<usize>()).collect::<Result<_, _>>().with_context(
            || format!("--sizes {text:?}: expected three numbers, train,valid,test"),
        )?;
    match parts.as_slice() {
        [a, b, c] => Ok((*a, *b, *c)),
        _ => bail!("--sizes {text:?}: expected three numbers, train,valid,test"),
    }
}

/// The file beside generated data that records what made it.
pub const MANIFEST_FILE: &str = "generated.json";

/// What generated a config's data files: the generator settings and each file's SHA-256.
/// Written after the files, so its presence means they are complete.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct DataManifest {
    generator: GenerateConfig,
    /// SHA-256 (hex) of each file, by its path as the config names it.
    files: BTreeMap<String, String>,
}

/// Makes sure the data files of a config that asks for them (`data.generate`) are the ones
/// its generator settings give. A manifest beside the training file
/// ([`MANIFEST_FILE`]) records the settings and each file's SHA-256; when the settings
/// changed, or a file is missing or not the one recorded (truncated, edited), all files are
/// generated again. Files are written atomically, the manifest last. Files that exist
/// without a manifest are adopted only if they are exactly what the generator gives, and
/// are otherwise an error: data we did not write is never overwritten.
pub fn ensure_generated(config: &RunConfig) -> Result<()> {
    let Some(g) = &config.data.generate else { return Ok(()) };
    let d = &config.data;
    let paths: Vec<&Path> = [Some(d.train.as_path()), Some(d.valid.as_path()), d.test.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    let manifest_path = d.train.with_file_name(MANIFEST_FILE);
    let recorded: Option<DataManifest> = std::fs::read_to_string(&manifest_path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    let on_disk = |p: &Path| std::fs::read(p).ok().map(|bytes| sha256_hex(&bytes));
    if let Some(m) = &recorded {
        let intact =
            paths.iter().all(|p| m.files.get(&p.display().to_string()) == on_disk(p).as_ref());
        if m.generator == *g && intact {
            return Ok(());
        }
    }

    let started = std::time::Instant::now();
    let sizes = (g.sizes[0], g.sizes[1], g.sizes[2]);
    let splits = generate_splits(&g.dataset_config().map_err(anyhow::Error::msg)?, sizes, g.seed)?;
    let texts: Vec<String> =
        [&splits.train, &splits.valid, &splits.test].map(|s| samples_json(s)).to_vec();
    if recorded.is_none() {
        for (path, text) in paths.iter().zip(&texts) {
            if path.exists() && on_disk(path) != Some(sha256_hex(text.as_bytes())) {
                bail!(
                    "{} exists but is not what data.generate makes ({} is missing): move it away, \
                     or remove data.generate to train on it as it is",
                    path.display(),
                    manifest_path.display()
                );
            }
        }
    }
    let mut files = BTreeMap::new();
    for (path, text) in paths.iter().zip(&texts) {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        write_atomic(path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        files.insert(path.display().to_string(), sha256_hex(text.as_bytes()));
    }
    let manifest = DataManifest { generator: g.clone(), files };
    let json = serde_json::to_string_pretty(&manifest)? + "\n";
    write_atomic(&manifest_path, json.as_bytes())
        .with_context(|| format!("writing {}", manifest_path.display()))?;
    tracing::info!(
        "generated {} {} data in {:.1} s",
        g.preset.key(),
        g.kind.name(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Prints a file's statistics, beside a reference file's when given.
pub fn stats(file: &Path, reference: Option<&Path>) -> Result<()> {
    let ours = DatasetStats::from_file(file)?;
    let name = file.display().to_string();
    match reference {
        Some(r) => {
            let theirs = DatasetStats::from_file(r)?;
            println!(
                "{}",
                format_side_by_side((&r.display().to_string(), &theirs), (&name, &ours))
            );
        }
        None => println!("{}", format_side_by_side((&name, &ours), (&name, &ours))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, seed: u64, sizes: [usize; 3]) -> RunConfig {
        let text = format!(
            r#"
name = "t"
[data]
train = "{d}/data/train.json"
valid = "{d}/data/valid.json"
test = "{d}/data/test.json"
generate = {{ kind = "prosqa", preset = "small", sizes = {sizes:?}, seed = {seed} }}
[model]
"#,
            d = dir.display()
        );
        RunConfig::parse(&text, Path::new("t.toml")).unwrap()
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn generated_data_follows_its_settings_and_is_rebuilt_when_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let first = config(dir.path(), 0, [20, 5, 5]);
        ensure_generated(&first).unwrap();
        let train = first.data.train.clone();
        let original = read(&train);
        assert!(train.with_file_name(MANIFEST_FILE).exists());

        // Other settings: other data.
        ensure_generated(&config(dir.path(), 1, [20, 5, 5])).unwrap();
        assert_ne!(read(&train), original);
        ensure_generated(&config(dir.path(), 1, [30, 5, 5])).unwrap();
        assert_eq!(read_samples_len(&train), 30);

        // Back to the first settings, then a truncated file is rebuilt.
        ensure_generated(&first).unwrap();
        assert_eq!(read(&train), original);
        std::fs::write(&train, &original[..original.len() / 2]).unwrap();
        ensure_generated(&first).unwrap();
        assert_eq!(read(&train), original);
    }

    #[test]
    fn data_without_a_manifest_is_adopted_only_when_it_is_the_generators() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 0, [20, 5, 5]);
        ensure_generated(&cfg).unwrap();
        let manifest = cfg.data.train.with_file_name(MANIFEST_FILE);
        std::fs::remove_file(&manifest).unwrap();
        ensure_generated(&cfg).unwrap();
        assert!(manifest.exists(), "identical files are adopted");

        std::fs::remove_file(&manifest).unwrap();
        std::fs::write(&cfg.data.valid, "[]\n").unwrap();
        let err = ensure_generated(&cfg).unwrap_err().to_string();
        assert!(err.contains("valid.json") && err.contains(MANIFEST_FILE), "{err}");
        assert_eq!(read(&cfg.data.valid), "[]\n", "a file we did not write is left alone");
    }

    fn read_samples_len(path: &Path) -> usize {
        load_samples(path).unwrap().len()
    }
}
