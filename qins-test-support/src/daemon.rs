//! Shared harness of the end-to-end tests: the workspace binaries, a tiny
//! random-weight model converted once per test process, and a real `qinsd`
//! in a temporary directory that is killed when the test ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use qins_proto::v1::qins_client::QinsClient;
use qins_proto::v1::{
    ChatDone, ChatEvent, ChatRequest, Message, Sampling, StatsReply, StatsRequest, chat_event,
};
use tonic::transport::Channel;

use crate::tiny::{TinySpec, write_tiny_model};

/// How long a daemon may take to answer after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// `target/release` (or whichever profile dir holds this test binary).
fn binary_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    // target/<profile>/deps/<test>-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps")
        .to_path_buf()
}

/// A workspace binary; panics with the command that builds it.
pub fn binary(name: &str) -> PathBuf {
    let path = binary_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --release --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Runs a command to completion, panicking with its output if it fails.
pub fn run_ok(command: &mut Command) -> Output {
    let output = command.output().expect("the command starts");
    assert!(
        output.status.success(),
        "{command:?} failed: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A tiny phi3 model: the Hugging Face directory it came from and the
/// converted `tiny.qins`, made once per test process.
pub struct TinyModel {
    _dir: tempfile::TempDir,
    pub hf_dir: PathBuf,
    pub qins: PathBuf,
}

pub fn tiny_model() -> &'static TinyModel {
    static MODEL: OnceLock<TinyModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temp dir");
        let hf_dir = dir.path().join("tinyhf");
        let qins = dir.path().join("tiny.qins");
        write_tiny_model(&hf_dir, &TinySpec::phi3()).expect("write the tiny phi3 model");
        run_ok(
            Command::new(binary("qinsd"))
                .arg("convert")
                .arg(&hf_dir)
                .arg("-o")
                .arg(&qins),
        );
        TinyModel {
            _dir: dir,
            hf_dir,
            qins,
        }
    })
}

/// A running qinsd with its own models dir and socket; killed on drop.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub models_dir: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// Starts qinsd on the tiny model (copied into the daemon's models dir as
    /// `tiny.qins`) with `extra` flags, and waits until it answers.
    pub async fn start(extra: &[&str]) -> Daemon {
        let mut daemon = Daemon::unstarted();
        let mut args = vec!["--model", "tiny"];
        args.extend_from_slice(extra);
        daemon.spawn(&args);
        daemon.wait_ready().await;
        daemon
    }

    /// The temp dir, models dir (holding `tiny.qins`) and socket path of a
    /// daemon that is not started yet.
    pub fn unstarted() -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("qe")
            .tempdir_in("/tmp")
            .expect("a temp dir");
        let models_dir = dir.path().join("models");
        std::fs::create_dir_all(&models_dir).expect("models dir");
        std::fs::copy(&tiny_model().qins, models_dir.join("tiny.qins")).expect("copy the model");
        let socket = dir.path().join("qinsd.sock");
        Daemon {
            socket,
            models_dir,
            child: None,
            dir,
        }
    }

    /// Starts (or restarts) the process with `args` plus this daemon's
    /// socket and models dir; stderr goes to `qinsd.log` in the temp dir.
    pub fn spawn(&mut self, args: &[&str]) {
        let command = self.command(args);
        self.spawn_command(command);
    }

    /// Starts `command` (one from [`Daemon::command`], adjusted by the
    /// caller) as this daemon; stderr goes to `qinsd.log` in the temp dir.
    pub fn spawn_command(&mut self, mut command: Command) {
        let log = std::fs::File::create(self.dir.path().join("qinsd.log")).expect("log file");
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("qinsd starts");
        self.child = Some(child);
    }

    /// A qinsd command on this daemon's socket and models dir (not started).
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_of(&binary("qinsd"), args)
    }

    /// [`Daemon::command`] with another qinsd executable (a copy of it).
    pub fn command_of(&self, qinsd: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(qinsd);
        command
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--models-dir")
            .arg(&self.models_dir)
            .arg("--threads")
            .arg("2")
            .env("QINSD_LOG", "info");
        command
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("qinsd.log")).unwrap_or_default()
    }

    /// Whether the process is still running (not exited, not yet reaped).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("daemon running").id() as i32
    }

    pub async fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("qinsd exited early with {status}:\n{}", self.log());
            }
            if let Ok(mut client) = self.try_client().await
                && client.stats(StatsRequest {}).await.is_ok()
            {
                return;
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "qinsd did not answer within {START_TIMEOUT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn try_client(&self) -> Result<QinsClient<Channel>, qins_proto::ConnectError> {
        Ok(QinsClient::new(qins_proto::connect(&self.socket).await?))
    }

    pub async fn client(&self) -> QinsClient<Channel> {
        self.try_client().await.expect("connects to qinsd")
    }

    pub async fn stats(&self) -> StatsReply {
        self.client()
            .await
            .stats(StatsRequest {})
            .await
            .expect("stats")
            .into_inner()
    }

    /// Sends a signal and waits (bounded) for the exit status.
    pub fn signal_and_wait(&mut self, signal: i32, timeout: Duration) -> ExitStatus {
        // SAFETY: kill with a valid pid of our own child and a valid signal.
        let sent = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(sent, 0, "signal delivered");
        self.wait_exit(timeout)
    }

    /// Kills the process (SIGKILL) and reaps it; [`Daemon::spawn`] restarts
    /// it on the same socket and models dir.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("daemon running");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return status;
            }
            assert!(
                started.elapsed() < timeout,
                "qinsd did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn user(content: &str) -> Message {
    message("user", content)
}

pub fn message(role: &str, content: &str) -> Message {
    Message {
        role: role.into(),
        content: content.into(),
        ..Message::default()
    }
}

/// A greedy request with a token limit.
pub fn chat_request(messages: Vec<Message>, max_tokens: u32, session_id: &str) -> ChatRequest {
    ChatRequest {
        messages,
        session_id: session_id.into(),
        sampling: Some(Sampling {
            temperature: Some(0.0),
            max_tokens: Some(max_tokens),
            ..Sampling::default()
        }),
        ..ChatRequest::default()
    }
}

/// The streamed text and the final event of a chat.
#[derive(Debug)]
pub struct Reply {
    pub text: String,
    pub deltas: usize,
    pub done: ChatDone,
}

pub async fn chat(
    client: &mut QinsClient<Channel>,
    request: ChatRequest,
) -> Result<Reply, tonic::Status> {
    let mut stream = client.chat(request).await?.into_inner();
    let (mut text, mut deltas) = (String::new(), 0);
    while let Some(event) = stream.message().await? {
        match event {
            ChatEvent {
                event: Some(chat_event::Event::Delta(delta)),
            } => {
                text.push_str(&delta.text);
                deltas += 1;
            }
            ChatEvent {
                event: Some(chat_event::Event::Done(done)),
            } => {
                assert!(stream.message().await?.is_none(), "nothing follows done");
                return Ok(Reply { text, deltas, done });
            }
            ChatEvent { event: None } => panic!("empty chat event"),
        }
    }
    panic!("the stream ended without a done event");
}

/// Polls `check` until it holds or `timeout` passes; returns whether it held.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < timeout {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// Runs the `qins` client on `daemon`'s socket with `stdin` as its input.
pub fn qins(daemon_socket: &Path, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(binary("qins"))
        .arg("--socket")
        .arg(daemon_socket)
        .args(args)
        .env("HOME", daemon_socket.parent().expect("socket dir"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qins starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("qins runs")
}

/// The N of `prompt N tokens` in the timings line of `qins ask --verbose`.
pub fn prompt_tokens(timings: &str) -> u32 {
    timings
        .split("prompt ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no prompt token count in {timings:?}"))
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Where scripts/fetch-fixtures.sh caches the real fixtures.
pub fn fixtures_dir() -> PathBuf {
    std::env::var_os("QINS_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/qins/fixtures")
        })
}

/// A client dropping its stream cancels its reply, both mid-decode (after
/// the first delta) and during a long prefill (~2800 tokens); the daemon
/// logs `finish=Cancelled` and still serves. `daemon` must run with a
/// context of at least 4096 tokens; `within` bounds each wait for the slot
/// to free; `what` names the device in failure messages.
pub async fn dropped_clients_cancel(daemon: &Daemon, within: Duration, what: &str) {
    let mut client = daemon.client().await;
    let mut stream = client
        .chat(chat_request(vec![user("Go on and on.")], 3000, ""))
        .await
        .expect("chat")
        .into_inner();
    stream.message().await.expect("streams").expect("an event");
    drop(stream);
    let idle = eventually(within, || async {
        daemon.stats().await.active_requests == 0
    })
    .await;
    assert!(idle, "the {what} generation was not cancelled");
    let long_prompt = "word ".repeat(700);
    let stream = client
        .chat(chat_request(vec![user(&long_prompt)], 50, ""))
        .await
        .expect("chat");
    drop(stream);
    let idle = eventually(within, || async {
        daemon.stats().await.active_requests == 0
    })
    .await;
    assert!(idle, "the {what} prefill was not cancelled");
    assert!(
        daemon.log().contains("finish=Cancelled"),
        "{}",
        daemon.log()
    );
    let reply = chat(&mut client, chat_request(vec![user("Still there?")], 4, ""))
        .await
        .expect("chat after cancels");
    assert!(reply.done.usage.expect("usage").completion_tokens >= 1);
}
