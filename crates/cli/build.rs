//! Gives this crate's binaries and tests an rpath to LibTorch's lib folder, so that they run
//! without LD_LIBRARY_PATH. torch-sys (`links = "tch"`) exports the folder to direct dependents.
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
