//! Export, import and LaunchDarkly payload import, run against both backends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use pennant_eval::{Context, MemoryStore, Store as _, evaluate};
use pennant_store::testing::TestDb;
use pennant_store::{
    Actor, ChangelogQuery, ContextKind, Environment, FlagDoc, ImportAction, ImportOptions, ListQuery, Project,
    ProjectExport, SegmentDoc, Store,
};
use serde_json::{Value, json};

fn actor() -> Actor {
    Actor { kind: "member".into(), id: "m1".into(), name: "ada@example.com".into() }
}

async fn same_backend(db: &TestDb) -> TestDb {
    match db.backend {
        "sqlite" => TestDb::sqlite().await.unwrap(),
        _ => TestDb::postgres().await.unwrap(),
    }
}

async fn changelog_count(s: &Store) -> i64 {
    s.changelog(&ChangelogQuery::default()).await.unwrap().total_count
}

fn dry() -> ImportOptions {
    ImportOptions { dry_run: true, replace: false }
}

fn replace() -> ImportOptions {
    ImportOptions { dry_run: false, replace: true }
}

/// A project with two environments, a context kind, segments, and flags using targets, rules, rollouts,
/// prerequisites and segments; one flag archived.
async fn seed(s: &Store) {
    let a = actor();
    s.create_project(
        &a,
        serde_json::from_value::<Project>(json!({"key": "p", "name": "P", "tags": ["t"]})).unwrap(),
        "",
    )
    .await
    .unwrap();
    for (key, secure) in [("production", true), ("test", false)] {
        let env: Environment = serde_json::from_value(
            json!({"key": key, "name": key.to_uppercase(), "color": "ff0000", "secureMode": secure}),
        )
        .unwrap();
        s.create_environment(&a, "p", env, "").await.unwrap();
    }
    s.put_context_kind(
        &a,
        "p",
        ContextKind { key: "org".into(), name: "Organisation".into(), description: "d".into() },
        "",
    )
    .await
    .unwrap();
    let beta: SegmentDoc = serde_json::from_value(json!({
        "key": "beta", "name": "Beta", "description": "early users", "tags": ["x"], "included": ["u1"],
        "rules": [{"id": "sr", "clauses": [{"attribute": "email", "op": "endsWith", "values": ["@beta.io"]}]}]
    }))
    .unwrap();
    s.create_segment(&a, "p", "production", beta, "").await.unwrap();
    s.update_segment(&a, "p", "production", "beta", None, "", |d| {
        d.segment.excluded.push("u9".into());
        Ok(())
    })
    .await
    .unwrap();
    let qa: SegmentDoc = serde_json::from_value(json!({"key": "qa", "name": "QA", "included": ["tester"]})).unwrap();
    s.create_segment(&a, "p", "test", qa, "").await.unwrap();

    let main: FlagDoc = serde_json::from_value(json!({
        "key": "main", "name": "Main", "description": "the main flag", "tags": ["core"], "temporary": false,
        "variations": [{"value": true, "name": "on"}, {"value": false, "name": "off"}],
        "clientSideAvailability": {"usingMobileKey": true, "usingEnvironmentId": true},
        "environments": {
            "production": {
                "on": true,
                "targets": [{"values": ["alice"], "variation": 0}],
                "contextTargets": [{"contextKind": "org", "values": ["acme"], "variation": 0}],
                "rules": [{"id": "r1", "variation": 0,
                           "clauses": [{"attribute": "", "op": "segmentMatch", "values": ["beta"]}]}],
                "fallthrough": {"rollout": {"variations": [{"variation": 0, "weight": 30000},
                                                            {"variation": 1, "weight": 70000}]}},
                "offVariation": 1, "trackEvents": true
            }
        }
    }))
    .unwrap();
    s.create_flag(&a, "p", main, "").await.unwrap();
    let colour: FlagDoc = serde_json::from_value(json!({
        "key": "colour", "name": "Colour",
        "variations": [{"value": "red"}, {"value": "green"}, {"value": "blue"}],
        "environments": {
            "production": {"on": true, "prerequisites": [{"key": "main", "variation": 0}],
                           "fallthrough": {"variation": 2}, "offVariation": 0},
            "test": {"on": true, "rules": [{"id": "q", "variation": 1,
                     "clauses": [{"attribute": "", "op": "segmentMatch", "values": ["qa"]}]}],
                     "fallthrough": {"variation": 0}, "offVariation": 0}
        }
    }))
    .unwrap();
    s.create_flag(&a, "p", colour, "").await.unwrap();
    let old: FlagDoc =
        serde_json::from_value(json!({"key": "old", "name": "Old", "variations": [{"value": 1}, {"value": 2}]}))
            .unwrap();
    s.create_flag(&a, "p", old, "").await.unwrap();
    s.update_flag(&a, "p", "old", None, "", |_, archived| {
        *archived = true;
        Ok(())
    })
    .await
    .unwrap();
}

/// An export as JSON with the parts that legitimately differ between installations taken out.
fn comparable(export: &ProjectExport) -> Value {
    let mut v = serde_json::to_value(export).unwrap();
    v.as_object_mut().unwrap().remove("exportedAt");
    for docs in v["segments"].as_object_mut().unwrap().values_mut() {
        for doc in docs.as_array_mut().unwrap() {
            doc["version"] = json!(0);
        }
    }
    v
}

#[tokio::test]
async fn export_then_import_reproduces_the_project() {
    for db in TestDb::both().await.unwrap() {
        seed(&db.store).await;
        let export = db.store.export_project("p").await.unwrap();
        let text = serde_json::to_string_pretty(&export).unwrap();
        // Credentials never leave.
        for env in db.store.list_environments("p", &ListQuery::default()).await.unwrap().items {
            for secret in [&env.data.sdk_key, &env.data.mobile_key, &env.data.client_side_id] {
                assert!(!text.contains(secret.as_str()), "{}: credential in export", db.backend);
            }
        }
        assert!(!text.contains("sdkKey") && !text.contains("mobileKey") && !text.contains("\"_id\""));
        let parsed = ProjectExport::from_json(text.as_bytes()).unwrap();
        assert_eq!(parsed.format, "pennant-export");
        assert_eq!(parsed.version, 1);
        assert_eq!(parsed.flags.len(), 3);
        assert!(parsed.flags.iter().any(|f| f.flag.key == "old" && f.archived));

        let target = same_backend(&db).await;
        let t = &target.store;
        let report = t.import_project(&actor(), &parsed, ImportOptions::default()).await.unwrap();
        assert!(report.applied && !report.refused(), "{}: {report}", db.backend);
        assert_eq!((report.projects.created, report.environments.created), (1, 2));
        assert_eq!((report.context_kinds.created, report.flags.created, report.segments.created), (1, 3, 2));
        assert!(report.changes.iter().all(|c| c.action == ImportAction::Create));

        // The target exports the same project.
        let again = t.export_project("p").await.unwrap();
        assert_eq!(comparable(&again), comparable(&export), "{}", db.backend);

        // Environments got new credentials that work.
        for key in ["production", "test"] {
            let old = db.store.get_environment("p", key).await.unwrap().data;
            let new = t.get_environment("p", key).await.unwrap().data;
            assert_eq!((new.name.as_str(), new.color.as_str()), (old.name.as_str(), "ff0000"));
            assert_eq!(new.secure_mode, key == "production");
            assert_ne!(new.sdk_key, old.sdk_key);
            assert_ne!(new.client_side_id, old.client_side_id);
            assert!(new.sdk_key.starts_with("sdk-") && new.mobile_key.starts_with("mob-"));
            let found = t.find_credential(&new.sdk_key).await.unwrap().unwrap();
            assert_eq!((found.project_key.as_str(), found.env_key.as_str()), ("p", key));
            assert!(t.find_credential(&new.mobile_key).await.unwrap().is_some());
            assert!(t.find_credential(&new.client_side_id).await.unwrap().is_some());
        }
        let kinds = t.list_context_kinds("p").await.unwrap();
        assert!(kinds.iter().any(|k| k.data.key == "org" && k.data.name == "Organisation"));
        assert!(t.get_flag("p", "old").await.unwrap().archived);
        let seg = t.get_segment("p", "production", "beta").await.unwrap();
        assert_eq!((seg.version, seg.data.segment.excluded.as_slice()), (1, ["u9".to_owned()].as_slice()));

        // The SDK payloads are the same (bar versions).
        for env in ["production", "test"] {
            let a = db.store.sdk_payload("p", env).await.unwrap();
            let b = t.sdk_payload("p", env).await.unwrap();
            for key in ["main", "colour", "old"] {
                let mut fa = serde_json::to_value(a.flag(key).unwrap()).unwrap();
                let mut fb = serde_json::to_value(b.flag(key).unwrap()).unwrap();
                fa["version"] = json!(0);
                fb["version"] = json!(0);
                assert_eq!(fa, fb, "{} {env} {key}", db.backend);
            }
        }

        // Every resource has an import entry; flags and segments reached the outbox.
        let log = t.changelog(&ChangelogQuery { limit: Some(500), ..Default::default() }).await.unwrap();
        assert_eq!(log.total_count, 9);
        assert!(log.items.iter().all(|e| e.action == "import" && e.actor == actor()));
        assert!(
            !serde_json::to_string(&log.items)
                .unwrap()
                .contains(&t.get_environment("p", "test").await.unwrap().data.sdk_key)
        );
        let outbox = t.outbox_after(0, 1000).await.unwrap();
        assert_eq!(outbox.iter().filter(|r| r.kind == "flag").count(), 6, "3 flags × 2 environments");
        assert_eq!(outbox.iter().filter(|r| r.kind == "segment").count(), 2);
    }
}

#[tokio::test]
async fn dry_run_reports_and_writes_nothing() {
    for db in TestDb::both().await.unwrap() {
        seed(&db.store).await;
        let export = db.store.export_project("p").await.unwrap();
        let target = same_backend(&db).await;
        let t = &target.store;
        let report = t.import_project(&actor(), &export, dry()).await.unwrap();
        assert!(report.dry_run && !report.applied && !report.refused(), "{report}");
        assert_eq!((report.flags.created, report.segments.created, report.environments.created), (3, 2, 2));
        let text = report.to_string();
        assert!(text.contains("Dry run") && text.contains("would create flag p/main"), "{text}");
        assert_eq!(changelog_count(t).await, 0);
        assert_eq!(t.list_projects(&ListQuery::default()).await.unwrap().total_count, 0);
        assert!(t.outbox_after(0, 10).await.unwrap().is_empty());
        assert!(t.find_credential("sdk-anything").await.unwrap().is_none());

        // Dry run with replace on the source: everything unchanged, nothing written.
        let count = changelog_count(&db.store).await;
        let report =
            db.store.import_project(&actor(), &export, ImportOptions { dry_run: true, replace: true }).await.unwrap();
        assert!(!report.refused(), "{report}");
        assert!(report.changes.is_empty(), "{report}");
        assert_eq!(report.flags.unchanged, 3);
        assert_eq!(changelog_count(&db.store).await, count);
        // And a real import still works afterwards (the dry run released its locks).
        let report = t.import_project(&actor(), &export, ImportOptions::default()).await.unwrap();
        assert!(report.applied, "{report}");
    }
}

#[tokio::test]
async fn an_invalid_flag_refuses_the_whole_import() {
    for db in TestDb::both().await.unwrap() {
        seed(&db.store).await;
        let mut export = db.store.export_project("p").await.unwrap();
        for f in &mut export.flags {
            match f.flag.key.as_str() {
                "main" => f.flag.environments.get_mut("test").unwrap().fallthrough.variation = Some(7),
                "colour" => {
                    let rules = &mut f.flag.environments.get_mut("production").unwrap().rules;
                    *rules = serde_json::from_value(json!([{"id": "x", "variation": 0,
                        "clauses": [{"attribute": "", "op": "segmentMatch", "values": ["nope"]}]}]))
                    .unwrap();
                }
                _ => {}
            }
        }
        let target = same_backend(&db).await;
        let t = &target.store;
        let report = t.import_project(&actor(), &export, ImportOptions::default()).await.unwrap();
        assert!(report.refused() && !report.applied, "{report}");
        assert_eq!(report.problems.len(), 2, "{report}");
        assert!(report.problems.iter().any(|p| p.contains("\"main\"") && p.contains("environments/test/fallthrough")));
        assert!(report.problems.iter().any(|p| p.contains("\"colour\"") && p.contains("unknown segment \"nope\"")));
        let text = report.to_string();
        assert!(text.contains("refused") && text.lines().filter(|l| l.starts_with("problem: ")).count() == 2, "{text}");
        assert_eq!(changelog_count(t).await, 0);
        assert_eq!(t.list_projects(&ListQuery::default()).await.unwrap().total_count, 0);
        assert!(t.outbox_after(0, 10).await.unwrap().is_empty());

        // A reference to an environment the project does not have is a problem too.
        let mut export = db.store.export_project("p").await.unwrap();
        export.segments.insert("staging".into(), Vec::new());
        let report = t.import_project(&actor(), &export, ImportOptions::default()).await.unwrap();
        assert!(report.problems.iter().any(|p| p.contains("unknown environment \"staging\"")), "{report}");
        assert_eq!(changelog_count(t).await, 0);
    }
}

#[tokio::test]
async fn existing_projects_need_replace_which_bumps_versions() {
    for db in TestDb::both().await.unwrap() {
        seed(&db.store).await;
        let s = &db.store;
        let mut export = s.export_project("p").await.unwrap();
        let count = changelog_count(s).await;
        let report = s.import_project(&actor(), &export, ImportOptions::default()).await.unwrap();
        assert!(report.refused(), "{report}");
        assert!(report.problems[0].contains("already exists"), "{report}");
        assert_eq!(changelog_count(s).await, count);

        let main_before = s.get_flag("p", "main").await.unwrap();
        let sdk_key = s.get_environment("p", "test").await.unwrap().data.sdk_key;
        for f in &mut export.flags {
            if f.flag.key == "main" {
                f.flag.name = "Main, renamed".into();
                f.flag.environments.get_mut("test").unwrap().on = true;
            }
        }
        export.segments.get_mut("production").unwrap()[0].segment.included.push("u2".into());
        export.environments[1].name = "Testing".into();
        export.flags.push(
            serde_json::from_value(json!({"key": "brand-new", "name": "New",
            "variations": [{"value": "a"}, {"value": "b"}]}))
            .unwrap(),
        );
        let outbox_before = s.outbox_after(0, 1000).await.unwrap().len();
        let report = s.import_project(&actor(), &export, replace()).await.unwrap();
        assert!(report.applied, "{report}");
        assert_eq!((report.flags.created, report.flags.updated, report.flags.unchanged), (1, 1, 2), "{report}");
        assert_eq!((report.segments.updated, report.segments.unchanged), (1, 1), "{report}");
        assert_eq!((report.environments.updated, report.environments.unchanged), (1, 1), "{report}");
        assert_eq!((report.projects.unchanged, report.context_kinds.unchanged), (1, 1), "{report}");
        let text = report.to_string();
        assert!(text.contains("updated flag p/main") && text.contains("created flag p/brand-new"), "{text}");

        let main = s.get_flag("p", "main").await.unwrap();
        assert_eq!(main.version, main_before.version + 1);
        assert_eq!(main.data.name, "Main, renamed");
        assert!(main.data.environments["test"].on);
        // Salts are kept, so bucketing does not move.
        assert_eq!(main.data.environments["production"].salt, main_before.data.environments["production"].salt);
        assert_eq!(s.get_flag("p", "colour").await.unwrap().version, 1);
        let beta = s.get_segment("p", "production", "beta").await.unwrap();
        assert_eq!((beta.version, beta.data.segment.version), (3, 3));
        assert_eq!(beta.data.segment.included, ["u1", "u2"]);
        let test_env = s.get_environment("p", "test").await.unwrap();
        assert_eq!((test_env.version, test_env.data.name.as_str()), (2, "Testing"));
        assert_eq!(test_env.data.sdk_key, sdk_key, "credentials of existing environments stay");
        let brand_new = s.get_flag("p", "brand-new").await.unwrap().data;
        assert_eq!(brand_new.environments.len(), 2);
        assert_eq!(brand_new.environments["test"].off_variation, Some(1));

        // Changelog entries for the four changed resources; outbox rows for what SDKs see.
        let log = s.changelog(&ChangelogQuery { limit: Some(10), ..Default::default() }).await.unwrap();
        assert_eq!(log.total_count, count + 4);
        assert!(log.items[..4].iter().all(|e| e.action == "import"));
        let outbox: Vec<_> = s.outbox_after(0, 1000).await.unwrap().into_iter().skip(outbox_before).collect();
        let keys: Vec<_> = outbox.iter().map(|r| format!("{}/{}/{}@{}", r.env_key, r.kind, r.key, r.version)).collect();
        assert_eq!(
            keys,
            ["production/segment/beta@3", "test/flag/main@2", "production/flag/brand-new@1", "test/flag/brand-new@1"],
            "{}",
            db.backend
        );

        // Importing the same again changes nothing.
        let report = s.import_project(&actor(), &export, replace()).await.unwrap();
        assert!(report.changes.is_empty(), "{report}");
        assert_eq!(changelog_count(s).await, count + 4);
    }
}

/// LaunchDarkly's server-side payload, as `/sdk/latest-all` returns it.
fn ld_payload() -> Value {
    json!({
        "flags": {
            "checkout": {
                "key": "checkout", "version": 12, "on": true, "salt": "c0ffee",
                "variations": [true, false],
                "targets": [{"values": ["alice"], "variation": 0}],
                "contextTargets": [{"contextKind": "user", "values": [], "variation": 0},
                                   {"contextKind": "org", "values": ["acme"], "variation": 1}],
                "rules": [
                    {"id": "email", "variation": 0, "trackEvents": true,
                     "clauses": [{"contextKind": "user", "attribute": "email", "op": "endsWith",
                                  "values": ["@example.com"], "negate": false}]},
                    {"id": "beta", "clauses": [{"attribute": "segmentMatch", "op": "segmentMatch", "values": ["beta-users"]}],
                     "rollout": {"variations": [{"variation": 0, "weight": 50000}, {"variation": 1, "weight": 50000}]}}
                ],
                "fallthrough": {"rollout": {"bucketBy": "country", "variations": [
                    {"variation": 0, "weight": 20000}, {"variation": 1, "weight": 80000}]}},
                "offVariation": 1, "prerequisites": [],
                "clientSideAvailability": {"usingMobileKey": true, "usingEnvironmentId": false},
                "trackEvents": false, "trackEventsFallthrough": true, "debugEventsUntilDate": null,
                "deleted": false
            },
            "banner": {
                "key": "banner", "version": 3, "on": true, "salt": "b4nn3r",
                "variations": ["none", "summer", "winter"],
                "prerequisites": [{"key": "checkout", "variation": 0}],
                "rules": [{"id": "fr", "variation": 1,
                           "clauses": [{"attribute": "country", "op": "in", "values": ["fr", "de"]}]},
                          {"id": "xp", "clauses": [{"attribute": "plan", "op": "in", "values": ["pro"]}],
                           "rollout": {"kind": "experiment", "seed": 42, "variations": [
                               {"variation": 1, "weight": 40000}, {"variation": 2, "weight": 60000},
                               {"variation": 0, "weight": 0, "untracked": true}]}}],
                "fallthrough": {"variation": 2}, "offVariation": 0,
                "clientSide": true
            },
            "kill-switch": {"key": "kill-switch", "version": 1, "on": false, "offVariation": 1,
                             "variations": [{"limit": 10}, {"limit": 0}], "fallthrough": {"variation": 0}, "salt": "k"},
            "gone": {"key": "gone", "version": 9, "deleted": true}
        },
        "segments": {
            "beta-users": {"key": "beta-users", "version": 4, "salt": "s4lt",
                           "included": ["bob"], "excluded": ["mallory"],
                           "includedContexts": [{"contextKind": "org", "values": ["initech"]}],
                           "rules": [{"id": "sr", "clauses": [{"attribute": "country", "op": "in", "values": ["se"]}]}]},
            "old-segment": {"key": "old-segment", "version": 2, "deleted": true}
        }
    })
}

const COUNTRIES: [&str; 4] = ["se", "us", "fr", "de"];

fn contexts() -> Vec<Context> {
    let mut raw = vec![
        json!({"kind": "user", "key": "alice"}),
        json!({"kind": "user", "key": "bob"}),
        json!({"kind": "user", "key": "mallory", "email": "m@example.com"}),
        json!({"kind": "user", "key": "carol", "email": "carol@example.com", "country": "fr"}),
        json!({"kind": "org", "key": "acme"}),
        json!({"kind": "org", "key": "initech"}),
        json!({"kind": "multi", "user": {"key": "dave", "plan": "pro"}, "org": {"key": "acme"}}),
    ];
    for i in 0..30 {
        raw.push(json!({"kind": "user", "key": format!("user-{i}"), "country": COUNTRIES[i % 4],
                        "plan": if i % 3 == 0 { "pro" } else { "free" }}));
    }
    raw.iter().map(|c| Context::from_json(c.to_string().as_bytes()).unwrap()).collect()
}

async fn project_with_two_envs(s: &Store) {
    s.create_project(&actor(), serde_json::from_value::<Project>(json!({"key": "p", "name": "P"})).unwrap(), "")
        .await
        .unwrap();
    for key in ["production", "test"] {
        let env: Environment = serde_json::from_value(json!({"key": key, "name": key})).unwrap();
        s.create_environment(&actor(), "p", env, "").await.unwrap();
    }
}

#[tokio::test]
async fn launchdarkly_payload_evaluates_the_same() {
    for db in TestDb::both().await.unwrap() {
        let s = &db.store;
        project_with_two_envs(s).await;
        let bytes = serde_json::to_vec(&ld_payload()).unwrap();

        // A dry run first: reported, not written.
        let count = changelog_count(s).await;
        let report = s.import_launchdarkly_payload(&actor(), "p", "production", &bytes, dry()).await.unwrap();
        assert!(!report.applied && !report.refused(), "{report}");
        assert_eq!((report.flags.created, report.segments.created), (3, 1), "{report}");
        assert_eq!(report.skipped.len(), 2, "{report}");
        assert_eq!(changelog_count(s).await, count);
        assert_eq!(s.list_flags("p", &ListQuery::default()).await.unwrap().total_count, 0);

        let report =
            s.import_launchdarkly_payload(&actor(), "p", "production", &bytes, ImportOptions::default()).await.unwrap();
        assert!(report.applied, "{}: {report}", db.backend);
        assert_eq!(changelog_count(s).await, count + 4);
        assert!(matches!(s.get_flag("p", "gone").await, Err(pennant_store::StoreError::NotFound { .. })));

        let original = MemoryStore::from_payload_json(&bytes).unwrap();
        let imported = s.sdk_payload("p", "production").await.unwrap();
        let mut compared = 0;
        let mut kinds = std::collections::BTreeSet::new();
        for key in ["checkout", "banner", "kill-switch"] {
            let want_flag = original.flag(key).unwrap();
            let got_flag = imported.flag(key).unwrap();
            for context in contexts() {
                let want = evaluate(&original, want_flag, &context);
                let got = evaluate(&imported, got_flag, &context);
                assert_eq!(
                    (got.value, got.variation_index, got.reason),
                    (want.value, want.variation_index, want.reason),
                    "{} {key} {context:?}",
                    db.backend
                );
                kinds.insert(got.reason.kind());
                compared += 1;
            }
        }
        assert_eq!(compared, 3 * 37);
        // The contexts exercise every path, and none is an error.
        assert_eq!(
            kinds.into_iter().collect::<Vec<_>>(),
            ["FALLTHROUGH", "OFF", "PREREQUISITE_FAILED", "RULE_MATCH", "TARGET_MATCH"]
        );

        // The flag document: name = key, variations and client-side availability from LaunchDarkly.
        let checkout = s.get_flag("p", "checkout").await.unwrap().data;
        assert_eq!(checkout.name, "checkout");
        assert!(checkout.client_side_availability.using_mobile_key);
        assert!(s.get_flag("p", "banner").await.unwrap().data.client_side_availability.using_environment_id);
        let prod = &checkout.environments["production"];
        assert_eq!((prod.salt.as_str(), prod.track_events_fallthrough), ("c0ffee", true));
        // Other environments got the default configuration: off, serving the last variation.
        let test = &checkout.environments["test"];
        assert!(!test.on && test.rules.is_empty());
        assert_eq!(test.off_variation, Some(1));
        let seg = s.get_segment("p", "production", "beta-users").await.unwrap();
        assert_eq!((seg.data.name.as_str(), seg.data.segment.salt.as_str()), ("beta-users", "s4lt"));

        // Again: nothing changes. With a changed rule: only that flag, only that environment.
        let report =
            s.import_launchdarkly_payload(&actor(), "p", "production", &bytes, ImportOptions::default()).await.unwrap();
        assert!(report.changes.is_empty(), "{report}");
        let mut changed = ld_payload();
        changed["flags"]["kill-switch"]["on"] = json!(true);
        let outbox_before = s.outbox_after(0, 1000).await.unwrap().len();
        let report = s
            .import_launchdarkly_payload(
                &actor(),
                "p",
                "production",
                &serde_json::to_vec(&changed).unwrap(),
                ImportOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!((report.flags.updated, report.flags.unchanged), (1, 2), "{report}");
        let outbox: Vec<_> = s.outbox_after(0, 1000).await.unwrap().into_iter().skip(outbox_before).collect();
        assert_eq!(outbox.len(), 1);
        assert_eq!(
            (outbox[0].env_key.as_str(), outbox[0].key.as_str(), outbox[0].version),
            ("production", "kill-switch", 2)
        );

        // Into the other environment: the existing flags keep their production configuration.
        let report =
            s.import_launchdarkly_payload(&actor(), "p", "test", &bytes, ImportOptions::default()).await.unwrap();
        assert_eq!(report.flags.updated, 3, "{report}");
        let checkout = s.get_flag("p", "checkout").await.unwrap().data;
        assert!(checkout.environments["test"].on && checkout.environments["production"].on);

        // Different variations for an existing flag refuse the whole import.
        let mut clash = ld_payload();
        clash["flags"]["checkout"]["variations"] = json!(["yes", "no"]);
        clash["flags"]["kill-switch"]["on"] = json!(false);
        let count = changelog_count(s).await;
        let report = s
            .import_launchdarkly_payload(
                &actor(),
                "p",
                "production",
                &serde_json::to_vec(&clash).unwrap(),
                ImportOptions::default(),
            )
            .await
            .unwrap();
        assert!(report.refused() && !report.applied, "{report}");
        assert!(
            report.problems.iter().any(|p| p.contains("\"checkout\"") && p.contains("variations differ")),
            "{report}"
        );
        assert_eq!(changelog_count(s).await, count);
        assert!(s.get_flag("p", "kill-switch").await.unwrap().data.environments["production"].on);

        // A rule pointing at a segment the payload lacks is a problem; junk is an error; unknown environments too.
        let mut dangling = ld_payload();
        dangling["segments"].as_object_mut().unwrap().remove("beta-users");
        let project = "p";
        let target = same_backend(&db).await;
        project_with_two_envs(&target.store).await;
        let report = target
            .store
            .import_launchdarkly_payload(
                &actor(),
                project,
                "production",
                &serde_json::to_vec(&dangling).unwrap(),
                ImportOptions::default(),
            )
            .await
            .unwrap();
        assert!(report.problems.iter().any(|p| p.contains("unknown segment \"beta-users\"")), "{report}");
        assert_eq!(target.store.list_flags("p", &ListQuery::default()).await.unwrap().total_count, 0);
        assert!(
            s.import_launchdarkly_payload(&actor(), "p", "production", b"[1, 2]", ImportOptions::default())
                .await
                .is_err()
        );
        assert!(
            s.import_launchdarkly_payload(&actor(), "p", "staging", &bytes, ImportOptions::default()).await.is_err()
        );
    }
}
