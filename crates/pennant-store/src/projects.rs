//! Projects.

use crate::db::Store;
use crate::error::{Result, StoreError};
use crate::model::{Actor, ContextKind, Project, Record};
use crate::resources::{ListQuery, Page, new_row};

pub(crate) const KIND: &str = "project";
pub(crate) const CONTEXT_KIND: &str = "context_kind";

pub(crate) fn check_key(kind: &'static str, key: &str) -> Result<()> {
    if pennant_eval::is_valid_key(key) {
        Ok(())
    } else {
        Err(StoreError::invalid(kind, format!("key {key:?} must be 1 to 256 letters, digits, '.', '_' or '-'")))
    }
}

impl Store {
    /// Creates a project.
    pub async fn create_project(&self, actor: &Actor, project: Project, comment: &str) -> Result<Record<Project>> {
        check_key(KIND, &project.key)?;
        let mut tx = self.begin(actor).await?;
        let mut row = new_row(KIND, "", &project.key, &project.name, &project.tags, &project)?;
        tx.insert(&mut row).await?;
        tx.record(KIND, "", &project.key, "create", comment, None, Some(row.data.clone())).await?;
        tx.commit().await?;
        row.decode()
    }

    /// A project.
    pub async fn get_project(&self, key: &str) -> Result<Record<Project>> {
        self.require_row(KIND, "", key).await?.decode()
    }

    /// Projects, filtered and paged.
    pub async fn list_projects(&self, q: &ListQuery) -> Result<Page<Record<Project>>> {
        let page = self.list_rows(KIND, "", q).await?;
        page.decode()
    }

    /// Changes a project's name or tags (the key is fixed).
    pub async fn update_project(
        &self,
        actor: &Actor,
        key: &str,
        expected_version: Option<u64>,
        comment: &str,
        change: impl FnOnce(&mut Project) -> Result<()>,
    ) -> Result<Record<Project>> {
        let mut tx = self.begin(actor).await?;
        let mut row = tx.require(KIND, "", key).await?;
        check_version(KIND, key, expected_version, row.version)?;
        let before = row.data.clone();
        let mut project: Project = row.decode::<Project>()?.data;
        change(&mut project)?;
        if project.key != key {
            return Err(StoreError::invalid(KIND, "the key of a project cannot change"));
        }
        row.name = project.name.clone();
        row.tags = project.tags.clone();
        row.data = to_value(&project)?;
        tx.update(&mut row).await?;
        tx.record(KIND, "", key, "update", comment, Some(before), Some(row.data.clone())).await?;
        tx.commit().await?;
        row.decode()
    }

    /// Deletes a project with everything in it.
    pub async fn delete_project(&self, actor: &Actor, key: &str, comment: &str) -> Result<()> {
        let mut tx = self.begin(actor).await?;
        let row = tx.require(KIND, "", key).await?;
        for env in tx.all(crate::environments::KIND, key).await? {
            crate::environments::delete_credentials(&mut tx, key, &env.key).await?;
        }
        tx.delete_scope(key).await?;
        tx.delete(KIND, "", key).await?;
        tx.record(KIND, "", key, "delete", comment, Some(row.data), None).await?;
        tx.commit().await
    }

    /// Creates or replaces a context kind of a project.
    pub async fn put_context_kind(
        &self,
        actor: &Actor,
        project: &str,
        kind: ContextKind,
        comment: &str,
    ) -> Result<Record<ContextKind>> {
        check_key(CONTEXT_KIND, &kind.key)?;
        if kind.key == "kind" || kind.key == "multi" {
            return Err(StoreError::invalid(CONTEXT_KIND, format!("{:?} is reserved", kind.key)));
        }
        let mut tx = self.begin(actor).await?;
        tx.require(KIND, "", project).await?;
        let data = to_value(&kind)?;
        let mut row = match tx.get(CONTEXT_KIND, project, &kind.key).await? {
            Some(mut row) => {
                let before = row.data.clone();
                row.name = kind.name.clone();
                row.data = data;
                tx.update(&mut row).await?;
                tx.record(CONTEXT_KIND, project, &kind.key, "update", comment, Some(before), Some(row.data.clone()))
                    .await?;
                row
            }
            None => {
                let mut row = new_row(CONTEXT_KIND, project, &kind.key, &kind.name, &[], &kind)?;
                tx.insert(&mut row).await?;
                tx.record(CONTEXT_KIND, project, &kind.key, "create", comment, None, Some(row.data.clone())).await?;
                row
            }
        };
        tx.commit().await?;
        row.archived = false;
        row.decode()
    }

    /// A project's context kinds (`user` is always there).
    pub async fn list_context_kinds(&self, project: &str) -> Result<Vec<Record<ContextKind>>> {
        self.require_row(KIND, "", project).await?;
        let mut kinds: Vec<Record<ContextKind>> =
            self.all_rows(CONTEXT_KIND, project).await?.iter().map(|r| r.decode()).collect::<Result<_>>()?;
        if !kinds.iter().any(|k| k.data.key == "user") {
            kinds.insert(
                0,
                Record {
                    data: ContextKind { key: "user".into(), name: "user".into(), description: String::new() },
                    version: 0,
                    created_at: 0,
                    updated_at: 0,
                    archived: false,
                },
            );
        }
        Ok(kinds)
    }
}

pub(crate) fn check_version(kind: &'static str, key: &str, expected: Option<u64>, actual: u64) -> Result<()> {
    match expected {
        Some(expected) if expected != actual => {
            Err(StoreError::Conflict { kind, key: key.to_owned(), expected, actual })
        }
        _ => Ok(()),
    }
}

pub(crate) fn to_value<T: serde::Serialize>(v: &T) -> Result<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}
