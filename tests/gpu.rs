//! qinsd with `--device gpu|auto` end to end: chat, prefix reuse,
//! cancellation, LoadModel and Stats on the GPU, on the tiny phi3 and
//! llama models. scripts/test.sh sources scripts/vulkan-env.sh, so the GPU
//! here is lavapipe (Mesa's software Vulkan driver); without any adapter
//! these tests skip, except under CI where they fail.

use std::process::Command;
use std::time::{Duration, Instant};

use qins_proto::v1::{LoadModelRequest, StatsReply};
use qins_test_support::can_run;
use qins_test_support::daemon::*;
use qins_test_support::tiny::{TinySpec, write_tiny_model};

/// Whether Vulkan, Metal or DX12 offers any adapter (lavapipe counts).
fn has_gpu() -> bool {
    can_run(
        !qins_gpu::device::adapters().is_empty(),
        "a GPU adapter (scripts/vulkan-env.sh installs lavapipe)",
    )
}

/// Whether every adapter is a software one (what `auto` must refuse).
fn only_software_gpus() -> bool {
    qins_gpu::device::adapters()
        .iter()
        .all(qins_gpu::device::AdapterSummary::is_software)
}

fn assert_on_gpu(stats: &StatsReply) {
    assert_eq!(stats.device, "gpu", "{stats:?}");
    assert!(!stats.gpu_adapter.is_empty(), "{stats:?}");
    assert!(
        ["Vulkan", "Metal", "DX12"].contains(&stats.gpu_backend.as_str()),
        "{stats:?}"
    );
    assert!(stats.gpu_memory_bytes > 0, "{stats:?}");
}

#[tokio::test]
async fn chat_on_the_gpu_is_greedy_reproducible_and_reported_in_stats() {
    if !has_gpu() {
        return;
    }
    let daemon = Daemon::start(&["--device", "gpu", "--context", "512"]).await;
    let stats = daemon.stats().await;
    assert_on_gpu(&stats);
    assert!(
        daemon.log().contains("running models on the GPU"),
        "{}",
        daemon.log()
    );
    let mut client = daemon.client().await;
    let started = Instant::now();
    let reply = chat(&mut client, chat_request(vec![user("Hello there")], 12, ""))
        .await
        .expect("chat on the GPU");
    eprintln!(
        "lavapipe: 12-token tiny phi3 chat in {:?}",
        started.elapsed()
    );
    let usage = reply.done.usage.expect("usage");
    assert!((1..=12).contains(&usage.completion_tokens), "{usage:?}");
    assert!(reply.deltas >= 1 && !reply.text.is_empty(), "{reply:?}");
    let again = chat(&mut client, chat_request(vec![user("Hello there")], 12, ""))
        .await
        .expect("chat again");
    assert_eq!(again.text, reply.text);
    // The sessions' caches live on the GPU: memory in use grew past the weights.
    let after = daemon.stats().await;
    assert!(after.kv_cache_bytes > 0, "{after:?}");
    assert!(
        after.gpu_memory_bytes >= stats.gpu_memory_bytes,
        "{stats:?} then {after:?}"
    );
}

#[tokio::test]
async fn prefix_reuse_on_the_gpu_gives_the_reply_of_a_fresh_run() {
    if !has_gpu() {
        return;
    }
    let daemon = Daemon::start(&["--device", "gpu", "--context", "512"]).await;
    let mut client = daemon.client().await;
    // The tiny phi3's longrope switches factors past 32 positions (as
    // transformers does, from the longest position): a first turn already
    // past it keeps the cached keys' factors those of a fresh run.
    let system = "You are terse. Answer every question in a few words.";
    let first_turn = vec![message("system", system), user("Name a colour.")];
    let first = chat(&mut client, chat_request(first_turn.clone(), 8, "conv-gpu"))
        .await
        .expect("turn 1");
    let first_usage = first.done.usage.expect("usage");
    assert!(first_usage.prompt_tokens > 32, "{first_usage:?}");
    let mut second_turn = first_turn;
    second_turn.push(message("assistant", &first.text));
    second_turn.push(user("And another?"));
    let reused = chat(
        &mut client,
        chat_request(second_turn.clone(), 8, "conv-gpu"),
    )
    .await
    .expect("turn 2");
    let usage = reused.done.usage.expect("usage");
    assert!(usage.cached_prompt_tokens > 0, "{usage:?}");
    let fresh = chat(&mut client, chat_request(second_turn, 8, ""))
        .await
        .expect("fresh");
    assert_eq!(fresh.done.usage.expect("usage").cached_prompt_tokens, 0);
    assert_eq!(reused.text, fresh.text, "prefix reuse changed the reply");
}

#[tokio::test]
async fn a_dropped_client_cancels_its_gpu_generation() {
    if !has_gpu() {
        return;
    }
    let daemon = Daemon::start(&["--device", "gpu", "--context", "4096"]).await;
    dropped_clients_cancel(&daemon, Duration::from_secs(20), "GPU").await;
}

#[tokio::test]
async fn load_model_puts_a_llama_on_the_same_gpu() {
    if !has_gpu() {
        return;
    }
    // The device from the environment this time.
    let mut daemon = Daemon::unstarted();
    let mut command = daemon.command(&["--model", "tiny", "--context", "512"]);
    command.env("QINS_DEVICE", "gpu");
    daemon.spawn_command(command);
    daemon.wait_ready().await;
    assert_on_gpu(&daemon.stats().await);
    let hf_dir = daemon.dir.path().join("tinyllama-hf");
    write_tiny_model(&hf_dir, &TinySpec::llama()).expect("write the tiny llama");
    run_ok(
        Command::new(binary("qinsd"))
            .arg("convert")
            .arg(&hf_dir)
            .arg("-o")
            .arg(daemon.models_dir.join("tinyllama.qins")),
    );
    let mut client = daemon.client().await;
    client
        .load_model(LoadModelRequest {
            model: "tinyllama".into(),
        })
        .await
        .expect("LoadModel");
    let stats = daemon.stats().await;
    assert_eq!(stats.model, "tinyllama");
    assert_eq!(stats.architecture, "llama");
    assert_on_gpu(&stats);
    let reply = chat(&mut client, chat_request(vec![user("Hi")], 6, ""))
        .await
        .expect("chat with the llama on the GPU");
    assert!(reply.done.usage.expect("usage").completion_tokens >= 1);
}

#[tokio::test]
async fn auto_never_takes_a_software_gpu_and_says_why_in_one_line() {
    // Under scripts/test.sh Vulkan sees lavapipe alone, so CI always runs it.
    let only_software = || {
        can_run(
            only_software_gpus(),
            "no GPU but software ones (auto would take a real one)",
        )
    };
    if !has_gpu() || !only_software() {
        return;
    }
    let daemon = Daemon::start(&["--device", "auto"]).await;
    let stats = daemon.stats().await;
    assert_eq!(stats.device, "cpu", "{stats:?}");
    assert!(stats.gpu_adapter.is_empty(), "{stats:?}");
    let log = daemon.log();
    let why: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("running on the CPU"))
        .collect();
    assert_eq!(why.len(), 1, "{log}");
    assert!(why[0].contains("software"), "{log}");
}

#[test]
fn gpu_without_an_adapter_fails_at_startup_with_one_clear_line() {
    // Hiding the GPU through the Vulkan loader works where Vulkan is the
    // only backend (Metal or DX12 would still find one).
    if !can_run(
        cfg!(target_os = "linux"),
        "Linux (it hides the GPU through the Vulkan loader)",
    ) {
        return;
    }
    let daemon = Daemon::unstarted();
    let mut command = daemon.command(&["--model", "tiny", "--device", "gpu"]);
    // A Vulkan loader pointed at no driver finds no adapter.
    let missing = daemon.dir.path().join("no-such-driver.json");
    command
        .env("VK_DRIVER_FILES", &missing)
        .env("VK_ICD_FILENAMES", &missing);
    let output = command.output().expect("qinsd runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no GPU found"), "{stderr}");
    assert!(stderr.contains("--device cpu"), "{stderr}");
}

/// The real-model check on the GPU: SmolLM2-135M greedy answers
/// "Paris". On lavapipe (~0.1 GB/s) this takes seconds per token; the
/// reply is capped to keep it inside the test budget.
#[tokio::test]
async fn smollm2_on_the_gpu_answers_paris() {
    if !has_gpu() {
        return;
    }
    let gguf = fixtures_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        gguf.is_file(),
        "{} is missing: run scripts/fetch-fixtures.sh",
        gguf.display()
    );
    let daemon = Daemon::start(&["--device", "gpu", "--context", "256"]).await;
    run_ok(
        Command::new(binary("qinsd"))
            .arg("convert")
            .arg(&gguf)
            .arg("-o")
            .arg(daemon.models_dir.join("smollm2.qins")),
    );
    let mut client = daemon.client().await;
    let started = Instant::now();
    client
        .load_model(LoadModelRequest {
            model: "smollm2".into(),
        })
        .await
        .expect("LoadModel");
    eprintln!("lavapipe: SmolLM2 upload {:?}", started.elapsed());
    assert_on_gpu(&daemon.stats().await);
    let started = Instant::now();
    let question = user("What is the capital of France?");
    let reply = chat(&mut client, chat_request(vec![question], 8, ""))
        .await
        .expect("chat");
    eprintln!(
        "lavapipe: SmolLM2 8-token greedy reply in {:?}: {:?}",
        started.elapsed(),
        reply.text
    );
    assert!(reply.text.contains("Paris"), "{:?}", reply.text);
}

/// `qinsd bench --device gpu MODEL`: the one command Mac users run and report.
#[test]
fn bench_on_the_gpu_reports_the_adapter_and_speeds() {
    if !has_gpu() {
        return;
    }
    let model = &tiny_model().qins;
    let output = run_ok(Command::new(binary("qinsd")).args([
        "bench",
        "--device",
        "gpu",
        "--prompt",
        "8",
        "--decode",
        "3",
        "--json",
        model.to_str().expect("a UTF-8 temp path"),
    ]));
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("the report is JSON");
    assert!(
        !report["adapter"].as_str().unwrap_or("").is_empty(),
        "{report}"
    );
    assert_eq!(report["prompt_tokens"], 8, "{report}");
    assert_eq!(report["decode_steps"], 3, "{report}");
    assert!(
        report["decode_tok_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{report}"
    );
    assert!(report["weight_bytes_per_token"].as_u64().unwrap_or(0) > 0);
    let table = run_ok(Command::new(binary("qinsd")).args([
        "bench",
        "--device",
        "gpu",
        "--prompt",
        "4",
        "--decode",
        "2",
        model.to_str().expect("a UTF-8 temp path"),
    ]));
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("decode") && table.contains("GB/s"),
        "{table}"
    );
}

/// Two chats at once on the GPU: their decode steps share passes (the
/// batcher), and each gets the reply it gets alone (greedy).
#[tokio::test]
async fn two_chats_at_once_on_the_gpu_reply_as_they_do_alone() {
    if !has_gpu() {
        return;
    }
    let daemon = Daemon::start(&["--device", "gpu", "--context", "512", "--max-active", "2"]).await;
    let prompts = ["Tell me about the sea.", "Count to ten."];
    let mut alone = Vec::new();
    for prompt in prompts {
        let mut client = daemon.client().await;
        let reply = chat(&mut client, chat_request(vec![user(prompt)], 16, ""))
            .await
            .expect("chat alone");
        alone.push(reply.text);
    }
    let (mut a, mut b) = (daemon.client().await, daemon.client().await);
    let (first, second) = tokio::join!(
        chat(&mut a, chat_request(vec![user(prompts[0])], 16, "")),
        chat(&mut b, chat_request(vec![user(prompts[1])], 16, "")),
    );
    assert_eq!(first.expect("chat A").text, alone[0]);
    assert_eq!(second.expect("chat B").text, alone[1]);
}

/// `qinsd generate --device gpu`: one chat turn on the GPU without the daemon.
#[test]
fn generate_runs_on_the_gpu_when_asked() {
    if !has_gpu() {
        return;
    }
    let model = tiny_model().qins.to_str().expect("a UTF-8 temp path");
    let args = ["generate", "--device", "gpu", "--temperature", "0"];
    let output =
        run_ok(
            Command::new(binary("qinsd"))
                .args(args)
                .args(["--max-tokens", "4", model, "Hi"]),
        );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("[gpu, load"), "{stderr}");
    assert!(!output.stdout.is_empty());
}
