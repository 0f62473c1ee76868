//! Collective communication for data-parallel training: every rank (one process per GPU or
//! per CPU worker) runs the same training step on its own slice of the batch, then the ranks
//! sum their gradients so that every rank applies the same update.
//!
//! One small trait, [`Collective`], and four engines behind it, each for a reason:
//!
//! - [`Single`]: rank 0 of 1, every operation a no-op. What a run without a launcher gets, so
//!   the trainer has one code path whether it runs alone or not.
//! - `Mpi` (cargo feature `mpi`): MPI over the system's library (OpenMPI 4.1 is what is
//!   tested), for runs started by `mpirun`. MPI brings the launcher, the rendezvous and the
//!   job-wide teardown when a rank dies (`mpirun` ends the whole job), and sums host
//!   buffers: the engine for CPU training and for the host-side operations of GPU runs.
//! - [`Tcp`]: the host-side operations over plain TCP, rank 0 the hub of a star, for runs
//!   started by `torchrun` (or anything that sets its variables, [`TorchrunEnv`]) where MPI
//!   is not installed. It exists mostly to rendezvous and to carry the small host messages
//!   of an NCCL run (the NCCL id, evaluation results, barriers, loss sums); it sums host
//!   buffers correctly but through one hub, so it is not the engine for large CPU gradients.
//! - [`Nccl`]: sums buffers that live on a CUDA device with NCCL, the library PyTorch uses,
//!   without copying them to the host. It wraps a host engine (MPI or TCP) for everything
//!   that is not a device sum. NCCL and the CUDA driver are loaded at run time when an
//!   [`Nccl`] is created, so this crate builds, and its CPU paths run, where neither exists.
//!
//! All ranks must call the same operations in the same order with matching arguments (the
//! same `len` for sums, the same `root` for broadcasts); that is the contract of every
//! collective library, and a rank that skips a call leaves the others waiting.
//!
//! # In the trainer
//!
//! Pick the engine from the launcher, once, at start-up: `mpirun` (with the `mpi` feature,
//! `Mpi::is_launched_by_mpirun()` then `Mpi::init()`), else `torchrun`
//! ([`TorchrunEnv::from_env`], then [`Tcp::connect`]), else [`Single`]. On CUDA, wrap the
//! host engine in [`Nccl::with_host`] with the local rank as the device (`LOCAL_RANK`, or
//! `Mpi::local_rank()`).
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
//! use coconut_collective::{Collective, CollectiveError, Nccl, Single, Tcp, TorchrunEnv};
//! use std::time::Duration;
//!
//! fn engine(cuda: bool) -> Result<Box<dyn Collective>, CollectiveError> {
//!     let Some(env) = TorchrunEnv::from_env() else {
//!         return Ok(Box::new(Single::new()));
//!     };
//!     let env = env?;
//!     let host = Box::new(Tcp::connect(&env, Duration::from_secs(300))?);
//!     Ok(if cuda { Box::new(Nccl::with_host(host, env.local_rank)?) } else { host })
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
mod single;
mod tcp;

pub use error::CollectiveError;
#[cfg(feature = "mpi")]
pub use mpi::Mpi;
pub use nccl::{Nccl, NCCL_UNIQUE_ID_BYTES};
pub use single::Single;
pub use tcp::{Tcp, TorchrunEnv};

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
    /// the identity (the sum over one rank), and the host engines return
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

    /// Replaces `bytes` on every rank with rank `root`'s `bytes`. The lengths may differ
    /// between ranks: the root's length is sent first.
    fn broadcast_bytes(&mut self, bytes: &mut Vec<u8>, root: usize) -> Result<(), CollectiveError>;

    /// Every rank's `bytes`, in rank order, on every rank (lengths may differ): for
    /// gathering evaluation results.
    fn all_gather_bytes(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CollectiveError>;

    /// Returns on each rank once every rank has called it.
    fn barrier(&mut self) -> Result<(), CollectiveError>;

    /// The engine's name for logs: `"single"`, `"mpi"`, `"tcp"` or `"nccl"`.
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
