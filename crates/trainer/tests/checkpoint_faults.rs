//! Checkpoints under faults: a save or prune that fails at any single operation (a full
//! disk, an I/O error, a killed process) never damages an older complete checkpoint nor
//! leaves an incomplete one under a real name; the order of the writes is the one the
//! durability argument needs; names order by number; concurrent writers keep to their own
//! temporary folders; and non-finite weights or moments are refused on load.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use coconut_model::ModelError;
use coconut_testing::Tolerance;
use coconut_trainer::adamw::{AdamW, AdamWConfig};
use coconut_trainer::checkpoint::{
    checkpoint_files, checkpoint_name, list_checkpoints, load_checkpoint, parse_checkpoint_name,
    prune_checkpoints, recover_checkpoints, save_checkpoint, save_checkpoint_as, write_checkpoint,
    CheckpointIo, DiskIo, TrainState, OPTIMIZER_FILE, STATE_FILE, TMP_PREFIX, TRASH_PREFIX,
};
use coconut_trainer::flat::Partition;
use coconut_trainer::gradients::Gradients;
use coconut_trainer::{build_model, LoadedModel, RunConfig, TrainError};
use tch::{Device, Kind, Tensor};

/// Saved f32 values come back bit for bit.
const EXACT: Tolerance = Tolerance::new(0.0, 0.0);
const ADAMW: AdamWConfig =
    AdamWConfig { lr: 1e-2, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0 };
const WRITER: &str = "4242";

// ---------------------------------------------------------------------------------------
// The test double.

/// One operation of the seam, as recorded.
#[derive(Debug, Clone, PartialEq)]
enum Op {
    CreateDir(PathBuf),
    WriteFile(PathBuf),
    SyncDir(PathBuf),
    Rename(PathBuf, PathBuf),
    RemoveDirAll(PathBuf),
}

/// What happens from the operation `at` (0-based) on.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Nothing fails.
    None,
    /// Operation `at` fails; the ones after it succeed (an error the caller recovers from).
    Once { at: usize },
    /// Operation `at` and every later one fail (the process died there: nothing after it
    /// reaches the disk, not even the clean-up).
    Crash { at: usize },
}

/// [`DiskIo`] that logs every operation and fails as its [`Fault`] says, with ENOSPC on
/// even operations and EIO on odd ones. A failing write leaves half of the file behind and
/// a failing folder removal deletes one file first, as real failures may.
struct FaultyIo {
    fault: Fault,
    log: Mutex<Vec<Op>>,
    /// Runs once, just before the first `sync_dir` of a temporary folder.
    interleave: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Fault {
    /// Whether operation `index` fails.
    fn fails(self, index: usize) -> bool {
        match self {
            Fault::None => false,
            Fault::Once { at } => index == at,
            Fault::Crash { at } => index >= at,
        }
    }
}

impl FaultyIo {
    fn new(fault: Fault) -> Self {
        Self { fault, log: Mutex::new(Vec::new()), interleave: Mutex::new(None) }
    }

    fn log(&self) -> Vec<Op> {
        self.log.lock().unwrap().clone()
    }

    /// Records `op` and says whether it fails.
    fn record(&self, op: Op) -> Result<(), io::Error> {
        let mut log = self.log.lock().unwrap();
        let index = log.len();
        log.push(op);
        if !self.fault.fails(index) {
            return Ok(());
        }
        let os_error = if index.is_multiple_of(2) { 28 } else { 5 }; // ENOSPC, EIO
        Err(io::Error::from_raw_os_error(os_error))
    }
}

impl CheckpointIo for FaultyIo {
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        self.record(Op::CreateDir(dir.to_path_buf()))?;
        DiskIo.create_dir(dir)
    }

    fn write_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        if let Err(e) = self.record(Op::WriteFile(path.to_path_buf())) {
            // Disk full half-way through.
            if path.parent().is_some_and(Path::is_dir) {
                std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
            }
            return Err(e);
        }
        DiskIo.write_file(path, bytes)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(TMP_PREFIX) {
            let hook = self.interleave.lock().unwrap().take();
            if let Some(hook) = hook {
                hook();
            }
        }
        self.record(Op::SyncDir(dir.to_path_buf()))?;
        DiskIo.sync_dir(dir)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.record(Op::Rename(from.to_path_buf(), to.to_path_buf()))?;
        DiskIo.rename(from, to)
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        if let Err(e) = self.record(Op::RemoveDirAll(dir.to_path_buf())) {
            // Interrupted half-way: the weights are gone, the state is still there.
            let _ = std::fs::remove_file(dir.join(coconut_model::WEIGHTS_FILE));
            return Err(e);
        }
        DiskIo.remove_dir_all(dir)
    }
}

// ---------------------------------------------------------------------------------------
// A tiny model in several versions.

fn config() -> RunConfig {
    let data = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/datasets/prosqa/prosqa_valid.json");
    let text = format!(
        r#"
name = "faults"
[data]
train = "{data}"
valid = "{data}"
[model]
n_layer = 1
n_embd = 16
n_head = 2
vocab_size = 300
n_positions = 64
[train]
lr = 1e-2
weight_decay = 0.0
threads = 1
"#,
        data = data.display()
    );
    RunConfig::parse(&text, Path::new("faults.toml")).unwrap()
}

/// The weights and optimizer state of one checkpoint to save.
struct Version {
    weights: BTreeMap<String, Tensor>,
    moments: BTreeMap<String, Tensor>,
}

/// A model and an optimizer, with `n` versions of their state (one AdamW step apart).
struct Fixture {
    config: RunConfig,
    loaded: LoadedModel,
    optimizer: AdamW,
    versions: Vec<Version>,
}

impl Fixture {
    fn new(n: usize) -> Self {
        let config = config();
        let mut samples = coconut_curriculum::load_samples(&config.data.train).unwrap();
        samples.truncate(16);
        let loaded = build_model(&config, &samples).unwrap();
        let mut optimizer = AdamW::new(loaded.vs.variables(), ADAMW, Kind::Float);
        let mut grads = Gradients::new(loaded.vs.variables());
        let mut versions = Vec::new();
        for k in 0..n {
            let vars = loaded.vs.variables();
            let loss = vars
                .values()
                .map(|v| (v * v).sum(Kind::Float) * (k + 1) as f64)
                .reduce(|a, b| a + b)
                .unwrap();
            grads.clear();
            grads.backward(&loss);
            optimizer.step(&mut grads);
            versions.push(Version {
                weights: vars.into_iter().map(|(n, t)| (n, t.detach().copy())).collect(),
                moments: optimizer.state().into_iter().map(|(n, t)| (n, t.copy())).collect(),
            });
        }
        Self { config, loaded, optimizer, versions }
    }

    /// Puts version `k` into the model and the optimizer.
    fn set(&mut self, k: usize) {
        let v = &self.versions[k];
        tch::no_grad(|| {
            for (name, var) in self.loaded.vs.variables() {
                var.shallow_clone().copy_(&v.weights[&name]);
            }
        });
        self.optimizer.load_state(1, |_| Ok(shallow(&v.moments))).unwrap();
    }

    fn state(&self, epoch: usize, global_step: u64) -> TrainState {
        TrainState {
            tokenizer_sha256: None,
            epoch,
            step_in_epoch: 0,
            global_step,
            best_accuracy: None,
            config: self.config.clone(),
            ranks: 1,
            precision: None,
            data_sha256: Default::default(),
            accepted_data_changes: Vec::new(),
            losses: Default::default(),
        }
    }

    /// Saves version `k` at (`epoch`, `step`) with `io` as `writer`.
    fn save(
        &mut self,
        io: &dyn CheckpointIo,
        dir: &Path,
        writer: &str,
        k: usize,
        (epoch, step): (usize, u64),
    ) -> Result<PathBuf, TrainError> {
        self.set(k);
        let state = self.state(epoch, step);
        save_checkpoint_as(io, dir, writer, &self.loaded, &self.optimizer, &state)
    }

    /// Panics unless the checkpoint `ckpt` loads with exactly version `k`'s weights and
    /// moments at (`epoch`, `step`).
    fn assert_holds(&self, ckpt: &Path, k: usize, (epoch, step): (usize, u64)) {
        let what = ckpt.display().to_string();
        let (loaded, optimizer, state) =
            load_checkpoint(ckpt, Device::Cpu, ADAMW, Partition::WHOLE)
                .unwrap_or_else(|e| panic!("{what} does not load: {e}"));
        assert_eq!((state.epoch, state.global_step), (epoch, step), "{what}");
        let v = &self.versions[k];
        let vars = loaded.vs.variables();
        assert_eq!(vars.len(), v.weights.len(), "{what}");
        for (name, t) in &vars {
            assert_same(t, &v.weights[name], &format!("{what}: {name}"));
        }
        let moments: BTreeMap<String, Tensor> = optimizer.state().into_iter().collect();
        assert_eq!(moments.len(), v.moments.len(), "{what}");
        for (name, t) in &moments {
            assert_same(t, &v.moments[name], &format!("{what}: {name}"));
        }
    }
}

/// Panics unless two tensors hold the same values (compared as f64, element by element).
fn assert_same(actual: &Tensor, expected: &Tensor, what: &str) {
    coconut_model::testing::assert_close(actual, expected, EXACT, what);
}

/// The names in `dir` that start with `prefix`.
fn leftovers(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Every folder of `dir` with a checkpoint name, listed or not.
fn real_names(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_str().and_then(parse_checkpoint_name).is_some())
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

fn name_of(p: &Path) -> String {
    p.file_name().unwrap().to_str().unwrap().to_string()
}

const E1: (usize, u64) = (1, 10);
const E2: (usize, u64) = (2, 20);
const E3: (usize, u64) = (3, 30);

/// A fresh `checkpoints/` folder holding versions 0 and 1 at E1 and E2.
fn two_checkpoints(fx: &mut Fixture) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("checkpoints");
    fx.save(&DiskIo, &dir, WRITER, 0, E1).unwrap();
    fx.save(&DiskIo, &dir, WRITER, 1, E2).unwrap();
    (tmp, dir)
}

/// What a save of version `k` at `pos` followed by a prune to the newest 2 does with `io`.
fn save_and_prune(
    fx: &mut Fixture,
    io: &dyn CheckpointIo,
    dir: &Path,
    k: usize,
    pos: (usize, u64),
) -> Result<(), TrainError> {
    fx.save(io, dir, WRITER, k, pos)?;
    prune_checkpoints(io, dir, 2)
}

/// The number of operations of a successful save of version `k` at `pos` and prune.
fn operations(fx: &mut Fixture, k: usize, pos: (usize, u64)) -> Vec<Op> {
    let (_tmp, dir) = two_checkpoints(fx);
    let io = FaultyIo::new(Fault::None);
    save_and_prune(fx, &io, &dir, k, pos).unwrap();
    io.log()
}

/// Checks the error of a failed operation: an I/O error naming a path of the run.
fn assert_names_a_file(err: &TrainError, dir: &Path, what: &str) {
    let TrainError::Io { path, error } = err else { panic!("{what}: not an I/O error: {err}") };
    assert!(path.starts_with(dir), "{what}: {err}");
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{what}: {text}");
    assert!(text.contains(&error.to_string()), "{what}: {text}");
    assert!(!text.contains("corrupt"), "{what}: {text}");
    assert!(std::error::Error::source(err).is_none(), "{what}: the OS error would print twice");
}

// ---------------------------------------------------------------------------------------
// The tests.

#[test]
fn a_successful_save_writes_syncs_renames_syncs_then_prunes() {
    let mut fx = Fixture::new(3);
    let (_tmp, dir) = two_checkpoints(&mut fx);
    let io = FaultyIo::new(Fault::None);
    save_and_prune(&mut fx, &io, &dir, 2, E3).unwrap();
    let log = io.log();

    let name = checkpoint_name(&fx.state(E3.0, E3.1));
    let tmp = dir.join(format!("{TMP_PREFIX}{name}-{WRITER}"));
    let dst = dir.join(&name);
    let pos = |op: &Op| log.iter().position(|o| o == op).unwrap_or_else(|| panic!("{op:?}"));
    let writes: Vec<usize> =
        (0..log.len()).filter(|&i| matches!(log[i], Op::WriteFile(_))).collect();
    let written: Vec<String> = writes
        .iter()
        .map(|&i| match &log[i] {
            Op::WriteFile(p) => {
                assert_eq!(p.parent(), Some(tmp.as_path()), "{p:?} is written in place");
                name_of(p)
            }
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        written,
        [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
            OPTIMIZER_FILE,
            STATE_FILE,
            coconut_trainer::manifest::MANIFEST_FILE,
        ],
        "every file, the state last"
    );
    let created = pos(&Op::CreateDir(tmp.clone()));
    let sync_tmp = pos(&Op::SyncDir(tmp.clone()));
    let rename = pos(&Op::Rename(tmp.clone(), dst.clone()));
    let sync_parent = pos(&Op::SyncDir(dir.clone()));
    assert!(created < writes[0]);
    assert!(*writes.last().unwrap() < sync_tmp, "{log:#?}");
    assert!(sync_tmp < rename && rename < sync_parent, "{log:#?}");
    // Pruning the oldest: renamed to a trash name, then removed, after the parent's sync.
    let oldest = dir.join(checkpoint_name(&fx.state(E1.0, E1.1)));
    let trash = dir.join(format!("{TRASH_PREFIX}{}-{}", name_of(&oldest), std::process::id()));
    let to_trash = pos(&Op::Rename(oldest, trash.clone()));
    let removed = pos(&Op::RemoveDirAll(trash));
    assert!(sync_parent < to_trash && to_trash < removed, "{log:#?}");
    assert_eq!(log.len(), sync_parent + 3, "nothing else: {log:#?}");

    let listed = list_checkpoints(&dir);
    assert_eq!(listed, [dir.join(checkpoint_name(&fx.state(E2.0, E2.1))), dst.clone()]);
    fx.assert_holds(&listed[0], 1, E2);
    fx.assert_holds(&listed[1], 2, E3);
    assert!(leftovers(&dir, ".").is_empty(), "{:?}", leftovers(&dir, "."));
}

#[test]
fn replacing_a_checkpoint_renames_the_old_one_aside_until_the_new_one_is_in() {
    let mut fx = Fixture::new(3);
    let (_tmp, dir) = two_checkpoints(&mut fx);
    let io = FaultyIo::new(Fault::None);
    // A resumed run saves the position of E2 again, with other weights.
    save_and_prune(&mut fx, &io, &dir, 2, E2).unwrap();
    let log = io.log();
    let name = checkpoint_name(&fx.state(E2.0, E2.1));
    let (tmp, dst) = (dir.join(format!("{TMP_PREFIX}{name}-{WRITER}")), dir.join(&name));
    let aside = dir.join(format!("{TRASH_PREFIX}{name}-{WRITER}"));
    let pos = |op: &Op| log.iter().position(|o| o == op).unwrap_or_else(|| panic!("{op:?}"));
    let sync_tmp = pos(&Op::SyncDir(tmp.clone()));
    let away = pos(&Op::Rename(dst.clone(), aside.clone()));
    let rename = pos(&Op::Rename(tmp, dst.clone()));
    let sync_parent = pos(&Op::SyncDir(dir.clone()));
    let removed = pos(&Op::RemoveDirAll(aside));
    assert!(sync_tmp < away && away < rename && rename < sync_parent && sync_parent < removed);
    let listed = list_checkpoints(&dir);
    assert_eq!(listed.len(), 2);
    fx.assert_holds(&listed[0], 0, E1);
    fx.assert_holds(&listed[1], 2, E2);
    assert!(leftovers(&dir, ".").is_empty(), "{:?}", leftovers(&dir, "."));
}

/// For every operation of a save and prune, a failure there (once, or for good) keeps the
/// older checkpoints, leaves no incomplete checkpoint under a real name, and a later save
/// completes the job.
#[test]
fn a_failure_at_any_operation_keeps_the_older_checkpoints() {
    let mut fx = Fixture::new(3);
    // Saving a new position (E3, pruning E1) and saving E2 again (a resumed run).
    for (pos, replaces) in [(E3, false), (E2, true)] {
        let total = operations(&mut fx, 2, pos).len();
        let new_name = checkpoint_name(&fx.state(pos.0, pos.1));
        for crash in [false, true] {
            for at in 0..=total {
                let what =
                    format!("saving {new_name}, failing at {at} of {total} (crash: {crash})");
                let (_tmp, dir) = two_checkpoints(&mut fx);
                let fault = if crash { Fault::Crash { at } } else { Fault::Once { at } };
                let io = FaultyIo::new(fault);
                let result = save_and_prune(&mut fx, &io, &dir, 2, pos);
                match &result {
                    Ok(()) => assert_eq!(at, total, "{what}: no error"),
                    Err(e) => {
                        assert!(at < total, "{what}: {e}");
                        assert_names_a_file(e, &dir, &what);
                    }
                }

                // Every folder under a real name is a complete, loadable checkpoint holding
                // an old version or the new one.
                let listed = list_checkpoints(&dir);
                let mut sorted = listed.clone();
                sorted.sort();
                assert_eq!(real_names(&dir), sorted, "{what}: an incomplete checkpoint");
                let e1 = dir.join(checkpoint_name(&fx.state(E1.0, E1.1)));
                let e2 = dir.join(checkpoint_name(&fx.state(E2.0, E2.1)));
                let e3 = dir.join(checkpoint_name(&fx.state(E3.0, E3.1)));
                let new = dir.join(&new_name);
                // Whether the rename of the new checkpoint into place happened.
                let tmp = dir.join(format!("{TMP_PREFIX}{new_name}-{WRITER}"));
                let renamed_in = io
                    .log()
                    .iter()
                    .position(|op| *op == Op::Rename(tmp.clone(), new.clone()))
                    .is_some_and(|i| !fault.fails(i));
                for ckpt in &listed {
                    let holds_new = ckpt == &new && renamed_in;
                    if ckpt == &e1 {
                        fx.assert_holds(ckpt, 0, E1);
                    } else if ckpt == &e3 {
                        fx.assert_holds(ckpt, 2, E3);
                    } else if !replaces || !holds_new {
                        fx.assert_holds(ckpt, 1, E2);
                    } else {
                        // E2 replaced: the new version once its rename reached the log.
                        fx.assert_holds(ckpt, 2, E2);
                    }
                }
                // Nothing complete before is lost, except by a prune after the new one
                // is in place.
                let newest = listed.last().map(|p| name_of(p));
                if replaces {
                    assert!(listed.contains(&e1), "{what}: {listed:?}");
                    if !listed.contains(&e2) {
                        // Killed between the two renames: the old E2 is whole, aside.
                        assert!(crash, "{what}: {listed:?}");
                        let aside = dir.join(format!("{TRASH_PREFIX}{}-{WRITER}", name_of(&e2)));
                        fx.assert_holds(&aside, 1, E2);
                    }
                } else {
                    assert!(listed.contains(&e2), "{what}: {listed:?}");
                    assert!(listed.contains(&e1) || listed.contains(&e3), "{what}: {listed:?}");
                    assert!(newest == Some(name_of(&e2)) || newest == Some(name_of(&e3)), "{what}");
                }
                if !crash {
                    assert!(leftovers(&dir, TMP_PREFIX).is_empty(), "{what}: temp folder left");
                }

                // Running again (after a restart, with the same writer id) completes it.
                save_and_prune(&mut fx, &DiskIo, &dir, 2, pos)
                    .unwrap_or_else(|e| panic!("{what}: the retry fails: {e}"));
                let listed = list_checkpoints(&dir);
                if replaces {
                    assert_eq!(listed, [e1.clone(), e2.clone()], "{what}");
                    fx.assert_holds(&e2, 2, E2);
                } else {
                    assert_eq!(listed, [e2.clone(), e3.clone()], "{what}");
                    fx.assert_holds(&e3, 2, E3);
                }
                assert!(leftovers(&dir, TMP_PREFIX).is_empty(), "{what}: temp folder left");
            }
        }
    }
}

#[test]
fn checkpoints_order_by_number_not_by_name() {
    let mut fx = Fixture::new(2);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("checkpoints");
    let (old, new) = ((999, 9_990_000), (1000, 10_000_000));
    assert_eq!(checkpoint_name(&fx.state(old.0, old.1)), "e999-s9990000");
    assert_eq!(checkpoint_name(&fx.state(new.0, new.1)), "e1000-s10000000");
    assert_eq!(checkpoint_name(&fx.state(3, 40)), "e003-s0000040");
    fx.save(&DiskIo, &dir, WRITER, 0, old).unwrap();
    fx.save(&DiskIo, &dir, WRITER, 1, new).unwrap();
    // Folders that are not checkpoints, whatever they hold.
    for junk in ["e12", "e1-sx", "e+1-s2", "best", ".tmp-e2000-s1-77", "x2000-s1", "e2000-s"] {
        std::fs::create_dir(dir.join(junk)).unwrap();
        std::fs::write(dir.join(junk).join(STATE_FILE), "{}").unwrap();
    }
    std::fs::create_dir(dir.join("e2000-s20000000")).unwrap(); // no training state
    let names: Vec<String> = list_checkpoints(&dir).iter().map(|p| name_of(p)).collect();
    assert_eq!(names, ["e999-s9990000", "e1000-s10000000"]);

    prune_checkpoints(&DiskIo, &dir, 1).unwrap();
    let listed = list_checkpoints(&dir);
    assert_eq!(listed, [dir.join("e1000-s10000000")], "the newest is kept");
    fx.assert_holds(&listed[0], 1, new);

    assert_eq!(parse_checkpoint_name("e1000-s0000001"), Some((1000, 1)));
    assert_eq!(parse_checkpoint_name("e003-s0000040"), Some((3, 40)));
    for bad in ["e12", "e1-sx", "e+1-s2", "e-s1", ".tmp-e1-s1-5", ".trash-e1-s1-5", "E1-s1"] {
        assert_eq!(parse_checkpoint_name(bad), None, "{bad}");
    }
}

/// What a dead process left: a checkpoint complete only under its trash name (a re-save
/// that died between its two renames) comes back; an incomplete trash folder and temporary
/// folders go.
#[test]
fn recovery_puts_back_a_complete_checkpoint_and_clears_leftovers() {
    let mut fx = Fixture::new(2);
    let (_tmp, dir) = two_checkpoints(&mut fx);
    let e2 = list_checkpoints(&dir).pop().unwrap();
    let trashed = dir.join(format!("{TRASH_PREFIX}{}-77", name_of(&e2)));
    std::fs::rename(&e2, &trashed).unwrap();
    let e1 = list_checkpoints(&dir).pop().unwrap();
    let broken = dir.join(format!("{TRASH_PREFIX}{}-78", name_of(&e1)));
    copy_dir(&e1, &broken);
    std::fs::remove_file(broken.join("model.safetensors")).unwrap();
    std::fs::remove_dir_all(&e1).unwrap();
    let tmp = dir.join(format!("{TMP_PREFIX}e009-s0000090-79"));
    copy_dir(&trashed, &tmp);

    recover_checkpoints(&DiskIo, &dir).unwrap();
    assert_eq!(list_checkpoints(&dir), vec![e2.clone()], "the complete one is back, alone");
    fx.assert_holds(&e2, 1, E2);
    assert!(leftovers(&dir, TRASH_PREFIX).is_empty() && leftovers(&dir, TMP_PREFIX).is_empty());
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap().flatten() {
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
}

#[test]
fn writers_keep_to_their_own_temporary_folders() {
    let mut fx = Fixture::new(3);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("checkpoints");
    let name = checkpoint_name(&fx.state(E1.0, E1.1));
    let tmp_of = |writer: &str| dir.join(format!("{TMP_PREFIX}{name}-{writer}"));

    // Writer A dies while writing the weights of its checkpoint.
    let a_died = FaultyIo::new(Fault::Crash { at: 3 });
    fx.save(&a_died, &dir, "A", 0, E1).unwrap_err();
    assert!(tmp_of("A").join("config.json").is_file());
    assert!(list_checkpoints(&dir).is_empty());

    // Writer B saves the same name meanwhile: A's folder is not its business.
    fx.save(&DiskIo, &dir, "B", 1, E1).unwrap();
    assert!(tmp_of("A").join("config.json").is_file(), "B removed A's temp folder");
    fx.assert_holds(&dir.join(&name), 1, E1);

    // A, restarted with the same id, clears its own leftover and replaces B's checkpoint.
    fx.save(&DiskIo, &dir, "A", 0, E1).unwrap();
    fx.assert_holds(&dir.join(&name), 0, E1);
    assert!(leftovers(&dir, ".").is_empty(), "{:?}", leftovers(&dir, "."));

    // Interleaved: B writes and publishes the same name while A's files are written but
    // not yet renamed; both succeed and A's checkpoint, written last, is the one kept.
    fx.set(2);
    let b_files = checkpoint_files(&fx.loaded, &fx.optimizer, &fx.state(E1.0, E1.1)).unwrap();
    let a = FaultyIo::new(Fault::None);
    let (b_dir, b_name) = (dir.clone(), name.clone());
    let b_tmp = tmp_of("B");
    let a_tmp = tmp_of("A");
    *a.interleave.lock().unwrap() = Some(Box::new(move || {
        assert!(a_tmp.join(STATE_FILE).is_file());
        let b = FaultyIo::new(Fault::None);
        write_checkpoint(&b, &b_dir, "B", &b_name, &b_files).unwrap();
        assert!(!b.log().iter().any(|op| matches!(op, Op::RemoveDirAll(p) if p == &a_tmp)));
        assert!(a_tmp.join(STATE_FILE).is_file(), "B removed A's temp folder");
        assert!(!b_tmp.exists());
    }));
    fx.save(&a, &dir, "A", 1, E1).unwrap();
    fx.assert_holds(&dir.join(&name), 1, E1);
    assert_eq!(list_checkpoints(&dir), [dir.join(&name)]);
    assert!(leftovers(&dir, ".").is_empty(), "{:?}", leftovers(&dir, "."));

    // The default writer id is this process's.
    fx.set(0);
    let state = fx.state(E2.0, E2.1);
    let io = FaultyIo::new(Fault::None);
    save_checkpoint(&io, &dir, &fx.loaded, &fx.optimizer, &state).unwrap();
    let own_tmp =
        dir.join(format!("{TMP_PREFIX}{}-{}", checkpoint_name(&state), std::process::id()));
    assert!(io.log().contains(&Op::SyncDir(own_tmp)), "{:#?}", io.log());
}

#[test]
fn non_finite_weights_or_moments_are_refused_on_load() {
    let mut fx = Fixture::new(1);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("checkpoints");

    // A NaN in one weight.
    fx.set(0);
    let (name, var) =
        fx.loaded.vs.variables().into_iter().find(|(n, _)| n.ends_with("ln_f.weight")).unwrap();
    let _ = tch::no_grad(|| var.shallow_clone().get(3).fill_(f64::NAN));
    let state = fx.state(E1.0, E1.1);
    let ckpt = save_checkpoint(&DiskIo, &dir, &fx.loaded, &fx.optimizer, &state).unwrap();
    let err = load_checkpoint(&ckpt, Device::Cpu, ADAMW, Partition::WHOLE).unwrap_err();
    let TrainError::Model(ModelError::NonFiniteTensor { path, name: found }) = &err else {
        panic!("{err}")
    };
    assert_eq!(path, &ckpt.join(coconut_model::WEIGHTS_FILE));
    assert_eq!(found, &name);
    let text = err.to_string();
    assert!(text.contains("model.safetensors") && text.contains(&name), "{text}");

    // An infinity in one moment, the weights fine.
    fx.set(0);
    let mut moments: BTreeMap<String, Tensor> =
        fx.versions[0].moments.iter().map(|(k, t)| (k.clone(), t.shallow_clone())).collect();
    let key = moments.keys().find(|k| k.starts_with("exp_avg_sq.")).unwrap().clone();
    let bad = moments[&key].copy();
    let _ = bad.view([-1]).get(0).fill_(f64::INFINITY);
    moments.insert(key.clone(), bad);
    fx.optimizer.load_state(1, |_| Ok(shallow(&moments))).unwrap();
    let state = fx.state(E2.0, E2.1);
    let ckpt = save_checkpoint(&DiskIo, &dir, &fx.loaded, &fx.optimizer, &state).unwrap();
    let err = load_checkpoint(&ckpt, Device::Cpu, ADAMW, Partition::WHOLE).unwrap_err();
    let TrainError::Model(ModelError::NonFiniteTensor { path, name: found }) = &err else {
        panic!("{err}")
    };
    assert_eq!(path, &ckpt.join(OPTIMIZER_FILE));
    assert_eq!(found, &key);

    // The same checkpoint with finite moments loads.
    fx.set(0);
    let ckpt = save_checkpoint(&DiskIo, &dir, &fx.loaded, &fx.optimizer, &state).unwrap();
    fx.assert_holds(&ckpt, 0, E2);
}

#[test]
fn a_write_error_names_the_file_and_prints_the_os_error_once() {
    let mut fx = Fixture::new(1);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("checkpoints");
    std::fs::create_dir(&dir).unwrap();
    // Operation 0 creates the temp folder, 1 writes config.json, 2 the weights.
    let io = FaultyIo::new(Fault::Once { at: 2 });
    let err = fx.save(&io, &dir, WRITER, 0, E1).unwrap_err();
    let text = err.to_string();
    assert!(text.ends_with("model.safetensors: No space left on device (os error 28)"), "{text}");
    assert_eq!(text.matches("os error").count(), 1, "{text}");
    assert_names_a_file(&err, &dir, "ENOSPC");
    assert!(leftovers(&dir, ".").is_empty());
}

/// A map of shallow clones, for `AdamW::load_state`'s reader.
fn shallow(tensors: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    tensors.iter().map(|(k, t)| (k.clone(), t.shallow_clone())).collect()
}
