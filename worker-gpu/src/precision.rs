//! The models' number format (`--dtype`): `auto` picks fp16 on CUDA, bf16 on a CPU with native
//! bf16 arithmetic (AVX-512 BF16 or AMX), else fp32.
//!
//! Weights are cast once after loading. What stays in fp32 without costing a cast: libtorch's
//! LayerNorm, softmax (inside scaled-dot-product attention) and GEMM kernels accumulate
//! half-precision inputs in fp32; the outputs callers see (projected embeddings, decoder
//! logits) are turned to fp32 before the final L2 normalisation, the logits processors and the
//! argmax.

use tch::{Device, Kind, nn};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Dtype {
    /// fp16 on CUDA, bf16 on a CPU with AVX-512 BF16 or AMX, else fp32.
    #[default]
    Auto,
    Fp32,
    Bf16,
    Fp16,
}

impl Dtype {
    /// The tensor kind the models run in on `device`.
    pub fn resolve(self, device: Device) -> Kind {
        match self {
            Self::Fp32 => Kind::Float,
            Self::Bf16 => Kind::BFloat16,
            Self::Fp16 => Kind::Half,
            Self::Auto if device.is_cuda() => Kind::Half,
            Self::Auto if cpu_has_native_bf16() => Kind::BFloat16,
            Self::Auto => Kind::Float,
        }
    }
}

/// Casts every floating-point weight of `vs` to `kind` (fp32 weights stay as loaded).
pub fn cast_weights(vs: &mut nn::VarStore, kind: Kind) {
    match kind {
        Kind::Half => vs.half(),
        Kind::BFloat16 => vs.bfloat16(),
        _ => {}
    }
}

/// `fp32`, `bf16` or `fp16`: the names the flag takes.
pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bf16",
        Kind::Half => "fp16",
        _ => "fp32",
    }
}

/// Whether this CPU has bf16 dot products in hardware, read from `/proc/cpuinfo`'s flags
/// (Linux); elsewhere, no.
pub fn cpu_has_native_bf16() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| flags_have_bf16(&info))
}

fn flags_have_bf16(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "avx512_bf16" || f == "amx_bf16"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_fp16_on_cuda_and_explicit_choices_win() {
        assert_eq!(Dtype::Auto.resolve(Device::Cuda(0)), Kind::Half);
        assert_eq!(Dtype::Fp32.resolve(Device::Cuda(0)), Kind::Float);
        assert_eq!(Dtype::Bf16.resolve(Device::Cpu), Kind::BFloat16);
        assert_eq!(Dtype::Fp16.resolve(Device::Cpu), Kind::Half);
        let auto_cpu = Dtype::Auto.resolve(Device::Cpu);
        assert_eq!(auto_cpu == Kind::BFloat16, cpu_has_native_bf16());
    }

    #[test]
    fn bf16_flags_are_read_from_cpuinfo() {
        assert!(flags_have_bf16("processor: 0\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n"));
        assert!(flags_have_bf16("flags\t\t: fpu amx_bf16 amx_tile\n"));
        assert!(!flags_have_bf16("flags\t\t: fpu avx2 avx512f avx512_bf16x\n"));
        assert!(!flags_have_bf16("model name: avx512_bf16\n"));
    }
}
