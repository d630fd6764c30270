//! Load and soak: many chats at once over the socket, queue overflow, and a
//! long run of turns on one daemon with its memory and file descriptors
//! watched.

use std::time::Duration;

use qins_test_support::daemon::*;
use tonic::Code;

#[tokio::test]
async fn eight_concurrent_chats_all_complete() {
    let daemon = Daemon::start(&["--max-active", "2", "--max-queued", "8"]).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut client = daemon.client().await;
        tasks.push(tokio::spawn(async move {
            let request = chat_request(vec![user(&format!("Chat number {i}"))], 24, "");
            tokio::time::timeout(Duration::from_secs(60), chat(&mut client, request)).await
        }));
    }
    for task in tasks {
        let reply = task
            .await
            .expect("task")
            .expect("no starvation")
            .expect("served");
        assert!(reply.done.usage.expect("usage").completion_tokens >= 1);
    }
    let stats = daemon.stats().await;
    assert_eq!(
        (
            stats.requests_served,
            stats.active_requests,
            stats.queued_requests
        ),
        (8, 0, 0)
    );
}

#[tokio::test]
async fn overflow_is_refused_at_once_and_the_rest_complete() {
    let daemon = Daemon::start(&["--max-active", "1", "--max-queued", "2"]).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut client = daemon.client().await;
        tasks.push(tokio::spawn(async move {
            let request = chat_request(vec![user(&format!("Long chat {i}"))], 300, "");
            tokio::time::timeout(Duration::from_secs(120), chat(&mut client, request)).await
        }));
    }
    let (mut served, mut refused) = (0, 0);
    for task in tasks {
        match task.await.expect("task").expect("no hang") {
            Ok(_) => served += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                refused += 1;
            }
        }
    }
    assert_eq!(served + refused, 8);
    assert!(
        served >= 3 && refused >= 1,
        "served {served}, refused {refused}"
    );
}

fn rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("proc fd")
        .count()
}

/// 500 turns; the RSS slope after warm-up and the fd count are printed (the
/// docs quote them) and bounded. Warm-up is the first 200 turns: the
/// allocator and the blocking-thread pool settle in steps before that.
#[tokio::test]
async fn five_hundred_turns_keep_memory_and_descriptors_flat() {
    // A small context keeps each K/V cache small, so the allocator reuses
    // them instead of mapping and unmapping megabytes (RSS steps, not leaks).
    let daemon = Daemon::start(&["--max-sessions", "4"]).await;
    let pid = daemon.pid();
    let mut client = daemon.client().await;
    let mut samples = Vec::new();
    let mut fds_after_warmup = 0;
    for turn in 0..500 {
        // A few sessions in rotation, some turns without one.
        let session = if turn % 3 == 0 {
            String::new()
        } else {
            format!("s{}", turn % 7)
        };
        let request = chat_request(
            vec![user(&format!("Turn {turn}: say something."))],
            8,
            &session,
        );
        chat(&mut client, request).await.expect("turn");
        if turn == 199 {
            fds_after_warmup = open_fds(pid);
        }
        if turn >= 200 && turn % 20 == 0 {
            samples.push((turn as f64, rss_kb(pid) as f64));
        }
    }
    println!("soak samples (turn, kB): {samples:?}");
    let fds_at_end = open_fds(pid);
    let n = samples.len() as f64;
    let (sx, sy) = samples
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let slope = samples
        .iter()
        .map(|(x, y)| (x - mx) * (y - my))
        .sum::<f64>()
        / samples.iter().map(|(x, _)| (x - mx).powi(2)).sum::<f64>();
    let first = samples.first().expect("samples").1;
    let last = samples.last().expect("samples").1;
    println!(
        "soak: RSS {first:.0} kB at turn 200, {last:.0} kB at turn 480, slope {slope:.2} kB/turn; fds {fds_after_warmup} -> {fds_at_end}"
    );
    assert!(slope < 5.0, "RSS grows {slope:.1} kB per turn");
    assert!(
        fds_at_end <= fds_after_warmup + 2,
        "fds {fds_after_warmup} -> {fds_at_end}"
    );
    assert_eq!(daemon.stats().await.requests_served, 500);
}
