//! qins-web: a browser chat page, an OpenAI-compatible API, ollama's API
//! and Prometheus metrics in front of qinsd. The library exposes [`app::router`] so tests can serve it on any
//! listener; `main.rs` only parses flags and binds.

// A bridge of safe libraries: no unsafe code of its own, ever.
#![forbid(unsafe_code)]

pub mod app;
pub mod daemon;
pub mod edge;
pub mod error;
pub mod metrics;
pub mod routes;
pub mod security;
pub mod state;
