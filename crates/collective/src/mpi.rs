//! MPI over the system's library, through the `mpi` crate (rsmpi).

use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::traits::{Communicator, CommunicatorCollectives, Equivalence, Root};
use mpi::Threading;

use crate::{check_root, shard_len, Collective, CollectiveError};

const ENGINE: &str = "mpi";

/// Elements per MPI call in the sums: MPI counts are C `int`s, and summing through a
/// bounded scratch buffer keeps the extra memory at 16 MiB (f32) whatever the model size.
const CHUNK: usize = 1 << 22;

/// The variables MPI launchers set in every rank's environment: OpenMPI's `mpirun`, and
/// the PMI / PMIx process managers (MPICH's `mpiexec`, Slurm's `srun`).
const LAUNCHER_VARIABLES: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"];

/// `MPI_COMM_WORLD` of the system's MPI library.
///
/// Error handling is MPI's default, `MPI_ERRORS_ARE_FATAL`: an MPI error inside a call ends
/// the whole job (the library aborts every rank) instead of returning, so the methods'
/// errors are only about their arguments. When a rank dies outside MPI (a panic, a signal,
/// an exit without finalising), `mpirun` ends the other ranks and exits non-zero, naming
/// the rank that failed; no rank is left waiting in a collective.
///
/// Dropping the engine finalises MPI (`MPI_Finalize`, itself collective: every rank must
/// drop it); MPI cannot be initialised again in that process.
/// [`Collective::all_reduce_sum_device`] is not supported: a CUDA run uses
/// [`crate::Nccl`], set up through this engine by [`crate::Nccl::from_mpi`].
pub struct Mpi {
    // Dropped last: finalises MPI.
    universe: Universe,
    rank: usize,
    world_size: usize,
    local_rank: usize,
    scratch_f32: Vec<f32>,
    scratch_f64: Vec<f64>,
    scratch_bytes: Vec<u8>,
}

impl Mpi {
    /// Initialises MPI (`MPI_Init_thread`) and returns the world.
    ///
    /// The threading level asked for is `MPI_THREAD_SERIALIZED`: any thread may call MPI,
    /// one at a time. `MPI_THREAD_FUNNELED` (only the main thread calls) would do for a
    /// trainer that keeps the engine on its main thread, but the engine is `Send`, and
    /// `&mut self` on every operation already guarantees the calls never overlap, which is
    /// exactly what SERIALIZED requires. OpenMPI 4.1 provides it at no cost.
    ///
    /// Fails if MPI was already initialised in this process, or if the library offers a
    /// lower threading level. Collective: every rank calls it.
    pub fn init() -> Result<Mpi, CollectiveError> {
        let fail = |message: String| CollectiveError::Failed {
            engine: ENGINE,
            operation: "init",
            rank: None,
            message,
        };
        let (universe, provided) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| fail("MPI is already initialised in this process".into()))?;
        if provided < Threading::Serialized {
            return Err(fail(format!(
                "the MPI library offers threading level {provided:?}, below the Serialized \
                 this engine needs"
            )));
        }
        let world = universe.world();
        let (rank, world_size) = (world.rank() as usize, world.size() as usize);
        // The ranks on this node: a communicator per shared-memory domain. Launcher
        // independent, unlike OMPI_COMM_WORLD_LOCAL_RANK and friends.
        let local_rank = world.split_shared(world.rank()).rank() as usize;
        Ok(Mpi {
            universe,
            rank,
            world_size,
            local_rank,
            scratch_f32: Vec::new(),
            scratch_f64: Vec::new(),
            scratch_bytes: Vec::new(),
        })
    }

    /// Whether this process was started by an MPI launcher (`mpirun`, `mpiexec`, `srun`):
    /// one of `OMPI_COMM_WORLD_SIZE`, `PMI_SIZE` or `PMIX_RANK` is set. Checked before
    /// [`Mpi::init`], so that a run without a launcher stays a [`crate::Single`] run.
    pub fn is_launched_by_mpirun() -> bool {
        LAUNCHER_VARIABLES.iter().any(|name| std::env::var_os(name).is_some())
    }

    /// This rank's index among the ranks on its node, `0..` the node's rank count: the CUDA
    /// device to use. Found at [`Mpi::init`] by splitting the world by shared memory
    /// (`MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)`, ordered by world rank), so it is the
    /// same as `OMPI_COMM_WORLD_LOCAL_RANK` under OpenMPI's `mpirun` and needs no launcher
    /// variable.
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// The MPI library's own version string (`MPI_Get_library_version`), for logs.
    pub fn library_version(&self) -> String {
        mpi::environment::library_version()
            .map(|version| version.trim_end_matches(['\0', '\n', ' ']).to_string())
            .unwrap_or_else(|_| "unknown".into())
    }

    fn too_large(operation: &'static str, what: String) -> CollectiveError {
        CollectiveError::InvalidArgument {
            engine: ENGINE,
            operation,
            message: format!("{what} exceeds MPI's count limit of {} elements", i32::MAX),
        }
    }
}

/// Sums `values` in chunks of [`CHUNK`] through `scratch`.
fn sum_in_chunks<T: Equivalence + Copy + Default>(
    universe: &Universe,
    values: &mut [T],
    scratch: &mut Vec<T>,
) {
    let world = universe.world();
    scratch.resize(values.len().min(CHUNK), T::default());
    for chunk in values.chunks_mut(CHUNK) {
        let received = &mut scratch[..chunk.len()];
        world.all_reduce_into(&*chunk, received, SystemOperation::sum());
        chunk.copy_from_slice(received);
    }
}

/// The device operations' error: a host engine sums host buffers.
fn device_unsupported(operation: &'static str) -> CollectiveError {
    CollectiveError::Unsupported {
        engine: ENGINE,
        operation,
        hint: "device buffers are summed by the nccl engine (Nccl::from_mpi)",
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&mut self, values: &mut [f32]) -> Result<(), CollectiveError> {
        sum_in_chunks(&self.universe, values, &mut self.scratch_f32);
        Ok(())
    }

    fn all_reduce_sum_f64(&mut self, values: &mut [f64]) -> Result<(), CollectiveError> {
        sum_in_chunks(&self.universe, values, &mut self.scratch_f64);
        Ok(())
    }

    unsafe fn all_reduce_sum_device(
        &mut self,
        _ptr: u64,
        _len: usize,
    ) -> Result<(), CollectiveError> {
        Err(device_unsupported("all_reduce_sum_device"))
    }

    /// `MPI_Reduce_scatter_block` in chunks: each chunk of the shard length packs the
    /// ranks' pieces of it side by side in scratch memory (at most 4 Mi elements), so that
    /// MPI's counts stay C ints and the extra memory bounded.
    fn reduce_scatter_sum(&mut self, values: &mut [f32]) -> Result<(), CollectiveError> {
        let (world_size, rank) = (self.world_size, self.rank);
        let shard = shard_len(ENGINE, "reduce_scatter_sum", values.len(), world_size)?;
        let chunk = (CHUNK / world_size).max(1).min(shard);
        self.scratch_f32.resize(chunk * (world_size + 1), 0.0);
        let (send, received) = self.scratch_f32.split_at_mut(chunk * world_size);
        let world = self.universe.world();
        for start in (0..shard).step_by(chunk.max(1)) {
            let n = chunk.min(shard - start);
            for (q, piece) in send[..n * world_size].chunks_mut(n).enumerate() {
                piece.copy_from_slice(&values[q * shard + start..][..n]);
            }
            world.reduce_scatter_block_into(
                &send[..n * world_size],
                &mut received[..n],
                SystemOperation::sum(),
            );
            values[rank * shard + start..][..n].copy_from_slice(&received[..n]);
        }
        Ok(())
    }

    /// `MPI_Allgather` in chunks of the shard, through scratch memory of at most 16 MiB.
    fn all_gather_shards(&mut self, values: &mut [u8]) -> Result<(), CollectiveError> {
        let (world_size, rank) = (self.world_size, self.rank);
        let shard = shard_len(ENGINE, "all_gather_shards", values.len(), world_size)?;
        let chunk = (4 * CHUNK / world_size).max(1).min(shard);
        self.scratch_bytes.resize(chunk * world_size, 0);
        let world = self.universe.world();
        for start in (0..shard).step_by(chunk.max(1)) {
            let n = chunk.min(shard - start);
            let gathered = &mut self.scratch_bytes[..n * world_size];
            world.all_gather_into(&values[rank * shard + start..][..n], &mut gathered[..]);
            for (q, piece) in gathered.chunks(n).enumerate() {
                values[q * shard + start..][..n].copy_from_slice(piece);
            }
        }
        Ok(())
    }

    unsafe fn reduce_scatter_sum_device(
        &mut self,
        _ptr: u64,
        _len: usize,
    ) -> Result<(), CollectiveError> {
        Err(device_unsupported("reduce_scatter_sum_device"))
    }

    unsafe fn all_gather_shards_device(
        &mut self,
        _ptr: u64,
        _bytes: usize,
    ) -> Result<(), CollectiveError> {
        Err(device_unsupported("all_gather_shards_device"))
    }

    fn broadcast_bytes(&mut self, bytes: &mut Vec<u8>, root: usize) -> Result<(), CollectiveError> {
        check_root(ENGINE, root, self.world_size)?;
        let world = self.universe.world();
        let root_process = world.process_at_rank(root as i32);
        let mut len = bytes.len() as u64;
        root_process.broadcast_into(&mut len);
        let len = usize::try_from(len).ok().filter(|len| i32::try_from(*len).is_ok()).ok_or_else(
            || Mpi::too_large("broadcast_bytes", format!("a broadcast of {len} bytes")),
        )?;
        if self.rank != root {
            bytes.clear();
            bytes.resize(len, 0);
        }
        // Every rank knows the length: an empty broadcast sends nothing (and an empty Vec's
        // pointer, 0x1, is OpenMPI's MPI_IN_PLACE).
        if len > 0 {
            root_process.broadcast_into(&mut bytes[..]);
        }
        Ok(())
    }

    fn all_gather_bytes(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CollectiveError> {
        let world = self.universe.world();
        let own = i32::try_from(bytes.len())
            .map_err(|_| Mpi::too_large("all_gather_bytes", format!("{} bytes", bytes.len())))?;
        let mut counts = vec![0i32; self.world_size];
        world.all_gather_into(&own, &mut counts[..]);
        let total: u64 = counts.iter().map(|&count| count as u64).sum();
        if total > i32::MAX as u64 {
            // Every rank sees the same counts, so every rank returns this error.
            return Err(Mpi::too_large("all_gather_bytes", format!("a gather of {total} bytes")));
        }
        let displacements: Vec<i32> = counts
            .iter()
            .scan(0i32, |offset, &count| {
                let start = *offset;
                *offset += count;
                Some(start)
            })
            .collect();
        let mut gathered = vec![0u8; total as usize];
        if total > 0 {
            // An empty slice's pointer may be 0x1, which OpenMPI reads as MPI_IN_PLACE: send
            // an empty slice of a real buffer instead.
            static NOTHING: [u8; 1] = [0];
            let own = if bytes.is_empty() { &NOTHING[..0] } else { bytes };
            let mut partition =
                PartitionMut::new(&mut gathered[..], &counts[..], &displacements[..]);
            world.all_gather_varcount_into(own, &mut partition);
        }
        Ok(counts
            .iter()
            .zip(&displacements)
            .map(|(&count, &start)| gathered[start as usize..(start + count) as usize].to_vec())
            .collect())
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        self.universe.world().barrier();
        Ok(())
    }

    fn name(&self) -> &'static str {
        ENGINE
    }
}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mpi")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("local_rank", &self.local_rank)
            .finish()
    }
}
