//! The GPU the tests share: whatever `gpu` opens (lavapipe under
//! scripts/test.sh, which sources scripts/vulkan-env.sh).
//!
//! Without an adapter a GPU test is skipped through the workspace's one
//! skip rule ([`can_run`]): a line on the test log, and a failure under
//! CI (`CI=true` or `CI=1`), which must run every check.

use std::sync::{Arc, OnceLock};

use qins_test_support::can_run;

use crate::device::{DeviceChoice, GpuContext, open};

/// The shared GPU, or `None` (the caller returns: skipped) where this
/// machine has none.
pub fn gpu() -> Option<&'static Arc<GpuContext>> {
    static CONTEXT: OnceLock<Result<Arc<GpuContext>, String>> = OnceLock::new();
    let context = CONTEXT.get_or_init(|| match open(DeviceChoice::Gpu) {
        Ok(Some(context)) => Ok(Arc::new(context)),
        Ok(None) => Err("no adapter".into()),
        Err(error) => Err(error.to_string()),
    });
    let why_not = context.as_ref().err().map_or("", String::as_str);
    let needs =
        format!("a GPU adapter ({why_not}; `source scripts/vulkan-env.sh` sets up lavapipe)");
    if can_run(context.is_ok(), &needs) {
        context.as_ref().ok()
    } else {
        None
    }
}
