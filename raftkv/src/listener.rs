//! Client connections: the TCP listener the HTTP/gRPC server accepts from, and a byte-stream
//! shim on each connection that repairs one incompatibility between grpc-go clients and
//! hyper's HTTP/2 server.
//!
//! etcd's Go client dials some endpoints as `passthrough:///http://host:port` (etcdctl's
//! `endpoint status` and `endpoint hashkv` with `--endpoints=http://...`), so its requests
//! carry `:authority: http://host:port`. grpc-go servers ignore that; the `h2` crate rejects
//! it as a malformed authority and resets the stream (hyperium/h2#525, declined upstream).
//! The shim sits between the socket and hyper and decodes the connection's first request
//! header block. If its `:authority` parses (every client but the one above), the
//! connection passes through untouched from then on: grpc-go sends one authority per
//! connection, and decoding every block would cost each request a full HPACK decode. If not,
//! the shim rewrites that block and every later one (HPACK is stateful, so once one block
//! is rewritten all must be): it replaces an `:authority` that does not parse with its
//! `host:port` part (or drops it), and re-encodes the block as literals without indexing,
//! which keeps hyper's decoder table empty and always in step.
//!
//! Only the client-to-server direction is touched, and only HEADERS/CONTINUATION frames;
//! HTTP/1.1 connections (`/health`, `/metrics`) pass through byte for byte.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Frame header layout: | length: u24 BE | type: u8 | flags: u8 | R + stream id: u32 BE |.
const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// Largest frame the shim emits: HTTP/2's default SETTINGS_MAX_FRAME_SIZE, which every
/// server accepts whatever it advertised.
const MAX_FRAME: usize = 16_384;
/// A header block larger than this is refused (hyper's own limit is 16 KiB of headers).
const MAX_HEADER_BLOCK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("malformed HTTP/2 frame: {0}")]
    Frame(&'static str),
    #[error("undecodable HPACK header block: {0}")]
    Hpack(String),
}

enum Mode {
    /// Not yet known whether this is HTTP/2 prior knowledge or HTTP/1.
    Sniffing,
    Http2,
    Passthrough,
}

struct PendingHeaders {
    stream_id: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
    /// The block's frames as they came, to pass on unchanged.
    raw: Vec<u8>,
}

/// Rewrites the client-to-server bytes of one connection.
pub struct Rewriter {
    mode: Mode,
    input: Vec<u8>,
    decoder: loona_hpack::Decoder<'static>,
    pending: Option<PendingHeaders>,
    /// A block was rewritten: every later one must be too.
    rewriting: bool,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self {
            mode: Mode::Sniffing,
            input: Vec::new(),
            decoder: loona_hpack::Decoder::new(),
            pending: None,
            rewriting: false,
        }
    }
}

/// Returns the authority to forward: the original when it parses, else its `host:port` part,
/// else none.
fn repair_authority(value: &[u8]) -> Option<Vec<u8>> {
    let parses =
        |v: &[u8]| std::str::from_utf8(v).is_ok_and(|s| http::uri::Authority::from_str(s).is_ok());
    if parses(value) {
        return Some(value.to_vec());
    }
    let s = std::str::from_utf8(value).ok()?;
    let rest = s.split_once("://").map_or(s, |(_, r)| r);
    let hostport = rest.split('/').next().unwrap_or_default();
    parses(hostport.as_bytes()).then(|| hostport.as_bytes().to_vec())
}

/// HPACK integer with an `n`-bit prefix (RFC 7541 §5.1), first byte OR-ed with `mask`.
fn encode_int(out: &mut Vec<u8>, mask: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(mask | v as u8);
        return;
    }
    out.push(mask | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// Literal header field without indexing, new name, no Huffman (RFC 7541 §6.2.2).
fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    encode_int(out, 0, 7, name.len());
    out.extend_from_slice(name);
    encode_int(out, 0, 7, value.len());
    out.extend_from_slice(value);
}

fn push_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream_id: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

impl Rewriter {
    /// Takes bytes read from the client; appends what the server should read to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        self.input.extend_from_slice(data);
        loop {
            match self.mode {
                Mode::Sniffing => {
                    let n = self.input.len().min(PREFACE.len());
                    if self.input[..n] != PREFACE[..n] {
                        self.mode = Mode::Passthrough;
                    } else if n == PREFACE.len() {
                        out.extend(self.input.drain(..n));
                        self.mode = Mode::Http2;
                    } else {
                        return Ok(());
                    }
                }
                Mode::Passthrough => {
                    out.append(&mut self.input);
                    return Ok(());
                }
                Mode::Http2 => {
                    if self.input.len() < FRAME_HEADER_LEN {
                        return Ok(());
                    }
                    let len = u32::from_be_bytes([0, self.input[0], self.input[1], self.input[2]])
                        as usize;
                    if self.input.len() < FRAME_HEADER_LEN + len {
                        return Ok(());
                    }
                    let frame: Vec<u8> = self.input.drain(..FRAME_HEADER_LEN + len).collect();
                    self.frame(&frame, out)?;
                }
            }
        }
    }

    fn frame(&mut self, frame: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let (kind, flags) = (frame[3], frame[4]);
        let stream_id = u32::from_be_bytes(frame[5..9].try_into().expect("4 bytes")) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER_LEN..];
        match kind {
            TYPE_HEADERS => {
                if self.pending.is_some() {
                    return Err(RewriteError::Frame("HEADERS inside a header block"));
                }
                let mut p = payload;
                if flags & FLAG_PADDED != 0 {
                    let (&pad, rest) = p
                        .split_first()
                        .ok_or(RewriteError::Frame("padded HEADERS without pad length"))?;
                    p = rest
                        .get(
                            ..rest
                                .len()
                                .checked_sub(pad as usize)
                                .ok_or(RewriteError::Frame("padding"))?,
                        )
                        .expect("checked");
                }
                let mut priority = None;
                if flags & FLAG_PRIORITY != 0 {
                    let (pri, rest) = p
                        .split_at_checked(5)
                        .ok_or(RewriteError::Frame("short PRIORITY fields"))?;
                    priority = Some(pri.try_into().expect("5 bytes"));
                    p = rest;
                }
                self.pending = Some(PendingHeaders {
                    stream_id,
                    flags,
                    priority,
                    block: p.to_vec(),
                    raw: frame.to_vec(),
                });
            }
            TYPE_CONTINUATION => {
                let pending = self
                    .pending
                    .as_mut()
                    .ok_or(RewriteError::Frame("CONTINUATION outside a header block"))?;
                if pending.stream_id != stream_id {
                    return Err(RewriteError::Frame("CONTINUATION on another stream"));
                }
                pending.block.extend_from_slice(payload);
                pending.raw.extend_from_slice(frame);
                if pending.block.len() > MAX_HEADER_BLOCK {
                    return Err(RewriteError::Frame("header block too large"));
                }
            }
            _ => {
                if self.pending.is_some() {
                    return Err(RewriteError::Frame("frame inside a header block"));
                }
                out.extend_from_slice(frame);
                return Ok(());
            }
        }
        if flags & FLAG_END_HEADERS != 0 {
            let pending = self.pending.take().expect("set above");
            self.emit_headers(pending, out)?;
        }
        Ok(())
    }

    fn emit_headers(&mut self, h: PendingHeaders, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let headers = self
            .decoder
            .decode(&h.block)
            .map_err(|e| RewriteError::Hpack(format!("{e:?}")))?;
        let sound = headers.iter().all(|(name, value)| {
            name != b":authority" || repair_authority(value).as_ref() == Some(value)
        });
        if sound && !self.rewriting {
            // The first block is fine: hyper sees this connection exactly as sent.
            out.extend_from_slice(&h.raw);
            self.mode = Mode::Passthrough;
            return Ok(());
        }
        self.rewriting = true;
        let mut block = Vec::with_capacity(h.block.len() * 2);
        for (name, value) in headers {
            if name == b":authority" {
                match repair_authority(&value) {
                    Some(v) => encode_literal(&mut block, &name, &v),
                    None => continue,
                }
            } else {
                encode_literal(&mut block, &name, &value);
            }
        }
        let mut first = Vec::new();
        let mut flags = (h.flags & FLAG_END_STREAM) | (h.flags & FLAG_PRIORITY);
        if let Some(p) = h.priority {
            first.extend_from_slice(&p);
        }
        let room = MAX_FRAME - first.len();
        let (head, mut rest) = block.split_at(block.len().min(room));
        first.extend_from_slice(head);
        if rest.is_empty() {
            flags |= FLAG_END_HEADERS;
        }
        push_frame(out, TYPE_HEADERS, flags, h.stream_id, &first);
        while !rest.is_empty() {
            let (chunk, more) = rest.split_at(rest.len().min(MAX_FRAME));
            let flags = if more.is_empty() { FLAG_END_HEADERS } else { 0 };
            push_frame(out, TYPE_CONTINUATION, flags, h.stream_id, chunk);
            rest = more;
        }
        Ok(())
    }
}

/// A connection whose incoming bytes go through a [`Rewriter`].
pub struct FixAuthority<S> {
    inner: S,
    rewriter: Rewriter,
    out: Vec<u8>,
    out_pos: usize,
    eof: bool,
}

impl<S> FixAuthority<S> {
    /// The underlying connection (for its TLS state).
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn new(inner: S) -> Self {
        Self {
            inner,
            rewriter: Rewriter::default(),
            out: Vec::new(),
            out_pos: 0,
            eof: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FixAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        loop {
            if me.out_pos < me.out.len() {
                let n = buf.remaining().min(me.out.len() - me.out_pos);
                buf.put_slice(&me.out[me.out_pos..me.out_pos + n]);
                me.out_pos += n;
                if me.out_pos == me.out.len() {
                    me.out.clear();
                    me.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if me.eof {
                return Poll::Ready(Ok(()));
            }
            let mut tmp = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut tmp);
            ready!(Pin::new(&mut me.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                me.eof = true;
                continue;
            }
            me.rewriter
                .feed(rb.filled(), &mut me.out)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FixAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
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
}

/// The client listener: TCP with `TCP_NODELAY`, each connection behind [`FixAuthority`].
pub struct ClientListener(pub TcpListener);

impl axum::serve::Listener for ClientListener {
    type Io = FixAuthority<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    return (FixAuthority::new(stream), addr);
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames of a client connection: preface, SETTINGS, then two requests whose header blocks
    /// were encoded by a real HPACK encoder sharing its dynamic table (the second block refers
    /// to entries the first one added).
    fn client_bytes(authority: &str) -> Vec<u8> {
        let mut enc = loona_hpack::Encoder::new();
        let mut out = PREFACE.to_vec();
        push_frame(&mut out, 0x4, 0, 0, &[]);
        for (stream, path) in [
            (1u32, "/etcdserverpb.Maintenance/Status"),
            (3, "/etcdserverpb.KV/Range"),
        ] {
            let headers: Vec<(&[u8], &[u8])> = vec![
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", path.as_bytes()),
                (b":authority", authority.as_bytes()),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
            ];
            let block = enc.encode(headers);
            // Split the block over HEADERS + CONTINUATION to exercise reassembly.
            let (a, b) = block.split_at(block.len() / 2);
            push_frame(&mut out, TYPE_HEADERS, 0, stream, a);
            push_frame(&mut out, TYPE_CONTINUATION, FLAG_END_HEADERS, stream, b);
            push_frame(&mut out, 0x0, FLAG_END_STREAM, stream, b"\0\0\0\0\0");
        }
        out
    }

    /// A frame as the server sees it: (type, stream, decoded headers, raw payload of others).
    type Seen = (u8, u32, Vec<(Vec<u8>, Vec<u8>)>, Vec<u8>);

    /// Parses the server-side bytes back into frames.
    fn server_view(bytes: &[u8]) -> Vec<Seen> {
        assert!(bytes.starts_with(PREFACE));
        let mut rest = &bytes[PREFACE.len()..];
        let mut dec = loona_hpack::Decoder::new();
        let mut frames = Vec::new();
        let mut block = Vec::new();
        while !rest.is_empty() {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let (kind, flags) = (rest[3], rest[4]);
            let stream = u32::from_be_bytes(rest[5..9].try_into().unwrap());
            let payload = &rest[9..9 + len];
            rest = &rest[9 + len..];
            if kind == TYPE_HEADERS || kind == TYPE_CONTINUATION {
                block.extend_from_slice(payload);
                if flags & FLAG_END_HEADERS != 0 {
                    frames.push((
                        TYPE_HEADERS,
                        stream,
                        dec.decode(&block).unwrap(),
                        Vec::new(),
                    ));
                    block.clear();
                }
            } else {
                frames.push((kind, stream, Vec::new(), payload.to_vec()));
            }
        }
        frames
    }

    fn run(input: &[u8], chunk: usize) -> Vec<u8> {
        let mut rw = Rewriter::default();
        let mut out = Vec::new();
        for c in input.chunks(chunk) {
            rw.feed(c, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn authorities_are_repaired_or_kept() {
        // (authority the client sent, authority the server sees)
        let cases: &[(&str, Option<&str>)] = &[
            ("127.0.0.1:2379", Some("127.0.0.1:2379")),
            ("localhost", Some("localhost")),
            ("http://127.0.0.1:2379", Some("127.0.0.1:2379")),
            ("https://etcd.example:2379/", Some("etcd.example:2379")),
            ("unix:///var/run/etcd.sock", None),
        ];
        for &(sent, seen) in cases {
            for chunk in [1, 7, 4096] {
                let frames = server_view(&run(&client_bytes(sent), chunk));
                let headers: Vec<_> = frames.iter().filter(|f| f.0 == TYPE_HEADERS).collect();
                assert_eq!(headers.len(), 2, "{sent} chunk {chunk}");
                for h in headers {
                    let auth =
                        h.2.iter()
                            .find(|(n, _)| n == b":authority")
                            .map(|(_, v)| v.as_slice());
                    assert_eq!(auth, seen.map(str::as_bytes), "{sent} chunk {chunk}");
                    assert!(
                        h.2.iter().any(|(n, v)| n == b"te" && v == b"trailers"),
                        "other headers survive"
                    );
                }
                let data: Vec<_> = frames
                    .iter()
                    .filter(|f| f.0 == 0x0)
                    .map(|f| (f.1, f.3.clone()))
                    .collect();
                assert_eq!(
                    data,
                    vec![(1, vec![0; 5]), (3, vec![0; 5])],
                    "DATA frames pass untouched"
                );
            }
        }
    }

    #[test]
    fn a_connection_whose_first_authority_parses_passes_through_untouched() {
        let input = client_bytes("127.0.0.1:2379");
        for chunk in [1, 7, 4096] {
            assert_eq!(run(&input, chunk), input, "chunk {chunk}");
        }
    }

    #[test]
    fn http1_passes_through_untouched() {
        let req = b"GET /health HTTP/1.1\r\nHost: http://x\r\n\r\n";
        for chunk in [1, 3, 100] {
            assert_eq!(run(req, chunk), req.to_vec());
        }
    }

    #[test]
    fn big_header_blocks_are_split_into_continuations() {
        let mut enc = loona_hpack::Encoder::new();
        let big = vec![b'x'; 40_000];
        // The bad authority makes the shim re-encode the block.
        let block = enc.encode(vec![
            (&b":path"[..], &b"/a"[..]),
            (&b"x-big"[..], big.as_slice()),
            (&b":authority"[..], &b"http://h:1"[..]),
        ]);
        let mut input = PREFACE.to_vec();
        let (a, b) = block.split_at(10_000);
        push_frame(&mut input, TYPE_HEADERS, FLAG_END_STREAM, 5, a);
        push_frame(&mut input, TYPE_CONTINUATION, FLAG_END_HEADERS, 5, b);
        let out = run(&input, 999);
        let frames = server_view(&out);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].2[1].1.len(), 40_000);
        assert!(
            out[PREFACE.len() + 4] & FLAG_END_STREAM != 0,
            "END_STREAM stays on the HEADERS frame"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut input = PREFACE.to_vec();
        push_frame(&mut input, TYPE_CONTINUATION, FLAG_END_HEADERS, 1, b"abc");
        assert!(Rewriter::default().feed(&input, &mut Vec::new()).is_err());
        let mut input = PREFACE.to_vec();
        push_frame(
            &mut input,
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_PADDED,
            1,
            &[200, 1, 2],
        );
        assert!(Rewriter::default().feed(&input, &mut Vec::new()).is_err());
        let mut input = PREFACE.to_vec();
        push_frame(
            &mut input,
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        );
        assert!(Rewriter::default().feed(&input, &mut Vec::new()).is_err());
    }
}
