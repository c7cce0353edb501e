//! One worker process of `pennant-load sse`: a current-thread runtime holding its share of the SSE connections,
//! driven by the coordinator with line-delimited JSON on stdin, answering on stdout.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use nix::sys::time::TimeSpec;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::stream::{BodyDecoder, BodyKind, SseParser, parse_head, patch_version, put_version};
use super::{Error, FromWorker, Progress, RoundReply, ToWorker, WorkerConfig, unix_nanos};

/// Read buffer per connection; the head may grow it up to `MAX_HEAD`.
const READ_BUFFER: usize = 2048;
const MAX_HEAD: usize = 16 * 1024;

/// Runs the worker until the coordinator says `quit` or closes stdin.
pub(crate) fn run() -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, control())
}

fn send(message: &FromWorker) -> Result<(), Error> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    let mut out = std::io::stdout().lock();
    out.write_all(&line)?;
    out.flush()?;
    Ok(())
}

async fn control() -> Result<(), Error> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let config = match lines.next_line().await? {
        Some(line) => match serde_json::from_str(&line)? {
            ToWorker::Config(config) => config,
            other => return Err(Error::Worker(format!("expected the configuration first, got {other:?}"))),
        },
        None => return Ok(()),
    };
    let shared = Rc::new(Shared::new(config)?);
    let mut handles = Vec::new();
    while let Some(line) = lines.next_line().await? {
        match serde_json::from_str(&line)? {
            ToWorker::Config(_) => return Err(Error::Worker("configured twice".into())),
            ToWorker::Connect => {
                let rate = shared.config.connect_rate;
                spawn_all(&shared, &mut handles, rate).await;
                wait_ready(&shared).await;
                send(&FromWorker::Ready(shared.progress()))?;
            }
            ToWorker::Round { baseline, sent_at_ns } => {
                let reply = round(&shared, baseline, sent_at_ns).await;
                send(&FromWorker::Round(reply))?;
            }
            ToWorker::Storm => {
                for h in &handles {
                    h.abort();
                }
                for h in handles.drain(..) {
                    let _ = h.await; // cancelled: its socket is closed
                }
                for slot in shared.slots.borrow_mut().iter_mut() {
                    slot.has_put = false;
                }
                shared.ready.set(0);
                let rate = shared.config.storm_rate;
                spawn_all(&shared, &mut handles, rate).await;
                wait_ready(&shared).await;
                send(&FromWorker::Ready(shared.progress()))?;
            }
            ToWorker::Quit => break,
        }
    }
    for h in &handles {
        h.abort();
    }
    Ok(())
}

/// Opens every connection, `rate` per second (0: all at once).
async fn spawn_all(shared: &Rc<Shared>, handles: &mut Vec<JoinHandle<()>>, rate: f64) {
    let start = tokio::time::Instant::now();
    let sources = &shared.config.sources;
    for i in 0..shared.config.connections {
        let source = sources[(shared.config.first_index + i) % sources.len()];
        handles.push(tokio::task::spawn_local(connection(shared.clone(), i, source)));
        // Sleep between batches of ~1 ms worth of connections.
        if rate > 0.0 && (i + 1) % ((rate / 1000.0).ceil() as usize).max(1) == 0 {
            tokio::time::sleep_until(start + Duration::from_secs_f64((i + 1) as f64 / rate)).await;
        }
    }
}

/// Waits until every connection has its `put`, or the phase timeout.
async fn wait_ready(shared: &Shared) {
    let deadline = Instant::now() + shared.timeout();
    while shared.ready.get() < shared.config.connections {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let _ = tokio::time::timeout(left, shared.changed.notified()).await;
    }
}

async fn round(shared: &Shared, baseline: u64, sent_at_ns: u64) -> RoundReply {
    let already = shared.slots.borrow().iter().filter(|s| s.version > baseline).count();
    shared.over_baseline.set(already);
    shared.baseline.set(baseline);
    let deadline = Instant::now() + shared.timeout();
    while shared.over_baseline.get() < shared.config.connections {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let _ = tokio::time::timeout(left, shared.changed.notified()).await;
    }
    shared.baseline.set(u64::MAX);
    let slots = shared.slots.borrow();
    let changed = || slots.iter().filter(|s| s.version > baseline);
    let latencies_ns: Vec<u64> = changed().map(|s| s.changed_ns.saturating_sub(sent_at_ns)).collect();
    let arrival_latencies_ns: Vec<u64> = changed().map(|s| s.arrived_ns.saturating_sub(sent_at_ns)).collect();
    RoundReply {
        received: latencies_ns.len(),
        latencies_ns,
        arrival_latencies_ns,
        stamped: changed().filter(|s| s.stamped).count(),
        max_version: slots.iter().map(|s| s.version).max().unwrap_or(0),
        errors: shared.errors.get(),
        reconnects: shared.reconnects.get(),
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    has_put: bool,
    /// The newest version of the flag this connection has seen.
    version: u64,
    /// When the load tool read it (Unix ns).
    changed_ns: u64,
    /// When it arrived in the socket's receive queue: the kernel's receive timestamp of the read that completed
    /// it (Unix ns), or the read time where the kernel gave none.
    arrived_ns: u64,
    /// Whether `arrived_ns` is the kernel's timestamp.
    stamped: bool,
}

#[derive(Debug)]
struct Shared {
    config: WorkerConfig,
    flag_path: String,
    slots: RefCell<Vec<Slot>>,
    /// Connections holding a `put`.
    ready: Cell<usize>,
    last_put_ns: Cell<u64>,
    /// During a round, the version the change must exceed (otherwise `u64::MAX`).
    baseline: Cell<u64>,
    over_baseline: Cell<usize>,
    /// Woken on every put and every change past the baseline.
    changed: Notify,
    errors: Cell<u64>,
    reconnects: Cell<u64>,
    first_error: RefCell<Option<String>>,
}

impl Shared {
    fn new(config: WorkerConfig) -> Result<Shared, Error> {
        if config.sources.is_empty() {
            return Err(Error::Worker("no source addresses".into()));
        }
        Ok(Shared {
            flag_path: format!("/flags/{}", config.flag),
            slots: RefCell::new(vec![Slot::default(); config.connections]),
            config,
            ready: Cell::new(0),
            last_put_ns: Cell::new(0),
            baseline: Cell::new(u64::MAX),
            over_baseline: Cell::new(0),
            changed: Notify::new(),
            errors: Cell::new(0),
            reconnects: Cell::new(0),
            first_error: RefCell::new(None),
        })
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeout_ms)
    }

    fn progress(&self) -> Progress {
        let slots = self.slots.borrow();
        let with_put = || slots.iter().filter(|s| s.has_put);
        Progress {
            connected: self.ready.get(),
            at_ns: self.last_put_ns.get(),
            min_version: with_put().map(|s| s.version).min().unwrap_or(0),
            max_version: with_put().map(|s| s.version).max().unwrap_or(0),
            errors: self.errors.get(),
            reconnects: self.reconnects.get(),
            first_error: self.first_error.borrow().clone(),
        }
    }

    fn error(&self, e: impl std::fmt::Display) {
        self.errors.set(self.errors.get() + 1);
        let mut first = self.first_error.borrow_mut();
        if first.is_none() {
            *first = Some(e.to_string());
        }
    }

    fn seen(&self, slot: &mut Slot, version: u64, now: u64, arrived: Option<u64>) {
        if version <= slot.version {
            return;
        }
        let baseline = self.baseline.get();
        if slot.version <= baseline && version > baseline {
            self.over_baseline.set(self.over_baseline.get() + 1);
            self.changed.notify_one();
        }
        slot.version = version;
        slot.changed_ns = now;
        slot.arrived_ns = arrived.unwrap_or(now);
        slot.stamped = arrived.is_some();
    }

    /// An event of connection `i` was read; the bytes that completed it arrived at `arrived_ns` (if known).
    fn on_event(&self, i: usize, name: &[u8], data: &[u8], arrived_ns: Option<u64>) {
        let now = unix_nanos();
        let version = match name {
            b"put" => match put_version(data, &self.config.flag) {
                Ok(v) => Some(v.unwrap_or(0)),
                Err(e) => {
                    self.error(format!("bad put: {e}"));
                    None
                }
            },
            b"patch" => patch_version(data, &self.flag_path),
            _ => None,
        };
        let Some(version) = version else { return };
        let mut slots = self.slots.borrow_mut();
        let Some(slot) = slots.get_mut(i) else { return };
        if name == b"put" && !slot.has_put {
            slot.has_put = true;
            self.ready.set(self.ready.get() + 1);
            // Puts may be read out of their arrival order: keep the latest arrival.
            self.last_put_ns.set(self.last_put_ns.get().max(arrived_ns.unwrap_or(now)));
            self.changed.notify_one();
        }
        self.seen(slot, version, now, arrived_ns);
    }

    fn lost(&self, i: usize) {
        if let Some(slot) = self.slots.borrow_mut().get_mut(i)
            && slot.has_put
        {
            slot.has_put = false;
            self.ready.set(self.ready.get() - 1);
        }
    }
}

/// One SDK-like connection: stream, and reconnect with backoff whenever the stream ends.
async fn connection(shared: Rc<Shared>, i: usize, source: IpAddr) {
    let mut failures = 0u32;
    loop {
        let mut got_put = false;
        let result = stream_once(&shared, i, source, &mut got_put).await;
        shared.lost(i);
        match result {
            Ok(()) => shared.error("the server ended the stream"),
            Err(e) => shared.error(e),
        }
        shared.reconnects.set(shared.reconnects.get() + 1);
        failures = if got_put { 1 } else { failures.saturating_add(1) };
        tokio::time::sleep(Duration::from_millis(50 << failures.min(5))).await;
    }
}

async fn stream_once(shared: &Shared, i: usize, source: IpAddr, got_put: &mut bool) -> Result<(), Error> {
    let socket = if source.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if source.is_ipv4() {
        // The port is then picked at connect time for the whole 4-tuple, which may reuse a port an earlier run or
        // the storm left in TIME_WAIT (loopback allows that by default), instead of at bind time among free ones.
        setsockopt(&socket, sockopt::IpBindAddressNoPort, &true).map_err(std::io::Error::from)?;
    }
    socket.bind(SocketAddr::new(source, 0))?;
    let mut stream = socket.connect(shared.config.target).await?;
    // Receive timestamps: the latency of a change is measured to its arrival at this host, so that how soon this
    // tool gets to read (it shares the cores with the server) does not count as the server's delivery time.
    setsockopt(&stream, sockopt::ReceiveTimestampns, &true).map_err(std::io::Error::from)?;
    stream.write_all(shared.config.request.as_bytes()).await?;

    let mut buf = vec![0u8; READ_BUFFER];
    let mut control = nix::cmsg_space!(TimeSpec);
    let arrived = Cell::new(None);
    let mut filled = 0;
    let head = loop {
        if filled == buf.len() {
            if buf.len() >= MAX_HEAD {
                return Err(Error::Worker("response head too large".into()));
            }
            buf.resize(buf.len() * 2, 0);
        }
        let (n, stamp) = read_stamped(&stream, &mut buf[filled..], &mut control).await?;
        arrived.set(stamp);
        if n == 0 {
            return Err(Error::Worker("connection closed before the response head".into()));
        }
        filled += n;
        if let Some(head) = parse_head(&buf[..filled])? {
            break head;
        }
    };
    if head.status != 200 {
        return Err(Error::Worker(format!("GET /all answered {}", head.status)));
    }
    let mut body = BodyDecoder::new(head.body);
    let mut sse = SseParser::default();
    let mut on_event = |name: &[u8], data: &[u8]| {
        if name == b"put" {
            *got_put = true;
        }
        shared.on_event(i, name, data, arrived.get())
    };
    if body.feed(&buf[head.len..filled], &mut |d| sse.feed(d, &mut on_event))? {
        return Ok(());
    }
    buf.truncate(READ_BUFFER);
    buf.shrink_to_fit();
    loop {
        let (n, stamp) = read_stamped(&stream, &mut buf, &mut control).await?;
        arrived.set(stamp);
        if n == 0 {
            return if head.body == BodyKind::Close {
                Ok(())
            } else {
                Err(Error::Worker("connection closed mid-stream".into()))
            };
        }
        if body.feed(&buf[..n], &mut |d| sse.feed(d, &mut on_event))? {
            return Ok(());
        }
    }
}

/// Reads what is there, with the kernel's receive timestamp (Unix ns) of the last segment read.
async fn read_stamped(stream: &TcpStream, buf: &mut [u8], control: &mut [u8]) -> std::io::Result<(usize, Option<u64>)> {
    loop {
        stream.readable().await?;
        match stream.try_io(Interest::READABLE, || recv_stamped(stream, buf, control)) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            result => return result,
        }
    }
}

fn recv_stamped(stream: &TcpStream, buf: &mut [u8], control: &mut [u8]) -> std::io::Result<(usize, Option<u64>)> {
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(control), MsgFlags::MSG_DONTWAIT)
        .map_err(std::io::Error::from)?;
    let mut stamp = None;
    for cmsg in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmTimestampns(at) = cmsg {
            let secs = u64::try_from(at.tv_sec()).unwrap_or(0);
            let nanos = u64::try_from(at.tv_nsec()).unwrap_or(0);
            stamp = Some(secs.saturating_mul(1_000_000_000).saturating_add(nanos));
        }
    }
    Ok((msg.bytes, stamp))
}
