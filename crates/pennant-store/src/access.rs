//! Members, sessions and API access tokens. Secrets are stored only as SHA-256 digests (passwords as argon2
//! hashes made by the caller).

use serde::{Deserialize, Serialize};
use sqlx::Row as _;
use sqlx::any::AnyRow;

use crate::db::Store;
use crate::error::{Result, StoreError};
use crate::model::Actor;

/// What a member or token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read everything.
    Reader,
    /// Read and change flags, segments, environments and projects.
    Writer,
    /// Everything, including members, tokens and webhooks.
    Admin,
}

impl Role {
    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }

    /// Parses `reader`, `writer`, `admin`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "reader" => Some(Role::Reader),
            "writer" => Some(Role::Writer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// A person who signs in to the dashboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// ID.
    pub id: String,
    /// Email (unique).
    pub email: String,
    /// Display name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Argon2 PHC string.
    #[serde(skip)]
    pub password_hash: String,
    /// Unix ms.
    pub created_at: i64,
}

/// An API access token (never includes the secret, which is shown once at creation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiToken {
    /// ID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Projects it is limited to (empty: all).
    pub projects: Vec<String>,
    /// Member or system that made it.
    pub owner_id: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms of the last request made with it.
    pub last_used: Option<i64>,
}

/// What to create a token with.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewToken {
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Limit to these projects (empty: all).
    #[serde(default)]
    pub projects: Vec<String>,
}

fn member_from(r: &AnyRow) -> Result<Member> {
    let role: String = r.try_get("role")?;
    Ok(Member {
        id: r.try_get("id")?,
        email: r.try_get("email")?,
        name: r.try_get("name")?,
        role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("role {role:?}")))?,
        password_hash: r.try_get("password_hash")?,
        created_at: r.try_get("created_at")?,
    })
}

fn token_from(r: &AnyRow) -> Result<ApiToken> {
    let role: String = r.try_get("role")?;
    let projects: String = r.try_get("projects")?;
    Ok(ApiToken {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("role {role:?}")))?,
        projects: serde_json::from_str(&projects).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        owner_id: r.try_get("owner_id")?,
        created_at: r.try_get("created_at")?,
        last_used: r.try_get("last_used")?,
    })
}

/// How stale an API token's `last_used` may be: it is refreshed by the first use after this long.
pub const TOKEN_LAST_USED_GRANULARITY_MS: i64 = 60_000;

const TOKEN_COLUMNS: &str = "id, name, role, projects, owner_id, created_at, last_used";

impl Store {
    /// Adds a member. `password_hash` is an argon2 PHC string.
    pub async fn create_member(
        &self,
        actor: &Actor,
        email: &str,
        name: &str,
        role: Role,
        password_hash: &str,
    ) -> Result<Member> {
        let email = email.trim().to_lowercase();
        if !email.contains('@') {
            return Err(StoreError::invalid("member", "email must be an email address"));
        }
        let mut tx = self.begin(actor).await?;
        let exists: Option<String> = sqlx::query_scalar("SELECT id FROM members WHERE email = $1")
            .bind(email.clone())
            .fetch_optional(&mut *tx.tx)
            .await?;
        if exists.is_some() {
            return Err(StoreError::AlreadyExists { kind: "member", key: email });
        }
        let id = uuid_like();
        sqlx::query(
            "INSERT INTO members (id, email, name, role, password_hash, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id.clone())
        .bind(email.clone())
        .bind(name.to_owned())
        .bind(role.as_str())
        .bind(password_hash.to_owned())
        .bind(tx.now)
        .execute(&mut *tx.tx)
        .await?;
        let after = serde_json::json!({"id": id, "email": email, "name": name, "role": role});
        tx.record("member", "", &id, "create", "", None, Some(after)).await?;
        tx.commit().await?;
        self.member(&id).await
    }

    /// A member by ID.
    pub async fn member(&self, id: &str) -> Result<Member> {
        let row = sqlx::query("SELECT id, email, name, role, password_hash, created_at FROM members WHERE id = $1")
            .bind(id.to_owned())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound { kind: "member", key: id.to_owned() })?;
        member_from(&row)
    }

    /// A member by email.
    pub async fn member_by_email(&self, email: &str) -> Result<Option<Member>> {
        let row = sqlx::query("SELECT id, email, name, role, password_hash, created_at FROM members WHERE email = $1")
            .bind(email.trim().to_lowercase())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(member_from).transpose()
    }

    /// All members.
    pub async fn list_members(&self) -> Result<Vec<Member>> {
        let rows = sqlx::query("SELECT id, email, name, role, password_hash, created_at FROM members ORDER BY email")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(member_from).collect()
    }

    /// How many members exist (0 before the first start's bootstrap).
    pub async fn member_count(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM members").fetch_one(&self.pool).await?)
    }

    /// Starts a session; returns the session token (stored as a digest).
    pub async fn create_session(&self, member_id: &str, ttl_ms: i64) -> Result<String> {
        let token = crate::random_secret("ses-");
        let _guard = self.write_guard("access").await;
        sqlx::query("INSERT INTO sessions (token_hash, member_id, expires_at) VALUES ($1, $2, $3)")
            .bind(crate::sha256_hex(&token))
            .bind(member_id.to_owned())
            .bind(crate::now_ms().saturating_add(ttl_ms))
            .execute(&self.pool)
            .await?;
        Ok(token)
    }

    /// The member a live session token belongs to.
    pub async fn session_member(&self, token: &str) -> Result<Option<Member>> {
        let member_id: Option<String> =
            sqlx::query_scalar("SELECT member_id FROM sessions WHERE token_hash = $1 AND expires_at > $2")
                .bind(crate::sha256_hex(token))
                .bind(crate::now_ms())
                .fetch_optional(&self.pool)
                .await?;
        match member_id {
            Some(id) => Ok(Some(self.member(&id).await?)),
            None => Ok(None),
        }
    }

    /// Ends a session.
    pub async fn delete_session(&self, token: &str) -> Result<()> {
        let _guard = self.write_guard("access").await;
        sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
            .bind(crate::sha256_hex(token))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Creates an API token; returns it and its secret, which is not stored and cannot be shown again.
    pub async fn create_token(&self, actor: &Actor, new: NewToken) -> Result<(ApiToken, String)> {
        if new.name.trim().is_empty() {
            return Err(StoreError::invalid("token", "a token needs a name"));
        }
        let secret = crate::random_secret("api-");
        let id = uuid_like();
        let projects = serde_json::to_string(&new.projects).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = self.begin(actor).await?;
        sqlx::query(
            "INSERT INTO api_tokens (id, name, token_hash, role, projects, owner_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id.clone())
        .bind(new.name.clone())
        .bind(crate::sha256_hex(&secret))
        .bind(new.role.as_str())
        .bind(projects)
        .bind(actor.id.clone())
        .bind(tx.now)
        .execute(&mut *tx.tx)
        .await?;
        let after = serde_json::json!({"id": id, "name": new.name, "role": new.role, "projects": new.projects});
        tx.record("token", "", &id, "create", "", None, Some(after)).await?;
        tx.commit().await?;
        Ok((self.token(&id).await?, secret))
    }

    /// A token by ID.
    pub async fn token(&self, id: &str) -> Result<ApiToken> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.to_owned())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound { kind: "token", key: id.to_owned() })?;
        token_from(&row)
    }

    /// The token with this secret, marking it used (at most once a [`TOKEN_LAST_USED_GRANULARITY_MS`]: every API
    /// request authenticates, and a write per request would contend with every other writer, SQLite's one above
    /// all).
    pub async fn token_by_secret(&self, secret: &str) -> Result<Option<ApiToken>> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = $1");
        let row =
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(crate::sha256_hex(secret)).fetch_optional(&self.pool).await?;
        let Some(row) = row else { return Ok(None) };
        let mut token = token_from(&row)?;
        let now = crate::now_ms();
        if token.last_used.is_some_and(|used| (0..TOKEN_LAST_USED_GRANULARITY_MS).contains(&(now - used))) {
            return Ok(Some(token));
        }
        let _guard = self.write_guard("access").await;
        sqlx::query("UPDATE api_tokens SET last_used = $1 WHERE id = $2")
            .bind(now)
            .bind(token.id.clone())
            .execute(&self.pool)
            .await?;
        token.last_used = Some(now);
        Ok(Some(token))
    }

    /// All tokens.
    pub async fn list_tokens(&self) -> Result<Vec<ApiToken>> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await?;
        rows.iter().map(token_from).collect()
    }

    /// Revokes a token.
    pub async fn delete_token(&self, actor: &Actor, id: &str) -> Result<()> {
        let token = self.token(id).await?;
        let mut tx = self.begin(actor).await?;
        sqlx::query("DELETE FROM api_tokens WHERE id = $1").bind(id.to_owned()).execute(&mut *tx.tx).await?;
        let before =
            serde_json::json!({"id": token.id, "name": token.name, "role": token.role, "projects": token.projects});
        tx.record("token", "", id, "delete", "", Some(before), None).await?;
        tx.commit().await
    }
}

/// A random 128-bit ID in UUID text form.
fn uuid_like() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}
