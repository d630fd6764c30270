//! The `qins` client binary against a real qinsd on a tiny model.

use qins_e2e::*;

fn ok(output: std::process::Output) -> String {
    assert!(
        output.status.success(),
        "exit {}: stdout {} stderr {}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

#[tokio::test]
async fn ask_streams_a_reply_and_reads_the_prompt_from_stdin() {
    let daemon = Daemon::start(&[]).await;
    let reply = ok(qins(
        &daemon.socket,
        &["ask", "--max-tokens", "8", "--temperature", "0", "Hello"],
        "",
    ));
    assert!(!reply.trim_end().is_empty(), "{reply:?}");
    let piped = qins(
        &daemon.socket,
        &[
            "ask",
            "--max-tokens",
            "8",
            "--temperature",
            "0",
            "--verbose",
        ],
        "Hello\n",
    );
    assert_eq!(
        ok(piped.clone()),
        reply,
        "the same greedy prompt, from stdin"
    );
    assert!(
        text(&piped.stderr).contains("tokens"),
        "{}",
        text(&piped.stderr)
    );
}

#[tokio::test]
async fn chat_keeps_the_conversation_and_reuses_the_prefix() {
    let daemon = Daemon::start(&[]).await;
    let script = "/set verbose\n/set max_tokens 6\nHello\nAnd again\n/set top_p 3\n/frob\n/bye\n";
    let output = qins(&daemon.socket, &["chat"], script);
    let stdout = ok(output.clone());
    let all = stdout + &text(&output.stderr);
    assert!(all.contains("(0 cached)"), "first turn: {all}");
    let cached: Vec<u32> = all
        .match_indices(" cached)")
        .filter_map(|(i, _)| all[..i].rsplit('(').next()?.trim().parse().ok())
        .collect();
    assert!(
        cached.len() == 2 && cached[1] > 0,
        "second turn reuses the prefix: {cached:?}\n{all}"
    );
    assert!(all.contains("top_p"), "bad /set is explained: {all}");
    assert!(
        all.contains("/help"),
        "unknown command hints at /help: {all}"
    );
    assert!(
        daemon
            .socket
            .parent()
            .unwrap()
            .join(".qins/history")
            .exists(),
        "history saved"
    );
}

#[tokio::test]
async fn stats_models_load_unload_and_convert() {
    let daemon = Daemon::start(&[]).await;
    let stats = ok(qins(&daemon.socket, &["stats"], ""));
    assert!(stats.contains("tiny") && stats.contains("phi3"), "{stats}");
    let json = ok(qins(&daemon.socket, &["stats", "--json"], ""));
    assert!(
        json.contains("\"model\": \"tiny\"") || json.contains("\"model\":\"tiny\""),
        "{json}"
    );
    let out = daemon.models_dir.join("again.qins");
    let hf = tiny_model().hf_dir.display().to_string();
    let converted = ok(qins(
        &daemon.socket,
        &["convert", &hf, "-o", out.to_str().unwrap()],
        "",
    ));
    assert!(converted.contains("wrote") && out.is_file(), "{converted}");
    let exists = qins(
        &daemon.socket,
        &["convert", &hf, "-o", out.to_str().unwrap()],
        "",
    );
    assert_eq!(exists.status.code(), Some(1));
    assert!(
        text(&exists.stderr).contains("--force"),
        "{}",
        text(&exists.stderr)
    );
    let models = ok(qins(&daemon.socket, &["models"], ""));
    assert!(
        models.contains("again") && models.contains("* tiny"),
        "{models}"
    );
    ok(qins(&daemon.socket, &["load", "again"], ""));
    assert_eq!(daemon.stats().await.model, "again");
    ok(qins(&daemon.socket, &["unload"], ""));
    let no_model = qins(&daemon.socket, &["ask", "hi"], "");
    assert_eq!(no_model.status.code(), Some(1));
    assert!(
        text(&no_model.stderr).contains("qins load"),
        "{}",
        text(&no_model.stderr)
    );
}

/// The seconds in `qins ps`'s LOADED cell (`42s ago`, `1m 05s ago`).
fn loaded_seconds_ago(cell: &str) -> u64 {
    let mut seconds = 0;
    for part in cell.trim_end_matches(" ago").split_whitespace() {
        let (n, unit) = part.split_at(part.len() - 1);
        let n: u64 = n.parse().unwrap_or_else(|_| panic!("LOADED cell {cell:?}"));
        seconds += n * match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => panic!("LOADED cell {cell:?}"),
        };
    }
    seconds
}

#[tokio::test]
async fn ps_shows_the_resident_model_like_ollama_ps() {
    let daemon = Daemon::start(&[]).await;
    let ps = ok(qins(&daemon.socket, &["ps"], ""));
    let lines: Vec<&str> = ps.lines().collect();
    assert_eq!(lines.len(), 2, "{ps}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "SIZE", "DEVICE", "CONTEXT", "LOADED"],
        "{ps}"
    );
    // NAME, SIZE (two words: "178 KB"), DEVICE, CONTEXT, then LOADED.
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    let stats = daemon.stats().await;
    assert_eq!(cells[0], "tiny", "{ps}");
    assert!(["B", "KB", "MB", "GB"].contains(&cells[2]), "{ps}");
    assert_eq!(cells[3], stats.device, "{ps}");
    assert_eq!(cells[4], stats.context_limit.to_string(), "{ps}");
    let since = loaded_seconds_ago(&cells[5..].join(" "));
    let uptime = daemon.stats().await.uptime_seconds as u64;
    assert!(
        since <= uptime + 1,
        "loaded {since}s ago, up {uptime}s: {ps}"
    );
    assert!(stats.model_loaded_unix_seconds > 1.6e9, "{stats:?}");

    ok(qins(&daemon.socket, &["unload"], ""));
    let none = ok(qins(&daemon.socket, &["ps"], ""));
    assert!(
        none.contains("no model loaded") && none.contains("qins load"),
        "{none}"
    );
    assert_eq!(daemon.stats().await.model_loaded_unix_seconds, 0.0);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    ok(qins(&daemon.socket, &["load", "tiny"], ""));
    let reloaded = daemon.stats().await.model_loaded_unix_seconds;
    assert!(
        reloaded > stats.model_loaded_unix_seconds + 1.0,
        "a new load is a new time: {reloaded} vs {}",
        stats.model_loaded_unix_seconds
    );
}

#[test]
fn without_a_daemon_the_client_says_how_to_start_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("none.sock");
    let output = qins(&socket, &["ask", "hi"], "");
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("not running") && stderr.contains("qinsd --model"),
        "{stderr}"
    );
}
