//! qins-core: the QINS weight format and the models that run on it.
//!
//! Data flows one way: a `.qins` file ([`container`], which also stores the
//! model [`container::config`]) is loaded into resident weights ([`weights`])
//! that the model ([`model`]) runs through the QINS [`kernels`]. The
//! [`codec`] maps weights to 8-bit logarithmic codes and back.
//!
//! No async runtime, RPC, network or tokenizer code lives here: the fuzz
//! target and the GPU crate build on this crate alone.

pub mod codec;
pub mod container;
pub mod kernels;
pub mod model;
pub mod rng;
pub mod weights;
