//! The proxy's own HTTP/1.1 client for requests without a body and without an upgrade
//! (nearly all of them): the request is encoded and written, the response head read and
//! parsed (httparse), and the response body read from the connection, all in the client
//! connection's task. hyper's client (`client::conn::http1`, used for requests with a body
//! and for WebSocket upgrades) runs every upstream connection as a task of its own and
//! hands each request and response through a queue, a oneshot and a body channel; for a
//! request with no body to stream, none of that is needed, and it was most of what the
//! proxy spent per request in user space beyond nginx (`benches/README.md`).
//!
//! What it implements of HTTP/1.1 (RFC 9112) as a client: interim 1xx responses skipped;
//! no body for `HEAD`, 204 and 304; `Transfer-Encoding` ending in `chunked` decoded
//! (trailers dropped), any other `Transfer-Encoding` or no length read until the backend
//! closes; `Content-Length` (every value the same, else the response is refused); keep-alive
//! unless the backend says `Connection: close` (HTTP/1.1) or not `keep-alive` (HTTP/1.0) or
//! the body runs until close. A response head is at most [`MAX_HEAD`] bytes and
//! [`MAX_HEADERS`] headers (hyper's limit).

use super::{Load, RawPoolKey};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use hyper::body::{Body, Bytes, Frame, SizeHint};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The longest response head read from a backend.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most headers a response head may have.
pub const MAX_HEADERS: usize = 100;
/// How much the read buffer grows by.
const READ_SIZE: usize = 8 * 1024;
/// The longest chunk-size or trailer line of a chunked body.
const MAX_LINE: usize = 8 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One connection to a backend, with what was read from it and not used yet.
pub(super) struct Conn {
    stream: TcpStream,
    buf: bytes::BytesMut,
    /// The request being written (kept to reuse its allocation).
    out: Vec<u8>,
}

impl Conn {
    pub(super) fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: bytes::BytesMut::with_capacity(READ_SIZE),
            out: Vec::with_capacity(512),
        }
    }

    /// Whether an idle connection cannot take a request: the backend closed it (or sent
    /// something nobody asked for). Costs no system call while tokio knows the socket has
    /// nothing to read.
    pub(super) fn is_closed(&self) -> bool {
        let mut probe = [0u8; 1];
        !matches!(
            self.stream.try_read(&mut probe),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock
        )
    }

    /// Reads what the backend sent into `buf`: `Ok(0)` once it closed.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf)
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }
}

/// What the request line and headers of a forwarded request are made of.
pub(super) struct Request<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    /// The client's headers, hop-by-hop ones removed; `X-Forwarded-*` are written from
    /// the fields below instead of these.
    pub headers: &'a HeaderMap,
    /// The client's IP, appended to `X-Forwarded-For`.
    pub ip: &'a HeaderValue,
    /// `X-Forwarded-Host` (and `Host` if the client sent none: HTTP/2).
    pub host: &'a HeaderValue,
    /// `X-Forwarded-Proto`.
    pub proto: &'static str,
}

static FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Writes the request head (origin form, HTTP/1.1) into `out`.
fn encode(request: &Request<'_>, out: &mut Vec<u8>) {
    out.clear();
    let target = request
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .as_bytes();
    out.extend_from_slice(request.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(if target.is_empty() { b"/" } else { target });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut line = |name: &[u8], value: &[u8]| {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    let mut has_host = false;
    let mut previous_for: Option<Vec<u8>> = None;
    for (name, value) in request.headers {
        if name == FOR {
            let joined = previous_for.get_or_insert_with(Vec::new);
            joined.extend_from_slice(value.as_bytes());
            joined.extend_from_slice(b", ");
            continue;
        }
        if name == PROTO || name == FORWARDED_HOST {
            continue;
        }
        has_host |= name == header::HOST;
        line(name.as_str().as_bytes(), value.as_bytes());
    }
    if !has_host {
        line(b"host", request.host.as_bytes());
    }
    match previous_for {
        Some(mut joined) => {
            joined.extend_from_slice(request.ip.as_bytes());
            line(b"x-forwarded-for", &joined);
        }
        None => line(b"x-forwarded-for", request.ip.as_bytes()),
    }
    line(b"x-forwarded-proto", request.proto.as_bytes());
    line(b"x-forwarded-host", request.host.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Why a request got no response head.
#[derive(Debug)]
pub(super) struct SendError {
    /// Whether any of the request went out.
    pub written: bool,
    /// Whether any of a response came back.
    pub received: bool,
    pub message: String,
}

/// A backend's response head.
pub(super) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

/// How the response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// After this many more bytes (0: it has ended).
    Length(u64),
    /// Chunked, in this state.
    Chunked(Chunk),
    /// When the backend closes the connection.
    Close,
    /// Closed: the body has ended.
    Closed,
}

/// Where a chunked body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// This many bytes of the current chunk are left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines until an empty one.
    Trailers,
    /// The body has ended.
    Done,
}

/// Sends `request` on `conn` and reads the response head.
pub(super) async fn send(conn: &mut Conn, request: &Request<'_>) -> Result<Answer, SendError> {
    let head_request = *request.method == Method::HEAD;
    encode(request, &mut conn.out);
    let mut written = 0;
    while written < conn.out.len() {
        match conn.stream.write(&conn.out[written..]).await {
            Ok(0) => {
                return Err(SendError {
                    written: written > 0,
                    received: false,
                    message: "the connection closed while the request was written".into(),
                })
            }
            Ok(n) => written += n,
            Err(err) => {
                return Err(SendError {
                    written: written > 0,
                    received: false,
                    message: format!("writing the request: {err}"),
                })
            }
        }
    }
    let mut received = false;
    loop {
        if !conn.buf.is_empty() {
            received = true;
            match parse(&mut conn.buf, head_request) {
                Ok(Some(answer)) => return Ok(answer),
                Ok(None) => {}
                Err(message) => {
                    return Err(SendError {
                        written: true,
                        received,
                        message,
                    })
                }
            }
        }
        match conn.fill().await {
            Ok(0) => {
                return Err(SendError {
                    written: true,
                    received,
                    message: "the connection closed before a response head".into(),
                })
            }
            Ok(_) => {}
            Err(err) => {
                return Err(SendError {
                    written: true,
                    received,
                    message: format!("reading the response: {err}"),
                })
            }
        }
    }
}

/// The response head at the start of `buf` (taken out of it), `None` if it is not whole
/// yet; interim 1xx responses are skipped.
fn parse(buf: &mut bytes::BytesMut, head_request: bool) -> Result<Option<Answer>, String> {
    use bytes::Buf;
    loop {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut slots);
        let len = match response.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(format!("sent a response head longer than {MAX_HEAD} bytes"))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(err) => return Err(format!("sent an invalid response head: {err}")),
        };
        let code = response.code.unwrap_or_default();
        if (100..200).contains(&code) {
            if code == 101 {
                return Err("switched protocols for a request that asked for no upgrade".into());
            }
            buf.advance(len);
            continue;
        }
        let status = StatusCode::from_u16(code)
            .map_err(|_| format!("sent an invalid status code {code}"))?;
        let http11 = response.version == Some(1);
        let mut headers = HeaderMap::with_capacity(response.headers.len());
        let mut length: Option<u64> = None;
        let mut chunked = None;
        let mut close = !http11;
        for h in response.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| format!("sent an invalid header name {:?}", h.name))?;
            let value = HeaderValue::from_bytes(h.value)
                .map_err(|_| format!("sent an invalid value of header {name}"))?;
            if name == header::CONTENT_LENGTH {
                let n = std::str::from_utf8(h.value)
                    .ok()
                    .map(str::trim)
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<u64>().ok());
                match (n, length) {
                    (Some(n), None) => length = Some(n),
                    (Some(n), Some(before)) if n == before => {}
                    _ => return Err("sent an invalid Content-Length".into()),
                }
            } else if name == header::TRANSFER_ENCODING {
                // The last coding decides; a later header continues the list.
                chunked = Some(
                    h.value
                        .rsplit(|b| *b == b',')
                        .next()
                        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked")),
                );
            } else if name == header::CONNECTION {
                for token in h.value.split(|b| *b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") && !http11 {
                        close = false;
                    }
                }
            }
            headers.append(name, value);
        }
        buf.advance(len);
        let framing = if head_request || code == 204 || code == 304 {
            Framing::Length(0)
        } else if let Some(chunked) = chunked {
            // A Transfer-Encoding overrides any Content-Length (RFC 9112 §6.3).
            headers.remove(header::CONTENT_LENGTH);
            if chunked {
                Framing::Chunked(Chunk::Size)
            } else {
                Framing::Close
            }
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            Framing::Close
        };
        return Ok(Some(Answer {
            status,
            headers,
            keep_alive: !close && framing != Framing::Close,
            framing,
        }));
    }
}

/// A backend's response body read from its connection in the client's task: holds the
/// request's in-flight count until it ends, then gives the connection back to the
/// thread's pool if it can take another request.
pub(super) struct RawBody {
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    in_flight: Option<super::InFlight>,
    pool: RawPoolKey,
}

impl RawBody {
    pub(super) fn new(
        conn: Conn,
        answer_framing: &Answer,
        in_flight: super::InFlight,
        address: SocketAddr,
        load: Arc<Load>,
    ) -> RawBody {
        RawBody {
            conn: Some(conn),
            framing: answer_framing.framing,
            keep_alive: answer_framing.keep_alive,
            in_flight: Some(in_flight),
            pool: RawPoolKey { address, load },
        }
    }

    fn ended(&self) -> bool {
        matches!(
            self.framing,
            Framing::Length(0) | Framing::Chunked(Chunk::Done) | Framing::Closed
        )
    }

    /// The body ended: the backend is done with this request.
    fn finish(&mut self) {
        self.in_flight.take();
        if let Some(conn) = self.conn.take() {
            // Bytes beyond the response: the connection is in no state for another one.
            if self.keep_alive && conn.buf.is_empty() && self.framing != Framing::Closed {
                super::checkin_raw(&self.pool, conn);
            }
        }
    }

    /// The body failed: the connection goes.
    fn fail(&mut self, error: String) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.in_flight.take();
        self.conn.take();
        Poll::Ready(Some(Err(error.into())))
    }

    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.framing {
                Framing::Length(0) | Framing::Chunked(Chunk::Done) | Framing::Closed => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(left) => {
                    if conn.buf.is_empty() {
                        match ready!(conn.poll_fill(cx)) {
                            Ok(0) => {
                                return self.fail(format!(
                                    "the backend closed the connection with {left} bytes of the body left"
                                ))
                            }
                            Ok(_) => {}
                            Err(err) => return self.fail(format!("reading the body: {err}")),
                        }
                    }
                    let n = (conn.buf.len() as u64).min(left);
                    let data = conn.buf.split_to(n as usize).freeze();
                    self.framing = Framing::Length(left - n);
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Close => {
                    if conn.buf.is_empty() {
                        match ready!(conn.poll_fill(cx)) {
                            Ok(0) => {
                                self.framing = Framing::Closed;
                                continue;
                            }
                            Ok(_) => {}
                            Err(err) => return self.fail(format!("reading the body: {err}")),
                        }
                    }
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(state) => match chunked_step(&mut conn.buf, state) {
                    Ok(Step::Next(next)) => self.framing = Framing::Chunked(next),
                    Ok(Step::Data(data, next)) => {
                        self.framing = Framing::Chunked(next);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(Step::More) => match ready!(conn.poll_fill(cx)) {
                        Ok(0) => {
                            return self.fail(
                                "the backend closed the connection inside a chunked body".into(),
                            )
                        }
                        Ok(_) => {}
                        Err(err) => return self.fail(format!("reading the body: {err}")),
                    },
                    Err(message) => return self.fail(message),
                },
            }
        }
    }
}

/// What one step of chunked decoding came to.
enum Step {
    /// Moved on to this state.
    Next(Chunk),
    /// Data of a chunk, then this state.
    Data(Bytes, Chunk),
    /// The buffer needs more bytes.
    More,
}

fn chunked_step(buf: &mut bytes::BytesMut, state: Chunk) -> Result<Step, String> {
    use bytes::Buf;
    let line_end = |buf: &bytes::BytesMut| buf.windows(2).position(|w| w == b"\r\n");
    match state {
        Chunk::Size => {
            let Some(end) = line_end(buf) else {
                return if buf.len() > MAX_LINE {
                    Err("sent a chunk-size line that does not end".into())
                } else {
                    Ok(Step::More)
                };
            };
            let line = &buf[..end];
            let digits = line
                .split(|b| *b == b';')
                .next()
                .unwrap_or_default()
                .trim_ascii();
            let size = std::str::from_utf8(digits)
                .ok()
                .filter(|d| !d.is_empty() && d.len() <= 16)
                .and_then(|d| u64::from_str_radix(d, 16).ok())
                .ok_or_else(|| "sent an invalid chunk size".to_string())?;
            buf.advance(end + 2);
            Ok(Step::Next(if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(size)
            }))
        }
        Chunk::Data(left) => {
            if buf.is_empty() {
                return Ok(Step::More);
            }
            let n = (buf.len() as u64).min(left);
            let data = buf.split_to(n as usize).freeze();
            let next = if n == left {
                Chunk::DataEnd
            } else {
                Chunk::Data(left - n)
            };
            Ok(Step::Data(data, next))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(Step::More);
            }
            if &buf[..2] != b"\r\n" {
                return Err("sent a chunk without its CRLF".into());
            }
            buf.advance(2);
            Ok(Step::Next(Chunk::Size))
        }
        Chunk::Trailers => {
            let Some(end) = line_end(buf) else {
                return if buf.len() > MAX_LINE {
                    Err("sent a trailer line that does not end".into())
                } else {
                    Ok(Step::More)
                };
            };
            buf.advance(end + 2);
            Ok(Step::Next(if end == 0 {
                Chunk::Done
            } else {
                Chunk::Trailers
            }))
        }
        Chunk::Done => Ok(Step::Next(Chunk::Done)),
    }
}

impl Drop for RawBody {
    fn drop(&mut self) {
        // hyper drops a body it knows has ended without polling it to the end.
        if self.ended() {
            self.finish();
        }
    }
}

impl Body for RawBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.get_mut().poll_body(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.ended()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Closed | Framing::Chunked(Chunk::Done) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str, head: bool) -> (Answer, bytes::BytesMut) {
        let mut buf = bytes::BytesMut::from(text.as_bytes());
        let answer = parse(&mut buf, head).unwrap().expect("a whole head");
        (answer, buf)
    }

    #[test]
    fn response_heads_say_how_the_body_ends_and_whether_the_connection_stays() {
        let (a, rest) = parsed(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\n\r\nok\n",
            false,
        );
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.framing, Framing::Length(3));
        assert!(a.keep_alive);
        assert_eq!(a.headers["x-a"], "b");
        assert_eq!(&rest[..], b"ok\n");

        let (a, _) = parsed(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false,
        );
        assert_eq!(a.framing, Framing::Chunked(Chunk::Size));
        assert!(!a.headers.contains_key(header::CONTENT_LENGTH));

        let (a, _) = parsed(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            false,
        );
        assert!(!a.keep_alive);
        let (a, _) = parsed("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false);
        assert!(!a.keep_alive);
        let (a, _) = parsed(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
            false,
        );
        assert!(a.keep_alive);
        let (a, _) = parsed("HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!(a.framing, Framing::Close);
        assert!(!a.keep_alive);
        let (a, _) = parsed("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true);
        assert_eq!(a.framing, Framing::Length(0));
        let (a, _) = parsed(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
            false,
        );
        assert_eq!(a.framing, Framing::Length(0));

        let mut partial = bytes::BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-"[..]);
        assert!(parse(&mut partial, false).unwrap().is_none());
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "NOT HTTP\r\n\r\n",
        ] {
            let mut buf = bytes::BytesMut::from(bad.as_bytes());
            assert!(parse(&mut buf, false).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn chunked_bodies_are_decoded() {
        let mut buf =
            bytes::BytesMut::from(&b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n"[..]);
        let mut state = Chunk::Size;
        let mut body = Vec::new();
        while state != Chunk::Done {
            match chunked_step(&mut buf, state).unwrap() {
                Step::Next(next) => state = next,
                Step::Data(data, next) => {
                    body.extend_from_slice(&data);
                    state = next;
                }
                Step::More => panic!("the whole body was there"),
            }
        }
        assert_eq!(body, b"abcde");
        assert!(buf.is_empty());
        let mut bad = bytes::BytesMut::from(&b"zz\r\n"[..]);
        assert!(chunked_step(&mut bad, Chunk::Size).is_err());
    }

    /// A backend answering canned responses by path, counting its connections.
    async fn canned_backend() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    loop {
                        let mut chunk = [0u8; 1024];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&chunk[..n]),
                        }
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&seen[..end]).into_owned();
                            seen.drain(..end + 4);
                            let line = head.lines().next().unwrap_or_default().to_string();
                            let parts: Vec<&str> = line.split(' ').collect();
                            let answer: &[&[u8]] = match (parts[0], parts[1]) {
                                ("HEAD", _) => &[b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"],
                                (_, "/len") => {
                                    &[b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"]
                                }
                                (_, "/chunked") => &[
                                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab",
                                    b"c\r\n3\r\ndef\r\n0\r\nX-Trailer: t\r\n\r\n",
                                ],
                                _ => &[b"HTTP/1.1 200 OK\r\n\r\nuntil close"],
                            };
                            for part in answer {
                                stream.write_all(part).await.unwrap();
                                stream.flush().await.unwrap();
                                tokio::task::yield_now().await;
                            }
                            if answer.len() == 1
                                && !answer[0].ends_with(b"\r\n")
                                && !answer[0].ends_with(b"\n")
                            {
                                return; // close-delimited: the end of the body is the close
                            }
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    /// One request through `upstream` to `backend`: status, body, whether a pooled
    /// connection took it.
    async fn fetch(
        backend: &super::super::Backend,
        method: Method,
        path: &str,
    ) -> (StatusCode, Vec<u8>, bool) {
        let pooled = super::super::checkout(&super::super::RAW_POOL, backend);
        let reused = pooled.is_some();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => Conn::new(TcpStream::connect(backend.address).await.unwrap()),
        };
        let uri: Uri = path.parse().unwrap();
        let headers = HeaderMap::new();
        let host = HeaderValue::from_static("a.test");
        let request = Request {
            method: &method,
            uri: &uri,
            headers: &headers,
            ip: &host,
            host: &host,
            proto: "http",
        };
        let answer = send(&mut conn, &request).await.unwrap();
        let status = answer.status;
        let mut body = RawBody::new(
            conn,
            &answer,
            backend.load.start(),
            backend.address,
            backend.load.clone(),
        );
        let mut data = Vec::new();
        while !body.is_end_stream() {
            match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                Some(frame) => data.extend_from_slice(frame.unwrap().data_ref().unwrap()),
                None => break,
            }
        }
        drop(body);
        assert_eq!(
            backend.load.in_flight(),
            0,
            "the body's end ends the request"
        );
        (status, data, reused)
    }

    #[tokio::test]
    async fn responses_of_a_real_connection_come_through_and_the_connection_is_reused() {
        use std::sync::atomic::Ordering;
        let (addr, accepted) = canned_backend().await;
        let backend = super::super::Backend {
            alloc: crate::net::table::Name {
                namespace: "default".into(),
                name: "a".into(),
            },
            node: "node-1".into(),
            address: addr,
            load: Arc::new(Load::default()),
        };
        assert_eq!(
            fetch(&backend, Method::GET, "/len").await,
            (StatusCode::OK, b"ok\n".to_vec(), false)
        );
        assert_eq!(
            fetch(&backend, Method::GET, "/chunked").await,
            (StatusCode::OK, b"abcdef".to_vec(), true)
        );
        assert_eq!(
            fetch(&backend, Method::HEAD, "/len").await,
            (StatusCode::OK, Vec::new(), true)
        );
        assert_eq!(
            fetch(&backend, Method::GET, "/close").await,
            (StatusCode::OK, b"until close".to_vec(), true)
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // The close-delimited body used its connection up: the next request opens one.
        assert_eq!(
            fetch(&backend, Method::GET, "/len").await,
            (StatusCode::OK, b"ok\n".to_vec(), false)
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn request_heads_carry_the_forwarded_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("a.test"));
        headers.insert("x-forwarded-for", HeaderValue::from_static("10.1.1.1"));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        let uri: Uri = "/p?q=1".parse().unwrap();
        let mut out = Vec::new();
        encode(
            &Request {
                method: &Method::GET,
                uri: &uri,
                headers: &headers,
                ip: &HeaderValue::from_static("127.0.0.2"),
                host: &HeaderValue::from_static("a.test"),
                proto: "http",
            },
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /p?q=1 HTTP/1.1\r\nhost: a.test\r\naccept: */*\r\nx-forwarded-for: 10.1.1.1, 127.0.0.2\r\nx-forwarded-proto: http\r\nx-forwarded-host: a.test\r\n\r\n"
        );
    }
}
