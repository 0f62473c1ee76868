//! `coconut compare --seeds N`: every method trained once per seed on that seed's data, the
//! table's means and deviations computed from the runs' own summaries, the thought-count
//! ablation agreeing with the final evaluation, and a second invocation reading the runs
//! instead of training them again.

mod common;

use std::path::Path;

use common::{coconut, succeed, SMALL_GPT2};
use serde_json::Value;

/// Two methods, two seeds, generated ProsQA-style data: four small runs of two epochs.
fn write_config(dir: &Path) -> std::path::PathBuf {
    let text = format!(
        r#"
name = "cmp"
output_dir = "{out}"
[data]
train = "{out}/data/train.json"
valid = "{out}/data/valid.json"
test = "{out}/data/test.json"
generate = {{ kind = "prosqa", preset = "small", sizes = [48, 8, 12], seed = 0 }}
[model]
{SMALL_GPT2}
[curriculum]
max_latent_stage = 1
epochs_per_stage = 1
[train]
num_epochs = 2
batch_size = 8
lr = 1e-3
threads = 1
[eval]
every_epoch = false
max_new_tokens = 24
"#,
        out = dir.display()
    );
    let path = dir.join("cmp.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn compare_trains_every_method_per_seed_and_reads_finished_runs_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let args = ["compare", "--config", config.to_str().unwrap(), "--seeds", "2"];
    let methods = ["--methods", "coconut,no-cot"];
    let compare = || {
        let mut command = coconut(&args);
        command.args(methods);
        command
    };
    succeed(compare());

    // Seed 1's data was generated with seed 1, beside seed 0's.
    let seed0 = std::fs::read_to_string(dir.path().join("data/train.json")).unwrap();
    let seed1 = std::fs::read_to_string(dir.path().join("data-seed1/train.json")).unwrap();
    assert_ne!(seed0, seed1);

    // Again, with one finished run's summary edited (tiny models answer nothing right, so
    // this gives the means something to average): every run is read back, none trained.
    let edited = dir.path().join("cmp-seed1-no-cot");
    let mut summary = read_json(&edited.join("summary.json"));
    summary["final_metrics"]["accuracy"] = 0.75.into();
    summary["final_accuracy"] = 0.75.into();
    std::fs::write(edited.join("summary.json"), summary.to_string()).unwrap();
    let before = std::fs::read_to_string(edited.join("metrics.jsonl")).unwrap();
    let again = succeed(compare());
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert_eq!(stdout.matches("already trained").count(), 4, "{stdout}");
    assert_eq!(std::fs::read_to_string(edited.join("metrics.jsonl")).unwrap(), before);

    let out = dir.path().join("cmp-comparison");
    let comparison = read_json(&out.join("comparison.json"));
    let methods = comparison["methods"].as_array().unwrap();
    assert_eq!(methods.len(), 2);
    for (method, mode) in methods.iter().zip(["coconut", "no-cot"]) {
        assert_eq!(method["method"], mode);
        let runs = method["runs"].as_array().unwrap();
        assert_eq!(runs.iter().map(|r| r["seed"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1]);
        // The figures are each run's own summary, and the mean and sd are theirs.
        let accuracies: Vec<f64> = (0..2)
            .map(|seed| {
                let run = dir.path().join(format!("cmp-seed{seed}-{mode}"));
                read_json(&run.join("summary.json"))["final_accuracy"].as_f64().unwrap()
            })
            .collect();
        let recorded: Vec<f64> =
            runs.iter().map(|r| r["metrics"]["accuracy"].as_f64().unwrap()).collect();
        assert_eq!(recorded, accuracies);
        if mode == "no-cot" {
            assert_eq!(accuracies[1], 0.75);
        }
        let mean = (accuracies[0] + accuracies[1]) / 2.0;
        let sd = (accuracies[0] - accuracies[1]).abs() / 2f64.sqrt();
        assert!((method["mean_accuracy"].as_f64().unwrap() - mean).abs() <= 1e-12 * mean.max(1.0));
        assert!((method["sd_accuracy"].as_f64().unwrap() - sd).abs() <= 1e-12 * sd.max(1.0));
    }

    // The Coconut model at its final stage in the ablation is the final evaluation again.
    let ablation = comparison["thought_ablation"].as_array().unwrap();
    assert_eq!(ablation.len(), 2);
    for (a, run) in ablation.iter().zip(methods[0]["runs"].as_array().unwrap()) {
        let by_stage = a["by_stage"].as_array().unwrap();
        assert_eq!(by_stage.len(), 2, "stages 0 and 1");
        assert_eq!(by_stage[0]["stage"], 0);
        assert_eq!(by_stage[1]["accuracy"], run["metrics"]["accuracy"]);
        assert_eq!(by_stage[1]["samples"], 12);
    }
    let table = std::fs::read_to_string(out.join("comparison.md")).unwrap();
    assert!(table.contains("| Coconut |") && table.contains("| No-CoT |"), "{table}");
    assert!(table.contains(" ± ") && table.contains("| seed 1 |"), "{table}");
    let plot = std::fs::read_to_string(out.join("accuracy.svg")).unwrap();
    assert!(plot.contains("<svg") && plot.contains("No-CoT"), "{plot}");
}

#[test]
fn an_unknown_method_is_refused_before_any_training() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let out = coconut(&["compare", "--config", config.to_str().unwrap(), "--methods", "latent"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("unknown method `latent`"), "{err}");
    assert!(!dir.path().join("data").exists(), "nothing was generated");
}

#[test]
fn runs_trained_side_by_side_are_the_runs_a_serial_comparison_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let args = ["compare", "--config", config.to_str().unwrap(), "--methods", "coconut,no-cot"];
    let mut side_by_side = coconut(&args);
    side_by_side.args(["--jobs", "2"]);
    let first = succeed(side_by_side);
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert_eq!(stdout.matches(": started").count(), 2, "{stdout}");

    // Each ran in its own process on the cores shared out, its output in a log.
    let cores = std::thread::available_parallelism().unwrap().get();
    let logs = dir.path().join("cmp-comparison/runs");
    for mode in ["coconut", "no-cot"] {
        let run = dir.path().join(format!("cmp-{mode}"));
        assert!(run.join("summary.json").exists(), "{}", run.display());
        let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
        let threads = format!("threads = {}", (cores / 2).max(1));
        assert!(config.contains(&threads), "{threads} in {config}");
        let log = std::fs::read_to_string(logs.join(format!("cmp-{mode}.log"))).unwrap();
        assert!(log.contains(&format!("cmp-{mode} (test)")), "its final table: {log}");
    }

    // A comparison one run at a time takes them as its own: the thread count is not part
    // of a run's identity.
    let again = succeed(coconut(&args));
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert_eq!(stdout.matches("already trained").count(), 2, "{stdout}");

    // And trains the same run: No-CoT trained alone elsewhere ends at the same loss (up to
    // the rounding of another thread count).
    let alone = dir.path().join("alone");
    let mut serial = coconut(&args[..3]);
    serial.args(["--methods", "no-cot", "--set", &format!("output_dir=\"{}\"", alone.display())]);
    succeed(serial);
    let final_loss = |run: &Path| {
        let summary = read_json(&run.join("summary.json"));
        let stages = summary["per_stage"].as_array().unwrap();
        stages.last().unwrap()["valid_loss"].as_f64().unwrap()
    };
    let (parallel, serial) =
        (final_loss(&dir.path().join("cmp-no-cot")), final_loss(&alone.join("cmp-no-cot")));
    assert!((parallel - serial).abs() <= 1e-4 * serial.abs(), "{parallel} against {serial}");
}

#[test]
fn a_run_that_fails_side_by_side_is_named_with_its_log_and_the_others_finish() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    // A file where the No-CoT run's folder would go.
    std::fs::write(dir.path().join("cmp-no-cot"), "not a folder").unwrap();
    let out = coconut(&["compare", "--config", config.to_str().unwrap()])
        .args(["--methods", "coconut,no-cot", "--jobs", "2"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("runs failed: cmp-no-cot"), "{err}");
    assert!(err.contains("cmp-comparison/runs/cmp-no-cot.log"), "{err}");
    assert!(dir.path().join("cmp-coconut/summary.json").exists(), "the other run finished");
    assert_eq!(std::fs::read_to_string(dir.path().join("cmp-no-cot")).unwrap(), "not a folder");
}
