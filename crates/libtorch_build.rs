//! The build script of every crate whose binaries or tests link LibTorch (each names this
//! file as `build` in its manifest, or calls [`link_libtorch`] from its own).
//!
//! - An rpath to LibTorch's lib folder, so that binaries and tests run without
//!   `LD_LIBRARY_PATH`. torch-sys (`links = "tch"`) exports the folder to direct dependents.
//! - With the CUDA LibTorch, `libtorch_cuda.so` kept as a dependency. Nothing calls it by
//!   symbol (the CUDA backend registers itself with the dispatcher when the library loads),
//!   so the linker's `--as-needed` would drop it and the binary would know no CUDA device.
#[allow(dead_code)] // unused where another build script includes this file as a module
fn main() {
    link_libtorch();
}

/// Emits the link arguments above; returns LibTorch's lib folder (`None` without torch-sys).
pub fn link_libtorch() -> Option<std::path::PathBuf> {
    println!("cargo:rerun-if-changed=../libtorch_build.rs");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").ok()?;
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-L{lib},-ltorch_cuda,--as-needed");
    }
    Some(lib.into())
}
