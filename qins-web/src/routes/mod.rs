//! HTTP handlers, one module per dialect: the page's `/ui` API (`chat.rs`,
//! `stats.rs`), OpenAI's `/v1` (`openai/`), Anthropic's `/v1/messages`
//! (`anthropic/`), ollama's `/api` (`ollama/`),
//! and `/health`, `/metrics`. What the dialects share (the reply stream,
//! the parameter table, the body extractor) is in `crate::edge`.

pub mod anthropic;
pub mod chat;
pub mod health;
pub mod metrics;
pub mod ollama;
pub mod openai;
pub mod page;
pub mod stats;
