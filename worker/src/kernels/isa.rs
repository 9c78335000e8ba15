//! Which instruction set a CPU kernel runs on, detected once at run time: every kernel of this
//! module picks its path here, so a machine always takes the same one (the determinism the
//! kernels promise is per binary and machine).

/// The SIMD level of the running CPU, widest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// x86-64 with AVX-512F (and AVX2 and FMA, which every such CPU has).
    Avx512,
    /// x86-64 with AVX2 and FMA.
    Avx2Fma,
    /// Plain Rust for the build's baseline target.
    Portable,
}

/// The widest level the running CPU supports.
pub fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2_fma = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        if avx2_fma && std::arch::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if avx2_fma {
            return Isa::Avx2Fma;
        }
    }
    Isa::Portable
}

/// `isa`, or the widest level below it the CPU has (what a test asking for a level gets).
pub fn supported(isa: Isa) -> Isa {
    match (isa, detect()) {
        (Isa::Avx512, best) => best,
        (Isa::Avx2Fma, Isa::Portable) => Isa::Portable,
        (Isa::Avx2Fma, _) => Isa::Avx2Fma,
        (Isa::Portable, _) => Isa::Portable,
    }
}
