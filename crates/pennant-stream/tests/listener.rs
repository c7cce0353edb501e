//! The SDK listener over real sockets: the lean stream path, the fallback to axum on the same port, the old
//! `/flags` stream, connection lifetimes, and changes announced over NATS by another node.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pennant_store::testing::TestDb;
use pennant_store::{Actor, Environment, FlagDoc, Project, Store};
use pennant_stream::{
    EnvId, Hub, HubOptions, NatsBus, RelayOptions, StreamState, router, serve, spawn_outbox_relay_with,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

fn actor() -> Actor {
    Actor::system("test")
}

async fn setup(store: &Store) -> String {
    store.create_project(&actor(), Project { key: "p".into(), name: "P".into(), tags: vec![] }, "").await.unwrap();
    let env: Environment = serde_json::from_value(json!({"key": "production", "name": "Production"})).unwrap();
    let env = store.create_environment(&actor(), "p", env, "").await.unwrap().data;
    let flag: FlagDoc =
        serde_json::from_value(json!({"key": "f", "name": "F", "variations": [{"value": true}, {"value": false}]}))
            .unwrap();
    store.create_flag(&actor(), "p", flag, "").await.unwrap();
    env.sdk_key
}

async fn toggle(store: &Store, on: bool) {
    store
        .update_flag(&actor(), "p", "f", None, "", |d, _| {
            d.environments.get_mut("production").unwrap().on = on;
            Ok(())
        })
        .await
        .unwrap();
}

struct Node {
    addr: std::net::SocketAddr,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    hub: Arc<Hub>,
}

/// A streaming node on a free port: listener, router and outbox relay.
async fn start_node(store: &Store, options: HubOptions, announcements: Option<watch::Receiver<i64>>) -> Node {
    let hub = Arc::new(Hub::with_options(options));
    let (stop, stopped) = watch::channel(false);
    let state = StreamState { source: store.clone().into(), hub: hub.clone(), shutdown: stopped.clone() };
    // A long poll interval: only the local watch or an announcement wakes the relay quickly.
    let relay_options = RelayOptions { poll_interval: Duration::from_secs(600), ..RelayOptions::default() };
    spawn_outbox_relay_with(store.clone(), hub.clone(), stopped.clone(), relay_options, announcements);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve(listener, router(state.clone()), stopped, Some(state)));
    Node { addr, stop, server, hub }
}

/// How the bytes after a response head are framed.
enum Body {
    /// Waiting for a response head.
    Head,
    /// `content-length`: this many bytes are left.
    Length(usize),
    /// `transfer-encoding: chunked`.
    Chunked,
}

/// A raw HTTP/1.1 client reading SSE frames, as an SDK would. `raw` holds bytes as received; `buffer` the decoded
/// body of the current response.
struct Client {
    socket: TcpStream,
    raw: Vec<u8>,
    buffer: Vec<u8>,
    body: Body,
    ended: bool,
}

impl Client {
    async fn request(addr: std::net::SocketAddr, head: &str) -> Client {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        socket.write_all(head.as_bytes()).await.unwrap();
        Client { socket, raw: Vec::new(), buffer: Vec::new(), body: Body::Head, ended: false }
    }

    /// Reads more bytes and decodes what it can; `false` at end of stream.
    async fn fill(&mut self, deadline: tokio::time::Instant) -> bool {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, self.socket.read(&mut chunk))
            .await
            .expect("nothing arrived before the deadline")
            .unwrap();
        self.raw.extend_from_slice(&chunk[..n]);
        self.decode();
        n > 0
    }

    fn decode(&mut self) {
        loop {
            match self.body {
                Body::Head => return,
                Body::Length(left) => {
                    let take = left.min(self.raw.len());
                    self.buffer.extend(self.raw.drain(..take));
                    self.body = if take == left { Body::Head } else { Body::Length(left - take) };
                    return;
                }
                Body::Chunked => {
                    let Some(line) = self.raw.windows(2).position(|w| w == b"\r\n") else { return };
                    let size =
                        usize::from_str_radix(std::str::from_utf8(&self.raw[..line]).unwrap().trim(), 16).unwrap();
                    if self.raw.len() < line + 2 + size + 2 {
                        return;
                    }
                    self.buffer.extend_from_slice(&self.raw[line + 2..line + 2 + size]);
                    assert_eq!(&self.raw[line + 2 + size..line + 4 + size], b"\r\n", "chunk not terminated");
                    self.raw.drain(..line + 4 + size);
                    if size == 0 {
                        self.ended = true;
                        self.body = Body::Head;
                    }
                }
            }
        }
    }

    /// The response head.
    async fn head(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(end) = self.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(self.raw.drain(..end + 4).collect()).unwrap().to_ascii_lowercase();
                self.ended = false;
                self.body = if head.contains("transfer-encoding: chunked") {
                    Body::Chunked
                } else {
                    let length = head.lines().find_map(|l| l.strip_prefix("content-length: "));
                    Body::Length(length.map_or(0, |l| l.trim().parse().unwrap()))
                };
                self.decode();
                return head;
            }
            assert!(self.fill(deadline).await, "connection closed before the response head");
        }
    }

    /// The next SSE event (skipping heartbeats); `None` when the server ended the stream.
    async fn event(&mut self) -> Option<(String, Value)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let frame = String::from_utf8(self.buffer.drain(..end + 2).collect()).unwrap();
                if frame.starts_with(':') {
                    continue;
                }
                let event = frame.lines().find_map(|l| l.strip_prefix("event: ")).unwrap().to_owned();
                let data = frame.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
                return Some((event, serde_json::from_str(data).unwrap()));
            }
            if self.ended || !self.fill(deadline).await {
                return None;
            }
        }
    }
}

fn get(path: &str, key: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {key}\r\nAccept: text/event-stream\r\n\r\n")
}

#[tokio::test]
async fn lean_streams_deliver_put_patch_and_end_on_shutdown() {
    for db in TestDb::both().await.unwrap() {
        let key = setup(&db.store).await;
        let node = start_node(&db.store, HubOptions::default(), None).await;
        let mut all = Client::request(node.addr, &get("/all", &key)).await;
        let head = all.head().await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("content-type: text/event-stream"), "{head}");
        assert!(head.contains("x-accel-buffering: no"), "{head}");
        let (event, put) = all.event().await.unwrap();
        assert_eq!((event.as_str(), &put["data"]["flags"]["f"]["on"]), ("put", &json!(false)), "{}", db.backend);

        let mut old = Client::request(node.addr, &get("/flags", &format!("api_key {key}"))).await;
        assert!(old.head().await.starts_with("http/1.1 200"));
        let (event, put) = old.event().await.unwrap();
        assert_eq!((event.as_str(), &put["data"]["f"]["version"]), ("put", &json!(1)), "old stream: bare flag map");
        assert!(put["data"].get("segments").is_none());

        toggle(&db.store, true).await;
        let (event, patch) = all.event().await.unwrap();
        assert_eq!((event.as_str(), &patch["path"], &patch["data"]["on"]), ("patch", &json!("/flags/f"), &json!(true)));
        let (event, patch) = old.event().await.unwrap();
        assert_eq!((event.as_str(), &patch["path"], &patch["data"]["version"]), ("patch", &json!("/f"), &json!(2)));

        node.stop.send(true).unwrap();
        assert!(all.event().await.is_none(), "the stream ends on shutdown");
        assert!(old.event().await.is_none());
        node.server.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn other_requests_on_the_same_port_go_to_the_router() {
    let db = TestDb::sqlite().await.unwrap();
    let key = setup(&db.store).await;
    let node = start_node(&db.store, HubOptions::default(), None).await;
    // A bad key is not taken by the lean path: the router answers with its JSON error.
    let mut bad = Client::request(node.addr, &get("/all", "sdk-wrong")).await;
    let head = bad.head().await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    // Polling, then a stream on the same keep-alive connection (both through the router).
    let mut client = Client::request(node.addr, &get("/sdk/latest-all", &key)).await;
    let head = client.head().await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !matches!(client.body, Body::Head) {
        assert!(client.fill(deadline).await);
    }
    let payload: Value = serde_json::from_slice(&std::mem::take(&mut client.buffer)).unwrap();
    assert_eq!(payload["flags"]["f"]["version"], json!(1));
    client.socket.write_all(get("/all", &key).as_bytes()).await.unwrap();
    assert!(client.head().await.starts_with("http/1.1 200"));
    assert_eq!(client.event().await.unwrap().0, "put", "a stream served by hyper");
    node.stop.send(true).unwrap();
    node.server.await.unwrap().unwrap();
}

/// On the lean path the environment's writer writes frames to every socket itself: a client that stops reading
/// is closed once its socket buffers and its queue are full, while a client that reads gets every frame in order.
#[tokio::test]
async fn a_lean_stream_that_stops_reading_is_closed_without_holding_up_the_others() {
    let db = TestDb::sqlite().await.unwrap();
    let key = setup(&db.store).await;
    let node = start_node(&db.store, HubOptions { capacity: 4, ..HubOptions::default() }, None).await;
    let mut slow = Client::request(node.addr, &get("/all", &key)).await;
    slow.head().await;
    assert_eq!(slow.event().await.unwrap().0, "put");
    let mut fast = Client::request(node.addr, &get("/all", &key)).await;
    fast.head().await;
    assert_eq!(fast.event().await.unwrap().0, "put");
    let channel = node.hub.existing(&EnvId { project: "p".into(), env: "production".into() }).unwrap();
    assert_eq!(channel.connections(), 2, "the lean writer counts as the connections it serves");
    let padding = "x".repeat(256 * 1024);
    let mut closed = false;
    for n in 0..200 {
        channel.publish(Bytes::from(format!("event: patch\ndata: {{\"n\":{n},\"pad\":\"{padding}\"}}\n\n")));
        let (event, data) = fast.event().await.unwrap();
        assert_eq!((event.as_str(), &data["n"]), ("patch", &json!(n)), "every frame, in order");
        if channel.connections() == 1 {
            closed = true;
            break;
        }
    }
    assert!(closed, "the client that reads nothing was never closed");
    // What the slow client still finds in its socket is whole frames, then the end of the connection.
    let mut seen = 0;
    while let Some((event, _)) = slow.event().await {
        assert_eq!(event, "patch");
        seen += 1;
    }
    assert!(seen < 200, "it was closed before it could have received everything");
    node.stop.send(true).unwrap();
    node.server.await.unwrap().unwrap();
}

#[tokio::test]
async fn streams_end_at_their_maximum_lifetime() {
    let db = TestDb::sqlite().await.unwrap();
    let key = setup(&db.store).await;
    let options = HubOptions { max_connection_lifetime: Some(Duration::from_millis(200)), ..HubOptions::default() };
    let node = start_node(&db.store, options, None).await;
    let mut client = Client::request(node.addr, &get("/all", &key)).await;
    client.head().await;
    assert_eq!(client.event().await.unwrap().0, "put");
    assert!(client.event().await.is_none(), "the stream was closed so that the SDK reconnects");
    node.stop.send(true).unwrap();
    node.server.await.unwrap().unwrap();
}

fn nats_url() -> String {
    std::env::var("PENNANT_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Two nodes on one PostgreSQL database: changes committed by the API node reach the streaming node's SDKs through
/// a NATS announcement, and a change whose announcement was never sent is caught up from the database, in order.
#[tokio::test]
async fn changes_announced_on_nats_reach_another_node_and_missed_ones_are_caught_up() {
    let db = TestDb::postgres().await.unwrap();
    let key = setup(&db.store).await;
    let namespace = format!("pennant-test-{}", std::process::id() as u64 * 1000 + rand_suffix());
    let bus = NatsBus::connect(&nats_url(), &namespace, Duration::from_secs(10)).await.expect("NATS must be running");
    // The streaming node has its own connection pool: it hears nothing of the API node's in-process watch.
    let stream_store = Store::open(db.url()).await.unwrap();
    let (_stop_listen, listen_stopped) = watch::channel(false);
    let announcements = bus.listen(listen_stopped).await.unwrap();
    let node = start_node(&stream_store, HubOptions::default(), Some(announcements)).await;
    let mut client = Client::request(node.addr, &get("/all", &key)).await;
    client.head().await;
    assert_eq!(client.event().await.unwrap().0, "put");

    // A change committed while no announcer runs (as if the bus were down): nobody is told.
    toggle(&db.store, true).await;
    // The announcer starts; the next change is announced and the node reads both from the outbox, in order.
    let (stop_api, api_stopped) = watch::channel(false);
    let announcer = bus.spawn_announcer(db.store.clone(), api_stopped);
    db.store
        .update_flag(&actor(), "p", "f", None, "", |d, _| {
            d.environments.get_mut("production").unwrap().off_variation = Some(0);
            Ok(())
        })
        .await
        .unwrap();
    // Both changes are read from the outbox in order; write coalescing may fold them into the latest state.
    let (event, mut latest) = client.event().await.unwrap();
    assert_eq!(event, "patch");
    if latest["data"]["version"] == json!(2) {
        assert_eq!(latest["data"]["on"], json!(true), "the unannounced change comes first");
        latest = client.event().await.unwrap().1;
    }
    assert_eq!(latest["data"]["version"], json!(3));
    assert_eq!(latest["data"]["offVariation"], json!(0));
    assert_eq!(latest["data"]["on"], json!(true));

    stop_api.send(true).unwrap();
    announcer.await.unwrap();
    node.stop.send(true).unwrap();
    node.server.await.unwrap().unwrap();
    stream_store.close().await;
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64 % 1000
}
