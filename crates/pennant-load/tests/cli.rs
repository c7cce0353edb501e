//! The command line refuses impossible loads before opening anything (and, being an integration test, makes
//! `cargo test` build the `pennant-load` binary that crates/pennant/tests/load_sse.rs runs against a server).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pennant-load")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

const BASE: [&str; 7] = ["sse", "--sdk-key", "sdk-x", "--api-token", "api-x", "--flag", "f"];

#[test]
fn too_many_connections_per_process_is_refused() {
    let (ok, err) =
        run(&[&BASE[..], &["--connections", "40000", "--processes", "2", "--sources", "127.0.0.2-127.0.0.3"]].concat());
    assert!(!ok);
    assert!(err.contains("--processes 3"), "{err}");
}

#[test]
fn too_few_source_addresses_are_refused() {
    let (ok, err) =
        run(&[&BASE[..], &["--connections", "30000", "--processes", "2", "--sources", "127.0.0.2"]].concat());
    assert!(!ok);
    assert!(err.contains("2 source addresses"), "{err}");
    let (ok, err) = run(&[&BASE[..], &["--sources", "127.0.0.9-127.0.0.2"]].concat());
    assert!(!ok);
    assert!(err.contains("bad source address"), "{err}");
}

#[test]
fn only_plain_http_urls() {
    let (ok, err) = run(&[&BASE[..], &["--url", "https://127.0.0.1:8030"]].concat());
    assert!(!ok);
    assert!(err.contains("plain http"), "{err}");
}
