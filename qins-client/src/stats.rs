//! `qins stats`: the daemon's memory, model and throughput figures.

use std::path::Path;

use anyhow::Result;
use qins_proto::v1::{StatsReply, StatsRequest};

use crate::connect::{self, Client};
use crate::format::{bytes, count, duration, generation_defaults, lookup};

pub async fn run(socket: &Path, json: bool) -> Result<()> {
    let mut client = connect::client(socket).await?;
    let stats = fetch(&mut client).await?;
    if json {
        // The raw fields, named as in the proto, for scripts.
        outln!("{}", serde_json::to_string_pretty(&stats)?)?;
    } else {
        crate::output::print(&table(&stats))?;
    }
    Ok(())
}

pub async fn fetch(client: &mut Client) -> Result<StatsReply> {
    Ok(client.stats(StatsRequest {}).await?.into_inner())
}

/// Two aligned columns, grouped by topic.
pub fn table(s: &StatsReply) -> String {
    let resident = s.model_code_bytes + s.model_sign_bytes + s.model_other_bytes;
    let model = if s.model.is_empty() {
        "(none loaded)".to_string()
    } else {
        s.model.clone()
    };
    let mut rows: Vec<(&str, String)> = vec![
        (
            "daemon",
            format!("qinsd {} · up {}", s.version, duration(s.uptime_seconds)),
        ),
        ("device", format!("{} · {} threads", s.device, s.threads)),
        ("process memory", bytes(s.process_rss_bytes)),
    ];
    if !s.gpu_adapter.is_empty() {
        rows.extend([
            ("gpu", format!("{} ({})", s.gpu_adapter, s.gpu_backend)),
            ("gpu memory", bytes(s.gpu_memory_bytes)),
        ]);
    }
    rows.extend([("", String::new()), ("model", model)]);
    if !s.model.is_empty() {
        rows.extend([
            ("architecture", s.architecture.clone()),
            ("parameters", count(s.model_parameters)),
            ("context", format!("{} tokens", s.context_limit)),
            (
                "resident weights",
                format!(
                    "{} (codes {}, signs {}, other {})",
                    bytes(resident),
                    bytes(s.model_code_bytes),
                    bytes(s.model_sign_bytes),
                    bytes(s.model_other_bytes)
                ),
            ),
            ("as bf16", bytes(s.bf16_equivalent_bytes)),
            ("as f32", bytes(s.f32_equivalent_bytes)),
            ("vs f32", format!("{:.2}x smaller", s.compression_vs_f32)),
        ]);
        if let Some(g) = &s.defaults {
            rows.extend([
                ("chat defaults", generation_defaults(g)),
                ("defaults from", g.origin.clone()),
            ]);
        }
    }
    rows.extend([
        ("", String::new()),
        ("requests", s.requests_served.to_string()),
        ("tokens generated", s.tokens_generated.to_string()),
        (
            "speed",
            format!(
                "last {:.1} tok/s · average {:.1} tok/s",
                s.last_tokens_per_second, s.average_tokens_per_second
            ),
        ),
        (
            "now",
            format!(
                "{} active · {} queued",
                s.active_requests, s.queued_requests
            ),
        ),
        ("kv cache", bytes(s.kv_cache_bytes)),
        ("lookup", lookup(s.draft_tokens, s.accepted_draft_tokens)),
    ]);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in rows {
        if key.is_empty() {
            out.push('\n');
        } else {
            out.push_str(&format!("{key:<width$}  {value}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_units_and_the_split() {
        let s = StatsReply {
            process_rss_bytes: 310_000_000,
            model_code_bytes: 134_000_000,
            model_sign_bytes: 16_750_000,
            model_other_bytes: 1_000_000,
            model_parameters: 134_515_008,
            bf16_equivalent_bytes: 269_030_016,
            f32_equivalent_bytes: 538_060_032,
            compression_vs_f32: 3.54,
            model: "smollm2".into(),
            architecture: "llama".into(),
            defaults: Some(qins_proto::v1::GenerationDefaults {
                temperature: 0.2,
                top_p: 0.9,
                top_k: 40,
                repetition_penalty: 1.0,
                max_tokens: 512,
                origin: "temperature, top_p: model card".into(),
            }),
            ..StatsReply::default()
        };
        let t = table(&s);
        assert!(
            t.contains("152 MB (codes 134 MB, signs 16.8 MB, other 1.00 MB)"),
            "{t}"
        );
        assert!(t.contains("3.54x smaller"));
        assert!(
            t.contains(
                "chat defaults     temperature 0.2 · top_p 0.9 · top_k 40 · max_tokens 512\n"
            ),
            "{t}"
        );
        assert!(
            t.contains("defaults from     temperature, top_p: model card\n"),
            "{t}"
        );
        assert!(t.contains("135M"));
        let none = table(&StatsReply::default());
        assert!(none.contains("(none loaded)") && !none.contains("as bf16"));
        assert_eq!(
            serde_json::to_value(&s).unwrap()["model_code_bytes"],
            134_000_000
        );
        assert!(!t.contains("gpu memory"), "{t}");
    }

    #[test]
    fn a_gpu_shows_its_adapter_backend_and_memory() {
        let s = StatsReply {
            device: "gpu".into(),
            gpu_adapter: "Apple M4".into(),
            gpu_backend: "Metal".into(),
            gpu_memory_bytes: 2_500_000_000,
            ..StatsReply::default()
        };
        let t = table(&s);
        assert!(t.contains("Apple M4 (Metal)"), "{t}");
        assert!(t.contains("gpu memory") && t.contains("2.50 GB"), "{t}");
    }
}
