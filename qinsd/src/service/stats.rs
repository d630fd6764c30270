//! `Stats`: process memory, the resident model's footprint against its
//! bf16/f32 equivalents, and the scheduler's counters.

use qins_proto::v1::StatsReply;

use qins_gpu::device::backend_name;

use super::DaemonInfo;
use crate::scheduler::Scheduler;

pub fn stats(scheduler: &Scheduler, info: &DaemonInfo) -> StatsReply {
    let counters = scheduler.counters();
    let mut reply = StatsReply {
        process_rss_bytes: process_rss_bytes(),
        device: info.device.clone(),
        context_limit: scheduler.config().context as u32,
        uptime_seconds: info.started.elapsed().as_secs_f64(),
        requests_served: counters.requests_served,
        tokens_generated: counters.tokens_generated,
        last_tokens_per_second: counters.last_tokens_per_second,
        average_tokens_per_second: counters.average_tokens_per_second,
        active_requests: counters.active as u32,
        queued_requests: counters.queued as u32,
        kv_cache_bytes: counters.kv_cache_bytes,
        version: env!("CARGO_PKG_VERSION").to_string(),
        threads: info.threads as u32,
        draft_tokens: counters.draft_tokens,
        accepted_draft_tokens: counters.accepted_draft_tokens,
        ..StatsReply::default()
    };
    if let Some(model) = scheduler.model() {
        let bytes = model.resident_bytes();
        reply.model = model.name().to_string();
        reply.architecture = model.header().config.architecture.name().to_string();
        reply.model_code_bytes = bytes.codes;
        reply.model_sign_bytes = bytes.signs;
        reply.model_other_bytes = bytes.other;
        reply.model_parameters = bytes.parameters;
        reply.bf16_equivalent_bytes = bytes.parameters * 2;
        reply.f32_equivalent_bytes = bytes.parameters * 4;
        reply.compression_vs_f32 = (bytes.parameters * 4) as f64 / bytes.total().max(1) as f64;
        reply.model_loaded_unix_seconds = unix_seconds(model.loaded_at());
        reply.defaults = Some(super::generation_defaults(model.defaults()));
        // `auto` may have kept a model the GPU refused on the CPU.
        reply.device = model.model().kind().to_string();
    }
    if let Some(gpu) = scheduler.config().device.gpu()
        && (reply.model.is_empty() || reply.device == "gpu")
    {
        reply.gpu_adapter = gpu.adapter().name.clone();
        reply.gpu_backend = backend_name(gpu.adapter().backend).to_string();
        reply.gpu_memory_bytes = gpu.allocated_bytes();
    }
    reply
}

/// Seconds since the Unix epoch; 0 for a time before it (a wrong clock).
pub fn unix_seconds(at: std::time::SystemTime) -> f64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Resident set size of this process, 0 if the OS does not say.
pub fn process_rss_bytes() -> u64 {
    use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};
    let Ok(pid) = sysinfo::get_current_pid() else {
        return 0;
    };
    let Ok(mut system) = System::new() else {
        return 0;
    };
    system.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        true,
        ProcessRefreshKind::nothing().with_memory(),
    );
    system.process(pid).map_or(0, sysinfo::Process::memory)
}
