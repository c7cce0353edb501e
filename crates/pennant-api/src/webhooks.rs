//! The webhook dispatcher: a background task that turns committed changelog entries into deliveries and POSTs
//! them, signed, to the subscribed URLs, retrying failures with backoff.
//!
//! Each request is `POST {url}` with the changelog entry as JSON plus `"webhook": {"key", "name"}`, and headers
//! `Content-Type: application/json`, `X-Pennant-Event: {resourceKind}.{action}`, `X-Pennant-Delivery` (the same
//! on every attempt of a delivery), `X-Pennant-Attempt` and `X-Pennant-Signature: sha256={hex}`, the
//! HMAC-SHA256 of the exact body with the webhook's secret. A 2xx answer is a delivery; anything else, a
//! connection failure or a timeout is retried per [`RetryPolicy`]. Redirects are not followed.
//!
//! Delivery is at least once: an attempt cut short by a crash is made again. Receivers drop repeats by
//! `X-Pennant-Delivery`.

use std::time::Duration;

use hmac::{KeyInit, Mac};
use pennant_store::{ChangelogEntry, DeliveryStatus, RetryPolicy, Store, StoreError, Webhook, WebhookDelivery};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Tuning of the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookOptions {
    /// Longest sleep between looks at the database when nothing is announced (changes made by other
    /// processes are found this way).
    pub poll_interval: Duration,
    /// Time allowed for one request, connecting included.
    pub timeout: Duration,
    /// Retries of failed attempts.
    pub retry: RetryPolicy,
    /// Changelog entries turned into deliveries per transaction.
    pub batch_size: u32,
    /// Attempts made at once.
    pub concurrency: u32,
    /// How long a gap in changelog IDs (a transaction still committing) holds deliveries back.
    pub gap_grace: Duration,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        WebhookOptions {
            poll_interval: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            batch_size: 500,
            concurrency: 16,
            gap_grace: Duration::from_secs(30),
        }
    }
}

impl WebhookOptions {
    /// A claimed attempt is not handed out again for this long (a crashed dispatcher's attempts are retried
    /// after it).
    fn lease(&self) -> Duration {
        self.timeout.saturating_mul(2).saturating_add(Duration::from_secs(30))
    }
}

/// The signature header's value for a body: `sha256=` and the hex HMAC-SHA256 of `body` keyed by `secret`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length.
    let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The JSON body delivered for a changelog entry.
pub fn payload(entry: &ChangelogEntry, webhook: &Webhook) -> Value {
    let mut body = serde_json::to_value(entry).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut body {
        map.insert("webhook".into(), json!({"key": webhook.key, "name": webhook.name}));
    }
    body
}

/// Starts the dispatcher. It wakes when this process commits a change, when a retry falls due, and at least
/// every `poll_interval`; it stops when `shutdown` becomes `true` or its sender is dropped, after finishing the
/// attempts under way (each bounded by `timeout`).
pub fn spawn_webhook_dispatcher(
    store: Store,
    shutdown: watch::Receiver<bool>,
    options: WebhookOptions,
) -> JoinHandle<()> {
    tokio::spawn(run(store, shutdown, options))
}

/// The HTTP client: http and https (rustls on ring, the system's trusted roots), no redirects, no proxy.
fn http_client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    // The process-wide TLS provider; when one is installed already, that one is used.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("Pennant-Webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

async fn run(store: Store, mut shutdown: watch::Receiver<bool>, options: WebhookOptions) {
    let client = match http_client(options.timeout) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "webhook dispatcher cannot start its HTTP client");
            return;
        }
    };
    let dispatcher = Dispatcher { store, client, options };
    let mut changes = dispatcher.store.subscribe();
    tracing::info!("webhook dispatcher started");
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        changes.borrow_and_update();
        let wait = match dispatcher.round(&shutdown).await {
            Ok(wait) => wait,
            Err(e) => {
                tracing::warn!(error = %e, "webhook dispatcher round failed; retrying");
                options.poll_interval
            }
        };
        tokio::select! {
            r = shutdown.changed() => if r.is_err() { break },
            _ = changes.changed() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
    tracing::info!("webhook dispatcher stopped");
}

struct Dispatcher {
    store: Store,
    client: reqwest::Client,
    options: WebhookOptions,
}

impl Dispatcher {
    /// Enqueues deliveries for new changelog entries and makes every due attempt; returns how long to sleep.
    async fn round(&self, shutdown: &watch::Receiver<bool>) -> pennant_store::Result<Duration> {
        loop {
            let enqueued =
                self.store.enqueue_webhook_deliveries(self.options.batch_size, self.options.gap_grace).await?;
            if enqueued.deliveries > 0 {
                tracing::debug!(
                    cursor = enqueued.cursor,
                    deliveries = enqueued.deliveries,
                    "webhook deliveries queued"
                );
            }
            if !enqueued.more || *shutdown.borrow() {
                break;
            }
        }
        let concurrency = self.options.concurrency.max(1);
        loop {
            let claimed = self.store.claim_webhook_deliveries(concurrency, self.options.lease()).await?;
            let full = claimed.len() >= usize::try_from(concurrency).unwrap_or(usize::MAX);
            if claimed.is_empty() {
                break;
            }
            let mut attempts = JoinSet::new();
            for delivery in claimed {
                let (store, client, options) = (self.store.clone(), self.client.clone(), self.options);
                attempts.spawn(async move { attempt(&store, &client, &options, &delivery).await });
            }
            while let Some(done) = attempts.join_next().await {
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "recording a webhook attempt failed"),
                    Err(e) => tracing::error!(error = %e, "webhook attempt task failed"),
                }
            }
            if !full || *shutdown.borrow() {
                break;
            }
        }
        let poll = self.options.poll_interval;
        Ok(match self.store.next_webhook_delivery_at().await? {
            Some(due) => {
                let ms = u64::try_from(due.saturating_sub(pennant_store::now_ms())).unwrap_or(0);
                Duration::from_millis(ms).clamp(Duration::from_millis(5), poll)
            }
            None => poll,
        })
    }
}

/// The outcome of one HTTP request.
enum Sent {
    Ok(u16),
    Failed(Option<u16>, String),
}

async fn attempt(
    store: &Store,
    client: &reqwest::Client,
    options: &WebhookOptions,
    delivery: &WebhookDelivery,
) -> pennant_store::Result<()> {
    let webhook = match store.get_webhook(&delivery.webhook_key).await {
        Ok(record) => record.data,
        Err(StoreError::NotFound { .. }) => return abandon(store, delivery, "the webhook was deleted").await,
        Err(e) => return Err(e),
    };
    if !webhook.on {
        return abandon(store, delivery, "the webhook is off").await;
    }
    let entry = match store.changelog_entry(delivery.changelog_id).await {
        Ok(entry) => entry,
        Err(StoreError::NotFound { .. }) => {
            return abandon(store, delivery, "the changelog entry no longer exists").await;
        }
        Err(e) => return Err(e),
    };
    let body = serde_json::to_vec(&payload(&entry, &webhook)).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let event = header_text(&format!("{}.{}", entry.resource_kind, entry.action));
    let request = client
        .post(&webhook.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Pennant-Event", event)
        .header("X-Pennant-Delivery", header_text(&delivery.delivery_id))
        .header("X-Pennant-Attempt", delivery.attempt.to_string())
        .header("X-Pennant-Signature", sign(&webhook.secret, &body))
        .body(body);
    let sent = match request.send().await {
        Ok(response) if response.status().is_success() => Sent::Ok(response.status().as_u16()),
        Ok(mut response) => {
            let code = response.status().as_u16();
            let mut snippet = Vec::new();
            while snippet.len() < 256 {
                match response.chunk().await {
                    Ok(Some(chunk)) => snippet.extend_from_slice(&chunk),
                    _ => break,
                }
            }
            snippet.truncate(256);
            let text = String::from_utf8_lossy(&snippet).trim().to_owned();
            Sent::Failed(
                Some(code),
                if text.is_empty() { format!("HTTP {code}") } else { format!("HTTP {code}: {text}") },
            )
        }
        Err(e) => Sent::Failed(None, describe(&e, options.timeout)),
    };
    match sent {
        Sent::Ok(code) => {
            store.mark_webhook_delivered(delivery.id, code).await?;
            metrics::counter!("pennant_webhook_deliveries_total", "result" => "delivered").increment(1);
            tracing::debug!(webhook = %webhook.key, delivery = %delivery.delivery_id, attempt = delivery.attempt, "webhook delivered");
        }
        Sent::Failed(code, error) => {
            let status = store.mark_webhook_failed(delivery, code, &error, &options.retry).await?;
            let result = if status == DeliveryStatus::Failed { "failed" } else { "retried" };
            metrics::counter!("pennant_webhook_deliveries_total", "result" => result).increment(1);
            tracing::info!(
                webhook = %webhook.key, delivery = %delivery.delivery_id, attempt = delivery.attempt, %error,
                gave_up = status == DeliveryStatus::Failed, "webhook attempt failed"
            );
        }
    }
    Ok(())
}

async fn abandon(store: &Store, delivery: &WebhookDelivery, reason: &str) -> pennant_store::Result<()> {
    store.abandon_webhook_delivery(delivery.id, reason).await?;
    metrics::counter!("pennant_webhook_deliveries_total", "result" => "abandoned").increment(1);
    Ok(())
}

/// A reqwest error with its causes, e.g. "could not connect: … Connection refused".
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {} ms", timeout.as_millis());
    }
    let mut text = if e.is_connect() { "could not connect".to_owned() } else { "request failed".to_owned() };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if !text.contains(": ") {
        text.push_str(&format!(": {e}"));
    }
    text
}

/// Header values are visible ASCII: anything else becomes `_`.
fn header_text(s: &str) -> String {
    s.chars().map(|c| if (' '..='~').contains(&c) { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[tokio::test]
    async fn https_urls_are_attempted() -> Result<(), Box<dyn std::error::Error>> {
        // Nothing listens on the port: the failure is the connection, not an unsupported scheme.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let client = http_client(Duration::from_secs(2))?;
        let result = client.post(format!("https://127.0.0.1:{port}/")).body("{}").send().await;
        assert!(result.as_ref().is_err_and(reqwest::Error::is_connect), "{result:?}");
        Ok(())
    }

    #[test]
    fn header_values_are_ascii() {
        assert_eq!(header_text("deploy.déployé v1\n"), "deploy.d_ploy_ v1_");
    }
}
