//! Test helpers: a fresh database per test, on either backend, removed afterwards.

use crate::db::Store;
use crate::error::Result;

/// The PostgreSQL server tests use (`PENNANT_TEST_POSTGRES_URL`, default the local server's `test` database).
pub fn postgres_admin_url() -> String {
    std::env::var("PENNANT_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A database that exists for one test.
#[derive(Debug)]
pub struct TestDb {
    /// The store on it.
    pub store: Store,
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    _dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
    url: String,
}

impl TestDb {
    /// A SQLite file in a temporary directory.
    pub async fn sqlite() -> Result<TestDb> {
        let dir = tempfile::tempdir().map_err(|e| crate::StoreError::Corrupt(e.to_string()))?;
        let store = Store::open_sqlite(&dir.path().join("pennant.db")).await?;
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("pennant.db").display());
        Ok(TestDb { store, backend: "sqlite", _dir: Some(dir), pg_name: None, url })
    }

    /// A new PostgreSQL database on the test server. Fails (never skips) when the server is unreachable.
    pub async fn postgres() -> Result<TestDb> {
        let admin_url = postgres_admin_url();
        let name = format!("pennant_test_{}", hex::encode(rand::random::<[u8; 8]>()));
        let admin = Store::connect_raw(&admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await?;
        admin.close().await;
        let base = admin_url.rsplit_once('/').map_or(admin_url.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        let store = Store::open(&url).await?;
        Ok(TestDb { store, backend: "postgres", _dir: None, pg_name: Some(name), url })
    }

    /// The database's URL, for other processes.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Both backends.
    pub async fn both() -> Result<Vec<TestDb>> {
        Ok(vec![TestDb::sqlite().await?, TestDb::postgres().await?])
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else { return };
        // The pool's connections belong to the test's runtime, which this thread may be blocking: leave them, and
        // drop the database from a thread with its own runtime; FORCE ends the leftover sessions.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                if let Ok(admin) = Store::connect_raw(&postgres_admin_url()).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                        .execute(&admin)
                        .await;
                    admin.close().await;
                }
            });
        })
        .join();
    }
}
