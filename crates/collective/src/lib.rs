//! Collective communication for data-parallel training: every rank (one process per GPU or
//! per CPU worker) runs the same training step on its own slice of the batch, then the ranks
//! sum their gradients so that every rank applies the same update.
//!
//! One small trait, [`Collective`], and three engines behind it, each an existing library
//! (no collective is implemented here):
//!
//! - [`Single`]: rank 0 of 1, every operation a no-op. What a run without a launcher gets, so
//!   the trainer has one code path whether it runs alone or not.
//! - `Mpi` (cargo feature `mpi`): MPI over the system's library (OpenMPI 4.1 is what is
//!   tested), for CPU runs started by `mpirun`. MPI brings the launcher, the rendezvous and
//!   the job-wide teardown when a rank dies (`mpirun` ends the whole job), and sums host
//!   buffers.
//! - [`Nccl`]: every operation with NCCL, the library PyTorch uses, for CUDA runs: buffers
//!   that live on the device are summed where they are, host buffers (loss sums, evaluation
//!   results, barriers) go through device memory. NCCL and the CUDA driver are loaded at
//!   run time when an [`Nccl`] is created, so this crate builds, and its CPU paths run,
//!   where neither exists.
//!
//! NCCL needs its unique id, made on rank 0, on every rank before it can do anything. Under
//! `mpirun` MPI broadcasts it (`Nccl::from_mpi`); under `torchrun`, which offers the
//! workers no channel of their own, rank 0 hands it to each rank over one socket at
//! `MASTER_ADDR` ([`exchange_unique_id`], 128 bytes once; [`Nccl::from_torchrun`]).
//!
//! All ranks must call the same operations in the same order with matching arguments (the
//! same `len` for sums, the same `root` for broadcasts); that is the contract of every
//! collective library, and a rank that skips a call leaves the others waiting.
//!
//! # In the trainer
//!
//! Pick the engine from the launcher, once, at start-up:
//!
//! - started by `mpirun` (with the `mpi` feature, `Mpi::is_launched_by_mpirun()`):
//!   `Mpi::init()`, then on CPU that `Mpi`, on CUDA `Nccl::from_mpi` with
//!   `Mpi::local_rank()` as the device;
//! - else started by `torchrun` ([`TorchrunEnv::from_env`] is `Some`): on CUDA
//!   [`Nccl::from_torchrun`] ([`exchange_unique_id`] then [`Nccl::new`], on device
//!   `LOCAL_RANK`); on CPU an error that tells the user to launch with `mpirun`, as
//!   torchrun brings no CPU engine;
//! - else [`Single`].
//!
//! A rank whose NCCL set-up fails under torchrun fails alone (there is no channel to tell
//! the others); torchrun ends the job when that rank exits non-zero.
//!
//! Each step, after the backward pass: copy every gradient into one flat `f32` buffer (one
//! call, not one per parameter: a collective costs a round trip whatever its size), sum it
//! ([`Collective::all_reduce_sum_device`] for a CUDA buffer, [`Collective::all_reduce_sum`]
//! for a host one), divide by the number of examples over all ranks (or by `world_size`
//! for a per-rank mean), copy back into the gradients, and step the optimizer: every rank
//! then holds the same weights. Sum loss and token counts with
//! [`Collective::all_reduce_sum_f64`]; gather evaluation results with
//! [`Collective::all_gather_bytes`]; let rank 0 alone write checkpoints and logs, with a
//! [`Collective::barrier`] where the others must wait for the file.
//!
//! ```no_run
//! use coconut_collective::{Collective, CollectiveError, Nccl, Single, TorchrunEnv};
//! use std::time::Duration;
//!
//! // (An `mpirun` launch is checked first, with the `mpi` feature.)
//! fn engine(cuda: bool) -> Result<Box<dyn Collective>, CollectiveError> {
//!     let Some(env) = TorchrunEnv::from_env() else {
//!         return Ok(Box::new(Single::new()));
//!     };
//!     let env = env?;
//!     if !cuda {
//!         return Err(CollectiveError::Environment {
//!             variable: "WORLD_SIZE",
//!             message: "torchrun launches CUDA runs only; launch CPU runs with mpirun".into(),
//!         });
//!     }
//!     Ok(Box::new(Nccl::from_torchrun(&env, Duration::from_secs(300))?))
//! }
//!
//! // Each step, with `flat` one CUDA f32 tensor holding every gradient:
//! # fn step(comm: &mut dyn Collective, flat_ptr: u64, numel: usize) -> Result<(), CollectiveError> {
//! // SAFETY: `flat` stays alive, and torch works on the default stream.
//! unsafe { comm.all_reduce_sum_device(flat_ptr, numel)? };
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod error;
#[cfg(feature = "mpi")]
mod mpi;
mod nccl;
mod rendezvous;
mod single;
mod torchrun;

pub use error::CollectiveError;
#[cfg(feature = "mpi")]
pub use mpi::Mpi;
pub use nccl::{Nccl, NCCL_UNIQUE_ID_BYTES};
pub use rendezvous::exchange_unique_id;
pub use single::Single;
pub use torchrun::TorchrunEnv;

/// The operations data-parallel training needs, over a fixed group of `world_size` ranks.
///
/// Every method is collective: all ranks call it, in the same order, with matching
/// arguments, and it returns on a rank once that rank's part is done. Methods take
/// `&mut self` so that calls through one handle never overlap.
pub trait Collective: Send {
    /// This process's rank, `0..world_size()`.
    fn rank(&self) -> usize;

    /// How many ranks take part.
    fn world_size(&self) -> usize;

    /// Sums `values` over all ranks, in place: every rank ends with the element-wise sum.
    /// All ranks must pass the same length.
    fn all_reduce_sum(&mut self, values: &mut [f32]) -> Result<(), CollectiveError>;

    /// [`Collective::all_reduce_sum`] for `f64`: for sums that must stay exact (token and
    /// answer counts, loss totals over an epoch).
    fn all_reduce_sum_f64(&mut self, values: &mut [f64]) -> Result<(), CollectiveError>;

    /// Sums `len` `f32` values that live on a CUDA device at `ptr` (a `CUdeviceptr`, as from
    /// a tensor's `data_ptr()`), in place. Only [`Nccl`] does this; [`Single`] accepts it as
    /// the identity (the sum over one rank), and `Mpi`, a host engine, returns
    /// [`CollectiveError::Unsupported`].
    ///
    /// The sum is queued on the device's default (null) stream and may still be running when
    /// this returns; work queued after it on that stream sees the sum.
    ///
    /// # Safety
    ///
    /// `ptr..ptr + 4 * len` must be one device allocation, on the engine's device, that
    /// stays allocated and is written by nothing else until the queued sum has run. NCCL
    /// writes through `ptr`: a pointer into host memory mapped for the device would let it
    /// write over memory Rust owns.
    unsafe fn all_reduce_sum_device(&mut self, ptr: u64, len: usize)
        -> Result<(), CollectiveError>;

    /// Sums `values` over the ranks where this rank keeps its shard: `values` is
    /// `world_size` equal shards laid end to end, and afterwards shard `rank()` holds the
    /// element-wise sum of every rank's shard `rank()`; the other shards are left
    /// unspecified. The first half of a sharded optimizer step (ZeRO-1): each rank then
    /// updates its shard alone. All ranks pass the same length, a multiple of
    /// `world_size`.
    fn reduce_scatter_sum(&mut self, values: &mut [f32]) -> Result<(), CollectiveError>;

    /// Hands every rank every rank's shard, in place: `values` is `world_size` equal shards
    /// of bytes laid end to end, this rank's the `rank()`-th, and afterwards every shard
    /// holds what its rank had there. The second half of a sharded optimizer step, which
    /// brings every rank the weights the others updated; bytes, so that f32 weights and
    /// bf16 copies travel as they are. All ranks pass the same length, a multiple of
    /// `world_size`.
    fn all_gather_shards(&mut self, values: &mut [u8]) -> Result<(), CollectiveError>;

    /// [`Collective::reduce_scatter_sum`] of `len` `f32` values on a CUDA device at `ptr`,
    /// queued on the default stream like [`Collective::all_reduce_sum_device`]. Only
    /// [`Nccl`] does this; [`Single`] accepts it as the identity, and `Mpi` returns
    /// [`CollectiveError::Unsupported`].
    ///
    /// # Safety
    ///
    /// As for [`Collective::all_reduce_sum_device`].
    unsafe fn reduce_scatter_sum_device(
        &mut self,
        ptr: u64,
        len: usize,
    ) -> Result<(), CollectiveError>;

    /// [`Collective::all_gather_shards`] of `bytes` bytes on a CUDA device at `ptr`, queued
    /// on the default stream. Only [`Nccl`] does this; [`Single`] accepts it as the
    /// identity, and `Mpi` returns [`CollectiveError::Unsupported`].
    ///
    /// # Safety
    ///
    /// As for [`Collective::all_reduce_sum_device`], for `bytes` bytes.
    unsafe fn all_gather_shards_device(
        &mut self,
        ptr: u64,
        bytes: usize,
    ) -> Result<(), CollectiveError>;

    /// Replaces `bytes` on every rank with rank `root`'s `bytes`. The lengths may differ
    /// between ranks: the root's length is sent first.
    fn broadcast_bytes(&mut self, bytes: &mut Vec<u8>, root: usize) -> Result<(), CollectiveError>;

    /// Every rank's `bytes`, in rank order, on every rank (lengths may differ): for
    /// gathering evaluation results.
    fn all_gather_bytes(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CollectiveError>;

    /// Returns on each rank once every rank has called it.
    fn barrier(&mut self) -> Result<(), CollectiveError>;

    /// The engine's name for logs: `"single"`, `"mpi"` or `"nccl"`.
    fn name(&self) -> &'static str;
}

/// Checks that `root` names a rank, for the broadcast of every engine.
fn check_root(engine: &'static str, root: usize, world_size: usize) -> Result<(), CollectiveError> {
    if root < world_size {
        Ok(())
    } else {
        Err(CollectiveError::InvalidArgument {
            engine,
            operation: "broadcast_bytes",
            message: format!("root {root} is not a rank of a world of {world_size}"),
        })
    }
}

/// Checks that a buffer of `len` elements splits into `world_size` equal shards, for the
/// sharded operations of every engine; returns the shard's length.
fn shard_len(
    engine: &'static str,
    operation: &'static str,
    len: usize,
    world_size: usize,
) -> Result<usize, CollectiveError> {
    if len.is_multiple_of(world_size) {
        Ok(len / world_size)
    } else {
        Err(CollectiveError::InvalidArgument {
            engine,
            operation,
            message: format!("{len} elements do not split into {world_size} equal shards"),
        })
    }
}
