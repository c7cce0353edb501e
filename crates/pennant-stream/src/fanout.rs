//! Direct fan-out to lean stream connections.
//!
//! With one task per connection woken through a broadcast channel, every delivery costs a wake-up, a poll of the
//! connection's `select!`, a timer registration for the write timeout and a write. Here one dispatcher task per
//! environment and stream kind takes each frame from the environment's broadcast channel once, encodes it as an HTTP
//! chunk once, and has as many writers as the runtime has workers (itself and helper tasks it spawns for the frame)
//! write that to every registered connection's socket with one non-blocking `send`: a delivery is one syscall, and
//! the connections' own tasks stay asleep. The writers share the connections of a frame through one cursor, a turn
//! of connections at a time, so that all of them finish together: with a fixed share each, the writer that got less
//! CPU from the kernel would finish last, alone on one core, and set the tail latency. The dispatcher waits for every
//! writer before it takes the next frame, so each connection gets the frames in order.
//!
//! A write that would block, or writes only part of the frame, switches that connection to its task, which waits
//! for the socket (with the write timeout) and writes what the writers queued for it in order; once it has caught
//! up, direct writes resume. A connection whose queue reaches the channel capacity is closed, as a lagging broadcast
//! receiver would be: its SDK reconnects with a fresh `put`.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::sync::broadcast::{self, error::RecvError};

/// Connections written per turn; a writer yields between turns so that other tasks on its thread run.
const TURN: usize = 256;

/// The lean connections of one environment's stream kind, and the writers that feed them.
#[derive(Debug)]
pub(crate) struct Fanout {
    // Slots, reused after a connection leaves, so the writers walk a dense vector. Writers read it at the same
    // time; registering and leaving wait for the turns in progress.
    slots: RwLock<Slots>,
    live: AtomicUsize,
    capacity: usize,
    writers: usize,
    turn: usize,
}

#[derive(Debug, Default)]
struct Slots {
    conns: Vec<Option<Arc<LeanConn>>>,
    free: Vec<usize>,
}

/// One frame on its way to every connection: the writers take turns of connections from `next`.
struct Pass {
    chunk: Bytes,
    next: AtomicUsize,
    // Connections the chunk was offered to, counted as each turn ends.
    offered: AtomicUsize,
}
/// One lean connection, shared by its own task and the fan-out's writers.
#[derive(Debug)]
pub(crate) struct LeanConn {
    /// The client's socket. Both sides only use `&TcpStream` readiness methods; the `out` lock orders writes.
    pub(crate) socket: TcpStream,
    out: Mutex<Outgoing>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct Outgoing {
    // Bytes the connection's task still has to write, in order, before direct writes may resume.
    pending: VecDeque<Bytes>,
    // The writers may write to the socket themselves: the task has written the head and everything pending.
    direct: bool,
    closed: Option<Closed>,
}

/// Why the fan-out closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closed {
    /// It fell `capacity` frames behind.
    Lagged,
    /// A write failed (the client is gone).
    Failed,
}

/// What the connection's task must do next.
pub(crate) enum Next {
    /// Write these bytes (then ask again).
    Write(Bytes),
    /// Nothing pending: direct writes resumed.
    Idle,
    /// Stop.
    Closed(Closed),
}

/// A registration that removes the connection from its fan-out when dropped.
pub(crate) struct Registration {
    fanout: Arc<Fanout>,
    slot: Option<usize>,
    pub(crate) conn: Arc<LeanConn>,
}

impl Registration {
    /// Leaves the fan-out and gives the socket back (it is the last owner once the writers let go of it).
    pub(crate) fn into_socket(mut self) -> Option<TcpStream> {
        if let Some(slot) = self.slot.take() {
            self.fanout.remove(slot);
        }
        let conn = self.conn.clone();
        drop(self);
        Arc::into_inner(conn).map(|conn| conn.socket)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.fanout.remove(slot);
        }
    }
}

impl Fanout {
    /// A fan-out with `writers` writer tasks (at least one), fed by a fresh subscription of `frames`; spawns its
    /// dispatcher.
    pub(crate) fn start(frames: &broadcast::Sender<Bytes>, capacity: usize, writers: usize) -> Arc<Fanout> {
        Fanout::start_with_turn(frames, capacity, writers, TURN)
    }

    fn start_with_turn(frames: &broadcast::Sender<Bytes>, capacity: usize, writers: usize, turn: usize) -> Arc<Fanout> {
        let fanout = Arc::new(Fanout {
            slots: RwLock::default(),
            live: AtomicUsize::new(0),
            capacity: capacity.max(1),
            writers: writers.max(1),
            turn: turn.max(1),
        });
        tokio::spawn(dispatcher(Arc::downgrade(&fanout), frames.subscribe()));
        fanout
    }

    /// Registers a connection. Until its task calls [`LeanConn::next`] and gets [`Next::Idle`], frames are queued
    /// for the task, so the task can write the response head and the `put` first.
    pub(crate) fn register(self: &Arc<Fanout>, socket: TcpStream) -> Registration {
        let conn = Arc::new(LeanConn { socket, out: Mutex::default(), wake: Notify::new() });
        let mut slots = write(&self.slots);
        let slot = match slots.free.pop() {
            Some(slot) => {
                slots.conns[slot] = Some(conn.clone());
                slot
            }
            None => {
                slots.conns.push(Some(conn.clone()));
                slots.conns.len() - 1
            }
        };
        drop(slots);
        self.live.fetch_add(1, Ordering::Relaxed);
        Registration { fanout: self.clone(), slot: Some(slot), conn }
    }

    fn remove(&self, slot: usize) {
        let mut slots = write(&self.slots);
        if let Some(entry) = slots.conns.get_mut(slot)
            && entry.take().is_some()
        {
            slots.free.push(slot);
            self.live.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Registered connections.
    pub(crate) fn connections(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// How many receivers of the environment's channel the fan-out holds (its dispatcher's).
    pub(crate) fn receivers(&self) -> usize {
        1
    }

    /// Delivers one frame to every registered connection, with all writers, and returns once they are done: how
    /// many connections it was offered to.
    async fn deliver(self: &Arc<Fanout>, frame: &Bytes) -> usize {
        if frame.is_empty() {
            return 0; // An empty chunk would end the body.
        }
        let started = Instant::now();
        let pass =
            Arc::new(Pass { chunk: encode_chunk(frame), next: AtomicUsize::new(0), offered: AtomicUsize::new(0) });
        // No more writers than turns: a small fan-out is written by one task, without spawning.
        let turns = read(&self.slots).conns.len().div_ceil(self.turn);
        let helpers: Vec<_> = (1..self.writers.min(turns))
            .map(|_| {
                let (fanout, pass) = (self.clone(), pass.clone());
                tokio::spawn(async move { fanout.write_turns(&pass).await })
            })
            .collect();
        self.write_turns(&pass).await;
        for helper in helpers {
            // A helper that panicked has stopped taking turns; the others took the rest.
            let _ = helper.await;
        }
        let took = started.elapsed();
        let offered = pass.offered.load(Ordering::Relaxed);
        metrics::histogram!("pennant_stream_fanout_seconds").record(took.as_secs_f64());
        tracing::debug!(connections = offered, took_us = took.as_micros(), "fan-out of one frame done");
        offered
    }

    /// Takes turns of connections from `pass` and writes its chunk to them, until none are left.
    async fn write_turns(&self, pass: &Pass) {
        loop {
            let start = pass.next.fetch_add(self.turn, Ordering::Relaxed);
            {
                let slots = read(&self.slots);
                let Some(turn) = slots.conns.get(start..(start + self.turn).min(slots.conns.len())) else { return };
                if turn.is_empty() {
                    return;
                }
                let mut offered = 0;
                for conn in turn.iter().flatten() {
                    conn.offer(&pass.chunk, self.capacity);
                    offered += 1;
                }
                pass.offered.fetch_add(offered, Ordering::Relaxed);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Closes every connection (the dispatcher fell behind its channel).
    fn close_all(&self, why: Closed) {
        for conn in read(&self.slots).conns.iter().flatten() {
            conn.close(why);
        }
    }
}

async fn dispatcher(fanout: Weak<Fanout>, mut frames: broadcast::Receiver<Bytes>) {
    loop {
        let received = frames.recv().await;
        let Some(fanout) = fanout.upgrade() else { return };
        match received {
            Ok(frame) => {
                fanout.deliver(&frame).await;
            }
            Err(RecvError::Lagged(_)) => {
                metrics::counter!("pennant_stream_fanout_lagged_total").increment(1);
                fanout.close_all(Closed::Lagged);
            }
            Err(RecvError::Closed) => {
                fanout.close_all(Closed::Failed);
                return;
            }
        }
    }
}

/// The size line of an HTTP chunk of `len` bytes, and its length.
pub(crate) fn chunk_header(len: usize) -> ([u8; 18], usize) {
    use std::io::Write as _;
    let mut header = [0u8; 18];
    let mut cursor = io::Cursor::new(&mut header[..]);
    // 16 hex digits and CRLF always fit in 18 bytes.
    let _ = write!(cursor, "{len:x}\r\n");
    let header_len = usize::try_from(cursor.position()).unwrap_or(0);
    (header, header_len)
}

/// A frame as one HTTP chunk (size line, frame, CRLF), encoded once per frame and shared by every connection.
fn encode_chunk(frame: &Bytes) -> Bytes {
    let (header, header_len) = chunk_header(frame.len());
    let mut chunk = BytesMut::with_capacity(header_len + frame.len() + 2);
    chunk.extend_from_slice(&header[..header_len]);
    chunk.extend_from_slice(frame);
    chunk.extend_from_slice(b"\r\n");
    chunk.freeze()
}

impl LeanConn {
    /// Writes the chunk now if the connection is in direct mode and the socket takes it all; otherwise queues
    /// (the rest of) it for the connection's task.
    fn offer(&self, chunk: &Bytes, capacity: usize) {
        let mut out = lock(&self.out);
        if out.closed.is_some() {
            return;
        }
        let mut written = 0;
        if out.direct {
            match self.socket.try_write(chunk) {
                Ok(n) if n == chunk.len() => return,
                Ok(n) => written = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    out.closed = Some(Closed::Failed);
                    drop(out);
                    self.wake.notify_one();
                    return;
                }
            }
            out.direct = false;
        }
        if written > 0 {
            // Part of the chunk went out: the rest must follow before anything else.
            out.pending.push_back(chunk.slice(written..));
        } else if out.pending.len() >= capacity {
            out.closed = Some(Closed::Lagged);
            out.pending.clear();
        } else {
            out.pending.push_back(chunk.clone());
        }
        drop(out);
        self.wake.notify_one();
    }

    /// What the connection's task does next; [`Next::Idle`] switches the connection to direct writes.
    pub(crate) fn next(&self) -> Next {
        let mut out = lock(&self.out);
        if let Some(why) = out.closed {
            return Next::Closed(why);
        }
        match out.pending.pop_front() {
            Some(bytes) => Next::Write(bytes),
            None => {
                out.direct = true;
                Next::Idle
            }
        }
    }

    /// Stops direct writes for good. Returns whether the body ends on a chunk boundary (nothing half written or
    /// queued), so that the task may still end it cleanly.
    pub(crate) fn close(&self, why: Closed) -> bool {
        let mut out = lock(&self.out);
        let clean = out.closed.is_none() && out.pending.is_empty();
        out.closed.get_or_insert(why);
        out.pending.clear();
        drop(out);
        self.wake.notify_one();
        clean
    }

    /// Why the connection was closed, if it was.
    pub(crate) fn closed(&self) -> Option<Closed> {
        lock(&self.out).closed
    }

    /// Waits until a writer has queued something or the fan-out closed the connection.
    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Writes all of `bytes`, waiting for the socket as needed, within `timeout`.
    pub(crate) async fn write_all(&self, mut bytes: &[u8], timeout: Duration) -> io::Result<()> {
        let writing = async {
            while !bytes.is_empty() {
                self.socket.writable().await?;
                match self.socket.try_write(bytes) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => bytes = &bytes[n..],
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        };
        tokio::time::timeout(timeout, writing).await.map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
    }
}

// The data behind these locks stays consistent whatever panicked while holding one.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;
    use tokio::net::TcpListener;

    async fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (server, client)
    }

    fn pending(conn: &LeanConn) -> usize {
        lock(&conn.out).pending.len()
    }

    /// `n` connections registered with `fanout` and already caught up (the writers write to them directly), and
    /// their clients.
    async fn direct_connections(fanout: &Arc<Fanout>, n: usize) -> (Vec<Registration>, Vec<TcpStream>) {
        let mut registrations = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..n {
            let (server, client) = socket_pair().await;
            let registration = fanout.register(server);
            assert!(matches!(registration.conn.next(), Next::Idle));
            registrations.push(registration);
            clients.push(client);
        }
        (registrations, clients)
    }

    async fn read_exactly(client: &mut TcpStream, len: usize) -> Vec<u8> {
        let mut got = vec![0u8; len];
        tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut got)).await.unwrap().unwrap();
        got
    }

    /// Frames published before the connection's task has caught up wait in its queue, in order; after that the
    /// writer writes to the socket itself.
    #[tokio::test]
    async fn frames_queue_until_the_task_catches_up_then_go_out_directly() {
        let frames = broadcast::channel(16).0;
        let fanout = Fanout::start(&frames, 16, 1);
        let (server, mut client) = socket_pair().await;
        let registration = fanout.register(server);
        let conn = registration.conn.clone();
        assert_eq!(fanout.connections(), 1);
        frames.send(Bytes::from_static(b"a\n\n")).unwrap();
        frames.send(Bytes::from_static(b"bb\n\n")).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while pending(&conn) < 2 {
            assert!(tokio::time::Instant::now() < deadline, "the writer never queued the frames");
            tokio::task::yield_now().await;
        }
        conn.write_all(b"head|", Duration::from_secs(5)).await.unwrap();
        while let Next::Write(bytes) = conn.next() {
            conn.write_all(&bytes, Duration::from_secs(5)).await.unwrap();
        }
        assert!(lock(&conn.out).direct, "caught up: direct writes resume");
        frames.send(Bytes::from_static(b"ccc\n\n")).unwrap();
        let expected = b"head|3\r\na\n\n\r\n4\r\nbb\n\n\r\n5\r\nccc\n\n\r\n";
        assert_eq!(read_exactly(&mut client, expected.len()).await, expected);
        assert_eq!(pending(&conn), 0, "the last frame went out without the task");

        drop(conn);
        assert!(registration.into_socket().is_some(), "the socket comes back once the connection leaves");
        assert_eq!(fanout.connections(), 0);
    }

    /// Several writers share each frame's connections a turn at a time; every connection still gets every frame
    /// once and in order, because a frame's writers all finish before the next frame starts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_sharing_the_connections_deliver_every_frame_once_and_in_order() {
        let frames = broadcast::channel(128).0;
        let fanout = Fanout::start_with_turn(&frames, 128, 4, 3);
        let (registrations, mut clients) = direct_connections(&fanout, 50).await;
        let mut expected = Vec::new();
        for i in 0..100 {
            let frame = Bytes::from(format!("data: {i}\n\n"));
            expected.extend_from_slice(&encode_chunk(&frame));
            frames.send(frame).unwrap();
        }
        for (n, client) in clients.iter_mut().enumerate() {
            assert_eq!(read_exactly(client, expected.len()).await, expected, "connection {n}");
        }
        for registration in &registrations {
            assert_eq!(pending(&registration.conn), 0, "every frame went out directly");
        }
    }

    /// A frame's delivery ends only when every writer is done with it: every connection has been offered it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_frame_is_done_only_when_every_writer_is() {
        let frames = broadcast::channel(4).0;
        // Four turns: the dispatcher and a helper on another thread take two each, at the same time.
        let fanout = Fanout::start_with_turn(&frames, 4, 2, 50);
        let (_registrations, mut clients) = direct_connections(&fanout, 200).await;
        for i in 0..20 {
            let frame = Bytes::from(format!("data: {i}\n\n"));
            assert_eq!(fanout.deliver(&frame).await, 200, "frame {i} was done before every connection had it");
            let chunk = encode_chunk(&frame);
            for (n, client) in clients.iter_mut().enumerate() {
                assert_eq!(read_exactly(client, chunk.len()).await, chunk, "frame {i}, connection {n}");
            }
        }
    }

    /// A connection that stops reading is closed once `capacity` frames wait for it; the others are not held up.
    #[tokio::test]
    async fn a_connection_that_stops_reading_is_closed_as_lagged() {
        let frames = broadcast::channel(4).0;
        let fanout = Fanout::start(&frames, 4, 2);
        let (slow_server, _slow_client) = socket_pair().await;
        let (fast_server, mut fast_client) = socket_pair().await;
        let slow = fanout.register(slow_server);
        let fast = fanout.register(fast_server);
        assert!(matches!(slow.conn.next(), Next::Idle));
        assert!(matches!(fast.conn.next(), Next::Idle));
        let frame = Bytes::from(vec![b'x'; 256 * 1024]);
        let chunk_len = encode_chunk(&frame).len();
        for sent in 1..=200 {
            frames.send(frame.clone()).unwrap();
            // The fast client keeps up, so its writes rarely block; when they do, its task catches up.
            loop {
                match fast.conn.next() {
                    Next::Write(bytes) => fast.conn.write_all(&bytes, Duration::from_secs(5)).await.unwrap(),
                    Next::Idle => break,
                    Next::Closed(why) => panic!("the fast connection was closed: {why:?}"),
                }
            }
            let got = read_exactly(&mut fast_client, chunk_len).await;
            assert!(got.starts_with(b"40000\r\nxxx"), "frame {sent} arrived whole and in order");
            // The slow connection's task is stuck (it never takes what is queued for it).
            if lock(&slow.conn.out).closed == Some(Closed::Lagged) {
                assert!(sent > 4, "closed only after its socket buffers and queue filled up");
                assert!(!slow.conn.close(Closed::Failed), "a half-written body must not get a clean end");
                return;
            }
        }
        panic!("the connection that reads nothing was never closed");
    }
}
