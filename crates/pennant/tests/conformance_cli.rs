//! Runs the `pennant conformance` subcommand as a process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

const DATA_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/conformance/launchdarkly-eval");

fn pennant(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pennant")).args(args).output().expect("run the pennant binary")
}

/// A fresh, empty directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!("pennant-cli-test-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn last_line(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).lines().last().unwrap_or_default().to_owned()
}

#[test]
fn shared_data_passes() {
    let output = pennant(&["conformance", DATA_DIR]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(last_line(&output), "528 passed, 0 failed", "stdout:\n{stdout}");
    assert_eq!(output.status.code(), Some(0), "stderr:\n{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn empty_directory_fails_with_a_message() {
    let dir = TempDir::new("empty");
    let output = pennant(&["conformance", dir.path()]);
    assert_ne!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no conformance cases"), "stderr:\n{stderr}");
}

#[test]
fn failing_case_is_reported() {
    let dir = TempDir::new("failing");
    let suite = r#"
name: deliberately failing
sdkData:
  flags:
    off-flag:
      on: false
      offVariation: 0
      variations: [ "a", "b" ]
evaluations:
  - name: passes
    flagKey: off-flag
    context: { kind: "user", key: "u" }
    default: "x"
    expect:
      value: "a"
      variationIndex: 0
      reason: { kind: "OFF" }
  - name: wrong on purpose
    flagKey: off-flag
    context: { kind: "user", key: "u" }
    default: "x"
    expect:
      value: "b"
      variationIndex: 1
      reason: { kind: "OFF" }
"#;
    std::fs::write(dir.0.join("failing.yml"), suite).unwrap();
    std::fs::write(dir.0.join("ignored.txt"), "not a data file").unwrap();
    let output = pennant(&["conformance", dir.path()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "stdout:\n{stdout}");
    assert_eq!(last_line(&output), "1 passed, 1 failed", "stdout:\n{stdout}");
    assert!(stdout.contains("failing.yml: deliberately failing"), "stdout:\n{stdout}");
    assert!(stdout.contains("wrong on purpose"), "stdout:\n{stdout}");
    assert!(stdout.contains(r#""value":"b""#), "stdout:\n{stdout}");
    assert!(stdout.contains(r#""value":"a""#), "stdout:\n{stdout}");
    assert!(!stdout.contains("FAIL failing.yml: deliberately failing :: passes"), "stdout:\n{stdout}");
}

#[test]
fn load_errors_exit_2() {
    let dir = TempDir::new("broken");
    std::fs::write(dir.0.join("broken.yml"), "name: [unclosed\n").unwrap();
    let output = pennant(&["conformance", dir.path()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("broken.yml") && stderr.contains("invalid YAML"), "stderr:\n{stderr}");

    let output = pennant(&["conformance", "/nonexistent/pennant-cli-test"]);
    assert_eq!(output.status.code(), Some(2));
}
