//! Compiles `csrc/torch_ext.cpp` against the LibTorch that torch-sys links, with the same
//! include folders and C++ ABI it builds its own wrapper with (see torch-sys's build script:
//! `LIBTORCH_INCLUDE` and `LIBTORCH_CXX11_ABI` override them), then links like every crate
//! of the workspace that links LibTorch.

#[path = "../libtorch_build.rs"]
mod libtorch_build;

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=csrc/torch_ext.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_INCLUDE");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let lib = libtorch_build::link_libtorch()
        .expect("torch-sys exports LibTorch's lib folder (DEP_TCH_LIBTORCH_LIB)");
    let root = match std::env::var("LIBTORCH_INCLUDE") {
        Ok(include) => PathBuf::from(include),
        Err(_) => lib.parent().expect("LibTorch's lib folder has a parent").to_path_buf(),
    };
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_string());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("csrc/torch_ext.cpp")
        .compile("torch_ext");
}
