//! Webhook subscriptions, and the deliveries made from the changelog.
//!
//! Subscriptions are documents (kind `webhook`, scope `''`), audited like every other resource with the signing
//! secret redacted. Deliveries are rows of `webhook_deliveries`, one per attempt: each committed changelog entry
//! becomes one `pending` row per matching webhook (attempt 1); a failed attempt is marked `retried` and a new row
//! (attempt + 1) is scheduled after an exponential backoff with jitter, until the last allowed attempt, which is
//! marked `failed`. The last changelog ID turned into deliveries is kept in `meta`, moved in the same
//! transaction as the rows it produced, so that a restart neither skips nor repeats entries.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row as _;
use sqlx::any::AnyRow;

use crate::db::{Store, Tx};
use crate::error::{Result, StoreError};
use crate::model::{Actor, Record, Webhook, WebhookFilter};
use crate::projects::{check_version, to_value};
use crate::resources::{ListQuery, Page, new_row};

pub(crate) const KIND: &str = "webhook";

/// The `meta` key of the delivery cursor.
const CURSOR_KEY: &str = "webhooks.changelog_cursor";

/// What the changelog shows instead of a webhook's secret.
const REDACTED: &str = "[redacted]";

/// How failed deliveries are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; after the last one fails the delivery is `failed`. At least 1.
    pub max_attempts: u32,
    /// Wait after the first failed attempt; doubled after each further one.
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 8 attempts, waiting about 10 s, 20 s, 40 s, … up to 30 minutes (about 20 minutes in all).
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            initial_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(30 * 60),
        }
    }
}

impl RetryPolicy {
    /// The wait after attempt `attempt` (1-based) failed: `initial · 2^(attempt-1)`, capped at `max_backoff`,
    /// of which a random half is taken off ("equal jitter") so that failed receivers are not hit in lockstep.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1_u32.checked_shl(attempt.saturating_sub(1).min(30)).unwrap_or(u32::MAX);
        let full = self.initial_backoff.saturating_mul(factor).min(self.max_backoff);
        let half = full / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        let jitter =
            if jitter_ms == 0 { Duration::ZERO } else { Duration::from_millis(rand::random_range(0..=jitter_ms)) };
        full - half + jitter
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting for its attempt (at `nextAt`).
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// This attempt failed; the next attempt is another row.
    Retried,
    /// The last attempt failed (or the webhook was turned off or deleted): no more attempts.
    Failed,
}

impl DeliveryStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Retried => "retried",
            DeliveryStatus::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<DeliveryStatus> {
        Ok(match s {
            "pending" => DeliveryStatus::Pending,
            "delivered" => DeliveryStatus::Delivered,
            "retried" => DeliveryStatus::Retried,
            "failed" => DeliveryStatus::Failed,
            other => return Err(StoreError::Corrupt(format!("unknown webhook delivery status {other:?}"))),
        })
    }
}

/// One attempt to deliver one changelog entry to one webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookDelivery {
    /// ID of this attempt.
    pub id: i64,
    /// Identifies the delivery, the same on every attempt (sent as `X-Pennant-Delivery`): receivers can drop
    /// repeats with it.
    pub delivery_id: String,
    /// The webhook.
    pub webhook_key: String,
    /// The changelog entry delivered.
    pub changelog_id: i64,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// The receiver's HTTP status, if it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_code: Option<u16>,
    /// What went wrong (empty when delivered).
    pub error: String,
    /// When the attempt was scheduled (Unix ms).
    pub created_at: i64,
    /// When the attempt was made (Unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempted_at: Option<i64>,
    /// When a pending attempt is due (Unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_at: Option<i64>,
}

/// What one [`Store::enqueue_webhook_deliveries`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Enqueued {
    /// The cursor afterwards: every changelog entry up to it has its deliveries.
    pub cursor: i64,
    /// Changelog entries passed.
    pub entries: usize,
    /// Delivery rows created.
    pub deliveries: usize,
    /// More entries wait (call again).
    pub more: bool,
}

/// The part of a changelog entry that webhook filters look at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntryRef<'a> {
    pub resource_kind: &'a str,
    pub scope: &'a str,
    pub resource_key: &'a str,
    pub diff: &'a Value,
}

/// Whether a webhook's filter selects a changelog entry.
///
/// An entry's project is the first part of its scope (for projects themselves: their key). Its environments
/// are the second part of the scope (`project/env`), the key of an environment entry, or, for flags, the
/// environments whose configuration the change touched. An entry in a project with none (a flag's name, a new
/// flag, the project itself) concerns every environment of it and passes any environment filter; entries
/// outside projects (webhooks, global external changes) pass neither a project nor an environment filter.
/// Empty filter lists match everything.
pub(crate) fn filter_matches(filter: &WebhookFilter, entry: &EntryRef<'_>) -> bool {
    if !filter.resource_kinds.is_empty() && !filter.resource_kinds.iter().any(|k| k == entry.resource_kind) {
        return false;
    }
    let (project, scoped_env) = match entry.scope.split_once('/') {
        Some((project, env)) => (project, Some(env)),
        None if entry.resource_kind == crate::projects::KIND && entry.scope.is_empty() => (entry.resource_key, None),
        None => (entry.scope, None),
    };
    if !filter.projects.is_empty() && (project.is_empty() || !filter.projects.iter().any(|p| p == project)) {
        return false;
    }
    if filter.environments.is_empty() {
        return true;
    }
    if project.is_empty() {
        return false;
    }
    let mut envs: BTreeSet<&str> = BTreeSet::new();
    if let Some(env) = scoped_env {
        envs.insert(env.split('/').next().unwrap_or(env));
    } else if entry.resource_kind == crate::environments::KIND {
        envs.insert(entry.resource_key);
    } else if entry.resource_kind == crate::flags::KIND {
        envs.extend(diff_environments(entry.diff));
    }
    envs.is_empty() || envs.iter().any(|e| filter.environments.iter().any(|f| f == e))
}

/// The environment keys a flag diff touches (`/environments/{key}/…`), unescaped per RFC 6901.
fn diff_environments(diff: &Value) -> Vec<&str> {
    let Some(ops) = diff.as_array() else { return Vec::new() };
    ops.iter()
        .flat_map(|op| [op.get("path"), op.get("from")])
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|path| {
            let rest = path.strip_prefix("/environments/")?;
            Some(rest.split('/').next().unwrap_or(rest))
        })
        .filter(|key| !key.is_empty() && !key.contains('~'))
        .collect()
}

/// Checks a subscription: an http(s) URL with a host, sensible filter entries.
pub(crate) fn check_webhook(webhook: &Webhook) -> Result<()> {
    let mut issues = Vec::new();
    if let Err(issue) = check_url(&webhook.url) {
        issues.push(issue);
    }
    for (field, keys) in
        [("filter.projects", &webhook.filter.projects), ("filter.environments", &webhook.filter.environments)]
    {
        for key in keys {
            if !pennant_eval::is_valid_key(key) {
                issues.push(format!("{field}: {key:?} is not a valid key"));
            }
        }
    }
    for kind in &webhook.filter.resource_kinds {
        if kind.trim().is_empty() {
            issues.push("filter.resourceKinds: kinds must not be empty".into());
        }
    }
    if webhook.secret.is_empty() {
        issues.push("secret must not be empty".into());
    }
    if issues.is_empty() { Ok(()) } else { Err(StoreError::Invalid { kind: KIND, issues }) }
}

fn check_url(url: &str) -> std::result::Result<(), String> {
    let bad = |why: &str| format!("url {url:?} {why}");
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("must not contain spaces or control characters"));
    }
    let lower = url.to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &url[8..]
    } else if lower.starts_with("http://") {
        &url[7..]
    } else {
        return Err(bad("must be an http:// or https:// URL"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split_once(']').map(|(h, _)| h).ok_or_else(|| bad("has an unterminated IPv6 address"))?
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    if let Some((_, port)) = host_port.rsplit_once(':')
        && !host_port.ends_with(']')
        && !port.is_empty()
        && port.parse::<u16>().is_err()
    {
        return Err(bad("has an invalid port"));
    }
    Ok(())
}

/// The secret stays out of the changelog.
fn redacted(data: &Value) -> Value {
    let mut data = data.clone();
    if let Some(v) = data.get_mut("secret") {
        *v = Value::String(REDACTED.into());
    }
    data
}

fn new_key() -> String {
    hex::encode(rand::random::<[u8; 12]>())
}

const DELIVERY_COLUMNS: &str =
    "id, webhook_id, changelog_id, attempt, status, response, error, next_at, created_at, attempted_at";

fn delivery_from_sql(r: &AnyRow) -> Result<WebhookDelivery> {
    let webhook_key: String = r.try_get("webhook_id")?;
    let changelog_id: i64 = r.try_get("changelog_id")?;
    let status = DeliveryStatus::parse(&r.try_get::<String, _>("status")?)?;
    let next_at: i64 = r.try_get("next_at")?;
    Ok(WebhookDelivery {
        id: r.try_get("id")?,
        delivery_id: format!("{webhook_key}-{changelog_id}"),
        webhook_key,
        changelog_id,
        attempt: u32::try_from(r.try_get::<i64, _>("attempt")?).unwrap_or(0),
        status,
        response_code: r.try_get::<Option<i64>, _>("response")?.and_then(|c| u16::try_from(c).ok()),
        error: r.try_get("error")?,
        created_at: r.try_get("created_at")?,
        attempted_at: r.try_get("attempted_at")?,
        next_at: (status == DeliveryStatus::Pending).then_some(next_at),
    })
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn dispatcher() -> Actor {
    Actor::system("webhooks")
}

impl Store {
    /// Creates a webhook with a generated key and, unless one is given, a generated secret.
    pub async fn create_webhook(&self, actor: &Actor, mut webhook: Webhook, comment: &str) -> Result<Record<Webhook>> {
        webhook.key = new_key();
        if webhook.secret.is_empty() {
            webhook.secret = crate::random_secret("whsec-");
        }
        check_webhook(&webhook)?;
        let mut tx = self.begin(actor).await?;
        let mut row = new_row(KIND, "", &webhook.key, &webhook.name, &[], &webhook)?;
        tx.insert(&mut row).await?;
        tx.record(KIND, "", &webhook.key, "create", comment, None, Some(redacted(&row.data))).await?;
        tx.commit().await?;
        row.decode()
    }

    /// A webhook, secret included.
    pub async fn get_webhook(&self, key: &str) -> Result<Record<Webhook>> {
        self.require_row(KIND, "", key).await?.decode()
    }

    /// Webhooks, filtered and paged (secrets included).
    pub async fn list_webhooks(&self, q: &ListQuery) -> Result<Page<Record<Webhook>>> {
        let page = self.list_rows(KIND, "", q).await?;
        page.decode()
    }

    /// Changes a webhook (not its key).
    pub async fn update_webhook(
        &self,
        actor: &Actor,
        key: &str,
        expected_version: Option<u64>,
        comment: &str,
        change: impl FnOnce(&mut Webhook) -> Result<()>,
    ) -> Result<Record<Webhook>> {
        let mut tx = self.begin(actor).await?;
        let mut row = tx.require(KIND, "", key).await?;
        check_version(KIND, key, expected_version, row.version)?;
        let before = row.data.clone();
        let mut webhook: Webhook = row.decode::<Webhook>()?.data;
        change(&mut webhook)?;
        if webhook.key != key {
            return Err(StoreError::invalid(KIND, "the key of a webhook cannot change"));
        }
        check_webhook(&webhook)?;
        row.name = webhook.name.clone();
        row.data = to_value(&webhook)?;
        tx.update(&mut row).await?;
        tx.record(KIND, "", key, "update", comment, Some(redacted(&before)), Some(redacted(&row.data))).await?;
        tx.commit().await?;
        row.decode()
    }

    /// Deletes a webhook and its delivery history.
    pub async fn delete_webhook(&self, actor: &Actor, key: &str, comment: &str) -> Result<()> {
        let mut tx = self.begin(actor).await?;
        let row = tx.require(KIND, "", key).await?;
        sqlx::query("DELETE FROM webhook_deliveries WHERE webhook_id = $1")
            .bind(key.to_owned())
            .execute(&mut *tx.tx)
            .await?;
        tx.delete(KIND, "", key).await?;
        tx.record(KIND, "", key, "delete", comment, Some(redacted(&row.data)), None).await?;
        tx.commit().await
    }

    /// The last changelog ID turned into deliveries (0 before the first).
    pub async fn webhook_cursor(&self) -> Result<i64> {
        let value: Option<String> = sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
            .bind(CURSOR_KEY)
            .fetch_optional(&self.pool)
            .await?;
        parse_cursor(value)
    }

    /// Turns up to `limit` changelog entries after the cursor into pending deliveries, one per webhook that is
    /// on, was created before the entry was recorded, and whose filter matches; then moves the cursor past them,
    /// in the same transaction.
    ///
    /// PostgreSQL hands out IDs before commit, so a transaction still running can commit an ID lower than one
    /// already visible. The cursor therefore stops before a gap in the IDs until the entry after it is
    /// `gap_grace` old; gaps left by rolled-back transactions are then passed. With several dispatchers, one
    /// moves the cursor and the others' work is rolled back.
    pub async fn enqueue_webhook_deliveries(&self, limit: u32, gap_grace: Duration) -> Result<Enqueued> {
        let mut tx = self.begin(&dispatcher()).await?;
        sqlx::query("INSERT INTO meta (key, value) VALUES ($1, '0') ON CONFLICT (key) DO NOTHING")
            .bind(CURSOR_KEY)
            .execute(&mut *tx.tx)
            .await?;
        let value: Option<String> = sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
            .bind(CURSOR_KEY)
            .fetch_optional(&mut *tx.tx)
            .await?;
        let start = parse_cursor(value)?;
        let limit = limit.clamp(1, 10_000);
        let rows = sqlx::query(
            "SELECT id, ts, resource_kind, scope, resource_key, diff_json FROM changelog WHERE id > $1 ORDER BY id \
             LIMIT $2",
        )
        .bind(start)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx.tx)
        .await?;
        let more = rows.len() >= usize::try_from(limit).unwrap_or(usize::MAX);
        let mut result = Enqueued { cursor: start, entries: 0, deliveries: 0, more };
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(result);
        }
        // Each webhook receives the entries recorded from its creation on (its own creation included).
        let mut webhooks: Vec<(i64, Webhook)> = Vec::new();
        for row in tx.all(KIND, "").await? {
            let webhook: Webhook = row.decode::<Webhook>()?.data;
            if !webhook.on {
                continue;
            }
            let since: Option<i64> = sqlx::query_scalar(
                "SELECT MAX(id) FROM changelog WHERE resource_kind = $1 AND scope = '' AND resource_key = $2 \
                 AND action = 'create'",
            )
            .bind(KIND)
            .bind(webhook.key.clone())
            .fetch_one(&mut *tx.tx)
            .await?;
            webhooks.push((since.unwrap_or(0), webhook));
        }
        let grace = ms(gap_grace);
        let now = tx.now;
        for r in &rows {
            let id: i64 = r.try_get("id")?;
            let ts: i64 = r.try_get("ts")?;
            if id != result.cursor + 1 && now.saturating_sub(ts) < grace {
                // A lower ID may still commit: wait for it (or for the grace to pass).
                result.more = false;
                break;
            }
            let resource_kind: String = r.try_get("resource_kind")?;
            let scope: String = r.try_get("scope")?;
            let resource_key: String = r.try_get("resource_key")?;
            let diff: String = r.try_get("diff_json")?;
            let diff: Value = serde_json::from_str(&diff).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let entry =
                EntryRef { resource_kind: &resource_kind, scope: &scope, resource_key: &resource_key, diff: &diff };
            for (since, webhook) in &webhooks {
                if id >= *since && filter_matches(&webhook.filter, &entry) {
                    result.deliveries += insert_attempt(&mut tx, &webhook.key, id, 1, now).await?;
                }
            }
            result.cursor = id;
            result.entries += 1;
        }
        if result.cursor == start {
            return Ok(Enqueued { more: false, ..result });
        }
        let moved = sqlx::query("UPDATE meta SET value = $1 WHERE key = $2 AND value = $3")
            .bind(result.cursor.to_string())
            .bind(CURSOR_KEY)
            .bind(start.to_string())
            .execute(&mut *tx.tx)
            .await?;
        if moved.rows_affected() != 1 {
            // Another dispatcher moved the cursor first; its deliveries stand, these roll back.
            return Ok(Enqueued { cursor: start, ..Enqueued::default() });
        }
        tx.commit().await?;
        Ok(result)
    }

    /// Takes up to `limit` due pending deliveries (oldest due first) for an attempt. Each is leased: it is not
    /// due again for `lease`, so other dispatchers leave it alone, and an attempt cut short by a crash is made
    /// again once the lease runs out.
    pub async fn claim_webhook_deliveries(&self, limit: u32, lease: Duration) -> Result<Vec<WebhookDelivery>> {
        let mut tx = self.begin(&dispatcher()).await?;
        let now = tx.now;
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE status = 'pending' AND next_at <= $1 \
             ORDER BY next_at, id LIMIT $2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(i64::from(limit.max(1)))
            .fetch_all(&mut *tx.tx)
            .await?;
        let lease_until = now.saturating_add(ms(lease));
        let mut claimed = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut delivery = delivery_from_sql(r)?;
            let next_at: i64 = r.try_get("next_at")?;
            let taken = sqlx::query(
                "UPDATE webhook_deliveries SET next_at = $1, attempted_at = $2 \
                 WHERE id = $3 AND status = 'pending' AND next_at = $4",
            )
            .bind(lease_until)
            .bind(now)
            .bind(delivery.id)
            .bind(next_at)
            .execute(&mut *tx.tx)
            .await?;
            if taken.rows_affected() == 1 {
                delivery.attempted_at = Some(now);
                delivery.next_at = Some(lease_until);
                claimed.push(delivery);
            }
        }
        tx.commit().await?;
        Ok(claimed)
    }

    /// Records a successful attempt.
    pub async fn mark_webhook_delivered(&self, delivery_id: i64, response_code: u16) -> Result<()> {
        let mut tx = self.begin(&dispatcher()).await?;
        sqlx::query(
            "UPDATE webhook_deliveries SET status = 'delivered', response = $1, error = '' \
             WHERE id = $2 AND status = 'pending'",
        )
        .bind(i64::from(response_code))
        .bind(delivery_id)
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await
    }

    /// Records a failed attempt: schedules the next attempt after the policy's backoff (this one becomes
    /// `retried`) or, after the last allowed attempt, gives up (`failed`). Returns what became of this attempt.
    pub async fn mark_webhook_failed(
        &self,
        delivery: &WebhookDelivery,
        response_code: Option<u16>,
        error: &str,
        retry: &RetryPolicy,
    ) -> Result<DeliveryStatus> {
        let mut tx = self.begin(&dispatcher()).await?;
        let status =
            if delivery.attempt < retry.max_attempts { DeliveryStatus::Retried } else { DeliveryStatus::Failed };
        let updated = sqlx::query(
            "UPDATE webhook_deliveries SET status = $1, response = $2, error = $3 WHERE id = $4 AND status = 'pending'",
        )
        .bind(status.as_str())
        .bind(response_code.map(i64::from))
        .bind(error.to_owned())
        .bind(delivery.id)
        .execute(&mut *tx.tx)
        .await?;
        if updated.rows_affected() == 1 && status == DeliveryStatus::Retried {
            let next_at = tx.now.saturating_add(ms(retry.backoff(delivery.attempt)));
            insert_attempt(&mut tx, &delivery.webhook_key, delivery.changelog_id, delivery.attempt + 1, next_at)
                .await?;
        }
        tx.commit().await?;
        Ok(status)
    }

    /// Gives up on a pending attempt without making it (the webhook was turned off or deleted).
    pub async fn abandon_webhook_delivery(&self, delivery_id: i64, reason: &str) -> Result<()> {
        let mut tx = self.begin(&dispatcher()).await?;
        sqlx::query("UPDATE webhook_deliveries SET status = 'failed', error = $1 WHERE id = $2 AND status = 'pending'")
            .bind(reason.to_owned())
            .bind(delivery_id)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await
    }

    /// When the next pending attempt is due (Unix ms), if any.
    pub async fn next_webhook_delivery_at(&self) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar("SELECT MIN(next_at) FROM webhook_deliveries WHERE status = 'pending'")
            .fetch_one(&self.pool)
            .await?)
    }

    /// A webhook's delivery attempts, newest first. `cursor` is the `nextCursor` of the previous page.
    pub async fn list_webhook_deliveries(
        &self,
        key: &str,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<Page<WebhookDelivery>> {
        self.require_row(KIND, "", key).await?;
        let limit = i64::from(limit.unwrap_or(50).clamp(1, 500));
        let before = match cursor {
            Some(c) => c.parse::<i64>().map_err(|_| StoreError::invalid("cursor", "malformed cursor"))?,
            None => i64::MAX,
        };
        let total_count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE webhook_id = $1")
            .bind(key.to_owned())
            .fetch_one(&self.pool)
            .await?;
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = $1 AND id < $2 ORDER BY id DESC \
             LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(key.to_owned())
            .bind(before)
            .bind(limit + 1)
            .fetch_all(&self.pool)
            .await?;
        let mut items = rows.iter().map(delivery_from_sql).collect::<Result<Vec<_>>>()?;
        let more = items.len() > usize::try_from(limit).unwrap_or(usize::MAX);
        items.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let next_cursor = if more { items.last().map(|d| d.id.to_string()) } else { None };
        Ok(Page { items, next_cursor, total_count })
    }
}

fn parse_cursor(value: Option<String>) -> Result<i64> {
    value.map_or(Ok(0), |v| v.parse().map_err(|_| StoreError::Corrupt(format!("webhook cursor {v:?}"))))
}

/// Schedules an attempt; an attempt that exists already is left alone. Returns the rows added (0 or 1).
async fn insert_attempt(tx: &mut Tx, webhook: &str, changelog_id: i64, attempt: u32, next_at: i64) -> Result<usize> {
    let result = sqlx::query(
        "INSERT INTO webhook_deliveries (webhook_id, changelog_id, attempt, status, response, error, next_at, \
         created_at) VALUES ($1, $2, $3, 'pending', NULL, '', $4, $5) \
         ON CONFLICT (webhook_id, changelog_id, attempt) DO NOTHING",
    )
    .bind(webhook.to_owned())
    .bind(changelog_id)
    .bind(i64::from(attempt))
    .bind(next_at)
    .bind(tx.now)
    .execute(&mut *tx.tx)
    .await?;
    Ok(usize::try_from(result.rows_affected()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn entry<'a>(kind: &'a str, scope: &'a str, key: &'a str, diff: &'a Value) -> EntryRef<'a> {
        EntryRef { resource_kind: kind, scope, resource_key: key, diff }
    }

    fn filter(projects: &[&str], environments: &[&str], kinds: &[&str]) -> WebhookFilter {
        let v = |s: &[&str]| s.iter().map(|s| (*s).to_owned()).collect();
        WebhookFilter { projects: v(projects), environments: v(environments), resource_kinds: v(kinds) }
    }

    #[test]
    fn filters() {
        let none = json!([]);
        let everything = filter(&[], &[], &[]);
        assert!(filter_matches(&everything, &entry("webhook", "", "w", &none)));
        let p = filter(&["p"], &[], &[]);
        assert!(filter_matches(&p, &entry("project", "", "p", &none)), "a project's own entries are in it");
        assert!(!filter_matches(&p, &entry("project", "", "q", &none)));
        assert!(filter_matches(&p, &entry("environment", "p", "prod", &none)));
        assert!(filter_matches(&p, &entry("segment", "p/prod", "s", &none)));
        assert!(!filter_matches(&p, &entry("segment", "q/prod", "s", &none)));
        assert!(!filter_matches(&p, &entry("webhook", "", "w", &none)), "global entries are in no project");

        let prod = filter(&[], &["prod"], &[]);
        assert!(filter_matches(&prod, &entry("environment", "p", "prod", &none)));
        assert!(!filter_matches(&prod, &entry("environment", "p", "test", &none)));
        assert!(filter_matches(&prod, &entry("segment", "p/prod", "s", &none)));
        assert!(!filter_matches(&prod, &entry("segment", "p/test", "s", &none)));
        assert!(filter_matches(&prod, &entry("project", "", "p", &none)), "project-wide changes concern every env");
        assert!(!filter_matches(&prod, &entry("webhook", "", "w", &none)), "global entries are in no environment");
        let toggle_test = json!([{"op": "replace", "path": "/environments/test/on", "value": true}]);
        let toggle_prod = json!([{"op": "replace", "path": "/environments/prod/rules/0", "value": {}}]);
        let rename = json!([{"op": "replace", "path": "/name", "value": "x"}]);
        assert!(!filter_matches(&prod, &entry("flag", "p", "f", &toggle_test)));
        assert!(filter_matches(&prod, &entry("flag", "p", "f", &toggle_prod)));
        assert!(filter_matches(&prod, &entry("flag", "p", "f", &rename)));

        let flags = filter(&[], &[], &["flag"]);
        assert!(filter_matches(&flags, &entry("flag", "p", "f", &rename)));
        assert!(!filter_matches(&flags, &entry("segment", "p/prod", "s", &none)));
    }

    #[test]
    fn urls() {
        for ok in ["http://localhost", "https://example.com/hook?x=1", "http://127.0.0.1:8080/x", "HTTPS://[::1]:9/"] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in ["", "ftp://x", "http://", "http:///path", "https://:80/", "http://a b", "http://h:port/", "x"] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let p = RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
        };
        for _ in 0..50 {
            let b1 = p.backoff(1);
            assert!((Duration::from_millis(50)..=Duration::from_millis(100)).contains(&b1), "{b1:?}");
            let b3 = p.backoff(3);
            assert!((Duration::from_millis(200)..=Duration::from_millis(400)).contains(&b3), "{b3:?}");
            let b9 = p.backoff(40);
            assert!((Duration::from_millis(500)..=Duration::from_millis(1000)).contains(&b9), "{b9:?}");
        }
    }
}
