//! `coconut`: train, evaluate and inspect Coconut models. `cargo xtask <command>` runs it.

mod bench;
mod data;
mod eval_cmd;
mod report;
mod run;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// The configuration run when no `--config` is given: a small GPT-2 trained from scratch on
/// generated data, sized for a CPU.
pub const DEFAULT_CONFIG: &str = include_str!("../../../configs/default.toml");

#[derive(Parser)]
#[command(
    name = "coconut",
    version,
    about = "Chain of Continuous Thought: training language models to reason in a latent space"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a config's whole staged schedule, evaluating after every epoch, and write the
    /// run folder (checkpoints, metrics, report). Resumes an interrupted run.
    TrainAllStages {
        /// Run config (TOML); the embedded configs/default.toml when absent.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Evaluate checkpoints (one comparison table for several).
    Eval {
        /// Run config giving the data and, for HF folders without a run state, the curriculum.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Checkpoint folders (ours, or an HF GPT-2 folder with tokenizer.json).
        #[arg(long = "checkpoint", required = true)]
        checkpoints: Vec<PathBuf>,
        /// Which split to evaluate.
        #[arg(long, default_value = "valid")]
        split: data::Split,
        /// Prompt stage (default: the final stage of the checkpoint's curriculum).
        #[arg(long)]
        stage: Option<usize>,
        /// Evaluate only the first N samples (0 = all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
        /// Inspect the thoughts of this many samples.
        #[arg(long, default_value_t = 3)]
        inspect: usize,
        /// Where to write metrics, predictions and the table (default: beside each checkpoint).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write generated datasets to datasets/<name>/{train,valid,test}.json, or convert GSM8k.
    Data(data::DataArgs),
    /// Print a dataset file's statistics, beside a reference file's.
    Stats {
        /// The dataset file.
        file: PathBuf,
        /// A file to compare with (for example the real ProsQA validation split).
        #[arg(long)]
        reference: Option<PathBuf>,
    },
    /// Train Coconut, CoT and No-CoT on the same data and budget and print the table.
    Compare {
        /// Run config (TOML); the embedded default when absent.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Benchmarks at one thread with the shapes of the PyTorch reference; prints JSON lines.
    Bench(bench::BenchArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = dispatch(Cli::parse().command) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::TrainAllStages { config } => {
            let (config, path) = run::load_config(config.as_deref())?;
            let dir = run::train_all_stages(config, &path)?;
            println!("{}", dir.display());
            Ok(())
        }
        Command::Eval { config, checkpoints, split, stage, limit, inspect, out } => {
            let (config, path) = run::load_config(config.as_deref())?;
            eval_cmd::eval(
                &config,
                &path,
                &checkpoints,
                split,
                stage,
                limit,
                inspect,
                out.as_deref(),
            )
        }
        Command::Data(args) => data::run(&args),
        Command::Stats { file, reference } => data::stats(&file, reference.as_deref()),
        Command::Compare { config } => {
            let (config, path) = run::load_config(config.as_deref())?;
            run::compare(config, &path)
        }
        Command::Bench(args) => bench::run(&args),
    }
}
