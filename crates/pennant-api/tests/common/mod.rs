//! Test harness: the API over a fresh database on each backend, called without a socket.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use pennant_api::{ApiLimits, ApiState, router};
use pennant_store::testing::TestDb;
use pennant_store::{Actor, NewToken, Role};
use serde_json::Value;
use tower::ServiceExt;

/// One backend's app, with an admin token.
pub struct App {
    pub db: TestDb,
    pub router: Router,
    pub admin: String,
}

impl App {
    /// Generous rate limits, so that fast test sequences are not throttled (rate limiting has its own test).
    pub async fn new(db: TestDb) -> App {
        let generous = std::num::NonZeroU32::new(100_000).unwrap();
        App::with_limits(db, ApiLimits { requests_per_second: generous, burst: generous, ..ApiLimits::default() }).await
    }

    pub async fn with_limits(db: TestDb, limits: ApiLimits) -> App {
        let (_, admin) = db
            .store
            .create_token(
                &Actor::system("test"),
                NewToken { name: "admin".into(), role: Role::Admin, projects: vec![] },
            )
            .await
            .unwrap();
        let router = router(ApiState::new(db.store.clone(), limits));
        App { db, router, admin }
    }

    /// Both backends.
    pub async fn both() -> Vec<App> {
        let mut apps = Vec::new();
        for db in TestDb::both().await.unwrap() {
            apps.push(App::new(db).await);
        }
        apps
    }

    pub fn backend(&self) -> &'static str {
        self.db.backend
    }

    /// Sends a request with a token (`None`: no Authorization header) and a JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("Authorization", t);
        }
        let req = match body {
            Some(b) => req.header("Content-Type", "application/json").body(Body::from(b.to_string())).unwrap(),
            None => req.body(Body::empty()).unwrap(),
        };
        self.send(req).await
    }

    pub async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, json)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(&self.admin.clone()), None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(&self.admin.clone()), Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, Some(&self.admin.clone()), Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, Some(&self.admin.clone()), None).await
    }

    /// A token with a role, optionally limited to projects.
    pub async fn token(&self, role: &str, projects: &[&str]) -> String {
        let (status, body) = self
            .post(
                "/api/v2/tokens",
                serde_json::json!({"name": format!("{role} token"), "role": role, "projects": projects}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["secret"].as_str().unwrap().to_owned()
    }

    /// Creates project `p` with environments `production` and `test`.
    pub async fn project(&self) {
        let (s, b) = self.post("/api/v2/projects", serde_json::json!({"key": "p", "name": "P"})).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        for env in ["production", "test"] {
            let (s, b) =
                self.post("/api/v2/projects/p/environments", serde_json::json!({"key": env, "name": env})).await;
            assert_eq!(s, StatusCode::CREATED, "{b}");
        }
    }
}
