//! Test support, never shipped: paths of the real data fetched by
//! `scripts/fetch-fixtures.sh`, deterministic random-weight models (tiny ones
//! in Hugging Face layout, a Phi-3.5-shaped one in QINS form), and the one
//! harness that runs a real `qinsd` for end-to-end tests ([`daemon`]).

pub mod daemon;
pub mod paths;
pub mod phi35;
pub mod tiny;

use std::path::Path;
use std::sync::atomic::AtomicBool;

use qins_convert::{ConvertError, ConvertOptions};

/// Converts `source` (a directory, GGUF file or Hub id) to `output` with the
/// default options, ignoring progress: what tests set up a model with.
pub fn convert_with_defaults(source: &Path, output: &Path) -> Result<(), ConvertError> {
    let source = qins_convert::open_source(&source.to_string_lossy(), &mut |_| {})?;
    let never = AtomicBool::new(false);
    let options = ConvertOptions::default();
    qins_convert::convert(source.as_ref(), output, &options, &mut |_| {}, &never)?;
    Ok(())
}
