//! The arithmetic a run computes in: f32, or bf16 with f32 master weights, and `auto`, which
//! takes bf16 where it was measured to be faster. A run records the precision it resolved
//! to, and a resumed run keeps it.

use coconut_model::ModelShape;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

/// `train.precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 on CUDA devices of compute capability 8 or more, and on CPUs with native bf16
    /// (AMX or AVX512_BF16) for models at least [`MIN_CPU_BF16_WIDTH`] wide; f32 elsewhere.
    Auto,
    /// Activations, weights and gradients in f32.
    F32,
    /// Weights and activations in bf16; f32 master weights, gradients and optimizer
    /// moments (the bf16 weights are copies of the masters, rewritten at every update).
    Bf16,
}

/// The hidden size from which `auto` computes in bf16 on a CPU with native bf16. Below it
/// the matrix products are too small for AMX to pay for the bf16 step's extra work, and
/// f32 is faster (docs/BENCHMARKS.md, "Precision").
pub const MIN_CPU_BF16_WIDTH: usize = 256;

impl Precision {
    /// `F32` or `Bf16`: `Auto` decided for a model of `shape` on `device`.
    pub fn resolve(self, device: Device, shape: ModelShape) -> Precision {
        let bf16_pays = match device {
            Device::Cuda(_) => native_bf16(device),
            _ => native_bf16(device) && shape.hidden_size >= MIN_CPU_BF16_WIDTH,
        };
        match self {
            Precision::Auto if bf16_pays => Precision::Bf16,
            Precision::Auto => Precision::F32,
            chosen => chosen,
        }
    }

    /// The kind a model computes in at this precision (`Auto` is resolved first).
    pub fn kind(self) -> Kind {
        match self {
            Precision::Bf16 => Kind::BFloat16,
            _ => Kind::Float,
        }
    }

    /// The name used in configs.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// Whether `device` computes bf16 matrix products natively (faster than f32).
pub fn native_bf16(device: Device) -> bool {
    match device {
        Device::Cuda(index) => {
            crate::cuda_runtime::compute_capability(index).is_some_and(|(major, _)| major >= 8)
        }
        _ => cpu_native_bf16(),
    }
}

/// AMX or AVX512_BF16 among this CPU's flags (Linux's `/proc/cpuinfo`; elsewhere, no).
fn cpu_native_bf16() -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else { return false };
    let flags = info.lines().find(|l| l.starts_with("flags")).unwrap_or_default();
    flags.split_whitespace().any(|f| f == "amx_bf16" || f == "avx512_bf16")
}
