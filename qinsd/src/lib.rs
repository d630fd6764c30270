//! qinsd: the daemon that keeps a QINS model resident and serves it.
//!
//! The model and the generation loop come from the crates below it
//! (`qins-core`, `qins-convert`, `qins-engine`); here the [`scheduler`] runs
//! chats on the engine, the gRPC [`service`] answers them, and the
//! Unix-socket [`server`] (with the [`authority`] fix-up in front of h2)
//! exposes it. [`model_store`] is the one rule for naming and opening a
//! model. [`bench`] measures a model the way `qinsd bench` reports it.

pub mod authority;
pub mod bench;
pub mod model_store;
pub mod scheduler;
pub mod server;
pub mod service;
