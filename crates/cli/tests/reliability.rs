//! What a damaged checkpoint, changed data or an impossible question does to the `coconut`
//! binary: a checkpoint whose bytes changed after it was written is never trusted (eval
//! names the file and fails, a resume falls back to the checkpoint before and names the one
//! it skips, whatever the reason), a resumed run's `metrics.jsonl` equals an uninterrupted
//! run's, data changed between runs is refused unless accepted, a data path that is not a
//! regular file is refused at once, `ask` refuses a prompt beyond the model's context, and a
//! write error of `eval` names its file.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use coconut_trainer::checkpoint::{list_checkpoints, read_state};
use common::{
    assert_same_metrics, coconut, copy_tree, eval_two, fixture_samples, last_checkpoint, succeed,
    train, write_config,
};

/// A finished run of the small config with a checkpoint every 4 steps, made once and copied
/// by each test: (its folder, its config).
fn base() -> &'static (tempfile::TempDir, PathBuf) {
    static BASE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), "base", "save_every_steps = 4");
        succeed(train(&config));
        (dir, config)
    })
}

/// A copy of the base run in a folder of its own, and a config that trains it to `epochs`
/// epochs there.
fn copy_of_base(work: &Path, epochs: usize) -> (PathBuf, PathBuf) {
    let (dir, config) = base();
    let run = work.join("base");
    copy_tree(&dir.path().join("base"), &run);
    let text = std::fs::read_to_string(config).unwrap();
    let moved = work.join("base.toml");
    let text = text.replace(&dir.path().display().to_string(), &work.display().to_string());
    std::fs::write(&moved, text.replace("num_epochs = 3", &format!("num_epochs = {epochs}")))
        .unwrap();
    (run, moved)
}

/// The newest checkpoint of `run` and the one before it.
fn newest_two(run: &Path) -> (PathBuf, PathBuf) {
    let mut checkpoints = list_checkpoints(&run.join("checkpoints"));
    let newest = checkpoints.pop().expect("a checkpoint");
    (newest, checkpoints.pop().expect("two checkpoints"))
}

/// Writes `bytes` at `offset` of the file at `path`.
fn overwrite(path: &Path, offset: usize, bytes: &[u8]) {
    let mut data = std::fs::read(path).unwrap();
    data[offset..offset + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, data).unwrap();
}

/// Where tensor `name`'s data begins in the safetensors file at `path`.
fn tensor_offset(path: &Path, name: &str) -> usize {
    let data = std::fs::read(path).unwrap();
    let header_len = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&data[8..8 + header_len]).unwrap();
    8 + header_len + header[name]["data_offsets"][0].as_u64().unwrap() as usize
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn finite_garbage_in_the_weights_is_caught_by_eval_and_by_a_resume() {
    let work = tempfile::tempdir().unwrap();
    let (run, config) = copy_of_base(work.path(), 4);
    let (newest, previous) = &newest_two(&run);
    // 64 bytes of small finite f32 values inside the embedding's data.
    let weights = newest.join("model.safetensors");
    let at = tensor_offset(&weights, "transformer.wte.weight") + 256;
    let garbage: Vec<u8> = (0..16).flat_map(|i| (0.01f32 * i as f32).to_le_bytes()).collect();
    overwrite(&weights, at, &garbage);

    let out = eval_two(&config, newest, &[]);
    let err = stderr_of(&out);
    assert!(!out.status.success(), "eval must refuse: {err}");
    assert!(err.contains("model.safetensors") && err.contains("checksum"), "{err}");

    let out = train(&config).env("RUST_LOG", "info").output().unwrap();
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    let newest_name = newest.file_name().unwrap().to_string_lossy();
    assert!(err.contains(&*newest_name) && err.contains("model.safetensors"), "{err}");
    assert!(err.contains(&format!("resuming from {}", previous.display())), "{err}");
    assert_eq!(read_state(&last_checkpoint(&run)).unwrap().epoch, 4);
}

#[test]
fn a_changed_optimizer_step_is_caught_and_the_run_falls_back() {
    let work = tempfile::tempdir().unwrap();
    let (run, config) = copy_of_base(work.path(), 4);
    let (newest, previous) = &newest_two(&run);
    let optimizer = newest.join("optimizer.safetensors");
    overwrite(&optimizer, tensor_offset(&optimizer, "step"), &2_139_095_040i64.to_le_bytes());
    let out = train(&config).env("RUST_LOG", "info").output().unwrap();
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("optimizer.safetensors") && err.contains("checksum"), "{err}");
    assert!(err.contains(&format!("resuming from {}", previous.display())), "{err}");
}

#[test]
fn a_checkpoint_without_its_training_state_is_named_when_skipped() {
    let work = tempfile::tempdir().unwrap();
    let (run, config) = copy_of_base(work.path(), 4);
    let newest = last_checkpoint(&run);
    std::fs::remove_file(newest.join("train_state.json")).unwrap();
    let out = train(&config).output().unwrap();
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("skipping checkpoint {}", newest.display())), "{err}");
    assert!(err.contains("no train_state.json"), "{err}");
}

#[test]
fn a_resume_from_an_older_checkpoint_writes_the_metrics_of_an_uninterrupted_run() {
    let work = tempfile::tempdir().unwrap();
    let (run, config) = copy_of_base(work.path(), 3);
    // The finished run's newest checkpoint is damaged: the same command resumes from the one
    // before (mid-epoch) and trains the last steps again.
    let newest = last_checkpoint(&run);
    std::fs::write(newest.join("model.safetensors"), b"damaged").unwrap();
    let out = train(&config).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_same_metrics(&base().0.path().join("base"), &run);
}

#[test]
fn data_changed_between_runs_is_refused_unless_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.json");
    std::fs::copy(fixture_samples(), &data).unwrap();
    let config = write_config(dir.path(), "data", "");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(&fixture_samples().display().to_string(), &data.display().to_string());
    std::fs::write(&config, text.replace("num_epochs = 3", "num_epochs = 1")).unwrap();
    succeed(train(&config));
    // One answer edited: the run would go on training on another data set.
    let mut samples: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&data).unwrap()).unwrap();
    samples[3]["answer"] = serde_json::Value::String("Tom is a lempus.".into());
    std::fs::write(&data, serde_json::to_string(&samples).unwrap()).unwrap();
    let longer = |extra: &[&str]| {
        let mut command = train(&config);
        command.args(["--set", "train.num_epochs=2"]).args(extra);
        command.output().unwrap()
    };
    let out = longer(&[]);
    let err = stderr_of(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("data.json") && err.contains("data.train changed"), "{err}");
    assert!(err.contains("train.accept_changed_data"), "{err}");

    let out = longer(&["--set", "train.accept_changed_data=true"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let state = read_state(&last_checkpoint(&dir.path().join("data"))).unwrap();
    assert_eq!(state.epoch, 2);
    // The config reads one file as both splits: both changes are recorded.
    let changes = &state.accepted_data_changes;
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(changes[0].starts_with("data.train") && changes[1].starts_with("data.valid"));
}

#[test]
fn a_data_path_that_is_not_a_regular_file_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let zero = dir.path().join("zero.json");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let config = write_config(dir.path(), "zero", "");
    let text = std::fs::read_to_string(&config).unwrap();
    let first = fixture_samples().display().to_string();
    std::fs::write(&config, text.replacen(&first, &zero.display().to_string(), 1)).unwrap();
    let out = train(&config).output().unwrap();
    let err = stderr_of(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("zero.json") && err.contains("not a regular file"), "{err}");
}

#[test]
fn ask_refuses_prompts_beyond_the_context_naming_the_sizes() {
    let ckpt = last_checkpoint(&base().0.path().join("base"));
    let ckpt = ckpt.to_str().unwrap();
    let long = "Every wumpus is a yumpus. ".repeat(4_900); // about 127,400 characters
    let question = "Every wumpus is a yumpus. Is Tom a yumpus or a lempus?";
    for (question, thoughts) in [(question, "2000"), (question, "1000000"), (long.as_str(), "2")] {
        let out = coconut(&["ask", "--checkpoint", ckpt, question, "--thoughts", thoughts])
            .output()
            .unwrap();
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "thoughts {thoughts}: {err}");
        assert!(err.contains("1024") && err.contains("positions"), "thoughts {thoughts}: {err}");
    }
}

#[test]
fn eval_names_the_file_it_cannot_write() {
    let work = tempfile::tempdir().unwrap();
    let (run, config) = copy_of_base(work.path(), 3);
    let out_dir = work.path().join("eval");
    std::fs::create_dir_all(&out_dir).unwrap();
    // A full disk, for this one file.
    std::os::unix::fs::symlink("/dev/full", out_dir.join("comparison.md")).unwrap();
    let out = eval_two(&config, &last_checkpoint(&run), &["--out", out_dir.to_str().unwrap()]);
    let err = stderr_of(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("comparison.md") && err.contains("No space left"), "{err}");
}
