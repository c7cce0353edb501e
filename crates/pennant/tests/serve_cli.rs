//! `pennant serve` as a user runs it: first start, health, metrics, the API, graceful stop, restart, bad config.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::{Server, http};

#[test]
fn first_start_prints_credentials_serves_and_restarts_with_the_same_ones() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let server = Server::start(&["--data-dir", &data]);
    assert!(server.url.starts_with("http://127.0.0.1:"), "{:?}", server.banner);
    let token = server.field("admin token");
    assert!(token.starts_with("api-"), "{token}");
    let prod = server.keys("production");
    assert_eq!(prod.len(), 3, "{:?}", server.banner);

    let (status, body) = http(&server.url, "GET", "/health", None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"status\":\"ok\""));
    let (status, body) = http(&server.url, "GET", "/api/v2/projects/default/environments", Some(&token));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&prod[0]));
    let (status, _) = http(&server.url, "GET", "/api/v2/projects", Some(&prod[0]));
    assert_eq!(status, 401, "SDK keys are refused on the management API");
    let (status, metrics) = http(&server.url, "GET", "/metrics", None);
    assert_eq!(status, 200);
    assert!(metrics.contains("pennant_http_requests_total"), "{metrics}");
    // The embedded event queue keeps its own SQLite file (its commits never wait for the insights processor's).
    let queue_file = std::path::Path::new(&data).join("events-queue.db");
    assert!(queue_file.exists(), "no events-queue.db in {data}");
    let banner_line = format!("event queue    embedded ({})", queue_file.display());
    assert!(server.banner.iter().any(|l| l.trim() == banner_line), "{banner_line} in {:?}", server.banner);
    // The first start's writes went through the embedded store's write lock.
    assert!(metrics.contains("pennant_store_write_lock_hold_seconds_count{writer="), "{metrics}");
    assert!(server.stop().success(), "SIGTERM stops the server cleanly");

    let again = Server::start(&["--data-dir", &data]);
    assert_eq!(again.field("admin token"), token, "later starts reuse the first start's token");
    assert_eq!(again.keys("production"), prod);
    let (status, _) = http(&again.url, "GET", "/api/v2/projects/default", Some(&token));
    assert_eq!(status, 200);
    assert!(again.stop().success());
}

#[test]
fn runs_on_postgres() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let db = rt.block_on(pennant_store::testing::TestDb::postgres()).unwrap();
    let url = db.url().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--data-dir", dir.path().to_str().unwrap(), "--database-url", &url]);
    let token = server.field("admin token");
    let (status, body) = http(&server.url, "GET", "/api/v2/projects/default", Some(&token));
    assert_eq!(status, 200, "{body}");
    assert!(!server.banner.iter().any(|l| l.contains("sqlite")), "{:?}", server.banner);
    assert!(server.stop().success());
    drop(db);
}

#[test]
fn invalid_configuration_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_pennant")).args(["serve", "--listen", "nowhere"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--listen") && stderr.contains("nowhere"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_pennant"))
        .args(["serve", "--database-url", "mysql://x"])
        .env("PENNANT_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--database-url"));
}
