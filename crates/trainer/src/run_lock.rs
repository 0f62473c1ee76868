//! One owner per run folder. A run holds an advisory lock on `<run>/.lock` from before it
//! looks for checkpoints until it ends; a second run of the same folder (same or another
//! config) gets [`TrainError::RunInUse`] naming the holder's process id instead of sharing
//! the folder and deleting the other's checkpoints. The operating system releases the lock
//! when the holder exits, however it exits, so a killed run never leaves the folder locked.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use crate::error::TrainError;

/// The lock file inside a run folder.
pub const LOCK_FILE: &str = ".lock";

/// The held lock of a run folder; dropping it releases the folder.
#[derive(Debug)]
pub struct RunLock {
    // Holding the open file holds the lock.
    _file: File,
}

impl RunLock {
    /// Locks `run_dir` (created if needed) for this process, or says who holds it.
    pub fn acquire(run_dir: &Path) -> Result<Self, TrainError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |error| TrainError::Io { path, error }
        };
        std::fs::create_dir_all(run_dir).map_err(io(run_dir))?;
        let path = run_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "(unknown)".to_string(),
                    pid => pid.to_string(),
                };
                return Err(TrainError::RunInUse { path, holder });
            }
            Err(TryLockError::Error(error)) => return Err(TrainError::Io { path, error }),
        }
        // The holder's pid, for the message another run prints.
        file.set_len(0).map_err(io(&path))?;
        file.rewind().map_err(io(&path))?;
        writeln!(file, "{}", std::process::id()).map_err(io(&path))?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_owner_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let first = RunLock::acquire(&run).unwrap();
        let err = RunLock::acquire(&run).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, TrainError::RunInUse { .. }), "{text}");
        assert!(text.contains(&std::process::id().to_string()), "{text}");
        assert!(text.contains(".lock"), "{text}");
        drop(first);
        RunLock::acquire(&run).unwrap();
        assert!(run.join(LOCK_FILE).is_file());
    }
}
