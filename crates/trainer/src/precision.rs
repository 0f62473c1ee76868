//! The arithmetic a run computes in: f32, or bf16 with f32 master weights, and `auto`, which
//! takes bf16 where the hardware computes it natively. A run records the precision it
//! resolved to, and a resumed run keeps it.

use serde::{Deserialize, Serialize};
use tch::Device;

/// `train.precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 on CUDA devices of compute capability 8 or more and on CPUs with native bf16
    /// (AMX or AVX512_BF16), f32 elsewhere.
    Auto,
    /// Activations, weights and gradients in f32.
    F32,
    /// Activations in bf16; weights, gradients and optimizer moments in f32 (weights are
    /// cast where they are used).
    Bf16,
}

impl Precision {
    /// `F32` or `Bf16`: `Auto` decided for `device`.
    pub fn resolve(self, device: Device) -> Precision {
        match self {
            Precision::Auto if native_bf16(device) => Precision::Bf16,
            Precision::Auto => Precision::F32,
            chosen => chosen,
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
