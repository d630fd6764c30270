//! Prometheus metrics, encoded by `prometheus-client` in the OpenMetrics
//! text format for `GET /metrics`:
//! - counted here, since this process started: HTTP requests by route and
//!   status code, and of every chat reply that passed through (any API)
//!   its prompt, cached prompt and completion tokens, time to first token
//!   and decode speed (histograms, from qinsd's `done` event);
//! - read from qinsd's `Stats` at each scrape: whether qinsd answers, its
//!   queue depth, active slots, resident model bytes, process memory and
//!   K/V cache bytes. When qinsd does not answer only `qinsd_up 0` is
//!   given, rather than stale values.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use qins_proto::v1::{ChatDone, StatsReply};

use crate::state::AppState;

/// What `/metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Seconds to the first token: a short prompt on a small model takes tens
/// of milliseconds, a long one on Phi-3.5 on two cores tens of seconds.
const TTFT_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Tokens per second after the first: Phi-3.5 decodes at ~6 on two cores,
/// SmolLM2 at ~80, the tiny test model in the hundreds.
const DECODE_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// The route as declared (`/api/chat`), or `unmatched`: never the raw
    /// path, which a client could make unbounded.
    route: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
    architecture: String,
    device: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    prompt_tokens: Counter,
    cached_prompt_tokens: Counter,
    completion_tokens: Counter,
    time_to_first_token: Histogram,
    decode_speed: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "qins_web_requests",
            "HTTP requests answered, by route and status code (a stream that fails after its \
             headers counts as its status, 200)",
            requests.clone(),
        );
        let prompt_tokens = Counter::default();
        registry.register(
            "qins_web_prompt_tokens",
            "Prompt tokens of finished chat replies",
            prompt_tokens.clone(),
        );
        let cached_prompt_tokens = Counter::default();
        registry.register(
            "qins_web_cached_prompt_tokens",
            "Prompt tokens whose K/V came from a session's cache",
            cached_prompt_tokens.clone(),
        );
        let completion_tokens = Counter::default();
        registry.register(
            "qins_web_completion_tokens",
            "Generated tokens of finished chat replies",
            completion_tokens.clone(),
        );
        let time_to_first_token = Histogram::new(TTFT_BUCKETS);
        registry.register_with_unit(
            "qins_web_time_to_first_token",
            "Time from the start of generation to the first token, as qinsd measures it",
            Unit::Seconds,
            time_to_first_token.clone(),
        );
        let decode_speed = Histogram::new(DECODE_BUCKETS);
        registry.register(
            "qins_web_decode_tokens_per_second",
            "Decode speed of replies with more than one token (tokens after the first)",
            decode_speed.clone(),
        );
        Self {
            registry,
            requests,
            prompt_tokens,
            cached_prompt_tokens,
            completion_tokens,
            time_to_first_token,
            decode_speed,
        }
    }

    pub fn observe_request(&self, route: &str, code: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                code: code.to_string(),
            })
            .inc();
    }

    pub fn observe_reply(&self, done: &ChatDone) {
        let usage = done.usage.unwrap_or_default();
        let timings = done.timings.unwrap_or_default();
        self.prompt_tokens.inc_by(usage.prompt_tokens.into());
        self.cached_prompt_tokens
            .inc_by(usage.cached_prompt_tokens.into());
        self.completion_tokens
            .inc_by(usage.completion_tokens.into());
        if usage.completion_tokens >= 1 {
            self.time_to_first_token
                .observe(timings.time_to_first_token_ms / 1e3);
        }
        if usage.completion_tokens >= 2 && timings.tokens_per_second > 0.0 {
            self.decode_speed.observe(timings.tokens_per_second);
        }
    }

    /// The whole exposition: this process's metrics, then qinsd's figures
    /// from `stats` (None: qinsd did not answer), then `# EOF`.
    pub fn encode(&self, stats: Option<&StatsReply>) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode_registry(&mut out, &self.registry)?;
        encode_registry(&mut out, &daemon_registry(stats))?;
        encode_eof(&mut out)?;
        Ok(out)
    }
}

/// qinsd's gauges at this moment, in a registry of their own made per scrape.
fn daemon_registry(stats: Option<&StatsReply>) -> Registry {
    let mut registry = Registry::default();
    let up = Gauge::<i64>::default();
    up.set(i64::from(stats.is_some()));
    registry.register("qinsd_up", "1 when qinsd answered this scrape", up);
    let Some(s) = stats else {
        return registry;
    };
    let gauge = |value: u64| {
        let g = Gauge::<i64>::default();
        g.set(i64::try_from(value).unwrap_or(i64::MAX));
        g
    };
    registry.register(
        "qinsd_queued_requests",
        "Requests waiting for a generation slot (queue depth)",
        gauge(s.queued_requests.into()),
    );
    registry.register(
        "qinsd_active_requests",
        "Generation slots in use",
        gauge(s.active_requests.into()),
    );
    registry.register_with_unit(
        "qinsd_model_resident",
        "Resident model weights (codes, signs and the rest)",
        Unit::Bytes,
        gauge(s.model_code_bytes + s.model_sign_bytes + s.model_other_bytes),
    );
    registry.register_with_unit(
        "qinsd_process_resident_memory",
        "qinsd's resident set size",
        Unit::Bytes,
        gauge(s.process_rss_bytes),
    );
    registry.register_with_unit(
        "qinsd_kv_cache",
        "K/V cache held by sessions",
        Unit::Bytes,
        gauge(s.kv_cache_bytes),
    );
    if !s.model.is_empty() {
        let info = Family::<ModelLabels, Gauge>::default();
        info.get_or_create(&ModelLabels {
            model: s.model.clone(),
            architecture: s.architecture.clone(),
            device: s.device.clone(),
        })
        .set(1);
        registry.register("qinsd_model", "The resident model (always 1)", info);
    }
    registry
}

/// Counts every answered request by its declared route and status code.
pub async fn count_requests(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(req).await;
    state
        .metrics
        .observe_request(&route, response.status().as_u16());
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use qins_proto::v1::{Timings, Usage};

    fn sample(text: &str, line_start: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(line_start))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no sample {line_start:?} in\n{text}"))
    }

    #[test]
    fn replies_and_requests_are_counted() {
        let m = Metrics::new();
        m.observe_request("/api/chat", 200);
        m.observe_request("/api/chat", 200);
        m.observe_reply(&ChatDone {
            usage: Some(Usage {
                prompt_tokens: 30,
                cached_prompt_tokens: 10,
                completion_tokens: 5,
            }),
            timings: Some(Timings {
                time_to_first_token_ms: 40.0,
                tokens_per_second: 100.0,
                ..Timings::default()
            }),
            ..ChatDone::default()
        });
        let text = m.encode(None).expect("encodes");
        assert_eq!(
            sample(
                &text,
                "qins_web_requests_total{route=\"/api/chat\",code=\"200\"} "
            ),
            2.0
        );
        assert_eq!(sample(&text, "qins_web_prompt_tokens_total "), 30.0);
        assert_eq!(sample(&text, "qins_web_cached_prompt_tokens_total "), 10.0);
        assert_eq!(sample(&text, "qins_web_completion_tokens_total "), 5.0);
        assert_eq!(
            sample(
                &text,
                "qins_web_time_to_first_token_seconds_bucket{le=\"0.05\"} "
            ),
            1.0
        );
        assert_eq!(
            sample(
                &text,
                "qins_web_time_to_first_token_seconds_bucket{le=\"0.025\"} "
            ),
            0.0
        );
        assert_eq!(
            sample(&text, "qins_web_decode_tokens_per_second_count "),
            1.0
        );
        assert_eq!(sample(&text, "qinsd_up "), 0.0);
        assert!(!text.contains("qinsd_queued_requests"), "no stale values");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn daemon_figures_come_from_stats() {
        let stats = StatsReply {
            model: "tiny".into(),
            architecture: "phi3".into(),
            device: "cpu".into(),
            model_code_bytes: 100,
            model_sign_bytes: 20,
            model_other_bytes: 3,
            process_rss_bytes: 5000,
            queued_requests: 2,
            active_requests: 1,
            ..StatsReply::default()
        };
        let text = Metrics::new().encode(Some(&stats)).expect("encodes");
        assert_eq!(sample(&text, "qinsd_up "), 1.0);
        assert_eq!(sample(&text, "qinsd_queued_requests "), 2.0);
        assert_eq!(sample(&text, "qinsd_active_requests "), 1.0);
        assert_eq!(sample(&text, "qinsd_model_resident_bytes "), 123.0);
        assert_eq!(
            sample(&text, "qinsd_process_resident_memory_bytes "),
            5000.0
        );
        assert_eq!(
            sample(
                &text,
                "qinsd_model{model=\"tiny\",architecture=\"phi3\",device=\"cpu\"} "
            ),
            1.0
        );
        assert_eq!(text.matches("# EOF").count(), 1);
    }
}
