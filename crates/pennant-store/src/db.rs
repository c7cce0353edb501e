//! Connecting, migrating, and write transactions.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

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
];
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../migrations/postgres/0001_init.sql")),
    (2, "webhook_deliveries", include_str!("../migrations/postgres/0002_webhook_deliveries.sql")),
    (3, "event_queue", include_str!("../migrations/postgres/0003_event_queue.sql")),
    (4, "insights", include_str!("../migrations/postgres/0004_insights.sql")),
    (5, "outbox_env_index", include_str!("../migrations/postgres/0005_outbox_env_index.sql")),
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
        let pool =
            AnyPoolOptions::new().max_connections(if backend == Backend::Sqlite { 4 } else { 16 }).connect(url).await?;
        let migrations = match backend {
            Backend::Sqlite => SQLITE_MIGRATIONS,
            Backend::Postgres => POSTGRES_MIGRATIONS,
        };
        let mut migrator = Migrator::new(Embedded(migrations)).await?;
        migrator.set_locking(backend == Backend::Postgres);
        migrator.run(&pool).await?;
        let store = Store {
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
    pub(crate) async fn write_guard(&self) -> Option<OwnedMutexGuard<()>> {
        match &self.write_lock {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        }
    }

    pub(crate) async fn begin(&self, actor: &Actor) -> Result<Tx> {
        let guard = self.write_guard().await;
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

/// A write transaction. Dropping it without `commit` rolls everything back.
pub(crate) struct Tx {
    pub(crate) tx: sqlx::Transaction<'static, Any>,
    _guard: Option<OwnedMutexGuard<()>>,
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
