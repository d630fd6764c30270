//! Test support, never shipped: paths of the real data fetched by
//! `scripts/fetch-fixtures.sh`, deterministic random-weight models (tiny ones
//! in Hugging Face layout, a Phi-3.5-shaped one in QINS form), and the one
//! harness that runs a real `qinsd` for end-to-end tests ([`daemon`]).

#[cfg(feature = "daemon")]
pub mod daemon;
pub mod paths;
pub mod phi35;
pub mod tiny;

use std::io::Write;
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
/// mount, a GPU adapter) can run: the one skip rule of the workspace's
/// tests. Without it the test is skipped with a line on the test log,
/// except under CI ([`in_ci`]), which provides everything these tests need
/// (it runs as root, with lavapipe as the GPU): there a skip is a failure.
/// (An instruction set is no such need: qins-core's kernel tests report
/// the kernels a CPU cannot run.)
pub fn can_run(available: bool, needs: &str) -> bool {
    if available {
        return true;
    }
    assert!(
        !in_ci(),
        "this test needs {needs}, which CI provides (CI={})",
        std::env::var("CI").unwrap_or_default()
    );
    // Straight to the process's stderr: the harness captures `eprintln!`
    // and shows it only for failures, and a skip must be seen.
    let _ = writeln!(std::io::stderr(), "skipped: this test needs {needs}");
    false
}

/// Whether the tests run under CI: `CI` is `true` (GitHub Actions,
/// GitLab, `.ci/run`) or `1` (other CI systems, by hand).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}
