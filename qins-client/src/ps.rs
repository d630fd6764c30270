//! `qins ps`: the model qinsd keeps resident, as `ollama ps` shows its
//! running models: name, size in memory, device, context, and since when.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use qins_proto::v1::StatsReply;

use crate::connect;
use crate::format::{bytes, duration};
use crate::stats;

pub async fn run(socket: &Path) -> Result<()> {
    let mut client = connect::client(socket).await?;
    let stats = stats::fetch(&mut client).await?;
    crate::output::print(&table(&stats, SystemTime::now()))?;
    Ok(())
}

/// A header and one row; a line saying how to load a model when none is.
fn table(s: &StatsReply, now: SystemTime) -> String {
    if s.model.is_empty() {
        return "no model loaded; load one with: qins load NAME (see qins models)\n".into();
    }
    let resident = s.model_code_bytes + s.model_sign_bytes + s.model_other_bytes;
    let header = ["NAME", "SIZE", "DEVICE", "CONTEXT", "LOADED"].map(String::from);
    let row = [
        s.model.clone(),
        bytes(resident),
        device(s),
        s.context_limit.to_string(),
        loaded_ago(s.model_loaded_unix_seconds, now),
    ];
    let mut widths = [0usize; 5];
    for line in [&header, &row] {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in [&header, &row] {
        let text = line
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// `cpu`, or `gpu (Apple M4, Metal)`.
fn device(s: &StatsReply) -> String {
    if s.gpu_adapter.is_empty() {
        s.device.clone()
    } else {
        format!("{} ({}, {})", s.device, s.gpu_adapter, s.gpu_backend)
    }
}

/// `5m 03s ago`; `-` when qinsd does not say (an older daemon sends 0).
fn loaded_ago(loaded_unix_seconds: f64, now: SystemTime) -> String {
    if !(loaded_unix_seconds.is_finite() && loaded_unix_seconds > 0.0) {
        return "-".into();
    }
    let loaded = UNIX_EPOCH + Duration::from_secs_f64(loaded_unix_seconds);
    // A load stamped a moment in the future (clock steps) reads as now.
    let age = now.duration_since(loaded).unwrap_or_default();
    format!("{} ago", duration(age.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_with_size_device_context_and_age() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let s = StatsReply {
            model: "smollm2".into(),
            model_code_bytes: 134_000_000,
            model_sign_bytes: 16_750_000,
            model_other_bytes: 5_050_000,
            device: "cpu".into(),
            context_limit: 4096,
            model_loaded_unix_seconds: 1_700_000_000.0 - 183.0,
            ..StatsReply::default()
        };
        let t = table(&s, now);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "NAME     SIZE    DEVICE  CONTEXT  LOADED");
        assert_eq!(lines[1], "smollm2  156 MB  cpu     4096     3m 03s ago");
        assert_eq!(lines.len(), 2);
        let on_gpu = StatsReply {
            device: "gpu".into(),
            gpu_adapter: "Apple M4".into(),
            gpu_backend: "Metal".into(),
            ..s
        };
        assert!(
            table(&on_gpu, now).contains("gpu (Apple M4, Metal)"),
            "{}",
            table(&on_gpu, now)
        );
    }

    #[test]
    fn no_model_and_unknown_load_time() {
        let now = SystemTime::now();
        assert!(table(&StatsReply::default(), now).contains("qins load NAME"));
        assert_eq!(loaded_ago(0.0, now), "-");
    }
}
