//! The SDK-facing listener. Server-side streams are nearly all of a streaming node's connections and sit idle
//! most of the time, so they take a lean path: the request head is peeked and parsed (`httparse`), and a
//! connection whose first request is a valid `GET /all` or `GET /flags` is served by a small task that writes the
//! shared, pre-encoded frames straight to the socket — no HTTP framework buffers (hyper keeps ~16 KiB per
//! connection), no per-frame allocation. Everything else (including every request the lean path does not fully
//! accept, such as a bad key, which then gets axum's JSON error) goes to hyper and the axum router unchanged,
//! because the lean path only ever peeks before it decides.

use std::io;
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};

use crate::fanout::{Closed, Next, Registration, chunk_header};
use crate::{EnvId, StreamKind, StreamState};

/// Largest request head the lean path looks at; longer ones go to hyper.
const PEEK_LIMIT: usize = 4096;
/// A connection that sends no request within this long is dropped.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(30);

const STREAM_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\
content-type: text/event-stream; charset=utf-8\r\n\
cache-control: no-cache\r\n\
x-accel-buffering: no\r\n\
transfer-encoding: chunked\r\n\
connection: close\r\n\r\n";

/// Ends a chunked body.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Serves `app` on `listener` until `shutdown` becomes `true`; then stops accepting and waits for requests in
/// flight (streams end by themselves on the same signal). With `lean` (whose router `app` must include),
/// connections whose first request is a server-side stream take the lean path described in the module
/// documentation.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    lean: Option<StreamState>,
) -> io::Result<()> {
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => {
                    let _ = socket.set_nodelay(true);
                    let app = app.clone();
                    let lean = lean.clone();
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        let socket = match &lean {
                            Some(state) => try_lean(socket, state).await,
                            None => Some(socket),
                        };
                        if let Some(socket) = socket {
                            let service = TowerToHyperService::new(app);
                            let conn = hyper::server::conn::http1::Builder::new()
                                .timer(hyper_util::rt::TokioTimer::new())
                                .header_read_timeout(FIRST_BYTE_TIMEOUT)
                                .serve_connection(TokioIo::new(socket), service);
                            let _ = watcher.watch(conn).await;
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin; the listener recovers.
                    metrics::counter!("pennant_stream_accept_errors_total").increment(1);
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    break;
                }
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// What the lean path needs from a request it takes.
struct LeanRequest {
    head_len: usize,
    kind: StreamKind,
    key: String,
}

/// Serves the connection on the lean path if its first request is a stream request we accept; otherwise hands
/// the socket back untouched.
async fn try_lean(socket: TcpStream, state: &StreamState) -> Option<TcpStream> {
    let request = match tokio::time::timeout(FIRST_BYTE_TIMEOUT, peek_request(&socket)).await {
        Ok(Ok(Some(request))) => request,
        Ok(Ok(None)) => return Some(socket),
        Ok(Err(_)) | Err(_) => return None, // Gone or silent: nothing to answer.
    };
    let env = match crate::credential(state, &request.key).await {
        Ok(Some(c)) if c.kind == "sdk" => EnvId { project: c.project_key, env: c.env_key },
        _ => return Some(socket), // axum answers with the right error.
    };
    // Registered before the snapshot is read, so that no change committed in between is missed (SDKs ignore a
    // patch whose version they already have); what the fan-out sends meanwhile waits in the connection's queue.
    let channel = state.hub.channel(&env);
    let registration = channel.lean_fanout(request.kind).register(socket);
    let first = match channel.snapshot(&state.source).await {
        Ok(snapshot) => match request.kind {
            StreamKind::All => snapshot.put_frame.clone(),
            StreamKind::Flags => snapshot.flags_put_frame.clone(),
        },
        Err(_) => return registration.into_socket(), // axum answers with the error.
    };
    metrics::counter!("pennant_stream_connections_total").increment(1);
    lean_stream(registration, request.head_len, first, state).await;
    None
}

/// Peeks at the first request; `Some` if it is a plain `GET /all` or `GET /flags` with a key.
async fn peek_request(socket: &TcpStream) -> io::Result<Option<LeanRequest>> {
    let mut buf = vec![0u8; PEEK_LIMIT];
    let n = socket.peek(&mut buf).await?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    // A head split over several segments, too many headers or anything unusual: hyper handles it.
    let Ok(httparse::Status::Complete(head_len)) = request.parse(&buf[..n]) else { return Ok(None) };
    if request.method != Some("GET") || request.version != Some(1) {
        return Ok(None);
    }
    let kind = match request.path {
        Some("/all") => StreamKind::All,
        Some("/flags") => StreamKind::Flags,
        _ => return Ok(None), // Including query strings such as `?filter=`.
    };
    let mut key = None;
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("authorization") {
            let value = std::str::from_utf8(header.value).ok().map(|v| v.trim().trim_start_matches("api_key ").trim());
            key = value.filter(|v| !v.is_empty()).map(str::to_owned);
        } else if name.eq_ignore_ascii_case("content-length") && header.value != b"0"
            || name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
        {
            return Ok(None);
        }
    }
    Ok(key.map(|key| LeanRequest { head_len, kind, key }))
}

/// Writes the response head and the first frame, then whatever the fan-out's writers queued for this connection
/// (it writes most frames itself), until the stream ends: the client goes away, falls too far behind, stops
/// reading, the connection reaches its lifetime, or the server shuts down. The body is chunked (SSE clients such
/// as urllib3 buffer a close-delimited body until a whole read buffer is full), and the connection closes when
/// the stream ends.
async fn lean_stream(registration: Registration, head_len: usize, first: Bytes, state: &StreamState) {
    let write_timeout = state.hub.options().write_timeout;
    let conn = registration.conn.clone();
    // Consume the request head we peeked (it is in the socket's buffer already).
    if !consume(&conn.socket, head_len).await {
        return;
    }
    metrics::gauge!("pennant_stream_open_connections").increment(1.0);
    let mut shutdown = state.shutdown.clone();
    let deadline = crate::stream_deadline(&state.hub);
    let expiry = async move {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expiry);
    let started = async {
        conn.write_all(STREAM_HEAD, write_timeout).await?;
        let (header, header_len) = chunk_header(first.len());
        conn.write_all(&header[..header_len], write_timeout).await?;
        conn.write_all(&first, write_timeout).await?;
        conn.write_all(b"\r\n", write_timeout).await
    };
    let mut failed = started.await.is_err();
    drop(first);
    let mut scratch = [0u8; 64];
    'stream: while !failed {
        // Catch up with what the writers queued; when nothing is left they write to this socket directly again.
        loop {
            match conn.next() {
                Next::Write(bytes) => {
                    let writing = conn.write_all(&bytes, write_timeout);
                    tokio::pin!(writing);
                    loop {
                        tokio::select! {
                            written = &mut writing => {
                                if written.is_err() {
                                    metrics::counter!("pennant_stream_stalled_closed_total").increment(1);
                                    failed = true;
                                    break 'stream;
                                }
                                break;
                            }
                            // A writer queued more, or closed the connection while this write waits.
                            () = conn.woken() => {
                                if let Some(why) = conn.closed() {
                                    count_closed(why);
                                    failed = true;
                                    break 'stream;
                                }
                            }
                        }
                    }
                }
                Next::Idle => break,
                Next::Closed(why) => {
                    count_closed(why);
                    failed = true;
                    break 'stream;
                }
            }
        }
        tokio::select! {
            () = conn.woken() => {}
            ready = conn.socket.readable() => {
                // The client sends nothing after its request: end of stream or an error means it is gone.
                let gone = match ready {
                    Ok(()) => match conn.socket.try_read(&mut scratch) {
                        Ok(n) => n == 0,
                        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
                    },
                    Err(_) => true,
                };
                if gone {
                    failed = true;
                }
            }
            () = &mut expiry => {
                metrics::counter!("pennant_stream_lifetime_closed_total").increment(1);
                break 'stream;
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break 'stream;
                }
            }
        }
    }
    // No direct writes from here on. A clean end of body for clients still reading, unless a frame went out
    // half written.
    let clean = conn.close(Closed::Failed);
    drop(conn);
    if let Some(mut socket) = registration.into_socket() {
        if clean && !failed {
            let _ = tokio::time::timeout(write_timeout, socket.write_all(LAST_CHUNK)).await;
        }
        let _ = socket.shutdown().await;
    }
    metrics::gauge!("pennant_stream_open_connections").decrement(1.0);
}

fn count_closed(why: Closed) {
    if why == Closed::Lagged {
        // Too far behind: the SDK reconnects and gets a fresh put.
        metrics::counter!("pennant_stream_lagged_closed_total").increment(1);
    }
}

/// Reads and drops the first `len` bytes of the socket.
async fn consume(socket: &TcpStream, mut len: usize) -> bool {
    // On the heap and gone afterwards: an array here would stay in every connection's task for its whole life
    // (a task is as large as its largest state).
    let mut buf = vec![0u8; len.min(PEEK_LIMIT)];
    while len > 0 {
        if socket.readable().await.is_err() {
            return false;
        }
        let want = len.min(buf.len());
        match socket.try_read(&mut buf[..want]) {
            Ok(0) => return false,
            Ok(n) => len -= n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return false,
        }
    }
    true
}
