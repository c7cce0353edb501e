//! The store's behaviour, run against both backends: a SQLite file and a PostgreSQL database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use pennant_store::testing::TestDb;
use pennant_store::{
    Actor, ChangelogQuery, Environment, ExternalChange, FlagDoc, ListQuery, NewToken, Project, Role, SegmentDoc,
    SortOrder, StoreError,
};
use serde_json::json;

fn actor() -> Actor {
    Actor { kind: "member".into(), id: "m1".into(), name: "ada@example.com".into() }
}

fn env(key: &str) -> Environment {
    serde_json::from_value(json!({"key": key, "name": key})).unwrap()
}

fn flag(key: &str) -> FlagDoc {
    serde_json::from_value(json!({"key": key, "name": key, "variations": [{"value": true}, {"value": false}]})).unwrap()
}

async fn project_with_envs(db: &TestDb) {
    let s = &db.store;
    s.create_project(&actor(), serde_json::from_value::<Project>(json!({"key": "p", "name": "P"})).unwrap(), "")
        .await
        .unwrap();
    s.create_environment(&actor(), "p", env("production"), "").await.unwrap();
    s.create_environment(&actor(), "p", env("test"), "").await.unwrap();
}

async fn changelog_count(db: &TestDb) -> i64 {
    db.store.changelog(&ChangelogQuery::default()).await.unwrap().total_count
}

#[tokio::test]
async fn flag_lifecycle_versions_audits_and_outbox() {
    for db in TestDb::both().await.unwrap() {
        project_with_envs(&db).await;
        let s = &db.store;
        let created = s.create_flag(&actor(), "p", flag("f"), "new flag").await.unwrap();
        assert_eq!(created.version, 1, "{}", db.backend);
        // Every environment got the default configuration: off, serving the last variation.
        assert_eq!(created.data.environments.len(), 2);
        assert_eq!(created.data.environments["production"].off_variation, Some(1));
        assert!(!created.data.environments["production"].salt.is_empty());

        let outbox_before = s.outbox_after(0, 100).await.unwrap().len();
        let updated = s
            .update_flag(&actor(), "p", "f", Some(1), "turn on", |doc, _| {
                doc.environments.get_mut("production").unwrap().on = true;
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(updated.version, 2);
        // Only production's SDK view changed.
        let outbox = s.outbox_after(0, 100).await.unwrap();
        assert_eq!(outbox.len(), outbox_before + 1);
        let last = outbox.last().unwrap();
        assert_eq!((last.env_key.as_str(), last.key.as_str(), last.version), ("production", "f", 2));

        let entries =
            s.changelog(&ChangelogQuery { resource_key: Some("f".into()), ..Default::default() }).await.unwrap();
        assert_eq!(entries.items.len(), 2);
        let update = &entries.items[0];
        assert_eq!((update.action.as_str(), update.comment.as_str()), ("update", "turn on"));
        assert_eq!(update.actor, actor());
        assert_eq!(update.diff, json!([{"op": "replace", "path": "/environments/production/on", "value": true}]));

        // A stale version is a conflict and writes nothing.
        let count = changelog_count(&db).await;
        let err = s
            .update_flag(&actor(), "p", "f", Some(1), "", |doc, _| {
                doc.name = "x".into();
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict { expected: 1, actual: 2, .. }), "{err}");
        // A flag SDKs would find malformed is refused and writes nothing.
        let err = s
            .update_flag(&actor(), "p", "f", None, "", |doc, _| {
                doc.environments.get_mut("test").unwrap().fallthrough.variation = Some(5);
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Invalid { issues, .. } if issues[0].contains("environments/test/fallthrough")),
            "{err}"
        );
        assert_eq!(changelog_count(&db).await, count);
        assert_eq!(s.get_flag("p", "f").await.unwrap().version, 2);

        // The SDK payload renders the flag for the environment.
        let payload = s.sdk_payload("p", "production").await.unwrap();
        use pennant_eval::Store as _;
        let rendered = payload.flag("f").unwrap();
        assert!(rendered.on);
        assert_eq!(rendered.version, 2);

        // Archive, restore, delete.
        let archived = s
            .update_flag(&actor(), "p", "f", None, "", |_, a| {
                *a = true;
                Ok(())
            })
            .await
            .unwrap();
        assert!(archived.archived);
        let live = s.list_flags("p", &ListQuery::default()).await.unwrap();
        assert_eq!(live.total_count, 0);
        let gone = s.list_flags("p", &ListQuery { archived: Some(true), ..Default::default() }).await.unwrap();
        assert_eq!(gone.total_count, 1);
        s.delete_flag(&actor(), "p", "f", "").await.unwrap();
        assert!(matches!(s.get_flag("p", "f").await, Err(StoreError::NotFound { .. })));
        let actions: Vec<String> = s
            .changelog(&ChangelogQuery { resource_key: Some("f".into()), ..Default::default() })
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(actions, ["delete", "archive", "update", "create"]);
    }
}

#[tokio::test]
async fn references_are_validated() {
    for db in TestDb::both().await.unwrap() {
        project_with_envs(&db).await;
        let s = &db.store;
        let mut with_segment = flag("uses-segment");
        with_segment.environments.insert("production".into(), serde_json::from_value(json!({
            "rules": [{"id": "r", "variation": 0, "clauses": [{"attribute": "", "op": "segmentMatch", "values": ["beta"]}]}],
            "fallthrough": {"variation": 1}, "offVariation": 1
        })).unwrap());
        let err = s.create_flag(&actor(), "p", with_segment.clone(), "").await.unwrap_err();
        assert!(err.to_string().contains("unknown segment \"beta\""), "{err}");
        let segment: SegmentDoc =
            serde_json::from_value(json!({"key": "beta", "name": "Beta", "included": ["u1"]})).unwrap();
        s.create_segment(&actor(), "p", "production", segment, "").await.unwrap();
        s.create_flag(&actor(), "p", with_segment, "").await.unwrap();
        let err = s.delete_segment(&actor(), "p", "production", "beta", "").await.unwrap_err();
        assert!(err.to_string().contains("uses segment"), "{err}");

        // Prerequisite cycles are refused.
        s.create_flag(&actor(), "p", flag("a"), "").await.unwrap();
        s.create_flag(&actor(), "p", flag("b"), "").await.unwrap();
        s.update_flag(&actor(), "p", "a", None, "", |d, _| {
            d.environments.get_mut("test").unwrap().prerequisites =
                vec![pennant_eval::Prerequisite { key: "b".into(), variation: 0 }];
            Ok(())
        })
        .await
        .unwrap();
        let err = s
            .update_flag(&actor(), "p", "b", None, "", |d, _| {
                d.environments.get_mut("test").unwrap().prerequisites =
                    vec![pennant_eval::Prerequisite { key: "a".into(), variation: 0 }];
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("cycle"), "{err}");
        let err = s.delete_flag(&actor(), "p", "b", "").await.unwrap_err();
        assert!(err.to_string().contains("prerequisite"), "{err}");

        // Segment updates bump the version the SDK sees and land in the outbox.
        let seg = s
            .update_segment(&actor(), "p", "production", "beta", Some(1), "", |d| {
                d.segment.included.push("u2".into());
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!((seg.version, seg.data.segment.version), (2, 2));
        let payload = s.sdk_payload("p", "production").await.unwrap();
        use pennant_eval::Store as _;
        assert_eq!(payload.segment("beta").unwrap().included, ["u1", "u2"]);
        let last = s.outbox_after(0, 1000).await.unwrap().pop().unwrap();
        assert_eq!((last.kind.as_str(), last.key.as_str(), last.version), ("segment", "beta", 2));
    }
}

#[tokio::test]
async fn lists_filter_sort_and_page() {
    for db in TestDb::both().await.unwrap() {
        project_with_envs(&db).await;
        let s = &db.store;
        for i in 0..25 {
            let mut f = flag(&format!("flag-{i:02}"));
            f.name = format!("Flag {}", 24 - i);
            if i % 5 == 0 {
                f.tags = vec!["ops".into()];
            }
            s.create_flag(&actor(), "p", f, "").await.unwrap();
        }
        let tagged = s.list_flags("p", &ListQuery { tag: Some("ops".into()), ..Default::default() }).await.unwrap();
        assert_eq!(tagged.total_count, 5);
        let text = s.list_flags("p", &ListQuery { text: Some("FLAG-1".into()), ..Default::default() }).await.unwrap();
        assert_eq!(text.total_count, 10);
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            let q = ListQuery {
                limit: Some(7),
                cursor: cursor.clone(),
                sort: SortOrder::Key,
                descending: true,
                ..Default::default()
            };
            let page = s.list_flags("p", &q).await.unwrap();
            assert_eq!(page.total_count, 25);
            keys.extend(page.items.into_iter().map(|r| r.data.key));
            cursor = page.next_cursor;
            if cursor.is_none() {
                break;
            }
        }
        let mut want: Vec<String> = (0..25).map(|i| format!("flag-{i:02}")).collect();
        want.reverse();
        assert_eq!(keys, want, "{}", db.backend);
        let by_name = s
            .list_flags("p", &ListQuery { sort: SortOrder::Name, limit: Some(3), ..Default::default() })
            .await
            .unwrap();
        let names: Vec<_> = by_name.items.iter().map(|r| r.data.name.as_str()).collect();
        assert_eq!(names, ["Flag 0", "Flag 1", "Flag 10"]);
        assert!(s.list_flags("p", &ListQuery { cursor: Some("zz".into()), ..Default::default() }).await.is_err());
    }
}

#[tokio::test]
async fn credentials_rotate_with_overlap() {
    for db in TestDb::both().await.unwrap() {
        project_with_envs(&db).await;
        let s = &db.store;
        let prod = s.get_environment("p", "production").await.unwrap().data;
        assert!(prod.sdk_key.starts_with("sdk-") && prod.mobile_key.starts_with("mob-"));
        let found = s.find_credential(&prod.sdk_key).await.unwrap().unwrap();
        assert_eq!((found.kind.as_str(), found.env_key.as_str()), ("sdk", "production"));
        assert_eq!(s.find_credential(&prod.client_side_id).await.unwrap().unwrap().kind, "client");
        let rotated = s.rotate_key(&actor(), "p", "production", "sdk", 60_000, "").await.unwrap().data;
        assert_ne!(rotated.sdk_key, prod.sdk_key);
        assert!(s.find_credential(&prod.sdk_key).await.unwrap().is_some(), "old key works during the overlap");
        assert!(s.find_credential(&rotated.sdk_key).await.unwrap().is_some());
        let again = s.rotate_key(&actor(), "p", "production", "mobile", 0, "").await.unwrap().data;
        assert!(s.find_credential(&prod.mobile_key).await.unwrap().is_none(), "no overlap: old key stops at once");
        assert!(s.find_credential(&again.mobile_key).await.unwrap().is_some());
        // Secrets never reach the changelog.
        let log = s
            .changelog(&ChangelogQuery { resource_kind: Some("environment".into()), ..Default::default() })
            .await
            .unwrap();
        assert!(!serde_json::to_string(&log.items).unwrap().contains(&rotated.sdk_key));
        // Updates may not touch credentials.
        let err = s
            .update_environment(&actor(), "p", "production", None, "", |e| {
                e.sdk_key = "sdk-mine".into();
                Ok(())
            })
            .await;
        assert!(matches!(err, Err(StoreError::Invalid { .. })));
        s.delete_environment(&actor(), "p", "production", "").await.unwrap();
        assert!(s.find_credential(&rotated.sdk_key).await.unwrap().is_none());
        assert!(s.sdk_payload("p", "production").await.is_err());
    }
}

#[tokio::test]
async fn tokens_members_sessions_and_changelog_queries() {
    for db in TestDb::both().await.unwrap() {
        let s = &db.store;
        let member = s
            .create_member(&Actor::system("bootstrap"), "Ada@Example.com", "Ada", Role::Admin, "$argon2id$x")
            .await
            .unwrap();
        assert_eq!(member.email, "ada@example.com");
        assert!(matches!(
            s.create_member(&actor(), "ada@example.com", "A", Role::Reader, "h").await,
            Err(StoreError::AlreadyExists { .. })
        ));
        let session = s.create_session(&member.id, 60_000).await.unwrap();
        assert_eq!(s.session_member(&session).await.unwrap().unwrap().id, member.id);
        s.delete_session(&session).await.unwrap();
        assert!(s.session_member(&session).await.unwrap().is_none());

        let (token, secret) = s
            .create_token(&actor(), NewToken { name: "ci".into(), role: Role::Writer, projects: vec!["p".into()] })
            .await
            .unwrap();
        let found = s.token_by_secret(&secret).await.unwrap().unwrap();
        assert_eq!(
            (found.id.as_str(), found.role, found.projects.as_slice()),
            (token.id.as_str(), Role::Writer, ["p".to_owned()].as_slice())
        );
        assert!(found.last_used.is_some());
        // Within a minute of the last recorded use, a lookup writes nothing (last_used stays as it was).
        let again = s.token_by_secret(&secret).await.unwrap().unwrap();
        assert_eq!(again.last_used, found.last_used);
        assert_eq!(s.token(&token.id).await.unwrap().last_used, found.last_used);
        assert!(s.token_by_secret("api-nope").await.unwrap().is_none());
        s.delete_token(&actor(), &token.id).await.unwrap();
        assert!(s.token_by_secret(&secret).await.unwrap().is_none());

        let change = ExternalChange {
            kind: "deploy".into(),
            scope: "p".into(),
            key: "api-server".into(),
            action: "deployed v1.2.3".into(),
            comment: "rolled out by CI".into(),
            details: Some(json!({"sha": "abc"})),
        };
        let deploy = s.record_external_change(&actor(), &change).await.unwrap();
        let empty = ExternalChange { kind: "deploy".into(), ..Default::default() };
        assert!(matches!(s.record_external_change(&actor(), &empty).await, Err(StoreError::Invalid { .. })));
        assert_eq!(deploy.after, Some(json!({"sha": "abc"})));
        let found =
            s.changelog(&ChangelogQuery { text: Some("ROLLED OUT".into()), ..Default::default() }).await.unwrap();
        assert_eq!(found.items.len(), 1);
        assert_eq!(found.items[0].id, deploy.id);
        let by_kind =
            s.changelog(&ChangelogQuery { resource_kind: Some("token".into()), ..Default::default() }).await.unwrap();
        assert_eq!(by_kind.total_count, 2);
        let by_actor =
            s.changelog(&ChangelogQuery { actor: Some("bootstrap".into()), ..Default::default() }).await.unwrap();
        assert_eq!(by_actor.total_count, 1);
        let future = s
            .changelog(&ChangelogQuery { after: Some(pennant_store::now_ms() + 60_000), ..Default::default() })
            .await
            .unwrap();
        assert_eq!(future.total_count, 0);
        // Paging newest first.
        let first = s.changelog(&ChangelogQuery { limit: Some(2), ..Default::default() }).await.unwrap();
        let second = s
            .changelog(&ChangelogQuery { limit: Some(2), cursor: first.next_cursor.clone(), ..Default::default() })
            .await
            .unwrap();
        assert!(first.items[1].id > second.items[0].id);
    }
}

#[tokio::test]
async fn deleting_a_project_removes_everything_in_it() {
    for db in TestDb::both().await.unwrap() {
        project_with_envs(&db).await;
        let s = &db.store;
        s.create_flag(&actor(), "p", flag("f"), "").await.unwrap();
        let sdk_key = s.get_environment("p", "test").await.unwrap().data.sdk_key;
        s.delete_project(&actor(), "p", "").await.unwrap();
        assert!(s.find_credential(&sdk_key).await.unwrap().is_none());
        assert!(matches!(s.list_flags("p", &ListQuery::default()).await, Err(StoreError::NotFound { .. })));
        // The key is free again, and nothing of the old project comes back.
        s.create_project(
            &actor(),
            serde_json::from_value::<Project>(json!({"key": "p", "name": "again"})).unwrap(),
            "",
        )
        .await
        .unwrap();
        assert_eq!(s.list_environments("p", &ListQuery::default()).await.unwrap().total_count, 0);
        assert!(matches!(
            s.create_project(
                &actor(),
                serde_json::from_value::<Project>(json!({"key": "bad key", "name": "x"})).unwrap(),
                ""
            )
            .await,
            Err(StoreError::Invalid { .. })
        ));
    }
}

/// Watchers (the outbox relay, the webhook dispatcher) wake only for transactions that wrote to the changelog or
/// the outbox; a commit that wrote neither (such as a claim that found nothing) must not wake them, or two
/// watchers whose rounds commit would wake each other forever.
#[tokio::test]
async fn only_changelog_and_outbox_writes_wake_watchers() {
    for db in TestDb::both().await.unwrap() {
        let mut changes = db.store.subscribe();
        changes.borrow_and_update();
        db.store.claim_webhook_deliveries(10, std::time::Duration::from_secs(30)).await.unwrap();
        db.store.enqueue_webhook_deliveries(10, std::time::Duration::from_secs(1)).await.unwrap();
        assert!(!changes.has_changed().unwrap(), "{}: an empty round woke the watchers", db.backend);
        db.store
            .create_project(&actor(), Project { key: "w".into(), name: "W".into(), tags: vec![] }, "")
            .await
            .unwrap();
        assert!(changes.has_changed().unwrap(), "{}: a change must wake them", db.backend);
    }
}
