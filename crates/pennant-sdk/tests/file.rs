//! The file data source through the client: both file formats, evaluation, changes picked up while running, and
//! bad files (invalid, duplicate keys, missing) reported in the status while the previous data is kept.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pennant_sdk::{Client, Config, Context, DataSourceErrorKind, DataSourceState, DataSourceStatus};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(10);

/// A directory of its own under the system's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("pennant-sdk-file-{test}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write(path: &Path, value: &Value) {
    std::fs::write(path, value.to_string()).unwrap();
}

fn start(paths: &[PathBuf]) -> Client {
    let config = Config::builder("")
        .files(paths)
        .file_poll_interval(Duration::from_millis(20))
        .events_enabled(false)
        .build()
        .unwrap();
    Client::start(config).unwrap()
}

/// Polls `check` until it returns something, failing the test at the deadline.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: not before the deadline");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits for a status in `state` whose error contains every part of `message`.
async fn status_with(client: &Client, state: DataSourceState, message: &[&str]) -> DataSourceStatus {
    eventually(&format!("status {state:?} with an error containing {message:?}"), || {
        let status = client.data_source_status();
        let error = status.last_error.as_ref()?;
        let matches = status.state == state
            && error.kind == DataSourceErrorKind::InvalidData
            && message.iter().all(|part| error.message.contains(part));
        matches.then_some(status)
    })
    .await
}

async fn with_timeout<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future).await.expect("deadline passed")
}

fn flags_file() -> Value {
    json!({
        "flags": {
            "beta": {"key": "beta", "version": 3, "on": true, "variations": [false, true],
                "fallthrough": {"variation": 0}, "offVariation": 0,
                "rules": [{"id": "testers", "variation": 1,
                    "clauses": [{"attribute": "key", "op": "segmentMatch", "values": ["testers"]}]}]}
        },
        "segments": {"testers": {"key": "testers", "version": 1, "included": ["tester-1"]}}
    })
}

#[tokio::test]
async fn both_formats_load_merge_and_evaluate() {
    let dir = TempDir::new("formats");
    let (full, values) = (dir.path("flags.json"), dir.path("values.json"));
    write(&full, &flags_file());
    write(&values, &json!({"flagValues": {"banner": "blue", "limit": 25, "checkout": true}}));
    let client = start(&[full, values]);
    assert!(client.wait_for_initialization(DEADLINE).await);
    assert_eq!(client.data_source_status().state, DataSourceState::Valid);

    let (tester, other) = (Context::user("tester-1"), Context::user("someone"));
    assert!(client.bool_variation(&tester, "beta", false), "the segment rule matches");
    assert!(!client.bool_variation(&other, "beta", true), "the fallthrough");
    let detail = client.bool_variation_detail(&tester, "beta", false);
    assert_eq!((detail.variation_index, detail.reason.kind()), (Some(1), "RULE_MATCH"));
    assert_eq!(client.string_variation(&other, "banner", "none"), "blue");
    assert_eq!(client.int_variation(&other, "limit", 0), 25);
    assert!(client.bool_variation(&other, "checkout", false));
    let detail = client.string_variation_detail(&other, "banner", "none");
    assert_eq!((detail.variation_index, detail.reason.kind()), (Some(0), "FALLTHROUGH"));
    assert_eq!(client.flag_data().flags().count(), 4);
    let data = client.flag_data();
    assert_eq!(data.flags().find(|f| f.key == "beta").map(|f| f.version), Some(3), "the file's version is kept");
    client.close().await;
}

#[tokio::test]
async fn a_changed_file_is_picked_up_and_announced() {
    let dir = TempDir::new("change");
    let path = dir.path("flags.json");
    // Mixed formats in one file.
    let mut contents = flags_file();
    contents["flagValues"] = json!({"banner": "blue", "steady": 1});
    write(&path, &contents);
    let client = start(std::slice::from_ref(&path));
    assert!(client.wait_for_initialization(DEADLINE).await);
    let user = Context::user("someone");
    assert_eq!(client.string_variation(&user, "banner", "none"), "blue");
    let mut changes = client.flag_changes();

    // Same length as before: the change is still seen.
    contents["flagValues"]["banner"] = json!("gold");
    write(&path, &contents);
    eventually("the new value", || (client.string_variation(&user, "banner", "none") == "gold").then_some(())).await;
    let change = with_timeout(changes.recv()).await.unwrap();
    assert_eq!(change.key, "banner", "only the changed flag is announced");

    // The segment changes: the flag that uses it is announced, though no version in the file moved.
    contents["segments"]["testers"]["included"] = json!(["tester-1", "someone"]);
    write(&path, &contents);
    let change = with_timeout(changes.recv()).await.unwrap();
    assert_eq!(change.key, "beta");
    assert!(client.bool_variation(&user, "beta", false));
    assert!(changes.try_recv().is_err(), "unchanged flags are not announced: {:?}", changes.try_recv());

    // A flag removed from the file is gone.
    contents["flagValues"] = json!({"banner": "gold"});
    write(&path, &contents);
    let change = with_timeout(changes.recv()).await.unwrap();
    assert_eq!(change.key, "steady");
    assert_eq!(client.int_variation(&user, "steady", -1), -1);
    assert_eq!(client.data_source_status().state, DataSourceState::Valid);
    client.close().await;
}

#[tokio::test]
async fn an_invalid_file_keeps_the_old_data_and_reports_it_until_fixed() {
    let dir = TempDir::new("invalid");
    let (a, b) = (dir.path("a.json"), dir.path("b.json"));
    write(&a, &json!({"flagValues": {"banner": "blue"}}));
    write(&b, &json!({"flagValues": {"limit": 5}}));
    let client = start(&[a.clone(), b.clone()]);
    assert!(client.wait_for_initialization(DEADLINE).await);
    let user = Context::user("someone");

    std::fs::write(&b, "{\"flagValues\": {\"limit\": 6,").unwrap();
    let status = status_with(&client, DataSourceState::Interrupted, &[b.to_str().unwrap(), "invalid flag data"]).await;
    assert!(!status.last_error.unwrap().message.contains("a.json"), "only the bad file is named");
    assert_eq!(client.int_variation(&user, "limit", 0), 5, "the previous data is kept");
    assert_eq!(client.string_variation(&user, "banner", "none"), "blue");

    // A flag that is not valid LaunchDarkly JSON: the file and the flag are named.
    write(&b, &json!({"flags": {"limit": {"key": "limit", "variations": 7}}}));
    status_with(&client, DataSourceState::Interrupted, &[b.to_str().unwrap(), "invalid flag \"limit\""]).await;
    assert_eq!(client.int_variation(&user, "limit", 0), 5);

    write(&b, &json!({"flagValues": {"limit": 6}}));
    eventually("recovery", || (client.data_source_status().state == DataSourceState::Valid).then_some(())).await;
    assert_eq!(client.int_variation(&user, "limit", 0), 6);
    client.close().await;
}

#[tokio::test]
async fn a_key_in_two_files_is_an_error_naming_both() {
    let dir = TempDir::new("duplicate");
    let (a, b) = (dir.path("a.json"), dir.path("b.json"));
    write(&a, &json!({"flagValues": {"banner": "blue"}}));
    write(&b, &json!({"flagValues": {"banner": "red", "limit": 5}}));
    let client = start(&[a.clone(), b.clone()]);
    let status = status_with(
        &client,
        DataSourceState::Initializing,
        &["flag \"banner\" is defined in both", a.to_str().unwrap(), b.to_str().unwrap()],
    )
    .await;
    assert!(!client.initialized(), "nothing is loaded from conflicting files: {status:?}");
    assert_eq!(client.string_variation(&Context::user("u"), "banner", "none"), "none");

    write(&b, &json!({"flagValues": {"limit": 5}}));
    assert!(client.wait_for_initialization(DEADLINE).await);
    assert_eq!(client.data_source_status().state, DataSourceState::Valid);
    assert_eq!(client.string_variation(&Context::user("u"), "banner", "none"), "blue");

    // The same key in the two files again, later: the data loaded before is kept.
    write(&b, &json!({"flagValues": {"limit": 5, "banner": "red"}}));
    status_with(&client, DataSourceState::Interrupted, &["is defined in both"]).await;
    assert_eq!(client.string_variation(&Context::user("u"), "banner", "none"), "blue");
    assert_eq!(client.int_variation(&Context::user("u"), "limit", 0), 5);
    client.close().await;
}

#[tokio::test]
async fn a_missing_file_is_reported_and_loaded_once_it_appears() {
    let dir = TempDir::new("missing");
    let path = dir.path("later.json");
    let client = start(std::slice::from_ref(&path));
    status_with(&client, DataSourceState::Initializing, &[path.to_str().unwrap(), "cannot be read"]).await;
    assert!(!client.initialized());

    write(&path, &json!({"flagValues": {"banner": "blue"}}));
    assert!(client.wait_for_initialization(DEADLINE).await);
    assert_eq!(client.string_variation(&Context::user("u"), "banner", "none"), "blue");

    // Deleted while running: the data is kept, the status says why.
    std::fs::remove_file(&path).unwrap();
    status_with(&client, DataSourceState::Interrupted, &[path.to_str().unwrap(), "cannot be read"]).await;
    assert_eq!(client.string_variation(&Context::user("u"), "banner", "none"), "blue");
    write(&path, &json!({"flagValues": {"banner": "green"}}));
    eventually("recovery", || {
        (client.string_variation(&Context::user("u"), "banner", "none") == "green").then_some(())
    })
    .await;
    assert_eq!(client.data_source_status().state, DataSourceState::Valid);
    client.close().await;
}
