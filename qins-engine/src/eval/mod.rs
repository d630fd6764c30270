//! Quality evaluation: perplexity on a fixed text, KL divergence and top-1
//! agreement against a reference model.

pub mod corpus;
pub mod perplexity;
