//! Opt-in wall-time breakdown of the forward pass by stage
//! (`QINS_PROFILE=1`), for `qinsd bench`. Off, each stage costs one
//! relaxed load of a cached flag.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Embed,
    Norm,
    Qkv,
    Rope,
    Attention,
    OProj,
    GateUp,
    Swiglu,
    Down,
    LmHead,
}

impl Stage {
    pub const ALL: [Stage; 10] = [
        Stage::Embed,
        Stage::Norm,
        Stage::Qkv,
        Stage::Rope,
        Stage::Attention,
        Stage::OProj,
        Stage::GateUp,
        Stage::Swiglu,
        Stage::Down,
        Stage::LmHead,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Embed => "embed",
            Stage::Norm => "rms_norm",
            Stage::Qkv => "qkv_proj",
            Stage::Rope => "rope",
            Stage::Attention => "attention (+kv write)",
            Stage::OProj => "o_proj",
            Stage::GateUp => "gate_up_proj",
            Stage::Swiglu => "swiglu",
            Stage::Down => "down_proj",
            Stage::LmHead => "lm_head",
        }
    }
}

static NANOS: [AtomicU64; 10] = [const { AtomicU64::new(0) }; 10];

/// Whether `QINS_PROFILE` is set (to anything but 0), read once.
pub fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("QINS_PROFILE").is_ok_and(|v| v != "0"))
}

/// Runs `f`, adding its wall time to `stage` when profiling.
#[inline]
pub fn time<T>(stage: Stage, f: impl FnOnce() -> T) -> T {
    if !enabled() {
        return f();
    }
    let started = Instant::now();
    let out = f();
    NANOS[stage as usize].fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    out
}

pub fn reset() {
    for n in &NANOS {
        n.store(0, Ordering::Relaxed);
    }
}

/// Seconds per stage since the last reset.
pub fn snapshot() -> Vec<(&'static str, f64)> {
    Stage::ALL
        .iter()
        .map(|&s| {
            (
                s.name(),
                NANOS[s as usize].load(Ordering::Relaxed) as f64 / 1e9,
            )
        })
        .collect()
}
