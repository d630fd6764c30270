//! Human-readable sizes, counts, durations and reply timings.

use qins_proto::v1::{ChatDone, GenerationDefaults};

/// Bytes in decimal units (1 MB = 10^6 bytes, as disk and download sizes are
/// usually quoted), with one or two decimals depending on magnitude.
pub fn bytes(n: u64) -> String {
    const UNITS: [(&str, f64); 4] = [("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)];
    let v = n as f64;
    for (unit, scale) in UNITS {
        if v >= scale {
            let x = v / scale;
            return if x >= 100.0 {
                format!("{x:.0} {unit}")
            } else if x >= 10.0 {
                format!("{x:.1} {unit}")
            } else {
                format!("{x:.2} {unit}")
            };
        }
    }
    format!("{n} B")
}

/// A model's chat defaults: `temperature 0.2 · top_p 0.9 · top_k 40 ·
/// max_tokens 512` (the repetition penalty only when it is on).
pub fn generation_defaults(g: &GenerationDefaults) -> String {
    let mut parts = vec![
        format!("temperature {}", g.temperature),
        format!("top_p {}", g.top_p),
        format!("top_k {}", g.top_k),
    ];
    if g.repetition_penalty != 1.0 {
        parts.push(format!("repetition_penalty {}", g.repetition_penalty));
    }
    parts.push(format!("max_tokens {}", g.max_tokens));
    parts.join(" · ")
}

/// Parameter counts the way model cards write them: 135M, 1.7B.
pub fn count(n: u64) -> String {
    const UNITS: [(&str, f64); 3] = [("B", 1e9), ("M", 1e6), ("K", 1e3)];
    let v = n as f64;
    for (unit, scale) in UNITS {
        if v >= scale {
            let x = v / scale;
            return if x >= 10.0 {
                format!("{x:.0}{unit}")
            } else {
                format!("{x:.1}{unit}")
            };
        }
    }
    n.to_string()
}

/// An uptime: `42s`, `5m 03s`, `2h 05m`, `3d 04h`.
pub fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".into();
    }
    let s = seconds as u64;
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d {h:02}h")
    } else if h > 0 {
        format!("{h}h {m:02}m")
    } else if m > 0 {
        format!("{m}m {sec:02}s")
    } else {
        format!("{sec}s")
    }
}

/// Milliseconds, switching to seconds past one second.
pub fn millis(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

/// One line of timings after a reply (`--verbose`, `/set verbose`).
pub fn timings(done: &ChatDone) -> String {
    let usage = done.usage.unwrap_or_default();
    let t = done.timings.unwrap_or_default();
    let mut line = format!(
        "prompt {} tokens ({} cached) · first token {} · {} tokens at {:.1} tok/s · total {}",
        usage.prompt_tokens,
        usage.cached_prompt_tokens,
        millis(t.time_to_first_token_ms),
        usage.completion_tokens,
        t.tokens_per_second,
        millis(t.total_ms),
    );
    if t.queue_ms >= 1.0 {
        line.push_str(&format!(" · queued {}", millis(t.queue_ms)));
    }
    line
}

/// A reply's lookup line for `--verbose`: "lookup: drafted D, accepted A (P%)".
pub fn lookup_line(done: &ChatDone) -> String {
    let t = done.timings.unwrap_or_default();
    format!(
        "lookup: {}",
        lookup(
            u64::from(t.draft_tokens),
            u64::from(t.accepted_draft_tokens)
        )
    )
}

/// Lookup decoding's share of a reply (or of all replies): "drafted D,
/// accepted A (P%)".
pub fn lookup(drafted: u64, accepted: u64) -> String {
    if drafted == 0 {
        return "nothing drafted".to_string();
    }
    format!(
        "drafted {drafted}, accepted {accepted} ({:.0}%)",
        accepted as f64 * 100.0 / drafted as f64
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_reports_the_accepted_share() {
        assert_eq!(lookup(0, 0), "nothing drafted");
        assert_eq!(lookup(40, 30), "drafted 40, accepted 30 (75%)");
    }

    #[test]
    fn bytes_pick_a_readable_unit() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1000), "1.00 KB");
        assert_eq!(bytes(177_719), "178 KB");
        assert_eq!(bytes(12_345_678), "12.3 MB");
        assert_eq!(bytes(1_500_000_000), "1.50 GB");
        assert_eq!(bytes(u64::MAX), "18446744 TB");
    }

    #[test]
    fn counts_and_durations() {
        assert_eq!(count(512), "512");
        assert_eq!(count(134_515_008), "135M");
        assert_eq!(count(1_711_376_384), "1.7B");
        assert_eq!(duration(42.9), "42s");
        assert_eq!(duration(303.0), "5m 03s");
        assert_eq!(duration(7500.0), "2h 05m");
        assert_eq!(duration(3.0 * 86_400.0 + 4.0 * 3600.0), "3d 04h");
        assert_eq!(duration(f64::NAN), "-");
        assert_eq!(millis(12.4), "12 ms");
        assert_eq!(millis(1500.0), "1.50 s");
    }
}
