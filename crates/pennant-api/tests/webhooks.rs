//! Webhooks end to end on both backends: the API, the dispatcher, and a receiver on a local socket.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use common::App;
use hmac::{KeyInit, Mac};
use pennant_api::{WebhookOptions, spawn_webhook_dispatcher};
use pennant_store::{RetryPolicy, Store};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
    /// The status it answered.
    status: u16,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }
}

#[derive(Debug, Default)]
struct ReceiverState {
    requests: Vec<Received>,
    /// Answer 500 to this many requests before answering 200 again.
    fail_next: usize,
}

/// A tiny HTTP server on 127.0.0.1 that records every request.
#[derive(Debug, Clone)]
struct Receiver {
    state: Arc<Mutex<ReceiverState>>,
    base: String,
}

impl Receiver {
    async fn start() -> Receiver {
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let app = axum::Router::new().fallback(record).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { state, base }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn requests(&self) -> Vec<Received> {
        self.state.lock().unwrap().requests.clone()
    }

    fn fail_next(&self, n: usize) {
        self.state.lock().unwrap().fail_next = n;
    }
}

async fn record(
    State(state): State<Arc<Mutex<ReceiverState>>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut s = state.lock().unwrap();
    let status = if s.fail_next > 0 {
        s.fail_next -= 1;
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    s.requests.push(Received { path: uri.path().to_owned(), headers, body, status: status.as_u16() });
    status
}

/// Polls `check` until it gives a value; fails after a deadline.
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fast_options() -> WebhookOptions {
    WebhookOptions {
        poll_interval: Duration::from_millis(100),
        timeout: Duration::from_secs(3),
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
        },
        batch_size: 100,
        concurrency: 4,
        gap_grace: Duration::from_millis(500),
    }
}

struct Dispatcher {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Dispatcher {
    fn start(store: &Store) -> Dispatcher {
        let (stop, shutdown) = watch::channel(false);
        let task = spawn_webhook_dispatcher(store.clone(), shutdown, fast_options());
        Dispatcher { stop, task }
    }

    async fn stop(self) {
        self.stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(10), self.task).await.expect("dispatcher stops").unwrap();
    }
}

fn verify_signature(secret: &str, received: &Received) {
    let header = received.header("x-pennant-signature");
    let hex_sig = header.strip_prefix("sha256=").unwrap_or_else(|| panic!("signature header {header:?}"));
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(&received.body);
    mac.verify_slice(&hex::decode(hex_sig).unwrap()).expect("the signature verifies with the secret");
}

/// The newest changelog entry's ID.
async fn last_changelog_id(app: &App) -> i64 {
    let (s, log) = app.get("/api/v2/auditlog?limit=1").await;
    assert_eq!(s, StatusCode::OK, "{log}");
    log["items"][0]["id"].as_i64().unwrap()
}

async fn create_webhook(app: &App, body: Value) -> (String, String) {
    let (s, w) = app.post("/api/v2/webhooks", body).await;
    assert_eq!(s, StatusCode::CREATED, "{w}");
    (w["key"].as_str().unwrap().to_owned(), w["secret"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn webhooks_deliver_signed_filtered_retried_and_once() {
    for app in App::both().await {
        let backend = app.backend();
        let receiver = Receiver::start().await;
        app.project().await;
        let (s, b) = app.post("/api/v2/projects", json!({"key": "q", "name": "Q"})).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");

        // Create: the secret is generated and shown once; GETs hide it.
        let (key, secret) =
            create_webhook(&app, json!({"name": "ops", "url": receiver.url("/hook"), "filter": {"projects": ["p"]}}))
                .await;
        assert!(secret.starts_with("whsec-") && secret.len() > 20, "{secret}");
        let (s, w) = app.get(&format!("/api/v2/webhooks/{key}")).await;
        assert_eq!(s, StatusCode::OK, "{w}");
        assert_eq!(
            (w["secret"].as_str(), w["on"].as_bool(), w["name"].as_str()),
            (Some("[hidden]"), Some(true), Some("ops"))
        );
        let (_, list) = app.get("/api/v2/webhooks").await;
        assert_eq!(list["totalCount"], json!(1));
        assert_eq!(list["items"][0]["secret"], json!("[hidden]"));
        let (_, log) = app.get("/api/v2/auditlog?resourceKind=webhook").await;
        assert_eq!(log["items"][0]["after"]["secret"], json!("[redacted]"), "the changelog never shows the secret");

        // A webhook that is off gets nothing, whatever it matches.
        let (off_key, _) =
            create_webhook(&app, json!({"url": receiver.url("/off"), "on": false, "secret": "s3cret"})).await;

        let dispatcher = Dispatcher::start(&app.db.store);

        // A change in another project first, then one in p: entries are queued in order, so by the time p's
        // arrives, q's has been passed over.
        let (s, b) = app.post("/api/v2/projects/q/environments", json!({"key": "staging", "name": "Staging"})).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        let (s, b) = app
            .patch(
                "/api/v2/projects/p",
                json!({"patch": [{"op": "replace", "path": "/name", "value": "Payments"}], "comment": "rename"}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let patch_id = last_changelog_id(&app).await;

        let first = eventually("the project change to arrive", async || receiver.requests().into_iter().next()).await;
        assert_eq!(first.path, "/hook", "{backend}");
        assert_eq!(first.header("content-type"), "application/json");
        assert_eq!(first.header("x-pennant-event"), "project.update");
        assert_eq!(first.header("x-pennant-delivery"), format!("{key}-{patch_id}"));
        assert_eq!(first.header("x-pennant-attempt"), "1");
        verify_signature(&secret, &first);
        let body = first.json();
        assert_eq!(body["id"], json!(patch_id));
        assert_eq!(body["resourceKind"], json!("project"));
        assert_eq!(body["resourceKey"], json!("p"));
        assert_eq!(body["scope"], json!(""));
        assert_eq!(body["action"], json!("update"));
        assert_eq!(body["comment"], json!("rename"));
        assert_eq!(body["before"]["name"], json!("P"));
        assert_eq!(body["after"]["name"], json!("Payments"));
        assert_eq!(body["diff"], json!([{"op": "replace", "path": "/name", "value": "Payments"}]));
        assert_eq!(body["actor"]["kind"], json!("token"));
        assert!(body["date"].as_i64().unwrap() > 0);
        assert_eq!(body["webhook"], json!({"key": key, "name": "ops"}));
        // A tampered body does not verify.
        let mut forged = first.clone();
        forged.body = Bytes::from(first.body.iter().copied().chain(*b" ").collect::<Vec<u8>>());
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(&forged.body);
        let sig = hex::decode(first.header("x-pennant-signature").trim_start_matches("sha256=")).unwrap();
        assert!(mac.verify_slice(&sig).is_err());

        assert_eq!(receiver.requests().len(), 1, "nothing from project q, nothing for the webhook that is off");

        // The receiver fails the first attempt: a retry follows, and both attempts are listed, newest first.
        receiver.fail_next(1);
        let (s, b) = app.post("/api/v2/projects/p/environments", json!({"key": "canary", "name": "Canary"})).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        let env_id = last_changelog_id(&app).await;
        let deliveries = eventually("the retry to succeed", async || {
            let (s, d) = app.get(&format!("/api/v2/webhooks/{key}/deliveries")).await;
            assert_eq!(s, StatusCode::OK, "{d}");
            (d["items"][0]["status"] == json!("delivered") && d["items"][0]["changelogId"] == json!(env_id))
                .then_some(d)
        })
        .await;
        let items = deliveries["items"].as_array().unwrap();
        assert_eq!(deliveries["totalCount"], json!(3), "{deliveries}");
        let (retry, failed) = (&items[0], &items[1]);
        assert_eq!(
            (retry["attempt"].clone(), retry["responseCode"].clone(), retry["error"].clone()),
            (json!(2), json!(200), json!(""))
        );
        assert_eq!(
            (failed["attempt"].clone(), failed["status"].clone(), failed["responseCode"].clone()),
            (json!(1), json!("retried"), json!(500))
        );
        assert!(failed["error"].as_str().unwrap().contains("500"), "{failed}");
        assert_eq!(failed["changelogId"], json!(env_id));
        assert_eq!(failed["deliveryId"], retry["deliveryId"]);
        assert!(retry["attemptedAt"].as_i64().unwrap() >= failed["attemptedAt"].as_i64().unwrap());
        assert!(retry.get("nextAt").is_none(), "done attempts have no next time");
        assert_eq!(
            (items[2]["changelogId"].clone(), items[2]["status"].clone()),
            (json!(patch_id), json!("delivered"))
        );

        let got = receiver.requests();
        let attempts: Vec<_> = got.iter().filter(|r| r.json()["id"] == json!(env_id)).collect();
        assert_eq!(attempts.len(), 2);
        assert_eq!((attempts[0].status, attempts[1].status), (500, 200));
        assert_eq!(attempts[0].header("x-pennant-delivery"), attempts[1].header("x-pennant-delivery"));
        assert_eq!(attempts[1].header("x-pennant-attempt"), "2");
        assert_eq!(attempts[1].header("x-pennant-event"), "environment.create");
        verify_signature(&secret, attempts[1]);
        assert_eq!(attempts[1].json()["scope"], json!("p"));

        // The webhook that is off has no deliveries at all.
        let (s, d) = app.get(&format!("/api/v2/webhooks/{off_key}/deliveries")).await;
        assert_eq!((s, d["totalCount"].clone()), (StatusCode::OK, json!(0)), "{d}");
        assert!(got.iter().all(|r| r.path == "/hook"));

        // Restart: changes made while no dispatcher runs are delivered by the next one, and nothing is repeated.
        dispatcher.stop().await;
        let before_restart = receiver.requests().len();
        let (s, b) =
            app.patch("/api/v2/projects/p", json!([{"op": "replace", "path": "/name", "value": "Payments 2"}])).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let offline_id = last_changelog_id(&app).await;
        let dispatcher = Dispatcher::start(&app.db.store);
        eventually("the change made while stopped", async || {
            receiver.requests().iter().any(|r| r.json()["id"] == json!(offline_id)).then_some(())
        })
        .await;
        let (s, b) = app.patch("/api/v2/projects/p", json!([{"op": "add", "path": "/tags", "value": ["x"]}])).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let after_id = last_changelog_id(&app).await;
        eventually("a change after the restart", async || {
            receiver.requests().iter().any(|r| r.json()["id"] == json!(after_id)).then_some(())
        })
        .await;
        dispatcher.stop().await;
        let got = receiver.requests();
        assert_eq!(got.len(), before_restart + 2, "{backend}: nothing delivered twice after the restart");
        let mut seen: Vec<(String, String)> =
            got.iter().map(|r| (r.header("x-pennant-delivery").into(), r.header("x-pennant-attempt").into())).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), got.len(), "every attempt arrived once");
        assert_eq!(app.db.store.webhook_cursor().await.unwrap(), after_id);
    }
}

#[tokio::test]
async fn webhook_api_validation_patch_give_up_and_delete() {
    for app in App::both().await {
        app.project().await;

        // Validation: http(s) URLs with a host only.
        for url in ["ftp://example.com/x", "http://", "not a url", "https:///path", ""] {
            let (s, e) = app.post("/api/v2/webhooks", json!({"url": url})).await;
            assert_eq!(
                (s, e["code"].as_str()),
                (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed")),
                "{url}: {e}"
            );
        }
        let (s, e) =
            app.post("/api/v2/webhooks", json!({"url": "http://x", "filter": {"projects": ["bad key"]}})).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed")), "{e}");
        let (s, e) = app.post("/api/v2/webhooks", json!({"url": "http://x", "key": "mine"})).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_json")), "{e}");

        // Admins only, and not with a token limited to projects.
        for token in [app.token("writer", &[]).await, app.token("admin", &["p"]).await] {
            let (s, _) = app.call(axum::http::Method::GET, "/api/v2/webhooks", Some(&token), None).await;
            assert_eq!(s, StatusCode::FORBIDDEN);
            let (s, _) = app
                .call(axum::http::Method::POST, "/api/v2/webhooks", Some(&token), Some(json!({"url": "http://x"})))
                .await;
            assert_eq!(s, StatusCode::FORBIDDEN);
        }

        // Nothing listens on this port: every attempt fails to connect, and the delivery is given up.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let (key, secret) = create_webhook(
            &app,
            json!({"url": format!("http://{closed}/x"), "secret": "given", "filter": {"environments": ["test"]}}),
        )
        .await;
        assert_eq!(secret, "given");

        // PATCH: the secret reads as hidden and is kept unless replaced; bad URLs and key changes are refused.
        let (s, w) = app
            .patch(&format!("/api/v2/webhooks/{key}"), json!([{"op": "replace", "path": "/name", "value": "down"}]))
            .await;
        assert_eq!(
            (s, w["name"].as_str(), w["secret"].as_str()),
            (StatusCode::OK, Some("down"), Some("[hidden]")),
            "{w}"
        );
        assert_eq!(app.db.store.get_webhook(&key).await.unwrap().data.secret, "given");
        let (s, e) = app
            .patch(
                &format!("/api/v2/webhooks/{key}"),
                json!([{"op": "replace", "path": "/url", "value": "gopher://x"}]),
            )
            .await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed")), "{e}");
        let (s, e) = app
            .patch(&format!("/api/v2/webhooks/{key}"), json!([{"op": "replace", "path": "/key", "value": "other"}]))
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
        let (s, e) = app
            .patch(
                &format!("/api/v2/webhooks/{key}"),
                json!({"patch": [{"op": "replace", "path": "/on", "value": true}], "version": 1}),
            )
            .await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::CONFLICT, Some("version_conflict")), "{e}");
        let (s, w) = app
            .patch(
                &format!("/api/v2/webhooks/{key}"),
                json!([{"op": "replace", "path": "/secret", "value": "rotated"}]),
            )
            .await;
        assert_eq!((s, w["secret"].as_str()), (StatusCode::OK, Some("[hidden]")));
        assert_eq!(app.db.store.get_webhook(&key).await.unwrap().data.secret, "rotated");
        let (_, log) = app.get("/api/v2/auditlog?resourceKind=webhook&limit=1").await;
        assert_eq!(
            (log["items"][0]["before"]["secret"].clone(), log["items"][0]["after"]["secret"].clone()),
            (json!("[redacted]"), json!("[redacted]"))
        );

        // A change in environment `test` matches the filter; one in `production` does not.
        let dispatcher = Dispatcher::start(&app.db.store);
        let (s, b) = app
            .patch(
                "/api/v2/projects/p/environments/production",
                json!([{"op": "replace", "path": "/color", "value": "ff0000"}]),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let (s, b) = app
            .patch(
                "/api/v2/projects/p/environments/test",
                json!([{"op": "replace", "path": "/color", "value": "00ff00"}]),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let test_id = last_changelog_id(&app).await;
        let deliveries = eventually("the delivery to be given up", async || {
            let (_, d) = app.get(&format!("/api/v2/webhooks/{key}/deliveries")).await;
            (d["items"][0]["status"] == json!("failed")).then_some(d)
        })
        .await;
        dispatcher.stop().await;
        let items = deliveries["items"].as_array().unwrap();
        assert_eq!(items.len(), 3, "max_attempts = 3: {deliveries}");
        for (item, attempt) in items.iter().zip([3, 2, 1]) {
            assert_eq!(item["attempt"], json!(attempt));
            assert_eq!(item["changelogId"], json!(test_id), "only the change in `test`");
            assert!(item.get("responseCode").is_none());
            assert!(item["error"].as_str().unwrap().contains("connect"), "{item}");
        }
        assert_eq!((items[1]["status"].clone(), items[2]["status"].clone()), (json!("retried"), json!("retried")));

        // Paging.
        let (_, page) = app.get(&format!("/api/v2/webhooks/{key}/deliveries?limit=2")).await;
        assert_eq!(page["items"].as_array().unwrap().len(), 2);
        let cursor = page["nextCursor"].as_str().unwrap();
        let (_, rest) = app.get(&format!("/api/v2/webhooks/{key}/deliveries?limit=2&cursor={cursor}")).await;
        assert_eq!(rest["items"][0]["attempt"], json!(1));
        assert!(rest.get("nextCursor").is_none());

        // Delete: gone, with its history.
        let (s, _) = app.delete(&format!("/api/v2/webhooks/{key}")).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, _) = app.get(&format!("/api/v2/webhooks/{key}")).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _) = app.get(&format!("/api/v2/webhooks/{key}/deliveries")).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _) = app.delete(&format!("/api/v2/webhooks/{key}")).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn openapi_lists_webhook_endpoints() {
    let app = App::new(pennant_store::testing::TestDb::sqlite().await.unwrap()).await;
    let (s, doc) = app.call(axum::http::Method::GET, "/api/v2/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    for (path, methods) in [
        ("/webhooks", &["get", "post"][..]),
        ("/webhooks/{id}", &["get", "patch", "delete"][..]),
        ("/webhooks/{id}/deliveries", &["get"][..]),
    ] {
        for method in methods {
            assert!(doc["paths"][path].get(*method).is_some(), "{method} {path} missing from the OpenAPI document");
        }
    }
    for schema in ["Webhook", "WebhookFilter", "NewWebhook", "WebhookDelivery", "DeliveryStatus"] {
        assert!(doc["components"]["schemas"].get(schema).is_some(), "schema {schema} missing");
    }
}
