//! Fault injection against the `coconut` binary: kill -9 at seeded random moments (the seed
//! is printed; `FAULT_SEED=n` replays one), SIGTERM, two runs on one folder, and corrupt
//! files of every kind in a checkpoint. Each test asserts that nothing completed is lost: a
//! finished run's files stay, every listed checkpoint loads, and a resumed run ends with the
//! weights of an uninterrupted one. (Write failures and a full disk are injected through the
//! checkpoint writer's seam in `crates/trainer/tests/checkpoint_faults.rs`.)

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

mod common;

use coconut_trainer::checkpoint::{list_checkpoints, load_checkpoint, read_state};
use coconut_trainer::flat::Partition;
use common::{
    assert_same_metrics, assert_same_weights, coconut, copy_tree, eval_two, fixture_samples,
    last_checkpoint, step_lines, succeed, train, write_config,
};
use rand::{Rng, SeedableRng};
use tch::Device;

/// Every listed checkpoint of `run` loads whole.
fn assert_checkpoints_load(run: &Path, context: &str) {
    for ckpt in list_checkpoints(&run.join("checkpoints")) {
        let adamw = coconut_trainer::adamw::AdamWConfig {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.01,
        };
        if let Err(e) = load_checkpoint(&ckpt, Device::Cpu, adamw, Partition::WHOLE) {
            panic!("{context}: {} does not load: {e}", ckpt.display());
        }
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(120), "waited in vain for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn kill_9_at_random_moments_resumes_to_the_same_weights() {
    let seed: u64 = match std::env::var("FAULT_SEED") {
        Ok(s) => s.parse().expect("FAULT_SEED is a number"),
        Err(_) => rand::rng().random(),
    };
    println!("FAULT_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let extra = "save_every_steps = 1";
    let straight = write_config(dir.path(), "straight", extra);
    let started = Instant::now();
    succeed(train(&straight));
    let full = started.elapsed();

    let killed = write_config(dir.path(), "killed", extra);
    let run = dir.path().join("killed");
    for kill in 0..4 {
        let mut child: Child = train(&killed).spawn().unwrap();
        // Anywhere in the run: start-up, a step, a checkpoint write, evaluation.
        let delay = full.mul_f64(rng.random_range(0.05..0.9));
        std::thread::sleep(delay);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_checkpoints_load(
            &run,
            &format!("after kill {kill} at {delay:?}, FAULT_SEED={seed}"),
        );
    }
    succeed(train(&killed));
    assert_same_weights(&last_checkpoint(&dir.path().join("straight")), &last_checkpoint(&run));
    assert_same_metrics(&dir.path().join("straight"), &run);
    assert_eq!(read_state(&last_checkpoint(&run)).unwrap().global_step, 24);
    for file in ["summary.json", "report.md", "predictions_valid.jsonl"] {
        assert!(run.join(file).exists(), "{file} missing, FAULT_SEED={seed}");
    }
}

#[test]
fn sigterm_checkpoints_the_position_and_the_rerun_resumes_there() {
    let dir = tempfile::tempdir().unwrap();
    // No step checkpoints: the one after SIGTERM is the stop's own.
    let straight = write_config(dir.path(), "straight", "log_every_steps = 1");
    succeed(train(&straight));
    let stopped = write_config(dir.path(), "stopped", "log_every_steps = 1");
    let run = dir.path().join("stopped");
    let child = train(&stopped).stderr(std::process::Stdio::piped()).spawn().unwrap();
    wait_for("a training step", || step_lines(&run) >= 2);
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + 15), "{err}");
    assert!(err.contains("stopped by signal 15"), "{err}");
    let at_stop = read_state(&last_checkpoint(&run)).unwrap();
    assert!(at_stop.global_step >= 2, "the stop's checkpoint holds its position");
    assert!(!run.join("summary.json").exists());

    succeed(train(&stopped));
    assert_same_weights(&last_checkpoint(&dir.path().join("straight")), &last_checkpoint(&run));
    // The epoch's train_loss and every step line's loss too: the sums behind them are part of
    // the checkpoint.
    assert_same_metrics(&dir.path().join("straight"), &run);
}

#[test]
fn a_second_run_on_the_same_folder_is_refused_and_the_first_is_unharmed() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "shared", "save_every_steps = 1\nlog_every_steps = 1");
    let run = dir.path().join("shared");
    let mut first = train(&config).spawn().unwrap();
    wait_for("the first run to hold its folder", || {
        std::fs::read_to_string(run.join(".lock")).is_ok_and(|pid| !pid.trim().is_empty())
    });
    // The same folder from another config file (other settings, same name and output_dir).
    let other = write_config(dir.path(), "shared", "save_every_steps = 2");
    let out = train(&other).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second run must not start: {err}");
    assert!(err.contains(&first.id().to_string()) && err.contains(".lock"), "{err}");
    assert!(first.wait().unwrap().success());
    assert_eq!(step_lines(&run), 24, "metrics.jsonl has each step once");
    assert_eq!(read_state(&last_checkpoint(&run)).unwrap().global_step, 24);
    assert_checkpoints_load(&run, "after the refused second run");
}

#[test]
fn a_corrupt_file_of_any_kind_falls_back_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "base", "save_every_steps = 4");
    succeed(train(&config));
    let run = dir.path().join("base");
    let report = std::fs::read(run.join("report.md")).unwrap();
    let newest = last_checkpoint(&run);
    let files = [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "optimizer.safetensors",
        "train_state.json",
    ];
    for file in files {
        for damage in ["truncated", "garbage", "nan"] {
            let case = format!("{file}, {damage}");
            let work = tempfile::tempdir().unwrap();
            let copy = work.path().join("base");
            copy_tree(&run, &copy);
            let ckpt = copy.join("checkpoints").join(newest.file_name().unwrap());
            let path = ckpt.join(file);
            let bytes = std::fs::read(&path).unwrap();
            let damaged = match damage {
                "truncated" => bytes[..bytes.len() / 2].to_vec(),
                "garbage" => b"\x00not what it should be".to_vec(),
                // NaN where weights or moments are (f32 NaN bytes over the data's end).
                _ if file.ends_with(".safetensors") => {
                    let mut b = bytes.clone();
                    let n = b.len();
                    b[n - 8..].copy_from_slice(&[0, 0, 0xc0, 0x7f, 0, 0, 0xc0, 0x7f]);
                    b
                }
                _ => continue,
            };
            std::fs::write(&path, damaged).unwrap();

            // Evaluating it fails, naming the file, and writes nothing.
            let out_dir = work.path().join("eval");
            let out = eval_two(&config, &ckpt, &["--out", out_dir.to_str().unwrap()]);
            let err = String::from_utf8_lossy(&out.stderr);
            if file == "optimizer.safetensors" {
                // Evaluation does not read the optimizer state.
                assert!(out.status.success(), "{case}: {err}");
            } else {
                assert!(!out.status.success(), "{case}: eval must fail");
                assert!(err.contains(file), "{case}: {err}");
                let written = std::fs::read_dir(&out_dir).map(|d| d.count()).unwrap_or(0);
                assert_eq!(written, 0, "{case}: eval wrote results");
            }

            // A longer run resumes from the checkpoint before it and completes.
            let text = std::fs::read_to_string(&config).unwrap();
            let longer = work.path().join("base.toml");
            std::fs::write(
                &longer,
                text.replace(&dir.path().display().to_string(), &work.path().display().to_string())
                    .replace("num_epochs = 3", "num_epochs = 4"),
            )
            .unwrap();
            let out = train(&longer).output().unwrap();
            assert!(out.status.success(), "{case}: {}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(read_state(&last_checkpoint(&copy)).unwrap().epoch, 4, "{case}");
        }
    }
    assert_eq!(std::fs::read(run.join("report.md")).unwrap(), report, "the original is untouched");
}

#[test]
fn samples_too_long_for_the_model_stop_the_run_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let mut samples: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture_samples()).unwrap()).unwrap();
    samples.truncate(4);
    samples[2]["question"] = serde_json::Value::String("Every wumpus is a yumpus. ".repeat(400));
    let test = dir.path().join("test.json");
    std::fs::write(&test, serde_json::to_string(&samples).unwrap()).unwrap();
    let config = write_config(dir.path(), "long", "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "max_valid_samples = 4",
        &format!("max_valid_samples = 4\ntest = \"{}\"", test.display()),
    );
    std::fs::write(&config, text).unwrap();
    let out = train(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("test.json") && err.contains("sample 2"), "{err}");
    assert!(!dir.path().join("long/checkpoints").exists(), "no training happened");

    // A CUDA device on a build without CUDA is a one-line error, not a panic.
    let out = coconut(&[
        "train-all-stages",
        "--config",
        config.to_str().unwrap(),
        "--set",
        "train.device=cuda",
    ])
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let expected = match coconut_trainer::cuda_backend_version() {
        None => "built without CUDA: cargo xtask setup --cuda",
        Some(_) => "no CUDA device",
    };
    assert!(err.contains(expected) && !err.contains("panicked"), "{err}");
}

#[test]
fn bad_configs_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "bad", "");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("lr = 1e-3", "lr = 1e-3\nlearning_rate = 2");
    std::fs::write(&path, text).unwrap();
    let out = train(&path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("learning_rate"), "{err}");

    // A paper config without the pretrained GPT-2 names the key and the file.
    let paper = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/prosqa-coconut.toml");
    let out = train(&paper).current_dir(dir.path()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("prosqa-coconut.toml") && err.contains("model.pretrained"), "{err}");
}

#[test]
fn eval_checks_its_output_and_the_lengths_before_generating() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "run", "");
    succeed(train(&config));
    let run = dir.path().join("run");
    let ckpt = last_checkpoint(&run);

    // By default the results go beside the run's checkpoints, which pruning never touches.
    let eval = |extra: &[&str]| eval_two(&config, &ckpt, extra);
    let out = eval(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let name = ckpt.file_name().unwrap().to_str().unwrap();
    let results = run.join("eval").join(name);
    assert!(results.join(format!("predictions_run-{name}_valid.jsonl")).exists());
    assert!(!ckpt.join("eval").exists());

    // An output folder that cannot be made fails at once, naming it.
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "").unwrap();
    let out = eval(&["--out", blocker.join("sub").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("a-file"), "{err}");

    // Prompts that would outgrow the model's context with the tokens to generate.
    let out = eval(&["--set", "eval.max_new_tokens=5000"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("prosqa_valid.json") && err.contains("sample 0"), "{err}");
}
