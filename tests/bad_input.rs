//! Hostile gRPC input: invalid UTF-8, huge prompts, thousands of messages,
//! unwritable conversion targets, a full or read-only disk. Each gets a
//! clear error and the daemon keeps serving.

use std::path::{Path, PathBuf};
use std::process::Command;

use qins_proto::v1::{ConvertRequest, Sampling};
use qins_test_support::can_run;
use qins_test_support::daemon::*;
use tonic::Code;

/// `qins.v1.Message` with `content` as raw bytes, to send invalid UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct RawMessage {
    #[prost(string, tag = "1")]
    role: String,
    #[prost(bytes = "vec", tag = "2")]
    content: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawChatRequest {
    #[prost(message, repeated, tag = "1")]
    messages: Vec<RawMessage>,
}

/// Runs a Convert to completion: the error status, or a panic naming
/// `output` when it succeeds.
async fn convert_error(daemon: &Daemon, source: &Path, output: &str) -> tonic::Status {
    let request = ConvertRequest {
        source: source.display().to_string(),
        output: output.into(),
        options: None,
    };
    match daemon.client().await.convert(request).await {
        Err(status) => status,
        Ok(stream) => {
            let mut stream = stream.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("the conversion to '{output}' succeeded"),
                    Err(status) => break status,
                }
            }
        }
    }
}

/// The names in `dir`, hidden temporary files included, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read the dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// A filesystem mounted for one test; lazily unmounted on drop, so it goes
/// away even when the test fails (and before its temp dir is removed, when
/// declared after it).
struct Mount {
    dir: PathBuf,
}

impl Mount {
    /// `mount ARGS DIR`; `None` where mounting is not allowed (it needs root
    /// or CAP_SYS_ADMIN): a skip, and a failure under CI (`CI=true` or `CI=1`)
    /// ([`can_run`]).
    fn new(args: &[&str], dir: &Path) -> Option<Mount> {
        std::fs::create_dir_all(dir).expect("mount point");
        let output = Command::new("mount").args(args).arg(dir).output();
        let failure = match output {
            Ok(o) if o.status.success() => {
                return Some(Mount {
                    dir: dir.to_path_buf(),
                });
            }
            Ok(o) => format!("mount {}: {}", args.join(" "), text(&o.stderr).trim()),
            Err(e) => format!("cannot run mount: {e}"),
        };
        can_run(false, &format!("root to mount a tmpfs ({failure})"));
        None
    }

    /// Makes a bind mount read-only (a second step: `mount --bind` ignores `ro`).
    fn remount_bind_read_only(&self) {
        run_ok(
            Command::new("mount")
                .args(["-o", "remount,bind,ro"])
                .arg(&self.dir),
        );
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Free blocks of the filesystem holding `dir`.
fn free_blocks(dir: &Path) -> libc::fsblkcnt_t {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).expect("no NUL in the path");
    // SAFETY: statvfs is plain data (all zeroes is a valid value); the call
    // gets a NUL-terminated path and a struct we own to write into.
    let (result, stat) = unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(path.as_ptr(), &mut stat), stat)
    };
    assert_eq!(result, 0, "statvfs {}", dir.display());
    stat.f_bfree
}

async fn still_serves(daemon: &Daemon) {
    let reply = chat(
        &mut daemon.client().await,
        chat_request(vec![user("Hi")], 3, ""),
    )
    .await
    .expect("a normal chat still works");
    assert!(reply.done.usage.expect("usage").completion_tokens >= 1);
}

#[tokio::test]
async fn invalid_utf8_text_is_refused() {
    let daemon = Daemon::start(&[]).await;
    let channel = qins_proto::connect(&daemon.socket).await.expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let request = RawChatRequest {
        messages: vec![RawMessage {
            role: "user".into(),
            content: vec![b'h', 0xff, 0xfe, b'i'],
        }],
    };
    let codec = tonic_prost::ProstCodec::<RawChatRequest, RawChatRequest>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/qins.v1.Qins/Chat");
    let error = grpc
        .server_streaming(tonic::Request::new(request), path, codec)
        .await
        .expect_err("invalid UTF-8 is not decodable");
    assert!(
        matches!(error.code(), Code::Internal | Code::InvalidArgument),
        "{error:?}"
    );
    assert!(error.message().to_lowercase().contains("utf"), "{error:?}");
    still_serves(&daemon).await;
}

#[tokio::test]
async fn huge_prompts_and_thousands_of_messages_are_refused() {
    let daemon = Daemon::start(&["--context", "512"]).await;
    let mut client = daemon.client().await;
    // Over the 4 MB message limit: refused by the transport before decoding.
    let huge = "x".repeat(5 << 20);
    let error = chat(&mut client, chat_request(vec![user(&huge)], 4, ""))
        .await
        .expect_err("too large");
    assert!(
        matches!(error.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{error:?}"
    );
    // Under the transport limit but far over the context.
    let long = "many words ".repeat(100_000);
    let error = chat(&mut client, chat_request(vec![user(&long)], 4, ""))
        .await
        .expect_err("too long");
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(error.message().contains("context"), "{}", error.message());
    // Thousands of short messages.
    let many: Vec<_> = (0..5000)
        .map(|i| {
            if i % 2 == 0 {
                user("hi")
            } else {
                message("assistant", "hello")
            }
        })
        .collect();
    let error = chat(&mut client, chat_request(many, 4, ""))
        .await
        .expect_err("too many");
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    // Extreme sampling values.
    for sampling in [
        Sampling {
            temperature: Some(f32::INFINITY),
            ..Sampling::default()
        },
        Sampling {
            top_p: Some(f32::NAN),
            ..Sampling::default()
        },
        Sampling {
            repetition_penalty: Some(-1.0),
            ..Sampling::default()
        },
        Sampling {
            presence_penalty: Some(2.5),
            ..Sampling::default()
        },
        Sampling {
            frequency_penalty: Some(f32::NEG_INFINITY),
            ..Sampling::default()
        },
        Sampling {
            min_p: Some(f32::NAN),
            ..Sampling::default()
        },
        Sampling {
            logit_bias: [(u32::MAX, 1.0)].into_iter().collect(),
            ..Sampling::default()
        },
        Sampling {
            logit_bias: [(0, 1e9)].into_iter().collect(),
            ..Sampling::default()
        },
    ] {
        let mut request = chat_request(vec![user("hi")], 4, "");
        request.sampling = Some(sampling);
        let error = chat(&mut client, request).await.expect_err("out of range");
        assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    }
    // Values at the edges are fine.
    let mut request = chat_request(vec![user("hi")], 1, "");
    request.sampling = Some(Sampling {
        temperature: Some(1000.0),
        top_p: Some(1.0),
        top_k: Some(u32::MAX),
        max_tokens: Some(u32::MAX),
        seed: Some(u64::MAX),
        repetition_penalty: Some(100.0),
        stop: vec!["\u{1F600}".into()],
        presence_penalty: Some(-2.0),
        frequency_penalty: Some(2.0),
        min_p: Some(1.0),
        logit_bias: [(0, -100.0), (1, 100.0)].into_iter().collect(),
    });
    let reply = chat(&mut client, request).await.expect("edge values");
    assert!(reply.done.usage.expect("usage").completion_tokens >= 1);
    still_serves(&daemon).await;
}

#[tokio::test]
async fn converting_to_an_unwritable_place_is_a_clear_error_with_nothing_written() {
    let daemon = Daemon::start(&[]).await;
    let source = &tiny_model().hf_dir;
    // A directory that cannot be made (a file is in the way), and sysfs,
    // where not even root may create files. (A missing directory is made:
    // qins_convert::prepare_output, the one rule for outputs.)
    let in_the_way = daemon.dir.path().join("a-file");
    std::fs::write(&in_the_way, b"not a directory").expect("write");
    let cases = [
        in_the_way.join("m.qins"),
        std::path::PathBuf::from("/sys/qins-e2e-m.qins"),
    ];
    for output in &cases {
        let outcome = convert_error(&daemon, source, &output.display().to_string()).await;
        assert_eq!(outcome.code(), Code::FailedPrecondition, "{outcome:?}");
        assert!(
            outcome
                .message()
                .contains(&output.parent().unwrap().display().to_string())
                || outcome.message().contains("m.qins"),
            "{}",
            outcome.message()
        );
        assert!(!output.exists());
    }
    still_serves(&daemon).await;
}

#[tokio::test]
async fn converting_onto_a_full_disk_is_resource_exhausted_with_nothing_left() {
    let daemon = Daemon::start(&[]).await;
    let full = daemon.dir.path().join("full");
    // 64 KiB: less than the tiny model's ~178 kB .qins.
    let Some(_mount) = Mount::new(&["-t", "tmpfs", "-o", "size=64k", "tmpfs"], &full) else {
        return;
    };
    let free = free_blocks(&full);
    let output = full.join("m.qins");
    let error = convert_error(&daemon, &tiny_model().hf_dir, &output.display().to_string()).await;
    assert_eq!(error.code(), Code::ResourceExhausted, "{error:?}");
    assert!(
        error.message().contains("no space left on device")
            && error.message().contains(&output.display().to_string()),
        "{}",
        error.message()
    );
    assert_eq!(
        entries(&full),
        Vec::<String>::new(),
        "no output, no temp file"
    );
    assert_eq!(
        free_blocks(&full),
        free,
        "the temp file's space is given back"
    );
    still_serves(&daemon).await;
}

#[tokio::test]
async fn converting_into_a_read_only_dir_is_a_clear_error_with_nothing_written() {
    let daemon = Daemon::start(&[]).await;
    let source = &tiny_model().hf_dir;
    // A read-only tmpfs as an explicit target.
    let read_only = daemon.dir.path().join("ro");
    let Some(_tmpfs) = Mount::new(&["-t", "tmpfs", "-o", "ro,size=64k", "tmpfs"], &read_only)
    else {
        return;
    };
    let output = read_only.join("m.qins");
    let error = convert_error(&daemon, source, &output.display().to_string()).await;
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    assert!(
        error.message().contains("read-only file system")
            && error.message().contains(&output.display().to_string()),
        "{}",
        error.message()
    );
    assert_eq!(entries(&read_only), Vec::<String>::new());
    // The daemon's own models dir made read-only (bind-mounted over itself),
    // with the default output there.
    let models = &daemon.models_dir;
    let bind = Mount::new(&["--bind", &models.display().to_string()], models)
        .expect("a bind mount works where a tmpfs mount did");
    bind.remount_bind_read_only();
    let error = convert_error(&daemon, source, "").await;
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    let default_output = models.join("tinyhf.qins");
    assert!(
        error.message().contains("read-only file system")
            && error
                .message()
                .contains(&default_output.display().to_string()),
        "{}",
        error.message()
    );
    assert_eq!(entries(models), ["tiny.qins"]);
    still_serves(&daemon).await;
}
