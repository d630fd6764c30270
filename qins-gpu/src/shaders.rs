//! The WGSL modules, compiled into the binary.

use std::borrow::Cow;

/// One WGSL compute module (entry point `main`).
pub struct Module {
    pub name: &'static str,
    /// Constants declared in front of the body (one body, several variants).
    prefix: &'static str,
    body: &'static str,
    /// Whether the module reads or writes the K/V cache, whose element
    /// type `kv` is declared in front of the body.
    uses_kv: bool,
}

/// The element type of the K/V cache on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvType {
    F32,
    /// Where the device has `shader-f16`: half the bytes per step.
    F16,
}

impl KvType {
    pub const ALL: [KvType; 2] = [KvType::F32, KvType::F16];

    /// Bytes per cached value.
    pub fn size(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }

    fn declaration(self) -> &'static str {
        match self {
            KvType::F32 => "alias kv = f32;\n",
            KvType::F16 => "enable f16;\nalias kv = f16;\n",
        }
    }
}

impl Module {
    /// The module's WGSL; `kv` matters only for those that touch the cache.
    pub fn source(&self, kv: KvType) -> Cow<'static, str> {
        let kv = if self.uses_kv { kv.declaration() } else { "" };
        if self.prefix.is_empty() && kv.is_empty() {
            Cow::Borrowed(self.body)
        } else {
            Cow::Owned(format!("{}{kv}{}", self.prefix, self.body))
        }
    }

    const fn plain(name: &'static str, body: &'static str) -> Self {
        Self {
            name,
            prefix: "",
            body,
            uses_kv: false,
        }
    }

    const fn with_kv(name: &'static str, body: &'static str) -> Self {
        Self {
            name,
            prefix: "",
            body,
            uses_kv: true,
        }
    }

    const fn with_prefix(name: &'static str, prefix: &'static str, body: &'static str) -> Self {
        Self {
            name,
            prefix,
            body,
            uses_kv: false,
        }
    }
}

const QINS_MATVEC_BODY: &str = include_str!("shaders/qins_matvec.wgsl");
/// One input row (a decode step).
pub const QINS_MATVEC_1: Module = Module::with_prefix(
    "qins_matvec_1",
    "const TOKENS: u32 = 1u;\n",
    QINS_MATVEC_BODY,
);
/// Two to four input rows (batched decode steps).
pub const QINS_MATVEC_4: Module = Module::with_prefix(
    "qins_matvec_4",
    "const TOKENS: u32 = 4u;\n",
    QINS_MATVEC_BODY,
);
pub const QINS_MATMUL: Module =
    Module::plain("qins_matmul", include_str!("shaders/qins_matmul.wgsl"));
pub const EMBED: Module = Module::plain("embed", include_str!("shaders/embed.wgsl"));
pub const RMS_NORM: Module = Module::plain("rms_norm", include_str!("shaders/rms_norm.wgsl"));
pub const ROPE: Module = Module::plain("rope", include_str!("shaders/rope.wgsl"));
pub const SWIGLU: Module = Module::plain("swiglu", include_str!("shaders/swiglu.wgsl"));
pub const KV_STORE: Module = Module::with_kv("kv_store", include_str!("shaders/kv_store.wgsl"));
pub const ATTENTION: Module = Module::with_kv("attention", include_str!("shaders/attention.wgsl"));

/// Every module, for the translation test.
pub const ALL: &[&Module] = &[
    &QINS_MATVEC_1,
    &QINS_MATVEC_4,
    &QINS_MATMUL,
    &EMBED,
    &RMS_NORM,
    &ROPE,
    &SWIGLU,
    &KV_STORE,
    &ATTENTION,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn validated(name: &str, source: &str) -> (naga::Module, naga::valid::ModuleInfo) {
        let parsed = naga::front::wgsl::parse_str(source)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
        let capabilities =
            naga::valid::Capabilities::default() | naga::valid::Capabilities::SHADER_FLOAT16;
        let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities)
            .validate(&parsed)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
        (parsed, info)
    }

    /// What Metal (MSL 2.4: macOS 12) or DX12 (HLSL shader model 6.2, the
    /// first with 16-bit types) would reject fails here, on any machine.
    #[test]
    fn every_module_translates_to_msl_and_hlsl() {
        for module in ALL {
            for kv in KvType::ALL {
                let name = format!("{} (kv {kv:?})", module.name);
                let source = module.source(kv);
                let (parsed, info) = validated(&name, &source);
                let msl_options = naga::back::msl::Options {
                    lang_version: (2, 4),
                    ..Default::default()
                };
                let (msl, _) = naga::back::msl::write_string(
                    &parsed,
                    &info,
                    &msl_options,
                    &naga::back::msl::PipelineOptions::default(),
                )
                .unwrap_or_else(|e| panic!("{name} to MSL: {e}"));
                assert!(msl.contains("kernel void"), "{name}: no MSL kernel");

                let hlsl_options = naga::back::hlsl::Options {
                    shader_model: naga::back::hlsl::ShaderModel::V6_2,
                    ..Default::default()
                };
                let mut hlsl = String::new();
                naga::back::hlsl::Writer::new(
                    &mut hlsl,
                    &hlsl_options,
                    &naga::back::hlsl::PipelineOptions::default(),
                )
                .write(&parsed, &info, None)
                .unwrap_or_else(|e| panic!("{name} to HLSL: {e}"));
                assert!(hlsl.contains("[numthreads("), "{name}: no HLSL entry point");
            }
        }
    }
}
