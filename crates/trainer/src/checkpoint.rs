//! Training checkpoints: an HF-compatible model folder plus the training state, written
//! atomically, found again on resume, and pruned to the newest few.
//!
//! ```text
//! <run>/checkpoints/e003-s0000120/
//!     config.json  model.safetensors  tokenizer.json   (loads with from_pretrained)
//!     optimizer.safetensors                            (AdamW moments and step)
//!     train_state.json                                 (where the run stands)
//!     manifest.json                                    (every other file's checksum)
//! ```
//!
//! A run whose optimizer state is sharded across ranks (`train.shard_optimizer`) writes one
//! optimizer file per rank instead, `optimizer-part-<r>-of-<ranks>.safetensors`, each
//! rank its own (see [`save_sharded_checkpoint`]); the model folder is the same. Either
//! kind loads into a run of any number of ranks, sharded or not.
//!
//! Every load checks the files it reads against the manifest (see [`crate::manifest`]).
//!
//! A checkpoint is first written into a hidden temporary folder and renamed into place, so
//! an interrupted save never leaves a half-written checkpoint under a real name. The order
//! of a save, each step through the [`CheckpointIo`] seam:
//!
//! 1. every file written and fsync'ed into `.tmp-<name>-<writer>` (the training state last);
//! 2. that folder fsync'ed, then renamed to `<name>` (an existing `<name>` is first renamed
//!    aside to `.trash-<name>-<writer>` and deleted only once the new one is in place);
//! 3. the `checkpoints/` folder fsync'ed;
//! 4. only then are older checkpoints pruned (each renamed to a trash name, then deleted).
//!
//! A failure at any step leaves every older complete checkpoint as it was. Only folders
//! named `e<epoch>-s<step>` count as checkpoints, ordered by the numbers they hold.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use coconut_model::{
    is_finite, pretrained_files, serialize_tensors, ModelError, CONFIG_FILE, WEIGHTS_FILE,
};
use tch::{Device, Tensor};

use crate::adamw::{AdamW, AdamWConfig};
use crate::error::TrainError;
use crate::flat::Partition;
use crate::manifest::{
    manifest_file, manifest_file_with, verify, FileSum, Verified, MANIFEST_FILE,
};
use crate::model_setup::{load_model_dir, LoadedModel};
use crate::ranks::Ranks;
pub use crate::state::{read_state, LossSums, TrainState, STATE_FILE};
use coconut_curriculum::GENERATION_CONFIG_FILE;
use coconut_curriculum::TOKENIZER_FILE;

/// File of the optimizer state inside a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// The file of part `partition.rank` of a sharded optimizer state.
pub fn optimizer_part_file(partition: Partition) -> String {
    format!("{OPTIMIZER_PART_PREFIX}{}-of-{}.safetensors", partition.rank, partition.ranks)
}

/// The start of the name of every part of a sharded optimizer state.
const OPTIMIZER_PART_PREFIX: &str = "optimizer-part-";

/// Whether `file` holds optimizer state (the whole of it, or a part): what a checkpoint's
/// loader checks when it reads it, and a model loader never reads.
pub fn is_optimizer_file(file: &str) -> bool {
    file == OPTIMIZER_FILE || file.starts_with(OPTIMIZER_PART_PREFIX)
}

/// The optimizer files of the checkpoint whose training state is `state`: one, or one per
/// rank of a run whose optimizer was sharded, in rank order.
pub fn optimizer_files(state: &TrainState) -> Vec<String> {
    if !state.config.train.shard_optimizer || state.ranks <= 1 {
        return vec![OPTIMIZER_FILE.to_string()];
    }
    (0..state.ranks)
        .map(|rank| optimizer_part_file(Partition { rank, ranks: state.ranks }))
        .collect()
}
/// Name prefix of a checkpoint being written (`.tmp-<name>-<writer>`); never a checkpoint.
pub const TMP_PREFIX: &str = ".tmp-";
/// Name prefix of a checkpoint being deleted (`.trash-<name>-<writer>`); never a checkpoint.
pub const TRASH_PREFIX: &str = ".trash-";

/// The file-system operations a checkpoint save and prune perform, and nothing else: the
/// seam where tests record their order and inject faults. [`DiskIo`] is the real one.
pub trait CheckpointIo: Send + Sync {
    /// Creates the folder `dir`, whose parent exists.
    fn create_dir(&self, dir: &Path) -> io::Result<()>;
    /// Creates (or truncates) the file `path`, writes all of `bytes` and fsyncs the file.
    fn write_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Fsyncs the folder `dir`, making the entries created or renamed in it durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Renames a file or folder (atomic within one file system). A folder is never renamed
    /// over an existing non-empty folder.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes the folder `dir` and everything in it.
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;
}

/// [`CheckpointIo`] on the real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskIo;

impl CheckpointIo for DiskIo {
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir(dir)
    }

    fn write_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut file = std::fs::File::create(path)?;
        file.write_all(bytes)?;
        file.sync_all()
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        // Only Unix can open a folder to fsync it; elsewhere renames are made durable by the
        // file system itself.
        #[cfg(unix)]
        std::fs::File::open(dir)?.sync_all()?;
        #[cfg(not(unix))]
        let _ = dir;
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(dir)
    }
}

/// A checkpoint folder's name, `e<epoch>-s<global step>` zero-padded to 3 and 7 digits
/// (wider numbers get longer: order with [`parse_checkpoint_name`], never as strings).
pub fn checkpoint_name(state: &TrainState) -> String {
    format!("e{:03}-s{:07}", state.epoch, state.global_step)
}

/// The (epoch, global step) of a checkpoint folder name `e<digits>-s<digits>`; `None` for
/// any other name (temporary and trash folders included).
pub fn parse_checkpoint_name(name: &str) -> Option<(u64, u64)> {
    let (epoch, step) = name.strip_prefix('e')?.split_once("-s")?;
    let number = |digits: &str| {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse::<u64>().ok()
    };
    Some((number(epoch)?, number(step)?))
}

/// The files of a checkpoint as bytes, in the order they are written: the HF model folder,
/// the tokenizer, the optimizer state, the training state, and last the manifest of their
/// checksums.
///
/// # Panics
/// If the optimizer holds only a part of the state (see [`save_sharded_checkpoint`]).
pub fn checkpoint_files(
    loaded: &LoadedModel,
    optimizer: &AdamW,
    state: &TrainState,
) -> Result<Vec<(&'static str, Vec<u8>)>, TrainError> {
    assert!(optimizer.partition().is_whole(), "a sharded optimizer saves its part alone");
    let masters = optimizer.masters().expect("a whole optimizer holds every master");
    let optimizer_file = (OPTIMIZER_FILE, optimizer_bytes(optimizer, OPTIMIZER_FILE)?);
    shared_files(loaded, masters, Some(optimizer_file), state, &[])
}

/// The files rank 0 writes: the model folder from `masters`, the tokenizer, the optimizer
/// file when there is one, the training state, and the manifest of these and of the
/// `others` (files the other ranks wrote, with their checksums).
fn shared_files(
    loaded: &LoadedModel,
    masters: Vec<(String, Tensor)>,
    optimizer_file: Option<(&'static str, Vec<u8>)>,
    state: &TrainState,
    others: &[(String, FileSum)],
) -> Result<Vec<(&'static str, Vec<u8>)>, TrainError> {
    let mut files = pretrained_files(masters, loaded.model.as_ref());
    files.push((TOKENIZER_FILE, loaded.tokenizer.to_json()?.into_bytes()));
    for (name, text) in loaded.tokenizer.config_files() {
        files.push((name, text.into_bytes()));
    }
    files.push((GENERATION_CONFIG_FILE, generation_config(&loaded.tokenizer).into_bytes()));
    files.extend(optimizer_file);
    let json = serde_json::to_string_pretty(state).expect("the state serialises");
    files.push((STATE_FILE, json.into_bytes()));
    files.push((MANIFEST_FILE, manifest_file_with(&files, others)));
    Ok(files)
}

/// The optimizer's state (its part, when sharded) as the bytes of `file`.
fn optimizer_bytes(optimizer: &AdamW, file: &str) -> Result<Vec<u8>, TrainError> {
    serialize_tensors(&optimizer.state(), None)
        .map_err(|message| ModelError::Weights { path: PathBuf::from(file), message }.into())
}

/// The `generation_config.json` of a checkpoint: every stop id, so that transformers'
/// `generate` stops where our evaluation does, and the BOS and padding ids.
fn generation_config(tokenizer: &coconut_curriculum::Tokenizer) -> String {
    let special = tokenizer.special();
    let json = serde_json::json!({
        "bos_token_id": special.bos,
        "eos_token_id": tokenizer.stop_ids(),
        "pad_token_id": special.pad,
    });
    serde_json::to_string_pretty(&json).expect("JSON always prints")
}

/// Writes a checkpoint into `dir/<name>` atomically and durably, through `io`, and returns
/// its path. The temporary folder is named after this process; see [`save_checkpoint_as`].
pub fn save_checkpoint(
    io: &dyn CheckpointIo,
    dir: &Path,
    loaded: &LoadedModel,
    optimizer: &AdamW,
    state: &TrainState,
) -> Result<PathBuf, TrainError> {
    save_checkpoint_as(io, dir, &std::process::id().to_string(), loaded, optimizer, state)
}

/// [`save_checkpoint`] with the temporary and trash folders named after `writer`, which
/// distinguishes processes that may write into the same folder: a writer only ever removes
/// its own leftovers.
///
/// Order: every file written and fsync'ed into `.tmp-<name>-<writer>`, that folder
/// fsync'ed, renamed to `<name>`, then `dir` fsync'ed. An existing `<name>` (a resumed run
/// saving the same position again) is renamed aside first and deleted once the new one is
/// in place, so some complete `<name>` exists at every moment but between the two renames.
/// On failure the temporary folder is removed when possible and the error names the file
/// or folder at fault.
pub fn save_checkpoint_as(
    io: &dyn CheckpointIo,
    dir: &Path,
    writer: &str,
    loaded: &LoadedModel,
    optimizer: &AdamW,
    state: &TrainState,
) -> Result<PathBuf, TrainError> {
    let files = checkpoint_files(loaded, optimizer, state)?;
    write_checkpoint(io, dir, writer, &checkpoint_name(state), &files)
}

/// Saves a checkpoint of a run whose optimizer state is sharded across `ranks`: called by
/// every rank, each with its part of the optimizer and the gathered f32 `masters`.
///
/// Rank 0 makes the temporary folder; each rank writes and fsyncs its optimizer part into
/// it and hands rank 0 the part's checksum; rank 0 writes the model folder, the training
/// state and the one manifest that lists every file, then publishes and fsyncs as
/// [`write_checkpoint`] does. No process holds more than its own part of the optimizer
/// state. Returns the checkpoint's path (on every rank).
pub fn save_sharded_checkpoint(
    io: &dyn CheckpointIo,
    dir: &Path,
    loaded: &LoadedModel,
    optimizer: &AdamW,
    masters: Vec<(String, Tensor)>,
    state: &TrainState,
    ranks: &Ranks,
) -> Result<PathBuf, TrainError> {
    let name = checkpoint_name(state);
    // Rank 0 makes the temporary folder, named after its process, and hands the name out;
    // an empty name says it could not. Every rank then fails together: one that returned
    // alone would leave the others waiting in the next collective.
    let (mut writer, mut started) = (Vec::new(), Ok(()));
    if ranks.is_main() {
        let own = std::process::id().to_string();
        started = start_checkpoint(io, dir, &temporary_folder(dir, &name, &own));
        if started.is_ok() {
            writer = own.into_bytes();
        }
    }
    ranks.broadcast(&mut writer)?;
    started?;
    let not_saved = |why: &str| TrainError::Checkpoint {
        path: dir.join(&name),
        message: format!("not saved: {why}"),
    };
    if writer.is_empty() {
        return Err(not_saved("rank 0 could not make its temporary folder"));
    }
    let writer = String::from_utf8_lossy(&writer).into_owned();
    let tmp = temporary_folder(dir, &name, &writer);
    // Each rank's part, then its checksum to every rank (nothing: it could not write it).
    let file = optimizer_part_file(optimizer.partition());
    let path = tmp.join(&file);
    let written = optimizer_bytes(optimizer, &file).and_then(|bytes| {
        io.write_file(&path, &bytes).map_err(io_error(&path))?;
        Ok(serde_json::to_vec(&(&file, FileSum::of(&bytes))).expect("a checksum serialises"))
    });
    let sums = ranks.gather(written.as_deref().unwrap_or_default())?;
    written?;
    if let Some(rank) = sums.iter().position(Vec::is_empty) {
        return Err(not_saved(&format!("rank {rank} could not write its optimizer part")));
    }
    if !ranks.is_main() {
        return Ok(dir.join(name));
    }
    let others = sums
        .iter()
        .map(|bytes| serde_json::from_slice(bytes))
        .collect::<Result<Vec<(String, FileSum)>, _>>()
        .map_err(|e| TrainError::Checkpoint { path: tmp.clone(), message: e.to_string() })?;
    let files = shared_files(loaded, masters, None, state, &others)?;
    finish_checkpoint(io, dir, &writer, &name, &tmp, &files)
}

/// The writing part of [`save_checkpoint_as`]: publishes `files` (in order, the training
/// state last, as [`checkpoint_files`] gives them) as the checkpoint `dir/<name>`.
pub fn write_checkpoint(
    io: &dyn CheckpointIo,
    dir: &Path,
    writer: &str,
    name: &str,
    files: &[(&'static str, Vec<u8>)],
) -> Result<PathBuf, TrainError> {
    let tmp = temporary_folder(dir, name, writer);
    start_checkpoint(io, dir, &tmp)?;
    finish_checkpoint(io, dir, writer, name, &tmp, files)
}

/// Where `writer` writes the checkpoint `name` of `dir` before publishing it.
fn temporary_folder(dir: &Path, name: &str, writer: &str) -> PathBuf {
    dir.join(format!("{TMP_PREFIX}{name}-{writer}"))
}

/// Makes `dir` (and its missing ancestors) and the empty temporary folder `tmp` in it,
/// removing what an earlier failed or killed save of the same writer left there.
fn start_checkpoint(io: &dyn CheckpointIo, dir: &Path, tmp: &Path) -> Result<(), TrainError> {
    let missing: Vec<&Path> =
        dir.ancestors().take_while(|d| !d.as_os_str().is_empty() && !d.is_dir()).collect();
    for d in missing.into_iter().rev() {
        io.create_dir(d).map_err(io_error(d))?;
    }
    if tmp.exists() {
        io.remove_dir_all(tmp).map_err(io_error(tmp))?;
    }
    io.create_dir(tmp).map_err(io_error(tmp))
}

/// Writes `files` into the temporary folder `tmp` and publishes it as `dir/<name>`; on
/// failure the temporary folder is removed when possible.
fn finish_checkpoint(
    io: &dyn CheckpointIo,
    dir: &Path,
    writer: &str,
    name: &str,
    tmp: &Path,
    files: &[(&'static str, Vec<u8>)],
) -> Result<PathBuf, TrainError> {
    let aside = dir.join(format!("{TRASH_PREFIX}{name}-{writer}"));
    let dst = dir.join(name);
    match publish(io, dir, files, tmp, &aside, &dst) {
        Ok(()) => Ok(dst),
        Err(e) => {
            if tmp.exists() {
                // Best effort: the error at hand is the one to report.
                let _ = io.remove_dir_all(tmp);
            }
            Err(e)
        }
    }
}

/// Steps 1 to 3 of a save (see the module documentation), into the existing `tmp`.
fn publish(
    io: &dyn CheckpointIo,
    dir: &Path,
    files: &[(&'static str, Vec<u8>)],
    tmp: &Path,
    aside: &Path,
    dst: &Path,
) -> Result<(), TrainError> {
    for (file, bytes) in files {
        let path = tmp.join(file);
        io.write_file(&path, bytes).map_err(io_error(&path))?;
    }
    io.sync_dir(tmp).map_err(io_error(tmp))?;
    let replacing = dst.exists();
    if replacing {
        if aside.exists() {
            io.remove_dir_all(aside).map_err(io_error(aside))?;
        }
        io.rename(dst, aside).map_err(io_error(dst))?;
    }
    if let Err(error) = io.rename(tmp, dst) {
        if replacing {
            // Put the old checkpoint back; if even that fails it stays complete under
            // its trash name.
            let _ = io.rename(aside, dst);
        }
        return Err(TrainError::Io { path: dst.to_path_buf(), error });
    }
    // If this fails, the old checkpoint stays under its trash name: the rename may not
    // have reached the disk yet.
    io.sync_dir(dir).map_err(io_error(dir))?;
    if replacing {
        io.remove_dir_all(aside).map_err(io_error(aside))?;
    }
    Ok(())
}

/// The `map_err` of a failed operation on `path`.
fn io_error(path: &Path) -> impl FnOnce(io::Error) -> TrainError {
    let path = path.to_path_buf();
    move |error| TrainError::Io { path, error }
}

/// Complete checkpoint folders of `dir`, oldest first by (epoch, step). Only folders named
/// `e<epoch>-s<step>` holding a training state count.
pub fn list_checkpoints(dir: &Path) -> Vec<PathBuf> {
    checkpoint_folders(dir, |path| path.join(STATE_FILE).is_file())
}

/// Folders of `dir` named like checkpoints that are not complete ones (no training state),
/// oldest first: what [`list_checkpoints`] leaves out, for a resume to name.
pub fn incomplete_checkpoints(dir: &Path) -> Vec<PathBuf> {
    checkpoint_folders(dir, |path| path.is_dir() && !path.join(STATE_FILE).is_file())
}

/// The entries of `dir` named `e<epoch>-s<step>` that `keep` accepts, oldest first.
fn checkpoint_folders(dir: &Path, keep: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<((u64, u64), PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let key = parse_checkpoint_name(e.file_name().to_str()?)?;
            let path = e.path();
            keep(&path).then_some((key, path))
        })
        .collect();
    found.sort_by_key(|(key, _)| *key);
    found.into_iter().map(|(_, path)| path).collect()
}

/// Tidies a checkpoint folder before a run writes to it. The caller holds the run's lock
/// (`<run>/.lock`, which the trainer takes first), so no other writer is at work and
/// whatever temporary or trash folder is there was left by a process that died. A checkpoint left complete
/// only under its trash name (a save that died between its two renames) is put back under
/// its own name when that name is free; every other leftover is deleted.
pub fn recover_checkpoints(io: &dyn CheckpointIo, dir: &Path) -> Result<(), TrainError> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    let complete = |path: &Path| {
        [CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, STATE_FILE]
            .iter()
            .all(|file| path.join(file).is_file())
            && read_state(path)
                .is_ok_and(|state| optimizer_files(&state).iter().all(|f| path.join(f).is_file()))
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let path = entry.path();
        if let Some(rest) = name.strip_prefix(TRASH_PREFIX) {
            // `<checkpoint name>-<writer>`
            let original = rest.rsplit_once('-').map(|(n, _)| n);
            if let Some(original) = original.filter(|n| parse_checkpoint_name(n).is_some()) {
                let dst = dir.join(original);
                if !dst.exists() && complete(&path) {
                    io.rename(&path, &dst).map_err(io_error(&path))?;
                    io.sync_dir(dir).map_err(io_error(dir))?;
                    continue;
                }
            }
            io.remove_dir_all(&path).map_err(io_error(&path))?;
        } else if name.starts_with(TMP_PREFIX) {
            io.remove_dir_all(&path).map_err(io_error(&path))?;
        }
    }
    Ok(())
}

/// Loads a checkpoint: the model and tokenizer, an optimizer holding `partition`'s part of
/// the saved state (re-partitioned from however many parts it was saved in), and the
/// training state. Any missing or corrupt file is an error naming it, and so is a file
/// whose checksum differs from the manifest's.
pub fn load_checkpoint(
    ckpt: &Path,
    device: Device,
    adamw: AdamWConfig,
    partition: Partition,
) -> Result<(LoadedModel, AdamW, TrainState), TrainError> {
    let state = read_state(ckpt)?;
    let files = optimizer_files(&state);
    let loaded = load_model_dir(ckpt, device, &state.config.model.latent_init_token)?;
    let mut optimizer =
        AdamW::sharded(loaded.vs.variables(), adamw, state.precision().kind(), partition);
    // A file's own error (unreadable, not finite) is kept whole; the state's mismatches are
    // about the files together.
    let mut failure = None;
    let loaded_state = optimizer.load_state(files.len(), |part| {
        read_optimizer_file(ckpt, &files[part], device).map_err(|e| {
            let message = e.to_string();
            failure = Some(e);
            message
        })
    });
    if let Some(error) = failure {
        return Err(error);
    }
    let at = if files.len() == 1 { ckpt.join(&files[0]) } else { ckpt.to_path_buf() };
    loaded_state.map_err(|message| TrainError::Checkpoint { path: at, message })?;
    Ok((loaded, optimizer, state))
}

/// The tensors of the optimizer file `file` of the checkpoint `ckpt`, on `device`, every one
/// finite, the file first checked against the manifest (the model's files are checked by
/// `load_model_dir`; only the optimizer files a load reads are checked).
fn read_optimizer_file(
    ckpt: &Path,
    file: &str,
    device: Device,
) -> Result<BTreeMap<String, Tensor>, TrainError> {
    let path = &ckpt.join(file);
    if verify(ckpt, |listed| listed == file)? == Verified::Checked(0) {
        let message = format!("not listed in {}", ckpt.join(MANIFEST_FILE).display());
        return Err(TrainError::Checkpoint { path: path.clone(), message });
    }
    let tensors: BTreeMap<String, Tensor> = Tensor::read_safetensors(path)
        .map_err(|e| TrainError::Checkpoint { path: path.to_path_buf(), message: e.to_string() })?
        .into_iter()
        .map(|(n, t)| (n, t.to_device(device)))
        .collect();
    if let Some(name) = tensors.iter().find(|(_, t)| !is_finite(t)).map(|(n, _)| n) {
        let path = path.to_path_buf();
        return Err(ModelError::NonFiniteTensor { path, name: name.clone() }.into());
    }
    Ok(tensors)
}

/// Copies the HF part of a checkpoint (config, weights, tokenizer, and the tokenizer and
/// generation configs where the checkpoint has them) to `<run>/best`, written and replaced
/// the way checkpoints are (see [`write_checkpoint`]).
pub fn copy_model_folder(src: &Path, run_dir: &Path) -> Result<(), TrainError> {
    let mut files = Vec::new();
    let required = [coconut_model::CONFIG_FILE, coconut_model::WEIGHTS_FILE, TOKENIZER_FILE];
    let optional =
        [coconut_curriculum::TOKENIZER_CONFIG_FILE, coconut_curriculum::GENERATION_CONFIG_FILE];
    for (file, required) in
        required.iter().map(|f| (*f, true)).chain(optional.iter().map(|f| (*f, false)))
    {
        let path = src.join(file);
        if !required && !path.exists() {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|error| TrainError::Io { path, error })?;
        files.push((file, bytes));
    }
    files.push((MANIFEST_FILE, manifest_file(&files)));
    let writer = std::process::id().to_string();
    write_checkpoint(&DiskIo, run_dir, &writer, "best", &files)?;
    Ok(())
}

/// Deletes all but the newest `keep` checkpoints (0 keeps everything), through `io`. Each
/// is first renamed to a trash name, so a checkpoint is either complete or gone, then
/// deleted. One another process pruned already is skipped.
pub fn prune_checkpoints(io: &dyn CheckpointIo, dir: &Path, keep: usize) -> Result<(), TrainError> {
    let all = list_checkpoints(dir);
    if keep == 0 || all.len() <= keep {
        return Ok(());
    }
    let writer = std::process::id();
    for old in &all[..all.len() - keep] {
        let name = old.file_name().and_then(|n| n.to_str()).expect("a listed checkpoint name");
        let trash = dir.join(format!("{TRASH_PREFIX}{name}-{writer}"));
        if trash.exists() {
            io.remove_dir_all(&trash).map_err(io_error(&trash))?;
        }
        match io.rename(old, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(TrainError::Io { path: old.clone(), error: e }),
        }
        io.remove_dir_all(&trash).map_err(io_error(&trash))?;
    }
    Ok(())
}
