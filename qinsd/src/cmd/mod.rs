//! One module per `qinsd` subcommand: argument parsing and reporting only;
//! the work is done by the library.

pub mod bench;
pub mod convert;
pub mod export_hf;
pub mod generate;
pub mod perplexity;
pub mod serve;
