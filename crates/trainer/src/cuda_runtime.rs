//! Two questions tch does not answer, asked of the CUDA runtime that LibTorch's CUDA backend
//! loaded: a device's compute capability, and the memory in use on the current device.
//! Both are `None` in a build without CUDA.

use libloading::Library;

/// `cudaDevAttrComputeCapabilityMajor` and `...Minor` of the CUDA runtime API.
const COMPUTE_CAPABILITY_MAJOR: i32 = 75;
const COMPUTE_CAPABILITY_MINOR: i32 = 76;

/// The CUDA runtime LibTorch 2.11 links (already loaded when the CUDA backend is).
fn runtime() -> Option<Library> {
    crate::cuda_backend_version()?;
    // SAFETY: loading the CUDA runtime runs no code of ours; it is the library LibTorch
    // already loaded, so this only takes a second handle on it.
    unsafe { Library::new("libcudart.so.13") }.ok()
}

/// The compute capability (major, minor) of CUDA device `index`.
pub fn compute_capability(index: usize) -> Option<(i32, i32)> {
    type GetAttribute = unsafe extern "C" fn(*mut i32, i32, i32) -> i32;
    let runtime = runtime()?;
    // SAFETY: `cudaDeviceGetAttribute(int*, cudaDeviceAttr, int)` has had this signature in
    // every CUDA release; it writes one int.
    unsafe {
        let get = runtime.get::<GetAttribute>(b"cudaDeviceGetAttribute").ok()?;
        let (mut major, mut minor) = (0, 0);
        let ok = get(&mut major, COMPUTE_CAPABILITY_MAJOR, index as i32) == 0
            && get(&mut minor, COMPUTE_CAPABILITY_MINOR, index as i32) == 0;
        ok.then_some((major, minor))
    }
}

/// Memory in use on the current CUDA device (by every process), in MB. LibTorch's caching
/// allocator keeps what it took, so after some work this is that work's high-water mark
/// plus the CUDA context.
pub fn memory_in_use_mb() -> Option<f64> {
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;
    let runtime = runtime()?;
    // SAFETY: `cudaMemGetInfo(size_t*, size_t*)` has had this signature in every CUDA
    // release; it writes the two sizes.
    unsafe {
        let get = runtime.get::<MemGetInfo>(b"cudaMemGetInfo").ok()?;
        let (mut free, mut total) = (0usize, 0usize);
        (get(&mut free, &mut total) == 0).then(|| (total - free) as f64 / 1e6)
    }
}
