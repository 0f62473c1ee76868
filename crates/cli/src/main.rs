//! `coconut`: train, evaluate and inspect Coconut models. `cargo xtask <command>` runs it.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::{Parser, Subcommand};
use coconut_bench::check_device;
use coconut_runs::{analyze, ask, compare, data, evaluate, import_config, run};
use coconut_trainer::Ranks;
use tracing_subscriber::EnvFilter;

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
        /// Override a config key, for example `--set train.lr=3e-4` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Evaluate checkpoints (one comparison table for several).
    Eval(evaluate::EvalArgs),
    /// Ask a trained checkpoint a question of your own: the answer, and each continuous
    /// thought's top tokens through the LM head.
    Ask {
        /// The checkpoint folder (ours carry their run config; for a bare HF folder pass
        /// --config).
        #[arg(long)]
        checkpoint: PathBuf,
        /// The question, worded like the training data's questions.
        question: String,
        /// Continuous thoughts in the prompt (default: as many as the checkpoint's stage
        /// gives, as `eval` uses).
        #[arg(long)]
        thoughts: Option<usize>,
        /// Top tokens shown per thought.
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// Stop after this many new tokens (default: the run's eval.max_new_tokens).
        #[arg(long)]
        max_new_tokens: Option<usize>,
        /// `cpu`, `cuda` or `cuda:N`.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Run config for a bare HF folder (the embedded default when absent).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the reply as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write generated datasets to `datasets/<name>/{train,valid,test}.json`, or convert GSM8k.
    Data(data::DataArgs),
    /// Print a dataset file's statistics, beside a reference file's.
    Stats {
        /// The dataset file.
        file: PathBuf,
        /// A file to compare with (for example the real ProsQA validation split).
        #[arg(long)]
        reference: Option<PathBuf>,
    },
    /// Train Coconut, CoT, No-CoT and the paper's ablations on the same data, model and
    /// epochs, over seeds; a table of means and deviations, a bar plot, and the Coconut
    /// model with fewer thoughts.
    Compare(compare::CompareArgs),
    /// Check a device against the CPU (loss, gradients, AdamW, generation, checkpoints,
    /// bf16) and time the GPT-2 shape on it; the last line is `device_check=pass|fail`.
    CheckDevice(check_device::CheckDeviceArgs),
    /// Benchmarks at one thread with the shapes of the PyTorch reference; prints JSON lines.
    Bench(coconut_bench::BenchArgs),
    /// The paper's latent-search analysis of a checkpoint on ProsQA-format data: the value
    /// of each graph node after k thoughts, as latent_search.json and plots.
    Analyze(analyze::AnalyzeArgs),
    /// Translate an args YAML of the official Coconut repository into a run config: the TOML
    /// goes to stdout, one line per decision to stderr.
    ImportConfig(import_config::ImportArgs),
}

fn main() {
    coconut_model::keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = dispatch(Cli::parse().command) {
        fail(&e);
    }
}

/// Prints `e` and exits: as the shell expects of a signal for a run stopped by one, 1
/// otherwise.
fn fail(e: &anyhow::Error) -> ! {
    eprintln!("error: {e:#}");
    let code = match e.downcast_ref::<coconut_trainer::TrainError>() {
        Some(coconut_trainer::TrainError::Interrupted { signal, .. }) => 128 + signal,
        _ => 1,
    };
    std::process::exit(code);
}

fn is_interrupted(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<coconut_trainer::TrainError>(),
        Some(coconut_trainer::TrainError::Interrupted { .. })
    )
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::TrainAllStages { config, overrides } => {
            let (mut config, path) = run::load_config(config.as_deref(), &overrides)?;
            let ranks = Arc::new(Ranks::from_launcher(config.device())?);
            config.train.device = ranks.device(config.device());
            let dir = match run::train_all_stages(config, &path, &ranks) {
                Ok(dir) => dir,
                // Ranks stopped by a signal stop together and finalise MPI together. Any
                // other error may be this rank's alone: MPI's finalisation is collective and
                // would wait for ranks that wait for this one, so it exits without it, and
                // the launcher ends the job, naming this rank.
                Err(e) if ranks.world_size() > 1 && !is_interrupted(&e) => fail(&e),
                Err(e) => return Err(e),
            };
            if ranks.is_main() {
                println!("{}", dir.display());
            }
            Ok(())
        }
        Command::Eval(args) => evaluate::run(&args),
        Command::Ask {
            checkpoint,
            question,
            thoughts,
            top,
            max_new_tokens,
            device,
            config,
            json,
        } => ask::run(&ask::AskArgs {
            checkpoint: &checkpoint,
            config: config.as_deref(),
            question: &question,
            thoughts,
            top,
            max_new_tokens,
            device: &device,
            json,
        }),
        Command::Data(args) => data::run(&args),
        Command::Stats { file, reference } => data::stats(&file, reference.as_deref()),
        Command::Compare(args) => compare::run(&args),
        Command::Bench(args) => coconut_bench::run(&args),
        Command::CheckDevice(args) => check_device::run(&args),
        Command::Analyze(args) => {
            let out = analyze::run(&args)?;
            println!("{}", out.display());
            Ok(())
        }
        Command::ImportConfig(args) => import_config::run(&args),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// `cargo xtask --help` lists the binary's commands from a list of its own (xtask builds
    /// without LibTorch, so it cannot ask the binary): every command must be on it.
    #[test]
    fn xtask_help_lists_every_command() {
        let xtask = include_str!("../../../xtask/src/main.rs");
        let listed = xtask.split("const COCONUT_COMMANDS").nth(1).expect("the list in xtask");
        let listed = listed.split("\";").next().unwrap();
        for command in super::Cli::command().get_subcommands() {
            let name = command.get_name();
            assert!(listed.contains(&format!("\n  {name} ")), "{name} is missing in xtask's help");
        }
    }
}
