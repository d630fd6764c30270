//! End-to-end tests: a real qinsd on a tiny random-weight model, the bridge
//! served in-process on 127.0.0.1:0, and raw HTTP/1.1 requests.
//!
//! They need the `qinsd` binary in this test's target directory: the
//! workspace test script (`scripts/test.sh`) builds every binary before
//! testing; to run these alone, `cargo build --release --workspace --bins` first. Replies are gibberish (random weights); the tests
//! check shapes, statuses and plumbing, not text.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use qins_test_support::daemon::Daemon;
use qins_web::app::{Config, router};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

// ---- the daemon (the one harness in qins-test-support) ----

const TINY: &[&str] = &["--model", "tiny"];

/// A qinsd on the tiny model (or none, with empty `args`), answering.
async fn start_daemon(args: &[&str]) -> Daemon {
    let mut daemon = Daemon::unstarted();
    daemon.spawn(args);
    daemon.wait_ready().await;
    daemon
}

fn config(socket: &Path) -> Config {
    Config {
        socket: socket.to_path_buf(),
        api_key: None,
        allow_hosts: Vec::new(),
        cors_origins: Vec::new(),
        max_body_bytes: 1024 * 1024,
    }
}

/// Serves the bridge in this process; returns its address.
async fn serve(config: Config) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, router(config)).await });
    addr
}

/// Waits until the bridge reports qinsd reachable.
async fn wait_healthy(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if get(addr, "/health").await.status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "qinsd did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A daemon and a bridge in front of it.
struct Setup {
    daemon: Daemon,
    addr: SocketAddr,
}

async fn setup_with(edit: impl FnOnce(&mut Config)) -> Setup {
    setup_daemon(TINY, edit).await
}

async fn setup_daemon(daemon_args: &[&str], edit: impl FnOnce(&mut Config)) -> Setup {
    let daemon = start_daemon(daemon_args).await;
    let socket = daemon.socket.clone();
    let mut cfg = config(&socket);
    edit(&mut cfg);
    let healthy_key = cfg.api_key.clone();
    let addr = serve(cfg).await;
    if healthy_key.is_none() {
        wait_healthy(addr).await;
    } else {
        // /health needs the key; probe through an open twin of the bridge.
        wait_healthy(serve(config(&socket)).await).await;
    }
    Setup { daemon, addr }
}

async fn setup() -> Setup {
    setup_with(|_| {}).await
}

// ---- a minimal HTTP/1.1 client ----

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// `(event name, data)` pairs of an SSE body; unnamed events are "message".
    fn events(&self) -> Vec<(String, String)> {
        self.body
            .split("\n\n")
            .filter_map(|block| {
                let mut name = "message".to_string();
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        name = v.to_string();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push(v);
                    }
                }
                (!data.is_empty()).then(|| (name, data.join("\n")))
            })
            .collect()
    }
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        request_inner(addr, method, path, headers, body),
    )
    .await
    .expect("request timed out")
}

async fn request_inner(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).await.expect("write");
    // The server may answer (413) before reading all of a large body.
    let _ = stream.write_all(body).await;
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body: String::from_utf8(body).expect("UTF-8 body"),
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .expect("chunk size");
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
    out
}

async fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, &[], b"").await
}

async fn post_json(addr: SocketAddr, path: &str, body: &Value) -> Response {
    request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await
}

fn assert_error(resp: &Response, status: u16, code: &str) {
    assert_eq!(resp.status, status, "body: {}", resp.body);
    let body = resp.json();
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert!(body["error"]["type"].is_string());
}

/// An ollama-shaped error: `{"error": "message"}` with `status`.
fn assert_ollama_error(resp: &Response, status: u16) -> String {
    assert_eq!(resp.status, status, "body: {}", resp.body);
    let message = resp.json()["error"].as_str().map(str::to_string);
    message
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| panic!("no error message: {}", resp.body))
}

/// The chat routes (the page's, OpenAI's and ollama's) refuse a one-token
/// chat with the same status, each in its own error shape.
async fn assert_chat_routes_refuse(addr: SocketAddr, status: u16, code: &str) {
    let ollama = post_json(
        addr,
        "/api/chat",
        &json!({ "model": "tiny", "messages": user("x"), "options": { "num_predict": 1 } }),
    )
    .await;
    assert_ollama_error(&ollama, status);
    let page = post_json(
        addr,
        "/ui/chat",
        &json!({ "messages": user("x"), "max_tokens": 1 }),
    )
    .await;
    assert_error(&page, status, code);
    let openai = post_json(
        addr,
        "/v1/chat/completions",
        &json!({ "model": "tiny", "messages": user("x") }),
    )
    .await;
    assert_error(&openai, status, code);
}

fn user(text: &str) -> Value {
    json!([{ "role": "user", "content": text }])
}

// ---- tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_and_embedded_assets_are_served() {
    // The page needs no daemon.
    let addr = serve(config(Path::new("/nonexistent/qins-web-test/none.sock"))).await;
    let page = get(addr, "/").await;
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .is_some_and(|c| c.starts_with("text/html"))
    );
    assert!(page.header("content-security-policy").is_some());
    for id in [
        "input", "send", "stop", "clear", "messages", "stats", "system", "api-key",
    ] {
        assert!(page.body.contains(&format!("id=\"{id}\"")), "missing #{id}");
    }
    for asset in [
        "/app.js",
        "/style.css",
        "/vendor/marked.js",
        "/vendor/purify.js",
    ] {
        assert!(page.body.contains(asset), "the page loads {asset}");
    }
    assert!(!page.body.contains("https://"), "no external assets");
    for (path, name) in [
        ("/vendor/marked.js", "marked"),
        ("/vendor/purify.js", "DOMPurify"),
    ] {
        let vendored = get(addr, path).await;
        assert_eq!(vendored.status, 200, "{path}");
        assert!(vendored.body.contains(name), "{path}");
        assert!(
            vendored.header("content-security-policy").is_some(),
            "{path}"
        );
    }
    let js = get(addr, "/app.js").await;
    assert_eq!(js.status, 200);
    assert!(
        js.header("content-type")
            .is_some_and(|c| c.contains("javascript"))
    );
    assert!(js.body.contains("/ui/chat") && js.body.contains("AbortController"));
    let css = get(addr, "/style.css").await;
    assert_eq!(css.status, 200);
    assert!(css.body.contains("prefers-color-scheme"));
    assert_error(&get(addr, "/nope").await, 404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_chat_streams_deltas_then_done() {
    let s = setup().await;
    let resp = post_json(
        s.addr,
        "/ui/chat",
        &json!({ "messages": user("Hello"), "max_tokens": 4, "seed": 7, "temperature": 0.5,
                 "top_p": 0.9, "top_k": 20, "stop": "zzzz", "session_id": "t1" }),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert!(
        resp.header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream"))
    );
    let events = resp.events();
    let (last, deltas) = events.split_last().expect("events");
    assert_eq!(last.0, "done", "{events:?}");
    assert!(!deltas.is_empty());
    for (name, data) in deltas {
        assert_eq!(name, "delta");
        let v: Value = serde_json::from_str(data).expect("delta JSON");
        assert!(v["text"].is_string());
    }
    let done: Value = serde_json::from_str(&last.1).expect("done JSON");
    assert!(["stop", "length"].contains(&done["finish_reason"].as_str().unwrap_or("")));
    let completion = done["usage"]["completion_tokens"].as_u64().expect("usage");
    assert!((1..=4).contains(&completion), "{done}");
    assert!(done["usage"]["prompt_tokens"].as_u64().unwrap_or(0) > 0);
    assert!(done["timings"]["total_ms"].is_number());
    assert!(done["timings"]["tokens_per_second"].is_number());
    assert_eq!(done["model"], "tiny");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_stats_reports_every_field() {
    let s = setup().await;
    let resp = get(s.addr, "/ui/stats").await;
    assert_eq!(resp.status, 200);
    let v = resp.json();
    let fields = [
        "process_rss_bytes",
        "model_code_bytes",
        "model_sign_bytes",
        "model_other_bytes",
        "model_parameters",
        "bf16_equivalent_bytes",
        "f32_equivalent_bytes",
        "compression_vs_f32",
        "device",
        "model",
        "architecture",
        "context_limit",
        "uptime_seconds",
        "requests_served",
        "tokens_generated",
        "last_tokens_per_second",
        "average_tokens_per_second",
        "active_requests",
        "queued_requests",
        "kv_cache_bytes",
        "version",
        "threads",
        "model_loaded_unix_seconds",
        "defaults",
        "gpu_adapter",
        "gpu_backend",
        "gpu_memory_bytes",
        "draft_tokens",
        "accepted_draft_tokens",
    ];
    for f in fields {
        assert!(v.get(f).is_some(), "missing {f}: {v}");
    }
    assert_eq!(v.as_object().map(|o| o.len()), Some(fields.len()));
    assert_eq!(v["model"], "tiny");
    assert_eq!(v["architecture"], "phi3");
    assert!(v["process_rss_bytes"].as_u64().unwrap_or(0) > 0);
    assert!(v["compression_vs_f32"].as_f64().unwrap_or(0.0) > 1.0);
    assert!(v["model_loaded_unix_seconds"].as_f64().unwrap_or(0.0) > 1.6e9);
    assert!(v["defaults"].is_object(), "chat defaults: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_models_lists_the_daemon_models() {
    let s = setup().await;
    let resp = get(s.addr, "/v1/models").await;
    assert_eq!(resp.status, 200);
    let v = resp.json();
    assert_eq!(v["object"], "list");
    let data = v["data"].as_array().expect("data");
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["id"], "tiny");
    assert_eq!(data[0]["object"], "model");
    assert_eq!(data[0]["owned_by"], "qins");
    assert!(data[0]["created"].is_u64());
}

/// `model` means the same in every dialect (`edge::model`): the resident
/// model by its name, `.qins` or `:latest`; any other name is a 404 that
/// says how to load it; OpenAI and ollama require it, the page may omit
/// it. `/v1/models` and `/api/tags` list the same models.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dialect_resolves_the_model_the_same_way() {
    let s = setup().await;
    let a = s.addr;
    let ids: Vec<String> = get(a, "/v1/models").await.json()["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| format!("{}:latest", m["id"].as_str().expect("id")))
        .collect();
    let tags: Vec<String> = get(a, "/api/tags").await.json()["models"]
        .as_array()
        .expect("models")
        .iter()
        .map(|m| m["name"].as_str().expect("name").to_string())
        .collect();
    assert_eq!(ids, tags);
    assert_eq!(tags, ["tiny:latest"]);

    let openai = |model: Value| json!({ "model": model, "messages": user("x"), "max_tokens": 1 });
    let ollama = |model: Value| {
        json!({ "model": model, "messages": user("x"), "stream": false,
                "options": { "num_predict": 1 } })
    };
    for name in ["tiny", "tiny:latest", "tiny.qins"] {
        let r = post_json(a, "/v1/chat/completions", &openai(json!(name))).await;
        assert_eq!(r.status, 200, "{name}: {}", r.body);
        assert_eq!(r.json()["model"], "tiny");
        let r = post_json(a, "/api/chat", &ollama(json!(name))).await;
        assert_eq!(r.status, 200, "{name}: {}", r.body);
    }

    let unknown = [
        ("/v1/chat/completions", openai(json!("gpt-4o"))),
        (
            "/v1/completions",
            json!({ "model": "gpt-4o", "prompt": "x", "max_tokens": 1 }),
        ),
        (
            "/ui/chat",
            json!({ "model": "gpt-4o", "messages": user("x"), "max_tokens": 1 }),
        ),
        ("/v1/embeddings", json!({ "model": "gpt-4o", "input": "x" })),
        ("/v1/responses", json!({ "model": "gpt-4o", "input": "x" })),
    ];
    for (path, body) in unknown {
        let r = post_json(a, path, &body).await;
        assert_error(&r, 404, "not_found");
        let message = r.json()["error"]["message"].to_string();
        assert!(
            message.contains("'gpt-4o' is not loaded"),
            "{path}: {message}"
        );
        assert!(
            message.contains("'tiny'") && message.contains("qins load"),
            "{message}"
        );
    }
    let generate = json!({ "model": "gpt-4o", "prompt": "x", "stream": false });
    for (path, body) in [
        ("/api/chat", ollama(json!("gpt-4o"))),
        ("/api/generate", generate),
        ("/api/embed", json!({ "model": "gpt-4o", "input": "x" })),
        (
            "/api/embeddings",
            json!({ "model": "gpt-4o", "prompt": "x" }),
        ),
    ] {
        let message = assert_ollama_error(&post_json(a, path, &body).await, 404);
        assert!(message.contains("qins load"), "{path}: {message}");
    }
    // Anthropic's routes: the same rule, in Anthropic's error shape.
    let anthropic = |model: &str| json!({ "model": model, "messages": user("x"), "max_tokens": 1 });
    for path in ["/v1/messages", "/v1/messages/count_tokens"] {
        let mut body = anthropic("gpt-4o");
        if path.ends_with("count_tokens") {
            body.as_object_mut().map(|b| b.remove("max_tokens"));
        }
        let r = post_json(a, path, &body).await;
        assert_eq!(r.status, 404, "{path}: {}", r.body);
        assert_eq!(r.json()["error"]["type"], "not_found_error", "{}", r.body);
        let message = r.json()["error"]["message"].to_string();
        assert!(
            message.contains("'gpt-4o' is not loaded"),
            "{path}: {message}"
        );
    }
    let r = post_json(a, "/v1/messages", &anthropic("tiny:latest")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["model"], "tiny");

    // Omitted: OpenAI and ollama require it; the page means the resident one.
    let no_model = json!({ "messages": user("x"), "max_tokens": 1 });
    assert_error(
        &post_json(a, "/v1/chat/completions", &no_model).await,
        400,
        "invalid_request",
    );
    let message = assert_ollama_error(
        &post_json(a, "/api/chat", &json!({ "messages": user("x") })).await,
        400,
    );
    assert!(message.contains("model is required"), "{message}");
    let page = post_json(a, "/ui/chat", &no_model).await;
    assert_eq!(page.status, 200, "{}", page.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_chat_completions_non_streaming() {
    let s = setup().await;
    let resp = post_json(
        s.addr,
        "/v1/chat/completions",
        &json!({ "model": "tiny", "messages": [
                    { "role": "developer", "content": "Be brief." },
                    { "role": "user", "content": [{ "type": "text", "text": "Hi" }] }],
                 "max_completion_tokens": 3, "seed": 1, "temperature": 0, "stop": ["qqq", "zzz"] }),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let v = resp.json();
    assert_eq!(v["object"], "chat.completion");
    assert!(
        v["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("chatcmpl-"))
    );
    assert_eq!(v["model"], "tiny");
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(choice["message"]["content"].is_string());
    let usage = &v["usage"];
    let (p, c, t) = (
        usage["prompt_tokens"].as_u64().expect("prompt_tokens"),
        usage["completion_tokens"]
            .as_u64()
            .expect("completion_tokens"),
        usage["total_tokens"].as_u64().expect("total_tokens"),
    );
    assert_eq!(p + c, t);
    match choice["finish_reason"].as_str() {
        Some("length") => assert_eq!(c, 3),
        Some("stop") => assert!(c <= 3),
        other => panic!("finish_reason {other:?}"),
    }
    // Non-text content parts are refused before reaching qinsd.
    let bad = post_json(
        s.addr,
        "/v1/chat/completions",
        &json!({ "model": "tiny",
                 "messages": [{ "role": "user", "content": [{ "type": "image_url" }] }] }),
    )
    .await;
    assert_error(&bad, 400, "invalid_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_chat_completions_streaming() {
    let s = setup().await;
    let resp = post_json(
        s.addr,
        "/v1/chat/completions",
        &json!({ "model": "tiny", "messages": user("Hi"), "max_tokens": 3, "seed": 3,
                 "stream": true, "stream_options": { "include_usage": true } }),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let data: Vec<String> = resp.events().into_iter().map(|(_, d)| d).collect();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk JSON"))
        .collect();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], chunks[0]["id"]);
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let finish: Vec<&Value> = chunks
        .iter()
        .filter(|c| !c["choices"][0]["finish_reason"].is_null())
        .collect();
    assert_eq!(finish.len(), 1);
    assert!(
        ["stop", "length"].contains(
            &finish[0]["choices"][0]["finish_reason"]
                .as_str()
                .unwrap_or("")
        )
    );
    let usage = chunks.last().expect("usage chunk");
    assert_eq!(usage["choices"], json!([]));
    let u = &usage["usage"];
    assert_eq!(
        u["prompt_tokens"].as_u64().unwrap_or(0) + u["completion_tokens"].as_u64().unwrap_or(0),
        u["total_tokens"].as_u64().unwrap_or(u64::MAX)
    );

    // Without include_usage: no usage chunk, the finish chunk comes last.
    let resp = post_json(
        s.addr,
        "/v1/chat/completions",
        &json!({ "model": "tiny", "messages": user("Hi"), "max_tokens": 2, "stream": true }),
    )
    .await;
    let data: Vec<String> = resp.events().into_iter().map(|(_, d)| d).collect();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let last: Value = serde_json::from_str(&data[data.len() - 2]).expect("chunk");
    assert!(last["choices"][0]["finish_reason"].is_string());
    assert!(last.get("usage").is_none());
}

/// An Anthropic-shaped error: `{"type":"error","error":{type,message}}`.
fn assert_anthropic_error(resp: &Response, status: u16, kind: &str) -> String {
    assert_eq!(resp.status, status, "body: {}", resp.body);
    let body = resp.json();
    assert_eq!(body["type"], "error", "body: {body}");
    assert_eq!(body["error"]["type"], kind, "body: {body}");
    body["error"]["message"]
        .as_str()
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no error message: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_messages_whole_streamed_counted_and_refused() {
    let s = setup().await;
    let body = json!({ "model": "tiny", "max_tokens": 3, "temperature": 0,
                       "system": "Be brief.", "metadata": { "user_id": "u" },
                       "messages": [{ "role": "user", "content": [{ "type": "text", "text": "Hi" }] }] });
    let resp = post_json(s.addr, "/v1/messages", &body).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let v = resp.json();
    assert!(v["id"].as_str().is_some_and(|id| id.starts_with("msg_")));
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "tiny");
    assert_eq!(v["content"][0]["type"], "text");
    assert!(v["content"][0]["text"].is_string());
    assert!(v["stop_sequence"].is_null());
    let output = v["usage"]["output_tokens"].as_u64().expect("output_tokens");
    match v["stop_reason"].as_str() {
        Some("max_tokens") => assert_eq!(output, 3),
        Some("end_turn") => assert!(output <= 3),
        other => panic!("stop_reason {other:?}"),
    }
    let input = v["usage"]["input_tokens"].as_u64().expect("input_tokens");
    assert!(input > 0);

    // count_tokens reads the same prompt a chat does.
    let count = post_json(
        s.addr,
        "/v1/messages/count_tokens",
        &json!({ "model": "tiny", "system": "Be brief.",
                 "messages": [{ "role": "user", "content": "Hi" }] }),
    )
    .await;
    assert_eq!(count.status, 200, "{}", count.body);
    assert_eq!(count.json()["input_tokens"].as_u64(), Some(input));

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let resp = post_json(s.addr, "/v1/messages", &streamed).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let events = resp.events();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[..2], ["message_start", "ping"], "{names:?}");
    assert_eq!(names[names.len() - 2..], ["message_delta", "message_stop"]);
    assert_eq!(names[2], "content_block_start");
    assert_eq!(names[names.len() - 3], "content_block_stop");
    assert!(
        names[3..names.len() - 3]
            .iter()
            .all(|n| *n == "content_block_delta")
    );
    for (name, data) in &events {
        let data: Value = serde_json::from_str(data).expect("event JSON");
        assert_eq!(data["type"], name.as_str());
    }
    let delta: Value = serde_json::from_str(&events[names.len() - 2].1).expect("JSON");
    assert!(delta["delta"]["stop_reason"].is_string());
    assert!(
        delta["usage"]["output_tokens"]
            .as_u64()
            .is_some_and(|n| n <= 3)
    );

    let mut missing = body.clone();
    missing
        .as_object_mut()
        .expect("object")
        .remove("max_tokens");
    let message = assert_anthropic_error(
        &post_json(s.addr, "/v1/messages", &missing).await,
        400,
        "invalid_request_error",
    );
    assert!(message.contains("max_tokens"), "{message}");
    let mut image = body.clone();
    image["messages"][0]["content"] = json!([{ "type": "image",
        "source": { "type": "base64", "media_type": "image/png", "data": "" } }]);
    let message = assert_anthropic_error(
        &post_json(s.addr, "/v1/messages", &image).await,
        400,
        "invalid_request_error",
    );
    assert!(message.contains("\"image\""), "{message}");
    // qinsd's refusal of a range names Anthropic's parameter.
    let mut hot = body.clone();
    hot["top_p"] = json!(1.5);
    let message = assert_anthropic_error(
        &post_json(s.addr, "/v1/messages", &hot).await,
        400,
        "invalid_request_error",
    );
    assert!(message.contains("top_p"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_responses_whole_streamed_chained_and_refused() {
    let s = setup().await;
    let body = json!({ "model": "tiny", "input": "Hi", "instructions": "Be brief.",
                       "max_output_tokens": 3, "temperature": 0 });
    let resp = post_json(s.addr, "/v1/responses", &body).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let whole = resp.json();
    let id = whole["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("resp_"), "{id}");
    assert_eq!(whole["object"], "response");
    assert_eq!(whole["model"], "tiny");
    assert_eq!(whole["instructions"], "Be brief.");
    assert_eq!(whole["output"][0]["type"], "message");
    let text = whole["output"][0]["content"][0]["text"]
        .as_str()
        .expect("text");
    let output_tokens = whole["usage"]["output_tokens"].as_u64().expect("usage");
    match whole["status"].as_str() {
        Some("incomplete") => {
            assert_eq!(output_tokens, 3);
            assert_eq!(whole["incomplete_details"]["reason"], "max_output_tokens");
        }
        Some("completed") => assert!(output_tokens <= 3),
        other => panic!("status {other:?}"),
    }

    // Streamed: the event sequence, numbered, with the same greedy text.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let resp = post_json(s.addr, "/v1/responses", &streamed).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let events: Vec<(String, Value)> = resp
        .events()
        .into_iter()
        .map(|(name, data)| (name, serde_json::from_str(&data).expect("event JSON")))
        .collect();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ],
        "{names:?}"
    );
    let end = if whole["status"] == "completed" {
        "response.completed"
    } else {
        "response.incomplete"
    };
    assert_eq!(
        names[names.len() - 4..],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            end
        ]
    );
    let mut deltas = String::new();
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], name.as_str());
        assert_eq!(data["sequence_number"], i);
        if name == "response.output_text.delta" {
            deltas.push_str(data["delta"].as_str().expect("delta"));
        }
    }
    assert_eq!(deltas, text);

    // Stored by default: retrievable, and a later response continues it.
    let stored = get(s.addr, &format!("/v1/responses/{id}")).await;
    assert_eq!(stored.status, 200, "{}", stored.body);
    assert_eq!(stored.json()["output"], whole["output"]);
    let next = json!({ "model": "tiny", "input": "And?", "max_output_tokens": 1,
                       "previous_response_id": id });
    let chained = post_json(s.addr, "/v1/responses", &next).await;
    assert_eq!(chained.status, 200, "{}", chained.body);
    let alone = post_json(
        s.addr,
        "/v1/responses",
        &json!({ "model": "tiny", "input": "And?", "max_output_tokens": 1 }),
    )
    .await;
    let prompt = |r: &Response| r.json()["usage"]["input_tokens"].as_u64().expect("usage");
    assert!(prompt(&chained) > prompt(&alone) + 3);
    let deleted = request(s.addr, "DELETE", &format!("/v1/responses/{id}"), &[], b"").await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert_eq!(deleted.json()["deleted"], true);
    assert_error(
        &get(s.addr, &format!("/v1/responses/{id}")).await,
        404,
        "not_found",
    );
    let gone = post_json(s.addr, "/v1/responses", &next).await;
    assert_error(&gone, 400, "previous_response_not_found");
    assert_eq!(gone.json()["error"]["param"], "previous_response_id");

    // Refusals name the member; qinsd's range check names Responses' name.
    for (name, value, param) in [
        ("store", json!("yes"), "store"),
        ("truncation", json!("auto"), "truncation"),
        ("max_output_tokens", json!(0), "max_output_tokens"),
        ("top_p", json!(1.5), "top_p"),
    ] {
        let mut refused = body.clone();
        refused[name] = value;
        let resp = post_json(s.addr, "/v1/responses", &refused).await;
        assert_eq!(resp.status, 400, "{name}: {}", resp.body);
        assert_eq!(resp.json()["error"]["param"], param, "{}", resp.body);
    }
    let mut omitted = body.clone();
    omitted.as_object_mut().map(|b| b.remove("model"));
    assert_error(
        &post_json(s.addr, "/v1/responses", &omitted).await,
        400,
        "invalid_request",
    );
}

/// The NDJSON lines of an ollama stream, parsed.
fn ndjson(resp: &Response) -> Vec<Value> {
    resp.body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_chat_streams_ndjson_then_counts() {
    let s = setup().await;
    let resp = post_json(
        s.addr,
        "/api/chat",
        &json!({ "model": "tiny:latest", "messages": user("Hello"),
                 "options": { "num_predict": 4, "temperature": 0, "seed": 3 } }),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.header("content-type"), Some("application/x-ndjson"));
    let lines = ndjson(&resp);
    let (last, parts) = lines.split_last().expect("lines");
    assert!(!parts.is_empty(), "{lines:?}");
    for part in parts {
        assert_eq!(part["done"], false);
        assert_eq!(part["model"], "tiny:latest", "the request's name is echoed");
        assert_eq!(part["message"]["role"], "assistant");
        assert!(part["message"]["content"].is_string());
        assert!(
            part["created_at"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z'))
        );
    }
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "length");
    assert_eq!(last["eval_count"], 4);
    assert!(last["prompt_eval_count"].as_u64().unwrap_or(0) > 0);
    for field in ["total_duration", "prompt_eval_duration", "eval_duration"] {
        assert!(last[field].as_u64().unwrap_or(0) > 0, "{field}: {last}");
    }
    assert!(last["total_duration"].as_u64() >= last["eval_duration"].as_u64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_generate_without_streaming_and_the_model_routes() {
    let s = setup().await;
    let a = s.addr;
    let resp = post_json(
        a,
        "/api/generate",
        &json!({ "model": "tiny", "prompt": "Hello", "system": "Be brief.", "stream": false,
                 "keep_alive": "5m", "options": { "num_predict": 3, "temperature": 0 } }),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let v = resp.json();
    assert_eq!(v["done"], true);
    assert_eq!(v["eval_count"], 3);
    assert!(v["response"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
    // Nothing to generate: ollama's "the model is loaded".
    let load = post_json(a, "/api/generate", &json!({ "model": "tiny" }))
        .await
        .json();
    assert_eq!(load["done_reason"], "load");

    assert_eq!(get(a, "/api/version").await.json()["version"], "0.12.0");
    let tags = get(a, "/api/tags").await.json();
    let models = tags["models"].as_array().expect("models");
    assert_eq!(models.len(), 1, "{tags}");
    assert_eq!(models[0]["name"], "tiny:latest");
    assert_eq!(models[0]["details"]["family"], "phi3");
    assert!(models[0]["size"].as_u64().unwrap_or(0) > 0);
    assert!(models[0]["modified_at"].is_string() && models[0]["digest"].is_string());
    let show = post_json(a, "/api/show", &json!({ "model": "tiny" })).await;
    assert_eq!(show.status, 200, "{}", show.body);
    let show = show.json();
    assert_eq!(show["model_info"]["general.architecture"], "phi3");
    assert_eq!(show["model_info"]["phi3.context_length"], 4096);
    assert_eq!(show["capabilities"], json!(["completion", "tools"]));
    let ps = get(a, "/api/ps").await.json();
    assert_eq!(ps["models"][0]["name"], "tiny:latest", "{ps}");
    assert!(ps["models"][0]["size"].as_u64().unwrap_or(0) > 0);
    assert_eq!(ps["models"][0]["size_vram"], 0);
    assert_eq!(ps["models"][0]["digest"], models[0]["digest"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_refusals_name_what_is_not_supported() {
    let s = setup().await;
    let a = s.addr;
    let chat = |extra: Value| {
        let mut body = json!({ "model": "tiny", "messages": user("x") });
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        body
    };
    for (body, status, needle) in [
        (chat(json!({ "format": 5 })), 400, "format"),
        (chat(json!({ "options": { "num_gpu": 1 } })), 400, "num_gpu"),
        (
            chat(json!({ "tools": [{ "type": "function" }] })),
            400,
            "tools",
        ),
        (chat(json!({ "unknown_field": 1 })), 400, "unknown_field"),
        (chat(json!({ "model": "other" })), 404, "other"),
    ] {
        let message = assert_ollama_error(&post_json(a, "/api/chat", &body).await, status);
        assert!(message.contains(needle), "{needle}: {message}");
    }
    let message = assert_ollama_error(
        &post_json(a, "/api/show", &json!({ "model": "missing" })).await,
        404,
    );
    assert!(message.contains("missing"), "{message}");
    // qinsd's own INVALID_ARGUMENT, in ollama's shape.
    let bad = chat(json!({ "options": { "temperature": -1 } }));
    let message = assert_ollama_error(&post_json(a, "/api/chat", &bad).await, 400);
    assert!(message.contains("temperature"), "{message}");
    assert_ollama_error(&get(a, "/api/nope").await, 404);
}

/// One parameter table for every dialect: `seed: -1` (a fresh seed) and a
/// negative `top_k` (no limit) are accepted by the page's, OpenAI's and
/// ollama's routes alike, another negative seed is refused by all three;
/// ranges are qinsd's, and its refusal names OpenAI's parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dialect_reads_parameters_the_same_way() {
    let s = setup().await;
    let a = s.addr;
    let page = |extra: Value| {
        let mut body = json!({ "model": "tiny", "messages": user("x"), "max_tokens": 1 });
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        body
    };
    let ollama = |options: Value| {
        json!({ "model": "tiny", "messages": user("x"), "stream": false,
                                 "options": options })
    };
    let accepted = json!({ "seed": -1, "top_k": -1 });
    let page_reply = post_json(a, "/ui/chat", &page(accepted.clone())).await;
    assert_eq!(page_reply.status, 200, "{}", page_reply.body);
    let openai = post_json(a, "/v1/chat/completions", &page(accepted.clone())).await;
    assert_eq!(openai.status, 200, "{}", openai.body);
    let options = json!({ "seed": -1, "top_k": -1, "num_predict": 1 });
    let reply = post_json(a, "/api/chat", &ollama(options)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    let refused = json!({ "seed": -2 });
    for path in ["/ui/chat", "/v1/chat/completions"] {
        let r = post_json(a, path, &page(refused.clone())).await;
        assert_error(&r, 400, "invalid_request");
        assert_eq!(r.json()["error"]["param"], "seed", "{path}");
    }
    let r = post_json(a, "/api/chat", &ollama(json!({ "seed": -2 }))).await;
    assert!(assert_ollama_error(&r, 400).contains("seed"));

    // qinsd's limits, named as each endpoint calls the parameter.
    for (path, body, param) in [
        (
            "/v1/chat/completions",
            page(json!({ "logprobs": true, "top_logprobs": 21 })),
            "top_logprobs",
        ),
        (
            "/v1/completions",
            json!({ "model": "tiny", "prompt": "x", "max_tokens": 1, "logprobs": 21 }),
            "logprobs",
        ),
        ("/v1/chat/completions", page(json!({ "min_p": 2 })), "min_p"),
        (
            "/ui/chat",
            page(json!({ "temperature": -1 })),
            "temperature",
        ),
    ] {
        let r = post_json(a, path, &body).await;
        assert_error(&r, 400, "invalid_request");
        assert_eq!(r.json()["error"]["param"], param, "{path}: {}", r.body);
    }
}

/// Whole completions carry the same usage as chat (the cached prompt
/// tokens' field included) and name the model that answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_report_cached_tokens_like_chat() {
    let s = setup().await;
    let body = json!({ "model": "tiny", "prompt": "Once upon a time", "max_tokens": 2,
                       "temperature": 0 });
    let first = post_json(s.addr, "/v1/completions", &body).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let first = first.json();
    assert_eq!(first["model"], "tiny");
    let usage = &first["usage"];
    assert!(
        usage["prompt_tokens_details"]["cached_tokens"].is_u64(),
        "{usage}"
    );
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(
            usage["prompt_tokens"].as_u64().unwrap_or(0)
                + usage["completion_tokens"].as_u64().unwrap_or(0)
        )
    );
    // Completions have no session (no `prompt_cache_key`): nothing cached.
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_tokens_and_read_qinsd() {
    let s = setup().await;
    let a = s.addr;
    let sample = |text: &str, prefix: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let before = get(a, "/metrics").await;
    assert_eq!(before.status, 200);
    assert!(
        before
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/openmetrics-text")),
        "{:?}",
        before.header("content-type")
    );
    assert!(before.body.ends_with("# EOF\n"));
    assert_eq!(sample(&before.body, "qinsd_up "), 1.0);
    assert!(sample(&before.body, "qinsd_model_resident_bytes ") > 0.0);
    assert!(sample(&before.body, "qinsd_process_resident_memory_bytes ") > 0.0);
    let r = post_json(
        a,
        "/v1/chat/completions",
        &json!({ "model": "tiny", "messages": user("Hi"), "max_tokens": 3, "temperature": 0 }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let completion = r.json()["usage"]["completion_tokens"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(completion >= 1.0, "{}", r.body);
    let after = get(a, "/metrics").await.body;
    assert_eq!(
        sample(&after, "qins_web_completion_tokens_total ")
            - sample(&before.body, "qins_web_completion_tokens_total "),
        completion,
        "{after}"
    );
    assert!(sample(&after, "qins_web_prompt_tokens_total ") > 0.0);
    assert_eq!(
        sample(&after, "qins_web_time_to_first_token_seconds_count "),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            "qins_web_requests_total{route=\"/v1/chat/completions\",code=\"200\"} "
        ),
        1.0
    );
    assert!(
        sample(
            &after,
            "qins_web_requests_total{route=\"/metrics\",code=\"200\"} "
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors() {
    let s = setup_with(|c| c.max_body_bytes = 1024).await;
    let a = s.addr;
    // Malformed JSON.
    let r = request(
        a,
        "POST",
        "/ui/chat",
        &[("Content-Type", "application/json")],
        b"{bad",
    )
    .await;
    assert_error(&r, 400, "invalid_request");
    // Wrong shape.
    assert_error(
        &post_json(a, "/v1/chat/completions", &json!({ "messages": 5 })).await,
        400,
        "invalid_request",
    );
    // qinsd's INVALID_ARGUMENT.
    let r = post_json(
        a,
        "/ui/chat",
        &json!({ "messages": user("x"), "temperature": -1.0 }),
    )
    .await;
    assert_error(&r, 400, "invalid_request");
    assert_error(
        &post_json(a, "/ui/chat", &json!({ "messages": [] })).await,
        400,
        "invalid_request",
    );
    // Wrong content type.
    let r = request(
        a,
        "POST",
        "/ui/chat",
        &[("Content-Type", "text/plain")],
        b"{}",
    )
    .await;
    assert_error(&r, 415, "unsupported_media_type");
    // Too big.
    let big = json!({ "messages": user(&"x".repeat(4096)) }).to_string();
    let r = request(
        a,
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        big.as_bytes(),
    )
    .await;
    assert_error(&r, 413, "payload_too_large");
    // Foreign Host (DNS rebinding), on the page and the API alike.
    for path in ["/", "/ui/stats"] {
        let r = request(a, "GET", path, &[("Host", "evil.example:7860")], b"").await;
        assert_error(&r, 403, "host_not_allowed");
    }
    let r = request(a, "GET", "/ui/stats", &[("Host", "localhost:1234")], b"").await;
    assert_eq!(r.status, 200);
    // No CORS headers unless configured.
    let r = request(
        a,
        "GET",
        "/ui/stats",
        &[("Origin", "http://evil.example")],
        b"",
    )
    .await;
    assert!(r.header("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_host_and_cors_origin_flags() {
    let s = setup_with(|c| {
        c.allow_hosts = vec!["box.lan".into()];
        c.cors_origins = vec!["http://app.example".into()];
    })
    .await;
    let r = request(s.addr, "GET", "/ui/stats", &[("Host", "box.lan:7860")], b"").await;
    assert_eq!(r.status, 200);
    let r = request(
        s.addr,
        "GET",
        "/ui/stats",
        &[("Origin", "http://app.example")],
        b"",
    )
    .await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://app.example")
    );
    let r = request(
        s.addr,
        "GET",
        "/ui/stats",
        &[("Origin", "http://other.example")],
        b"",
    )
    .await;
    assert!(r.header("access-control-allow-origin").is_none());
    let r = request(
        s.addr,
        "OPTIONS",
        "/v1/chat/completions",
        &[
            ("Origin", "http://app.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 204);
    assert!(
        r.header("access-control-allow-headers")
            .is_some_and(|h| h.contains("authorization"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_required_when_set() {
    let s = setup_with(|c| c.api_key = Some("s3cret".into())).await;
    let a = s.addr;
    for path in ["/api/tags", "/api/version"] {
        let message = assert_ollama_error(&get(a, path).await, 401);
        assert!(message.contains("API key"), "{message}");
        let r = request(a, "GET", path, &[("Authorization", "Bearer s3cret")], b"").await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    for path in ["/ui/stats", "/health", "/v1/models", "/metrics"] {
        assert_error(&get(a, path).await, 401, "invalid_api_key");
        let r = request(a, "GET", path, &[("Authorization", "Bearer wrong")], b"").await;
        assert_error(&r, 401, "invalid_api_key");
        let r = request(a, "GET", path, &[("Authorization", "Bearer s3cret")], b"").await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    let r = post_json(
        a,
        "/v1/chat/completions",
        &json!({ "model": "tiny", "messages": user("x"), "max_tokens": 1 }),
    )
    .await;
    assert_error(&r, 401, "invalid_api_key");
    let r = post_json(
        a,
        "/v1/responses",
        &json!({ "model": "tiny", "input": "x" }),
    )
    .await;
    assert_error(&r, 401, "invalid_api_key");
    // Anthropic's clients send the key as x-api-key, and get its error shape.
    let messages = json!({ "model": "tiny", "max_tokens": 1, "messages": user("x") });
    let body = messages.to_string();
    let json_type = ("Content-Type", "application/json");
    let r = request(
        a,
        "POST",
        "/v1/messages",
        &[json_type, ("x-api-key", "wrong")],
        body.as_bytes(),
    )
    .await;
    assert_anthropic_error(&r, 401, "authentication_error");
    let r = post_json(a, "/v1/messages", &messages).await;
    assert_anthropic_error(&r, 401, "authentication_error");
    let with_key = [
        json_type,
        ("x-api-key", "s3cret"),
        ("anthropic-version", "2023-06-01"),
    ];
    let r = request(a, "POST", "/v1/messages", &with_key, body.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The page stays open so it can ask for the key.
    assert_eq!(get(a, "/").await.status, 200);
}

/// It failed once: the first request after the kill can go out on the
/// bridge's cached connection before the bridge has seen it close, and
/// tonic then fails it with UNKNOWN ("connection closed", an h2 error
/// without a reason) or INTERNAL (a broken pipe) rather than UNAVAILABLE;
/// the bridge took those for qinsd's own errors (502 `qinsd_error`) instead
/// of unreachable. A failure tonic makes from the transport (it keeps the
/// transport's error as the status's source) is now unreachable whatever
/// its code (`error.rs`, `a_transport_failure_is_unreachable_whatever_its_code`).
/// The window is a few scheduler turns: 80 runs here, 60 of them four at a
/// time, did not hit it, so the unit test pins the mapping down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_down_gives_503_and_restart_recovers() {
    let mut s = setup().await;
    assert_eq!(get(s.addr, "/health").await.json()["qinsd"], "reachable");
    s.daemon.kill();

    let health = get(s.addr, "/health").await;
    assert_eq!(health.status, 503);
    assert_eq!(health.json()["qinsd"], "unreachable");
    assert_error(&health, 503, "qinsd_unreachable");
    assert_error(&get(s.addr, "/ui/stats").await, 503, "qinsd_unreachable");
    assert_error(&get(s.addr, "/v1/models").await, 503, "qinsd_unreachable");
    assert_chat_routes_refuse(s.addr, 503, "qinsd_unreachable").await;

    // Same socket, new daemon: the bridge picks it up without a restart.
    s.daemon.spawn(TINY);
    wait_healthy(s.addr).await;
    let chat = post_json(
        s.addr,
        "/ui/chat",
        &json!({ "messages": user("x"), "max_tokens": 2 }),
    )
    .await;
    assert_eq!(chat.status, 200);
    assert_eq!(chat.events().last().map(|e| e.0.as_str()), Some("done"));
}

/// Starts a long reply on a raw connection and returns it once the first
/// delta arrived: greedy decoding of this prompt runs about a thousand
/// tokens on the tiny model before an end token.
async fn start_long_reply(addr: SocketAddr) -> TcpStream {
    let body = json!({ "messages": user("Tell me a long story"), "max_tokens": 3000,
                       "temperature": 0.0 })
    .to_string();
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /ui/chat HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        addr,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.write_all(body.as_bytes()).await.expect("write");
    // Wait for the first delta, then hang up like the page's Stop button.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("event: delta") {
        let n = tokio::time::timeout(REQUEST_TIMEOUT, stream.read(&mut buf))
            .await
            .expect("first delta in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before any delta: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_connection_cancels_the_reply() {
    let s = setup().await;
    let stream = start_long_reply(s.addr).await;
    // Hang up like the page's Stop button.
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = get(s.addr, "/ui/stats").await.json();
        if stats["active_requests"] == 0 && stats["requests_served"].as_u64() >= Some(1) {
            let generated = stats["tokens_generated"].as_u64().unwrap_or(u64::MAX);
            assert!(generated < 500, "not cancelled: {stats}");
            break;
        }
        assert!(Instant::now() < deadline, "reply still running: {stats}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = s.daemon.log();
    assert!(log.contains("finish=Cancelled"), "qinsd log: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_429() {
    let args = ["--model", "tiny", "--max-active", "1", "--max-queued", "0"];
    let s = setup_daemon(&args, |_| {}).await;
    let _busy = start_long_reply(s.addr).await;
    assert_chat_routes_refuse(s.addr, 429, "queue_full").await;
}

/// The error contract's "models dir unreadable" (qinsd reason
/// `models-dir`) is a server error, not "no model loaded": a file where the
/// directory should be (permission bits would not stop root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_models_dir_is_500_not_no_model() {
    let mut daemon = Daemon::unstarted();
    let not_a_dir = daemon.dir.path().join("models-file");
    std::fs::write(&not_a_dir, b"not a directory").expect("write");
    daemon.models_dir = not_a_dir;
    daemon.spawn(&[]);
    daemon.wait_ready().await;
    let addr = serve(config(&daemon.socket)).await;
    wait_healthy(addr).await;
    for path in ["/v1/models", "/api/tags"] {
        let r = get(addr, path).await;
        assert_eq!(r.status, 500, "{path}: {}", r.body);
        assert!(r.body.contains("models-file"), "{path}: {}", r.body);
    }
    assert_error(&get(addr, "/v1/models").await, 500, "models_dir_unreadable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_model_loaded_is_503() {
    let s = setup_daemon(&[], |_| {}).await;
    // qinsd itself answers, so /health is fine.
    assert_eq!(get(s.addr, "/health").await.status, 200);
    assert_chat_routes_refuse(s.addr, 503, "no_model_loaded").await;
}

#[test]
fn non_loopback_listen_needs_public() {
    let out = Command::new(env!("CARGO_BIN_EXE_qins-web"))
        .args(["--listen", "0.0.0.0:0", "--socket", "/nonexistent/s.sock"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run qins-web");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--public"), "{err}");
}
