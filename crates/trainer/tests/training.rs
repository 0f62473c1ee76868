//! The staged loop on real ProsQA samples: a tiny model overfits them through stages 0..2,
//! checkpoints load back, and a corrupt newest checkpoint falls back to the one before.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use coconut_testing::{assert_close, Tolerance};
use coconut_trainer::checkpoint::{list_checkpoints, read_state};
use coconut_trainer::{EpochEval, RunConfig, Trainer};

/// Torch's generator is process-wide and every test here initialises a model from it, so
/// the tests take turns: a run started alongside another would not be reproducible.
static TORCH_RNG: Mutex<()> = Mutex::new(());

fn torch_rng() -> MutexGuard<'static, ()> {
    TORCH_RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn prosqa_valid() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/datasets/prosqa/prosqa_valid.json")
}

fn config(out: &Path, epochs: usize, extra: &str) -> RunConfig {
    let data = prosqa_valid();
    let text = format!(
        r#"
name = "overfit"
output_dir = "{out}"
[data]
train = "{data}"
valid = "{data}"
max_train_samples = 4
max_valid_samples = 4
[model]
n_layer = 2
n_embd = 48
n_head = 2
vocab_size = 300
n_positions = 1024
[curriculum]
mode = "coconut"
max_latent_stage = 2
epochs_per_stage = 20
[train]
num_epochs = {epochs}
batch_size = 4
lr = 5e-3
weight_decay = 0.0
threads = 1
log_every_steps = 1
{extra}
"#,
        out = out.display(),
        data = data.display()
    );
    RunConfig::parse(&text, Path::new("test.toml")).unwrap()
}

fn no_eval(_: &Trainer, _: usize) -> Result<EpochEval, coconut_trainer::TrainError> {
    Ok(EpochEval::default())
}

fn step_losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "step")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn a_tiny_model_overfits_a_few_samples_through_the_stages() {
    let _rng = torch_rng();
    let out = tempfile::tempdir().unwrap();
    let cfg = config(out.path(), 60, "");
    let mut trainer = Trainer::new(cfg.clone(), Path::new("test.toml")).unwrap();
    let summary = trainer.run(&mut no_eval).unwrap();
    assert_eq!(summary.global_step, 60);
    let losses = step_losses(&cfg.run_dir());
    let first = losses[0];
    // Stage 0 (epochs 0-19) must already have learned most of the sequences.
    let end_of_stage0 = losses[19];
    assert!(end_of_stage0 < 0.5 * first, "loss {first} -> {end_of_stage0} over stage 0");
    // And stage 2 (thoughts replacing two steps) ends far below the start too.
    let last = *losses.last().unwrap();
    assert!(last < 0.5 * first, "loss {first} -> {last} at the end of stage 2");
    // The teacher-forced validation loss at stage 2 (same samples) is low as well.
    assert!(trainer.validation_loss(2).unwrap() < 0.5 * first);
}

#[test]
fn a_corrupt_newest_checkpoint_is_skipped_for_the_one_before() {
    let _rng = torch_rng();
    let out = tempfile::tempdir().unwrap();
    let cfg = config(out.path(), 2, "keep_last = 0");
    Trainer::new(cfg.clone(), Path::new("test.toml")).unwrap().run(&mut no_eval).unwrap();
    let ckpts = list_checkpoints(&cfg.run_dir().join("checkpoints"));
    assert_eq!(ckpts.len(), 2);
    // A from-scratch checkpoint names its tokenizer's EOS, not GPT-2's 50256.
    let hf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ckpts[1].join("config.json")).unwrap())
            .unwrap();
    let tokenizer =
        coconut_curriculum::Tokenizer::from_file(&ckpts[1].join("tokenizer.json")).unwrap();
    let eos = tokenizer.special().eos;
    assert_eq!(tokenizer.encode("<|endoftext|>"), [eos]);
    for key in ["bos_token_id", "eos_token_id", "pad_token_id"] {
        assert_eq!(hf[key], eos, "{key}");
    }
    // The newest checkpoint's weights are cut in half.
    let weights = ckpts[1].join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    // Another tokenizer of the same size in its place is refused by name. With the manifest,
    // the first file whose bytes are not the manifest's is named (the halved weights); without
    // it (an older checkpoint) the tokenizer's fingerprint is not the one the training state
    // records.
    let samples = coconut_curriculum::load_samples(&prosqa_valid()).unwrap();
    let other = coconut_curriculum::Tokenizer::train_on_samples(&samples[4..8], 300).unwrap();
    assert_eq!(other.vocab_size(), tokenizer.vocab_size());
    other.save(&ckpts[1].join("tokenizer.json")).unwrap();
    let err = coconut_trainer::load_model_dir(&ckpts[1], tch::Device::Cpu, "<<").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("model.safetensors") && text.contains("manifest.json records"), "{text}");
    std::fs::remove_file(ckpts[1].join(coconut_trainer::manifest::MANIFEST_FILE)).unwrap();
    let err = coconut_trainer::load_model_dir(&ckpts[1], tch::Device::Cpu, "<<").unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, coconut_trainer::TrainError::TokenizerChanged { .. }), "{text}");
    assert!(text.contains("tokenizer.json"), "{text}");
    let resumed = Trainer::new(cfg.clone(), Path::new("test.toml")).unwrap();
    // The position of the older checkpoint, with this run's settings.
    let mut expected = read_state(&ckpts[0]).unwrap();
    expected.config = cfg.clone();
    assert_eq!(resumed.state(), &expected);
    assert_eq!(resumed.state().epoch, 1);
}

#[test]
fn a_diverging_loss_sets_aside_the_checkpoint_that_holds_its_weights() {
    let _rng = torch_rng();
    let out = tempfile::tempdir().unwrap();
    // A learning rate this large sends the weights to about 1e30 with the first update: the
    // checkpoint after it is finite but useless, and the next loss is not finite.
    let mut cfg = config(out.path(), 2, "save_every_steps = 1\nkeep_last = 0");
    cfg.train.lr = 1e30;
    cfg.data.max_train_samples = 12;
    let err =
        Trainer::new(cfg.clone(), Path::new("test.toml")).unwrap().run(&mut no_eval).unwrap_err();
    let text = err.to_string();
    let coconut_trainer::TrainError::NonFiniteLoss { step, .. } = err else { panic!("{text}") };
    assert_eq!(step, 1, "{text}");
    let dir = cfg.run_dir().join("checkpoints");
    assert!(list_checkpoints(&dir).is_empty(), "no checkpoint of diverged weights is resumable");
    assert!(dir.join("diverged-e000-s0000001").join("train_state.json").exists(), "{text}");
    assert!(text.contains("diverged-e000-s0000001") && text.contains("No checkpoint"), "{text}");
    // Nothing resumable is left: a rerun with a lower learning rate starts afresh and trains.
    cfg.train.lr = 5e-3;
    let summary = Trainer::new(cfg.clone(), Path::new("test.toml")).unwrap().run(&mut no_eval);
    assert!(summary.is_ok(), "{:?}", summary.err());
}

#[test]
fn a_resume_refuses_another_thread_count_and_a_second_owner() {
    let _rng = torch_rng();
    let out = tempfile::tempdir().unwrap();
    let cfg = config(out.path(), 1, "");
    let first = Trainer::new(cfg.clone(), Path::new("test.toml")).unwrap();
    // The folder is held while `first` lives.
    let err = Trainer::new(cfg.clone(), Path::new("test.toml")).err().expect("a second owner");
    let text = err.to_string();
    assert!(matches!(err, coconut_trainer::TrainError::RunInUse { .. }), "{text}");
    assert!(text.contains(&std::process::id().to_string()), "{text}");
    let mut first = first;
    first.run(&mut no_eval).unwrap();
    drop(first);

    let mut more = config(out.path(), 2, "");
    more.train.threads = 2;
    let err = Trainer::new(more.clone(), Path::new("test.toml")).err().expect("threads refused");
    let text = err.to_string();
    assert!(text.contains("train.threads") && !text.contains('\n'), "{text}");
    more.train.threads = 1;
    assert!(Trainer::new(more, Path::new("test.toml")).is_ok());
}

/// `gradient_checkpointing` changes how the backward pass gets its activations, not what it
/// computes: the same run with it on gives the same losses, step for step, through stage 0
/// and into the first latent stage, with dropout and two micro-batches per step.
#[test]
fn gradient_checkpointing_trains_the_same_run() {
    let _rng = torch_rng();
    let losses = |extra: &str| {
        let out = tempfile::tempdir().unwrap();
        let mut cfg = config(out.path(), 23, extra);
        cfg.model.dropout = 0.1;
        (cfg.train.batch_size, cfg.train.grad_accum) = (2, 2);
        Trainer::new(cfg.clone(), Path::new("test.toml")).unwrap().run(&mut no_eval).unwrap();
        step_losses(&cfg.run_dir())
    };
    let kept = losses("");
    let recomputed = losses("gradient_checkpointing = true");
    assert_eq!(kept.len(), 23);
    assert_eq!(kept.len(), recomputed.len());
    for (step, (a, b)) in kept.iter().zip(&recomputed).enumerate() {
        assert_close(*b, *a, Tolerance::scaled(1e-4), &format!("step {step}: loss"));
    }
    assert!(kept[22] < 0.5 * kept[0], "the run learns: {} -> {}", kept[0], kept[22]);
}
