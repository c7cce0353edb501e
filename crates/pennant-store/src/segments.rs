//! Segments, one set per environment.

use pennant_eval::validate_segment;

use crate::db::{Store, Tx};
use crate::error::{Result, StoreError};
use crate::flags::payload;
use crate::model::{Actor, Record, SegmentDoc};
use crate::projects::{check_key, check_version, to_value};
use crate::resources::{ListQuery, Page, new_row};

pub(crate) const KIND: &str = "segment";

impl Store {
    /// Creates a segment in an environment.
    pub async fn create_segment(
        &self,
        actor: &Actor,
        project: &str,
        env: &str,
        mut doc: SegmentDoc,
        comment: &str,
    ) -> Result<Record<SegmentDoc>> {
        check_key(KIND, &doc.segment.key)?;
        let scope = format!("{project}/{env}");
        let mut tx = self.begin(actor).await?;
        tx.require(crate::environments::KIND, project, env).await?;
        if doc.segment.salt.is_empty() {
            doc.segment.salt = crate::random_secret("");
        }
        doc.segment.deleted = false;
        let key = doc.segment.key.clone();
        let mut row = new_row(KIND, &scope, &key, &doc.name, &doc.tags, &doc)?;
        tx.insert(&mut row).await?;
        doc.segment.version = row.version;
        row.data = to_value(&doc)?;
        validate(&mut tx, project, env, &doc).await?;
        tx.record(KIND, &scope, &key, "create", comment, None, Some(row.data.clone())).await?;
        tx.outbox(project, env, KIND, &key, row.version).await?;
        tx.commit().await?;
        row.decode()
    }

    /// A segment.
    pub async fn get_segment(&self, project: &str, env: &str, key: &str) -> Result<Record<SegmentDoc>> {
        with_version(self.require_row(KIND, &format!("{project}/{env}"), key).await?.decode()?)
    }

    /// An environment's segments.
    pub async fn list_segments(&self, project: &str, env: &str, q: &ListQuery) -> Result<Page<Record<SegmentDoc>>> {
        self.require_row(crate::environments::KIND, project, env).await?;
        let page = self.list_rows(KIND, &format!("{project}/{env}"), q).await?;
        Ok(Page {
            items: page.items.iter().map(|r| with_version(r.decode()?)).collect::<Result<_>>()?,
            next_cursor: page.next_cursor,
            total_count: page.total_count,
        })
    }

    /// Changes a segment in one versioned, validated, audited write.
    #[allow(clippy::too_many_arguments)]
    pub async fn update_segment(
        &self,
        actor: &Actor,
        project: &str,
        env: &str,
        key: &str,
        expected_version: Option<u64>,
        comment: &str,
        change: impl FnOnce(&mut SegmentDoc) -> Result<()>,
    ) -> Result<Record<SegmentDoc>> {
        let scope = format!("{project}/{env}");
        let mut tx = self.begin(actor).await?;
        let mut row = tx.require(KIND, &scope, key).await?;
        check_version(KIND, key, expected_version, row.version)?;
        let before = row.data.clone();
        let mut doc: SegmentDoc = row.decode::<SegmentDoc>()?.data;
        change(&mut doc)?;
        if doc.segment.key != key {
            return Err(StoreError::invalid(KIND, "the key of a segment cannot change"));
        }
        // Compared at the stored version, so that a change that changes nothing writes nothing.
        doc.segment.version = row.version;
        if to_value(&doc)? == before {
            return with_version(row.decode()?);
        }
        doc.segment.version = row.version + 1;
        doc.segment.reindex();
        row.name = doc.name.clone();
        row.tags = doc.tags.clone();
        row.data = to_value(&doc)?;
        tx.update(&mut row).await?;
        validate(&mut tx, project, env, &doc).await?;
        tx.record(KIND, &scope, key, "update", comment, Some(before), Some(row.data.clone())).await?;
        tx.outbox(project, env, KIND, key, row.version).await?;
        tx.commit().await?;
        with_version(row.decode()?)
    }

    /// Deletes a segment. Refused while a flag or another segment uses it.
    pub async fn delete_segment(
        &self,
        actor: &Actor,
        project: &str,
        env: &str,
        key: &str,
        comment: &str,
    ) -> Result<()> {
        let scope = format!("{project}/{env}");
        let mut tx = self.begin(actor).await?;
        let row = tx.require(KIND, &scope, key).await?;
        let segments = tx.all(KIND, &scope).await?;
        let flags = tx.all(crate::flags::KIND, project).await?;
        let data = payload(project, env, &flags, &segments, None)?;
        let uses = |clauses: &[pennant_eval::Clause]| {
            clauses.iter().any(|c| {
                c.op == pennant_eval::Operator::SegmentMatch && c.values.iter().any(|v| v.as_str() == Some(key))
            })
        };
        if let Some(f) = data.flags().find(|f| f.rules.iter().any(|r| uses(&r.clauses))) {
            return Err(StoreError::invalid(KIND, format!("flag {:?} uses segment {key:?}", f.key)));
        }
        if let Some(s) = data.segments().find(|s| s.key != key && s.rules.iter().any(|r| uses(&r.clauses))) {
            return Err(StoreError::invalid(KIND, format!("segment {:?} uses segment {key:?}", s.key)));
        }
        tx.delete(KIND, &scope, key).await?;
        tx.record(KIND, &scope, key, "delete", comment, Some(row.data), None).await?;
        tx.outbox(project, env, KIND, key, row.version + 1).await?;
        tx.commit().await
    }
}

fn with_version(mut record: Record<SegmentDoc>) -> Result<Record<SegmentDoc>> {
    record.data.segment.version = record.version;
    Ok(record)
}

async fn validate(tx: &mut Tx, project: &str, env: &str, doc: &SegmentDoc) -> Result<()> {
    let segments = tx.all(KIND, &format!("{project}/{env}")).await?;
    let flags = tx.all(crate::flags::KIND, project).await?;
    let mut store = payload(project, env, &flags, &segments, None)?;
    store.insert_segment(doc.segment.clone());
    let issues = validate_segment(&doc.segment, &store);
    if issues.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Invalid { kind: KIND, issues: issues.iter().map(ToString::to_string).collect() })
    }
}
