//! Lets every stock gRPC client talk to qinsd over its Unix socket, whatever
//! HTTP/2 `:authority` it sends.
//!
//! gRPC's C-core clients (Python, C++, Ruby, PHP) send the socket path,
//! percent-encoded, as `:authority` when they dial `unix:/path`; grpc-java
//! and grpcurl send the raw path. The `h2` server under tonic parses
//! `:authority` as a URI authority and resets the stream with PROTOCOL_ERROR
//! when that fails (a `/`, or a `%` in a host), and no h2, hyper or tonic
//! option relaxes it. So every connection's inbound bytes pass through
//! [`AuthorityRewriter`] before h2 reads them: it decodes each header block
//! (HEADERS plus its CONTINUATION frames) with the client's HPACK state,
//! replaces an `:authority` that h2 would refuse with
//! [`REPLACEMENT_AUTHORITY`], and encodes the block again with an HPACK
//! encoder whose state h2's decoder follows. Every other frame, and the
//! server's outbound bytes, pass through untouched.
//!
//! The authority names nothing on a Unix socket (there is one server behind
//! it), so replacing it loses nothing; a valid one (`localhost`, tonic's
//! `qinsd.local`) is kept as it is, and a request without one stays without.

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use loona_hpack::decoder::DecoderError;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What an `:authority` that h2 cannot parse is replaced with: the name
/// grpc-go and Kubernetes send on a Unix socket.
pub const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

/// The client connection preface ("PRI * HTTP/2.0...") that precedes the
/// first frame; passed through as it is (h2 checks it).
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const FRAME_TYPE_HEADERS: u8 = 0x1;
const FRAME_TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// Stream dependency (4 bytes) and weight (1) of a HEADERS frame with PRIORITY.
const PRIORITY_LEN: usize = 5;
/// The largest frame payload every HTTP/2 endpoint accepts (the initial
/// SETTINGS_MAX_FRAME_SIZE); re-encoded blocks are cut into frames this big.
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// HPACK dynamic table size of both sides: the protocol default, which h2
/// uses because tonic sets no SETTINGS_HEADER_TABLE_SIZE.
const HPACK_TABLE_SIZE: usize = 4_096;
/// Limits on one header block, compressed and decoded (names + values + 32
/// per field, as HTTP/2 counts them). hyper refuses header lists over 16 KiB
/// anyway; these only bound what this layer buffers before h2 sees it.
const MAX_HEADER_BLOCK_BYTES: usize = 64 * 1024;
const MAX_HEADER_LIST_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("cannot decode a header block: {0}")]
    Hpack(#[from] DecoderError),
    #[error("a header block over {MAX_HEADER_BLOCK_BYTES} bytes")]
    BlockTooLarge,
    #[error("a header list over {MAX_HEADER_LIST_BYTES} bytes")]
    ListTooLarge,
    #[error("a frame of type {frame_type:#x} inside the header block of stream {stream_id}")]
    InterleavedFrame { frame_type: u8, stream_id: u32 },
    #[error("a CONTINUATION frame on stream {stream_id} without an open header block")]
    OrphanContinuation { stream_id: u32 },
    #[error("a HEADERS frame on stream {stream_id} whose padding or priority exceeds its payload")]
    BadHeadersPayload { stream_id: u32 },
}

/// A decoded header field: name and value.
type HeaderField = (Vec<u8>, Vec<u8>);

/// The 9-byte header every HTTP/2 frame starts with.
#[derive(Clone, Copy, Debug)]
struct FrameHeader {
    len: usize,
    frame_type: u8,
    flags: u8,
    stream_id: u32,
}

impl FrameHeader {
    fn parse(bytes: &[u8; FRAME_HEADER_LEN]) -> Self {
        FrameHeader {
            len: usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]),
            frame_type: bytes[3],
            flags: bytes[4],
            // The top bit is reserved and ignored on receipt.
            stream_id: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        debug_assert!(self.len < 1 << 24, "a frame length has 24 bits");
        // The low three bytes of the big-endian u64.
        out.extend_from_slice(&(self.len as u64).to_be_bytes()[5..]);
        out.push(self.frame_type);
        out.push(self.flags);
        out.extend_from_slice(&self.stream_id.to_be_bytes());
    }
}

/// A header block whose HEADERS frame has arrived but not its END_HEADERS.
struct OpenBlock {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
    fragment: Vec<u8>,
}

/// The sans-IO core: takes the client's bytes in any split, gives back what
/// h2 should read. One per connection (HPACK state is per connection).
pub struct AuthorityRewriter {
    preface_left: usize,
    /// Bytes of a frame not yet complete enough to act on.
    input: Vec<u8>,
    /// Payload bytes of a passed-through frame still to forward.
    passthrough_left: usize,
    open_block: Option<OpenBlock>,
    /// Mirrors the client's encoder.
    decoder: loona_hpack::Decoder<'static>,
    /// Feeds h2's decoder: every block h2 sees comes from here, in order.
    encoder: loona_hpack::Encoder<'static>,
}

impl Default for AuthorityRewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl AuthorityRewriter {
    pub fn new() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HPACK_TABLE_SIZE);
        let mut encoder = loona_hpack::Encoder::new();
        encoder.set_max_table_size(HPACK_TABLE_SIZE);
        AuthorityRewriter {
            preface_left: PREFACE_LEN,
            input: Vec::new(),
            passthrough_left: 0,
            open_block: None,
            decoder,
            encoder,
        }
    }

    /// Consumes the next bytes the client sent and appends to `out` what h2
    /// should read. After an error the connection cannot go on (the HPACK
    /// states no longer match); the caller closes it.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let preface = self.preface_left.min(bytes.len());
        out.extend_from_slice(&bytes[..preface]);
        self.preface_left -= preface;
        bytes = &bytes[preface..];

        // Stream the payload of a passed-through frame without buffering it.
        if self.input.is_empty() {
            let forwarded = self.passthrough_left.min(bytes.len());
            out.extend_from_slice(&bytes[..forwarded]);
            self.passthrough_left -= forwarded;
            bytes = &bytes[forwarded..];
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let mut input = std::mem::take(&mut self.input);
        input.extend_from_slice(bytes);
        let consumed = self.process(&input, out)?;
        // Keep what could not be acted on yet (reusing the allocation).
        input.drain(..consumed);
        self.input = input;
        Ok(())
    }

    /// Acts on every complete unit in `input`; returns how many bytes it used.
    fn process(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, RewriteError> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            if self.passthrough_left > 0 {
                let forwarded = self.passthrough_left.min(rest.len());
                if forwarded == 0 {
                    return Ok(pos);
                }
                out.extend_from_slice(&rest[..forwarded]);
                self.passthrough_left -= forwarded;
                pos += forwarded;
                continue;
            }
            let Some(header_bytes) = rest.first_chunk::<FRAME_HEADER_LEN>() else {
                return Ok(pos);
            };
            let header = FrameHeader::parse(header_bytes);
            let is_header_frame = matches!(
                header.frame_type,
                FRAME_TYPE_HEADERS | FRAME_TYPE_CONTINUATION
            );
            if !is_header_frame {
                if let Some(block) = &self.open_block {
                    return Err(RewriteError::InterleavedFrame {
                        frame_type: header.frame_type,
                        stream_id: block.stream_id,
                    });
                }
                out.extend_from_slice(header_bytes);
                self.passthrough_left = header.len;
                pos += FRAME_HEADER_LEN;
                continue;
            }
            if header.len > MAX_HEADER_BLOCK_BYTES {
                return Err(RewriteError::BlockTooLarge);
            }
            let Some(payload) = rest[FRAME_HEADER_LEN..].get(..header.len) else {
                return Ok(pos);
            };
            self.on_header_frame(header, payload, out)?;
            pos += FRAME_HEADER_LEN + header.len;
        }
    }

    fn on_header_frame(
        &mut self,
        header: FrameHeader,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), RewriteError> {
        if header.frame_type == FRAME_TYPE_HEADERS {
            if let Some(block) = &self.open_block {
                return Err(RewriteError::InterleavedFrame {
                    frame_type: header.frame_type,
                    stream_id: block.stream_id,
                });
            }
            self.open_block = Some(open_headers(header, payload)?);
        } else {
            let block = match &mut self.open_block {
                Some(block) if block.stream_id == header.stream_id => block,
                Some(block) => {
                    return Err(RewriteError::InterleavedFrame {
                        frame_type: header.frame_type,
                        stream_id: block.stream_id,
                    });
                }
                None => {
                    return Err(RewriteError::OrphanContinuation {
                        stream_id: header.stream_id,
                    });
                }
            };
            if block.fragment.len() + payload.len() > MAX_HEADER_BLOCK_BYTES {
                return Err(RewriteError::BlockTooLarge);
            }
            block.fragment.extend_from_slice(payload);
        }
        if header.flags & FLAG_END_HEADERS != 0
            && let Some(block) = self.open_block.take()
        {
            let fields = self.decode_fixing_authority(&block.fragment)?;
            let encoded = self
                .encoder
                .encode(fields.iter().map(|(name, value)| (&name[..], &value[..])));
            write_header_frames(&block, &encoded, out);
        }
        Ok(())
    }

    /// Decodes one complete header block, replacing every `:authority` that
    /// h2 would refuse.
    fn decode_fixing_authority(&mut self, block: &[u8]) -> Result<Vec<HeaderField>, RewriteError> {
        let mut fields = Vec::new();
        let mut list_bytes = 0usize;
        let mut too_large = false;
        self.decoder
            .decode_with_cb(block, |name: Cow<[u8]>, value: Cow<[u8]>| {
                // Decoding goes on to the end (the table must stay in step
                // with the client's), but nothing more is kept.
                list_bytes = list_bytes.saturating_add(name.len() + value.len() + 32);
                too_large |= list_bytes > MAX_HEADER_LIST_BYTES;
                if too_large {
                    return;
                }
                let value = if &name[..] == b":authority" && !h2_accepts_authority(&value) {
                    tracing::debug!(
                        authority = %String::from_utf8_lossy(&value),
                        "replacing an :authority h2 would refuse"
                    );
                    Cow::Borrowed(REPLACEMENT_AUTHORITY)
                } else {
                    value
                };
                fields.push((name.into_owned(), value.into_owned()));
            })?;
        if too_large {
            return Err(RewriteError::ListTooLarge);
        }
        Ok(fields)
    }
}

/// Opens a header block from a HEADERS frame: strips the padding, keeps the
/// priority fields.
fn open_headers(header: FrameHeader, payload: &[u8]) -> Result<OpenBlock, RewriteError> {
    let malformed = || RewriteError::BadHeadersPayload {
        stream_id: header.stream_id,
    };
    let mut body = payload;
    let mut padding = 0;
    if header.flags & FLAG_PADDED != 0 {
        let (&pad_len, rest) = body.split_first().ok_or_else(malformed)?;
        padding = usize::from(pad_len);
        body = rest;
    }
    let mut priority = None;
    if header.flags & FLAG_PRIORITY != 0 {
        let (fields, rest) = body
            .split_first_chunk::<PRIORITY_LEN>()
            .ok_or_else(malformed)?;
        priority = Some(*fields);
        body = rest;
    }
    let fragment_len = body.len().checked_sub(padding).ok_or_else(malformed)?;
    Ok(OpenBlock {
        stream_id: header.stream_id,
        end_stream: header.flags & FLAG_END_STREAM != 0,
        priority,
        fragment: body[..fragment_len].to_vec(),
    })
}

/// Whether h2 takes this `:authority`: it parses it with `http`'s authority
/// parser and resets the stream when that fails.
fn h2_accepts_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// Writes a re-encoded header block as one HEADERS frame and as many
/// CONTINUATION frames as its size needs, END_HEADERS on the last.
fn write_header_frames(block: &OpenBlock, encoded: &[u8], out: &mut Vec<u8>) {
    let priority: &[u8] = block.priority.as_ref().map_or(&[], |p| &p[..]);
    let first_len = encoded.len().min(MAX_FRAME_PAYLOAD - priority.len());
    let (first, mut rest) = encoded.split_at(first_len);
    let mut flags = 0;
    if block.end_stream {
        flags |= FLAG_END_STREAM;
    }
    if block.priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    FrameHeader {
        len: priority.len() + first.len(),
        frame_type: FRAME_TYPE_HEADERS,
        flags,
        stream_id: block.stream_id,
    }
    .write(out);
    out.extend_from_slice(priority);
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME_PAYLOAD));
        rest = tail;
        FrameHeader {
            len: chunk.len(),
            frame_type: FRAME_TYPE_CONTINUATION,
            flags: if rest.is_empty() { FLAG_END_HEADERS } else { 0 },
            stream_id: block.stream_id,
        }
        .write(out);
        out.extend_from_slice(chunk);
    }
}

/// How many client bytes one read takes from the socket.
const READ_CHUNK: usize = 16 * 1024;

/// A server-side connection whose inbound bytes pass through an
/// [`AuthorityRewriter`]; writes go straight to the inner stream.
pub struct AuthorityFixingStream<S> {
    inner: S,
    rewriter: AuthorityRewriter,
    /// Rewritten bytes not yet handed to the reader, from `ready_pos` on.
    ready: Vec<u8>,
    ready_pos: usize,
    scratch: Box<[u8]>,
}

impl<S> AuthorityFixingStream<S> {
    pub fn new(inner: S) -> Self {
        AuthorityFixingStream {
            inner,
            rewriter: AuthorityRewriter::new(),
            ready: Vec::new(),
            ready_pos: 0,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFixingStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready_pos < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.ready_pos);
                buf.put_slice(&this.ready[this.ready_pos..this.ready_pos + n]);
                this.ready_pos += n;
                if this.ready_pos == this.ready.len() {
                    this.ready.clear();
                    this.ready_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut raw = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut raw))?;
            if raw.filled().is_empty() {
                return Poll::Ready(Ok(())); // end of stream
            }
            this.rewriter
                .feed(raw.filled(), &mut this.ready)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            // A frame may still be incomplete (nothing ready yet): read on.
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFixingStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFixingStream<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests;
