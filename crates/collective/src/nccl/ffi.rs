//! The C ABI of NCCL 2.x and of the CUDA driver, and their loading at run time (see the
//! parent module for why and from where).

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::OnceLock;
use std::time::Duration;

use libloading::Library;

use crate::CollectiveError;

pub(super) const ENGINE: &str = "nccl";

/// Size of an NCCL unique id (`NCCL_UNIQUE_ID_BYTES` in `nccl.h`).
pub const NCCL_UNIQUE_ID_BYTES: usize = 128;

/// The environment variable that names the NCCL library to load, as a path.
pub(super) const NCCL_LIBRARY_VARIABLE: &str = "COCONUT_NCCL_LIBRARY";

/// How often a host operation looks whether its NCCL call has finished.
pub(super) const POLL: Duration = Duration::from_micros(50);

// `ncclResult_t`, `ncclDataType_t`, `ncclRedOp_t` and `CUresult` are C enums: `int`.
pub(super) type NcclResult = c_int;
pub(super) type CuResult = c_int;
pub(super) type NcclComm = *mut c_void;
pub(super) type CuContext = *mut c_void;
pub(super) type CuDevice = c_int;
/// `CUdeviceptr`: `unsigned long long` on 64-bit systems.
pub(super) type CuDevicePtr = u64;
/// `CUstream` and `cudaStream_t`, the same pointer; null is the default (legacy) stream.
pub(super) type CuStream = *mut c_void;

pub(super) const NCCL_SUCCESS: NcclResult = 0;
pub(super) const NCCL_IN_PROGRESS: NcclResult = 7;
// `ncclDataType_t`: ncclInt8 0, ncclUint8 1, ncclInt32 2, ncclUint32 3, ncclInt64 4,
// ncclUint64 5, ncclFloat16 6, ncclFloat32 7, ncclFloat64 8, ncclBfloat16 9.
pub(super) const NCCL_UINT8: c_int = 1;
pub(super) const NCCL_UINT64: c_int = 5;
pub(super) const NCCL_FLOAT32: c_int = 7;
pub(super) const NCCL_FLOAT64: c_int = 8;
// `ncclRedOp_t`: ncclSum 0.
pub(super) const NCCL_SUM: c_int = 0;
pub(super) const CUDA_SUCCESS: CuResult = 0;
pub(super) const CUDA_ERROR_NOT_READY: CuResult = 600;

/// `ncclUniqueId`: `struct { char internal[128]; }`, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct NcclUniqueId {
    pub(super) internal: [c_char; NCCL_UNIQUE_ID_BYTES],
}

/// The NCCL entry points used here, as `nccl.h` declares them.
pub(super) struct NcclApi {
    pub(super) version: c_int,
    pub(super) get_unique_id: unsafe extern "C" fn(*mut NcclUniqueId) -> NcclResult,
    pub(super) comm_init_rank:
        unsafe extern "C" fn(*mut NcclComm, c_int, NcclUniqueId, c_int) -> NcclResult,
    /// `(sendbuff, recvbuff, count, datatype, op, comm, stream)`.
    pub(super) all_reduce: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        NcclComm,
        CuStream,
    ) -> NcclResult,
    /// `(sendbuff, recvbuff, recvcount, datatype, op, comm, stream)`.
    pub(super) reduce_scatter: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        NcclComm,
        CuStream,
    ) -> NcclResult,
    /// `(sendbuff, recvbuff, count, datatype, root, comm, stream)`.
    pub(super) broadcast: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        NcclComm,
        CuStream,
    ) -> NcclResult,
    /// `(sendbuff, recvbuff, sendcount, datatype, comm, stream)`.
    pub(super) all_gather: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        NcclComm,
        CuStream,
    ) -> NcclResult,
    pub(super) comm_destroy: unsafe extern "C" fn(NcclComm) -> NcclResult,
    pub(super) comm_abort: unsafe extern "C" fn(NcclComm) -> NcclResult,
    pub(super) comm_get_async_error: unsafe extern "C" fn(NcclComm, *mut NcclResult) -> NcclResult,
    pub(super) get_error_string: unsafe extern "C" fn(NcclResult) -> *const c_char,
    /// `ncclGetLastError`, NCCL 2.13 and later.
    pub(super) get_last_error: Option<unsafe extern "C" fn(NcclComm) -> *const c_char>,
}

/// The CUDA driver entry points used here: a device made current, and the staging of host
/// buffers through device memory.
pub(super) struct CudaApi {
    pub(super) init: unsafe extern "C" fn(c_uint) -> CuResult,
    pub(super) device_get_count: unsafe extern "C" fn(*mut c_int) -> CuResult,
    pub(super) device_get: unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult,
    pub(super) primary_ctx_retain: unsafe extern "C" fn(*mut CuContext, CuDevice) -> CuResult,
    pub(super) primary_ctx_release: unsafe extern "C" fn(CuDevice) -> CuResult,
    pub(super) ctx_set_current: unsafe extern "C" fn(CuContext) -> CuResult,
    pub(super) ctx_push_current: unsafe extern "C" fn(CuContext) -> CuResult,
    pub(super) ctx_pop_current: unsafe extern "C" fn(*mut CuContext) -> CuResult,
    pub(super) mem_alloc: unsafe extern "C" fn(*mut CuDevicePtr, usize) -> CuResult,
    pub(super) mem_free: unsafe extern "C" fn(CuDevicePtr) -> CuResult,
    pub(super) memcpy_htod: unsafe extern "C" fn(CuDevicePtr, *const c_void, usize) -> CuResult,
    pub(super) memcpy_dtoh: unsafe extern "C" fn(*mut c_void, CuDevicePtr, usize) -> CuResult,
    pub(super) stream_query: unsafe extern "C" fn(CuStream) -> CuResult,
    pub(super) get_error_string: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
}

/// Opens the first of `candidates` that loads; the error lists every candidate with why it
/// did not.
pub(super) fn open_first(what: &str, candidates: &[String]) -> Result<Library, String> {
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
pub(super) fn with_source(err: &libloading::Error) -> String {
    match std::error::Error::source(err) {
        Some(source) => format!("{err}: {source}"),
        None => err.to_string(),
    }
}

pub(super) fn nccl_candidates() -> Vec<String> {
    let mut candidates: Vec<String> = std::env::var_os(NCCL_LIBRARY_VARIABLE)
        .map(|path| path.to_string_lossy().into_owned())
        .into_iter()
        .collect();
    candidates.extend(["libnccl.so.2".to_string(), "libnccl.so".to_string()]);
    candidates
}

pub(super) fn load_nccl_from(candidates: &[String]) -> Result<NcclApi, String> {
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
            reduce_scatter: symbol(&library, "ncclReduceScatter")?,
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

pub(super) fn load_cuda_from(candidates: &[String]) -> Result<CudaApi, String> {
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

pub(super) fn nccl_api() -> Result<&'static NcclApi, CollectiveError> {
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

pub(super) fn cuda_api() -> Result<&'static CudaApi, CollectiveError> {
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
    pub(super) fn describe(&self, result: NcclResult, comm: NcclComm) -> String {
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
    pub(super) fn version_string(&self) -> String {
        let code = self.version;
        if code >= 10000 {
            format!("{}.{}.{}", code / 10000, code / 100 % 100, code % 100)
        } else {
            format!("{}.{}.{}", code / 1000, code / 100 % 10, code % 100)
        }
    }
}

impl CudaApi {
    pub(super) fn check(&self, result: CuResult, call: &str) -> Result<(), String> {
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
pub(super) struct Device {
    pub(super) nccl: &'static NcclApi,
    pub(super) cuda: &'static CudaApi,
    pub(super) device: CuDevice,
    pub(super) context: CuContext,
    pub(super) index: usize,
}

impl Device {
    /// Loads the libraries and makes device `index` current on this thread, as
    /// `cudaSetDevice(index)` (and torch's `set_device`) does: its primary context, the one
    /// the CUDA runtime and so libtorch use, and the device `ncclCommInitRank` joins with.
    pub(super) fn open(index: usize) -> Result<Device, CollectiveError> {
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
pub(super) struct Pushed(pub(super) &'static CudaApi);

impl Drop for Pushed {
    fn drop(&mut self) {
        let mut popped: CuContext = std::ptr::null_mut();
        // SAFETY: pops the context pushed when `self` was made; the out-pointer is a local.
        unsafe { (self.0.ctx_pop_current)(&mut popped) };
    }
}

/// The element types the host operations move, with NCCL's name for each. None has padding
/// and every bit pattern of each is a value, so their bytes may go to the device and back.
pub(super) trait Element: Copy + Default {
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
pub(super) fn device_ptr(ptr: CuDevicePtr) -> *mut c_void {
    ptr as usize as *mut c_void
}
