//! The checksums of a checkpoint's files (`manifest.json`), so that a checkpoint whose bytes
//! changed after it was written (a damaged sector, a half-finished copy, an edit) is never
//! trusted.
//!
//! The manifest is the last file written into a checkpoint's temporary folder, before the
//! folder is published under its name; it lists every other file with its size and its
//! xxh3-128 checksum (a damage check, not a signature: several GB/s, see
//! docs/BENCHMARKS.md, "Checkpoint hashing"). Every load checks the files it reads against
//! it. A checkpoint of ours written before checkpoints carried a manifest (it has a
//! training state but no manifest) loads with a warning that it is unverified; a folder with
//! neither is an HF model folder and loads as one.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_128, Xxh3};

use crate::error::TrainError;
use crate::state::STATE_FILE;

/// File of the checksums inside a checkpoint.
pub const MANIFEST_FILE: &str = "manifest.json";

/// What `manifest.json` holds: every other file of the checkpoint by name.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    files: BTreeMap<String, FileSum>,
}

/// One file's size and checksum, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileSum {
    bytes: u64,
    /// xxh3-128 of the file's bytes, 32 hexadecimal digits.
    xxh3_128: String,
}

impl FileSum {
    /// The size and checksum of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        FileSum { bytes: bytes.len() as u64, xxh3_128: hex(xxh3_128(bytes)) }
    }
}

/// The manifest of `files` (name and bytes, as a checkpoint writes them), as the bytes of
/// [`MANIFEST_FILE`].
pub fn manifest_file(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    manifest_file_with(files, &[])
}

/// [`manifest_file`] that also lists `others`, files written elsewhere (by other ranks)
/// whose checksums were handed over.
pub fn manifest_file_with(files: &[(&str, Vec<u8>)], others: &[(String, FileSum)]) -> Vec<u8> {
    let files = (files.iter().map(|(name, bytes)| (name.to_string(), FileSum::of(bytes))))
        .chain(others.iter().cloned())
        .collect();
    let json = serde_json::to_string_pretty(&Manifest { files }).expect("a manifest serialises");
    (json + "\n").into_bytes()
}

/// What a folder's manifest says of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// This many files were checked, and each matches the manifest.
    Checked(usize),
    /// A checkpoint of ours written before checkpoints carried a manifest: nothing checked.
    Unverified,
    /// No manifest and no training state: an HF model folder, nothing to check.
    ModelFolder,
}

/// Checks the files of the checkpoint `dir` that its manifest lists and `reads` selects (the
/// files a load reads) against the manifest. A file that is missing, or whose size or
/// checksum differs, is an error naming it; so is an unreadable manifest. Without a
/// manifest, a folder holding a training state is [`Verified::Unverified`] (with a warning
/// naming it), any other a [`Verified::ModelFolder`].
pub fn verify(dir: &Path, reads: impl Fn(&str) -> bool) -> Result<Verified, TrainError> {
    let path = dir.join(MANIFEST_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if dir.join(STATE_FILE).exists() {
                tracing::warn!(
                    "{}: unverified: a checkpoint without {MANIFEST_FILE} (written before \
                     checkpoints carried checksums)",
                    dir.display()
                );
                return Ok(Verified::Unverified);
            }
            return Ok(Verified::ModelFolder);
        }
        Err(error) => return Err(TrainError::Io { path, error }),
    };
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| TrainError::Checkpoint { path: path.clone(), message: e.to_string() })?;
    let mut checked = 0;
    for (name, expected) in manifest.files.iter().filter(|(name, _)| reads(name)) {
        let file = dir.join(name);
        let damaged = |message: String| TrainError::Checkpoint { path: file.clone(), message };
        let found = file_sum(&file)?;
        if found.bytes != expected.bytes {
            return Err(damaged(format!(
                "{} bytes where {MANIFEST_FILE} records {}: the file changed after it was written",
                found.bytes, expected.bytes
            )));
        }
        if found.xxh3_128 != expected.xxh3_128 {
            return Err(damaged(format!(
                "checksum {} where {MANIFEST_FILE} records {}: the file changed after it was \
                 written",
                found.xxh3_128, expected.xxh3_128
            )));
        }
        checked += 1;
    }
    Ok(Verified::Checked(checked))
}

/// The xxh3-128 checksum of the file at `path`, as a manifest records it, read in pieces.
pub fn file_checksum(path: &Path) -> Result<String, TrainError> {
    Ok(file_sum(path)?.xxh3_128)
}

/// The size and checksum of the file at `path`, read in pieces (a model file can be larger
/// than what should be held twice in memory).
fn file_sum(path: &Path) -> Result<FileSum, TrainError> {
    let io_error = |error| TrainError::Io { path: path.to_path_buf(), error };
    let mut file = std::fs::File::open(path).map_err(io_error)?;
    let (mut hasher, mut bytes) = (Xxh3::new(), 0u64);
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(io_error)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        bytes += n as u64;
    }
    Ok(FileSum { bytes, xxh3_128: hex(hasher.digest128()) })
}

fn hex(sum: u128) -> String {
    format!("{sum:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_byte_a_changed_size_or_a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let files = [("a.bin", vec![1u8; 3000]), ("b.json", b"{}".to_vec())];
        for (name, bytes) in &files {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        std::fs::write(dir.path().join(MANIFEST_FILE), manifest_file(&files)).unwrap();
        let all = |_: &str| true;
        assert_eq!(verify(dir.path(), all).unwrap(), Verified::Checked(2));

        let mut changed = vec![1u8; 3000];
        changed[1234] = 2;
        std::fs::write(dir.path().join("a.bin"), &changed).unwrap();
        let err = verify(dir.path(), all).unwrap_err().to_string();
        assert!(err.contains("a.bin") && err.contains("checksum"), "{err}");
        // Only the files a load reads are checked.
        let only_b = |f: &str| f == "b.json";
        assert_eq!(verify(dir.path(), only_b).unwrap(), Verified::Checked(1));

        std::fs::write(dir.path().join("a.bin"), [1u8; 10]).unwrap();
        let err = verify(dir.path(), all).unwrap_err().to_string();
        assert!(err.contains("a.bin") && err.contains("10 bytes"), "{err}");
        std::fs::remove_file(dir.path().join("a.bin")).unwrap();
        assert!(verify(dir.path(), all).unwrap_err().to_string().contains("a.bin"));
    }

    #[test]
    fn folders_without_a_manifest_are_unverified_checkpoints_or_model_folders() {
        let dir = tempfile::tempdir().unwrap();
        let all = |_: &str| true;
        assert_eq!(verify(dir.path(), all).unwrap(), Verified::ModelFolder);
        std::fs::write(dir.path().join(STATE_FILE), "{}").unwrap();
        assert_eq!(verify(dir.path(), all).unwrap(), Verified::Unverified);
        std::fs::write(dir.path().join(MANIFEST_FILE), "not json").unwrap();
        let err = verify(dir.path(), all).unwrap_err().to_string();
        assert!(err.contains(MANIFEST_FILE), "{err}");
    }
}
