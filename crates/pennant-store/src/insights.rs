//! Insights: flag-evaluation counts (minute, hour and day buckets), each flag's last evaluation, the contexts index
//! with full-text search, custom events for export, and the markers that make event processing idempotent.
//!
//! The event processor aggregates many queued batches in memory and hands them to [`Store::write_insights`], which
//! writes in ONE transaction: the processed-batch markers, the counts (added to the minute, hour and day rows at
//! once: the hour and day roll-ups are done from the in-memory aggregate, so they are exact and queryable as soon
//! as the minute is), the flags' last-evaluated times, the context upserts and the custom events. A batch whose
//! marker is already stored is skipped, so a batch redelivered after a crash between commit and acknowledgement is
//! counted once. On PostgreSQL a concurrent processor inserting the same marker waits for the first to commit and
//! then skips it.
//!
//! Retention ([`Store::insights_maintenance`], the periodic job): on PostgreSQL the minute and hour tables are
//! partitioned by range of bucket (a partition per UTC day for minutes, per 7 days for hours); the job creates the
//! coming partitions ahead and drops partitions older than the retention; the writer also creates a missing
//! partition on demand (old or future-dated events). On SQLite expired rows are deleted.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use serde_json::Value;
use sqlx::Row as _;
use sqlx::any::AnyRow;

use crate::db::{Backend, Store};
use crate::error::{Result, StoreError};
use crate::model::Actor;

/// One minute, hour and day in milliseconds.
pub const MINUTE_MS: i64 = 60_000;
/// One hour in milliseconds.
pub const HOUR_MS: i64 = 3_600_000;
/// One day in milliseconds.
pub const DAY_MS: i64 = 86_400_000;
/// Span of one PostgreSQL hour-table partition.
const WEEK_MS: i64 = 7 * DAY_MS;

/// The variation recorded when the SDK reported none (flag not found, evaluation error).
pub const NO_VARIATION: i64 = -1;

/// Rows per multi-row statement (2–10 parameters each, so at most 10,000 parameters: under PostgreSQL's 65,535 and
/// SQLite's 32,766). On SQLite every statement that writes the contexts' FTS5 index opens a savepoint, which flushes
/// the index's pending terms into a new segment (merged later): fewer, larger statements cost less.
const CHUNK: usize = 1000;

/// Time-series granularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// One-minute buckets.
    Minute,
    /// One-hour buckets.
    Hour,
    /// One-day (UTC) buckets.
    Day,
}

impl Granularity {
    /// Bucket length in ms.
    pub fn millis(self) -> i64 {
        match self {
            Granularity::Minute => MINUTE_MS,
            Granularity::Hour => HOUR_MS,
            Granularity::Day => DAY_MS,
        }
    }

    /// The start of the bucket holding `ts`.
    pub fn bucket(self, ts: i64) -> i64 {
        ts - ts.rem_euclid(self.millis())
    }

    fn table(self) -> &'static str {
        match self {
            Granularity::Minute => "insights_eval_minute",
            Granularity::Hour => "insights_eval_hour",
            Granularity::Day => "insights_eval_day",
        }
    }

    /// PostgreSQL partition span, for the partitioned tables.
    fn partition_span(self) -> Option<(i64, &'static str)> {
        match self {
            Granularity::Minute => Some((DAY_MS, "d")),
            Granularity::Hour => Some((WEEK_MS, "w")),
            Granularity::Day => None,
        }
    }
}

/// A context as the index keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IndexedContext {
    /// Context kind.
    pub kind: String,
    /// Context key.
    pub key: String,
    /// Its name, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Other attributes as the SDK sent them (private ones were redacted by the SDK).
    #[schema(value_type = Object)]
    pub attributes: Value,
    /// Attribute references the SDK redacted.
    pub redacted_attributes: Vec<String>,
    /// First seen (Unix ms).
    pub first_seen: i64,
    /// Last seen (Unix ms). The event processor writes an unchanged context again only once its last write is a
    /// refresh window old (60 s by default), so this can lag the newest sighting by up to that window.
    pub last_seen: i64,
}

/// A context to insert or refresh in the index.
#[derive(Debug, Clone, PartialEq)]
pub struct ContextUpsert {
    /// Context kind.
    pub kind: String,
    /// Context key.
    pub key: String,
    /// Name.
    pub name: Option<String>,
    /// Other attributes (a JSON object).
    pub attributes: serde_json::Map<String, Value>,
    /// Redacted attribute references.
    pub redacted: Vec<String>,
    /// When the event that carried it was created (Unix ms).
    pub seen_at: i64,
}

/// A custom event to store for export.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomEventRecord {
    /// Event key.
    pub key: String,
    /// creationDate (Unix ms).
    pub ts: i64,
    /// Context kind → key.
    pub context_keys: BTreeMap<String, String>,
    /// The event's data, if any.
    pub data: Option<Value>,
    /// metricValue, if any.
    pub metric_value: Option<f64>,
}

/// A stored custom event.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoredCustomEvent {
    /// Row ID (increasing; a cursor).
    pub id: i64,
    /// Event key.
    pub key: String,
    /// creationDate (Unix ms).
    pub creation_date: i64,
    /// Context kind → key.
    pub context_keys: BTreeMap<String, String>,
    /// Data.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
    /// metricValue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric_value: Option<f64>,
    /// When Pennant received the batch (Unix ms).
    pub received_at: i64,
}

/// What one queued batch contributes, aggregated. Build one per batch, then pass many to
/// [`Store::write_insights`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchInsights {
    /// Identifies the batch for idempotence (see [`batch_marker`]).
    pub marker: String,
    /// Project key.
    pub project: String,
    /// Environment key.
    pub env: String,
    /// When the batch was received (Unix ms).
    pub received_at: i64,
    /// Evaluations per (flag, variation, minute bucket start).
    pub counts: HashMap<(String, i64, i64), i64>,
    /// Newest evaluation time per flag.
    pub flag_seen: HashMap<String, i64>,
    /// Contexts, newest per (kind, key).
    pub contexts: HashMap<(String, String), ContextUpsert>,
    /// Custom events.
    pub custom: Vec<CustomEventRecord>,
}

impl BatchInsights {
    /// An empty contribution.
    pub fn new(marker: String, project: &str, env: &str, received_at: i64) -> BatchInsights {
        BatchInsights { marker, project: project.into(), env: env.into(), received_at, ..BatchInsights::default() }
    }

    /// Adds `count` evaluations of `flag` giving `variation` at `ts`.
    pub fn add_count(&mut self, flag: &str, variation: i64, ts: i64, count: i64) {
        if count <= 0 {
            return;
        }
        let minute = Granularity::Minute.bucket(ts);
        *self.counts.entry((flag.to_owned(), variation, minute)).or_insert(0) += count;
        self.saw_flag(flag, ts);
    }

    /// Records that `flag` was evaluated at `ts`.
    pub fn saw_flag(&mut self, flag: &str, ts: i64) {
        match self.flag_seen.get_mut(flag) {
            Some(t) => *t = (*t).max(ts),
            None => {
                self.flag_seen.insert(flag.to_owned(), ts);
            }
        }
    }

    /// Adds a context, keeping the newest sighting of each.
    pub fn add_context(&mut self, c: ContextUpsert) {
        let k = (c.kind.clone(), c.key.clone());
        match self.contexts.get(&k) {
            Some(old) if old.seen_at > c.seen_at => {}
            _ => {
                self.contexts.insert(k, c);
            }
        }
    }
}

/// The idempotence marker of a queued batch: its payload ID within its environment when the SDK sent one (so an
/// SDK retry is recognised even if queued twice), else the queue's own ID of the batch.
pub fn batch_marker(project: &str, env: &str, payload_id: Option<&str>, queue_id: &str) -> String {
    match payload_id {
        Some(p) if !p.is_empty() => format!("p:{project}/{env}/{p}"),
        _ => format!("q:{queue_id}"),
    }
}

/// What [`Store::write_insights`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InsightsWritten {
    /// Batches written.
    pub batches: usize,
    /// Batches skipped because they had been processed before.
    pub duplicates: usize,
    /// Evaluation count rows (minute buckets) touched.
    pub count_rows: usize,
    /// Evaluations added.
    pub evaluations: i64,
    /// Contexts upserted.
    pub contexts: usize,
    /// Custom events stored.
    pub custom_events: usize,
}

/// How long insights data is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Minute buckets (default 7 days).
    pub minutes_ms: i64,
    /// Hour buckets (default 90 days).
    pub hours_ms: i64,
    /// Day buckets (default 2 years).
    pub days_ms: i64,
    /// Custom events (default 30 days).
    pub custom_events_ms: i64,
    /// Processed-batch markers (default 7 days: longer than any redelivery).
    pub markers_ms: i64,
    /// PostgreSQL partitions created ahead of now (default 3 days).
    pub ahead_ms: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            minutes_ms: 7 * DAY_MS,
            hours_ms: 90 * DAY_MS,
            days_ms: 730 * DAY_MS,
            custom_events_ms: 30 * DAY_MS,
            markers_ms: 7 * DAY_MS,
            ahead_ms: 3 * DAY_MS,
        }
    }
}

/// What one maintenance run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    /// Partitions created (PostgreSQL).
    pub partitions_created: Vec<String>,
    /// Partitions dropped (PostgreSQL).
    pub partitions_dropped: Vec<String>,
    /// Rows deleted.
    pub rows_deleted: u64,
}

/// One point of an evaluation time series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeriesPoint {
    /// Bucket start (Unix ms).
    pub bucket: i64,
    /// Variation index (-1: none reported).
    pub variation: i64,
    /// Evaluations.
    pub count: i64,
}

/// Evaluations of one flag and variation over a period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagVariationTotal {
    /// Flag key.
    pub flag: String,
    /// Variation (-1: none).
    pub variation: i64,
    /// Evaluations.
    pub count: i64,
}

/// A page of contexts.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContextPage {
    /// Contexts, most recently seen first.
    pub items: Vec<IndexedContext>,
    /// Pass as `after` for the next page (absent on the last page).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// How to list contexts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContextQuery {
    /// Full-text search over key, name and attribute values (every word must match, as a prefix).
    pub q: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Page size (1–1000; default 50).
    pub limit: Option<u32>,
    /// Cursor from the previous page.
    pub after: Option<String>,
}

fn processor_actor() -> Actor {
    Actor::system("insights")
}

/// Lower-cases `s` and turns everything but letters and digits into spaces, so that SQLite's FTS5 and
/// PostgreSQL's `simple` configuration split it into the same words.
pub fn search_words(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = true;
    for c in s.chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
            space = false;
        } else if !space {
            out.push(' ');
            space = true;
        }
    }
    if out.ends_with(' ') {
        out.pop();
    }
    out
}

fn search_text(c: &ContextUpsert) -> String {
    fn walk(v: &Value, out: &mut String) {
        match v {
            Value::String(s) => {
                out.push(' ');
                out.push_str(s);
            }
            Value::Number(n) => {
                out.push(' ');
                out.push_str(&n.to_string());
            }
            Value::Bool(b) => {
                out.push(' ');
                out.push_str(if *b { "true" } else { "false" });
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            Value::Object(o) => o.values().for_each(|v| walk(v, out)),
            Value::Null => {}
        }
    }
    let mut raw = c.key.clone();
    if let Some(n) = &c.name {
        raw.push(' ');
        raw.push_str(n);
    }
    for v in c.attributes.values() {
        walk(v, &mut raw);
    }
    // Keep the indexed text bounded whatever the SDK sends.
    let mut words = search_words(&raw);
    if words.len() > 8192 {
        let mut cut = 8192;
        while !words.is_char_boundary(cut) {
            cut -= 1;
        }
        words.truncate(cut);
    }
    words
}

/// `($1, $2), ($3, $4)` on PostgreSQL; `(?, ?), (?, ?)` on SQLite, where numbered parameters make binding
/// quadratic: sqlx looks every parameter's name up (`sqlite3_bind_parameter_name`, a linear scan of the statement's
/// named parameters), which took a third of the server's CPU with 2,000-parameter statements. Anonymous parameters
/// have no name to scan for.
fn placeholders(backend: Backend, rows: usize, cols: usize) -> String {
    let mut s = String::with_capacity(rows * cols * 5);
    let mut n = 1;
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push_str(", ");
            }
            match backend {
                Backend::Sqlite => s.push('?'),
                Backend::Postgres => {
                    s.push('$');
                    s.push_str(&n.to_string());
                }
            }
            n += 1;
        }
        s.push(')');
    }
    s
}

fn json_text(v: &impl Serialize) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn context_from_row(r: &AnyRow) -> Result<IndexedContext> {
    let attributes: String = r.try_get("attributes")?;
    let redacted: String = r.try_get("redacted")?;
    Ok(IndexedContext {
        kind: r.try_get("kind")?,
        key: r.try_get("key")?,
        name: r.try_get("name")?,
        attributes: serde_json::from_str(&attributes).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        redacted_attributes: serde_json::from_str(&redacted).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        first_seen: r.try_get("first_seen")?,
        last_seen: r.try_get("last_seen")?,
    })
}

fn parse_cursor(s: &str) -> Result<(i64, i64)> {
    let bad = || StoreError::invalid("cursor", format!("{s:?} is not a cursor from a previous page"));
    let (a, b) = s.split_once('.').ok_or_else(bad)?;
    Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?))
}

/// Turns a search string into an FTS5 query: each word quoted, as a prefix, all required.
fn fts5_query(words: &str) -> String {
    words.split(' ').filter(|w| !w.is_empty()).map(|w| format!("\"{w}\"*")).collect::<Vec<_>>().join(" AND ")
}

/// Turns a search string into a PostgreSQL tsquery: each word as a prefix, all required.
fn tsquery(words: &str) -> String {
    words.split(' ').filter(|w| !w.is_empty()).map(|w| format!("{w}:*")).collect::<Vec<_>>().join(" & ")
}

type CountKey<'a> = (&'a str, &'a str, &'a str, i64, i64);

/// A statement with its parameters bound, ready to run in a transaction.
type BoundQuery = sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments>;

/// Everything one [`Store::write_insights`] transaction writes after the markers, built before it begins.
struct PreparedInsights {
    statements: Vec<BoundQuery>,
    count_rows: usize,
    evaluations: i64,
    contexts: usize,
    custom_events: usize,
}

impl PreparedInsights {
    /// Coalesces the batches' contributions (counts summed per flag, variation and bucket, each flag's newest
    /// evaluation, each context's newest sighting) and binds the statements that write them.
    fn new(backend: Backend, batches: &[&BatchInsights]) -> Result<PreparedInsights> {
        let mut statements = Vec::new();
        let mut evaluations = 0;
        let mut counts: HashMap<CountKey<'_>, i64> = HashMap::new();
        let mut flag_seen: HashMap<(&str, &str, &str), i64> = HashMap::new();
        let mut contexts: HashMap<(&str, &str, &str, &str), &ContextUpsert> = HashMap::new();
        for b in batches {
            let (p, e) = (b.project.as_str(), b.env.as_str());
            for ((flag, variation, minute), n) in &b.counts {
                *counts.entry((p, e, flag, *variation, *minute)).or_insert(0) += n;
                evaluations += n;
            }
            for (flag, ts) in &b.flag_seen {
                let seen = flag_seen.entry((p, e, flag)).or_insert(*ts);
                *seen = (*seen).max(*ts);
            }
            for c in b.contexts.values() {
                match contexts.entry((p, e, &c.kind, &c.key)) {
                    Entry::Occupied(old) if old.get().seen_at > c.seen_at => {}
                    Entry::Occupied(mut old) => {
                        old.insert(c);
                    }
                    Entry::Vacant(v) => {
                        v.insert(c);
                    }
                }
            }
        }
        let count_rows = counts.len();
        for g in [Granularity::Minute, Granularity::Hour, Granularity::Day] {
            let mut rolled: HashMap<CountKey<'_>, i64> = HashMap::new();
            for ((p, e, f, v, minute), n) in &counts {
                *rolled.entry((p, e, f, *v, g.bucket(*minute))).or_insert(0) += n;
            }
            let rows: Vec<_> = rolled.into_iter().collect();
            for chunk in rows.chunks(CHUNK) {
                let table = g.table();
                let sql = format!(
                    "INSERT INTO {table} (project, env, flag, variation, bucket, count) VALUES {} ON CONFLICT \
                     (project, env, flag, bucket, variation) DO UPDATE SET count = {table}.count + excluded.count",
                    placeholders(backend, chunk.len(), 6)
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for ((p, e, f, v, bucket), n) in chunk {
                    q = q.bind(p.to_string()).bind(e.to_string()).bind(f.to_string()).bind(*v).bind(*bucket).bind(*n);
                }
                statements.push(q);
            }
        }
        let seen_rows: Vec<_> = flag_seen.into_iter().collect();
        for chunk in seen_rows.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO insights_flag_seen (project, env, flag, last_seen) VALUES {} ON CONFLICT (project, env, \
                 flag) DO UPDATE SET last_seen = excluded.last_seen WHERE excluded.last_seen > \
                 insights_flag_seen.last_seen",
                placeholders(backend, chunk.len(), 4)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for ((p, e, f), ts) in chunk {
                q = q.bind(p.to_string()).bind(e.to_string()).bind(f.to_string()).bind(*ts);
            }
            statements.push(q);
        }
        let ctx_rows: Vec<_> = contexts.into_iter().collect();
        for chunk in ctx_rows.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO insights_contexts (project, env, kind, key, name, attributes, redacted, search_text, \
                 first_seen, last_seen) VALUES {} ON CONFLICT (project, env, kind, key) DO UPDATE SET name = \
                 excluded.name, attributes = excluded.attributes, redacted = excluded.redacted, search_text = \
                 excluded.search_text, last_seen = excluded.last_seen WHERE excluded.last_seen >= \
                 insights_contexts.last_seen",
                placeholders(backend, chunk.len(), 10)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for ((p, e, _, _), c) in chunk {
                q = q
                    .bind(p.to_string())
                    .bind(e.to_string())
                    .bind(c.kind.clone())
                    .bind(c.key.clone())
                    .bind(c.name.clone())
                    .bind(json_text(&c.attributes)?)
                    .bind(json_text(&c.redacted)?)
                    .bind(search_text(c))
                    .bind(c.seen_at)
                    .bind(c.seen_at);
            }
            statements.push(q);
        }
        let custom: Vec<(&BatchInsights, &CustomEventRecord)> =
            batches.iter().flat_map(|b| b.custom.iter().map(move |c| (*b, c))).collect();
        for chunk in custom.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO insights_custom_events (project, env, key, ts, context_keys, data, metric_value, \
                 received_at) VALUES {}",
                placeholders(backend, chunk.len(), 8)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (b, c) in chunk {
                q = q
                    .bind(b.project.clone())
                    .bind(b.env.clone())
                    .bind(c.key.clone())
                    .bind(c.ts)
                    .bind(json_text(&c.context_keys)?)
                    .bind(c.data.as_ref().map(json_text).transpose()?)
                    .bind(c.metric_value)
                    .bind(b.received_at);
            }
            statements.push(q);
        }
        Ok(PreparedInsights {
            statements,
            count_rows,
            evaluations,
            contexts: ctx_rows.len(),
            custom_events: custom.len(),
        })
    }
}

impl Store {
    /// Writes many batches' contributions in one transaction with their idempotence markers, skipping batches
    /// processed before (and repeats of one marker within `batches`). Counts of the remaining batches are merged
    /// (write coalescing) and added to the minute, hour and day rows.
    ///
    /// The statements are built before the transaction begins, on the guess that every batch is new (the usual
    /// case): on SQLite the transaction holds the store's one write lock, which the front door's queue inserts
    /// wait for, so only the statements run under it. When the markers show that some batches were processed
    /// before (a redelivery), the statements are built again, in the transaction, for the new ones only.
    pub async fn write_insights(&self, batches: &[BatchInsights]) -> Result<InsightsWritten> {
        self.write_insights_dequeuing(batches, &[]).await
    }

    /// [`Store::write_insights`], also deleting these rows of the embedded event queue (`event_queue`, the
    /// batches the insights come from) in the same transaction: a batch leaves the queue exactly when its
    /// contribution commits, without an acknowledgement transaction of its own (on SQLite a commit is a sync of
    /// the log, with the one write lock held).
    pub async fn write_insights_dequeuing(
        &self,
        batches: &[BatchInsights],
        queue_rows: &[i64],
    ) -> Result<InsightsWritten> {
        let mut report = InsightsWritten::default();
        let mut seen = HashSet::new();
        let mut unique: Vec<&BatchInsights> = Vec::with_capacity(batches.len());
        for b in batches {
            if seen.insert(b.marker.as_str()) {
                unique.push(b);
            } else {
                report.duplicates += 1;
            }
        }
        if unique.is_empty() && queue_rows.is_empty() {
            return Ok(report);
        }
        if self.backend() == Backend::Postgres {
            let mut buckets: Vec<i64> = unique.iter().flat_map(|b| b.counts.keys().map(|k| k.2)).collect();
            buckets.sort_unstable();
            buckets.dedup();
            self.ensure_partitions(&buckets).await?;
        }
        let now = crate::now_ms();
        let mut markers = Vec::with_capacity(unique.len().div_ceil(CHUNK));
        for chunk in unique.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO insights_processed (marker, processed_at) VALUES {} ON CONFLICT (marker) DO NOTHING \
                 RETURNING marker",
                placeholders(self.backend(), chunk.len(), 2)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for b in chunk {
                q = q.bind(b.marker.clone()).bind(now);
            }
            markers.push(q);
        }
        let mut prepared = PreparedInsights::new(self.backend(), &unique)?;
        let dequeue = crate::event_queue::delete_statements(self.backend(), queue_rows);

        let mut tx = self.begin(&processor_actor()).await?;
        for q in dequeue {
            q.execute(&mut *tx.tx).await?;
        }
        // Markers first: the batches whose marker goes in are the new ones.
        let mut fresh: HashSet<String> = HashSet::with_capacity(unique.len());
        for q in markers {
            for r in q.fetch_all(&mut *tx.tx).await? {
                fresh.insert(r.try_get::<String, _>(0)?);
            }
        }
        let total = unique.len();
        let new: Vec<&BatchInsights> = unique.into_iter().filter(|b| fresh.contains(&b.marker)).collect();
        report.duplicates += total - new.len();
        report.batches = new.len();
        if new.is_empty() {
            tx.commit().await?;
            return Ok(report);
        }
        if new.len() < total {
            prepared = PreparedInsights::new(self.backend(), &new)?;
        }
        for q in prepared.statements {
            q.execute(&mut *tx.tx).await?;
        }
        tx.commit().await?;
        report.count_rows = prepared.count_rows;
        report.evaluations = prepared.evaluations;
        report.contexts = prepared.contexts;
        report.custom_events = prepared.custom_events;
        Ok(report)
    }

    /// Whether a batch marker has been processed.
    pub async fn insights_processed(&self, marker: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM insights_processed WHERE marker = $1")
            .bind(marker.to_owned())
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    /// Creates the PostgreSQL partitions holding these minute buckets (and their hours), if missing.
    async fn ensure_partitions(&self, minute_buckets: &[i64]) -> Result<Vec<String>> {
        let mut wanted: Vec<(Granularity, i64)> = Vec::new();
        for &b in minute_buckets {
            for g in [Granularity::Minute, Granularity::Hour] {
                if let Some((span, _)) = g.partition_span() {
                    wanted.push((g, b.div_euclid(span)));
                }
            }
        }
        wanted.sort_unstable_by_key(|(g, n)| (*g as u8, *n));
        wanted.dedup();
        let mut created = Vec::new();
        for (g, n) in wanted {
            if let Some(name) = self.ensure_partition(g, n).await? {
                created.push(name);
            }
        }
        Ok(created)
    }

    async fn ensure_partition(&self, g: Granularity, n: i64) -> Result<Option<String>> {
        let Some((span, suffix)) = g.partition_span() else { return Ok(None) };
        let table = g.table();
        let name = format!("{table}_{suffix}{n}");
        let exists: Option<String> =
            sqlx::query_scalar("SELECT to_regclass($1)::text").bind(name.clone()).fetch_one(&self.pool).await?;
        if exists.is_some() {
            return Ok(None);
        }
        let (from, to) = (n * span, (n + 1) * span);
        let sql = format!("CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table} FOR VALUES FROM ({from}) TO ({to})");
        match sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&self.pool).await {
            Ok(_) => Ok(Some(name)),
            // Another writer created it at the same moment.
            Err(e) => {
                let exists: Option<String> =
                    sqlx::query_scalar("SELECT to_regclass($1)::text").bind(name).fetch_one(&self.pool).await?;
                if exists.is_some() { Ok(None) } else { Err(e.into()) }
            }
        }
    }

    /// The periodic insights job: creates the coming partitions (PostgreSQL), and applies the retention (drops
    /// expired partitions on PostgreSQL, deletes expired rows on SQLite; deletes expired day rows, custom events
    /// and processed-batch markers on both).
    pub async fn insights_maintenance(&self, now: i64, retention: &Retention) -> Result<MaintenanceReport> {
        let mut report = MaintenanceReport::default();
        let horizons = [(Granularity::Minute, retention.minutes_ms), (Granularity::Hour, retention.hours_ms)];
        if self.backend() == Backend::Postgres {
            let mut ahead = Vec::new();
            let mut t = Granularity::Minute.bucket(now);
            while t <= now + retention.ahead_ms {
                ahead.push(t);
                t += DAY_MS;
            }
            report.partitions_created = self.ensure_partitions(&ahead).await?;
            for (g, keep) in horizons {
                let Some((span, suffix)) = g.partition_span() else { continue };
                let table = g.table();
                let prefix = format!("{table}_{suffix}");
                let parts: Vec<String> = sqlx::query_scalar(
                    "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p \
                     ON p.oid = i.inhparent WHERE p.relname = $1",
                )
                .bind(table)
                .fetch_all(&self.pool)
                .await?;
                for part in parts {
                    let Some(n) = part.strip_prefix(&prefix).and_then(|n| n.parse::<i64>().ok()) else { continue };
                    if (n + 1) * span <= now - keep {
                        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {part}")))
                            .execute(&self.pool)
                            .await?;
                        report.partitions_dropped.push(part);
                    }
                }
            }
        }
        let _guard = self.write_guard("insights-maintenance").await;
        if self.backend() == Backend::Sqlite {
            for (g, keep) in horizons {
                let sql = format!("DELETE FROM {} WHERE bucket < $1", g.table());
                report.rows_deleted +=
                    sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now - keep).execute(&self.pool).await?.rows_affected();
            }
        }
        for (sql, keep) in [
            ("DELETE FROM insights_eval_day WHERE bucket < $1", retention.days_ms),
            ("DELETE FROM insights_custom_events WHERE received_at < $1", retention.custom_events_ms),
            ("DELETE FROM insights_processed WHERE processed_at < $1", retention.markers_ms),
        ] {
            report.rows_deleted += sqlx::query(sql).bind(now - keep).execute(&self.pool).await?.rows_affected();
        }
        Ok(report)
    }

    /// A flag's evaluations in one environment per bucket and variation, buckets in `[from, to)`, oldest first.
    pub async fn eval_series(
        &self,
        project: &str,
        env: &str,
        flag: &str,
        granularity: Granularity,
        from: i64,
        to: i64,
    ) -> Result<Vec<SeriesPoint>> {
        let sql = format!(
            "SELECT bucket, variation, count FROM {} WHERE project = $1 AND env = $2 AND flag = $3 AND bucket >= $4 \
             AND bucket < $5 ORDER BY bucket, variation",
            granularity.table()
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(project.to_owned())
            .bind(env.to_owned())
            .bind(flag.to_owned())
            .bind(granularity.bucket(from))
            .bind(to)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(SeriesPoint { bucket: r.try_get(0)?, variation: r.try_get(1)?, count: r.try_get(2)? }))
            .collect()
    }

    /// Evaluations per flag and variation in an environment from the hour bucket holding `since` on.
    pub async fn eval_totals_since(&self, project: &str, env: &str, since: i64) -> Result<Vec<FlagVariationTotal>> {
        let rows = sqlx::query(
            "SELECT flag, variation, CAST(SUM(count) AS BIGINT) FROM insights_eval_hour WHERE project = $1 AND env = $2 AND bucket \
             >= $3 GROUP BY flag, variation ORDER BY flag, variation",
        )
        .bind(project.to_owned())
        .bind(env.to_owned())
        .bind(Granularity::Hour.bucket(since))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(FlagVariationTotal { flag: r.try_get(0)?, variation: r.try_get(1)?, count: r.try_get(2)? }))
            .collect()
    }

    /// Each flag's last evaluation time in an environment (flags never evaluated are absent).
    pub async fn flags_last_evaluated(&self, project: &str, env: &str) -> Result<HashMap<String, i64>> {
        let rows = sqlx::query("SELECT flag, last_seen FROM insights_flag_seen WHERE project = $1 AND env = $2")
            .bind(project.to_owned())
            .bind(env.to_owned())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// The keys and creation times (Unix ms) of a project's flags.
    pub async fn flag_creation_times(&self, project: &str) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT key, created_at FROM resources WHERE kind = $1 AND scope = $2 ORDER BY key")
            .bind(crate::flags::KIND)
            .bind(project.to_owned())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// Contexts seen in an environment, most recently seen first, optionally searched and filtered by kind.
    pub async fn list_contexts(&self, project: &str, env: &str, q: &ContextQuery) -> Result<ContextPage> {
        let limit = q.limit.unwrap_or(50).clamp(1, 1000);
        let mut sql = String::from(
            "SELECT c.id, c.kind, c.key, c.name, c.attributes, c.redacted, c.first_seen, c.last_seen FROM \
             insights_contexts c",
        );
        let words = q.q.as_deref().map(search_words).filter(|w| !w.is_empty());
        let mut n = 3;
        let mut conds = vec!["c.project = $1".to_owned(), "c.env = $2".to_owned()];
        if words.is_some() {
            match self.backend() {
                Backend::Sqlite => {
                    sql.push_str(" JOIN insights_contexts_fts f ON f.rowid = c.id");
                    conds.push(format!("insights_contexts_fts MATCH ${n}"));
                }
                Backend::Postgres => conds.push(format!("c.search_tsv @@ to_tsquery('simple', ${n})")),
            }
            n += 1;
        }
        if q.kind.is_some() {
            conds.push(format!("c.kind = ${n}"));
            n += 1;
        }
        let cursor = q.after.as_deref().map(parse_cursor).transpose()?;
        if cursor.is_some() {
            conds.push(format!("(c.last_seen < ${n} OR (c.last_seen = ${} AND c.id < ${}))", n + 1, n + 2));
            n += 3;
        }
        sql.push_str(" WHERE ");
        sql.push_str(&conds.join(" AND "));
        sql.push_str(&format!(" ORDER BY c.last_seen DESC, c.id DESC LIMIT ${n}"));
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(project.to_owned()).bind(env.to_owned());
        if let Some(w) = &words {
            query = query.bind(match self.backend() {
                Backend::Sqlite => fts5_query(w),
                Backend::Postgres => tsquery(w),
            });
        }
        if let Some(kind) = &q.kind {
            query = query.bind(kind.clone());
        }
        if let Some((ls, id)) = cursor {
            query = query.bind(ls).bind(ls).bind(id);
        }
        let rows = query.bind(i64::from(limit) + 1).fetch_all(&self.pool).await?;
        let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
        let mut items = Vec::with_capacity(rows.len());
        let mut last = None;
        for r in rows.iter().take(usize::try_from(limit).unwrap_or(usize::MAX)) {
            let c = context_from_row(r)?;
            last = Some((c.last_seen, r.try_get::<i64, _>("id")?));
            items.push(c);
        }
        let next = if more { last.map(|(ls, id)| format!("{ls}.{id}")) } else { None };
        Ok(ContextPage { items, next })
    }

    /// One indexed context.
    pub async fn get_context(&self, project: &str, env: &str, kind: &str, key: &str) -> Result<IndexedContext> {
        let row = sqlx::query(
            "SELECT id, kind, key, name, attributes, redacted, first_seen, last_seen FROM insights_contexts WHERE \
             project = $1 AND env = $2 AND kind = $3 AND key = $4",
        )
        .bind(project.to_owned())
        .bind(env.to_owned())
        .bind(kind.to_owned())
        .bind(key.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => context_from_row(&r),
            None => Err(StoreError::NotFound { kind: "context", key: format!("{project}/{env}/{kind}/{key}") }),
        }
    }

    /// Custom events of an environment with creationDate in `[from, to)` and row ID after `after`, oldest first,
    /// at most `limit` (1–10,000), optionally only one event key.
    pub async fn custom_events(
        &self,
        project: &str,
        env: &str,
        range: (i64, i64),
        key: Option<&str>,
        after: Option<(i64, i64)>,
        limit: u32,
    ) -> Result<Vec<StoredCustomEvent>> {
        let mut sql = String::from(
            "SELECT id, key, ts, context_keys, data, metric_value, received_at FROM insights_custom_events WHERE \
             project = $1 AND env = $2 AND ts >= $3 AND ts < $4",
        );
        let mut n = 5;
        if key.is_some() {
            sql.push_str(&format!(" AND key = ${n}"));
            n += 1;
        }
        if after.is_some() {
            sql.push_str(&format!(" AND (ts > ${n} OR (ts = ${} AND id > ${}))", n + 1, n + 2));
            n += 3;
        }
        sql.push_str(&format!(" ORDER BY ts, id LIMIT ${n}"));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(project.to_owned())
            .bind(env.to_owned())
            .bind(range.0)
            .bind(range.1);
        if let Some(k) = key {
            q = q.bind(k.to_owned());
        }
        if let Some((ts, id)) = after {
            q = q.bind(ts).bind(ts).bind(id);
        }
        let rows = q.bind(i64::from(limit.clamp(1, 10_000))).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let keys: String = r.try_get("context_keys")?;
                let data: Option<String> = r.try_get("data")?;
                Ok(StoredCustomEvent {
                    id: r.try_get("id")?,
                    key: r.try_get("key")?,
                    creation_date: r.try_get("ts")?,
                    context_keys: serde_json::from_str(&keys).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    data: data
                        .map(|d| serde_json::from_str(&d))
                        .transpose()
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    metric_value: r.try_get("metric_value")?,
                    received_at: r.try_get("received_at")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_normalised() {
        assert_eq!(search_words("Alice@Example.com  / Zürich!"), "alice example com zürich");
        assert_eq!(search_words("--"), "");
        assert_eq!(fts5_query("a bc"), "\"a\"* AND \"bc\"*");
        assert_eq!(tsquery("a bc"), "a:* & bc:*");
    }

    #[test]
    fn buckets_floor() {
        assert_eq!(Granularity::Minute.bucket(119_999), 60_000);
        assert_eq!(Granularity::Hour.bucket(-1), -HOUR_MS);
        assert_eq!(Granularity::Day.bucket(DAY_MS + 5), DAY_MS);
    }

    #[test]
    fn markers() {
        assert_eq!(batch_marker("p", "e", Some("x"), "9"), "p:p/e/x");
        assert_eq!(batch_marker("p", "e", None, "9"), "q:9");
        assert_eq!(batch_marker("p", "e", Some(""), "9"), "q:9");
    }
}
