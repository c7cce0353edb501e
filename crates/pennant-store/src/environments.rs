//! Environments and their SDK credentials.

use serde::Serialize;
use sqlx::Row as _;

use crate::db::{Store, Tx};
use crate::error::{Result, StoreError};
use crate::model::{Actor, Environment, FlagDoc, Record};
use crate::projects::{check_key, check_version, to_value};
use crate::resources::{ListQuery, Page, new_row};

pub(crate) const KIND: &str = "environment";

/// What an SDK credential gives access to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvCredential {
    /// `sdk`, `mobile` or `client`.
    pub kind: String,
    /// Project.
    pub project_key: String,
    /// Environment.
    pub env_key: String,
}

impl Store {
    /// Creates an environment with fresh credentials, and gives every flag of the project its default
    /// configuration there.
    pub async fn create_environment(
        &self,
        actor: &Actor,
        project: &str,
        mut env: Environment,
        comment: &str,
    ) -> Result<Record<Environment>> {
        check_key(KIND, &env.key)?;
        let mut tx = self.begin(actor).await?;
        tx.require(crate::projects::KIND, "", project).await?;
        env.sdk_key = crate::random_secret("sdk-");
        env.mobile_key = crate::random_secret("mob-");
        env.client_side_id = hex::encode(rand::random::<[u8; 12]>());
        let mut row = new_row(KIND, project, &env.key, &env.name, &env.tags, &env)?;
        tx.insert(&mut row).await?;
        for (kind, credential) in [("sdk", &env.sdk_key), ("mobile", &env.mobile_key), ("client", &env.client_side_id)]
        {
            insert_credential(&mut tx, credential, kind, project, &env.key, None).await?;
        }
        for mut flag_row in tx.all(crate::flags::KIND, project).await? {
            let mut doc: FlagDoc = flag_row.decode::<FlagDoc>()?.data;
            let config = doc.default_env_config(crate::random_secret(""));
            doc.environments.insert(env.key.clone(), config);
            flag_row.data = to_value(&doc)?;
            tx.update(&mut flag_row).await?;
        }
        tx.record(KIND, project, &env.key, "create", comment, None, Some(redacted(&row.data))).await?;
        tx.commit().await?;
        row.decode()
    }

    /// An environment.
    pub async fn get_environment(&self, project: &str, key: &str) -> Result<Record<Environment>> {
        self.require_row(KIND, project, key).await?.decode()
    }

    /// A project's environments.
    pub async fn list_environments(&self, project: &str, q: &ListQuery) -> Result<Page<Record<Environment>>> {
        self.require_row(crate::projects::KIND, "", project).await?;
        let page = self.list_rows(KIND, project, q).await?;
        page.decode()
    }

    /// Changes an environment's name, colour, tags or secure mode (not its key or credentials).
    pub async fn update_environment(
        &self,
        actor: &Actor,
        project: &str,
        key: &str,
        expected_version: Option<u64>,
        comment: &str,
        change: impl FnOnce(&mut Environment) -> Result<()>,
    ) -> Result<Record<Environment>> {
        let mut tx = self.begin(actor).await?;
        let mut row = tx.require(KIND, project, key).await?;
        check_version(KIND, key, expected_version, row.version)?;
        let before = row.data.clone();
        let old: Environment = row.decode::<Environment>()?.data;
        let mut env = old.clone();
        change(&mut env)?;
        if env.key != old.key
            || env.sdk_key != old.sdk_key
            || env.mobile_key != old.mobile_key
            || env.client_side_id != old.client_side_id
        {
            return Err(StoreError::invalid(
                KIND,
                "the key and credentials of an environment cannot be set; rotate keys instead",
            ));
        }
        row.name = env.name.clone();
        row.tags = env.tags.clone();
        row.data = to_value(&env)?;
        tx.update(&mut row).await?;
        tx.record(KIND, project, key, "update", comment, Some(redacted(&before)), Some(redacted(&row.data))).await?;
        tx.commit().await?;
        row.decode()
    }

    /// Replaces the SDK key (`sdk`) or mobile key (`mobile`). The old key keeps working for `overlap_ms`
    /// (0: stops at once).
    pub async fn rotate_key(
        &self,
        actor: &Actor,
        project: &str,
        key: &str,
        which: &str,
        overlap_ms: i64,
        comment: &str,
    ) -> Result<Record<Environment>> {
        let mut tx = self.begin(actor).await?;
        let mut row = tx.require(KIND, project, key).await?;
        let before = row.data.clone();
        let mut env: Environment = row.decode::<Environment>()?.data;
        let (old, new) = match which {
            "sdk" => (std::mem::replace(&mut env.sdk_key, crate::random_secret("sdk-")), env.sdk_key.clone()),
            "mobile" => (std::mem::replace(&mut env.mobile_key, crate::random_secret("mob-")), env.mobile_key.clone()),
            other => return Err(StoreError::invalid(KIND, format!("cannot rotate {other:?}: use sdk or mobile"))),
        };
        if overlap_ms > 0 {
            sqlx::query("UPDATE credentials SET expires_at = $1 WHERE credential = $2")
                .bind(tx.now.saturating_add(overlap_ms))
                .bind(old)
                .execute(&mut *tx.tx)
                .await?;
        } else {
            sqlx::query("DELETE FROM credentials WHERE credential = $1").bind(old).execute(&mut *tx.tx).await?;
        }
        insert_credential(&mut tx, &new, which, project, key, None).await?;
        row.data = to_value(&env)?;
        tx.update(&mut row).await?;
        tx.record(
            KIND,
            project,
            key,
            &format!("rotate-{which}-key"),
            comment,
            Some(redacted(&before)),
            Some(redacted(&row.data)),
        )
        .await?;
        tx.commit().await?;
        row.decode()
    }

    /// Deletes an environment, its segments and credentials, and its configuration in every flag.
    pub async fn delete_environment(&self, actor: &Actor, project: &str, key: &str, comment: &str) -> Result<()> {
        let mut tx = self.begin(actor).await?;
        let row = tx.require(KIND, project, key).await?;
        delete_credentials(&mut tx, project, key).await?;
        tx.delete_scope(&format!("{project}/{key}")).await?;
        for mut flag_row in tx.all(crate::flags::KIND, project).await? {
            let mut doc: FlagDoc = flag_row.decode::<FlagDoc>()?.data;
            if doc.environments.remove(key).is_some() {
                flag_row.data = to_value(&doc)?;
                tx.update(&mut flag_row).await?;
            }
        }
        tx.delete(KIND, project, key).await?;
        tx.record(KIND, project, key, "delete", comment, Some(redacted(&row.data)), None).await?;
        tx.commit().await
    }

    /// The environment an SDK key, mobile key or client-side ID belongs to (expired rotated keys excluded).
    pub async fn find_credential(&self, credential: &str) -> Result<Option<EnvCredential>> {
        let row = sqlx::query("SELECT kind, project_key, env_key, expires_at FROM credentials WHERE credential = $1")
            .bind(credential.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let expires_at: Option<i64> = row.try_get("expires_at")?;
        if expires_at.is_some_and(|t| t <= crate::now_ms()) {
            return Ok(None);
        }
        Ok(Some(EnvCredential {
            kind: row.try_get("kind")?,
            project_key: row.try_get("project_key")?,
            env_key: row.try_get("env_key")?,
        }))
    }
}

pub(crate) async fn insert_credential(
    tx: &mut Tx,
    credential: &str,
    kind: &str,
    project: &str,
    env: &str,
    expires_at: Option<i64>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO credentials (credential, kind, project_key, env_key, expires_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(credential.to_owned())
    .bind(kind.to_owned())
    .bind(project.to_owned())
    .bind(env.to_owned())
    .bind(expires_at)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

pub(crate) async fn delete_credentials(tx: &mut Tx, project: &str, env: &str) -> Result<()> {
    sqlx::query("DELETE FROM credentials WHERE project_key = $1 AND env_key = $2")
        .bind(project.to_owned())
        .bind(env.to_owned())
        .execute(&mut *tx.tx)
        .await?;
    Ok(())
}

/// Secrets stay out of the changelog.
pub(crate) fn redacted(data: &serde_json::Value) -> serde_json::Value {
    let mut data = data.clone();
    for field in ["sdkKey", "mobileKey"] {
        if let Some(v) = data.get_mut(field) {
            *v = serde_json::Value::String("[redacted]".into());
        }
    }
    data
}
