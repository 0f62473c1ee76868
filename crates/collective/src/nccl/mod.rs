//! NCCL, loaded at run time: every operation of the trait, between CUDA devices.
//!
//! Why not link NCCL: the crate must build and its CPU engines run where neither CUDA nor
//! NCCL exists (this workspace's CI, a laptop). So `libnccl` and the CUDA driver (`libcuda`)
//! are opened with `dlopen` when an [`Nccl`] is created, and a machine without them gets
//! [`CollectiveError::Unavailable`] then, not a build or link failure.
//!
//! Why our own declarations rather than the `cudarc` crate's bindings: `cudarc`'s loader
//! looks for `libnccl.so`, `libnccl.so.{13,12,11,10,9,1}` and the like, never
//! `libnccl.so.2`, the only name the `nvidia-nccl` wheels that PyTorch installs ship; and it
//! panics, rather than returning an error, when no candidate loads. The declarations below
//! are the C ABI of NCCL 2.x, whose signatures have not changed across 2.x (checked against
//! `nccl.h`; `ncclGetLastError`, from 2.13, is optional), and of the CUDA driver API, the
//! `_v2` entry points `cuda.h` maps the plain names to, which keep working on newer drivers
//! (a CUDA 13 driver serves them as a CUDA 12 one does).
//!
//! Which library is loaded: `$COCONUT_NCCL_LIBRARY` if set (a path), else `libnccl.so.2`,
//! else `libnccl.so`, each found by the dynamic loader's usual search (`LD_LIBRARY_PATH`,
//! then the system's). When the process already has `libnccl.so.2` loaded (libtorch's CUDA
//! library depends on it, found through its own run path), the loader returns that same
//! copy, so torch and this crate share one NCCL. The driver is `libcuda.so.1`.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::OnceLock;
use std::time::Duration;

use libloading::Library;

use crate::CollectiveError;

mod engine;

pub use engine::Nccl;

const ENGINE: &str = "nccl";

/// Size of an NCCL unique id (`NCCL_UNIQUE_ID_BYTES` in `nccl.h`).
pub const NCCL_UNIQUE_ID_BYTES: usize = 128;

/// The environment variable that names the NCCL library to load, as a path.
const NCCL_LIBRARY_VARIABLE: &str = "COCONUT_NCCL_LIBRARY";

/// How often a host operation looks whether its NCCL call has finished.
const POLL: Duration = Duration::from_micros(50);

// `ncclResult_t`, `ncclDataType_t`, `ncclRedOp_t` and `CUresult` are C enums: `int`.
type NcclResult = c_int;
type CuResult = c_int;
type NcclComm = *mut c_void;
type CuContext = *mut c_void;
type CuDevice = c_int;
/// `CUdeviceptr`: `unsigned long long` on 64-bit systems.
type CuDevicePtr = u64;
/// `CUstream` and `cudaStream_t`, the same pointer; null is the default (legacy) stream.
type CuStream = *mut c_void;

const NCCL_SUCCESS: NcclResult = 0;
const NCCL_IN_PROGRESS: NcclResult = 7;
// `ncclDataType_t`: ncclInt8 0, ncclUint8 1, ncclInt32 2, ncclUint32 3, ncclInt64 4,
// ncclUint64 5, ncclFloat16 6, ncclFloat32 7, ncclFloat64 8, ncclBfloat16 9.
const NCCL_UINT8: c_int = 1;
const NCCL_UINT64: c_int = 5;
const NCCL_FLOAT32: c_int = 7;
const NCCL_FLOAT64: c_int = 8;
// `ncclRedOp_t`: ncclSum 0.
const NCCL_SUM: c_int = 0;
const CUDA_SUCCESS: CuResult = 0;
const CUDA_ERROR_NOT_READY: CuResult = 600;

/// `ncclUniqueId`: `struct { char internal[128]; }`, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
struct NcclUniqueId {
    internal: [c_char; NCCL_UNIQUE_ID_BYTES],
}

/// The NCCL entry points used here, as `nccl.h` declares them.
struct NcclApi {
    version: c_int,
    get_unique_id: unsafe extern "C" fn(*mut NcclUniqueId) -> NcclResult,
    comm_init_rank: unsafe extern "C" fn(*mut NcclComm, c_int, NcclUniqueId, c_int) -> NcclResult,
    /// `(sendbuff, recvbuff, count, datatype, op, comm, stream)`.
    all_reduce: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        NcclComm,
        CuStream,
    ) -> NcclResult,
    /// `(sendbuff, recvbuff, count, datatype, root, comm, stream)`.
    broadcast: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        NcclComm,
        CuStream,
    ) -> NcclResult,
    /// `(sendbuff, recvbuff, sendcount, datatype, comm, stream)`.
    all_gather: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        NcclComm,
        CuStream,
    ) -> NcclResult,
    comm_destroy: unsafe extern "C" fn(NcclComm) -> NcclResult,
    comm_abort: unsafe extern "C" fn(NcclComm) -> NcclResult,
    comm_get_async_error: unsafe extern "C" fn(NcclComm, *mut NcclResult) -> NcclResult,
    get_error_string: unsafe extern "C" fn(NcclResult) -> *const c_char,
    /// `ncclGetLastError`, NCCL 2.13 and later.
    get_last_error: Option<unsafe extern "C" fn(NcclComm) -> *const c_char>,
}

/// The CUDA driver entry points used here: a device made current, and the staging of host
/// buffers through device memory.
struct CudaApi {
    init: unsafe extern "C" fn(c_uint) -> CuResult,
    device_get_count: unsafe extern "C" fn(*mut c_int) -> CuResult,
    device_get: unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult,
    primary_ctx_retain: unsafe extern "C" fn(*mut CuContext, CuDevice) -> CuResult,
    primary_ctx_release: unsafe extern "C" fn(CuDevice) -> CuResult,
    ctx_set_current: unsafe extern "C" fn(CuContext) -> CuResult,
    ctx_push_current: unsafe extern "C" fn(CuContext) -> CuResult,
    ctx_pop_current: unsafe extern "C" fn(*mut CuContext) -> CuResult,
    mem_alloc: unsafe extern "C" fn(*mut CuDevicePtr, usize) -> CuResult,
    mem_free: unsafe extern "C" fn(CuDevicePtr) -> CuResult,
    memcpy_htod: unsafe extern "C" fn(CuDevicePtr, *const c_void, usize) -> CuResult,
    memcpy_dtoh: unsafe extern "C" fn(*mut c_void, CuDevicePtr, usize) -> CuResult,
    stream_query: unsafe extern "C" fn(CuStream) -> CuResult,
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
            broadcast: symbol(&library, "ncclBroadcast")?,
            all_gather: symbol(&library, "ncclAllGather")?,
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
    // SAFETY: each type is the C signature in cuda.h, under the name the header maps the
    // plain one to (`cuMemAlloc` is `cuMemAlloc_v2` since CUDA 3.2, `cuCtxPushCurrent`
    // `cuCtxPushCurrent_v2` since 4.0, `cuDevicePrimaryCtxRelease` its `_v2` since 11); the
    // names without `_ptsz`/`_ptds` use the legacy default stream. The library is leaked.
    let api = unsafe {
        CudaApi {
            init: symbol(&library, "cuInit")?,
            device_get_count: symbol(&library, "cuDeviceGetCount")?,
            device_get: symbol(&library, "cuDeviceGet")?,
            primary_ctx_retain: symbol(&library, "cuDevicePrimaryCtxRetain")?,
            primary_ctx_release: symbol(&library, "cuDevicePrimaryCtxRelease_v2")?,
            ctx_set_current: symbol(&library, "cuCtxSetCurrent")?,
            ctx_push_current: symbol(&library, "cuCtxPushCurrent_v2")?,
            ctx_pop_current: symbol(&library, "cuCtxPopCurrent_v2")?,
            mem_alloc: symbol(&library, "cuMemAlloc_v2")?,
            mem_free: symbol(&library, "cuMemFree_v2")?,
            memcpy_htod: symbol(&library, "cuMemcpyHtoD_v2")?,
            memcpy_dtoh: symbol(&library, "cuMemcpyDtoH_v2")?,
            stream_query: symbol(&library, "cuStreamQuery")?,
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

/// The libraries, and the device with its primary context retained (released on drop).
struct Device {
    nccl: &'static NcclApi,
    cuda: &'static CudaApi,
    device: CuDevice,
    context: CuContext,
    index: usize,
}

impl Device {
    /// Loads the libraries and makes device `index` current on this thread, as
    /// `cudaSetDevice(index)` (and torch's `set_device`) does: its primary context, the one
    /// the CUDA runtime and so libtorch use, and the device `ncclCommInitRank` joins with.
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
            let opened = Device { nccl, cuda, device, context, index };
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

/// The engine's context pushed on the calling thread for one operation; popped on drop, so
/// that the thread's current context is left as it was.
struct Pushed(&'static CudaApi);

impl Drop for Pushed {
    fn drop(&mut self) {
        let mut popped: CuContext = std::ptr::null_mut();
        // SAFETY: pops the context pushed when `self` was made; the out-pointer is a local.
        unsafe { (self.0.ctx_pop_current)(&mut popped) };
    }
}

/// The element types the host operations move, with NCCL's name for each. None has padding
/// and every bit pattern of each is a value, so their bytes may go to the device and back.
trait Element: Copy + Default {
    const NCCL_TYPE: c_int;
}

impl Element for u8 {
    const NCCL_TYPE: c_int = NCCL_UINT8;
}

impl Element for u64 {
    const NCCL_TYPE: c_int = NCCL_UINT64;
}

impl Element for f32 {
    const NCCL_TYPE: c_int = NCCL_FLOAT32;
}

impl Element for f64 {
    const NCCL_TYPE: c_int = NCCL_FLOAT64;
}

/// A device address as the pointer type NCCL's buffer arguments have.
fn device_ptr(ptr: CuDevicePtr) -> *mut c_void {
    ptr as usize as *mut c_void
}

#[cfg(test)]
mod tests {
    use super::engine::nccl_ranks;
    use super::*;
    use crate::TorchrunEnv;

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
        expect_unavailable(Nccl::new(0, 1, [0; NCCL_UNIQUE_ID_BYTES], 0));
        // A world of one: no other rank to wait for, whatever this machine has.
        let alone = TorchrunEnv {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: 1,
            rendezvous_port: 1,
        };
        expect_unavailable(Nccl::from_torchrun(&alone, Duration::from_secs(1)));
    }

    #[test]
    fn a_rank_outside_the_world_is_refused_before_loading_anything() {
        let err = Nccl::new(2, 2, [0; NCCL_UNIQUE_ID_BYTES], 0).unwrap_err();
        assert_eq!(err.to_string(), "nccl: init: rank 2 is not a rank of a world of 2");
        let err = nccl_ranks(0, usize::MAX).unwrap_err();
        assert!(err.to_string().ends_with("a world of 18446744073709551615 is too large for NCCL"));
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

    #[test]
    fn element_types_are_nccls() {
        // nccl.h: ncclUint8 = 1, ncclUint64 = 5, ncclFloat32 = 7, ncclFloat64 = 8.
        assert_eq!([u8::NCCL_TYPE, u64::NCCL_TYPE, f32::NCCL_TYPE, f64::NCCL_TYPE], [1, 5, 7, 8]);
        assert_eq!(device_ptr(0x7f00_0000_1000) as usize, 0x7f00_0000_1000);
    }
}
