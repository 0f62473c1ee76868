//! Data-parallel training over MPI: two ranks started by `mpirun` end with the weights of
//! one rank with twice the accumulation (dropout on, so its seeds must not depend on the
//! rank), also through a resume with another number of ranks, and also with the optimizer
//! state sharded across the ranks; a rank that dies ends the job with an error naming it. Needs the `mpi` feature (`cargo xtask test` enables it) and
//! OpenMPI (`cargo xtask setup` installs it).
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;

use coconut_model::testing::assert_close;
use coconut_testing::Tolerance;
use coconut_trainer::checkpoint::{list_checkpoints, read_state};
use common::{last_checkpoint, succeed, weights, write_config_with_model, SMALL_GPT2};

/// `mpirun -n <ranks>` on the `coconut` binary, allowed to run as root (CI does).
fn mpirun(ranks: usize, args: &[&str]) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["-n", &ranks.to_string(), "--oversubscribe"])
        .arg(env!("CARGO_BIN_EXE_coconut"))
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("RUST_LOG", "warn");
    cmd
}

fn train(ranks: usize, config: &Path) -> Command {
    if ranks == 1 {
        return common::train(config);
    }
    mpirun(ranks, &["train-all-stages", "--config", config.to_str().unwrap()])
}

/// A run of 24 samples in micro-batches of 4 with dropout: six micro-batches an epoch, so
/// three optimizer steps with two micro-batches each.
fn config(dir: &Path, name: &str, grad_accum: usize, epochs: usize) -> PathBuf {
    config_with(dir, name, grad_accum, epochs, "")
}

/// [`config`] with more `[train]` keys.
fn config_with(dir: &Path, name: &str, grad_accum: usize, epochs: usize, train: &str) -> PathBuf {
    let model = format!("{SMALL_GPT2}\ndropout = 0.1");
    let train = format!("grad_accum = {grad_accum}\n{train}");
    let path = write_config_with_model(dir, name, &model, &train);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("max_train_samples = 32", "max_train_samples = 24")
        .replace("num_epochs = 3", &format!("num_epochs = {epochs}"));
    std::fs::write(&path, text).unwrap();
    path
}

fn assert_same_weights(a: &Path, b: &Path, what: &str) {
    let (a, b) = (weights(a), weights(b));
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert_close(y, x, Tolerance::new(1e-5, 1e-7), &format!("{what}: {name}"));
    }
}

#[test]
fn two_ranks_give_the_weights_of_one_rank_with_twice_the_accumulation() {
    let dir = tempfile::tempdir().unwrap();
    let one = config(dir.path(), "one", 2, 1);
    succeed(train(1, &one));
    let two = config(dir.path(), "two", 1, 1);
    succeed(train(2, &two));
    let (one_run, two_run) = (dir.path().join("one"), dir.path().join("two"));
    assert_eq!(read_state(&last_checkpoint(&two_run)).unwrap().global_step, 3);
    assert_same_weights(&last_checkpoint(&one_run), &last_checkpoint(&two_run), "2 ranks");
    // Rank 0 alone wrote the run folder: one metrics line per step, not two.
    let steps = std::fs::read_to_string(two_run.join("metrics.jsonl")).unwrap();
    assert!(two_run.join("report.md").exists());
    assert_eq!(steps.lines().filter(|l| l.contains("\"kind\":\"epoch\"")).count(), 1);

    // Two epochs straight on one rank, against one epoch on two ranks resumed on one.
    let straight = config(dir.path(), "straight", 2, 2);
    succeed(train(1, &straight));
    let resumed = config(dir.path(), "resumed", 1, 1);
    succeed(train(2, &resumed));
    let more = config(dir.path(), "resumed", 2, 2);
    succeed(train(1, &more));
    let (a, b) = (dir.path().join("straight"), dir.path().join("resumed"));
    assert_eq!(read_state(&last_checkpoint(&b)).unwrap().global_step, 6);
    assert_same_weights(&last_checkpoint(&a), &last_checkpoint(&b), "resumed on 1 rank");

    // Another step size is refused, naming what changed.
    let other = config(dir.path(), "resumed", 1, 3);
    let out = train(1, &other).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("grad_accum x ranks"), "{err}");
}

/// The optimizer state sharded over 2 ranks (ZeRO-1) gives the weights of 2 replicated
/// ranks and of 1 rank with twice the accumulation (dropout on), in f32 and in bf16; so
/// does a run cut short after a mid-epoch checkpoint and resumed, sharded on 2 ranks, on 1
/// rank alone, or from a replicated run's checkpoint.
#[test]
fn a_sharded_optimizer_gives_the_weights_of_a_replicated_one() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str| dir.path().join(name);
    let every_step = "save_every_steps = 1\nkeep_last = 0";
    let sharded = format!("{every_step}\nshard_optimizer = true");
    succeed(train(1, &config_with(dir.path(), "straight", 2, 2, every_step)));
    succeed(train(2, &config_with(dir.path(), "replicated", 1, 2, every_step)));
    succeed(train(2, &config_with(dir.path(), "zero", 1, 2, &sharded)));
    let reference = last_checkpoint(&run("straight"));
    assert_same_weights(&reference, &last_checkpoint(&run("replicated")), "replicated");
    assert_same_weights(&reference, &last_checkpoint(&run("zero")), "sharded");
    // One optimizer file per rank, both in the one manifest.
    let ckpt = last_checkpoint(&run("zero"));
    let manifest = std::fs::read_to_string(ckpt.join("manifest.json")).unwrap();
    for part in ["optimizer-part-0-of-2.safetensors", "optimizer-part-1-of-2.safetensors"] {
        assert!(ckpt.join(part).is_file() && manifest.contains(part), "{part}: {manifest}");
    }
    assert!(!ckpt.join("optimizer.safetensors").exists());

    // In bf16 the f32 masters are split across the ranks too: gathered for each
    // checkpoint's model folder, and cut into parts again from it on resume.
    let bf16 = format!("{every_step}\nprecision = \"bf16\"");
    let bf16_sharded = format!("{bf16}\nshard_optimizer = true");
    succeed(train(2, &config_with(dir.path(), "bf16", 1, 2, &bf16)));
    succeed(train(2, &config_with(dir.path(), "bf16-zero", 1, 2, &bf16_sharded)));
    let bf16_reference = last_checkpoint(&run("bf16"));
    assert_same_weights(&bf16_reference, &last_checkpoint(&run("bf16-zero")), "bf16 sharded");

    let runs = [
        ("zero-again", "zero", 2, 1, sharded.as_str(), &reference),
        ("zero-to-one", "zero", 1, 2, every_step, &reference),
        ("replicated-to-zero", "replicated", 2, 1, sharded.as_str(), &reference),
        ("bf16-zero-again", "bf16-zero", 2, 1, bf16_sharded.as_str(), &bf16_reference),
    ];
    for (name, from, ranks, grad_accum, train_keys, expected) in runs {
        // What a kill after the second epoch's first step leaves on disk.
        common::copy_tree(&run(from), &run(name));
        for ckpt in list_checkpoints(&run(name).join("checkpoints")) {
            if read_state(&ckpt).unwrap().global_step > 4 {
                std::fs::remove_dir_all(&ckpt).unwrap();
            }
        }
        assert_eq!(read_state(&last_checkpoint(&run(name))).unwrap().global_step, 4);
        succeed(train(ranks, &config_with(dir.path(), name, grad_accum, 2, train_keys)));
        assert_same_weights(expected, &last_checkpoint(&run(name)), name);
    }
}

#[test]
fn a_rank_that_dies_ends_the_job_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), "dies", 1, 50);
    let started = Instant::now();
    // Rank 1 is killed once training runs; mpirun must end rank 0 too.
    let mut child = mpirun(2, &["train-all-stages", "--config", path.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = dir.path().join("dies/metrics.jsonl");
    while !std::fs::read_to_string(&metrics).is_ok_and(|m| m.contains("\"kind\":\"step\"")) {
        assert!(started.elapsed() < Duration::from_secs(120), "no training step");
        std::thread::sleep(Duration::from_millis(20));
    }
    let rank1 = rank_pid(child.id(), 1).expect("rank 1's process");
    let killed_at = Instant::now();
    Command::new("kill").args(["-9", &rank1.to_string()]).status().unwrap();
    let out: Output = {
        let deadline = killed_at + Duration::from_secs(60);
        loop {
            if let Some(_status) = child.try_wait().unwrap() {
                break child.wait_with_output().unwrap();
            }
            assert!(Instant::now() < deadline, "rank 0 still runs 60 s after rank 1 died");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("rank 1"), "the error names the rank: {err}");
    // Every checkpoint left loads (none is half-written).
    for ckpt in list_checkpoints(&dir.path().join("dies/checkpoints")) {
        read_state(&ckpt).unwrap();
    }
}

/// The pid of the `coconut` process of `rank` under the mpirun process `launcher`.
fn rank_pid(launcher: u32, rank: usize) -> Option<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{launcher}/task/{launcher}/children")).ok()?;
    children.split_whitespace().filter_map(|p| p.parse::<u32>().ok()).find(|pid| {
        std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
            env.split(|&b| b == 0).any(|v| v == format!("OMPI_COMM_WORLD_RANK={rank}").as_bytes())
        })
    })
}
