//! Hostile gRPC input: invalid UTF-8, huge prompts, thousands of messages,
//! unwritable conversion targets. Each gets a clear error and the daemon
//! keeps serving.

use qins_e2e::*;
use qins_proto::v1::{ConvertRequest, Sampling};
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
    });
    let reply = chat(&mut client, request).await.expect("edge values");
    assert!(reply.done.usage.expect("usage").completion_tokens >= 1);
    still_serves(&daemon).await;
}

#[tokio::test]
async fn converting_to_an_unwritable_place_is_a_clear_error_with_nothing_written() {
    let daemon = Daemon::start(&[]).await;
    let mut client = daemon.client().await;
    let source = tiny_model().hf_dir.display().to_string();
    // A missing directory, and sysfs, where not even root may create files.
    let cases = [
        daemon.dir.path().join("no/such/dir/m.qins"),
        std::path::PathBuf::from("/sys/qins-e2e-m.qins"),
    ];
    for output in &cases {
        let request = ConvertRequest {
            source: source.clone(),
            output: output.display().to_string(),
            options: None,
        };
        let outcome = match client.convert(request).await {
            Err(status) => status,
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(_)) => continue,
                        Ok(None) => panic!("{} was written", output.display()),
                        Err(status) => break status,
                    }
                }
            }
        };
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
