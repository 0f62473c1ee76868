//! The NCCL engine: a communicator on one CUDA device, and every operation of
//! [`Collective`] over it. The libraries it calls are loaded by the parent module.

use std::ffi::{c_char, c_int};
use std::time::Duration;

use super::ffi::*;
use crate::{check_root, shard_len, Collective, CollectiveError, TorchrunEnv};

/// Every operation of [`Collective`] through NCCL, between the CUDA devices of the ranks:
/// the engine of GPU runs, whichever launcher started them, with no other engine beside it.
///
/// Made by `Nccl::from_mpi` (feature `mpi`) under `mpirun`, by [`Nccl::from_torchrun`]
/// under `torchrun`, or by [`Nccl::new`] on every rank with the id rank 0 made by
/// [`Nccl::unique_id`].
///
/// Device sums ([`Collective::all_reduce_sum_device`]) are queued on the default (null)
/// stream of the engine's device, the stream libtorch runs on unless told otherwise (a
/// stream guard): the sum runs after the backward pass that wrote the gradients and before
/// the optimizer step that reads them, with no host synchronisation. Code that moves
/// torch's work to another stream must synchronise with the default stream around the sum.
///
/// The host operations (the host sums, the bytes, the barrier) copy their buffer into device
/// memory the engine keeps for them (grown to the largest buffer yet, freed on drop), run
/// the NCCL call on the default stream, wait for it, and copy the result back: they return
/// once done, after all the work queued before them on that stream. A few copies and a wait
/// each: nothing for the loss sums, barriers and evaluation results they are for, too much
/// for gradients, which are summed where they live, on the device.
///
/// Each operation pushes the engine's device context on the calling thread and pops it
/// when done, so the thread's current device is left as it was (the constructors make the
/// device current, as `torch.cuda.set_device` does).
///
/// Failures: NCCL and CUDA errors are returned, with their messages. While a host operation
/// waits, an asynchronous NCCL error (a peer's connection lost) aborts the communicator and
/// fails the call; every later call fails too. A rank that dies can leave the others
/// waiting on the GPU with nothing to notice (between the GPUs of one node NCCL sees no
/// error): what ends the job then is the launcher, as `mpirun` and `torchrun` both stop
/// every rank when one exits abnormally.
pub struct Nccl {
    comm: NcclComm,
    rank: usize,
    world_size: usize,
    /// Device memory the host operations are staged through; 0 before the first.
    staging: CuDevicePtr,
    staging_bytes: usize,
    /// Why the communicator was aborted: every later call fails with it.
    aborted: Option<String>,
    // Dropped after the communicator and the staging memory (in `Nccl::drop`).
    device: Device,
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls do not overlap,
// which `&mut self` guarantees; each operation pushes the device's context on the thread
// that calls it, and NCCL makes the communicator's device current itself.
unsafe impl Send for Nccl {}

impl Nccl {
    /// A fresh NCCL unique id, made by the rank that will be rank 0 (it opens the socket
    /// the other ranks' NCCL contacts, so that process must go on to call [`Nccl::new`]);
    /// send it to the other ranks, then every rank calls [`Nccl::new`] with it.
    pub fn unique_id() -> Result<[u8; NCCL_UNIQUE_ID_BYTES], CollectiveError> {
        let nccl = nccl_api()?;
        let mut id = NcclUniqueId { internal: [0; NCCL_UNIQUE_ID_BYTES] };
        // SAFETY: writes the 128 bytes of `id`.
        let result = unsafe { (nccl.get_unique_id)(&mut id) };
        if result != NCCL_SUCCESS {
            return Err(CollectiveError::Failed {
                engine: ENGINE,
                operation: "unique_id",
                rank: None,
                message: nccl.describe(result, std::ptr::null_mut()),
            });
        }
        Ok(id.internal.map(|byte| byte as u8))
    }

    /// Joins the NCCL communicator of `unique_id` as rank `rank` of `world_size`, on CUDA
    /// device `device_index` (the rank's index on its node), which becomes this thread's
    /// current device. Blocks until every rank has called it.
    ///
    /// Every rank passes the id that rank 0's process made with [`Nccl::unique_id`];
    /// [`Nccl::from_torchrun`] and `Nccl::from_mpi` hand it round. A rank that cannot load
    /// NCCL or open its device fails here at once, alone; the others wait in NCCL's set-up
    /// until the launcher ends them, as it does when one rank exits non-zero.
    pub fn new(
        rank: usize,
        world_size: usize,
        unique_id: [u8; NCCL_UNIQUE_ID_BYTES],
        device_index: usize,
    ) -> Result<Nccl, CollectiveError> {
        nccl_ranks(rank, world_size)?;
        let device = Device::open(device_index)?;
        Nccl::init(rank, world_size, unique_id, device)
    }

    /// Sets NCCL up for a `torchrun` launch: opens CUDA device `env.local_rank`, hands rank
    /// 0's id to every rank with [`crate::exchange_unique_id`] (which gives up after
    /// `timeout`), and joins the communicator.
    ///
    /// Under torchrun the ranks have no channel but NCCL, so a rank that cannot load NCCL or
    /// open its device fails alone, with its own error. The others wait for it (in the
    /// exchange, or in NCCL's set-up) until torchrun, seeing that rank exit non-zero, ends
    /// them all.
    pub fn from_torchrun(env: &TorchrunEnv, timeout: Duration) -> Result<Nccl, CollectiveError> {
        nccl_ranks(env.rank, env.world_size)?;
        let device = Device::open(env.local_rank)?;
        let id = if env.rank == 0 { Some(Nccl::unique_id()?) } else { None };
        let id = crate::exchange_unique_id(env, id, timeout)?;
        Nccl::init(env.rank, env.world_size, id, device)
    }

    /// Sets NCCL up for an `mpirun` launch, on CUDA device `device_index` (the rank's index
    /// on its node, [`crate::Mpi::local_rank`]). Every rank loads NCCL and the driver and
    /// opens its device; the ranks compare notes through MPI, so that all fail, each naming
    /// the ranks that could not, rather than some waiting forever; rank 0 makes the id and
    /// broadcasts it; all join the communicator. Collective over `mpi`.
    ///
    /// The engine keeps no hold on MPI: every operation is NCCL's. `mpi` may be dropped
    /// whenever the trainer likes, on every rank (that finalises MPI, itself collective).
    #[cfg(feature = "mpi")]
    pub fn from_mpi(mpi: &mut crate::Mpi, device_index: usize) -> Result<Nccl, CollectiveError> {
        let (rank, world_size) = (mpi.rank(), mpi.world_size());
        let local = Device::open(device_index);
        let note = match &local {
            Ok(_) => Vec::new(),
            Err(err) => err.to_string().into_bytes(),
        };
        let notes = mpi.all_gather_bytes(&note)?;
        let device = local?;
        let failed: Vec<String> = notes
            .iter()
            .enumerate()
            .filter(|(_, note)| !note.is_empty())
            .map(|(other, note)| format!("rank {other}: {}", String::from_utf8_lossy(note)))
            .collect();
        if !failed.is_empty() {
            let first = notes.iter().position(|note| !note.is_empty());
            return Err(CollectiveError::Failed {
                engine: ENGINE,
                operation: "init",
                rank: first,
                message: format!("not every rank could set up NCCL: {}", failed.join("; ")),
            });
        }
        let (mut id, made) = if rank == 0 {
            match Nccl::unique_id() {
                Ok(id) => (id.to_vec(), Ok(())),
                Err(err) => (Vec::new(), Err(err)),
            }
        } else {
            (Vec::new(), Ok(()))
        };
        mpi.broadcast_bytes(&mut id, 0)?;
        made?;
        let id: [u8; NCCL_UNIQUE_ID_BYTES] =
            id.try_into().map_err(|_| CollectiveError::Failed {
                engine: ENGINE,
                operation: "init",
                rank: Some(0),
                message: "rank 0 could not make the NCCL unique id".into(),
            })?;
        Nccl::init(rank, world_size, id, device)
    }

    fn init(
        rank: usize,
        world_size: usize,
        unique_id: [u8; NCCL_UNIQUE_ID_BYTES],
        device: Device,
    ) -> Result<Nccl, CollectiveError> {
        let (nccl_rank, nranks) = nccl_ranks(rank, world_size)?;
        let id = NcclUniqueId { internal: unique_id.map(|byte| byte as c_char) };
        let mut comm: NcclComm = std::ptr::null_mut();
        // SAFETY: `comm` is an out-pointer to a local; the device is current on this thread.
        let result = unsafe { (device.nccl.comm_init_rank)(&mut comm, nranks, id, nccl_rank) };
        if result != NCCL_SUCCESS {
            return Err(CollectiveError::Failed {
                engine: ENGINE,
                operation: "init",
                rank: Some(rank),
                message: format!(
                    "ncclCommInitRank on CUDA device {} (NCCL {}): {}",
                    device.index,
                    device.nccl.version_string(),
                    device.nccl.describe(result, comm)
                ),
            });
        }
        Ok(Nccl { comm, rank, world_size, staging: 0, staging_bytes: 0, aborted: None, device })
    }

    /// The CUDA device this rank's operations run on.
    pub fn device_index(&self) -> usize {
        self.device.index
    }

    /// The loaded NCCL's version, `major.minor.patch`, for logs.
    pub fn nccl_version(&self) -> String {
        self.device.nccl.version_string()
    }

    fn failed(&self, operation: &'static str, message: String) -> CollectiveError {
        CollectiveError::Failed { engine: ENGINE, operation, rank: Some(self.rank), message }
    }

    /// Pushes the device's context for one operation; refuses once the communicator is
    /// aborted.
    fn enter(&self, operation: &'static str) -> Result<Pushed, CollectiveError> {
        if let Some(why) = &self.aborted {
            let message = format!("the NCCL communicator was aborted after an error: {why}");
            return Err(self.failed(operation, message));
        }
        let cuda = self.device.cuda;
        // SAFETY: the context is retained by `self.device`.
        unsafe { cuda.check((cuda.ctx_push_current)(self.device.context), "cuCtxPushCurrent") }
            .map_err(|message| self.failed(operation, message))?;
        Ok(Pushed(cuda))
    }

    /// `bytes` of device memory for a host operation: the staging buffer, grown if needed.
    fn staging(
        &mut self,
        operation: &'static str,
        bytes: usize,
    ) -> Result<CuDevicePtr, CollectiveError> {
        if bytes > self.staging_bytes {
            let cuda = self.device.cuda;
            if self.staging != 0 {
                // SAFETY: allocated below; idle, as every host operation waits for its call.
                unsafe { (cuda.mem_free)(self.staging) };
                (self.staging, self.staging_bytes) = (0, 0);
            }
            let size = bytes.max(4096);
            let mut ptr: CuDevicePtr = 0;
            // SAFETY: an out-pointer to a local; the context is pushed (`enter`).
            unsafe { cuda.check((cuda.mem_alloc)(&mut ptr, size), "cuMemAlloc") }.map_err(
                |message| self.failed(operation, format!("{message} ({size} bytes of staging)")),
            )?;
            (self.staging, self.staging_bytes) = (ptr, size);
        }
        Ok(self.staging)
    }

    /// Copies `values` to device memory at `to`, which has room for them.
    fn upload<T: Element>(
        &self,
        operation: &'static str,
        to: CuDevicePtr,
        values: &[T],
    ) -> Result<(), CollectiveError> {
        let cuda = self.device.cuda;
        let bytes = std::mem::size_of_val(values);
        // SAFETY: `to` has room for `bytes` (the caller sized the staging buffer); `T` has no
        // padding (`Element`).
        let result = unsafe { (cuda.memcpy_htod)(to, values.as_ptr().cast(), bytes) };
        cuda.check(result, "cuMemcpyHtoD").map_err(|message| self.failed(operation, message))
    }

    /// Fills `values` from device memory at `from`.
    fn download<T: Element>(
        &self,
        operation: &'static str,
        values: &mut [T],
        from: CuDevicePtr,
    ) -> Result<(), CollectiveError> {
        let cuda = self.device.cuda;
        let bytes = std::mem::size_of_val(values);
        // SAFETY: `from` holds `bytes` the NCCL call wrote; any bytes are a `T` (`Element`).
        let result = unsafe { (cuda.memcpy_dtoh)(values.as_mut_ptr().cast(), from, bytes) };
        cuda.check(result, "cuMemcpyDtoH").map_err(|message| self.failed(operation, message))
    }

    /// Checks an NCCL call's result, then NCCL's asynchronous state (a peer's failure).
    fn check(
        &mut self,
        operation: &'static str,
        call: &str,
        result: NcclResult,
    ) -> Result<(), CollectiveError> {
        if result != NCCL_SUCCESS {
            let message = format!("{call}: {}", self.device.nccl.describe(result, self.comm));
            return Err(self.failed(operation, message));
        }
        match self.async_error() {
            Some(message) => Err(self.abort(operation, message)),
            None => Ok(()),
        }
    }

    /// Waits until the default stream has run what was queued on it, this operation's NCCL
    /// call last, watching for an asynchronous NCCL error: on one, aborts the communicator,
    /// which is the only way out of a call whose peers are gone.
    fn wait(&mut self, operation: &'static str) -> Result<(), CollectiveError> {
        let cuda = self.device.cuda;
        loop {
            // SAFETY: queries the default stream of the pushed context.
            let state = unsafe { (cuda.stream_query)(std::ptr::null_mut()) };
            if state != CUDA_ERROR_NOT_READY {
                return cuda
                    .check(state, "cuStreamQuery")
                    .map_err(|message| self.failed(operation, message));
            }
            if let Some(message) = self.async_error() {
                return Err(self.abort(operation, message));
            }
            std::thread::sleep(POLL);
        }
    }

    /// An error NCCL found after a call returned (a peer's failure, a network error).
    fn async_error(&self) -> Option<String> {
        let mut state = NCCL_SUCCESS;
        // SAFETY: `comm` is live; `state` is an out-pointer to a local.
        let result = unsafe { (self.device.nccl.comm_get_async_error)(self.comm, &mut state) };
        if result != NCCL_SUCCESS {
            return Some(self.device.nccl.describe(result, self.comm));
        }
        (state != NCCL_SUCCESS && state != NCCL_IN_PROGRESS)
            .then(|| self.device.nccl.describe(state, self.comm))
    }

    /// Aborts the communicator after NCCL's asynchronous error `message`: a communicator in
    /// error cannot finish its work. Every later call fails.
    fn abort(&mut self, operation: &'static str, message: String) -> CollectiveError {
        // SAFETY: the communicator is live (not yet aborted), and aborted once.
        unsafe { (self.device.nccl.comm_abort)(self.comm) };
        self.aborted = Some(message.clone());
        self.failed(operation, format!("{message} (the NCCL communicator is aborted)"))
    }

    /// Sums host `values` over the ranks through the staging buffer. The context is pushed.
    fn sum_host<T: Element>(
        &mut self,
        operation: &'static str,
        values: &mut [T],
    ) -> Result<(), CollectiveError> {
        if values.is_empty() {
            return Ok(());
        }
        let buffer = self.staging(operation, std::mem::size_of_val(values))?;
        self.upload(operation, buffer, values)?;
        // SAFETY: `buffer` holds `values.len()` elements of `T`, summed in place (the same
        // send and receive buffer); the null stream is the default stream.
        let result = unsafe {
            (self.device.nccl.all_reduce)(
                device_ptr(buffer),
                device_ptr(buffer),
                values.len(),
                T::NCCL_TYPE,
                NCCL_SUM,
                self.comm,
                std::ptr::null_mut(),
            )
        };
        self.check(operation, "ncclAllReduce", result)?;
        self.wait(operation)?;
        self.download(operation, values, buffer)
    }

    /// Queues NCCL's in-place reduce-scatter of `len` f32 at device address `ptr` (this
    /// rank's shard receives the sum). The context is pushed.
    ///
    /// # Safety
    /// `ptr..ptr + 4 * len` is device memory of the engine's device, written by nothing
    /// else until the call has run.
    unsafe fn queue_reduce_scatter(
        &mut self,
        operation: &'static str,
        ptr: CuDevicePtr,
        len: usize,
    ) -> Result<(), CollectiveError> {
        let shard = shard_len(ENGINE, operation, len, self.world_size)?;
        if shard == 0 {
            return Ok(());
        }
        let own = ptr + (self.rank * shard * 4) as u64;
        // SAFETY: in place, as NCCL allows: the receive buffer is this rank's shard of the
        // send buffer; the null stream is the default stream.
        let result = unsafe {
            (self.device.nccl.reduce_scatter)(
                device_ptr(ptr),
                device_ptr(own),
                shard,
                NCCL_FLOAT32,
                NCCL_SUM,
                self.comm,
                std::ptr::null_mut(),
            )
        };
        self.check(operation, &format!("ncclReduceScatter of {len} f32"), result)
    }

    /// Queues NCCL's in-place all-gather of `bytes` bytes at device address `ptr`. The
    /// context is pushed.
    ///
    /// # Safety
    /// As for [`Nccl::queue_reduce_scatter`], for `bytes` bytes.
    unsafe fn queue_all_gather(
        &mut self,
        operation: &'static str,
        ptr: CuDevicePtr,
        bytes: usize,
    ) -> Result<(), CollectiveError> {
        let shard = shard_len(ENGINE, operation, bytes, self.world_size)?;
        if shard == 0 {
            return Ok(());
        }
        let own = ptr + (self.rank * shard) as u64;
        // SAFETY: in place, as NCCL allows: the send buffer is this rank's shard of the
        // receive buffer; the null stream is the default stream.
        let result = unsafe {
            (self.device.nccl.all_gather)(
                device_ptr(own),
                device_ptr(ptr),
                shard,
                NCCL_UINT8,
                self.comm,
                std::ptr::null_mut(),
            )
        };
        self.check(operation, &format!("ncclAllGather of {bytes} bytes"), result)
    }

    /// Replaces host `values` with rank `root`'s, through the staging buffer. Every rank
    /// passes the same length. The context is pushed.
    fn broadcast_host<T: Element>(
        &mut self,
        operation: &'static str,
        values: &mut [T],
        root: usize,
    ) -> Result<(), CollectiveError> {
        if values.is_empty() {
            return Ok(());
        }
        let buffer = self.staging(operation, std::mem::size_of_val(values))?;
        if self.rank == root {
            self.upload(operation, buffer, values)?;
        }
        // SAFETY: `buffer` holds `values.len()` elements of `T`, broadcast in place; `root`
        // is a rank (checked by the caller), so it fits a C int as the world size does.
        let result = unsafe {
            (self.device.nccl.broadcast)(
                device_ptr(buffer),
                device_ptr(buffer),
                values.len(),
                T::NCCL_TYPE,
                root as c_int,
                self.comm,
                std::ptr::null_mut(),
            )
        };
        self.check(operation, "ncclBroadcast", result)?;
        self.wait(operation)?;
        if self.rank != root {
            self.download(operation, values, buffer)?;
        }
        Ok(())
    }

    /// Every rank's `own` (all the same length), in rank order, through the staging buffer.
    /// The context is pushed.
    fn gather_host<T: Element>(
        &mut self,
        operation: &'static str,
        own: &[T],
    ) -> Result<Vec<T>, CollectiveError> {
        let bytes = std::mem::size_of_val(own);
        let total =
            bytes.checked_mul(self.world_size).ok_or_else(|| CollectiveError::InvalidArgument {
                engine: ENGINE,
                operation,
                message: format!("{} ranks of {bytes} bytes overflow memory", self.world_size),
            })?;
        let mut all = vec![T::default(); own.len() * self.world_size];
        if own.is_empty() {
            return Ok(all);
        }
        let buffer = self.staging(operation, total)?;
        // In place: this rank's part already where the gather puts it.
        let slot = buffer + (self.rank * bytes) as u64;
        self.upload(operation, slot, own)?;
        // SAFETY: `buffer` holds `world_size` parts of `own.len()` elements of `T`; `slot`
        // is this rank's part, which NCCL reads in place.
        let result = unsafe {
            (self.device.nccl.all_gather)(
                device_ptr(slot),
                device_ptr(buffer),
                own.len(),
                T::NCCL_TYPE,
                self.comm,
                std::ptr::null_mut(),
            )
        };
        self.check(operation, "ncclAllGather", result)?;
        self.wait(operation)?;
        self.download(operation, &mut all, buffer)?;
        Ok(all)
    }
}

/// `(rank, world_size)` as NCCL's C ints, once checked.
pub(super) fn nccl_ranks(
    rank: usize,
    world_size: usize,
) -> Result<(c_int, c_int), CollectiveError> {
    let invalid = |message: String| CollectiveError::InvalidArgument {
        engine: ENGINE,
        operation: "init",
        message,
    };
    if rank >= world_size {
        return Err(invalid(format!("rank {rank} is not a rank of a world of {world_size}")));
    }
    match (c_int::try_from(rank), c_int::try_from(world_size)) {
        (Ok(rank), Ok(world_size)) => Ok((rank, world_size)),
        _ => Err(invalid(format!("a world of {world_size} is too large for NCCL"))),
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&mut self, values: &mut [f32]) -> Result<(), CollectiveError> {
        let _pushed = self.enter("all_reduce_sum")?;
        self.sum_host("all_reduce_sum", values)
    }

    fn all_reduce_sum_f64(&mut self, values: &mut [f64]) -> Result<(), CollectiveError> {
        let _pushed = self.enter("all_reduce_sum_f64")?;
        self.sum_host("all_reduce_sum_f64", values)
    }

    unsafe fn all_reduce_sum_device(
        &mut self,
        ptr: u64,
        len: usize,
    ) -> Result<(), CollectiveError> {
        let operation = "all_reduce_sum_device";
        let _pushed = self.enter(operation)?;
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the caller guarantees `len` f32 of device memory at `ptr`; in place is
        // allowed (send and receive buffers equal); a null stream is the default stream.
        let result = unsafe {
            (self.device.nccl.all_reduce)(
                device_ptr(ptr),
                device_ptr(ptr),
                len,
                NCCL_FLOAT32,
                NCCL_SUM,
                self.comm,
                std::ptr::null_mut(),
            )
        };
        self.check(operation, &format!("ncclAllReduce of {len} f32"), result)
    }

    /// Through the staging buffer: the whole buffer up, this rank's shard back.
    fn reduce_scatter_sum(&mut self, values: &mut [f32]) -> Result<(), CollectiveError> {
        let operation = "reduce_scatter_sum";
        let shard = shard_len(ENGINE, operation, values.len(), self.world_size)?;
        let _pushed = self.enter(operation)?;
        if shard == 0 {
            return Ok(());
        }
        let buffer = self.staging(operation, std::mem::size_of_val(values))?;
        self.upload(operation, buffer, values)?;
        // SAFETY: the staging buffer holds `values`, and only this operation uses it.
        unsafe { self.queue_reduce_scatter(operation, buffer, values.len()) }?;
        self.wait(operation)?;
        let own = self.rank * shard;
        self.download(operation, &mut values[own..own + shard], buffer + 4 * own as u64)
    }

    /// Through the staging buffer: this rank's shard up, every shard back.
    fn all_gather_shards(&mut self, values: &mut [u8]) -> Result<(), CollectiveError> {
        let operation = "all_gather_shards";
        let shard = shard_len(ENGINE, operation, values.len(), self.world_size)?;
        let _pushed = self.enter(operation)?;
        if shard == 0 {
            return Ok(());
        }
        let buffer = self.staging(operation, values.len())?;
        let own = self.rank * shard;
        self.upload(operation, buffer + own as u64, &values[own..own + shard])?;
        // SAFETY: the staging buffer has room for `values`, and only this operation uses it.
        unsafe { self.queue_all_gather(operation, buffer, values.len()) }?;
        self.wait(operation)?;
        self.download(operation, values, buffer)
    }

    unsafe fn reduce_scatter_sum_device(
        &mut self,
        ptr: u64,
        len: usize,
    ) -> Result<(), CollectiveError> {
        let operation = "reduce_scatter_sum_device";
        let _pushed = self.enter(operation)?;
        // SAFETY: the caller's guarantee.
        unsafe { self.queue_reduce_scatter(operation, ptr, len) }
    }

    unsafe fn all_gather_shards_device(
        &mut self,
        ptr: u64,
        bytes: usize,
    ) -> Result<(), CollectiveError> {
        let operation = "all_gather_shards_device";
        let _pushed = self.enter(operation)?;
        // SAFETY: the caller's guarantee.
        unsafe { self.queue_all_gather(operation, ptr, bytes) }
    }

    fn broadcast_bytes(&mut self, bytes: &mut Vec<u8>, root: usize) -> Result<(), CollectiveError> {
        let operation = "broadcast_bytes";
        check_root(ENGINE, root, self.world_size)?;
        let _pushed = self.enter(operation)?;
        // The root's length first, so that every rank can make room.
        let mut len = [bytes.len() as u64];
        self.broadcast_host(operation, &mut len, root)?;
        let len = usize::try_from(len[0]).map_err(|_| {
            self.failed(operation, format!("rank {root} broadcast {} bytes: too many", len[0]))
        })?;
        if self.rank != root {
            bytes.clear();
            bytes.resize(len, 0);
        }
        self.broadcast_host(operation, bytes, root)
    }

    fn all_gather_bytes(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CollectiveError> {
        let operation = "all_gather_bytes";
        let _pushed = self.enter(operation)?;
        // Every rank's length first, then every rank's bytes padded to the longest.
        let lengths = self.gather_host(operation, &[bytes.len() as u64])?;
        let longest = lengths.iter().copied().max().unwrap_or(0);
        let longest = usize::try_from(longest).map_err(|_| {
            self.failed(operation, format!("a rank gathers {longest} bytes: too many"))
        })?;
        let mut padded = vec![0u8; longest];
        padded[..bytes.len()].copy_from_slice(bytes);
        let all = self.gather_host(operation, &padded)?;
        Ok(lengths
            .iter()
            .enumerate()
            .map(|(rank, &len)| all[rank * longest..][..len as usize].to_vec())
            .collect())
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        let _pushed = self.enter("barrier")?;
        // A sum completes on no rank before every rank has joined it.
        self.sum_host("barrier", &mut [0f32])
    }

    fn name(&self) -> &'static str {
        ENGINE
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        let cuda = self.device.cuda;
        // SAFETY: the context is retained by `self.device`, released after this; the
        // communicator is live unless aborted, and goes once; the staging memory is idle,
        // as every host operation waited for its call.
        unsafe {
            let pushed = (cuda.ctx_push_current)(self.device.context) == CUDA_SUCCESS;
            let _pushed = pushed.then_some(Pushed(cuda));
            if self.aborted.is_none() {
                // A communicator in error cannot finish its work: abort it rather than wait.
                if self.async_error().is_some() {
                    (self.device.nccl.comm_abort)(self.comm);
                } else {
                    (self.device.nccl.comm_destroy)(self.comm);
                }
            }
            if self.staging != 0 {
                (cuda.mem_free)(self.staging);
            }
        }
    }
}

impl std::fmt::Debug for Nccl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nccl")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("device_index", &self.device.index)
            .field("nccl_version", &self.nccl_version())
            .field("aborted", &self.aborted)
            .finish()
    }
}
