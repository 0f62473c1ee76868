//! `cargo xtask`: the project's task runner.
//!
//! - `setup [--cuda]` installs LibTorch for tch (PyTorch 2.11.0) from PyPI into `.libtorch/`.
//! - `test` installs LibTorch, and OpenMPI with the system's package manager where it can,
//!   then runs the whole workspace's tests, MPI's included.
//! - every other command (`train-all-stages`, `eval`, `data`, `compare`, `bench`, `stats`, ...)
//!   installs LibTorch, then runs the `coconut` binary in release mode with the same
//!   arguments. One process needs no MPI: the binary neither links nor loads it.
//!   `--nproc-per-node N` starts N ranks with `mpirun`, of the MPI flavour of the binary
//!   (built with the `mpi` feature, as `coconut-mpi`), after making OpenMPI available;
//!   `bench` runs the MPI flavour where OpenMPI is installed, for its data-parallel lines.

mod setup;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

/// The `coconut` binary's commands, each run by `cargo xtask <command>` in release mode.
/// (xtask cannot link the binary, which needs LibTorch; a test of the binary checks that
/// this list names every command it has.)
const COCONUT_COMMANDS: &str = "\
Commands of the coconut binary (cargo xtask <command> [args], after setup):
  train-all-stages  Run a config's whole staged schedule and write the run folder
  eval              Evaluate checkpoints (one comparison table for several)
  ask               Ask a trained checkpoint a question of your own, with its thoughts
  compare           Coconut, CoT, No-CoT and ablations over seeds: table and plot
  data              Generate ProsQA / ProntoQA splits, or convert GSM8k files
  stats             Print a dataset file's statistics, beside a reference file's
  bench             Benchmarks at one thread; prints JSON lines and ratios
  check-device      Check a GPU against the CPU and time the GPT-2 shape on it
  analyze           The paper's latent-search analysis of a checkpoint on ProsQA data
  import-config     Turn an official Coconut YAML config into a run config (TOML)

`cargo xtask <command> --help` documents each one's flags.";

#[derive(Parser)]
#[command(name = "cargo xtask", about = "coconut-rs project tasks", after_help = COCONUT_COMMANDS)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install LibTorch (CPU by default) into .libtorch/, reusing a per-user wheel cache.
    Setup {
        /// Install the CUDA build and compile the release binary against it (target/cuda).
        #[arg(long)]
        cuda: bool,
    },
    /// Install LibTorch if needed, then run every test of the workspace.
    Test {
        /// Extra arguments for `cargo test` (for example a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Any command of the `coconut` binary (listed below).
    #[command(external_subcommand)]
    Coconut(Vec<String>),
}

fn main() -> Result<()> {
    let root = project_root();
    match Cli::parse().command {
        Task::Setup { cuda: false } => {
            setup::libtorch(&root, setup::Flavor::Cpu)?;
        }
        Task::Setup { cuda: true } => {
            let libtorch = setup::libtorch(&root, setup::Flavor::Cuda)?;
            // A separate target folder: switching LIBTORCH in one folder rebuilds torch-sys.
            let status = cargo(&root)
                .args(["build", "--release", "-p", "coconut-cli"])
                .env("LIBTORCH", &libtorch)
                .env("CARGO_TARGET_DIR", root.join("target/cuda"))
                .status()?;
            check(status, "cargo build --release (CUDA)")?;
            let binary = root.join("target/cuda/release/coconut");
            check_cuda_build(&root, &binary)?;
            println!("CUDA binary: {}", binary.display());
        }
        Task::Test { args } => {
            setup::libtorch(&root, setup::Flavor::Cpu)?;
            setup::openmpi()?;
            let status = cargo(&root)
                .args(["test", "--workspace", "--all-features"])
                .args(&args)
                .status()?;
            check(status, "cargo test")?;
        }
        Task::Coconut(args) => {
            setup::libtorch(&root, setup::Flavor::Cpu)?;
            let plan = Plan::of(args, setup::openmpi_present())?;
            if plan.ranks.is_some() {
                setup::openmpi()?;
            }
            let binary = build_coconut(&root, plan.mpi)?;
            let status = match plan.ranks {
                None => Command::new(&binary).args(&plan.args).status()?,
                Some(n) => mpirun(n).arg(&binary).args(&plan.args).status()?,
            };
            check(status, &format!("coconut {}", plan.args.join(" ")))?;
        }
    }
    Ok(())
}

/// Runs the CUDA binary's device check on the CPU (it needs no GPU): the CUDA backend must
/// be compiled in, which a binary that dropped `libtorch_cuda.so` at link time fails, and
/// the plumbing checks must pass.
fn check_cuda_build(root: &Path, binary: &Path) -> Result<()> {
    let output = Command::new(binary)
        .args(["check-device", "--device", "cpu", "--skip-timings"])
        .current_dir(root)
        .output()
        .with_context(|| format!("could not start {}", binary.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprint!("{stdout}");
    if !stdout.lines().any(|l| l == "cuda_backend=compiled") {
        bail!(
            "{}: the CUDA backend is not compiled in (libtorch_cuda.so not linked)",
            binary.display()
        );
    }
    check(output.status, "coconut check-device --device cpu (CUDA build)")
}

/// How `cargo xtask <command> [args]` runs the coconut binary.
#[derive(Debug, PartialEq)]
struct Plan {
    /// The binary's arguments (`help-coconut` is its `help`).
    args: Vec<String>,
    /// `--nproc-per-node N`: N ranks started by `mpirun`.
    ranks: Option<usize>,
    /// Whether the MPI flavour of the binary runs (built with the `mpi` feature).
    mpi: bool,
}

impl Plan {
    /// The plan for a command's `args`, where OpenMPI is installed or not (`bench` uses it
    /// for its data-parallel lines when it is; one process never needs it).
    fn of(args: Vec<String>, openmpi_present: bool) -> Result<Self> {
        let (ranks, mut args) = take_nproc_per_node(args)?;
        if args.first().map(String::as_str) == Some("help-coconut") {
            args[0] = "help".to_string();
        }
        let bench = args.first().map(String::as_str) == Some("bench");
        let mpi = ranks.is_some() || (bench && openmpi_present);
        Ok(Self { args, ranks, mpi })
    }
}

/// Builds the release `coconut` binary and returns its path: without MPI, or its MPI
/// flavour, copied to `coconut-mpi` (both flavours share one target folder, so switching
/// between them recompiles nothing but a relink).
fn build_coconut(root: &Path, mpi: bool) -> Result<PathBuf> {
    let mut build = cargo(root);
    build.args(["build", "--quiet", "--release", "-p", "coconut-cli"]);
    if mpi {
        build.args(["--features", "mpi"]);
    }
    check(build.status()?, "cargo build --release -p coconut-cli")?;
    let binary = root.join("target/release/coconut");
    if !mpi {
        return Ok(binary);
    }
    let flavour = root.join("target/release/coconut-mpi");
    std::fs::copy(&binary, &flavour)
        .with_context(|| format!("copying {} to {}", binary.display(), flavour.display()))?;
    Ok(flavour)
}

/// Takes `--nproc-per-node N` (or `--nproc-per-node=N`) out of a command's arguments.
fn take_nproc_per_node(args: Vec<String>) -> Result<(Option<usize>, Vec<String>)> {
    let mut ranks = None;
    let mut rest = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let value = if arg == "--nproc-per-node" {
            args.next().context("--nproc-per-node needs a number of ranks")?
        } else if let Some(v) = arg.strip_prefix("--nproc-per-node=") {
            v.to_string()
        } else {
            rest.push(arg);
            continue;
        };
        let n: usize = value.parse().ok().filter(|&n| n > 0).with_context(|| {
            format!("--nproc-per-node {value:?}: expected a positive number of ranks")
        })?;
        ranks = Some(n);
    }
    Ok((ranks, rest))
}

/// `mpirun` starting `ranks` processes on this machine: allowed to run as root (CI and
/// containers do), more ranks than cores allowed, and no binding of a rank to one core (a
/// rank runs several threads when cores are to spare).
fn mpirun(ranks: usize) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["-n", &ranks.to_string(), "--oversubscribe", "--bind-to", "none"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    cmd
}

/// The workspace root (the parent of this crate).
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The cargo that runs us, in the workspace root.
fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root);
    cmd
}

fn check(status: std::process::ExitStatus, what: &str) -> Result<()> {
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Runs a command (a setup step) and fails with its name when it does. Its output goes to
/// stderr, so that stdout carries only what the coconut command prints
/// (`cargo xtask import-config a.yaml > run.toml` on a fresh clone).
fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .stdout(std::io::stderr())
        .status()
        .with_context(|| format!("could not start {what}"))?;
    check(status, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(args: &[&str], openmpi_present: bool) -> Plan {
        Plan::of(args.iter().map(|a| a.to_string()).collect(), openmpi_present).unwrap()
    }

    #[test]
    fn one_process_never_needs_mpi() {
        for command in ["train-all-stages", "eval", "ask", "analyze", "data", "compare"] {
            for openmpi_present in [false, true] {
                let p = plan(&[command, "--config", "c.toml"], openmpi_present);
                assert_eq!((p.ranks, p.mpi), (None, false), "{command}");
            }
        }
        let p = plan(&["train-all-stages", "--nproc-per-node", "2", "--config", "c.toml"], false);
        assert_eq!((p.ranks, p.mpi), (Some(2), true));
        assert_eq!(p.args, ["train-all-stages", "--config", "c.toml"]);
        assert!(plan(&["bench"], true).mpi && !plan(&["bench"], false).mpi);
        assert_eq!(plan(&["help-coconut"], false).args, ["help"]);
        assert!(Plan::of(vec!["eval".into(), "--nproc-per-node=0".into()], false).is_err());
    }

    /// The binary a one-process command runs, built as `cargo xtask` builds it (no
    /// features), links no MPI library: its ELF `NEEDED` entries name none. Built in a
    /// target folder of its own, so that the workspace's test binaries (built with every
    /// feature) stay as they are.
    #[test]
    fn the_default_binary_needs_no_mpi_library() {
        let root = project_root();
        let output = cargo(&root)
            .args(["build", "--quiet", "-p", "coconut-cli", "--bin", "coconut"])
            .args(["--message-format", "json-render-diagnostics"])
            .env("CARGO_TARGET_DIR", root.join("target/default-features"))
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let executable = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find_map(|message| message.get("executable")?.as_str().map(PathBuf::from))
            .expect("cargo names the built executable");
        let bytes = std::fs::read(&executable).unwrap();
        let elf = object::read::elf::ElfFile64::<object::Endianness>::parse(&*bytes).unwrap();
        let needed = needed_libraries(&elf);
        assert!(needed.iter().any(|n| n.starts_with("libtorch")), "links LibTorch: {needed:?}");
        assert!(!needed.iter().any(|n| n.contains("mpi")), "links MPI: {needed:?}");
    }

    /// The `DT_NEEDED` entries of an ELF file's dynamic section.
    fn needed_libraries(elf: &object::read::elf::ElfFile64<object::Endianness>) -> Vec<String> {
        use object::read::elf::Dyn;
        let (endian, data, sections) = (elf.endian(), elf.data(), elf.elf_section_table());
        let (entries, strings) =
            sections.dynamic(endian, data).unwrap().expect("a dynamically linked executable");
        let strings = sections.strings(endian, data, strings).unwrap();
        entries
            .iter()
            .filter(|d| d.tag32(endian) == Some(object::elf::DT_NEEDED))
            .map(|d| String::from_utf8_lossy(d.string(endian, strings).unwrap()).into_owned())
            .collect()
    }
}
