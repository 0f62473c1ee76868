//! `data` and `stats`: generated ProsQA / ProntoQA splits, GSM8k conversion, statistics.
//! Existing files are never overwritten unless `--force` says so.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use coconut_curriculum::{load_samples, save_samples};
use coconut_datasets::{
    format_side_by_side, generate_splits, write_samples, DatasetConfig, DatasetKind, DatasetStats,
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
    /// Which generated datasets (default: both).
    #[arg(long = "kind", value_parser = ["prosqa", "prontoqa"])]
    kinds: Vec<String>,
    /// `paper` (the paper's difficulty and split sizes) or `small` (fast CPU training).
    #[arg(long, default_value = "paper", value_parser = ["paper", "small"])]
    preset: String,
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

fn kind_of(name: &str) -> Result<DatasetKind> {
    Ok(match name {
        "prosqa" => DatasetKind::ProsQa,
        "prontoqa" => DatasetKind::ProntoQa,
        other => bail!("unknown dataset kind {other:?} (prosqa or prontoqa)"),
    })
}

fn preset(kind: DatasetKind, preset: &str) -> DatasetConfig {
    if preset == "small" {
        DatasetConfig::small(kind)
    } else {
        DatasetConfig::paper(kind)
    }
}

/// Generates the requested datasets and converts GSM8k files.
pub fn run(args: &DataArgs) -> Result<()> {
    let kinds = if args.kinds.is_empty() {
        vec!["prosqa".to_string(), "prontoqa".to_string()]
    } else {
        args.kinds.clone()
    };
    for name in &kinds {
        let kind = kind_of(name)?;
        let sizes = match &args.sizes {
            Some(s) => parse_sizes(s)?,
            None => kind.paper_sizes(),
        };
        let dir = args.out.join(if args.preset == "small" {
            format!("{name}-small")
        } else {
            name.clone()
        });
        let paths = ["train", "valid", "test"].map(|s| dir.join(format!("{s}.json")));
        let missing: Vec<&PathBuf> = paths.iter().filter(|p| args.force || !p.exists()).collect();
        if missing.is_empty() {
            println!("{}: all three splits exist (use --force to regenerate)", dir.display());
            continue;
        }
        let splits = generate_splits(&preset(kind, &args.preset), sizes, args.seed)?;
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

/// Generates the data files of a config that asks for it (`data.generate`), writing only
/// the files that are missing. Generation is deterministic, so existing files agree.
pub fn ensure_generated(config: &RunConfig) -> Result<()> {
    let Some(g) = &config.data.generate else { return Ok(()) };
    let d = &config.data;
    let paths: Vec<(usize, &Path)> =
        [Some(d.train.as_path()), Some(d.valid.as_path()), d.test.as_deref()]
            .into_iter()
            .enumerate()
            .filter_map(|(i, p)| Some((i, p?)))
            .collect();
    if paths.iter().all(|(_, p)| p.exists()) {
        return Ok(());
    }
    let kind = kind_of(&g.kind)?;
    let started = std::time::Instant::now();
    let splits =
        generate_splits(&preset(kind, &g.preset), (g.sizes[0], g.sizes[1], g.sizes[2]), g.seed)?;
    let all = [&splits.train, &splits.valid, &splits.test];
    for (i, path) in paths {
        if !path.exists() {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            write_samples(path, all[i])?;
        }
    }
    tracing::info!(
        "generated {} {} data in {:.1} s",
        g.preset,
        kind.name(),
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
