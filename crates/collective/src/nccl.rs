//! Sums of CUDA buffers with NCCL, loaded at run time.
//!
//! Why not link NCCL: the crate must build and its CPU engines run where neither CUDA nor
//! NCCL exists (this workspace's CI, a laptop). So `libnccl` and the CUDA driver (`libcuda`)
//! are opened with `dlopen` when an [`Nccl`] is created, and a machine without them gets
//! [`CollectiveError::Unavailable`] then, not a build or link failure.
//!
//! Why our own eight declarations rather than the `cudarc` crate's bindings: `cudarc`'s
//! loader looks for `libnccl.so`, `libnccl.so.{13,12,11,10,9,1}` and the like, never
//! `libnccl.so.2`, the only name the `nvidia-nccl` wheels that PyTorch installs ship; and it
//! panics, rather than returning an error, when no candidate loads. The declarations below
//! are the C ABI of NCCL 2.x, whose signatures have not changed across 2.x (checked against
//! the bindings `cudarc` generates from `nccl.h` 2.22 to 2.30; `ncclGetLastError`, from
//! 2.13, is optional), and of the CUDA driver API, whose entry points keep working on newer
//! drivers (a CUDA 13 driver serves them as a CUDA 12 one does).
//!
//! Which library is loaded: `$COCONUT_NCCL_LIBRARY` if set (a path), else `libnccl.so.2`,
//! else `libnccl.so`, each found by the dynamic loader's usual search (`LD_LIBRARY_PATH`,
//! then the system's). When the process already has `libnccl.so.2` loaded (libtorch's CUDA
//! library depends on it, found through its own run path), the loader returns that same
//! copy, so torch and this crate share one NCCL. The driver is `libcuda.so.1`.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::OnceLock;

use libloading::Library;

use crate::{Collective, CollectiveError};

const ENGINE: &str = "nccl";

/// Size of an NCCL unique id (`NCCL_UNIQUE_ID_BYTES` in `nccl.h`).
pub const NCCL_UNIQUE_ID_BYTES: usize = 128;

/// The environment variable that names the NCCL library to load, as a path.
const NCCL_LIBRARY_VARIABLE: &str = "COCONUT_NCCL_LIBRARY";

// `ncclResult_t`, `ncclDataType_t`, `ncclRedOp_t` and `CUresult` are C enums: `int`.
type NcclResult = c_int;
type CuResult = c_int;
type NcclComm = *mut c_void;
type CuContext = *mut c_void;
type CuDevice = c_int;

const NCCL_SUCCESS: NcclResult = 0;
const NCCL_IN_PROGRESS: NcclResult = 7;
const NCCL_FLOAT32: c_int = 7;
const NCCL_SUM: c_int = 0;
const CUDA_SUCCESS: CuResult = 0;

/// `ncclUniqueId`: `struct { char internal[128]; }`, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
struct NcclUniqueId {
    internal: [c_char; NCCL_UNIQUE_ID_BYTES],
}

/// The NCCL entry points used here.
struct NcclApi {
    version: c_int,
    get_unique_id: unsafe extern "C" fn(*mut NcclUniqueId) -> NcclResult,
    comm_init_rank: unsafe extern "C" fn(*mut NcclComm, c_int, NcclUniqueId, c_int) -> NcclResult,
    all_reduce: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        NcclComm,
        *mut c_void,
    ) -> NcclResult,
    comm_destroy: unsafe extern "C" fn(NcclComm) -> NcclResult,
    comm_abort: unsafe extern "C" fn(NcclComm) -> NcclResult,
    comm_get_async_error: unsafe extern "C" fn(NcclComm, *mut NcclResult) -> NcclResult,
    get_error_string: unsafe extern "C" fn(NcclResult) -> *const c_char,
    /// `ncclGetLastError`, NCCL 2.13 and later.
    get_last_error: Option<unsafe extern "C" fn(NcclComm) -> *const c_char>,
}

/// The CUDA driver entry points used here: enough to make a device current.
struct CudaApi {
    init: unsafe extern "C" fn(c_uint) -> CuResult,
    device_get_count: unsafe extern "C" fn(*mut c_int) -> CuResult,
    device_get: unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult,
    primary_ctx_retain: unsafe extern "C" fn(*mut CuContext, CuDevice) -> CuResult,
    primary_ctx_release: unsafe extern "C" fn(CuDevice) -> CuResult,
    ctx_set_current: unsafe extern "C" fn(CuContext) -> CuResult,
    get_error_string: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
}

/// Opens the first of `candidates` that loads; the error lists every candidate with why it
/// did not.
fn open_first(what: &str, candidates: &[String]) -> Result<Library, String> {
    let mut tried = Vec::new();
    for candidate in candidates {
        // SAFETY: loading NCCL or the CUDA driver runs their initialisers, which have no
        // preconditions; a library by the same name that is something else is the
        // environment's error, as for any dynamically linked program.
        match unsafe { Library::new(candidate) } {
            Ok(library) => return Ok(library),
            Err(err) => tried.push(format!("{candidate}: {}", with_source(&err))),
        }
    }
    Err(format!("could not load {what} (tried {})", tried.join("; ")))
}

/// Copies the function pointer `name` out of `library`.
///
/// # Safety
///
/// `T` must be the symbol's C signature, and `library` must outlive every use of it (here
/// it is leaked in a static).
unsafe fn symbol<T: Copy>(library: &Library, name: &str) -> Result<T, String> {
    // SAFETY: forwarded from the caller.
    unsafe { library.get::<T>(name.as_bytes()) }
        .map(|symbol| *symbol)
        .map_err(|err| format!("{name}: {}", with_source(&err)))
}

/// The loader's error with the system's words (`dlerror`), which libloading keeps as the
/// source.
fn with_source(err: &libloading::Error) -> String {
    match std::error::Error::source(err) {
        Some(source) => format!("{err}: {source}"),
        None => err.to_string(),
    }
}

fn nccl_candidates() -> Vec<String> {
    let mut candidates: Vec<String> = std::env::var_os(NCCL_LIBRARY_VARIABLE)
        .map(|path| path.to_string_lossy().into_owned())
        .into_iter()
        .collect();
    candidates.extend(["libnccl.so.2".to_string(), "libnccl.so".to_string()]);
    candidates
}

fn load_nccl_from(candidates: &[String]) -> Result<NcclApi, String> {
    let library = open_first("the NCCL library", candidates)?;
    // SAFETY: each type is the C signature in nccl.h (NCCL 2.x); the library is
    // leaked below, so the pointers stay valid for the life of the process.
    let api = unsafe {
        let get_version: unsafe extern "C" fn(*mut c_int) -> NcclResult =
            symbol(&library, "ncclGetVersion")?;
        let mut version = 0;
        get_version(&mut version);
        NcclApi {
            version,
            get_unique_id: symbol(&library, "ncclGetUniqueId")?,
            comm_init_rank: symbol(&library, "ncclCommInitRank")?,
            all_reduce: symbol(&library, "ncclAllReduce")?,
            comm_destroy: symbol(&library, "ncclCommDestroy")?,
            comm_abort: symbol(&library, "ncclCommAbort")?,
            comm_get_async_error: symbol(&library, "ncclCommGetAsyncError")?,
            get_error_string: symbol(&library, "ncclGetErrorString")?,
            get_last_error: symbol(&library, "ncclGetLastError").ok(),
        }
    };
    // Never unloaded: NCCL keeps threads that run its code.
    std::mem::forget(library);
    Ok(api)
}

fn load_cuda_from(candidates: &[String]) -> Result<CudaApi, String> {
    let library = open_first("the CUDA driver", candidates)?;
    // SAFETY: each type is the C signature in cuda.h; `cuDevicePrimaryCtxRelease` is the
    // `_v2` entry point the header maps it to since CUDA 11. The library is leaked.
    let api = unsafe {
        CudaApi {
            init: symbol(&library, "cuInit")?,
            device_get_count: symbol(&library, "cuDeviceGetCount")?,
            device_get: symbol(&library, "cuDeviceGet")?,
            primary_ctx_retain: symbol(&library, "cuDevicePrimaryCtxRetain")?,
            primary_ctx_release: symbol(&library, "cuDevicePrimaryCtxRelease_v2")?,
            ctx_set_current: symbol(&library, "cuCtxSetCurrent")?,
            get_error_string: symbol(&library, "cuGetErrorString")?,
        }
    };
    std::mem::forget(library);
    Ok(api)
}

fn nccl_api() -> Result<&'static NcclApi, CollectiveError> {
    static API: OnceLock<Result<NcclApi, String>> = OnceLock::new();
    API.get_or_init(|| load_nccl_from(&nccl_candidates())).as_ref().map_err(|message| {
        CollectiveError::Unavailable {
            engine: ENGINE,
            message: format!(
                "{message}. NCCL comes with PyTorch's CUDA wheels (nvidia/nccl/lib/libnccl.so.2): \
                 put its folder on LD_LIBRARY_PATH or set {NCCL_LIBRARY_VARIABLE} to the file"
            ),
        }
    })
}

fn cuda_api() -> Result<&'static CudaApi, CollectiveError> {
    static API: OnceLock<Result<CudaApi, String>> = OnceLock::new();
    API.get_or_init(|| load_cuda_from(&["libcuda.so.1".into(), "libcuda.so".into()]))
        .as_ref()
        .map_err(|message| CollectiveError::Unavailable {
            engine: ENGINE,
            message: format!("{message}: is the NVIDIA driver installed?"),
        })
}

impl NcclApi {
    /// NCCL's words for `result`, and its last error message where it has one.
    fn describe(&self, result: NcclResult, comm: NcclComm) -> String {
        // SAFETY: both return static or communicator-owned C strings (or null).
        let text = |ptr: *const c_char| {
            (!ptr.is_null())
                .then(|| unsafe { CStr::from_ptr(ptr) }.to_string_lossy().into_owned())
                .filter(|text| !text.is_empty())
        };
        let mut message = text(unsafe { (self.get_error_string)(result) })
            .unwrap_or_else(|| format!("error {result}"));
        if let Some(last) = self.get_last_error.and_then(|last| text(unsafe { last(comm) })) {
            message = format!("{message}: {last}");
        }
        message
    }

    /// `major.minor.patch` from `ncclGetVersion`'s code (`22703` is 2.27.3).
    fn version_string(&self) -> String {
        let code = self.version;
        if code >= 10000 {
            format!("{}.{}.{}", code / 10000, code / 100 % 100, code % 100)
        } else {
            format!("{}.{}.{}", code / 1000, code / 100 % 10, code % 100)
        }
    }
}

impl CudaApi {
    fn check(&self, result: CuResult, call: &str) -> Result<(), String> {
        if result == CUDA_SUCCESS {
            return Ok(());
        }
        let mut text: *const c_char = std::ptr::null();
        // SAFETY: cuGetErrorString writes a pointer to a static string, or leaves it null.
        unsafe { (self.get_error_string)(result, &mut text) };
        let text = if text.is_null() {
            format!("CUDA error {result}")
        } else {
            // SAFETY: non-null: a static C string of the driver's.
            unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned()
        };
        Err(format!("{call}: {text}"))
    }
}

/// The libraries, and the device made current with its primary context retained (released
/// on drop).
struct Device {
    nccl: &'static NcclApi,
    cuda: &'static CudaApi,
    device: CuDevice,
    index: usize,
}

impl Device {
    /// Loads the libraries and makes device `index` current on this thread, as
    /// `cudaSetDevice(index)` (and torch's `set_device`) does: its primary context, the one
    /// the CUDA runtime and so libtorch use.
    fn open(index: usize) -> Result<Device, CollectiveError> {
        let nccl = nccl_api()?;
        let cuda = cuda_api()?;
        let unavailable =
            |message: String| CollectiveError::Unavailable { engine: ENGINE, message };
        let mut count = 0;
        let mut device = 0;
        let mut context: CuContext = std::ptr::null_mut();
        // SAFETY: plain driver calls with out-pointers to locals.
        unsafe {
            cuda.check((cuda.init)(0), "cuInit").map_err(unavailable)?;
            cuda.check((cuda.device_get_count)(&mut count), "cuDeviceGetCount")
                .map_err(unavailable)?;
            if index >= count as usize {
                let visible =
                    std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "unset".into());
                return Err(unavailable(format!(
                    "there is no CUDA device {index}: the driver sees {count} \
                     (CUDA_VISIBLE_DEVICES={visible})"
                )));
            }
            cuda.check((cuda.device_get)(&mut device, index as c_int), "cuDeviceGet")
                .map_err(unavailable)?;
            cuda.check((cuda.primary_ctx_retain)(&mut context, device), "cuDevicePrimaryCtxRetain")
                .map_err(unavailable)?;
            let opened = Device { nccl, cuda, device, index };
            cuda.check((cuda.ctx_set_current)(context), "cuCtxSetCurrent").map_err(unavailable)?;
            Ok(opened)
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: balances the retain in `open`.
        unsafe { (self.cuda.primary_ctx_release)(self.device) };
    }
}

/// Sums CUDA buffers over the ranks with NCCL; everything else goes to a host engine.
///
/// Made by [`Nccl::with_host`] (the usual way) or by [`Nccl::new`] with an id from
/// [`Nccl::unique_id`]. Its rank and world are the host engine's: rank `r` of the host is
/// rank `r` of NCCL.
///
/// Device sums ([`Collective::all_reduce_sum_device`]) are queued on the default (null)
/// stream of the engine's device, the stream libtorch runs on unless told otherwise (a
/// stream guard): the sum runs after the backward pass that wrote the gradients and before
/// the optimizer step that reads them, with no host synchronisation. Code that moves
/// torch's work to another stream must synchronise with the default stream around the sum.
///
/// The host operations ([`Collective::all_reduce_sum`], the bytes, the barrier) are the
/// host engine's, and do not wait for queued device work.
///
/// Failures: NCCL errors are returned, with NCCL's message. A rank that dies leaves the
/// others' device sums waiting on the GPU; what ends the job is the launcher (`mpirun`
/// and `torchrun` both stop every rank when one exits abnormally) or the next host
/// operation, which fails naming the rank that went away.
pub struct Nccl {
    host: Box<dyn Collective>,
    comm: NcclComm,
    device: Device,
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls do not overlap,
// which `&mut self` guarantees; NCCL makes the communicator's device current itself on each
// call. The host engine is `Send` by the trait's bound.
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

    /// Joins the NCCL communicator of `unique_id` as the host's rank, on CUDA device
    /// `device_index` (the `LOCAL_RANK` under torchrun or mpirun), which becomes this
    /// thread's current device. Blocks until every rank has called it.
    ///
    /// Prefer [`Nccl::with_host`], which makes and sends the id, and first checks that every
    /// rank could load NCCL (here, a rank that cannot leaves the others blocked).
    pub fn new(
        host: Box<dyn Collective>,
        unique_id: [u8; NCCL_UNIQUE_ID_BYTES],
        device_index: usize,
    ) -> Result<Nccl, CollectiveError> {
        let device = Device::open(device_index)?;
        Nccl::init(host, unique_id, device)
    }

    /// Sets NCCL up over `host` on CUDA device `device_index`: every rank loads NCCL and the
    /// driver and opens its device, the ranks compare notes through the host (so that all
    /// fail, each naming the ranks that could not, rather than some waiting forever), rank
    /// 0 makes the id and broadcasts it, and all join the communicator.
    pub fn with_host(
        mut host: Box<dyn Collective>,
        device_index: usize,
    ) -> Result<Nccl, CollectiveError> {
        let rank = host.rank();
        let local = Device::open(device_index);
        let note = match &local {
            Ok(_) => Vec::new(),
            Err(err) => err.to_string().into_bytes(),
        };
        let notes = host.all_gather_bytes(&note)?;
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
        host.broadcast_bytes(&mut id, 0)?;
        made?;
        let id: [u8; NCCL_UNIQUE_ID_BYTES] =
            id.try_into().map_err(|_| CollectiveError::Failed {
                engine: ENGINE,
                operation: "init",
                rank: Some(0),
                message: "rank 0 could not make the NCCL unique id".into(),
            })?;
        Nccl::init(host, id, device)
    }

    fn init(
        host: Box<dyn Collective>,
        unique_id: [u8; NCCL_UNIQUE_ID_BYTES],
        device: Device,
    ) -> Result<Nccl, CollectiveError> {
        let (rank, world_size) = (host.rank(), host.world_size());
        let fail = |message: String| CollectiveError::Failed {
            engine: ENGINE,
            operation: "init",
            rank: Some(rank),
            message,
        };
        let (Ok(nranks), Ok(nccl_rank)) = (c_int::try_from(world_size), c_int::try_from(rank))
        else {
            return Err(fail(format!("a world of {world_size} is too large for NCCL")));
        };
        let id = NcclUniqueId { internal: unique_id.map(|byte| byte as c_char) };
        let mut comm: NcclComm = std::ptr::null_mut();
        // SAFETY: `comm` is an out-pointer to a local; the device is current on this thread.
        let result = unsafe { (device.nccl.comm_init_rank)(&mut comm, nranks, id, nccl_rank) };
        if result != NCCL_SUCCESS {
            return Err(fail(format!(
                "ncclCommInitRank on CUDA device {} (NCCL {}): {}",
                device.index,
                device.nccl.version_string(),
                device.nccl.describe(result, comm)
            )));
        }
        Ok(Nccl { host, comm, device })
    }

    /// The CUDA device this rank's sums run on.
    pub fn device_index(&self) -> usize {
        self.device.index
    }

    /// The loaded NCCL's version, `major.minor.patch`, for logs.
    pub fn nccl_version(&self) -> String {
        self.device.nccl.version_string()
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
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.host.rank()
    }

    fn world_size(&self) -> usize {
        self.host.world_size()
    }

    fn all_reduce_sum(&mut self, values: &mut [f32]) -> Result<(), CollectiveError> {
        self.host.all_reduce_sum(values)
    }

    fn all_reduce_sum_f64(&mut self, values: &mut [f64]) -> Result<(), CollectiveError> {
        self.host.all_reduce_sum_f64(values)
    }

    unsafe fn all_reduce_sum_device(
        &mut self,
        ptr: u64,
        len: usize,
    ) -> Result<(), CollectiveError> {
        if len == 0 {
            return Ok(());
        }
        let fail = |message: String| CollectiveError::Failed {
            engine: ENGINE,
            operation: "all_reduce_sum_device",
            rank: Some(self.host.rank()),
            message,
        };
        let buffer = ptr as usize as *mut c_void;
        // SAFETY: the caller guarantees `len` f32 of device memory at `ptr`; in place is
        // allowed (send and receive buffers equal); a null stream is the default stream.
        let result = unsafe {
            (self.device.nccl.all_reduce)(
                buffer,
                buffer,
                len,
                NCCL_FLOAT32,
                NCCL_SUM,
                self.comm,
                std::ptr::null_mut(),
            )
        };
        if result != NCCL_SUCCESS {
            return Err(fail(format!(
                "ncclAllReduce of {len} f32: {}",
                self.device.nccl.describe(result, self.comm)
            )));
        }
        match self.async_error() {
            Some(message) => Err(fail(message)),
            None => Ok(()),
        }
    }

    fn broadcast_bytes(&mut self, bytes: &mut Vec<u8>, root: usize) -> Result<(), CollectiveError> {
        self.host.broadcast_bytes(bytes, root)
    }

    fn all_gather_bytes(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CollectiveError> {
        self.host.all_gather_bytes(bytes)
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        self.host.barrier()
    }

    fn name(&self) -> &'static str {
        ENGINE
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        // A communicator in error cannot finish its work: abort it rather than wait.
        // SAFETY: `comm` is live and dropped exactly once, before the device's context.
        unsafe {
            if self.async_error().is_some() {
                (self.device.nccl.comm_abort)(self.comm);
            } else {
                (self.device.nccl.comm_destroy)(self.comm);
            }
        }
    }
}

impl std::fmt::Debug for Nccl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nccl")
            .field("rank", &self.host.rank())
            .field("world_size", &self.host.world_size())
            .field("device_index", &self.device.index)
            .field("nccl_version", &self.nccl_version())
            .field("host", &self.host.name())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Single;

    /// On a machine with NCCL and a GPU these calls may succeed; elsewhere (CI, this
    /// workspace's machines) they must fail with an error, never a panic.
    fn expect_unavailable(result: Result<impl Sized, CollectiveError>) {
        if let Err(err) = result {
            let text = err.to_string();
            assert!(text.starts_with("nccl: "), "{text}");
            assert!(
                text.contains("NCCL") || text.contains("CUDA"),
                "the error should say what could not be loaded: {text}"
            );
        }
    }

    #[test]
    fn unique_id_without_nccl_is_an_error() {
        if let Err(err) = Nccl::unique_id() {
            assert!(matches!(err, CollectiveError::Unavailable { .. }), "{err:?}");
            let text = err.to_string();
            assert!(text.contains("libnccl.so.2"), "names the library it looked for: {text}");
        }
    }

    #[test]
    fn creating_the_engine_without_nccl_or_cuda_is_an_error() {
        expect_unavailable(Nccl::new(Box::new(Single::new()), [0; NCCL_UNIQUE_ID_BYTES], 0));
        expect_unavailable(Nccl::with_host(Box::new(Single::new()), 0));
    }

    #[test]
    fn a_missing_library_is_named_with_the_reason() {
        let err = load_nccl_from(&["/nonexistent/libnccl.so.2".into(), "libnccl-nope.so".into()])
            .err()
            .expect("no such library");
        assert!(
            err.starts_with("could not load the NCCL library (tried /nonexistent/libnccl.so.2: ")
        );
        assert!(err.contains("; libnccl-nope.so: "), "{err}");
        let err = load_cuda_from(&["libcuda-nope.so.1".into()]).err().expect("no such library");
        assert!(err.starts_with("could not load the CUDA driver (tried libcuda-nope.so.1: "));
    }

    #[test]
    fn a_library_without_the_symbols_is_an_error() {
        // The C library loads, but is not NCCL: the missing symbol is named.
        let err = load_nccl_from(&["libc.so.6".into()]).err().expect("libc is not NCCL");
        assert!(err.starts_with("ncclGetVersion: "), "{err}");
    }

    #[test]
    fn the_unique_id_keeps_its_bytes_through_c_char() {
        let bytes: [u8; NCCL_UNIQUE_ID_BYTES] = std::array::from_fn(|index| (index * 7) as u8);
        let id = NcclUniqueId { internal: bytes.map(|byte| byte as c_char) };
        assert_eq!(id.internal.map(|byte| byte as u8), bytes);
        assert_eq!(std::mem::size_of::<NcclUniqueId>(), 128);
    }
}
