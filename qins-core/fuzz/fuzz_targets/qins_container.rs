//! Arbitrary bytes as a `.qins` file: opening (preamble, header and index
//! JSON, section bounds) and loading (checksums, zstd, shapes) must return
//! an error or weights, never panic, hang or allocate without bound.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// One scratch file per fuzzing process (the reader maps files, not buffers).
fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| std::env::temp_dir().join(format!("qins-fuzz-{}.qins", std::process::id())))
}

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    if std::fs::write(path, data).is_err() {
        return;
    }
    if let Ok(file) = qins_core::container::QinsFile::open(path) {
        let _ = file.load();
    }
});
