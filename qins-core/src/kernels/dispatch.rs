//! Which kernel runs on this CPU: chosen by microarchitecture family from a
//! small table, not only by which instructions exist, so a family where a
//! wider instruction set does not pay can be given a narrower kernel.
//! `QINS_KERNEL` overrides the table. The choice and its reason are made
//! once per process, logged at model load and shown by `qinsd bench`.
//!
//! `QINS_ISA_LIMIT` hides instruction sets from every kernel and from this
//! table ([`allows`]), so that one machine runs (and CI tests) the code
//! paths of a smaller CPU: `avx2` hides AVX-512 and AVX-VNNI (an AMD Zen
//! 1-3 or an Intel core before Alder Lake), `avx-vnni` hides AVX-512 (an
//! Intel hybrid client core), `neon` hides BF16 (an Apple M1).

use std::sync::OnceLock;

use super::KernelKind;
use KernelKind::{
    Avx2, Avx2Int, Avx512, Avx512Bf16, Avx512Vnni, AvxVnni, Neon, NeonBf16, NeonInt, Scalar,
};

/// An instruction set that `QINS_ISA_LIMIT` can hide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 (every `avx512*` kernel, and AVX-512 code elsewhere).
    Avx512,
    /// AVX-VNNI (the 256-bit `vpdpwssd` of the `avx-vnni` kernel).
    AvxVnni,
    /// aarch64 BF16 (the `neon-bf16` kernel).
    ArmBf16,
}

/// The values `QINS_ISA_LIMIT` takes and what each hides.
const ISA_LIMITS: [(&str, &[Isa]); 3] = [
    ("avx2", &[Isa::Avx512, Isa::AvxVnni]),
    ("avx-vnni", &[Isa::Avx512]),
    ("neon", &[Isa::ArmBf16]),
];

/// The instruction sets this process hides (`QINS_ISA_LIMIT`, read once;
/// an unknown value hides nothing and says so).
fn hidden() -> &'static [Isa] {
    static HIDDEN: OnceLock<&'static [Isa]> = OnceLock::new();
    HIDDEN.get_or_init(|| {
        let Ok(limit) = std::env::var("QINS_ISA_LIMIT") else {
            return &[];
        };
        match ISA_LIMITS.iter().find(|(name, _)| *name == limit) {
            Some((_, hidden)) => hidden,
            None => {
                tracing::warn!(
                    "QINS_ISA_LIMIT={limit} is unknown (expected one of {}); no instruction set is hidden",
                    ISA_LIMITS.map(|(name, _)| name).join(", ")
                );
                &[]
            }
        }
    })
}

/// Whether kernels may use `isa` (where the CPU has it): false when
/// `QINS_ISA_LIMIT` hides it.
pub fn allows(isa: Isa) -> bool {
    !hidden().contains(&isa)
}

/// The CPU families the table tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuFamily {
    /// x86-64 with AVX-512 (F + BW) that is not AMD: Intel server cores
    /// from Skylake-SP to Granite Rapids, Ice Lake and Tiger Lake clients.
    IntelAvx512,
    /// AMD with AVX-512: Zen 4 and Zen 5 (every AMD core that has it).
    AmdZen4Plus,
    /// x86-64 with AVX2 and FMA but no AVX-512: AMD Zen 1-3, Intel cores
    /// from Haswell and Intel's hybrid client cores.
    X86Avx2,
    /// Other x86-64 (no AVX2 + FMA).
    X86Baseline,
    /// aarch64 with BF16 (FEAT_BF16): Apple M2 and later, Arm Neoverse
    /// V1/V2/N2 (AWS Graviton 3/4).
    Arm64Bf16,
    /// aarch64 without BF16: Apple M1, Cortex-A72/A76, Neoverse N1
    /// (Graviton 2).
    Arm64,
    /// Any other architecture: the scalar reference.
    Other,
}

/// One row of the table: the kernels a family prefers, best first (the
/// first one this build and CPU can run wins; scalar is the last resort),
/// and why.
struct Preference {
    family: CpuFamily,
    label: &'static str,
    order: &'static [KernelKind],
    why: &'static str,
}

const TABLE: [Preference; 7] = [
    Preference {
        family: CpuFamily::IntelAvx512,
        label: "Intel AVX-512 core",
        order: &[Avx512Vnni, Avx512Bf16, Avx512, AvxVnni, Avx2Int, Avx2],
        why: "two-source byte permutes and vdpbf16ps are slow there; avx512-vnni's word \
              permutes and integer dot products beat avx512-bf16 on every figure (Phi-3.5 \
              shape, 2 threads, both reading ahead of the stream): decode 7.0 against 6.6 \
              tok/s, prefill pp512 39.7 against 27.0, two chats 1.80-1.84x one against \
              1.48-1.61x (measured on an Intel Xeon, family 6 model 207)",
    },
    Preference {
        family: CpuFamily::AmdZen4Plus,
        label: "AMD Zen 4/5",
        order: &[Avx512Bf16, Avx512Vnni, Avx512, AvxVnni, Avx2Int, Avx2],
        why: "Zen 4 spreads 512-bit shuffles over two ports: avx512-bf16 streams weights at \
              27-37 GB/s on 2 threads against 16-20 for the f32 avx512 kernel, and does \
              194-278 against 58-72 GFLOP/s at 64 input rows (measured on Zen 4; avx512-vnni \
              not yet timed there)",
    },
    Preference {
        family: CpuFamily::X86Avx2,
        label: "AVX2-only x86-64",
        order: &[AvxVnni, Avx2Int, Avx2],
        why: "no AVX-512: the integer kernels (15-bit weights from vpshufb nibble tables, \
              integer dot products, all within 128-bit lanes) decode 32 weights in ~26 \
              instructions where the f32 avx2 kernel needs ~64. Phi-3.5 shape, 2 threads, \
              side by side with llama.cpp Q8_0 built for AVX2 (an Intel Xeon family 6 model \
              167 with AVX-512 hidden, QINS_ISA_LIMIT): avx2-int decodes 3.79 tok/s against \
              3.69 (1.03x; the f32 avx2 kernel: 0.87), prefill pp512 21.6 against 18.1; \
              avx-vnni, where the CPU has AVX-VNNI, 3.96 and 24.2. Not yet timed on an \
              AVX2-only CPU",
    },
    Preference {
        family: CpuFamily::X86Baseline,
        label: "x86-64 without AVX2",
        order: &[],
        why: "no SIMD kernel for this instruction set: the scalar reference",
    },
    Preference {
        family: CpuFamily::Arm64Bf16,
        label: "aarch64 with BF16",
        order: &[NeonBf16, NeonInt, Neon],
        why: "BFDOT does 8 and BFMMLA 16 multiply-adds per instruction against 4 for \
              neon-int's smlal, which pays for prefill and batched steps; neon-int decodes \
              16 weights in ~26 instructions against ~38 (run under qemu only: not timed)",
    },
    Preference {
        family: CpuFamily::Arm64,
        label: "aarch64 without BF16",
        order: &[NeonInt, Neon],
        why: "neon-int decodes 16 weights to 15-bit integers in ~26 instructions (4 tbl, 4 \
              zips, 2 sqrdmulh) where the f32 neon kernel needs ~38, and multiplies 4 \
              lanes per instruction like it (run under qemu only: not timed)",
    },
    Preference {
        family: CpuFamily::Other,
        label: "other architecture",
        order: &[],
        why: "no SIMD kernel for this architecture: the scalar reference",
    },
];

fn preference(family: CpuFamily) -> &'static Preference {
    TABLE
        .iter()
        .find(|p| p.family == family)
        .expect("the table has a row for every family")
}

/// What was chosen and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelChoice {
    pub kernel: KernelKind,
    pub family: CpuFamily,
    /// A line for logs and reports: the CPU, its family and the reason.
    pub reason: String,
}

/// The kernel for `family` given what this build and CPU can run (`available`),
/// or the one `requested` names (`QINS_KERNEL`) when it is available. A
/// request that cannot be honoured falls back to the table, saying so.
pub fn choose(
    family: CpuFamily,
    cpu: &str,
    available: &[KernelKind],
    requested: Option<&str>,
) -> KernelChoice {
    let row = preference(family);
    let from_table = row
        .order
        .iter()
        .copied()
        .find(|k| available.contains(k))
        .unwrap_or(Scalar);
    let table_reason = if row.order.first() == Some(&from_table) || row.order.is_empty() {
        format!("{cpu}: {}: {}", row.label, row.why)
    } else {
        format!(
            "{cpu}: {}: {} is not available on this CPU, {} is next in the table ({})",
            row.label,
            row.order[0].name(),
            from_table.name(),
            row.why
        )
    };
    let (kernel, reason) = match requested {
        None => (from_table, table_reason),
        Some(name) => match KernelKind::from_name(name) {
            Some(kind) if available.contains(&kind) => (
                kind,
                format!("QINS_KERNEL={name} (the table says {})", from_table.name()),
            ),
            Some(_) => (
                from_table,
                format!("QINS_KERNEL={name} is not supported on this machine; {table_reason}"),
            ),
            None => (
                from_table,
                format!(
                    "QINS_KERNEL={name} is unknown (expected one of {}); {table_reason}",
                    KernelKind::ALL.map(KernelKind::name).join(", ")
                ),
            ),
        },
    };
    KernelChoice {
        kernel,
        family,
        reason,
    }
}

/// This process's choice (made once; `QINS_KERNEL` is read then).
pub fn kernel_choice() -> &'static KernelChoice {
    static CHOICE: OnceLock<KernelChoice> = OnceLock::new();
    CHOICE.get_or_init(|| {
        let requested = std::env::var("QINS_KERNEL").ok();
        let choice = choose(
            this_cpu_family(),
            &this_cpu_name(),
            &super::available_kernels(),
            requested.as_deref(),
        );
        if requested.is_some_and(|name| choice.kernel.name() != name) {
            tracing::warn!("{}", choice.reason);
        }
        choice
    })
}

/// The family of the CPU this runs on.
pub fn this_cpu_family() -> CpuFamily {
    #[cfg(target_arch = "x86_64")]
    {
        let avx512 = allows(Isa::Avx512)
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw");
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        x86_family(&x86::vendor(), avx512, avx2)
    }
    #[cfg(target_arch = "aarch64")]
    {
        if allows(Isa::ArmBf16) && std::arch::is_aarch64_feature_detected!("bf16") {
            CpuFamily::Arm64Bf16
        } else {
            CpuFamily::Arm64
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        CpuFamily::Other
    }
}

/// The x86 family from the vendor string (`cpuid` leaf 0) and features.
pub fn x86_family(vendor: &str, avx512: bool, avx2: bool) -> CpuFamily {
    // Hygon's Dhyana is a Zen 1 derivative: no AVX-512, so it lands on the
    // AVX2 row anyway; AMD is the only vendor whose AVX-512 cores are Zen.
    match (avx512, avx2) {
        (true, _) if vendor == "AuthenticAMD" => CpuFamily::AmdZen4Plus,
        (true, _) => CpuFamily::IntelAvx512,
        (false, true) => CpuFamily::X86Avx2,
        (false, false) => CpuFamily::X86Baseline,
    }
}

/// A short name of this CPU for the reason line: the brand string and
/// family/model on x86, the features that decide on aarch64.
pub fn this_cpu_name() -> String {
    let name = cpu_description();
    match std::env::var("QINS_ISA_LIMIT") {
        Ok(limit) if !hidden().is_empty() => format!("{name}, limited to {limit} (QINS_ISA_LIMIT)"),
        _ => name,
    }
}

fn cpu_description() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        x86::describe()
    }
    #[cfg(target_arch = "aarch64")]
    {
        let has = |yes: bool| if yes { "yes" } else { "no" };
        format!(
            "aarch64 (bf16 {}, i8mm {}, dotprod {})",
            has(std::arch::is_aarch64_feature_detected!("bf16")),
            has(std::arch::is_aarch64_feature_detected!("i8mm")),
            has(std::arch::is_aarch64_feature_detected!("dotprod")),
        )
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        std::env::consts::ARCH.to_string()
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{__cpuid, CpuidResult};

    /// The vendor string of `cpuid` leaf 0 ("GenuineIntel", "AuthenticAMD").
    pub fn vendor() -> String {
        let CpuidResult { ebx, ecx, edx, .. } = __cpuid(0);
        let bytes: Vec<u8> = [ebx, edx, ecx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// "AMD EPYC (AuthenticAMD family 0x19 model 0x01)": the brand string
    /// (leaves 0x80000002-4, where the CPU has them) and the display family
    /// and model of leaf 1.
    pub fn describe() -> String {
        let eax = __cpuid(1).eax;
        let base_family = (eax >> 8) & 0xF;
        let family = if base_family == 0xF {
            base_family + ((eax >> 20) & 0xFF)
        } else {
            base_family
        };
        let model = if base_family == 0x6 || base_family == 0xF {
            ((eax >> 12) & 0xF0) | ((eax >> 4) & 0xF)
        } else {
            (eax >> 4) & 0xF
        };
        let ids = format!("{} family {family:#04x} model {model:#04x}", vendor());
        if __cpuid(0x8000_0000).eax < 0x8000_0004 {
            return ids;
        }
        let bytes: Vec<u8> = (0x8000_0002..=0x8000_0004u32)
            .flat_map(|leaf| {
                let r = __cpuid(leaf);
                [r.eax, r.ebx, r.ecx, r.edx]
            })
            .flat_map(u32::to_le_bytes)
            .collect();
        let brand = String::from_utf8_lossy(&bytes);
        let brand = brand.trim_matches(|c: char| c == '\0' || c.is_whitespace());
        if brand.is_empty() {
            ids
        } else {
            format!("{brand} ({ids})")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::available_kernels;

    const FAMILIES: [CpuFamily; 7] = [
        CpuFamily::IntelAvx512,
        CpuFamily::AmdZen4Plus,
        CpuFamily::X86Avx2,
        CpuFamily::X86Baseline,
        CpuFamily::Arm64Bf16,
        CpuFamily::Arm64,
        CpuFamily::Other,
    ];

    #[test]
    fn every_family_gets_its_first_preference_when_everything_is_available() {
        let expected = [
            Avx512Vnni, Avx512Bf16, AvxVnni, Scalar, NeonBf16, NeonInt, Scalar,
        ];
        for (family, kernel) in FAMILIES.into_iter().zip(expected) {
            let choice = choose(family, "test cpu", &KernelKind::ALL, None);
            assert_eq!(choice.kernel, kernel, "{family:?}");
            assert_eq!(choice.family, family);
            assert!(
                choice.reason.starts_with("test cpu: ") && !choice.reason.contains("not available"),
                "{}",
                choice.reason
            );
        }
    }

    #[test]
    fn a_family_falls_back_along_its_row_then_to_scalar() {
        // Skylake-SP: AVX-512 without VNNI, BF16 or VBMI.
        let choice = choose(CpuFamily::IntelAvx512, "x", &[Avx512, Avx2, Scalar], None);
        assert_eq!(choice.kernel, Avx512);
        assert!(
            choice
                .reason
                .contains("avx512-vnni is not available on this CPU, avx512 is next"),
            "{}",
            choice.reason
        );
        // Cascade Lake: VNNI without BF16 or VBMI.
        let choice = choose(
            CpuFamily::IntelAvx512,
            "x",
            &[Avx512Vnni, Avx512, Avx2, Scalar],
            None,
        );
        assert_eq!(choice.kernel, Avx512Vnni);
        // AMD Zen 1-3: AVX2 without AVX-VNNI.
        let choice = choose(CpuFamily::X86Avx2, "x", &[Avx2Int, Avx2, Scalar], None);
        assert_eq!(choice.kernel, Avx2Int);
        assert!(
            choice
                .reason
                .contains("avx-vnni is not available on this CPU, avx2-int is next"),
            "{}",
            choice.reason
        );
        for family in FAMILIES {
            assert_eq!(choose(family, "x", &[Scalar], None).kernel, Scalar);
        }
    }

    #[test]
    fn qins_kernel_overrides_the_table_when_it_can() {
        let available = [Avx2Int, Avx2, Scalar];
        let forced = choose(CpuFamily::X86Avx2, "x", &available, Some("scalar"));
        assert_eq!(forced.kernel, Scalar);
        assert_eq!(
            forced.reason,
            "QINS_KERNEL=scalar (the table says avx2-int)"
        );
        let missing = choose(CpuFamily::X86Avx2, "x", &available, Some("neon"));
        assert_eq!(missing.kernel, Avx2Int);
        assert!(
            missing
                .reason
                .starts_with("QINS_KERNEL=neon is not supported on this machine; x: AVX2-only")
        );
        let unknown = choose(CpuFamily::X86Avx2, "x", &available, Some("sse9"));
        assert_eq!(unknown.kernel, Avx2Int);
        assert!(
            unknown.reason.contains(
                "is unknown (expected one of avx512-vnni, avx512-bf16, avx512, avx-vnni, avx2-int, avx2, neon-bf16, neon-int, neon, scalar)"
            ),
            "{}",
            unknown.reason
        );
    }

    #[test]
    fn x86_vendor_and_features_give_the_family() {
        assert_eq!(
            x86_family("AuthenticAMD", true, true),
            CpuFamily::AmdZen4Plus
        );
        assert_eq!(
            x86_family("GenuineIntel", true, true),
            CpuFamily::IntelAvx512
        );
        assert_eq!(x86_family("AuthenticAMD", false, true), CpuFamily::X86Avx2);
        assert_eq!(x86_family("GenuineIntel", false, true), CpuFamily::X86Avx2);
        assert_eq!(
            x86_family("GenuineIntel", false, false),
            CpuFamily::X86Baseline
        );
    }

    /// The process's choice is the table's for this CPU (or `QINS_KERNEL`'s),
    /// and the one a run expects when it says (`QINS_EXPECT_KERNEL`: the
    /// aarch64 runs under qemu set it per emulated CPU, so a dispatch that
    /// ignores a CPU model's features fails there).
    #[test]
    fn this_process_runs_the_tables_choice() {
        let requested = std::env::var("QINS_KERNEL").ok();
        let expected = choose(
            this_cpu_family(),
            &this_cpu_name(),
            &available_kernels(),
            requested.as_deref(),
        );
        assert_eq!(kernel_choice(), &expected);
        #[cfg(target_arch = "x86_64")]
        assert!(matches!(
            this_cpu_family(),
            CpuFamily::IntelAvx512
                | CpuFamily::AmdZen4Plus
                | CpuFamily::X86Avx2
                | CpuFamily::X86Baseline
        ));
        #[cfg(target_arch = "aarch64")]
        assert_eq!(
            this_cpu_family() == CpuFamily::Arm64Bf16,
            std::arch::is_aarch64_feature_detected!("bf16")
        );
        if let Ok(name) = std::env::var("QINS_EXPECT_KERNEL") {
            assert_eq!(
                kernel_choice().kernel.name(),
                name,
                "{}",
                kernel_choice().reason
            );
        }
        println!(
            "{}: {}",
            kernel_choice().kernel.name(),
            kernel_choice().reason
        );
    }
}
