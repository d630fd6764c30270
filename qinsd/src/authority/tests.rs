//! The `:authority` rewrite: first on byte streams (every split, padding,
//! priority, CONTINUATION, HPACK state across blocks, malformed input), then
//! against a real tonic server on a Unix socket, with the authorities stock
//! clients send and with tonic's own client.

use std::path::Path;
use std::time::Duration;

use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use super::*;

const PREFACE: &[u8; PREFACE_LEN] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_TYPE_DATA: u8 = 0x0;
const FRAME_TYPE_RST_STREAM: u8 = 0x3;
const FRAME_TYPE_SETTINGS: u8 = 0x4;
const FRAME_TYPE_PING: u8 = 0x6;
const FRAME_TYPE_GOAWAY: u8 = 0x7;
const FRAME_TYPE_WINDOW_UPDATE: u8 = 0x8;
const FLAG_ACK: u8 = 0x1;
/// RST_STREAM / GOAWAY error code PROTOCOL_ERROR.
const PROTOCOL_ERROR: u32 = 0x1;

/// What clients put in `:authority` for the socket `/tmp/q/qinsd.sock`:
/// grpc-java and grpcurl the raw path; gRPC C-core (Python, C++, Ruby)
/// percent-encodes it, without the leading slash (grpcio 1.85, seen in
/// h2's debug log) or, in other versions, with it.
const RAW_PATH: &[u8] = b"/tmp/q/qinsd.sock";
const PERCENT_ENCODED_PATH: &[u8] = b"tmp%2Fq%2Fqinsd.sock";
const PERCENT_ENCODED_ABSOLUTE_PATH: &[u8] = b"%2Ftmp%2Fq%2Fqinsd.sock";

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn field(name: &str, value: &[u8]) -> (Vec<u8>, Vec<u8>) {
    (name.as_bytes().to_vec(), value.to_vec())
}

/// The header list of a unary gRPC call, as a client sends it.
fn grpc_request(path: &str, authority: Option<&[u8]>) -> Fields {
    let mut fields = vec![
        field(":method", b"POST"),
        field(":scheme", b"http"),
        field(":path", path.as_bytes()),
    ];
    if let Some(authority) = authority {
        fields.push(field(":authority", authority));
    }
    fields.push(field("content-type", b"application/grpc"));
    fields.push(field("te", b"trailers"));
    fields.push(field(
        "user-agent",
        b"grpc-python/1.85.1 grpc-c/51.0.0 (linux; chttp2)",
    ));
    fields
}

fn frame(frame_type: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    FrameHeader {
        len: payload.len(),
        frame_type,
        flags,
        stream_id,
    }
    .write(&mut out);
    out.extend_from_slice(payload);
    out
}

fn encode(encoder: &mut Encoder<'static>, fields: &Fields) -> Vec<u8> {
    encoder.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])))
}

/// One header block as a single HEADERS frame with END_HEADERS.
fn headers_frame(encoder: &mut Encoder<'static>, stream_id: u32, fields: &Fields) -> Vec<u8> {
    frame(
        FRAME_TYPE_HEADERS,
        FLAG_END_HEADERS,
        stream_id,
        &encode(encoder, fields),
    )
}

/// Splits the rewriter's output (after the preface) into frames.
fn frames(mut bytes: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(header_bytes) = bytes.first_chunk::<FRAME_HEADER_LEN>() {
        let header = FrameHeader::parse(header_bytes);
        let end = FRAME_HEADER_LEN + header.len;
        out.push((header, bytes[FRAME_HEADER_LEN..end].to_vec()));
        bytes = &bytes[end..];
    }
    assert!(bytes.is_empty(), "a frame cut short in the output");
    out
}

/// Decodes every header block of the output with one decoder, as h2 does.
fn header_blocks(output: &[u8]) -> Vec<Fields> {
    let mut decoder = Decoder::new();
    let mut blocks = Vec::new();
    let mut open: Option<Vec<u8>> = None;
    for (header, payload) in frames(output) {
        match header.frame_type {
            FRAME_TYPE_HEADERS => {
                assert!(open.is_none(), "HEADERS inside an open block");
                assert_eq!(header.flags & FLAG_PADDED, 0, "no padding is written");
                let skip = if header.flags & FLAG_PRIORITY != 0 {
                    5
                } else {
                    0
                };
                open = Some(payload[skip..].to_vec());
            }
            FRAME_TYPE_CONTINUATION => open
                .as_mut()
                .expect("CONTINUATION after HEADERS")
                .extend_from_slice(&payload),
            _ => {
                assert!(open.is_none(), "a frame inside an open block");
                continue;
            }
        }
        if header.flags & FLAG_END_HEADERS != 0 {
            let block = open.take().expect("an open block");
            blocks.push(decoder.decode(&block).expect("the output decodes"));
        }
    }
    assert!(open.is_none(), "a block left open");
    blocks
}

fn rewrite_all(input: &[u8]) -> Result<Vec<u8>, RewriteError> {
    let mut out = Vec::new();
    AuthorityRewriter::new().feed(input, &mut out)?;
    Ok(out)
}

fn with_preface(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = PREFACE.to_vec();
    for f in frames {
        bytes.extend_from_slice(f);
    }
    bytes
}

fn authority_of(fields: &Fields) -> Option<&[u8]> {
    fields
        .iter()
        .find(|(name, _)| name == b":authority")
        .map(|(_, value)| &value[..])
}

#[test]
fn authorities_h2_refuses_become_localhost_and_nothing_else_changes() {
    for authority in [
        RAW_PATH,
        PERCENT_ENCODED_PATH,
        PERCENT_ENCODED_ABSOLUTE_PATH,
        b"",
    ] {
        assert!(
            !h2_accepts_authority(authority),
            "{authority:?} is one h2 refuses"
        );
        let request = grpc_request("/qins.v1.Qins/Stats", Some(authority));
        let input = with_preface(&[headers_frame(&mut Encoder::new(), 1, &request)]);
        let output = rewrite_all(&input).expect("rewrites");
        assert_eq!(&output[..PREFACE_LEN], PREFACE);
        let blocks = header_blocks(&output[PREFACE_LEN..]);
        let expected: Fields = request
            .iter()
            .map(|(name, value)| match &name[..] {
                b":authority" => field(":authority", REPLACEMENT_AUTHORITY),
                _ => (name.clone(), value.clone()),
            })
            .collect();
        assert_eq!(blocks, [expected], "for {authority:?}");
    }
}

#[test]
fn authorities_h2_accepts_are_kept() {
    for authority in [
        &b"localhost"[..],
        b"qinsd.local",
        b"localhost:50051",
        b"[::1]:8080",
    ] {
        assert!(h2_accepts_authority(authority), "{authority:?}");
        let request = grpc_request("/qins.v1.Qins/Stats", Some(authority));
        let input = with_preface(&[headers_frame(&mut Encoder::new(), 1, &request)]);
        let blocks = header_blocks(&rewrite_all(&input).expect("rewrites")[PREFACE_LEN..]);
        assert_eq!(blocks, [request]);
    }
}

#[test]
fn a_request_without_authority_stays_without() {
    let request = grpc_request("/qins.v1.Qins/Stats", None);
    let input = with_preface(&[headers_frame(&mut Encoder::new(), 1, &request)]);
    let blocks = header_blocks(&rewrite_all(&input).expect("rewrites")[PREFACE_LEN..]);
    assert_eq!(authority_of(&blocks[0]), None);
    assert_eq!(blocks, [request]);
}

/// A connection's worth of client bytes: settings, three requests whose
/// header blocks lean on the HPACK dynamic table, their messages, pings.
fn a_connection() -> (Vec<u8>, Vec<Fields>) {
    let mut encoder = Encoder::new();
    let mut frames = vec![
        frame(FRAME_TYPE_SETTINGS, 0, 0, &[0, 4, 0, 0, 0xff, 0xff]),
        frame(FRAME_TYPE_WINDOW_UPDATE, 0, 0, &[0, 0x0f, 0, 1]),
    ];
    let mut requests = Vec::new();
    for (i, authority) in [PERCENT_ENCODED_PATH, RAW_PATH, b"localhost"]
        .into_iter()
        .enumerate()
    {
        let stream_id = 2 * i as u32 + 1;
        let mut request = grpc_request("/qins.v1.Qins/Chat", Some(authority));
        request.push(field("x-request", format!("turn {i}").as_bytes()));
        frames.push(headers_frame(&mut encoder, stream_id, &request));
        frames.push(frame(
            FRAME_TYPE_DATA,
            FLAG_END_STREAM,
            stream_id,
            &[0, 0, 0, 0, 3, 0x0a, 1, b'x'],
        ));
        frames.push(frame(FRAME_TYPE_PING, 0, 0, &[i as u8; 8]));
        requests.push(request);
    }
    (with_preface(&frames), requests)
}

#[test]
fn any_split_of_the_input_gives_the_same_output() {
    let (input, requests) = a_connection();
    let whole = rewrite_all(&input).expect("rewrites");
    let blocks = header_blocks(&whole[PREFACE_LEN..]);
    assert_eq!(blocks.len(), 3);
    for (block, request) in blocks.iter().zip(&requests) {
        assert_eq!(block.len(), request.len());
        let expected = match authority_of(request) {
            Some(b"localhost") => b"localhost" as &[u8],
            _ => REPLACEMENT_AUTHORITY,
        };
        assert_eq!(authority_of(block), Some(expected));
    }
    for chunk in [1, 2, 7, 9, 10, 100] {
        let mut rewriter = AuthorityRewriter::new();
        let mut out = Vec::new();
        for piece in input.chunks(chunk) {
            rewriter.feed(piece, &mut out).expect("rewrites");
        }
        assert_eq!(out, whole, "input fed in pieces of {chunk}");
    }
}

#[test]
fn frames_other_than_header_blocks_pass_through_byte_for_byte() {
    let frames = [
        frame(FRAME_TYPE_SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]),
        frame(FRAME_TYPE_SETTINGS, FLAG_ACK, 0, &[]),
        frame(FRAME_TYPE_WINDOW_UPDATE, 0, 1, &[0, 0, 1, 0]),
        frame(FRAME_TYPE_PING, 0, 0, b"12345678"),
        frame(FRAME_TYPE_DATA, FLAG_PADDED, 1, &[2, b'a', b'b', 0, 0]),
        frame(FRAME_TYPE_DATA, 0, 3, &vec![0x5a; 70_000]),
        frame(FRAME_TYPE_RST_STREAM, 0, 1, &[0, 0, 0, 8]),
        frame(FRAME_TYPE_GOAWAY, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0]),
    ];
    let input = with_preface(&frames);
    assert_eq!(rewrite_all(&input).expect("passes through"), input);
}

#[test]
fn padding_is_dropped_priority_and_end_stream_are_kept_continuations_are_joined() {
    let request = grpc_request("/qins.v1.Qins/Stats", Some(PERCENT_ENCODED_PATH));
    let block = encode(&mut Encoder::new(), &request);
    let (first, second) = block.split_at(block.len() / 2);
    let priority = [0x80, 0, 0, 3, 200];
    let mut payload = vec![4]; // pad length
    payload.extend_from_slice(&priority);
    payload.extend_from_slice(first);
    payload.extend_from_slice(&[0; 4]);
    let input = with_preface(&[
        frame(
            FRAME_TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            5,
            &payload,
        ),
        frame(FRAME_TYPE_CONTINUATION, FLAG_END_HEADERS, 5, second),
    ]);
    let output = rewrite_all(&input).expect("rewrites");
    let out_frames = frames(&output[PREFACE_LEN..]);
    assert_eq!(out_frames.len(), 1, "one HEADERS frame holds the block");
    let (header, payload) = &out_frames[0];
    assert_eq!(header.frame_type, FRAME_TYPE_HEADERS);
    assert_eq!(header.stream_id, 5);
    assert_eq!(
        header.flags,
        FLAG_PRIORITY | FLAG_END_STREAM | FLAG_END_HEADERS
    );
    assert_eq!(payload[..5], priority);
    let blocks = header_blocks(&output[PREFACE_LEN..]);
    assert_eq!(authority_of(&blocks[0]), Some(REPLACEMENT_AUTHORITY));
}

#[test]
fn large_blocks_are_cut_into_frames_every_peer_accepts() {
    let mut request = grpc_request("/qins.v1.Qins/Chat", Some(RAW_PATH));
    request.push(field("x-big", &[b'v'; 40_000]));
    let block = encode(&mut Encoder::new(), &request);
    let mut input_frames = Vec::new();
    let pieces: Vec<&[u8]> = block.chunks(MAX_FRAME_PAYLOAD).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let last = if i + 1 == pieces.len() {
            FLAG_END_HEADERS
        } else {
            0
        };
        let frame_type = if i == 0 {
            FRAME_TYPE_HEADERS
        } else {
            FRAME_TYPE_CONTINUATION
        };
        input_frames.push(frame(frame_type, last, 1, piece));
    }
    let output = rewrite_all(&with_preface(&input_frames)).expect("rewrites");
    let out_frames = frames(&output[PREFACE_LEN..]);
    assert!(out_frames.len() >= 3, "40 kB needs three frames");
    for (i, (header, payload)) in out_frames.iter().enumerate() {
        assert!(payload.len() <= MAX_FRAME_PAYLOAD);
        let expected_type = if i == 0 {
            FRAME_TYPE_HEADERS
        } else {
            FRAME_TYPE_CONTINUATION
        };
        assert_eq!(header.frame_type, expected_type);
        let is_last = i + 1 == out_frames.len();
        assert_eq!(header.flags & FLAG_END_HEADERS != 0, is_last);
    }
    let blocks = header_blocks(&output[PREFACE_LEN..]);
    assert_eq!(authority_of(&blocks[0]), Some(REPLACEMENT_AUTHORITY));
    assert_eq!(blocks[0].last(), request.last());
}

#[test]
fn the_hpack_tables_stay_in_step_over_many_requests() {
    let mut client = Encoder::new();
    let mut input = vec![PREFACE.to_vec()];
    let mut expected = Vec::new();
    for i in 0..200u32 {
        let authority = if i % 2 == 0 {
            RAW_PATH
        } else {
            PERCENT_ENCODED_PATH
        };
        let mut request = grpc_request("/qins.v1.Qins/Chat", Some(authority));
        // New values keep evicting entries from both 4 KiB tables.
        request.push(field("x-session", format!("session-{}", i % 17).as_bytes()));
        request.push(field(
            &format!("x-custom-{}", i % 5),
            &vec![b'a' + (i % 26) as u8; 300],
        ));
        input.push(headers_frame(&mut client, 2 * i + 1, &request));
        expected.push(
            request
                .into_iter()
                .map(|(n, v)| match &n[..] {
                    b":authority" => field(":authority", REPLACEMENT_AUTHORITY),
                    _ => (n, v),
                })
                .collect::<Fields>(),
        );
    }
    let output = rewrite_all(&input.concat()).expect("rewrites");
    assert_eq!(header_blocks(&output[PREFACE_LEN..]), expected);
}

#[test]
fn malformed_input_is_an_error_never_a_panic() {
    let headers = |flags: u8, payload: &[u8]| frame(FRAME_TYPE_HEADERS, flags, 1, payload);
    let too_long = {
        let mut header = Vec::new();
        FrameHeader {
            len: MAX_HEADER_BLOCK_BYTES + 1,
            frame_type: FRAME_TYPE_HEADERS,
            flags: 0,
            stream_id: 1,
        }
        .write(&mut header);
        header
    };
    // (what, bytes after the preface, the error's Debug form contains)
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "an index past both tables",
            headers(FLAG_END_HEADERS, &[0xff, 0x7f]),
            "HeaderIndexOutOfBounds",
        ),
        (
            "a truncated table size update",
            headers(FLAG_END_HEADERS, &[0x3f]),
            "NotEnoughOctets",
        ),
        (
            "a table larger than announced",
            headers(FLAG_END_HEADERS, &[0x3f, 0xe1, 0x3f, 0x82]),
            "InvalidMaxDynamicSize",
        ),
        (
            "a string longer than the block",
            headers(FLAG_END_HEADERS, &[0x40, 0x7f, 0x10, b'a']),
            "NotEnoughOctets",
        ),
        (
            "bad Huffman padding",
            headers(FLAG_END_HEADERS, &[0x40, 0x81, 0x00, 0x81, 0x00]),
            "InvalidPadding",
        ),
        (
            "padding longer than the payload",
            headers(FLAG_END_HEADERS | FLAG_PADDED, &[9, 0x82]),
            "BadHeadersPayload",
        ),
        (
            "priority cut short",
            headers(FLAG_END_HEADERS | FLAG_PRIORITY, &[0, 0]),
            "BadHeadersPayload",
        ),
        (
            "CONTINUATION without HEADERS",
            frame(FRAME_TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &[0x82]),
            "OrphanContinuation",
        ),
        (
            "DATA inside a header block",
            [headers(0, &[0x82]), frame(FRAME_TYPE_DATA, 0, 1, b"x")].concat(),
            "InterleavedFrame",
        ),
        (
            "CONTINUATION of another stream",
            [
                headers(0, &[0x82]),
                frame(FRAME_TYPE_CONTINUATION, FLAG_END_HEADERS, 3, &[0x84]),
            ]
            .concat(),
            "InterleavedFrame",
        ),
        (
            "a header frame over the block limit",
            too_long,
            "BlockTooLarge",
        ),
    ];
    for (what, bytes, expected) in cases {
        match rewrite_all(&with_preface(&[bytes])) {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => assert!(format!("{e:?}").contains(expected), "{what}: {e:?}"),
        }
    }
}

#[test]
fn a_decompression_bomb_is_refused_without_building_it() {
    // One 4000-byte entry in the dynamic table, then 20,000 one-byte
    // references to it: 80 MB of headers from a 20 kB block.
    let mut block = vec![0x40, 1, b'b'];
    block.extend_from_slice(&loona_hpack::encoder::encode_integer(4_000, 7));
    block.extend_from_slice(&[b'v'; 4_000]);
    block.extend_from_slice(&[0x80 | 62; 20_000]);
    let mut frames = Vec::new();
    let pieces: Vec<&[u8]> = block.chunks(MAX_FRAME_PAYLOAD).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let flags = if i + 1 == pieces.len() {
            FLAG_END_HEADERS
        } else {
            0
        };
        let frame_type = if i == 0 {
            FRAME_TYPE_HEADERS
        } else {
            FRAME_TYPE_CONTINUATION
        };
        frames.push(frame(frame_type, flags, 1, piece));
    }
    assert!(matches!(
        rewrite_all(&with_preface(&frames)),
        Err(RewriteError::ListTooLarge)
    ));
}

// ---- Against a real tonic server ----

/// A tonic server with only the health service, behind the same accept loop
/// (peer uid check + rewrite) as qinsd, or behind a bare one.
async fn health_server(socket: &Path, with_fix: bool) {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = UnixListener::bind(socket).expect("binds the test socket");
    let router = tonic::transport::Server::builder().add_service(health);
    if with_fix {
        let incoming = crate::server::accept_same_user(listener);
        tokio::spawn(router.serve_with_incoming(incoming));
    } else {
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        tokio::spawn(router.serve_with_incoming(incoming));
    }
}

/// How a raw HTTP/2 call ended.
#[derive(Debug, PartialEq)]
enum CallEnd {
    /// Response headers, the message bytes, and trailers.
    Answered {
        status: Vec<u8>,
        message: Vec<u8>,
        grpc_status: Vec<u8>,
    },
    Reset(u32),
}

/// A minimal HTTP/2 client that can send any `:authority`, as stock gRPC
/// clients do (tonic's own client cannot: `http::Uri` refuses them).
struct RawClient {
    socket: UnixStream,
    encoder: Encoder<'static>,
    decoder: Decoder<'static>,
    input: Vec<u8>,
}

impl RawClient {
    async fn connect(path: &Path) -> Self {
        let mut socket = UnixStream::connect(path).await.expect("connects");
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(FRAME_TYPE_SETTINGS, 0, 0, &[]));
        socket.write_all(&hello).await.expect("writes the preface");
        RawClient {
            socket,
            encoder: Encoder::new(),
            decoder: Decoder::new(),
            input: Vec::new(),
        }
    }

    async fn read_frame(&mut self) -> (FrameHeader, Vec<u8>) {
        loop {
            if let Some(header_bytes) = self.input.first_chunk::<FRAME_HEADER_LEN>() {
                let header = FrameHeader::parse(header_bytes);
                let end = FRAME_HEADER_LEN + header.len;
                if self.input.len() >= end {
                    let payload = self.input[FRAME_HEADER_LEN..end].to_vec();
                    self.input.drain(..end);
                    return (header, payload);
                }
            }
            let mut chunk = [0; 4096];
            let n = self.socket.read(&mut chunk).await.expect("reads");
            assert!(n > 0, "the server closed the connection");
            self.input.extend_from_slice(&chunk[..n]);
        }
    }

    /// `grpc.health.v1.Health/Check` for the overall status ("" service).
    async fn health_check(&mut self, stream_id: u32, authority: Option<&[u8]>) -> CallEnd {
        let request = grpc_request("/grpc.health.v1.Health/Check", authority);
        let mut bytes = headers_frame(&mut self.encoder, stream_id, &request);
        // An empty HealthCheckRequest: uncompressed flag, zero length.
        bytes.extend(frame(FRAME_TYPE_DATA, FLAG_END_STREAM, stream_id, &[0; 5]));
        self.socket
            .write_all(&bytes)
            .await
            .expect("writes the call");
        let (mut status, mut message) = (Vec::new(), Vec::new());
        loop {
            let (header, payload) = self.read_frame().await;
            match header.frame_type {
                FRAME_TYPE_SETTINGS if header.flags & FLAG_ACK == 0 => {
                    let ack = frame(FRAME_TYPE_SETTINGS, FLAG_ACK, 0, &[]);
                    self.socket.write_all(&ack).await.expect("acks settings");
                }
                FRAME_TYPE_GOAWAY => panic!("GOAWAY from the server: {payload:?}"),
                FRAME_TYPE_RST_STREAM if header.stream_id == stream_id => {
                    let code = payload.first_chunk::<4>().expect("a 4-byte error code");
                    return CallEnd::Reset(u32::from_be_bytes(*code));
                }
                FRAME_TYPE_DATA if header.stream_id == stream_id => {
                    message.extend_from_slice(&payload);
                }
                FRAME_TYPE_HEADERS if header.stream_id == stream_id => {
                    assert_ne!(
                        header.flags & FLAG_END_HEADERS,
                        0,
                        "small blocks fit one frame"
                    );
                    let fields = self
                        .decoder
                        .decode(&payload)
                        .expect("the server's HPACK decodes");
                    let value = |name: &[u8]| {
                        fields
                            .iter()
                            .find(|(n, _)| n == name)
                            .map(|(_, v)| v.clone())
                    };
                    if let Some(s) = value(b":status") {
                        status = s;
                    }
                    if header.flags & FLAG_END_STREAM != 0 {
                        return CallEnd::Answered {
                            status,
                            message,
                            grpc_status: value(b"grpc-status").unwrap_or_default(),
                        };
                    }
                }
                _ => {}
            }
        }
    }
}

/// HealthCheckResponse { status: SERVING } in gRPC's length-prefixed framing.
const SERVING: &[u8] = &[0, 0, 0, 0, 2, 0x08, 0x01];

fn served() -> CallEnd {
    CallEnd::Answered {
        status: b"200".to_vec(),
        message: SERVING.to_vec(),
        grpc_status: b"0".to_vec(),
    }
}

async fn within<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .expect("the call ends within 20 s")
}

#[tokio::test]
async fn h2_alone_resets_calls_whose_authority_is_a_socket_path() {
    // The problem this module exists for. If this fails, h2 has learned to
    // accept such authorities and the rewrite may be removable.
    let dir = tempfile::tempdir().expect("a temp dir");
    let socket = dir.path().join("bare.sock");
    health_server(&socket, false).await;
    for authority in [
        RAW_PATH,
        PERCENT_ENCODED_PATH,
        PERCENT_ENCODED_ABSOLUTE_PATH,
    ] {
        let mut client = RawClient::connect(&socket).await;
        let end = within(client.health_check(1, Some(authority))).await;
        assert_eq!(end, CallEnd::Reset(PROTOCOL_ERROR), "{authority:?}");
    }
}

#[tokio::test]
async fn every_authority_a_stock_client_sends_is_served() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let socket = dir.path().join("fixed.sock");
    health_server(&socket, true).await;
    let authorities: [Option<&[u8]>; 7] = [
        Some(PERCENT_ENCODED_PATH),
        Some(PERCENT_ENCODED_ABSOLUTE_PATH),
        Some(RAW_PATH),
        Some(b"localhost"),
        Some(b""),
        None,
        Some(b"qinsd.local"),
    ];
    // Each on its own connection, then all on one (HPACK state carried
    // from call to call through both tables).
    for authority in authorities {
        let mut client = RawClient::connect(&socket).await;
        let end = within(client.health_check(1, authority)).await;
        assert_eq!(end, served(), "authority {authority:?}");
    }
    let mut client = RawClient::connect(&socket).await;
    for round in 0..3u32 {
        for (i, authority) in authorities.into_iter().enumerate() {
            let stream_id = 2 * (round * authorities.len() as u32 + i as u32) + 1;
            let end = within(client.health_check(stream_id, authority)).await;
            assert_eq!(
                end,
                served(),
                "authority {authority:?} on stream {stream_id}"
            );
        }
    }
}

#[tokio::test]
async fn tonic_clients_are_served_as_before() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let dir = tempfile::tempdir().expect("a temp dir");
    let socket = dir.path().join("fixed.sock");
    health_server(&socket, true).await;
    let channel = qins_proto::socket::connect(&socket)
        .await
        .expect("a channel");
    let mut health = HealthClient::new(channel);
    for _ in 0..3 {
        let reply = within(health.check(HealthCheckRequest::default()))
            .await
            .expect("Check is served");
        assert_eq!(reply.into_inner().status(), ServingStatus::Serving);
    }
    // A server stream over the same connection.
    let mut watch = within(health.watch(HealthCheckRequest::default()))
        .await
        .expect("Watch is served")
        .into_inner();
    let first = within(watch.message())
        .await
        .expect("a status")
        .expect("the stream is open");
    assert_eq!(first.status(), ServingStatus::Serving);
}
