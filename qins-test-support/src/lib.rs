//! Test support, never shipped: paths of the real data fetched by
//! `scripts/fetch-fixtures.sh`, deterministic random-weight models (tiny ones
//! in Hugging Face layout, a Phi-3.5-shaped one in QINS form), and the one
//! harness that runs a real `qinsd` for end-to-end tests ([`daemon`]).

#[cfg(feature = "daemon")]
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

/// Whether a test that needs something this machine may lack (root, a
/// mount) can run. Without it the test is skipped with a line on stderr,
/// except under `CI=true`: CI runs as root, so there a skip is a failure.
pub fn can_run(available: bool, needs: &str) -> bool {
    if available {
        return true;
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !in_ci,
        "this test needs {needs}, which CI provides (CI=true)"
    );
    eprintln!("skipped: this test needs {needs}");
    false
}
