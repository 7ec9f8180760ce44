//! Which precision the encoder runs in on this CPU.
//!
//! A float bundle (the default) always runs in f32. An int8 bundle (int8 weights per output
//! channel, int8 activation ranges from calibration) runs either as stored, through
//! tract's integer kernels, or dequantised to an f32 graph at load ([`crate::dequantize`]).
//! Which is faster depends on the CPU's integer kernels, so `auto` follows what was
//! measured (tract 0.23.9, Lite0 encoder, README "Precision and threads"), never assumes:
//!
//! - x86-64 with AVX-512 VNNI: f32 (int8 92.6 ms vs 30.4 ms dequantised, 1 thread);
//!   x86-64 with AVX2 only: f32 (issue 13's figures: int8 ~205 ms vs f32 50 ms).
//! - aarch64 without dot-product (Cortex-A72, Raspberry Pi 4): f32 (qemu instruction
//!   count per encoder run: int8 560 M vs 184 M dequantised).
//! - aarch64 with dot-product (Cortex-A76, Raspberry Pi 5): f32 as well; even with tract's
//!   SDOT kernel int8 executes 465 M instructions vs 184 M.
//!
//! `[model] precision` (or `--precision`) overrides the choice; `auto` is the default.

use serde::Serialize;

pub use caption_proto::precision::{Precision, UnknownPrecision};

/// The instruction-set features that decide the precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct CpuFeatures {
    pub arch: Arch,
    /// x86-64: AVX2 and FMA (tract's f32 and widening int8 kernels).
    pub avx2_fma: bool,
    /// x86-64: AVX-512 VNNI or AVX-VNNI (tract's int8 dot-product kernels).
    pub vnni: bool,
    /// aarch64: FEAT_DotProd (`sdot`, tract's SDOT int8 kernel).
    pub dotprod: bool,
    /// aarch64: FEAT_FP16 (half-precision arithmetic).
    pub fp16: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    X86_64,
    Aarch64,
    #[default]
    Other,
}

impl CpuFeatures {
    /// The running CPU's features. On aarch64 Linux these come from the kernel's HWCAP,
    /// which qemu-user sets from its `-cpu` model, so the emulated Pi checks see the
    /// features of the board they emulate.
    pub fn detect() -> CpuFeatures {
        #[cfg(target_arch = "x86_64")]
        {
            CpuFeatures {
                arch: Arch::X86_64,
                avx2_fma: std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma"),
                vnni: std::is_x86_feature_detected!("avx512vnni")
                    || std::is_x86_feature_detected!("avxvnni"),
                ..CpuFeatures::default()
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            CpuFeatures {
                arch: Arch::Aarch64,
                dotprod: std::arch::is_aarch64_feature_detected!("dotprod"),
                fp16: std::arch::is_aarch64_feature_detected!("fp16"),
                ..CpuFeatures::default()
            }
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            CpuFeatures::default()
        }
    }

    /// A short description, e.g. `x86-64 (avx2+fma, vnni)`.
    pub fn describe(&self) -> String {
        let mut flags = Vec::new();
        match self.arch {
            Arch::X86_64 => {
                if self.avx2_fma {
                    flags.push("avx2+fma");
                }
                if self.vnni {
                    flags.push("vnni");
                }
            }
            Arch::Aarch64 => {
                if self.dotprod {
                    flags.push("dotprod");
                }
                if self.fp16 {
                    flags.push("fp16");
                }
            }
            Arch::Other => {}
        }
        let arch = match self.arch {
            Arch::X86_64 => "x86-64",
            Arch::Aarch64 => "aarch64",
            Arch::Other => "other",
        };
        if flags.is_empty() {
            arch.to_owned()
        } else {
            format!("{arch} ({})", flags.join(", "))
        }
    }
}

/// The precision the engine runs, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrecisionChoice {
    /// [`Precision::Int8`] or [`Precision::F32`], never `Auto`.
    pub precision: Precision,
    pub reason: String,
}

/// The precision for a bundle whose encoder is stored as int8 (`int8_bundle`) or f32.
pub fn choose(requested: Precision, cpu: &CpuFeatures, int8_bundle: bool) -> PrecisionChoice {
    let pick = |precision, reason: String| PrecisionChoice { precision, reason };
    if !int8_bundle {
        let why = match requested {
            Precision::Int8 => {
                "int8 requested, but the bundle's encoder is f32 (nothing to run as int8)"
            }
            _ => "the bundle's encoder is f32",
        };
        return pick(Precision::F32, why.to_owned());
    }
    match requested {
        Precision::Int8 => pick(Precision::Int8, "requested".into()),
        Precision::F32 => pick(
            Precision::F32,
            "requested (int8 weights dequantised at load)".into(),
        ),
        Precision::Auto => {
            let cpu_name = cpu.describe();
            let why = match cpu.arch {
                Arch::X86_64 if cpu.vnni => "tract's VNNI int8 encoder measured slower than f32 on x86-64",
                Arch::X86_64 => "tract's int8 matmul widens to 16 bits without VNNI; f32 measured faster",
                Arch::Aarch64 if cpu.dotprod => "with SDOT the int8 encoder still executes more instructions than f32 (qemu count, Cortex-A76)",
                Arch::Aarch64 => "no dot-product: tract's int8 kernel (SMLAL) executes more instructions than f32",
                Arch::Other => "no measured int8 advantage on this architecture",
            };
            pick(Precision::F32, format!("auto on {cpu_name}: {why}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x86(vnni: bool) -> CpuFeatures {
        CpuFeatures {
            arch: Arch::X86_64,
            avx2_fma: true,
            vnni,
            ..CpuFeatures::default()
        }
    }

    fn arm(dotprod: bool, fp16: bool) -> CpuFeatures {
        CpuFeatures {
            arch: Arch::Aarch64,
            dotprod,
            fp16,
            ..CpuFeatures::default()
        }
    }

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for name in Precision::NAMES {
            assert_eq!(name.parse::<Precision>().unwrap().name(), name);
        }
        let err = "fp8".parse::<Precision>().unwrap_err().to_string();
        assert!(err.contains("fp8") && err.contains("\"f32\""), "{err}");
    }

    #[test]
    fn an_explicit_request_wins_on_an_int8_bundle() {
        for cpu in [x86(false), x86(true), arm(false, false), arm(true, true)] {
            assert_eq!(
                choose(Precision::Int8, &cpu, true).precision,
                Precision::Int8
            );
            assert_eq!(choose(Precision::F32, &cpu, true).precision, Precision::F32);
        }
    }

    #[test]
    fn an_f32_bundle_always_runs_f32() {
        let c = choose(Precision::Int8, &x86(true), false);
        assert_eq!(c.precision, Precision::F32);
        assert!(c.reason.contains("f32"), "{}", c.reason);
        assert_eq!(
            choose(Precision::Auto, &arm(true, true), false).precision,
            Precision::F32
        );
    }

    #[test]
    fn auto_follows_the_measurements_per_cpu() {
        // Every CPU measured so far runs the dequantised f32 graph faster (module docs).
        for (cpu, hint) in [
            (x86(false), "x86-64 (avx2+fma)"),
            (x86(true), "vnni"),
            (arm(false, false), "aarch64"),
            (arm(true, true), "dotprod, fp16"),
        ] {
            let c = choose(Precision::Auto, &cpu, true);
            assert_eq!(c.precision, Precision::F32, "{cpu:?}");
            assert!(
                c.reason.starts_with("auto on ") && c.reason.contains(hint),
                "{}",
                c.reason
            );
        }
    }

    #[test]
    fn detection_reports_the_build_architecture() {
        let cpu = CpuFeatures::detect();
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(cpu.arch, Arch::X86_64);
            assert!(
                !cpu.dotprod && !cpu.fp16,
                "aarch64 flags on x86-64: {cpu:?}"
            );
            assert_eq!(
                cpu.vnni,
                std::is_x86_feature_detected!("avx512vnni")
                    || std::is_x86_feature_detected!("avxvnni")
            );
        }
        #[cfg(target_arch = "aarch64")]
        {
            assert_eq!(cpu.arch, Arch::Aarch64);
            assert!(!cpu.vnni && !cpu.avx2_fma, "x86 flags on aarch64: {cpu:?}");
        }
        assert!(!cpu.describe().is_empty());
    }
}
