//! The `qins` client binary against a real qinsd on a tiny model.

use qins_test_support::daemon::*;

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
async fn ask_appends_piped_text_to_the_prompt() {
    let daemon = Daemon::start(&[]).await;
    let ask = |stdin: &str| {
        let args = [
            "ask",
            "--max-tokens",
            "8",
            "--temperature",
            "0",
            "--verbose",
            "Summarize",
            "this:",
        ];
        let output = qins(&daemon.socket, &args, stdin);
        let reply = ok(output.clone());
        (reply, prompt_tokens(&text(&output.stderr)))
    };
    let (alone, alone_tokens) = ask("");
    assert_eq!(
        ask("\n  \n"),
        (alone, alone_tokens),
        "a blank pipe adds nothing"
    );
    let (_, with_text) = ask("The launch moves to September.\n");
    assert!(
        with_text >= alone_tokens + 5,
        "{alone_tokens} tokens alone, {with_text} with five piped words"
    );
}

#[tokio::test]
async fn qinsd_convert_reports_what_judges_a_conversion() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("greedy.qins");
    let output = run_ok(
        std::process::Command::new(binary("qinsd"))
            .arg("convert")
            .arg(&tiny_model().hf_dir)
            .arg("-o")
            .arg(&out)
            .args(["--temperature", "0"]),
    );
    let report = text(&output.stdout);
    for line in [
        "bits/weight (uncompressed)",
        "encoding       per-row ranges, clip 0.001, prune off",
        "chat defaults  temperature 0, top_p 0.9, top_k 40, repetition_penalty 1, max_tokens 512",
        "(temperature: set at conversion; top_p: generation_config.json; \
         top_k, repetition_penalty, max_tokens: qins fallback)",
        "relative RMS error ",
        "largest error in range ",
        "clipped ",
        "exact zeros ",
    ] {
        assert!(report.contains(line), "missing {line:?} in:\n{report}");
    }
    for leak in ["None", "PerRow", "max relative error"] {
        assert!(!report.contains(leak), "{leak:?} in:\n{report}");
    }
    // The one overwrite rule: an existing output stays unless --force.
    let convert_again = |force: bool| {
        let mut command = std::process::Command::new(binary("qinsd"));
        command
            .arg("convert")
            .arg(&tiny_model().hf_dir)
            .arg("-o")
            .arg(&out);
        if force {
            command.arg("--force");
        }
        command.output().expect("qinsd runs")
    };
    let written = std::fs::metadata(&out)
        .and_then(|m| m.modified())
        .expect("mtime");
    let refused = convert_again(false);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("exists; pass --force"),
        "{}",
        text(&refused.stderr)
    );
    let kept = std::fs::metadata(&out)
        .and_then(|m| m.modified())
        .expect("mtime");
    assert_eq!(kept, written, "the refused conversion left the file alone");
    assert!(convert_again(true).status.success());
    let bad = std::process::Command::new(binary("qinsd"))
        .arg("convert")
        .arg(&tiny_model().hf_dir)
        .arg("-o")
        .arg(dir.path().join("bad.qins"))
        .args(["--top-p", "1.5"])
        .output()
        .expect("qinsd runs");
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("(0, 1]"),
        "{}",
        text(&bad.stderr)
    );
}

/// The defaults recorded at conversion are what a chat without sampling
/// flags gets: greedy when converted with `--temperature 0`, the recorded
/// temperature and top-p otherwise.
#[tokio::test]
async fn defaults_recorded_at_conversion_are_the_ones_a_chat_uses() {
    let daemon = Daemon::start(&[]).await;
    let hf = tiny_model().hf_dir.display().to_string();
    let convert = |name: &str, flags: &[&str]| {
        let out = daemon.models_dir.join(format!("{name}.qins"));
        let mut args = vec!["convert", hf.as_str(), "-o", out.to_str().unwrap()];
        args.extend_from_slice(flags);
        ok(qins(&daemon.socket, &args, ""))
    };
    let report = convert("greedy", &["--temperature", "0"]);
    assert!(
        report.contains("chat defaults: temperature 0 · top_p 0.9 · top_k 40 · max_tokens 512"),
        "{report}"
    );
    assert!(report.contains("relative RMS error") && report.contains("clipped"));
    assert!(!report.contains("max "), "no raw maximum: {report}");
    convert("hot", &["--temperature", "1.5", "--top-p", "1"]);
    let ask = |flags: &[&str]| {
        let mut args = vec!["ask", "--max-tokens", "24"];
        args.extend_from_slice(flags);
        args.push("Hello");
        ok(qins(&daemon.socket, &args, ""))
    };

    ok(qins(&daemon.socket, &["load", "greedy"], ""));
    let greedy = ask(&["--temperature", "0"]);
    for seed in ["1", "2"] {
        assert_eq!(ask(&["--seed", seed]), greedy, "seed {seed}");
    }
    let stats = ok(qins(&daemon.socket, &["stats"], ""));
    assert!(
        stats.contains("chat defaults     temperature 0 · top_p 0.9"),
        "{stats}"
    );
    let set = ok(qins(&daemon.socket, &["chat"], "/set\n/bye\n"));
    assert!(
        set.contains("temperature=0 (model default) top_p=0.9 (model default)")
            && set.contains("model defaults from: temperature: set at conversion"),
        "{set}"
    );

    ok(qins(&daemon.socket, &["load", "hot"], ""));
    let sampled = ask(&["--seed", "1"]);
    assert_ne!(sampled, greedy, "temperature 1.5 is not greedy");
    assert_eq!(
        sampled,
        ask(&["--seed", "1", "--temperature", "1.5", "--top-p", "1"]),
        "no flags = the recorded temperature and top-p"
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

/// `qins service install --dry-run | head -1`: the reader leaves before the
/// output is written; the client ends quietly (status 0, nothing on stderr)
/// instead of panicking in `println!`.
#[test]
fn a_reader_that_leaves_early_ends_the_client_quietly() {
    let home = tempfile::tempdir().expect("temp dir");
    let mut child = std::process::Command::new(binary("qins"))
        .args(["service", "install", "--dry-run"])
        .env("HOME", home.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("qins runs");
    // Closing the read end first makes every write fail with EPIPE.
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("qins ends");
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.is_empty(),
        "nothing to say on a broken pipe: {stderr}"
    );
}

/// Ranges are qinsd's one rule: the client sends an in-type value and shows
/// qinsd's message, which names the value and the rule.
#[tokio::test]
async fn an_out_of_range_flag_gets_the_daemons_message() {
    let daemon = Daemon::start(&[]).await;
    for (flag, rule) in [
        ("--top-p=2", "(0, 1]"),
        ("--temperature=-1", ">= 0"),
        ("--max-tokens=0", "at least 1"),
    ] {
        let out = qins(&daemon.socket, &["ask", flag, "Hello"], "");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flag}: {err}");
        assert!(err.contains(rule), "{flag}: {err}");
    }
}

#[tokio::test]
async fn ask_takes_json_schemas_and_the_sampling_extras() {
    let daemon = Daemon::start(&[]).await;
    let schema = daemon.models_dir.join("schema.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "properties": {"ok": {"type": "boolean"}},
            "required": ["ok"], "additionalProperties": false}"#,
    )
    .unwrap();
    let ask = |flags: &[&str]| {
        let mut args = vec!["ask", "--max-tokens", "40"];
        args.extend_from_slice(flags);
        args.push("Hello");
        ok(qins(&daemon.socket, &args, ""))
    };
    let schema = schema.to_str().unwrap();
    for seed in ["1", "2"] {
        let reply = ask(&[
            "--json-schema",
            schema,
            "--temperature",
            "1",
            "--seed",
            seed,
        ]);
        // The only two replies the schema allows, in qinsd's JSON spacing.
        assert!(
            matches!(reply.trim(), r#"{"ok": true}"# | r#"{"ok": false}"#),
            "{reply}"
        );
    }
    // min_p 1 keeps only the most likely token: hot sampling turns greedy.
    let greedy = ask(&["--temperature", "0"]);
    let hot = ask(&["--temperature", "1.5", "--seed", "3", "--min-p", "1"]);
    assert_eq!(hot, greedy);
    ask(&["--presence-penalty", "1", "--frequency-penalty", "0.5"]);
    let refused = qins(&daemon.socket, &["ask", "--min-p", "2", "x"], "");
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("min_p"), "qinsd's message");
}

/// The model store from the command line, beside a running daemon: `qinsd
/// convert --force` never replaces the model the daemon has loaded (the
/// daemon's lock on the file is seen by the other process), and `qinsd
/// generate`, `perplexity` and `bench` take a model name the way `qinsd
/// --model` does.
#[tokio::test]
async fn qinsd_subcommands_take_names_and_convert_never_replaces_the_loaded_model() {
    let daemon = Daemon::start(&[]).await;
    let loaded = daemon.models_dir.join("tiny.qins");
    let qinsd = |args: &[&str]| {
        std::process::Command::new(binary("qinsd"))
            .args(args)
            .arg("--models-dir")
            .arg(&daemon.models_dir)
            .output()
            .expect("qinsd runs")
    };
    let hf = tiny_model().hf_dir.display().to_string();
    let onto_loaded = [
        "convert",
        hf.as_str(),
        "-o",
        loaded.to_str().expect("utf-8"),
        "--force",
    ];
    let written = std::fs::metadata(&loaded)
        .and_then(|m| m.modified())
        .expect("mtime");
    let refused = qinsd(&onto_loaded);
    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("is open in a running qinsd") && stderr.contains("`qins unload`"),
        "{stderr}"
    );
    let kept = std::fs::metadata(&loaded)
        .and_then(|m| m.modified())
        .expect("mtime");
    assert_eq!(kept, written, "the loaded model was left alone");
    // Unloaded, it is an ordinary existing file.
    ok(qins(&daemon.socket, &["unload"], ""));
    ok(qinsd(&onto_loaded));

    let reply = ok(qinsd(&["generate", "tiny", "Hello", "--max-tokens", "3"]));
    assert!(!reply.trim().is_empty(), "a reply: {reply:?}");
    let text_file = daemon.dir.path().join("text.txt");
    std::fs::write(
        &text_file,
        "Once upon a time there was a tiny model. ".repeat(8),
    )
    .expect("text");
    let report = ok(qinsd(&[
        "perplexity",
        "tiny",
        "--reference",
        "tiny.qins",
        "--text",
        text_file.to_str().expect("utf-8"),
        "--tokens",
        "32",
        "--window",
        "16",
        "--stride",
        "8",
    ]));
    let report: serde_json::Value = serde_json::from_str(&report).expect("json");
    assert_eq!(report["model"], loaded.display().to_string());
    assert_eq!(report["reference"], loaded.display().to_string());
    let bench = ok(qinsd(&[
        "bench",
        "tiny",
        "--threads",
        "1",
        "--prompt",
        "4",
        "--decode",
        "2",
        "--json",
    ]));
    let bench: serde_json::Value = serde_json::from_str(&bench).expect("json");
    assert_eq!(bench["model"], loaded.display().to_string());
    // A name that is not there gets the store's message.
    let unknown = qinsd(&["generate", "nothing-here", "Hello"]);
    assert!(!unknown.status.success());
    assert!(
        text(&unknown.stderr).contains("a name from `qins models`"),
        "{}",
        text(&unknown.stderr)
    );
}

#[tokio::test]
async fn ask_verbose_and_qinsd_generate_report_lookup() {
    let daemon = Daemon::start(&[]).await;
    let prompt = "one two three four five six. one two three four five six. one two";
    let verbose = |lookup: &str| {
        let args = [
            "ask",
            "--max-tokens",
            "24",
            "--temperature",
            "0",
            "--verbose",
            "--lookup",
            lookup,
            prompt,
        ];
        let output = qins(&daemon.socket, &args, "");
        ok(output.clone());
        text(&output.stderr)
    };
    assert!(verbose("off").contains("lookup: nothing drafted"));
    let on = verbose("on");
    assert!(on.contains("lookup: drafted "), "{on}");

    let prompt_file = daemon.dir.path().join("prompt.txt");
    std::fs::write(&prompt_file, prompt).expect("prompt file");
    let generate = |lookup: &str| {
        let output = std::process::Command::new(binary("qinsd"))
            .args([
                "generate",
                "tiny",
                "--max-tokens",
                "24",
                "--temperature",
                "0",
            ])
            .arg("--prompt-file")
            .arg(&prompt_file)
            .args(["--lookup", lookup, "--threads", "1"])
            .arg("--models-dir")
            .arg(&daemon.models_dir)
            .output()
            .expect("qinsd runs");
        ok(output.clone());
        text(&output.stderr)
    };
    let off = generate("off");
    assert!(off.contains(", lookup: drafted 0 accepted 0]"), "{off}");
    let always = generate("always");
    let drafted: usize = always
        .rsplit("lookup: drafted ")
        .next()
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("the summary's drafted count");
    assert!(drafted > 0, "{always}");
}
