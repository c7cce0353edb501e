//! Runs `pennant export`, `pennant import` and `pennant import-launchdarkly` as processes on SQLite files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use pennant_store::{
    Actor, ChangelogQuery, Environment, FlagDoc, ListQuery, Project, ProjectExport, SegmentDoc, Store,
};
use serde_json::json;

fn pennant(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pennant"))
        .args(args)
        .env_remove("PENNANT_DATABASE_URL")
        .output()
        .expect("run the pennant binary")
}

fn url(dir: &Path, name: &str) -> String {
    format!("sqlite://{}?mode=rwc", dir.join(name).display())
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn actor() -> Actor {
    Actor::system("test")
}

/// A project `p` with two environments, a segment and two flags (one using the segment and a prerequisite).
async fn seed(url: &str) {
    let s = Store::open(url).await.unwrap();
    s.create_project(&actor(), serde_json::from_value::<Project>(json!({"key": "p", "name": "P"})).unwrap(), "")
        .await
        .unwrap();
    for key in ["production", "test"] {
        let env: Environment = serde_json::from_value(json!({"key": key, "name": key})).unwrap();
        s.create_environment(&actor(), "p", env, "").await.unwrap();
    }
    let segment: SegmentDoc =
        serde_json::from_value(json!({"key": "beta", "name": "Beta", "included": ["u1"]})).unwrap();
    s.create_segment(&actor(), "p", "production", segment, "").await.unwrap();
    let base: FlagDoc = serde_json::from_value(json!({"key": "base", "name": "Base",
        "variations": [{"value": true}, {"value": false}]}))
    .unwrap();
    s.create_flag(&actor(), "p", base, "").await.unwrap();
    let f: FlagDoc = serde_json::from_value(json!({
        "key": "f", "name": "F", "variations": [{"value": "a"}, {"value": "b"}],
        "environments": {"production": {"on": true, "prerequisites": [{"key": "base", "variation": 1}],
            "rules": [{"id": "r", "variation": 0, "clauses": [{"attribute": "", "op": "segmentMatch", "values": ["beta"]}]}],
            "fallthrough": {"variation": 1}, "offVariation": 1}}
    }))
    .unwrap();
    s.create_flag(&actor(), "p", f, "").await.unwrap();
    s.close().await;
}

async fn project_count(url: &str) -> (i64, i64) {
    let s = Store::open(url).await.unwrap();
    let projects = s.list_projects(&ListQuery::default()).await.unwrap().total_count;
    let changes = s.changelog(&ChangelogQuery::default()).await.unwrap().total_count;
    s.close().await;
    (projects, changes)
}

#[tokio::test]
async fn export_then_import_into_another_database() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (url(dir.path(), "src.db"), url(dir.path(), "dst.db"));
    seed(&src).await;
    let file = dir.path().join("p.json");
    let file_arg = file.to_str().unwrap();

    let out = pennant(&["export", "--database-url", &src, "--project", "p", "--output", file_arg]);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", stderr(&out));
    assert!(stderr(&out).contains("2 environments, 2 flags, 1 segments"), "{}", stderr(&out));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("\n  \"format\": \"pennant-export\""), "pretty-printed:\n{text}");
    let export = ProjectExport::from_json(text.as_bytes()).unwrap();
    assert_eq!(export.flags.len(), 2);
    // To standard output by default: the same document.
    let out = pennant(&["export", "--database-url", &src, "--project", "p"]);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", stderr(&out));
    let from_stdout = ProjectExport::from_json(&out.stdout).unwrap();
    assert_eq!(from_stdout.flags.len(), 2);

    // A dry run reports and leaves the database empty.
    let out = pennant(&["import", "--database-url", &dst, file_arg, "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", stderr(&out));
    let report = stdout(&out);
    assert!(report.contains("Dry run") && report.contains("would create flag p/f"), "{report}");
    assert!(report.contains("flags: 2 to create, 0 to update, 0 unchanged"), "{report}");
    assert_eq!(project_count(&dst).await, (0, 0));

    let out = pennant(&["import", "--database-url", &dst, file_arg]);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", stderr(&out));
    assert!(stdout(&out).contains("created flag p/f"), "{}", stdout(&out));
    let s = Store::open(&dst).await.unwrap();
    let flag = s.get_flag("p", "f").await.unwrap().data;
    assert!(flag.environments["production"].on);
    assert_eq!(s.get_segment("p", "production", "beta").await.unwrap().data.segment.included, ["u1"]);
    let new_key = s.get_environment("p", "production").await.unwrap().data.sdk_key;
    s.close().await;
    let s = Store::open(&src).await.unwrap();
    assert_ne!(s.get_environment("p", "production").await.unwrap().data.sdk_key, new_key);
    s.close().await;

    // Again without --replace: refused, exit 1, with the problem on its own line.
    let out = pennant(&["import", "--database-url", &dst, file_arg]);
    assert_eq!(out.status.code(), Some(1), "stdout:\n{}", stdout(&out));
    assert!(
        stdout(&out).lines().any(|l| l.starts_with("problem: ") && l.contains("already exists")),
        "{}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("refused"), "{}", stderr(&out));
    // With --replace (the URL from the environment this time): nothing to change.
    let out = Command::new(env!("CARGO_BIN_EXE_pennant"))
        .args(["import", file_arg, "--replace"])
        .env("PENNANT_DATABASE_URL", &dst)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", stderr(&out));
    assert!(stdout(&out).contains("flags: 0 created, 0 updated, 2 unchanged"), "{}", stdout(&out));
}

#[tokio::test]
async fn bad_input_fails_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (url(dir.path(), "src.db"), url(dir.path(), "dst.db"));
    seed(&src).await;

    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, r#"{"hello": "world"}"#).unwrap();
    let out = pennant(&["import", "--database-url", &dst, junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not a Pennant export"), "{}", stderr(&out));
    std::fs::write(&junk, "not json at all").unwrap();
    let out = pennant(&["import", "--database-url", &dst, junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("junk.json"), "{}", stderr(&out));
    let out = pennant(&["import", "--database-url", &dst, "/nonexistent/pennant-export.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));
    let out = pennant(&["export", "--database-url", &src, "--project", "missing"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    let out = pennant(&["export", "--database-url", &url(dir.path(), "none.db"), "--project", "p"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no database"), "{}", stderr(&out));
    assert!(!dir.path().join("none.db").exists());
    let out = pennant(&["import", "--database-url", &dst]);
    assert_eq!(out.status.code(), Some(2), "usage error");

    // A flag that SDKs would find malformed: refused (exit 1), nothing written.
    let out = pennant(&["export", "--database-url", &src, "--project", "p"]);
    let mut export: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    export["flags"][1]["environments"]["test"]["fallthrough"] = json!({"variation": 9});
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, serde_json::to_vec(&export).unwrap()).unwrap();
    let out = pennant(&["import", "--database-url", &dst, bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "stdout:\n{}", stdout(&out));
    assert!(
        stdout(&out).lines().any(|l| l.starts_with("problem: flag \"f\": environments/test/fallthrough")),
        "{}",
        stdout(&out)
    );
    assert_eq!(project_count(&dst).await, (0, 0));
}

#[tokio::test]
async fn launchdarkly_payload_into_an_environment() {
    let dir = tempfile::tempdir().unwrap();
    let db = url(dir.path(), "db.db");
    seed(&db).await;
    let payload = json!({
        "flags": {
            "ld-flag": {"key": "ld-flag", "version": 4, "on": true, "variations": [1, 2, 3], "salt": "s",
                        "targets": [{"values": ["vip"], "variation": 2}],
                        "rules": [{"id": "r", "variation": 0, "clauses": [{"attribute": "", "op": "segmentMatch", "values": ["ld-seg"]}]}],
                        "fallthrough": {"variation": 1}, "offVariation": 0},
            "gone": {"key": "gone", "version": 2, "deleted": true}
        },
        "segments": {"ld-seg": {"key": "ld-seg", "version": 1, "included": ["u7"], "salt": "x"}}
    });
    let file = dir.path().join("ld.json");
    std::fs::write(&file, serde_json::to_vec(&payload).unwrap()).unwrap();
    let file_arg = file.to_str().unwrap();
    let args = ["import-launchdarkly", "--database-url", &db, "--project", "p", "--environment", "test", file_arg];

    let (_, before) = project_count(&db).await;
    let mut dry = args.to_vec();
    dry.push("--dry-run");
    let out = pennant(&dry);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", stderr(&out));
    assert!(stdout(&out).contains("would create flag p/ld-flag"), "{}", stdout(&out));
    assert!(stdout(&out).contains("skipped: deleted flag gone"), "{}", stdout(&out));
    assert_eq!(project_count(&db).await.1, before);

    let out = pennant(&args);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", stderr(&out));
    assert!(stdout(&out).contains("created segment p/test/ld-seg"), "{}", stdout(&out));
    let s = Store::open(&db).await.unwrap();
    let flag = s.get_flag("p", "ld-flag").await.unwrap().data;
    assert_eq!(flag.environments["test"].targets[0].values, ["vip"]);
    assert!(!flag.environments["production"].on);
    s.close().await;

    let out =
        pennant(&["import-launchdarkly", "--database-url", &db, "--project", "p", "--environment", "nope", file_arg]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    std::fs::write(&file, "[]").unwrap();
    let out = pennant(&args);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("flags"), "{}", stderr(&out));
}
