//! The embedded event queue's table: analytics batches acknowledged by the front door and not yet acknowledged by
//! the processors (`pennant-events` owns the queue logic: group commit, bounds, cursors).

use sqlx::Row;

use crate::db::{Backend, Store};
use crate::error::{Result, StoreError};
use crate::model::Actor;

/// How a queued body is stored (`event_queue.body_encoding`). The store keeps the bytes as given: the queue
/// (`pennant-events`) encodes and decodes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueBodyEncoding {
    /// The JSON array itself.
    Json,
    /// The JSON array LZ4-compressed (block format), its uncompressed length prepended (4 bytes, little-endian).
    Lz4,
}

impl QueueBodyEncoding {
    fn as_str(self) -> &'static str {
        match self {
            QueueBodyEncoding::Json => "json",
            QueueBodyEncoding::Lz4 => "lz4",
        }
    }

    fn parse(s: &str) -> Result<QueueBodyEncoding> {
        match s {
            "json" => Ok(QueueBodyEncoding::Json),
            "lz4" => Ok(QueueBodyEncoding::Lz4),
            other => Err(StoreError::Corrupt(format!("unknown event queue body encoding {other:?}"))),
        }
    }
}

/// A batch to insert.
#[derive(Debug, Clone)]
pub struct NewQueueRow<'a> {
    /// Project key.
    pub project_key: &'a str,
    /// Environment key.
    pub env_key: &'a str,
    /// `X-LaunchDarkly-Payload-ID`, if the SDK sent one.
    pub payload_id: Option<&'a str>,
    /// When the front door received it (Unix ms).
    pub received_at: i64,
    /// `X-LaunchDarkly-Event-Schema` (0 when absent).
    pub schema_version: i32,
    /// How `body` is encoded.
    pub body_encoding: QueueBodyEncoding,
    /// The JSON array, encoded as `body_encoding` says.
    pub body: &'a [u8],
}

/// A queued batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRow {
    /// Queue position; increases with every insert and is never reused.
    pub id: i64,
    /// Project key.
    pub project_key: String,
    /// Environment key.
    pub env_key: String,
    /// `X-LaunchDarkly-Payload-ID`, if the SDK sent one.
    pub payload_id: Option<String>,
    /// When the front door received it (Unix ms).
    pub received_at: i64,
    /// `X-LaunchDarkly-Event-Schema` (0 when absent).
    pub schema_version: i32,
    /// How `body` is encoded.
    pub body_encoding: QueueBodyEncoding,
    /// The JSON array, encoded as `body_encoding` says.
    pub body: Vec<u8>,
}

/// Rows inserted per statement (7 parameters each) on SQLite.
const INSERT_CHUNK: usize = 64;

/// Rows deleted per statement.
const DELETE_CHUNK: usize = 500;

/// The statements deleting these queue rows, bound (built before a transaction begins).
pub(crate) fn delete_statements(
    backend: Backend,
    ids: &[i64],
) -> Vec<sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments>> {
    ids.chunks(DELETE_CHUNK)
        .map(|chunk| {
            // Anonymous parameters on SQLite: sqlx looks numbered ones up by name, a linear scan each.
            let placeholders: Vec<String> = match backend {
                Backend::Sqlite => vec!["?".to_owned(); chunk.len()],
                Backend::Postgres => (1..=chunk.len()).map(|i| format!("${i}")).collect(),
            };
            let sql = format!("DELETE FROM event_queue WHERE id IN ({})", placeholders.join(", "));
            chunk.iter().fold(sqlx::query(sqlx::AssertSqlSafe(sql)), |q, id| q.bind(*id))
        })
        .collect()
}

impl Store {
    /// Inserts batches in one transaction (group commit) and returns their IDs in order.
    ///
    /// The statements are bound before the transaction begins (on SQLite it holds the store's write lock). On
    /// SQLite one statement inserts many rows: under the write lock, with `AUTOINCREMENT`, a statement's rows take
    /// consecutive IDs in the order of its `VALUES`, so its returned IDs sorted are the rows' IDs in order (SQLite
    /// does not promise the order `RETURNING` yields them in). PostgreSQL gives no such promise for a sequence
    /// within one statement, so there each row is its own statement.
    pub async fn event_queue_insert(&self, rows: &[NewQueueRow<'_>]) -> Result<Vec<i64>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        const COLUMNS: &str = "INSERT INTO event_queue (project_key, env_key, payload_id, received_at, schema_version, body_encoding, body)";
        let bind = |q: sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments>, row: &NewQueueRow<'_>| {
            q.bind(row.project_key.to_owned())
                .bind(row.env_key.to_owned())
                .bind(row.payload_id.map(str::to_owned))
                .bind(row.received_at)
                .bind(row.schema_version)
                .bind(row.body_encoding.as_str())
                .bind(row.body.to_vec())
        };
        let statements: Vec<_> = match self.backend() {
            Backend::Sqlite => rows
                .chunks(INSERT_CHUNK)
                .map(|chunk| {
                    let values = vec!["(?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
                    let sql = format!("{COLUMNS} VALUES {values} RETURNING id");
                    chunk.iter().fold(sqlx::query(sqlx::AssertSqlSafe(sql)), bind)
                })
                .collect(),
            Backend::Postgres => rows
                .iter()
                .map(|row| {
                    let sql = format!("{COLUMNS} VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id");
                    bind(sqlx::query(sqlx::AssertSqlSafe(sql)), row)
                })
                .collect(),
        };
        let mut tx = self.begin(&Actor::system("event-queue")).await?;
        let mut ids = Vec::with_capacity(rows.len());
        for q in statements {
            let mut returned: Vec<i64> = q
                .fetch_all(&mut *tx.tx)
                .await?
                .iter()
                .map(|r| r.try_get::<i64, _>(0))
                .collect::<std::result::Result<_, _>>()?;
            returned.sort_unstable();
            ids.extend(returned);
        }
        if ids.len() != rows.len() {
            // Dropping the transaction rolls it back.
            return Err(StoreError::Corrupt(format!("{} queue rows inserted, {} IDs returned", rows.len(), ids.len())));
        }
        tx.commit().await?;
        Ok(ids)
    }

    /// Up to `limit` batches with an ID greater than `after_id`, oldest first.
    pub async fn event_queue_fetch(&self, after_id: i64, limit: i64) -> Result<Vec<QueueRow>> {
        let rows = sqlx::query(
            "SELECT id, project_key, env_key, payload_id, received_at, schema_version, body_encoding, body \
             FROM event_queue \
             WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(QueueRow {
                    id: row.try_get("id")?,
                    project_key: row.try_get("project_key")?,
                    env_key: row.try_get("env_key")?,
                    payload_id: row.try_get("payload_id")?,
                    received_at: row.try_get("received_at")?,
                    schema_version: row.try_get("schema_version")?,
                    body_encoding: QueueBodyEncoding::parse(row.try_get("body_encoding")?)?,
                    body: row.try_get("body")?,
                })
            })
            .collect()
    }

    /// Deletes acknowledged batches; returns how many rows went.
    pub async fn event_queue_delete(&self, ids: &[i64]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let statements = delete_statements(self.backend(), ids);
        let mut tx = self.begin(&Actor::system("event-queue")).await?;
        let mut deleted = 0;
        for query in statements {
            deleted += query.execute(&mut *tx.tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(deleted)
    }

    /// The random name of this database's event queue (made on first use; see `event_queue_origin`).
    pub async fn event_queue_origin(&self) -> Result<String> {
        let select = "SELECT id FROM event_queue_origin";
        if let Some(id) = sqlx::query_scalar::<_, String>(select).fetch_optional(&self.pool).await? {
            return Ok(id);
        }
        let mut tx = self.begin(&Actor::system("event-queue")).await?;
        // Another process may have made it in between (PostgreSQL): the first one stays.
        sqlx::query(
            "INSERT INTO event_queue_origin (id) SELECT $1 WHERE NOT EXISTS (SELECT 1 FROM event_queue_origin)",
        )
        .bind(crate::random_secret("q"))
        .execute(&mut *tx.tx)
        .await?;
        let id: String = sqlx::query_scalar(select).fetch_one(&mut *tx.tx).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Inserts rows read from another database's queue with their IDs, skipping IDs already here (so that moving
    /// rows again after an interruption adds nothing twice). Later inserts get IDs above them.
    pub async fn event_queue_import(&self, rows: &[QueueRow]) -> Result<u64> {
        let mut tx = self.begin(&Actor::system("event-queue")).await?;
        let mut added = 0;
        for row in rows {
            added += sqlx::query(
                "INSERT INTO event_queue (id, project_key, env_key, payload_id, received_at, schema_version, \
                 body_encoding, body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
            )
            .bind(row.id)
            .bind(row.project_key.clone())
            .bind(row.env_key.clone())
            .bind(row.payload_id.clone())
            .bind(row.received_at)
            .bind(row.schema_version)
            .bind(row.body_encoding.as_str())
            .bind(row.body.clone())
            .execute(&mut *tx.tx)
            .await?
            .rows_affected();
        }
        if self.backend() == Backend::Postgres {
            // SQLite's AUTOINCREMENT follows explicit IDs by itself; a PostgreSQL sequence does not.
            sqlx::query(
                "SELECT setval(pg_get_serial_sequence('event_queue', 'id'), GREATEST((SELECT MAX(id) FROM \
                 event_queue), (SELECT last_value FROM event_queue_id_seq)))",
            )
            .execute(&mut *tx.tx)
            .await?;
        }
        tx.commit().await?;
        Ok(added)
    }

    /// How many batches are queued and their total body size in bytes.
    pub async fn event_queue_stats(&self) -> Result<(u64, u64)> {
        let row = sqlx::query(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n, CAST(COALESCE(SUM(LENGTH(body)), 0) AS BIGINT) AS bytes \
             FROM event_queue",
        )
        .fetch_one(&self.pool)
        .await?;
        let n: i64 = row.try_get("n")?;
        let bytes: i64 = row.try_get("bytes")?;
        Ok((u64::try_from(n).unwrap_or(0), u64::try_from(bytes).unwrap_or(0)))
    }
}
