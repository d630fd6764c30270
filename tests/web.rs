//! The qins-web binary: it listens beyond loopback only when asked (and then
//! warns when no API key protects it), and serves 8 chats at once.

use std::process::Command;
use std::time::{Duration, Instant};

use qins_test_support::daemon::*;

/// Runs qins-web until its log mentions `marker` (or it exits, or 20 s
/// pass), then stops it. Returns its exit code (`None`: still running when
/// stopped) and its log.
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
            // A refusal is written just before the exit: give it a moment,
            // so that an exiting process is not taken for a serving one.
            let grace = Instant::now();
            while grace.elapsed() < Duration::from_secs(1) {
                if let Some(status) = child.try_wait().expect("wait") {
                    return (
                        status.code(),
                        std::fs::read_to_string(&log_path).unwrap_or_default(),
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
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
    let (status, log) = web_log(
        &["--listen", "0.0.0.0:0", "--public", "--api-key", "k"],
        "qins-web serving",
    );
    assert_eq!(status, None, "it serves: {log}");
    assert!(log.contains("qins-web serving"), "it says so: {log}");
    assert!(
        !log.contains("without --api-key"),
        "no warning with a key: {log}"
    );
}

/// A one-shot HTTP/1.1 POST over loopback; returns the whole response.
fn post(addr: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to qins-web");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[tokio::test]
async fn eight_concurrent_chats_through_the_bridge_complete_and_overflow_is_429() {
    let daemon = Daemon::start(&["--max-active", "2", "--max-queued", "6"]).await;
    let addr = format!("127.0.0.1:{}", free_port());
    let mut web = Command::new(binary("qins-web"))
        .args(["--listen", &addr, "--socket"])
        .arg(&daemon.socket)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("qins-web starts");
    let up = eventually(Duration::from_secs(20), || async {
        std::net::TcpStream::connect(&addr).is_ok()
    })
    .await;
    assert!(up, "qins-web listens");
    let target = addr.clone();
    let run = move |count: usize, max_tokens: u32| {
        let threads: Vec<_> = (0..count)
            .map(|i| {
                let addr = target.clone();
                std::thread::spawn(move || {
                    let body = format!(
                        r#"{{"messages":[{{"role":"user","content":"Chat {i}"}}],"max_tokens":{max_tokens},"temperature":0}}"#
                    );
                    post(&addr, "/ui/chat", &body)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect::<Vec<_>>()
    };
    let replies = tokio::task::spawn_blocking(move || {
        let eight = run(8, 16);
        let overflow = run(12, 400);
        (eight, overflow)
    })
    .await
    .expect("requests");
    let _ = web.kill();
    let _ = web.wait();
    let (eight, overflow) = replies;
    for reply in &eight {
        assert!(
            reply.starts_with("HTTP/1.1 200") && reply.contains("event: done"),
            "{reply}"
        );
    }
    let busy = overflow
        .iter()
        .filter(|r| r.starts_with("HTTP/1.1 429"))
        .count();
    let done = overflow
        .iter()
        .filter(|r| r.contains("event: done"))
        .count();
    assert_eq!(busy + done, 12, "every request ends: {overflow:?}");
    assert!(busy >= 1 && done >= 8, "busy {busy}, done {done}");
}
