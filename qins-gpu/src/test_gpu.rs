//! The GPU the tests share: whatever `gpu` opens (lavapipe under
//! scripts/test.sh, which sources scripts/vulkan-env.sh).
//!
//! Without an adapter a GPU test says so on stderr and passes, except
//! under CI (`CI=true`), where it fails: CI must run every check.

use std::sync::{Arc, OnceLock};

use crate::device::{DeviceChoice, GpuContext, open};

pub fn gpu() -> Option<&'static Arc<GpuContext>> {
    static CONTEXT: OnceLock<Option<Arc<GpuContext>>> = OnceLock::new();
    CONTEXT
        .get_or_init(|| match open(DeviceChoice::Gpu) {
            Ok(context) => context.map(Arc::new),
            Err(error) if in_ci() => {
                panic!("CI=true but the GPU tests found no GPU: {error} (scripts/vulkan-env.sh installs lavapipe)")
            }
            Err(error) => {
                eprintln!(
                    "skipped: no GPU for this test ({error}); `source scripts/vulkan-env.sh` sets up lavapipe"
                );
                None
            }
        })
        .as_ref()
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}
