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

mod engine;
mod ffi;

pub use engine::Nccl;
pub use ffi::NCCL_UNIQUE_ID_BYTES;

#[cfg(test)]
mod tests {
    use super::engine::nccl_ranks;
    use std::ffi::c_char;
    use std::time::Duration;

    use super::ffi::*;
    use super::*;
    use crate::CollectiveError;
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
