//! The generic document layer: one table for every versioned resource, the changelog and the outbox.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::Row as _;
use sqlx::any::AnyRow;

use crate::db::{Store, Tx};
use crate::error::{Result, StoreError};
use crate::model::{Actor, ChangelogEntry, Record};

/// A stored document and its columns.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub kind: &'static str,
    pub scope: String,
    pub key: String,
    pub version: u64,
    pub name: String,
    pub tags: Vec<String>,
    pub archived: bool,
    pub data: Value,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Row {
    pub(crate) fn decode<T: DeserializeOwned>(&self) -> Result<Record<T>> {
        let data = serde_json::from_value(self.data.clone())
            .map_err(|e| StoreError::Corrupt(format!("{} {}/{}: {e}", self.kind, self.scope, self.key)))?;
        Ok(Record {
            data,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
            archived: self.archived,
        })
    }

    fn from_sql(kind: &'static str, r: &AnyRow) -> Result<Row> {
        let tags: String = r.try_get("tags")?;
        let data: String = r.try_get("data")?;
        let version: i64 = r.try_get("version")?;
        Ok(Row {
            kind,
            scope: r.try_get("scope")?,
            key: r.try_get("key")?,
            version: u64::try_from(version).unwrap_or(0),
            name: r.try_get("name")?,
            tags: tags.split(',').filter(|t| !t.is_empty()).map(str::to_owned).collect(),
            archived: r.try_get::<i64, _>("archived")? != 0,
            data: serde_json::from_str(&data).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        })
    }
}

fn tags_column(tags: &[String]) -> String {
    format!(",{},", tags.join(","))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

const ROW_COLUMNS: &str = "scope, key, version, name, tags, archived, data, created_at, updated_at";

/// Sorting for lists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SortOrder {
    /// By key (default).
    #[default]
    Key,
    /// By name.
    Name,
    /// By creation time.
    Created,
    /// By last change.
    Updated,
}

impl SortOrder {
    fn column(self) -> &'static str {
        match self {
            SortOrder::Key => "key",
            SortOrder::Name => "name",
            SortOrder::Created => "created_at",
            SortOrder::Updated => "updated_at",
        }
    }

    /// Parses `key`, `name`, `created`, `updated` (the API adds `-` for descending).
    pub fn parse(s: &str) -> Option<SortOrder> {
        Some(match s {
            "key" => SortOrder::Key,
            "name" => SortOrder::Name,
            "created" | "creationDate" => SortOrder::Created,
            "updated" | "lastModified" => SortOrder::Updated,
            _ => return None,
        })
    }
}

/// Filters, order and page for list endpoints.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only resources with this tag.
    pub tag: Option<String>,
    /// Case-insensitive text search in key and name.
    pub text: Option<String>,
    /// `Some(true)`: only archived; `Some(false)` or `None`: only live ones.
    pub archived: Option<bool>,
    /// Order.
    pub sort: SortOrder,
    /// Descending order.
    pub descending: bool,
    /// Page size (1–1000, default 100).
    pub limit: Option<u32>,
    /// Opaque cursor from the previous page.
    pub cursor: Option<String>,
}

/// One page of a list.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// How many items match in all.
    pub total_count: i64,
}

impl Page<Row> {
    /// Decodes every row of the page as a `T`.
    pub(crate) fn decode<T: DeserializeOwned>(&self) -> Result<Page<Record<T>>> {
        Ok(Page {
            items: self.items.iter().map(Row::decode).collect::<Result<_>>()?,
            next_cursor: self.next_cursor.clone(),
            total_count: self.total_count,
        })
    }
}

impl Store {
    pub(crate) async fn get_row(&self, kind: &'static str, scope: &str, key: &str) -> Result<Option<Row>> {
        let sql = format!("SELECT {ROW_COLUMNS} FROM resources WHERE kind = $1 AND scope = $2 AND key = $3");
        let row =
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(kind).bind(scope).bind(key).fetch_optional(&self.pool).await?;
        row.map(|r| Row::from_sql(kind, &r)).transpose()
    }

    pub(crate) async fn require_row(&self, kind: &'static str, scope: &str, key: &str) -> Result<Row> {
        self.get_row(kind, scope, key).await?.ok_or_else(|| StoreError::NotFound { kind, key: path(scope, key) })
    }

    /// Every row of a kind under a scope (for payloads and validation), in key order.
    pub(crate) async fn all_rows(&self, kind: &'static str, scope: &str) -> Result<Vec<Row>> {
        let sql = format!("SELECT {ROW_COLUMNS} FROM resources WHERE kind = $1 AND scope = $2 ORDER BY key");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(kind).bind(scope).fetch_all(&self.pool).await?;
        rows.iter().map(|r| Row::from_sql(kind, r)).collect()
    }

    pub(crate) async fn list_rows(&self, kind: &'static str, scope: &str, q: &ListQuery) -> Result<Page<Row>> {
        let limit = i64::from(q.limit.unwrap_or(100).clamp(1, 1000));
        let mut filters = String::from("kind = $1 AND scope = $2 AND archived = $3");
        let mut args: Vec<String> = Vec::new();
        let mut next = 4;
        if let Some(tag) = &q.tag {
            filters.push_str(&format!(" AND tags LIKE ${next}"));
            args.push(format!("%,{},%", escape_like(tag)));
            next += 1;
        }
        if let Some(text) = &q.text {
            filters.push_str(&format!(" AND (LOWER(key) LIKE ${next} OR LOWER(name) LIKE ${next})"));
            args.push(format!("%{}%", escape_like(&text.to_lowercase())));
            next += 1;
        }
        let archived = i64::from(q.archived.unwrap_or(false));
        let count_sql = format!("SELECT COUNT(*) FROM resources WHERE {filters}");
        let mut count =
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(count_sql)).bind(kind).bind(scope).bind(archived);
        for a in &args {
            count = count.bind(a.clone());
        }
        let total_count = count.fetch_one(&self.pool).await?;

        let col = q.sort.column();
        let (cmp, dir) = if q.descending { ("<", "DESC") } else { (">", "ASC") };
        let cursor = q.cursor.as_deref().map(decode_cursor).transpose()?;
        let mut page_filters = filters.clone();
        if cursor.is_some() {
            // Keyset pagination on (sort column, key); key breaks ties.
            let (a, b) = (next, next + 1);
            let sort_value = if matches!(q.sort, SortOrder::Created | SortOrder::Updated) {
                format!("CAST(${a} AS BIGINT)")
            } else {
                format!("${a}")
            };
            page_filters
                .push_str(&format!(" AND ({col} {cmp} {sort_value} OR ({col} = {sort_value} AND key {cmp} ${b}))"));
        }
        let sql = format!(
            "SELECT {ROW_COLUMNS} FROM resources WHERE {page_filters} ORDER BY {col} {dir}, key {dir} LIMIT {}",
            limit + 1
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(kind).bind(scope).bind(archived);
        for a in &args {
            query = query.bind(a.clone());
        }
        if let Some((sort_value, key)) = &cursor {
            query = match q.sort {
                SortOrder::Created | SortOrder::Updated => query.bind(sort_value.parse::<i64>().unwrap_or(0)),
                _ => query.bind(sort_value.clone()),
            };
            query = query.bind(key.clone());
        }
        let rows = query.fetch_all(&self.pool).await?;
        let mut items = rows.iter().map(|r| Row::from_sql(kind, r)).collect::<Result<Vec<_>>>()?;
        let more = items.len() > usize::try_from(limit).unwrap_or(usize::MAX);
        items.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let next_cursor = if more {
            items.last().map(|last| {
                let sort_value = match q.sort {
                    SortOrder::Key => last.key.clone(),
                    SortOrder::Name => last.name.clone(),
                    SortOrder::Created => last.created_at.to_string(),
                    SortOrder::Updated => last.updated_at.to_string(),
                };
                encode_cursor(&sort_value, &last.key)
            })
        } else {
            None
        };
        Ok(Page { items, next_cursor, total_count })
    }

    /// Changelog entries, newest first.
    pub async fn changelog(&self, q: &ChangelogQuery) -> Result<Page<ChangelogEntry>> {
        let limit = i64::from(q.limit.unwrap_or(50).clamp(1, 500));
        let mut f = Filters::default();
        if let Some(k) = &q.resource_kind {
            f.add("resource_kind = {}", [Arg::Text(k.clone())]);
        }
        if let Some(s) = &q.scope {
            f.add("(scope = {} OR scope LIKE {})", [Arg::Text(s.clone()), Arg::Text(format!("{}/%", escape_like(s)))]);
        }
        if let Some(k) = &q.resource_key {
            f.add("resource_key = {}", [Arg::Text(k.clone())]);
        }
        if let Some(a) = &q.actor {
            f.add("(actor_id = {} OR actor_name = {})", [Arg::Text(a.clone()), Arg::Text(a.clone())]);
        }
        if let Some(after) = q.after {
            f.add("ts >= {}", [Arg::Int(after)]);
        }
        if let Some(before) = q.before {
            f.add("ts < {}", [Arg::Int(before)]);
        }
        if let Some(text) = &q.text {
            f.add("search_text LIKE {}", [Arg::Text(format!("%{}%", escape_like(&text.to_lowercase())))]);
        }
        let Filters { clauses: filters, mut args } = f;
        let filters = if filters.is_empty() { vec!["1 = 1".to_owned()] } else { filters };
        let where_sql = filters.join(" AND ");
        let count_sql = format!("SELECT COUNT(*) FROM changelog WHERE {where_sql}");
        let mut count = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(count_sql));
        for a in &args {
            count = a.bind_scalar(count);
        }
        let total_count = count.fetch_one(&self.pool).await?;
        let mut page_where = where_sql;
        if let Some(cursor) = &q.cursor {
            let id: i64 = cursor.parse().map_err(|_| StoreError::invalid("cursor", "malformed cursor"))?;
            args.push(Arg::Int(id));
            page_where.push_str(&format!(" AND id < ${}", args.len()));
        }
        let sql = format!(
            "SELECT id, ts, actor_kind, actor_id, actor_name, resource_kind, scope, resource_key, action, comment, \
             before_json, after_json, diff_json FROM changelog WHERE {page_where} ORDER BY id DESC LIMIT {}",
            limit + 1
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for a in &args {
            query = a.bind(query);
        }
        let rows = query.fetch_all(&self.pool).await?;
        let mut items = rows.iter().map(changelog_from_sql).collect::<Result<Vec<_>>>()?;
        let more = items.len() > usize::try_from(limit).unwrap_or(usize::MAX);
        items.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let next_cursor = if more { items.last().map(|e| e.id.to_string()) } else { None };
        Ok(Page { items, next_cursor, total_count })
    }

    /// One changelog entry.
    pub async fn changelog_entry(&self, id: i64) -> Result<ChangelogEntry> {
        let row = sqlx::query(
            "SELECT id, ts, actor_kind, actor_id, actor_name, resource_kind, scope, resource_key, action, comment, \
             before_json, after_json, diff_json FROM changelog WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound { kind: "changelog entry", key: id.to_string() })?;
        changelog_from_sql(&row)
    }

    /// Records a change Pennant did not make itself (a deploy, a configuration change, …).
    pub async fn record_external_change(&self, actor: &Actor, change: &ExternalChange) -> Result<ChangelogEntry> {
        for (field, value) in [("kind", &change.kind), ("key", &change.key), ("action", &change.action)] {
            if value.trim().is_empty() {
                return Err(StoreError::invalid("change", format!("{field} must not be empty")));
            }
        }
        let mut tx = self.begin(actor).await?;
        let id = tx
            .record(
                &change.kind,
                &change.scope,
                &change.key,
                &change.action,
                &change.comment,
                None,
                change.details.clone(),
            )
            .await?;
        tx.commit().await?;
        self.changelog_entry(id).await
    }
}

/// A change made outside Pennant, recorded so that it shows in the same timeline as flag changes.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalChange {
    /// What changed: `deploy`, `config`, `instance-type`, `cost`, …
    pub kind: String,
    /// Where: a project key, `project/env`, or empty.
    #[serde(default)]
    pub scope: String,
    /// The thing that changed (a service name, a setting).
    pub key: String,
    /// What happened, e.g. `deployed v1.2.3`.
    pub action: String,
    /// Free text.
    #[serde(default)]
    pub comment: String,
    /// Any JSON details (versions, links).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
}

enum Arg {
    Text(String),
    Int(i64),
}

/// SQL conditions with numbered placeholders: each `{}` in a clause becomes the next `$n`.
#[derive(Default)]
struct Filters {
    clauses: Vec<String>,
    args: Vec<Arg>,
}

impl Filters {
    fn add<const N: usize>(&mut self, template: &str, args: [Arg; N]) {
        let mut clause = String::new();
        let mut parts = template.split("{}");
        if let Some(first) = parts.next() {
            clause.push_str(first);
        }
        for (part, arg) in parts.zip(args) {
            self.args.push(arg);
            clause.push_str(&format!("${}", self.args.len()));
            clause.push_str(part);
        }
        self.clauses.push(clause);
    }
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;
type AnyScalar<'q> = sqlx::query::QueryScalar<'q, sqlx::Any, i64, sqlx::any::AnyArguments>;

impl Arg {
    fn bind<'q>(&self, q: AnyQuery<'q>) -> AnyQuery<'q> {
        match self {
            Arg::Text(s) => q.bind(s.clone()),
            Arg::Int(i) => q.bind(*i),
        }
    }

    fn bind_scalar<'q>(&self, q: AnyScalar<'q>) -> AnyScalar<'q> {
        match self {
            Arg::Text(s) => q.bind(s.clone()),
            Arg::Int(i) => q.bind(*i),
        }
    }
}

/// Filters for the changelog; also the audit-log endpoint's query parameters (`text` is `?q=`).
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ChangelogQuery {
    /// `flag`, `segment`, `deploy`, …
    pub resource_kind: Option<String>,
    /// A project key, or `project/env`: entries in it and below.
    pub scope: Option<String>,
    /// Resource key.
    pub resource_key: Option<String>,
    /// Actor ID or name.
    pub actor: Option<String>,
    /// From (Unix ms, inclusive).
    pub after: Option<i64>,
    /// Until (Unix ms, exclusive).
    pub before: Option<i64>,
    /// Text in the comment, key, action or actor.
    #[serde(rename = "q")]
    #[param(rename = "q")]
    pub text: Option<String>,
    /// Page size (1–500, default 50).
    pub limit: Option<u32>,
    /// Cursor from the previous page.
    pub cursor: Option<String>,
}

fn changelog_from_sql(r: &AnyRow) -> Result<ChangelogEntry> {
    let parse = |s: Option<String>| -> Result<Option<Value>> {
        s.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(e.to_string()))).transpose()
    };
    let diff: String = r.try_get("diff_json")?;
    Ok(ChangelogEntry {
        id: r.try_get("id")?,
        date: r.try_get("ts")?,
        actor: Actor { kind: r.try_get("actor_kind")?, id: r.try_get("actor_id")?, name: r.try_get("actor_name")? },
        resource_kind: r.try_get("resource_kind")?,
        scope: r.try_get("scope")?,
        resource_key: r.try_get("resource_key")?,
        action: r.try_get("action")?,
        comment: r.try_get("comment")?,
        before: parse(r.try_get("before_json")?)?,
        after: parse(r.try_get("after_json")?)?,
        diff: serde_json::from_str(&diff).map_err(|e| StoreError::Corrupt(e.to_string()))?,
    })
}

pub(crate) fn path(scope: &str, key: &str) -> String {
    if scope.is_empty() { key.to_owned() } else { format!("{scope}/{key}") }
}

fn escape_like(s: &str) -> String {
    // LIKE wildcards in user text match literally only via ESCAPE; keep it simple by dropping them.
    s.replace(['%', '_'], "")
}

fn encode_cursor(sort_value: &str, key: &str) -> String {
    hex::encode(serde_json::json!([sort_value, key]).to_string())
}

fn decode_cursor(cursor: &str) -> Result<(String, String)> {
    let bad = || StoreError::invalid("cursor", "malformed cursor");
    let bytes = hex::decode(cursor).map_err(|_| bad())?;
    serde_json::from_slice::<(String, String)>(&bytes).map_err(|_| bad())
}

impl Tx {
    pub(crate) async fn get(&mut self, kind: &'static str, scope: &str, key: &str) -> Result<Option<Row>> {
        let sql = format!("SELECT {ROW_COLUMNS} FROM resources WHERE kind = $1 AND scope = $2 AND key = $3");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(kind)
            .bind(scope)
            .bind(key)
            .fetch_optional(&mut *self.tx)
            .await?;
        row.map(|r| Row::from_sql(kind, &r)).transpose()
    }

    pub(crate) async fn require(&mut self, kind: &'static str, scope: &str, key: &str) -> Result<Row> {
        self.get(kind, scope, key).await?.ok_or_else(|| StoreError::NotFound { kind, key: path(scope, key) })
    }

    pub(crate) async fn all(&mut self, kind: &'static str, scope: &str) -> Result<Vec<Row>> {
        let sql = format!("SELECT {ROW_COLUMNS} FROM resources WHERE kind = $1 AND scope = $2 ORDER BY key");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(kind).bind(scope).fetch_all(&mut *self.tx).await?;
        rows.iter().map(|r| Row::from_sql(kind, r)).collect()
    }

    /// Inserts a new row at version 1.
    pub(crate) async fn insert(&mut self, row: &mut Row) -> Result<()> {
        if self.get(row.kind, &row.scope, &row.key).await?.is_some() {
            return Err(StoreError::AlreadyExists { kind: row.kind, key: path(&row.scope, &row.key) });
        }
        row.version = 1;
        row.created_at = self.now;
        row.updated_at = self.now;
        sqlx::query(
            "INSERT INTO resources (kind, scope, key, version, name, tags, archived, data, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(row.kind)
        .bind(row.scope.clone())
        .bind(row.key.clone())
        .bind(1_i64)
        .bind(row.name.clone())
        .bind(tags_column(&row.tags))
        .bind(i64::from(row.archived))
        .bind(row.data.to_string())
        .bind(self.now)
        .bind(self.now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Writes `row` over the stored version `row.version`, raising it by one; a concurrent writer makes it a
    /// conflict.
    pub(crate) async fn update(&mut self, row: &mut Row) -> Result<()> {
        let result = sqlx::query(
            "UPDATE resources SET version = version + 1, name = $1, tags = $2, archived = $3, data = $4, \
             updated_at = $5 WHERE kind = $6 AND scope = $7 AND key = $8 AND version = $9",
        )
        .bind(row.name.clone())
        .bind(tags_column(&row.tags))
        .bind(i64::from(row.archived))
        .bind(row.data.to_string())
        .bind(self.now)
        .bind(row.kind)
        .bind(row.scope.clone())
        .bind(row.key.clone())
        .bind(to_i64(row.version))
        .execute(&mut *self.tx)
        .await?;
        if result.rows_affected() != 1 {
            let actual = self.get(row.kind, &row.scope, &row.key).await?.map_or(0, |r| r.version);
            return Err(StoreError::Conflict {
                kind: row.kind,
                key: path(&row.scope, &row.key),
                expected: row.version,
                actual,
            });
        }
        row.version += 1;
        row.updated_at = self.now;
        Ok(())
    }

    pub(crate) async fn delete(&mut self, kind: &'static str, scope: &str, key: &str) -> Result<()> {
        sqlx::query("DELETE FROM resources WHERE kind = $1 AND scope = $2 AND key = $3")
            .bind(kind)
            .bind(scope.to_owned())
            .bind(key.to_owned())
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Deletes every row whose scope is `scope` or below it.
    pub(crate) async fn delete_scope(&mut self, scope: &str) -> Result<()> {
        sqlx::query("DELETE FROM resources WHERE scope = $1 OR scope LIKE $2")
            .bind(scope.to_owned())
            .bind(format!("{}/%", escape_like(scope)))
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Appends a changelog entry with the JSON Patch from `before` to `after`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn record(
        &mut self,
        kind: &str,
        scope: &str,
        key: &str,
        action: &str,
        comment: &str,
        before: Option<Value>,
        after: Option<Value>,
    ) -> Result<i64> {
        let diff = json_patch::diff(before.as_ref().unwrap_or(&Value::Null), after.as_ref().unwrap_or(&Value::Null));
        let diff = serde_json::to_string(&diff).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let search_text =
            format!("{kind} {scope} {key} {action} {comment} {} {}", self.actor.id, self.actor.name).to_lowercase();
        self.order_ids().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO changelog (ts, actor_kind, actor_id, actor_name, resource_kind, scope, resource_key, action, \
             comment, before_json, after_json, diff_json, search_text) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
        )
        .bind(self.now)
        .bind(self.actor.kind.clone())
        .bind(self.actor.id.clone())
        .bind(self.actor.name.clone())
        .bind(kind.to_owned())
        .bind(scope.to_owned())
        .bind(key.to_owned())
        .bind(action.to_owned())
        .bind(comment.to_owned())
        .bind(before.map(|v| v.to_string()))
        .bind(after.map(|v| v.to_string()))
        .bind(diff)
        .bind(search_text)
        .fetch_one(&mut *self.tx)
        .await?;
        self.last.changelog_id = self.last.changelog_id.max(id);
        Ok(id)
    }

    /// Tells the streaming service that an environment's flag or segment changed.
    pub(crate) async fn outbox(&mut self, project: &str, env: &str, kind: &str, key: &str, version: u64) -> Result<()> {
        self.order_ids().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO outbox (project_key, env_key, kind, key, version, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
             RETURNING id",
        )
        .bind(project.to_owned())
        .bind(env.to_owned())
        .bind(kind.to_owned())
        .bind(key.to_owned())
        .bind(to_i64(version))
        .bind(self.now)
        .fetch_one(&mut *self.tx)
        .await?;
        self.last.outbox_id = self.last.outbox_id.max(id);
        Ok(())
    }
}

/// Builds a row for a new resource.
pub(crate) fn new_row<T: Serialize>(
    kind: &'static str,
    scope: &str,
    key: &str,
    name: &str,
    tags: &[String],
    data: &T,
) -> Result<Row> {
    Ok(Row {
        kind,
        scope: scope.to_owned(),
        key: key.to_owned(),
        version: 0,
        name: name.to_owned(),
        tags: tags.to_vec(),
        archived: false,
        data: serde_json::to_value(data).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        created_at: 0,
        updated_at: 0,
    })
}

/// The outbox rows after a given ID, oldest first (for the streaming service's catch-up).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboxRow {
    /// ID, monotonic.
    pub id: i64,
    /// Project.
    pub project_key: String,
    /// Environment.
    pub env_key: String,
    /// `flag` or `segment`.
    pub kind: String,
    /// The key.
    pub key: String,
    /// The version written.
    pub version: u64,
}

/// Names one state of an environment's SDK data: equal versions mean equal payloads, so nodes can share a
/// payload built by any of them (see `pennant-stream`'s payload cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnvDataVersion {
    /// When the environment was created (a deleted and re-created environment starts a new series).
    pub env_created_at: i64,
    /// The environment's newest outbox row (0: none yet). Every write that changes the payload adds one.
    pub outbox_id: i64,
}

impl std::fmt::Display for EnvDataVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.env_created_at, self.outbox_id)
    }
}

impl Store {
    /// The current data version of an environment (one indexed lookup). Read it *before* the data: data read
    /// after it is at least that new, so a payload cached under a version is never older than the version says.
    pub async fn env_data_version(&self, project: &str, env: &str) -> Result<EnvDataVersion> {
        let row = sqlx::query(
            "SELECT r.created_at, CAST(COALESCE((SELECT MAX(o.id) FROM outbox o WHERE o.project_key = $2 AND \
             o.env_key = $3), 0) AS BIGINT) AS outbox_id FROM resources r WHERE r.kind = $1 AND r.scope = $2 AND \
             r.key = $3",
        )
        .bind(crate::environments::KIND)
        .bind(project.to_owned())
        .bind(env.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        let row =
            row.ok_or_else(|| StoreError::NotFound { kind: crate::environments::KIND, key: path(project, env) })?;
        Ok(EnvDataVersion { env_created_at: row.try_get(0)?, outbox_id: row.try_get(1)? })
    }

    /// Outbox rows with ID greater than `after`, oldest first, at most `limit`.
    pub async fn outbox_after(&self, after: i64, limit: u32) -> Result<Vec<OutboxRow>> {
        let rows = sqlx::query(
            "SELECT id, project_key, env_key, kind, key, version FROM outbox WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OutboxRow {
                    id: r.try_get("id")?,
                    project_key: r.try_get("project_key")?,
                    env_key: r.try_get("env_key")?,
                    kind: r.try_get("kind")?,
                    key: r.try_get("key")?,
                    version: u64::try_from(r.try_get::<i64, _>("version")?).unwrap_or(0),
                })
            })
            .collect()
    }
}
