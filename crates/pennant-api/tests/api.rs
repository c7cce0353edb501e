//! The management API end to end through the router, on both backends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::http::{Method, StatusCode};
use common::App;
use pennant_api::ErrorCode;
use serde_json::json;

#[tokio::test]
async fn projects_environments_and_errors() {
    for app in App::both().await {
        app.project().await;
        let (s, p) = app.get("/api/v2/projects/p").await;
        assert_eq!(
            (s, p["name"].clone(), p["_version"].clone()),
            (StatusCode::OK, json!("P"), json!(1)),
            "{}",
            app.backend()
        );
        let (s, envs) = app.get("/api/v2/projects/p/environments").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(envs["totalCount"], json!(2));
        let prod = &envs["items"][0];
        assert!(prod["sdkKey"].as_str().unwrap().starts_with("sdk-"));

        // Duplicates, bad keys, bad JSON, unknown fields, missing content type: 4xx with a stable code.
        let (s, e) = app.post("/api/v2/projects", json!({"key": "p", "name": "again"})).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::CONFLICT, Some("already_exists")));
        let (s, e) = app.post("/api/v2/projects", json!({"key": "bad key", "name": "x"})).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed")));
        let (s, e) = app.post("/api/v2/projects", json!({"key": "q", "name": "x", "colour": 1})).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_json")), "{e}");
        let req = axum::http::Request::post("/api/v2/projects")
            .header("Authorization", &app.admin)
            .header("Content-Type", "application/json")
            .body(axum::body::Body::from("{\"key\": "))
            .unwrap();
        let (s, e) = app.send(req).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_json")));
        let req = axum::http::Request::post("/api/v2/projects")
            .header("Authorization", &app.admin)
            .body(axum::body::Body::from("{}"))
            .unwrap();
        let (s, e) = app.send(req).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, Some("unsupported_media_type")));
        let (s, e) = app.get("/api/v2/projects/nope").await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
        let (s, e) = app.get("/api/v2/nothing-here").await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
        let (s, e) = app.get("/api/v2/projects?sort=colour").await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")));

        // JSON Patch with optimistic concurrency.
        let (s, p) = app.patch("/api/v2/projects/p", json!({"patch": [{"op": "replace", "path": "/name", "value": "Payments"}], "comment": "rename", "version": 1})).await;
        assert_eq!((s, p["name"].clone(), p["_version"].clone()), (StatusCode::OK, json!("Payments"), json!(2)), "{p}");
        let (s, e) = app
            .patch(
                "/api/v2/projects/p",
                json!({"patch": [{"op": "replace", "path": "/name", "value": "X"}], "version": 1}),
            )
            .await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::CONFLICT, Some("version_conflict")));
        let (s, e) = app.patch("/api/v2/projects/p", json!([{"op": "test", "path": "/name", "value": "nope"}])).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")), "{e}");
        let (s, e) =
            app.patch("/api/v2/projects/p", json!([{"op": "replace", "path": "/key", "value": "other"}])).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
        let (_, p) = app.get("/api/v2/projects/p").await;
        assert_eq!(
            (p["name"].clone(), p["_version"].clone()),
            (json!("Payments"), json!(2)),
            "failed patches change nothing"
        );

        // Key rotation with an overlap keeps the old key valid.
        let old = prod["sdkKey"].as_str().unwrap().to_owned();
        let (s, env) =
            app.post("/api/v2/projects/p/environments/production/apiKey", json!({"expirySeconds": 3600})).await;
        assert_eq!(s, StatusCode::OK, "{env}");
        assert_ne!(env["sdkKey"].as_str().unwrap(), old);
        assert!(app.db.store.find_credential(&old).await.unwrap().is_some());

        // The audit log has every write, with diffs.
        let (s, log) = app.get("/api/v2/auditlog?resourceKind=project&resourceKey=p").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(log["items"][0]["action"], json!("update"));
        assert_eq!(log["items"][0]["comment"], json!("rename"));
        assert_eq!(log["items"][0]["diff"], json!([{"op": "replace", "path": "/name", "value": "Payments"}]));
        let (s, change) = app
            .post(
                "/api/v2/changelog",
                json!({"kind": "deploy", "scope": "p", "key": "checkout", "action": "deployed v2"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{change}");
        let (_, log) = app.get("/api/v2/auditlog?scope=p&q=deployed").await;
        assert_eq!(log["items"][0]["id"], change["id"]);
    }
}

#[tokio::test]
async fn roles_and_credentials_are_enforced() {
    for app in App::both().await {
        app.project().await;
        let reader = app.token("reader", &[]).await;
        let writer = app.token("writer", &[]).await;
        let scoped = app.token("writer", &["other"]).await;
        let (_, env) = app.get("/api/v2/projects/p/environments/production").await;
        let body = || Some(json!({"key": "q", "name": "Q"}));

        let (s, e) = app.call(Method::GET, "/api/v2/projects", None, None).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")));
        let (s, e) = app.call(Method::GET, "/api/v2/projects", Some("api-unknown"), None).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")));
        for credential in ["sdkKey", "mobileKey", "_id"] {
            let (s, e) = app.call(Method::GET, "/api/v2/projects", env[credential].as_str(), None).await;
            assert_eq!(
                (s, e["code"].as_str()),
                (StatusCode::UNAUTHORIZED, Some("sdk_key_not_allowed")),
                "{credential}"
            );
        }
        // Reader: reads, no writes.
        assert_eq!(app.call(Method::GET, "/api/v2/projects/p", Some(&reader), None).await.0, StatusCode::OK);
        let (s, e) = app.call(Method::POST, "/api/v2/projects", Some(&reader), body()).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")));
        // Writer: writes, but no admin things.
        assert_eq!(app.call(Method::POST, "/api/v2/projects", Some(&writer), body()).await.0, StatusCode::CREATED);
        assert_eq!(app.call(Method::GET, "/api/v2/tokens", Some(&writer), None).await.0, StatusCode::FORBIDDEN);
        assert_eq!(app.call(Method::DELETE, "/api/v2/projects/q", Some(&writer), None).await.0, StatusCode::FORBIDDEN);
        assert_eq!(
            app.call(Method::POST, "/api/v2/projects/p/environments/production/apiKey", Some(&writer), None).await.0,
            StatusCode::FORBIDDEN
        );
        // Project-scoped token: only its projects.
        assert_eq!(app.call(Method::GET, "/api/v2/projects/p", Some(&scoped), None).await.0, StatusCode::FORBIDDEN);
        let (_, list) = app.call(Method::GET, "/api/v2/projects", Some(&scoped), None).await;
        assert_eq!(list["items"], json!([]));
        // Bad Authorization headers are clear errors.
        let (s, e) = app.call(Method::GET, "/api/v2/caller-identity", Some(&format!("Bearer {writer}")), None).await;
        assert_eq!((s, e["role"].as_str()), (StatusCode::OK, Some("writer")));
        // Admin deletes and revokes.
        assert_eq!(app.delete("/api/v2/projects/q").await.0, StatusCode::NO_CONTENT);
        let (_, tokens) = app.get("/api/v2/tokens").await;
        let id = tokens.as_array().unwrap().iter().find(|t| t["name"] == "reader token").unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(app.delete(&format!("/api/v2/tokens/{id}")).await.0, StatusCode::NO_CONTENT);
        assert_eq!(app.call(Method::GET, "/api/v2/projects", Some(&reader), None).await.0, StatusCode::UNAUTHORIZED);
        assert!(tokens.to_string().find("secret").is_none(), "token lists never show secrets");
    }
}

#[tokio::test]
async fn members_sign_in_with_sessions() {
    for app in App::both().await {
        let (s, m) = app
            .post(
                "/api/v2/members",
                json!({"email": "Dev@Example.com", "name": "Dev", "role": "writer", "password": "correct horse"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{m}");
        assert!(m.get("passwordHash").is_none());
        let (s, e) =
            app.post("/api/v2/members", json!({"email": "x@example.com", "role": "reader", "password": "short"})).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")));
        let (s, e) = app
            .call(
                Method::POST,
                "/api/v2/sessions",
                None,
                Some(json!({"email": "dev@example.com", "password": "wrong password"})),
            )
            .await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")));
        let (s, session) = app
            .call(
                Method::POST,
                "/api/v2/sessions",
                None,
                Some(json!({"email": "dev@example.com", "password": "correct horse"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{session}");
        let token = session["token"].as_str().unwrap().to_owned();
        let (s, me) = app.call(Method::GET, "/api/v2/caller-identity", Some(&token), None).await;
        assert_eq!(
            (s, me["name"].as_str(), me["role"].as_str()),
            (StatusCode::OK, Some("dev@example.com"), Some("writer"))
        );
        // The cookie works as well as the header.
        let req = axum::http::Request::get("/api/v2/caller-identity")
            .header("Cookie", format!("theme=dark; pennant_session={token}"))
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(app.send(req).await.0, StatusCode::OK);
        assert_eq!(app.call(Method::DELETE, "/api/v2/sessions", Some(&token), None).await.0, StatusCode::NO_CONTENT);
        assert_eq!(
            app.call(Method::GET, "/api/v2/caller-identity", Some(&token), None).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
}

#[tokio::test]
async fn rate_limits_and_body_limits() {
    let limits = pennant_api::ApiLimits {
        max_body_bytes: 2048,
        requests_per_second: std::num::NonZeroU32::MIN,
        burst: std::num::NonZeroU32::MIN.saturating_add(2),
    };
    let app = App::with_limits(pennant_store::testing::TestDb::sqlite().await.unwrap(), limits).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(app.get("/api/v2/projects").await);
    }
    let limited = statuses.iter().find(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS).expect("some request is limited");
    assert_eq!(limited.1["code"], json!("rate_limited"));
    let req = axum::http::Request::get("/api/v2/projects")
        .header("Authorization", &app.admin)
        .body(axum::body::Body::empty())
        .unwrap();
    let res = tower::ServiceExt::oneshot(app.router.clone(), req).await.unwrap();
    assert!(res.headers().get("retry-after").is_some());
    // A body over the limit is refused with 413 (and a fresh token has its own budget).
    let app = App::with_limits(
        pennant_store::testing::TestDb::sqlite().await.unwrap(),
        pennant_api::ApiLimits { max_body_bytes: 2048, ..Default::default() },
    )
    .await;
    let big = json!({"key": "big", "name": "x".repeat(4096)});
    let (s, e) = app.post("/api/v2/projects", big).await;
    assert_eq!((s, e["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large")));
}

#[tokio::test]
async fn openapi_document_lists_the_endpoints_and_the_error_table_is_complete() {
    let app = App::new(pennant_store::testing::TestDb::sqlite().await.unwrap()).await;
    let (s, doc) = app.call(Method::GET, "/api/v2/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/projects",
        "/projects/{projectKey}",
        "/projects/{projectKey}/environments",
        "/auditlog",
        "/changelog",
        "/tokens",
        "/sessions",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing from the OpenAPI document");
    }
    let mut codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.describe().0).collect();
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), ErrorCode::ALL.len(), "error codes are unique");
    for c in ErrorCode::ALL {
        assert!(c.describe().1.is_client_error() || c.describe().1.is_server_error());
    }
}
