//! Installs LibTorch for tch 0.24.0, which expects PyTorch 2.11.0, from the PyPI wheels.
//!
//! The wheel is the CUDA build of PyTorch. For the CPU install we keep its CPU libraries,
//! add the two small CUDA runtime libraries that `libtorch_cpu.so` links (found with
//! `readelf -d`), and drop the CUDA libraries so that torch-sys links CPU only. Wheels are
//! downloaded once into a per-user cache, so a second checkout installs without the network.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::run;

/// The PyTorch version tch 0.24.0 is built for.
const TORCH_VERSION: &str = "2.11.0";
/// Wheels holding the CUDA runtime libraries that `libtorch_cpu.so` needs even on CPU.
const CPU_RUNTIME_WHEELS: [&str; 2] =
    ["nvidia-cuda-runtime==13.0.96.*", "nvidia-cuda-cupti==13.0.85.*"];
/// Those libraries, copied next to `libtorch_cpu.so` so that one rpath finds everything.
const CPU_RUNTIME_LIBS: [&str; 2] = ["libcudart.so.13", "libcupti.so.13"];
/// The CUDA side of the wheel. Without `libtorch_cuda.so`, torch-sys links the CPU build.
const CUDA_LIBS: [&str; 6] = [
    "libtorch_cuda.so",
    "libc10_cuda.so",
    "libtorch_cuda_linalg.so",
    "libtorch_nvshmem.so",
    "libcaffe2_nvrtc.so",
    "libtorch_python.so",
];

/// Which LibTorch to install.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// CPU only, about 650 MB.
    Cpu,
    /// The full CUDA build with its NVIDIA libraries, about 2.7 GB of downloads.
    Cuda,
}

impl Flavor {
    fn name(self) -> &'static str {
        match self {
            Flavor::Cpu => "cpu",
            Flavor::Cuda => "cuda",
        }
    }
}

/// Makes sure LibTorch is installed and returns its folder (the value for `LIBTORCH`).
///
/// Idempotent: an existing install of the right version is reused. A `LIBTORCH` the user
/// set to another folder is honoured for the CPU flavor and nothing is installed.
pub fn libtorch(root: &Path, flavor: Flavor) -> Result<PathBuf> {
    let dir = root.join(".libtorch").join(flavor.name());
    let libtorch = dir.join("torch");
    if flavor == Flavor::Cpu {
        if let Some(user) = user_libtorch(&libtorch) {
            if !user.join("lib").is_dir() {
                bail!(
                    "LIBTORCH={} has no lib folder; unset it to let setup install LibTorch",
                    user.display()
                );
            }
            return Ok(user);
        }
    }
    let marker = dir.join(".installed");
    let expected = format!("torch {TORCH_VERSION} {}\n", flavor.name());
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(expected.as_str())
        && libtorch.join("lib/libtorch_cpu.so").exists()
    {
        return Ok(libtorch);
    }

    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let pip_ok = Command::new(&python)
        .args(["-m", "pip", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !pip_ok {
        bail!("`{python} -m pip` is not available: LibTorch is installed from PyPI with pip (install python3 and pip, or set LIBTORCH to an existing LibTorch {TORCH_VERSION})");
    }

    let torch = format!("torch=={TORCH_VERSION}");
    let mut specs = vec![torch.as_str()];
    if flavor == Flavor::Cpu {
        specs.extend(CPU_RUNTIME_WHEELS);
    }
    let cache = wheel_cache(flavor)?;
    eprintln!(
        "downloading PyTorch {TORCH_VERSION} ({}) wheels into {} (once per user)",
        flavor.name(),
        cache.display()
    );
    let mut download = Command::new(&python);
    download
        .args(["-m", "pip", "download", "--only-binary=:all:", "--find-links"])
        .arg(&cache)
        .arg("-d")
        .arg(&cache);
    if flavor == Flavor::Cpu {
        download.arg("--no-deps");
    }
    run(download.args(&specs), "pip download (is the PyPI registry reachable?)")?;

    let partial = dir.with_extension("partial");
    remove_dir(&partial)?;
    eprintln!("installing LibTorch into {}", dir.display());
    let mut install = Command::new(&python);
    install
        .args(["-m", "pip", "install", "--quiet", "--no-index", "--no-compile", "--find-links"])
        .arg(&cache);
    install.arg("--target").arg(&partial);
    if flavor == Flavor::Cpu {
        install.arg("--no-deps");
    }
    run(install.args(&specs), "pip install from the wheel cache")?;
    if flavor == Flavor::Cpu {
        trim_to_cpu(&partial)?;
    }
    remove_dir(&dir)?;
    std::fs::rename(&partial, &dir)
        .with_context(|| format!("moving {} into place", partial.display()))?;
    std::fs::write(&marker, expected)?;
    eprintln!("LibTorch {TORCH_VERSION} ({}) ready: {}", flavor.name(), libtorch.display());
    Ok(libtorch)
}

/// A LIBTORCH from the environment that is not the project's own folder. (Cargo sets
/// LIBTORCH to the project folder through `.cargo/config.toml` unless the user set one.)
fn user_libtorch(ours: &Path) -> Option<PathBuf> {
    let set = PathBuf::from(std::env::var_os("LIBTORCH")?);
    let same = set == ours
        || (set.exists() && ours.exists() && set.canonicalize().ok() == ours.canonicalize().ok());
    (!same).then_some(set)
}

/// `$XDG_CACHE_HOME/coconut-rs/wheels-<flavor>`, else `~/.cache/...`.
fn wheel_cache(flavor: Flavor) -> Result<PathBuf> {
    let base = match (std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME")) {
        (Some(xdg), _) => PathBuf::from(xdg),
        (None, Some(home)) => PathBuf::from(home).join(".cache"),
        (None, None) => {
            bail!("neither XDG_CACHE_HOME nor HOME is set: no place for the wheel cache")
        }
    };
    let dir = base.join("coconut-rs").join(format!("wheels-{}", flavor.name()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Turns a `pip install --target` of the CUDA wheel into a CPU LibTorch.
fn trim_to_cpu(target: &Path) -> Result<()> {
    let lib = target.join("torch/lib");
    let runtime = target.join("nvidia/cu13/lib");
    for name in CPU_RUNTIME_LIBS {
        std::fs::copy(runtime.join(name), lib.join(name))
            .with_context(|| format!("copying {name} into {}", lib.display()))?;
    }
    for name in CUDA_LIBS {
        let path = lib.join(name);
        if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    remove_dir(&target.join("nvidia"))
}

fn remove_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

/// The Debian packages that MPI builds and runs with: the launcher, the library and its
/// headers, and libclang (the `mpi` crate generates its bindings with it).
const MPI_PACKAGES: [&str; 3] = ["openmpi-bin", "libopenmpi-dev", "libclang-dev"];

/// Whether `program arg` runs and succeeds (the program is installed).
fn have(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether OpenMPI (`mpirun`, `mpicc`) and libclang (the `mpi` crate's bindings) are
/// installed, so that the MPI flavour of the binary builds and runs.
pub fn openmpi_present() -> bool {
    // Where Debian's libclang-dev puts it (`/usr/lib/llvm-<version>/lib`), or LIBCLANG_PATH.
    let libclang = std::env::var_os("LIBCLANG_PATH").is_some()
        || std::fs::read_dir("/usr/lib").is_ok_and(|dirs| {
            dirs.flatten().any(|d| {
                d.file_name().to_string_lossy().starts_with("llvm-")
                    && d.path().join("lib/libclang.so").exists()
            })
        });
    have("mpirun", "--version") && have("mpicc", "--showme:version") && libclang
}

/// Makes OpenMPI available the way LibTorch is: present already, or installed with the
/// system's package manager when this runs as root on a Debian-like system; otherwise an
/// error with the one command to run.
pub fn openmpi() -> Result<()> {
    if openmpi_present() {
        return Ok(());
    }
    let command = format!("apt-get install -y {}", MPI_PACKAGES.join(" "));
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout == b"0\n");
    if !root || !have("apt-get", "--version") {
        bail!(
            "OpenMPI (mpirun, mpicc) and libclang are needed for data-parallel training and its \
             tests; install them, for example with `sudo {command}`"
        );
    }
    eprintln!("installing OpenMPI: {command}");
    let update = Command::new("apt-get").args(["update", "-q"]).status()?;
    if !update.success() {
        bail!("`apt-get update` failed; install OpenMPI with `{command}`");
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-q"])
        .args(MPI_PACKAGES)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    if !status.success() {
        bail!("`{command}` failed");
    }
    Ok(())
}
