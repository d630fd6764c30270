//! qinsd: the QINS engine and daemon.
//!
//! Data flows one way: a `.qins` file ([`container`]) is loaded into resident
//! weights ([`weights`]) that the model ([`model`]) runs through the QINS
//! kernels ([`kernels`]); [`convert`] produces the file from Hugging Face or
//! GGUF sources using the [`codec`]. The daemon runs the model through the
//! [`engine`] under the [`scheduler`], exposed by the gRPC [`service`] on the
//! Unix-socket [`server`].

pub mod authority;
pub mod bench;
pub mod codec;
pub mod container;
pub mod convert;
pub mod engine;
pub mod eval;
pub mod export;
pub mod fixtures;
pub mod kernels;
pub mod model;
pub mod rng;
pub mod scheduler;
pub mod server;
pub mod service;
pub mod tokenizer;
pub mod weights;
