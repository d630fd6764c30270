//! qins-web listens beyond loopback only when asked, and then warns when no
//! API key protects it.

use std::process::Command;
use std::time::{Duration, Instant};

use qins_e2e::*;

/// Runs qins-web until its log mentions `marker` (or it exits), then stops it.
fn web_log(args: &[&str], marker: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("web.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut child = Command::new(binary("qins-web"))
        .args(args)
        .arg("--socket")
        .arg(dir.path().join("none.sock"))
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("qins-web starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains(marker) || started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status,
        std::fs::read_to_string(&log_path).unwrap_or_default(),
    )
}

#[test]
fn a_non_loopback_address_needs_public_and_warns_without_a_key() {
    let (status, log) = web_log(&["--listen", "0.0.0.0:0"], "--public");
    assert_eq!(status.map(|c| c != 0), Some(true), "refused: {log}");
    assert!(log.contains("--public"), "{log}");
    let (status, log) = web_log(&["--listen", "0.0.0.0:0", "--public"], "without --api-key");
    assert_eq!(status, None, "it serves: {log}");
    assert!(log.contains("without --api-key"), "warned: {log}");
    let (_, log) = web_log(
        &["--listen", "0.0.0.0:0", "--public", "--api-key", "k"],
        "qins-web serving",
    );
    assert!(
        !log.contains("without --api-key"),
        "no warning with a key: {log}"
    );
}
