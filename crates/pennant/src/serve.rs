//! `pennant serve`: the whole service in one process. On first start it creates a default project with
//! `production` and `test` environments, an admin member and an admin API token, and prints how to use them.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use pennant_api::{ApiLimits, ApiState};
use pennant_store::{Actor, Backend, Environment, NewToken, Project, Role, Store};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::config::{ServeArgs, ServeConfig};

/// The project, environments and credentials created on first start.
const DEFAULT_PROJECT: &str = "default";
const BOOTSTRAP_FILE: &str = "first-start.json";
/// How long a shared SDK payload stays in Redis (a new version is a new key; old ones just expire).
const PAYLOAD_CACHE_TTL: Duration = Duration::from_secs(3600);

/// Runs the server until SIGINT or SIGTERM.
pub fn run(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let config = args.resolve()?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&config.log))
        .with_writer(std::io::stderr)
        .init();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(serve(config))?;
    Ok(ExitCode::SUCCESS)
}

/// What first start saved so that later starts can print it again (embedded mode's data directory only).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bootstrap {
    admin_token: String,
    admin_email: String,
    admin_password: String,
}

#[derive(Clone)]
struct AppState {
    store: Store,
    metrics: PrometheusHandle,
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    let store = Store::open(&config.database_url).await.with_context(|| format!("opening {}", config.database_url))?;
    // Only the API (or all-in-one) process creates the first admin and project; streaming nodes just serve them.
    let bootstrap = if config.role.api() { bootstrap(&store, &config.data_dir).await? } else { None };
    let metrics = PrometheusBuilder::new().install_recorder().context("installing the metrics recorder")?;
    let limits = ApiLimits {
        max_body_bytes: config.max_body_bytes,
        requests_per_second: config.rate_limit_per_second.try_into().context("rate limit")?,
        burst: config.rate_limit_burst.try_into().context("rate limit burst")?,
    };
    let hub_options = pennant_stream::HubOptions {
        max_connection_lifetime: config.stream_max_connection_seconds.map(Duration::from_secs),
        ..pennant_stream::HubOptions::default()
    };
    let hub = std::sync::Arc::new(match &config.redis_url {
        // Streaming nodes share the SDK payloads they build (the database reads each environment's data once).
        Some(url) if config.role.stream() => {
            let prefix = format!("{}:sdk-payload:", config.namespace);
            let layer = pennant_patterns::RedisLayer::connect(url, prefix, Some(PAYLOAD_CACHE_TTL))
                .await
                .with_context(|| format!("connecting to Redis at {}", redact_url(url)))?;
            pennant_stream::Hub::with_payload_cache(
                hub_options,
                pennant_stream::payload_cache(std::sync::Arc::new(layer)),
            )
        }
        _ => pennant_stream::Hub::with_options(hub_options),
    });
    // Becomes true on SIGINT/SIGTERM: streams end (SDKs reconnect elsewhere), the relay and webhooks stop.
    let (stopping, _) = tokio::sync::watch::channel(false);
    let stream_state =
        pennant_stream::StreamState { source: store.clone().into(), hub: hub.clone(), shutdown: stopping.subscribe() };

    let mut app = Router::new();
    if config.role.api() {
        app = app.merge(pennant_api::router(ApiState::new(store.clone(), limits)));
    }
    if config.role.stream() {
        app = app.merge(pennant_stream::router(stream_state.clone()));
    }
    let events_queue = if config.role.events() { Some(open_event_queue(&store, &config).await?) } else { None };
    if let Some((queue, _)) = &events_queue {
        let events_config =
            pennant_events::EventsConfig { max_body_bytes: config.events_max_body_bytes, ..Default::default() };
        app = app.merge(pennant_events::router(pennant_events::EventsState::new(
            store.clone(),
            queue.clone(),
            events_config,
        )));
    }
    let app = app
        .merge(
            Router::new()
                .route("/health", get(health))
                .route("/metrics", get(render_metrics))
                .with_state(AppState { store: store.clone(), metrics }),
        )
        .layer(middleware::from_fn(record_request))
        .layer(tower_http::trace::TraceLayer::new_for_http());

    let bus = match &config.nats_url {
        Some(url) => Some(
            pennant_stream::NatsBus::connect(url, &config.namespace, Duration::from_secs(10))
                .await
                .context("connecting to the change bus")?,
        ),
        None => None,
    };
    let mut tasks = Vec::new();
    if config.role.api() {
        tasks.push(pennant_api::webhooks::spawn_webhook_dispatcher(
            store.clone(),
            stopping.subscribe(),
            pennant_api::webhooks::WebhookOptions::default(),
        ));
        if let Some(bus) = &bus {
            tasks.push(bus.spawn_announcer(store.clone(), stopping.subscribe()));
        }
    }
    if config.role.stream() {
        let announcements = match &bus {
            Some(bus) => Some(bus.listen(stopping.subscribe()).await.context("listening for changes")?),
            None => None,
        };
        let options = pennant_stream::RelayOptions {
            heartbeat: Duration::from_secs(config.stream_heartbeat_seconds),
            ..pennant_stream::RelayOptions::default()
        };
        tasks.push(pennant_stream::spawn_outbox_relay_with(
            store.clone(),
            hub,
            stopping.subscribe(),
            options,
            announcements,
        ));
    }

    if let Some((queue, marker_namespace)) = events_queue {
        // Processors may run in every events process: the queue hands each batch to one of them, and the
        // idempotence markers make a redelivered batch count once.
        tasks.extend(pennant_insights::spawn_processors(
            store.clone(),
            pennant_insights::EventQueue::new(queue, &marker_namespace),
            config.events_processor.options(),
            config.events_processor.count,
            &stopping.subscribe(),
        ));
        tasks.push(pennant_insights::spawn_maintenance(
            store.clone(),
            pennant_store::Retention::default(),
            Duration::from_secs(3600),
            stopping.subscribe(),
        ));
    }

    let listener = bind(config.listen, config.reuse_port).with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr()?;
    print_banner(&store, &config, addr, bootstrap.as_ref()).await?;

    let stop = stopping.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: no new connections; closing streams; finishing requests in flight");
        stop.send_replace(true);
    });
    let lean = config.role.stream().then_some(stream_state);
    let server = pennant_stream::serve(listener, app, stopping.subscribe(), lean);
    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    let mut stopped = stopping.subscribe();
    let server = std::pin::pin!(server);
    tokio::select! {
        result = server => result.context("serving HTTP")?,
        () = async {
            let _ = stopped.wait_for(|stop| *stop).await;
            tokio::time::sleep(grace).await;
        } => tracing::warn!(?grace, "requests still in flight after the grace period; stopping anyway"),
    }
    // Attempts under way finish (each is bounded by its timeout); pending ones resume at the next start.
    stopping.send_replace(true);
    for task in tasks {
        if tokio::time::timeout(grace, task).await.is_err() {
            tracing::warn!("a background task was still busy after the grace period");
        }
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// The analytics queue: a JetStream stream when NATS is configured (shared by every events process), else the
/// embedded queue (in a SQLite file of its own next to a SQLite main database, else in the PostgreSQL database).
/// Also returns the name the processors tag their idempotence markers with.
async fn open_event_queue(store: &Store, config: &ServeConfig) -> anyhow::Result<(pennant_events::Queue, String)> {
    match &config.nats_url {
        Some(url) => {
            let mut js = pennant_events::JetStreamConfig::new(url.clone());
            js.stream = format!("{}_EVENTS", config.namespace.to_ascii_uppercase());
            js.subject = format!("{}.events", config.namespace);
            js.consumer = format!("{}-processors", config.namespace);
            js.max_bytes = i64::try_from(config.events_queue_max_bytes).unwrap_or(i64::MAX);
            let marker = format!("js:{}", js.stream);
            let queue = pennant_events::JetStreamQueue::connect(js)
                .await
                .with_context(|| format!("opening the event stream on {url} (JetStream)"))?;
            Ok((pennant_events::Queue::JetStream(queue), marker))
        }
        None => {
            let embedded = pennant_events::EmbeddedConfig {
                max_batches: config.events_queue_max_batches,
                max_bytes: config.events_queue_max_bytes,
                ..Default::default()
            };
            let (queue_store, marker) = match store.backend() {
                // SQLite lets one transaction write at a time per file: in the main database the queue's commits
                // (every SDK post waits for one) would queue behind the insights processor's transactions and
                // the other way round. In a file of its own each has its own lock and log; the processor then
                // acknowledges batches in the queue's file after its own commit, and its markers (in the main
                // database) name this queue's file, so that batches of a queue file made anew never match them.
                Backend::Sqlite => {
                    let path = config.data_dir.join(EVENT_QUEUE_FILE);
                    let queue_store = Store::open_sqlite(&path)
                        .await
                        .with_context(|| format!("opening the event queue {}", path.display()))?;
                    let moved = pennant_events::move_queued_batches(store, &queue_store)
                        .await
                        .context("moving queued event batches out of the main database")?;
                    if moved > 0 {
                        tracing::info!(moved, file = %path.display(), "queued event batches moved to the queue's own file");
                    }
                    let origin = queue_store.event_queue_origin().await.context("reading the event queue's name")?;
                    (queue_store, format!("embedded:{origin}"))
                }
                Backend::Postgres => (store.clone(), "embedded".to_owned()),
            };
            let queue =
                pennant_events::EmbeddedQueue::open(queue_store, embedded).await.context("opening the event queue")?;
            Ok((pennant_events::Queue::Embedded(queue), marker))
        }
    }
}

/// The embedded event queue's SQLite file in the data directory (with a SQLite main database).
const EVENT_QUEUE_FILE: &str = "events-queue.db";

/// Binds the listener; with `reuse_port`, several processes can bind the same address and the kernel spreads
/// new connections over them (how one machine runs more streams than one process may hold file descriptors).
pub(crate) fn bind(addr: std::net::SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(reuse_port)?;
    #[cfg(not(unix))]
    if reuse_port {
        return Err(std::io::Error::other("--reuse-port needs a Unix system"));
    }
    socket.bind(addr)?;
    // Reconnection storms arrive all at once: a deep accept queue (capped by net.core.somaxconn).
    socket.listen(4096)
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// Creates the first admin, token and default project when the database is new; reads them back on later starts.
async fn bootstrap(store: &Store, data_dir: &Path) -> anyhow::Result<Option<Bootstrap>> {
    let saved = data_dir.join(BOOTSTRAP_FILE);
    if store.member_count().await? > 0 {
        return match std::fs::read(&saved) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(_) => Ok(None),
        };
    }
    let actor = Actor::system("first start");
    let password = pennant_store::random_secret("");
    let hash = pennant_api::hash_password(&password).map_err(|e| anyhow::anyhow!(e.message))?;
    let email = "admin@pennant.local";
    store.create_member(&actor, email, "Admin", Role::Admin, &hash).await?;
    let (_, token) = store
        .create_token(&actor, NewToken { name: "admin (first start)".into(), role: Role::Admin, projects: vec![] })
        .await?;
    if store.get_project(DEFAULT_PROJECT).await.is_err() {
        let project = Project { key: DEFAULT_PROJECT.into(), name: "Default".into(), tags: vec![] };
        store.create_project(&actor, project, "created on first start").await?;
        for (key, name, color) in [("production", "Production", "417505"), ("test", "Test", "f5a623")] {
            let env: Environment =
                serde_json::from_value(serde_json::json!({"key": key, "name": name, "color": color}))?;
            store.create_environment(&actor, DEFAULT_PROJECT, env, "created on first start").await?;
        }
    }
    let bootstrap = Bootstrap { admin_token: token, admin_email: email.into(), admin_password: password };
    write_private(&saved, &serde_json::to_vec_pretty(&bootstrap)?)
        .with_context(|| format!("saving first-start credentials to {}", saved.display()))?;
    Ok(Some(bootstrap))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
}

async fn print_banner(
    store: &Store,
    config: &ServeConfig,
    addr: std::net::SocketAddr,
    boot: Option<&Bootstrap>,
) -> anyhow::Result<()> {
    let mut out = String::new();
    let url = format!("http://{addr}");
    out.push_str(&format!("Pennant {} is running at {url}\n", env!("CARGO_PKG_VERSION")));
    let role = match config.role {
        crate::config::Role::All => "all (management API, SDK streaming and polling, analytics events)",
        crate::config::Role::Api => "api (management API, webhooks)",
        crate::config::Role::Stream => "stream (SDK streaming and polling)",
        crate::config::Role::Events => "events (analytics front door and processors)",
    };
    out.push_str(&format!("  role           {role}{}\n", if config.reuse_port { ", port shared" } else { "" }));
    if let Some(url) = config.redis_url.as_ref().filter(|_| config.role.stream()) {
        out.push_str(&format!("  payload cache  {} (keys {}:sdk-payload:*)\n", redact_url(url), config.namespace));
    }
    if let Some(url) = &config.nats_url {
        out.push_str(&format!("  change bus     {url} (subject {}.changes)\n", config.namespace));
    }
    out.push_str(&format!("  database       {}\n", redact_url(&config.database_url)));
    if config.role.events() {
        let queue = match &config.nats_url {
            Some(url) => format!("JetStream stream {}_EVENTS on {url}", config.namespace.to_ascii_uppercase()),
            None if store.backend() == Backend::Sqlite => {
                format!("embedded ({})", config.data_dir.join(EVENT_QUEUE_FILE).display())
            }
            None => "embedded (in the database)".to_owned(),
        };
        out.push_str(&format!("  event queue    {queue}\n"));
    }
    out.push_str(&format!("  API            {url}/api/v2 (OpenAPI: {url}/api/v2/openapi.json)\n"));
    out.push_str(&format!("  health         {url}/health   metrics {url}/metrics\n"));
    match boot {
        Some(b) => {
            out.push_str(&format!("  admin token    {}\n", b.admin_token));
            out.push_str(&format!("  admin sign-in  {} / {}\n", b.admin_email, b.admin_password));
            out.push_str(&format!("                 (saved in {})\n", config.data_dir.join(BOOTSTRAP_FILE).display()));
        }
        None => out.push_str("  admin token    (created on first start; not stored here)\n"),
    }
    if let Ok(envs) = store.list_environments(DEFAULT_PROJECT, &pennant_store::ListQuery::default()).await {
        out.push_str(&format!("  project \"{DEFAULT_PROJECT}\":\n"));
        for env in envs.items {
            let e = env.data;
            out.push_str(&format!(
                "    {:<11} SDK key {}  mobile key {}  client-side ID {}\n",
                e.key, e.sdk_key, e.mobile_key, e.client_side_id
            ));
        }
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// Hides a password in a database URL.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}://{user}:***{}", &url[..scheme], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

async fn health(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => {
            axum::Json(serde_json::json!({"status": "ok", "database": "ok", "version": env!("CARGO_PKG_VERSION")}))
                .into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "unavailable", "database": e.to_string()})),
        )
            .into_response(),
    }
}

async fn render_metrics(State(state): State<AppState>) -> String {
    state.metrics.render()
}

/// Counts requests and their latency by route and status.
async fn record_request(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("pennant_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("pennant_http_request_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn database_passwords_are_not_printed() {
        assert_eq!(redact_url("postgres://app:s3cret@db:5432/pennant"), "postgres://app:***@db:5432/pennant");
        assert_eq!(redact_url("postgres://app@db/pennant"), "postgres://app@db/pennant");
        assert_eq!(
            redact_url("sqlite://./pennant-data/pennant.db?mode=rwc"),
            "sqlite://./pennant-data/pennant.db?mode=rwc"
        );
    }
}
