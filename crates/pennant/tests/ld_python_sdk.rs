//! LaunchDarkly's own Python server SDK (PyPI `launchdarkly-server-sdk`), unmodified, pointed at a running
//! `pennant serve`: it initialises over the stream, evaluates flags with rules, segments and rollouts to the same
//! values as Pennant's engine, sees a flag change made through the REST API, and also works in polling mode. Its
//! analytics events (summaries, context index, custom events) reach Pennant's insights API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{RelayProcess, SdkFixture, Server, request};
use serde_json::{Value, json};

const SDK_VERSION: &str = "9.20.0";

/// A virtualenv with the SDK, made once per target directory (the test fails if it cannot be made). The tests of
/// this file run in parallel threads: one makes it while the others wait (two making it at once broke each other).
fn python() -> PathBuf {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON.get_or_init(make_venv).clone()
}

fn make_venv() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ld-python-{SDK_VERSION}"));
    let python = venv.join("bin/python");
    let sdk_installed =
        || Command::new(&python).args(["-c", "import ldclient"]).status().is_ok_and(|status| status.success());
    if python.exists() && sdk_installed() {
        return python;
    }
    let ok = Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv)
        .status()
        .expect("python3 is needed for this test");
    assert!(ok.success(), "could not create a virtualenv at {}", venv.display());
    let ok = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("launchdarkly-server-sdk=={SDK_VERSION}"))
        .status()
        .unwrap();
    assert!(ok.success(), "pip could not install launchdarkly-server-sdk {SDK_VERSION}");
    python
}

const SCRIPT: &str = r#"
import json, sys, time
import ldclient
from ldclient import Context
from ldclient.config import Config

url, sdk_key, mode, events = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "events"
config = Config(sdk_key, base_uri=url, stream_uri=url, events_uri=url, stream=(mode == "stream"), send_events=events)
client = ldclient.LDClient(config=config, start_wait=10)
print(json.dumps({"initialized": client.is_initialized()}), flush=True)

def ctx(spec):
    return Context.from_dict(spec)

for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "eval":
        out = []
        for spec in cmd["contexts"]:
            d = client.variation_detail(cmd["flag"], ctx(spec), None)
            out.append({"value": d.value, "variation": d.variation_index, "reason": d.reason})
        print(json.dumps(out), flush=True)
    elif cmd["op"] == "wait":
        start = time.time()
        while time.time() - start < cmd["timeout"]:
            if client.variation(cmd["flag"], ctx(cmd["context"]), None) == cmd["value"]:
                break
            time.sleep(0.005)
        print(json.dumps({"seconds": time.time() - start, "value": client.variation(cmd["flag"], ctx(cmd["context"]), None)}), flush=True)
    elif cmd["op"] == "track":
        client.track(cmd["event"], ctx(cmd["context"]), data=cmd.get("data"), metric_value=cmd.get("metric"))
        print(json.dumps({"tracked": True}), flush=True)
    elif cmd["op"] == "flush":
        client.flush()
        print(json.dumps({"flushed": True}), flush=True)
    elif cmd["op"] == "quit":
        break
client.close()
"#;

struct Sdk {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Sdk {
    fn start(url: &str, sdk_key: &str, mode: &str) -> Sdk {
        Sdk::start_with(url, sdk_key, mode, "noevents")
    }

    fn start_with(url: &str, sdk_key: &str, mode: &str, events: &str) -> Sdk {
        let mut child = Command::new(python())
            .args(["-c", SCRIPT, url, sdk_key, mode, events])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut sdk = Sdk { child, stdin, lines };
        assert_eq!(sdk.read(), json!({"initialized": true}), "the SDK did not initialise in {mode} mode");
        sdk
    }

    fn read(&mut self) -> Value {
        let line = self.lines.recv_timeout(Duration::from_secs(60)).expect("the SDK script did not answer");
        serde_json::from_str(&line).unwrap()
    }

    fn ask(&mut self, cmd: Value) -> Value {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.read()
    }
}

impl Drop for Sdk {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"op": "quit"}));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
    }
}

/// A management API call that must succeed; returns the body.
fn api(url: &str, token: &str, method: &str, path: &str, body: Value) -> Value {
    let (s, b) = request(url, method, path, token, &[], Some(&body));
    assert!((200..300).contains(&s), "{method} {path}: {s} {b}");
    b
}

/// Turns the fixture's `banner` flag on or off in production through the API and waits (up to 5 s) until the SDK
/// serves `context` (the fixture's staff user) what that means: green when on (its rule), blue when off (the off
/// variation). Returns the SDK's report (`seconds` waited).
fn toggle_banner(sdk: &mut Sdk, url: &str, token: &str, context: &Value, on: bool) -> Value {
    let (kind, value) = if on { ("turnFlagOn", "green") } else { ("turnFlagOff", "blue") };
    let change = json!({"environmentKey": "production", "instructions": [{"kind": kind}]});
    api(url, token, "PATCH", "/api/v2/flags/default/banner", change);
    let waited = sdk.ask(json!({"op": "wait", "flag": "banner", "context": context, "value": value, "timeout": 5}));
    assert_eq!(waited["value"], json!(value), "the SDK never saw the change");
    waited
}

/// Polls the insights API (30 s at most) until `flag`'s evaluations in production reach `at_least`: the SDK flushes
/// in the background and the processors make counts queryable a moment later. Returns the last answer.
fn evaluations(url: &str, token: &str, flag: &str, at_least: i64) -> Value {
    let path = format!("/api/v2/insights/default/production/flags/{flag}/evaluations?granularity=minute");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, body) = request(url, "GET", &path, token, &[], None);
        assert_eq!(s, 200, "{body}");
        if body["total"].as_i64().unwrap_or(0) >= at_least || Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn launchdarkly_python_sdk_streams_and_polls_from_pennant() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--data-dir", dir.path().to_str().unwrap()]);
    let SdkFixture { url, token, sdk_key, contexts, expected } = SdkFixture::create(&server);
    for mode in ["stream", "poll"] {
        let mut sdk = Sdk::start(&url, &sdk_key, mode);
        let got = sdk.ask(json!({"op": "eval", "flag": "banner", "contexts": contexts}));
        assert_eq!(got, Value::Array(expected.clone()), "{mode}");
        if mode == "stream" {
            // A change through the REST API reaches the streaming SDK within a second.
            let started = Instant::now();
            let waited = toggle_banner(&mut sdk, &url, &token, &contexts[1], false);
            assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
            assert!(waited["seconds"].as_f64().unwrap() < 1.0, "{waited}");
            toggle_banner(&mut sdk, &url, &token, &contexts[1], true);
        }
    }
    assert!(server.stop().success());
}

#[test]
fn launchdarkly_python_sdk_events_reach_insights() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--data-dir", dir.path().to_str().unwrap()]);
    let url = server.url.clone();
    let token = server.field("admin token");
    let sdk_key = server.keys("production")[0].clone();
    let (s, b) = request(
        &url,
        "POST",
        "/api/v2/flags/default",
        &token,
        &[],
        Some(&json!({"key": "checkout", "name": "Checkout", "variations": [{"value": true}, {"value": false}]})),
    );
    assert_eq!(s, 201, "{b}");

    let mut sdk = Sdk::start_with(&url, &sdk_key, "stream", "events");
    let contexts: Vec<Value> = (0..12)
        .map(|i| json!({"kind": "user", "key": format!("shopper-{i}"), "name": format!("Shopper {i}")}))
        .collect();
    let got = sdk.ask(json!({"op": "eval", "flag": "checkout", "contexts": contexts}));
    assert_eq!(got.as_array().unwrap().len(), 12);
    let tracked = sdk.ask(json!({"op": "track", "event": "purchase", "context": contexts[0], "data": {"cart": 3},
        "metric": 42.5}));
    assert_eq!(tracked["tracked"], true);
    assert_eq!(sdk.ask(json!({"op": "flush"}))["flushed"], true);

    let evaluations = evaluations(&url, &token, "checkout", 12);
    let insights = "/api/v2/insights/default/production";
    assert_eq!(evaluations["total"], 12, "every evaluation counted once: {evaluations}");
    let (_, contexts_found) = request(&url, "GET", &format!("{insights}/contexts?q=shopper-3"), &token, &[], None);
    let items = contexts_found["items"].as_array().unwrap();
    assert!(items.iter().any(|c| c["key"] == "shopper-3" && c["kind"] == "user"), "{contexts_found}");
    let (s, status) = request(&url, "GET", &format!("{insights}/flag-statuses/checkout"), &token, &[], None);
    assert_eq!((s, status["evaluations"].as_i64()), (200, Some(12)), "{status}");
    let (s, exported) = common::http(&url, "GET", &format!("{insights}/custom-events"), Some(&token));
    assert_eq!(s, 200);
    // NDJSON, streamed in chunks (the raw body still has the chunk-size lines, which are not events).
    let purchase: Vec<Value> = exported
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["key"] == "purchase")
        .collect();
    assert_eq!(purchase.len(), 1, "{exported}");
    drop(sdk);
    assert!(server.stop().success());
}

#[test]
fn launchdarkly_python_sdk_through_a_relay() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--data-dir", dir.path().join("server").to_str().unwrap()]);
    let SdkFixture { url, token, sdk_key, contexts, expected } = SdkFixture::create(&server);
    let checkout = json!({"key": "checkout", "name": "Checkout", "variations": [{"value": true}, {"value": false}]});
    api(&url, &token, "POST", "/api/v2/flags/default", checkout);
    let relay_dir = dir.path().join("relay");
    let relay_args =
        ["--upstream", url.as_str(), "--sdk-key", sdk_key.as_str(), "--data-dir", relay_dir.to_str().unwrap()];
    let relay = RelayProcess::start(&relay_args);
    assert!(relay.banner.iter().any(|l| l.contains("env-1: serving, upstream valid")), "{:?}", relay.banner);

    // The SDK on the relay evaluates as Pennant's engine does, and sees a REST change within a second.
    let mut sdk = Sdk::start_with(&relay.url, &sdk_key, "stream", "events");
    let got = sdk.ask(json!({"op": "eval", "flag": "banner", "contexts": contexts}));
    assert_eq!(got, Value::Array(expected.clone()));
    let waited = toggle_banner(&mut sdk, &url, &token, &contexts[1], false);
    assert!(waited["seconds"].as_f64().unwrap() < 1.0, "{waited}");
    toggle_banner(&mut sdk, &url, &token, &contexts[1], true);

    // Its analytics events go through the relay to the upstream's pipeline and are counted there.
    let shoppers: Vec<Value> = (0..9).map(|i| json!({"kind": "user", "key": format!("shopper-{i}")})).collect();
    sdk.ask(json!({"op": "eval", "flag": "checkout", "contexts": shoppers}));
    assert_eq!(sdk.ask(json!({"op": "flush"}))["flushed"], true);
    let evaluations = evaluations(&url, &token, "checkout", 9);
    assert_eq!(evaluations["total"], 9, "every evaluation counted once: {evaluations}");
    drop(sdk);

    // Without the upstream, a restarted relay serves the payload it saved.
    relay.stop();
    assert!(server.stop().success());
    let relay = RelayProcess::start(&relay_args);
    assert!(relay.banner.iter().any(|l| l.contains("env-1: serving")), "{:?}", relay.banner);
    let mut sdk = Sdk::start(&relay.url, &sdk_key, "stream");
    let got = sdk.ask(json!({"op": "eval", "flag": "banner", "contexts": contexts}));
    assert_eq!(got, Value::Array(expected), "the saved payload serves the same values");
    drop(sdk);
    relay.stop();
}
