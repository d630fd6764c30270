//! qins-web: a browser chat page and an OpenAI-compatible API in front of
//! qinsd. The library exposes [`app::router`] so tests can serve it on any
//! listener; `main.rs` only parses flags and binds.

pub mod app;
pub mod daemon;
pub mod error;
pub mod routes;
pub mod security;
