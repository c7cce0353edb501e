//! Flags: one document per flag with its configuration in every environment.

use pennant_eval::{MemoryStore, Segment, validate_flag};

use crate::db::{Store, Tx};
use crate::error::{Result, StoreError};
use crate::model::{Actor, FlagDoc, Record, SegmentDoc};
use crate::projects::{check_key, check_version, to_value};
use crate::resources::{ListQuery, Page, Row, new_row};

pub(crate) const KIND: &str = "flag";

impl Store {
    /// Creates a flag. Environments it does not configure get the default configuration (off, serving the off
    /// variation).
    pub async fn create_flag(
        &self,
        actor: &Actor,
        project: &str,
        mut doc: FlagDoc,
        comment: &str,
    ) -> Result<Record<FlagDoc>> {
        check_key(KIND, &doc.key)?;
        let mut tx = self.begin(actor).await?;
        tx.require(crate::projects::KIND, "", project).await?;
        let envs = tx.all(crate::environments::KIND, project).await?;
        if let Some(unknown) = doc.environments.keys().find(|k| !envs.iter().any(|e| &e.key == *k)) {
            return Err(StoreError::invalid(KIND, format!("unknown environment {unknown:?}")));
        }
        for env in &envs {
            if !doc.environments.contains_key(&env.key) {
                let config = doc.default_env_config(crate::random_secret(""));
                doc.environments.insert(env.key.clone(), config);
            }
        }
        for config in doc.environments.values_mut() {
            if config.salt.is_empty() {
                config.salt = crate::random_secret("");
            }
        }
        let mut row = new_row(KIND, project, &doc.key, &doc.name, &doc.tags, &doc)?;
        tx.insert(&mut row).await?;
        validate_in_every_env(&mut tx, project, &doc, row.version).await?;
        tx.record(KIND, project, &doc.key, "create", comment, None, Some(row.data.clone())).await?;
        for env in &envs {
            tx.outbox(project, &env.key, KIND, &doc.key, row.version).await?;
        }
        tx.commit().await?;
        row.decode()
    }

    /// A flag.
    pub async fn get_flag(&self, project: &str, key: &str) -> Result<Record<FlagDoc>> {
        self.require_row(KIND, project, key).await?.decode()
    }

    /// A project's flags, filtered and paged.
    pub async fn list_flags(&self, project: &str, q: &ListQuery) -> Result<Page<Record<FlagDoc>>> {
        self.require_row(crate::projects::KIND, "", project).await?;
        let page = self.list_rows(KIND, project, q).await?;
        page.decode()
    }

    /// Changes a flag (and, with `archived`, archives or restores it) in one versioned, validated, audited
    /// write. Environments whose SDK view of the flag changed get an outbox row.
    pub async fn update_flag(
        &self,
        actor: &Actor,
        project: &str,
        key: &str,
        expected_version: Option<u64>,
        comment: &str,
        change: impl FnOnce(&mut FlagDoc, &mut bool) -> Result<()>,
    ) -> Result<Record<FlagDoc>> {
        let mut tx = self.begin(actor).await?;
        let mut row = tx.require(KIND, project, key).await?;
        check_version(KIND, key, expected_version, row.version)?;
        let before_row = row.clone();
        let before: FlagDoc = row.decode::<FlagDoc>()?.data;
        let mut doc = before.clone();
        let mut archived = row.archived;
        change(&mut doc, &mut archived)?;
        if doc.key != key {
            return Err(StoreError::invalid(KIND, "the key of a flag cannot change"));
        }
        let envs = tx.all(crate::environments::KIND, project).await?;
        if let Some(unknown) = doc.environments.keys().find(|k| !envs.iter().any(|e| &e.key == *k)) {
            return Err(StoreError::invalid(KIND, format!("unknown environment {unknown:?}")));
        }
        for config in doc.environments.values_mut() {
            if config.salt.is_empty() {
                config.salt = crate::random_secret("");
            }
        }
        row.name = doc.name.clone();
        row.tags = doc.tags.clone();
        row.archived = archived;
        row.data = to_value(&doc)?;
        if row.data == before_row.data && row.archived == before_row.archived {
            // Nothing changed: no new version, no changelog entry.
            return before_row.decode();
        }
        tx.update(&mut row).await?;
        validate_in_every_env(&mut tx, project, &doc, row.version).await?;
        let action = match (before_row.archived, archived) {
            (false, true) => "archive",
            (true, false) => "restore",
            _ => "update",
        };
        tx.record(KIND, project, key, action, comment, Some(before_row.data.clone()), Some(row.data.clone())).await?;
        for env in &envs {
            let old = before.render(&env.key, 0).map(|f| to_value(&f)).transpose()?;
            let new = doc.render(&env.key, 0).map(|f| to_value(&f)).transpose()?;
            if old != new {
                tx.outbox(project, &env.key, KIND, key, row.version).await?;
            }
        }
        tx.commit().await?;
        row.decode()
    }

    /// Deletes a flag. Refused while another flag has it as a prerequisite.
    pub async fn delete_flag(&self, actor: &Actor, project: &str, key: &str, comment: &str) -> Result<()> {
        let mut tx = self.begin(actor).await?;
        let row = tx.require(KIND, project, key).await?;
        for other in tx.all(KIND, project).await? {
            let doc: FlagDoc = other.decode::<FlagDoc>()?.data;
            if doc.environments.values().any(|c| c.prerequisites.iter().any(|p| p.key == key)) {
                return Err(StoreError::invalid(KIND, format!("flag {:?} has {key:?} as a prerequisite", doc.key)));
            }
        }
        tx.delete(KIND, project, key).await?;
        tx.record(KIND, project, key, "delete", comment, Some(row.data.clone()), None).await?;
        for env in tx.all(crate::environments::KIND, project).await? {
            // The version after the last one, for the SDKs' tombstone.
            tx.outbox(project, &env.key, KIND, key, row.version + 1).await?;
        }
        tx.commit().await
    }

    /// Everything an SDK gets for an environment: every flag rendered for it and every segment.
    pub async fn sdk_payload(&self, project: &str, env: &str) -> Result<MemoryStore> {
        self.require_row(crate::environments::KIND, project, env).await?;
        let flags = self.all_rows(KIND, project).await?;
        let segments = self.all_rows(crate::segments::KIND, &format!("{project}/{env}")).await?;
        payload(project, env, &flags, &segments, None)
    }
}

/// Builds an environment's SDK data from rows, optionally with one flag document in place of its stored version.
pub(crate) fn payload(
    _project: &str,
    env: &str,
    flags: &[Row],
    segments: &[Row],
    replace: Option<(&FlagDoc, u64)>,
) -> Result<MemoryStore> {
    let mut store = MemoryStore::default();
    for row in flags {
        if replace.is_some_and(|(d, _)| d.key == row.key) {
            continue;
        }
        let doc: FlagDoc = row.decode::<FlagDoc>()?.data;
        if let Some(flag) = doc.render(env, row.version) {
            store.insert_flag(flag);
        }
    }
    if let Some((doc, version)) = replace
        && let Some(flag) = doc.render(env, version)
    {
        store.insert_flag(flag);
    }
    for row in segments {
        let mut segment: Segment = row.decode::<SegmentDoc>()?.data.segment;
        segment.version = row.version;
        store.insert_segment(segment);
    }
    Ok(store)
}

/// Refuses a flag that would evaluate as malformed in any environment.
async fn validate_in_every_env(tx: &mut Tx, project: &str, doc: &FlagDoc, version: u64) -> Result<()> {
    let flags = tx.all(KIND, project).await?;
    let mut issues = Vec::new();
    for env in tx.all(crate::environments::KIND, project).await? {
        let segments = tx.all(crate::segments::KIND, &format!("{project}/{}", env.key)).await?;
        let store = payload(project, &env.key, &flags, &segments, Some((doc, version)))?;
        let Some(flag) = doc.render(&env.key, version) else { continue };
        issues.extend(
            validate_flag(&flag, &store)
                .into_iter()
                .map(|i| format!("environments/{}{}: {}", env.key, i.path, i.message)),
        );
    }
    if doc.variations.is_empty() {
        issues.push("variations: a flag needs at least one variation".into());
    }
    if issues.is_empty() { Ok(()) } else { Err(StoreError::Invalid { kind: KIND, issues }) }
}
