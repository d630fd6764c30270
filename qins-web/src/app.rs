//! The router: routes, their middleware, and the state they share
//! ([`AppState`], built here from [`Config`]).

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Uri;
use axum::middleware::from_fn_with_state;
use axum::response::Response;
use axum::routing::{get, post};

use crate::daemon::Daemon;
use crate::error::ApiError;
use crate::metrics::{self, Metrics};
use crate::routes::{anthropic, chat, health, ollama, openai, page, stats};
use crate::security;
use crate::state::AppState;

/// What `router` needs; `main` fills it from the flags. No `Debug`: it
/// holds the API key, which must not end up in logs.
#[derive(Clone)]
pub struct Config {
    /// qinsd's Unix socket.
    pub socket: PathBuf,
    /// When set, API routes and /health require `Authorization: Bearer KEY`
    /// (or `x-api-key: KEY`).
    pub api_key: Option<String>,
    /// Host names accepted besides the loopback ones.
    pub allow_hosts: Vec<String>,
    /// Origins that get CORS headers; empty: none do.
    pub cors_origins: Vec<String>,
    pub max_body_bytes: usize,
}

pub fn router(config: Config) -> Router {
    let metrics = Arc::new(Metrics::new());
    let state = Arc::new(AppState {
        daemon: Daemon::new(config.socket, Arc::clone(&metrics)),
        metrics,
        api_key: config.api_key.filter(|k| !k.is_empty()),
        allowed_hosts: config
            .allow_hosts
            .iter()
            .map(|h| security::normalize_host(h))
            .collect(),
        cors_origins: config.cors_origins,
        responses: Default::default(),
    });
    // The page stays open so a browser can load it and then ask for the key;
    // everything that reaches qinsd is behind the key. The page's own API
    // lives under /ui; /api is ollama's.
    let api = Router::new()
        .route("/ui/chat", post(chat::chat))
        .route("/ui/stats", get(stats::stats))
        .route("/health", get(health::health))
        .route("/metrics", get(crate::routes::metrics::metrics))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(openai::models))
        .route("/v1/responses", post(openai::responses::create))
        .route(
            "/v1/responses/{id}",
            get(openai::responses::retrieve).delete(openai::responses::delete),
        )
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/api/embed", post(ollama::embed))
        .route("/api/embeddings", post(ollama::embeddings))
        .route("/api/version", get(ollama::version))
        .route("/api/tags", get(ollama::tags))
        .route("/api/show", post(ollama::show))
        .route("/api/ps", get(ollama::ps))
        .route("/api/chat", post(ollama::chat))
        .route("/api/generate", post(ollama::generate))
        .route_layer(from_fn_with_state(state.clone(), security::require_key));
    let mut app = Router::new()
        .route("/", get(page::index))
        .route("/app.js", get(page::app_js))
        .route("/style.css", get(page::style_css))
        .route("/vendor/marked.js", get(page::marked_js))
        .route("/vendor/purify.js", get(page::purify_js))
        .merge(api)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(config.max_body_bytes));
    if !state.cors_origins.is_empty() {
        app = app.layer(from_fn_with_state(state.clone(), security::cors));
    }
    // Added last, so they run first: a foreign Host gets nothing else, and
    // every answer, refusals included, is counted.
    app.layer(from_fn_with_state(state.clone(), security::check_host))
        .layer(from_fn_with_state(state.clone(), metrics::count_requests))
        .with_state(state)
}

async fn not_found(uri: Uri) -> Response {
    ApiError::NotFound("no such route".into()).response_for(uri.path())
}
