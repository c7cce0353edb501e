//! Running the real `pennant` binary in tests, and a minimal HTTP/1.1 client and receiver.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub banner: Vec<String>,
    pub url: String,
}

/// Starts `pennant SUBCOMMAND --listen LISTEN --log warn ARGS…` and reads its stdout until `banner_done` holds
/// for the lines read (within a minute).
pub fn spawn_pennant(
    subcommand: &str,
    listen: &str,
    args: &[&str],
    banner_done: impl Fn(&[String]) -> bool,
) -> (Child, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pennant"))
        .arg(subcommand)
        .args(["--listen", listen, "--log", "warn"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut banner = Vec::new();
    while !banner_done(&banner) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => banner.push(line),
            Err(_) => panic!("no complete banner from `pennant {subcommand}` before the deadline: {banner:?}"),
        }
    }
    (child, banner)
}

/// Sends SIGTERM and waits (up to 30 s) for the process to exit.
pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the process did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Server {
    /// `pennant serve` on a free port.
    pub fn start(args: &[&str]) -> Server {
        Server::start_on("127.0.0.1:0", args)
    }

    /// `pennant serve` on a given address (a restart that must come back on the same port).
    pub fn start_on(listen: &str, args: &[&str]) -> Server {
        // The banner ends with the test environment's line.
        let (child, banner) =
            spawn_pennant("serve", listen, args, |lines| lines.iter().any(|l| l.trim_start().starts_with("test ")));
        let url = banner[0].rsplit(' ').next().unwrap().to_owned();
        Server { child, banner, url }
    }

    pub fn field(&self, label: &str) -> String {
        let line = self
            .banner
            .iter()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("{label} in {:?}", self.banner));
        line.trim_start()[label.len()..].split_whitespace().next().unwrap().to_owned()
    }

    pub fn keys(&self, env: &str) -> Vec<String> {
        let line = self.banner.iter().find(|l| l.trim_start().starts_with(&format!("{env} "))).unwrap();
        line.split_whitespace()
            .filter(|w| w.starts_with("sdk-") || w.starts_with("mob-") || w.len() == 24)
            .map(str::to_owned)
            .collect()
    }

    pub fn stop(mut self) -> std::process::ExitStatus {
        terminate(&mut self.child)
    }
}

/// A test that fails before `stop` must not leave its server running (and spinning CPU) after the test process.
impl Drop for Server {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// A `pennant relay` process; its URL is read from its banner.
pub struct RelayProcess {
    pub child: Child,
    pub url: String,
    pub banner: Vec<String>,
}

impl RelayProcess {
    pub fn start(args: &[&str]) -> RelayProcess {
        // The banner ends with one line per environment.
        let (child, banner) = spawn_pennant("relay", "127.0.0.1:0", args, |lines| {
            lines.iter().any(|l| l.trim_start().starts_with("environment "))
        });
        let url = banner[0].split_whitespace().find(|w| w.starts_with("http://")).unwrap().to_owned();
        RelayProcess { child, url, banner }
    }

    pub fn stop(mut self) {
        let status = terminate(&mut self.child);
        assert!(status.success(), "the relay exited with {status}");
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// Kills a process that is still running (a test that failed before stopping it).
fn kill(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A minimal HTTP/1.1 request without a body (status, body).
pub fn http(url: &str, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let host = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(host).unwrap();
    let auth = token.map(|t| format!("Authorization: {t}\r\n")).unwrap_or_default();
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// A request with optional JSON body and extra headers (status, body).
pub fn request(
    url: &str,
    method: &str,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    let host = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(host).unwrap();
    let body = body.map(ToString::to_string).unwrap_or_default();
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {token}\r\nConnection: close\r\n");
    if !body.is_empty() {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let text = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

/// A request received by [`Receiver`].
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// A local HTTP server that records every request and answers 200.
pub struct Receiver {
    pub url: String,
    pub received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut headers = HashMap::new();
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                loop {
                    line.clear();
                    reader.read_line(&mut line).unwrap();
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = l.split_once(':') {
                        headers.insert(k.trim().to_lowercase(), v.trim().to_owned());
                    }
                }
                let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                sink.lock().unwrap().push(Received { headers, body });
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        });
        Receiver { url, received }
    }

    /// Waits (with a deadline) for a request matching `f`.
    pub fn wait_for(&self, deadline: Duration, f: impl Fn(&Received) -> bool) -> Received {
        let end = Instant::now() + deadline;
        loop {
            if let Some(r) = self.received.lock().unwrap().iter().find(|r| f(r)) {
                return r.clone();
            }
            assert!(
                Instant::now() < end,
                "no matching request before the deadline: {:?}",
                self.received.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn newest_source(dir: &std::path::Path) -> std::time::SystemTime {
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let modified = if entry.file_type().unwrap().is_dir() {
            newest_source(&entry.path())
        } else {
            entry.metadata().unwrap().modified().unwrap()
        };
        newest = newest.max(modified);
    }
    newest
}

/// The `pennant-load` binary: next to this crate's `pennant` binary (where `cargo test --workspace` builds it), built
/// with cargo if it is missing or older than its sources.
pub fn load_tool() -> std::path::PathBuf {
    let server = std::path::Path::new(env!("CARGO_BIN_EXE_pennant"));
    let tool = server.with_file_name("pennant-load");
    let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../pennant-load");
    let fresh = std::fs::metadata(&tool).and_then(|m| m.modified()).is_ok_and(|built| {
        built >= newest_source(&crate_dir.join("src"))
            && built >= std::fs::metadata(crate_dir.join("Cargo.toml")).unwrap().modified().unwrap()
    });
    if !fresh {
        let profile_dir = server.parent().unwrap();
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo.args(["build", "-p", "pennant-load", "--bin", "pennant-load"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cargo.arg("--release");
        }
        let status = cargo.env("CARGO_TARGET_DIR", profile_dir.parent().unwrap()).status().unwrap();
        assert!(status.success(), "could not build pennant-load");
    }
    assert!(tool.exists(), "no {}", tool.display());
    tool
}

/// What the LaunchDarkly SDK end-to-end tests share: a segment and a `banner` flag with a segment rule, an
/// attribute rule and a 50/50 fallthrough rollout in `production`; contexts that reach every variation; and what
/// Pennant's own engine answers for each of them, on the payload the SDK endpoints serve.
pub struct SdkFixture {
    pub url: String,
    pub token: String,
    pub sdk_key: String,
    pub contexts: Vec<serde_json::Value>,
    pub expected: Vec<serde_json::Value>,
}

impl SdkFixture {
    pub fn create(server: &Server) -> SdkFixture {
        use serde_json::{Value, json};
        let url = server.url.clone();
        let token = server.field("admin token");
        let sdk_key = server.keys("production")[0].clone();
        let api = |method: &str, path: &str, body: Value| {
            let (s, b) = request(&url, method, path, &token, &[], Some(&body));
            assert!((200..300).contains(&s), "{method} {path}: {s} {b}");
            b
        };

        // A segment, and a flag with a segment rule, an attribute rule and a 50/50 fallthrough rollout.
        api(
            "POST",
            "/api/v2/segments/default/production",
            json!({"key": "beta", "name": "Beta", "included": ["u-beta"]}),
        );
        api(
            "POST",
            "/api/v2/flags/default",
            json!({"key": "banner", "name": "Banner",
            "variations": [{"value": "red"}, {"value": "green"}, {"value": "blue"}]}),
        );
        api(
            "PATCH",
            "/api/v2/flags/default/banner",
            json!({"environmentKey": "production", "instructions": [
                {"kind": "addRule", "ruleId": "beta", "variation": 0,
                 "clauses": [{"attribute": "", "op": "segmentMatch", "values": ["beta"]}]},
                {"kind": "addRule", "ruleId": "staff", "variation": 1,
                 "clauses": [{"contextKind": "user", "attribute": "email", "op": "endsWith", "values": ["@shop.example"]}]},
                {"kind": "updateFallthroughVariationOrRollout", "rollout": {"variations": [
                    {"variation": 1, "weight": 50000}, {"variation": 2, "weight": 50000}]}},
                {"kind": "turnFlagOn"}
            ]}),
        );

        let mut contexts = vec![
            json!({"kind": "user", "key": "u-beta"}),
            json!({"kind": "user", "key": "someone", "email": "a@shop.example"}),
            json!({"kind": "multi", "user": {"key": "u-beta"}, "org": {"key": "acme"}}),
            json!({"kind": "org", "key": "acme"}),
        ];
        contexts.extend((0..20).map(|i| json!({"kind": "user", "key": format!("user-{i}")})));

        // What Pennant's own engine says, on the payload the SDK endpoints serve.
        let (status, payload) = request(&url, "GET", "/sdk/latest-all", &sdk_key, &[], None);
        assert_eq!(status, 200);
        let store = pennant_eval::MemoryStore::from_payload_json(payload.to_string().as_bytes()).unwrap();
        use pennant_eval::Store as _;
        let flag = store.flag("banner").unwrap();
        let expected: Vec<Value> = contexts
            .iter()
            .map(|c| {
                let context = pennant_eval::Context::from_value(c.clone()).unwrap();
                let d = pennant_eval::evaluate(&store, flag, &context);
                json!({"value": d.value, "variation": d.variation_index, "reason": d.reason})
            })
            .collect();
        let variations: std::collections::HashSet<String> = expected.iter().map(|e| e["value"].to_string()).collect();
        assert_eq!(variations.len(), 3, "the contexts exercise every variation: {expected:?}");
        SdkFixture { url, token, sdk_key, contexts, expected }
    }
}
