//! Connecting, migrating, and write transactions.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::{Any, AnyPool};
use tokio::sync::{Mutex, OwnedMutexGuard, watch};

use crate::error::{Result, StoreError};
use crate::model::Actor;

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file (the embedded default).
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// The newest changelog and outbox IDs committed, for in-process listeners (webhooks, the outbox relay).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    /// Newest changelog entry.
    pub changelog_id: i64,
    /// Newest outbox row.
    pub outbox_id: i64,
}

/// Handle to the database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    backend: Backend,
    // SQLite has one writer at a time; serialising writes here avoids SQLITE_BUSY on lock upgrades.
    write_lock: Option<Arc<Mutex<()>>>,
    changes: Arc<watch::Sender<Changes>>,
    // SQLite: the WAL checkpointer runs until the last handle is dropped (or the pool closed).
    _checkpointer: Option<Arc<watch::Sender<()>>>,
}

#[derive(Debug)]
struct Embedded(&'static [(i64, &'static str, &'static str)]);

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(
        self,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Vec<Migration>, sqlx::error::BoxDynError>> + Send + 's>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|(version, description, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*description),
                        MigrationType::Simple,
                        sqlx::SqlSafeStr::into_sql_str(*sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

// Forward-only, versioned, checked in; one list per dialect.
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../migrations/sqlite/0001_init.sql")),
    (2, "webhook_deliveries", include_str!("../migrations/sqlite/0002_webhook_deliveries.sql")),
    (3, "event_queue", include_str!("../migrations/sqlite/0003_event_queue.sql")),
    (4, "insights", include_str!("../migrations/sqlite/0004_insights.sql")),
    (5, "outbox_env_index", include_str!("../migrations/sqlite/0005_outbox_env_index.sql")),
    (6, "contexts_fts_unchanged", include_str!("../migrations/sqlite/0006_contexts_fts_unchanged.sql")),
    (7, "event_queue_body_encoding", include_str!("../migrations/sqlite/0007_event_queue_body_encoding.sql")),
    (8, "event_queue_origin", include_str!("../migrations/sqlite/0008_event_queue_origin.sql")),
];
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../migrations/postgres/0001_init.sql")),
    (2, "webhook_deliveries", include_str!("../migrations/postgres/0002_webhook_deliveries.sql")),
    (3, "event_queue", include_str!("../migrations/postgres/0003_event_queue.sql")),
    (4, "insights", include_str!("../migrations/postgres/0004_insights.sql")),
    (5, "outbox_env_index", include_str!("../migrations/postgres/0005_outbox_env_index.sql")),
    (6, "event_queue_body_encoding", include_str!("../migrations/postgres/0006_event_queue_body_encoding.sql")),
    (7, "event_queue_origin", include_str!("../migrations/postgres/0007_event_queue_origin.sql")),
];

impl Store {
    /// Opens `sqlite://PATH` or `postgres://…` and applies pending migrations.
    pub async fn open(url: &str) -> Result<Store> {
        install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        };
        let mut options = AnyPoolOptions::new().max_connections(if backend == Backend::Sqlite { 4 } else { 16 });
        if backend == Backend::Sqlite {
            // The Any driver takes only a URL, and sqlx's SQLite URLs carry no pragmas: set them on each new
            // connection (journal_mode is kept in the file; the first connection switches it).
            options = options.after_connect(|conn, _| Box::pin(async move { sqlite_pragmas(conn).await }));
        }
        let pool = options.connect(url).await?;
        let migrations = match backend {
            Backend::Sqlite => SQLITE_MIGRATIONS,
            Backend::Postgres => POSTGRES_MIGRATIONS,
        };
        let mut migrator = Migrator::new(Embedded(migrations)).await?;
        migrator.set_locking(backend == Backend::Postgres);
        migrator.run(&pool).await?;
        let store = Store {
            _checkpointer: (backend == Backend::Sqlite).then(|| Arc::new(spawn_checkpointer(pool.clone()))),
            pool,
            backend,
            write_lock: (backend == Backend::Sqlite).then(|| Arc::new(Mutex::new(()))),
            changes: Arc::new(watch::channel(Changes::default()).0),
        };
        let latest = store.latest_changes().await?;
        store.changes.send_replace(latest);
        Ok(store)
    }

    /// A bare pool on a URL, without migrations (for administration such as creating test databases).
    pub async fn connect_raw(url: &str) -> Result<AnyPool> {
        install_default_drivers();
        Ok(AnyPoolOptions::new().max_connections(1).connect(url).await?)
    }

    /// Opens (creating if needed) a SQLite database file.
    pub async fn open_sqlite(path: &Path) -> Result<Store> {
        Store::open(&format!("sqlite://{}?mode=rwc", path.display())).await
    }

    /// The database behind the store.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Watches the newest committed changelog and outbox IDs.
    pub fn subscribe(&self) -> watch::Receiver<Changes> {
        self.changes.subscribe()
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Whether both handles are clones of one opened store (one pool, one write lock).
    pub fn same_store(&self, other: &Store) -> bool {
        Arc::ptr_eq(&self.changes, &other.changes)
    }

    /// Closes the pool (waits for connections to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn latest_changes(&self) -> Result<Changes> {
        let changelog_id: Option<i64> =
            sqlx::query_scalar("SELECT MAX(id) FROM changelog").fetch_one(&self.pool).await?;
        let outbox_id: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM outbox").fetch_one(&self.pool).await?;
        Ok(Changes { changelog_id: changelog_id.unwrap_or(0), outbox_id: outbox_id.unwrap_or(0) })
    }

    /// On SQLite, the lock every write holds. SQLite allows one writer, and a transaction that read before it
    /// writes fails at once ("database is locked") when another connection wrote in between, so even
    /// single-statement writes outside a [`Tx`] take this lock. `None` on PostgreSQL.
    ///
    /// `writer` names who waits in the metrics `pennant_store_write_lock_wait_seconds` and
    /// `pennant_store_write_lock_hold_seconds`: on SQLite every write of every role queues here, so these say
    /// which writer the others wait for.
    pub(crate) async fn write_guard(&self, writer: &'static str) -> Option<WriteGuard> {
        let lock = self.write_lock.as_ref()?;
        let asked = Instant::now();
        let guard = lock.clone().lock_owned().await;
        let acquired = Instant::now();
        metrics::histogram!("pennant_store_write_lock_wait_seconds", "writer" => writer)
            .record(acquired.duration_since(asked).as_secs_f64());
        Some(WriteGuard { _guard: guard, acquired, writer })
    }

    pub(crate) async fn begin(&self, actor: &Actor) -> Result<Tx> {
        let guard = self.write_guard(writer_name(actor)).await;
        // IMMEDIATE takes SQLite's write lock at BEGIN, where the busy timeout applies. A deferred transaction
        // that reads first and then writes fails at once instead of waiting ("database is locked") while another
        // connection still holds the lock, for example until a dropped transaction's rollback has run on it.
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(Tx {
            tx,
            _guard: guard,
            actor: actor.clone(),
            now: crate::now_ms(),
            changes: self.changes.clone(),
            last: Changes::default(),
            backend: self.backend,
            ordered: false,
        })
    }
}

/// SQLite settings for the embedded store's write load (the event queue and the insights processor):
/// - `journal_mode = WAL`: a commit appends to the log instead of writing a rollback journal and the pages, and
///   readers (queue pulls, API queries) neither wait for the writer nor block it.
/// - `synchronous = FULL`: every commit syncs the WAL, so what was acknowledged (a queued event batch, a flag
///   change) survives a power loss or an operating-system crash too, not only the process crashing. `NORMAL`
///   measured barely faster under the event benchmark (~1 %) and would give that up.
/// - `temp_store = MEMORY`: statement journals and temporary tables (the contexts index's FTS5 statements open
///   savepoints) stay in memory instead of temporary files.
/// - `wal_autocheckpoint`: a committing connection checkpoints the WAL itself only past
///   [`WAL_AUTOCHECKPOINT_PAGES`], as a backstop: checkpoints are [`spawn_checkpointer`]'s job. Run by the
///   committing connection they held the store's write lock (copying megabytes and syncing twice) and took a third
///   of its time under event load.
async fn sqlite_pragmas(conn: &mut sqlx::AnyConnection) -> std::result::Result<(), sqlx::Error> {
    let autocheckpoint = format!("PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}");
    for pragma in
        ["PRAGMA journal_mode = WAL", "PRAGMA synchronous = FULL", "PRAGMA temp_store = MEMORY", &autocheckpoint]
    {
        sqlx::query(sqlx::AssertSqlSafe(pragma.to_owned())).execute(&mut *conn).await?;
    }
    Ok(())
}

/// WAL pages (4 KiB) after which a committing connection checkpoints by itself: about 80 MB, well above what
/// [`spawn_checkpointer`] lets build up.
const WAL_AUTOCHECKPOINT_PAGES: u32 = 20_000;

/// How often the checkpointer copies the WAL into the database file. Under the event benchmark's load the WAL grows
/// by ~130 MB/s (queued bodies written and deleted, insights); every 500 ms let it reach the autocheckpoint threshold
/// now and then, and a commit then checkpointed for ~100 ms holding the write lock.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// Checkpoints the WAL (PASSIVE: it waits for no one and blocks no one) every [`CHECKPOINT_INTERVAL`], outside the
/// store's write lock, so that writers only append to the WAL. Stops when the returned sender is dropped or the pool
/// is closed.
fn spawn_checkpointer(pool: AnyPool) -> watch::Sender<()> {
    let (stop, mut stopped) = watch::channel(());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                // Only an error (the sender dropped) ever comes: nothing is sent.
                _ = stopped.changed() => return,
                () = tokio::time::sleep(CHECKPOINT_INTERVAL) => {}
            }
            if pool.is_closed() {
                return;
            }
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
                if pool.is_closed() {
                    return;
                }
                tracing::warn!(error = %e, "checkpointing the SQLite WAL failed");
            }
        }
    });
    stop
}

/// The store's write lock, held (SQLite only; see [`Store::write_guard`]). Records how long it was held.
pub(crate) struct WriteGuard {
    _guard: OwnedMutexGuard<()>,
    acquired: Instant,
    writer: &'static str,
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        metrics::histogram!("pennant_store_write_lock_hold_seconds", "writer" => self.writer)
            .record(self.acquired.elapsed().as_secs_f64());
    }
}

/// The metrics label of a transaction's writer: Pennant's own writers by name (the event queue, the insights
/// processor, ...), people and tokens as `api`. Static, so that labels stay few.
fn writer_name(actor: &Actor) -> &'static str {
    if actor.kind != "system" {
        return "api";
    }
    match actor.name.as_str() {
        "event-queue" => "event-queue",
        "insights" => "insights",
        "webhooks" => "webhooks",
        _ => "system",
    }
}

/// A write transaction. Dropping it without `commit` rolls everything back.
pub(crate) struct Tx {
    pub(crate) tx: sqlx::Transaction<'static, Any>,
    _guard: Option<WriteGuard>,
    pub(crate) actor: Actor,
    pub(crate) now: i64,
    changes: Arc<watch::Sender<Changes>>,
    pub(crate) last: Changes,
    backend: Backend,
    ordered: bool,
}

/// Advisory-lock key that orders PostgreSQL transactions writing the changelog or the outbox.
const ORDER_LOCK_KEY: i64 = 0x5045_4e4e_414e_5401;

impl Tx {
    /// Makes the changelog and outbox IDs of this transaction become visible in ID order.
    ///
    /// Readers follow both tables with an "after ID" cursor. On PostgreSQL two concurrent transactions can take
    /// sequence values 10 and 11 and commit 11 first; a reader that saw 11 would then never read 10. Holding a
    /// transaction-scoped advisory lock from the first such insert until commit serialises these writers (SQLite
    /// writers are serialised already). Management writes are rare, so the lock costs nothing that matters.
    pub(crate) async fn order_ids(&mut self) -> Result<()> {
        if self.ordered || self.backend != Backend::Postgres {
            return Ok(());
        }
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(ORDER_LOCK_KEY).execute(&mut *self.tx).await?;
        self.ordered = true;
        Ok(())
    }

    pub(crate) async fn commit(self) -> Result<()> {
        let last = self.last;
        self.tx.commit().await?;
        // Only a transaction that wrote to the changelog or the outbox wakes the watchers: waking them for every
        // write would make two of them (the webhook dispatcher saves its cursor in a transaction) wake each
        // other forever.
        self.changes.send_if_modified(|c| {
            let before = *c;
            c.changelog_id = c.changelog_id.max(last.changelog_id);
            c.outbox_id = c.outbox_id.max(last.outbox_id);
            *c != before
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::TestDb;

    #[tokio::test]
    async fn sqlite_connections_use_wal_full_sync_and_memory_temp_store() {
        let db = TestDb::sqlite().await.unwrap();
        // Every connection the pool can hand out (four), held at once so that each is a different one.
        let mut conns = Vec::new();
        for _ in 0..4 {
            conns.push(db.store.pool.acquire().await.unwrap());
        }
        for conn in &mut conns {
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut **conn).await.unwrap();
            assert_eq!(mode, "wal");
            // 2 = FULL; 2 = MEMORY.
            let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(&mut **conn).await.unwrap();
            assert_eq!(synchronous, 2);
            let temp_store: i64 = sqlx::query_scalar("PRAGMA temp_store").fetch_one(&mut **conn).await.unwrap();
            assert_eq!(temp_store, 2);
            let pages: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint").fetch_one(&mut **conn).await.unwrap();
            assert_eq!(pages, i64::from(super::WAL_AUTOCHECKPOINT_PAGES));
        }
        drop(conns);
        // Writes still work (BEGIN IMMEDIATE on WAL), and the file is in WAL mode for the next opening too.
        let row = crate::NewQueueRow {
            project_key: "p",
            env_key: "e",
            payload_id: None,
            received_at: 1,
            schema_version: 4,
            body_encoding: crate::QueueBodyEncoding::Json,
            body: b"[]",
        };
        let ids = db.store.event_queue_insert(&[row]).await.unwrap();
        assert_eq!(db.store.event_queue_fetch(0, 10).await.unwrap().len(), ids.len());
        let reopened = crate::Store::open(db.url()).await.unwrap();
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&reopened.pool).await.unwrap();
        assert_eq!(mode, "wal");
        reopened.close().await;
    }

    #[tokio::test]
    async fn the_checkpointer_copies_the_wal_into_the_database_file() {
        let db = TestDb::sqlite().await.unwrap();
        let path = db.url().strip_prefix("sqlite://").and_then(|u| u.split('?').next()).unwrap().to_owned();
        let size = || std::fs::metadata(&path).unwrap().len();
        // 2 MB of queued bodies: far below the connections' own autocheckpoint threshold, so they stay in the WAL
        // until the checkpointer copies them.
        let body = vec![b'x'; 64 * 1024];
        let rows: Vec<_> = (0..32)
            .map(|_| crate::NewQueueRow {
                project_key: "p",
                env_key: "e",
                payload_id: None,
                received_at: 1,
                schema_version: 4,
                body_encoding: crate::QueueBodyEncoding::Json,
                body: &body,
            })
            .collect();
        db.store.event_queue_insert(&rows).await.unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        while size() < 2 * 1024 * 1024 {
            assert!(tokio::time::Instant::now() < deadline, "the database file stayed at {} bytes", size());
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}
