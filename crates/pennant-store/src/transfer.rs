//! Moving projects between Pennant installations (export and import), and bringing in LaunchDarkly's
//! server-side SDK payload.
//!
//! Every import runs in one write transaction: it writes everything (with changelog entries and outbox rows),
//! validates every imported flag and segment against the data as it would be, and then commits — or, when
//! anything is wrong or it is a dry run, rolls everything back. The report says what was (or would be) done.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use pennant_eval::{Store as _, validate_flag, validate_segment};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::db::{Store, Tx};
use crate::error::{Result, StoreError};
use crate::flags::payload;
use crate::model::{Actor, ContextKind, Environment, FlagDoc, FlagEnvConfig, Project, SegmentDoc, Variation};
use crate::projects::to_value;
use crate::resources::{Row, new_row};

const PROJECT: &str = crate::projects::KIND;
const CONTEXT_KIND: &str = crate::projects::CONTEXT_KIND;
const ENVIRONMENT: &str = crate::environments::KIND;
const FLAG: &str = crate::flags::KIND;
const SEGMENT: &str = crate::segments::KIND;

/// The `format` of a Pennant export file.
pub const EXPORT_FORMAT: &str = "pennant-export";
/// The export format version this build writes and reads.
pub const EXPORT_VERSION: u32 = 1;

/// A whole project as a portable document: its environments (without credentials), context kinds, flags with
/// their configuration in every environment, and every environment's segments.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectExport {
    /// Always `pennant-export`.
    pub format: String,
    /// Format version, 1.
    pub version: u32,
    /// When the export was made (Unix ms).
    #[serde(default)]
    pub exported_at: i64,
    /// The project.
    pub project: Project,
    /// Its environments. SDK keys, mobile keys and client-side IDs are never exported; imports make new ones.
    #[serde(default)]
    pub environments: Vec<EnvironmentExport>,
    /// Its context kinds (the implicit `user` kind is left out unless it was defined explicitly).
    #[serde(default)]
    pub context_kinds: Vec<ContextKind>,
    /// Its flags.
    #[serde(default)]
    pub flags: Vec<FlagExport>,
    /// Segments by environment key.
    #[serde(default)]
    pub segments: BTreeMap<String, Vec<SegmentDoc>>,
}

/// An environment without its credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvironmentExport {
    /// Key within the project.
    pub key: String,
    /// Display name.
    pub name: String,
    /// Dashboard colour.
    #[serde(default = "crate::model::default_color")]
    pub color: String,
    /// Secure mode for client-side SDKs.
    #[serde(default)]
    pub secure_mode: bool,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

impl From<Environment> for EnvironmentExport {
    fn from(env: Environment) -> EnvironmentExport {
        EnvironmentExport {
            key: env.key,
            name: env.name,
            color: env.color,
            secure_mode: env.secure_mode,
            tags: env.tags,
        }
    }
}

/// A flag document and whether it is archived. Serialises as the flag's fields plus `archived`.
#[derive(Debug, Clone)]
pub struct FlagExport {
    /// The flag, with its configuration per environment.
    pub flag: FlagDoc,
    /// Archived.
    pub archived: bool,
}

impl Serialize for FlagExport {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Out<'a> {
            #[serde(flatten)]
            flag: &'a FlagDoc,
            archived: bool,
        }
        Out { flag: &self.flag, archived: self.archived }.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for FlagExport {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<FlagExport, D::Error> {
        use serde::de::Error as _;
        let mut map = serde_json::Map::<String, Value>::deserialize(deserializer)?;
        let archived = match map.remove("archived") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => b,
            Some(_) => return Err(D::Error::custom("archived must be true or false")),
        };
        let key = map.get("key").and_then(Value::as_str).unwrap_or_default().to_owned();
        let flag =
            FlagDoc::deserialize(Value::Object(map)).map_err(|e| D::Error::custom(format!("flag {key:?}: {e}")))?;
        Ok(FlagExport { flag, archived })
    }
}

impl ProjectExport {
    /// Reads an export file, checking its format and version first so that other files get a clear error.
    pub fn from_json(bytes: &[u8]) -> Result<ProjectExport> {
        #[derive(Deserialize)]
        struct Header {
            format: Option<Value>,
            version: Option<Value>,
        }
        let bad = |message: String| StoreError::Invalid { kind: "export", issues: vec![message] };
        let header: Header = serde_json::from_slice(bytes).map_err(|e| bad(format!("not a JSON object: {e}")))?;
        if header.format.as_ref().and_then(Value::as_str) != Some(EXPORT_FORMAT) {
            return Err(bad(format!("not a Pennant export (expected \"format\": \"{EXPORT_FORMAT}\")")));
        }
        match header.version.as_ref().and_then(Value::as_u64) {
            Some(v) if v == u64::from(EXPORT_VERSION) => {}
            Some(v) => return Err(bad(format!("export format version {v} is not supported (this build reads 1)"))),
            None => return Err(bad("the export has no format version".into())),
        }
        serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))
    }

    fn check_header(&self) -> Result<()> {
        if self.format != EXPORT_FORMAT || self.version != EXPORT_VERSION {
            return Err(StoreError::invalid(
                "export",
                format!(
                    "format {:?} version {} is not supported (expected {EXPORT_FORMAT:?} version {EXPORT_VERSION})",
                    self.format, self.version
                ),
            ));
        }
        Ok(())
    }
}

/// How to import.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportOptions {
    /// Do everything, report it, and roll it all back.
    #[serde(default)]
    pub dry_run: bool,
    /// Project imports: update a project that exists (its resources' versions go up; resources it has that the
    /// export does not are kept). Without it, an existing project key is refused. LaunchDarkly payload imports
    /// always replace the environment's configuration of the flags and segments they carry.
    #[serde(default)]
    pub replace: bool,
}

/// What an import did to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ImportAction {
    /// Created.
    Create,
    /// Updated (new version).
    Update,
    /// Already as imported.
    Unchanged,
}

/// Counts of one kind of resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportCounts {
    /// Created.
    pub created: u64,
    /// Updated.
    pub updated: u64,
    /// Already as imported.
    pub unchanged: u64,
}

impl ImportCounts {
    fn add(&mut self, action: ImportAction) {
        match action {
            ImportAction::Create => self.created += 1,
            ImportAction::Update => self.updated += 1,
            ImportAction::Unchanged => self.unchanged += 1,
        }
    }
}

/// One resource created or updated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportChange {
    /// `project`, `environment`, `context kind`, `flag` or `segment`.
    pub kind: String,
    /// Its path: `proj`, `proj/env`, `proj/flag`, `proj/env/segment`.
    pub path: String,
    /// Created or updated.
    pub action: ImportAction,
}

/// What an import did, or would do, or why it was refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportReport {
    /// The project imported into.
    pub project: String,
    /// For LaunchDarkly payload imports, the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// A dry run: nothing was written.
    pub dry_run: bool,
    /// The changes were committed.
    pub applied: bool,
    /// Projects.
    pub projects: ImportCounts,
    /// Environments.
    pub environments: ImportCounts,
    /// Context kinds.
    pub context_kinds: ImportCounts,
    /// Flags.
    pub flags: ImportCounts,
    /// Segments.
    pub segments: ImportCounts,
    /// Every resource created or updated, in the order written.
    pub changes: Vec<ImportChange>,
    /// Items left out on purpose (LaunchDarkly tombstones).
    #[serde(default)]
    pub skipped: Vec<String>,
    /// Things imported with a caveat.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Why the import was refused; when there are any, nothing was written.
    pub problems: Vec<String>,
}

impl ImportReport {
    /// The import was refused because of problems.
    pub fn refused(&self) -> bool {
        !self.problems.is_empty()
    }

    fn counts(&mut self, kind: &str) -> &mut ImportCounts {
        match kind {
            PROJECT => &mut self.projects,
            ENVIRONMENT => &mut self.environments,
            CONTEXT_KIND => &mut self.context_kinds,
            FLAG => &mut self.flags,
            _ => &mut self.segments,
        }
    }
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = match &self.environment {
            Some(env) => format!("environment {}/{env}", self.project),
            None => format!("project {}", self.project),
        };
        if self.refused() {
            writeln!(f, "Import into {target} refused; nothing was written.")?;
        } else if self.applied {
            writeln!(f, "Imported into {target}.")?;
        } else {
            writeln!(f, "Dry run of the import into {target}; nothing was written.")?;
        }
        let would = !self.applied;
        for change in &self.changes {
            let verb = match (change.action, would) {
                (ImportAction::Create, false) => "created",
                (ImportAction::Create, true) => "would create",
                (ImportAction::Update, false) => "updated",
                (ImportAction::Update, true) => "would update",
                (ImportAction::Unchanged, _) => "unchanged",
            };
            writeln!(f, "  {verb} {} {}", change.kind, change.path)?;
        }
        for (name, c) in [
            ("projects", &self.projects),
            ("environments", &self.environments),
            ("context kinds", &self.context_kinds),
            ("flags", &self.flags),
            ("segments", &self.segments),
        ] {
            if self.environment.is_some() && matches!(name, "projects" | "environments" | "context kinds") {
                continue;
            }
            let (created, updated) = if would { ("to create", "to update") } else { ("created", "updated") };
            writeln!(f, "{name}: {} {created}, {} {updated}, {} unchanged", c.created, c.updated, c.unchanged)?;
        }
        for s in &self.skipped {
            writeln!(f, "skipped: {s}")?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        for p in &self.problems {
            writeln!(f, "problem: {p}")?;
        }
        if self.refused() {
            let n = self.problems.len();
            writeln!(f, "{n} problem{}: the import was refused.", if n == 1 { "" } else { "s" })?;
        }
        Ok(())
    }
}

fn kind_name(kind: &str) -> &str {
    if kind == CONTEXT_KIND { "context kind" } else { kind }
}

const KEY_RULE: &str = "keys use only letters, digits, '.', '_' and '-' (1 to 256 characters)";

/// One import in progress: the transaction and what it has done.
struct Importer {
    tx: Tx,
    project: String,
    comment: &'static str,
    report: ImportReport,
    flags_written: Vec<String>,
    segments_written: Vec<(String, String)>,
}

impl Importer {
    fn problem(&mut self, message: impl Into<String>) {
        self.report.problems.push(message.into());
    }

    fn note(&mut self, kind: &'static str, path: String, action: ImportAction) {
        self.report.counts(kind).add(action);
        if action != ImportAction::Unchanged {
            self.report.changes.push(ImportChange { kind: kind_name(kind).to_owned(), path, action });
        }
    }

    /// Inserts a new row or updates an existing one with a changelog entry; `None` when nothing changed.
    async fn write(
        &mut self,
        existing: Option<Row>,
        mut row: Row,
        redact: bool,
    ) -> Result<(ImportAction, Row, Option<Value>)> {
        let shown = |v: &Value| if redact { crate::environments::redacted(v) } else { v.clone() };
        match existing {
            None => {
                self.tx.insert(&mut row).await?;
                let after = shown(&row.data);
                self.tx.record(row.kind, &row.scope, &row.key, "import", self.comment, None, Some(after)).await?;
                Ok((ImportAction::Create, row, None))
            }
            Some(old) => {
                if old.data == row.data && old.archived == row.archived && old.name == row.name && old.tags == row.tags
                {
                    return Ok((ImportAction::Unchanged, old, None));
                }
                row.version = old.version;
                row.created_at = old.created_at;
                self.tx.update(&mut row).await?;
                let (before, after) = (shown(&old.data), shown(&row.data));
                self.tx
                    .record(row.kind, &row.scope, &row.key, "import", self.comment, Some(before), Some(after))
                    .await?;
                Ok((ImportAction::Update, row, Some(old.data)))
            }
        }
    }

    async fn put_project(&mut self, project: &Project) -> Result<()> {
        let existing = self.tx.get(PROJECT, "", &project.key).await?;
        let row = new_row(PROJECT, "", &project.key, &project.name, &project.tags, project)?;
        let (action, ..) = self.write(existing, row, false).await?;
        self.note(PROJECT, project.key.clone(), action);
        Ok(())
    }

    async fn put_environment(&mut self, e: &EnvironmentExport) -> Result<()> {
        let project = self.project.clone();
        let existing = self.tx.get(ENVIRONMENT, &project, &e.key).await?;
        let mut env = match &existing {
            Some(row) => row.decode::<Environment>()?.data,
            None => Environment {
                key: e.key.clone(),
                name: String::new(),
                color: String::new(),
                secure_mode: false,
                tags: Vec::new(),
                sdk_key: crate::random_secret("sdk-"),
                mobile_key: crate::random_secret("mob-"),
                client_side_id: hex::encode(rand::random::<[u8; 12]>()),
            },
        };
        env.name = e.name.clone();
        env.color = e.color.clone();
        env.secure_mode = e.secure_mode;
        env.tags = e.tags.clone();
        let is_new = existing.is_none();
        let row = new_row(ENVIRONMENT, &project, &env.key, &env.name, &env.tags, &env)?;
        let (action, ..) = self.write(existing, row, true).await?;
        if is_new {
            for (kind, credential) in
                [("sdk", &env.sdk_key), ("mobile", &env.mobile_key), ("client", &env.client_side_id)]
            {
                crate::environments::insert_credential(&mut self.tx, credential, kind, &project, &env.key, None)
                    .await?;
            }
        }
        self.note(ENVIRONMENT, format!("{project}/{}", env.key), action);
        Ok(())
    }

    async fn put_context_kind(&mut self, kind: &ContextKind) -> Result<()> {
        let project = self.project.clone();
        let existing = self.tx.get(CONTEXT_KIND, &project, &kind.key).await?;
        let tags = existing.as_ref().map(|r| r.tags.clone()).unwrap_or_default();
        let row = new_row(CONTEXT_KIND, &project, &kind.key, &kind.name, &tags, kind)?;
        let (action, ..) = self.write(existing, row, false).await?;
        self.note(CONTEXT_KIND, format!("{project}/{}", kind.key), action);
        Ok(())
    }

    async fn put_segment(&mut self, env: &str, mut doc: SegmentDoc) -> Result<()> {
        let project = self.project.clone();
        let scope = format!("{project}/{env}");
        let key = doc.segment.key.clone();
        let existing = self.tx.get(SEGMENT, &scope, &key).await?;
        let old = existing.as_ref().map(|r| r.decode::<SegmentDoc>()).transpose()?.map(|r| r.data);
        if doc.segment.salt.is_empty() {
            doc.segment.salt = old.as_ref().map_or_else(|| crate::random_secret(""), |o| o.segment.salt.clone());
        }
        doc.segment.deleted = false;
        doc.segment.reindex();
        // The version inside the document is the row's; compare without it.
        doc.segment.version = 0;
        if let (Some(row), Some(mut old)) = (&existing, old) {
            old.segment.version = 0;
            if to_value(&old)? == to_value(&doc)? {
                self.note(SEGMENT, format!("{scope}/{key}"), ImportAction::Unchanged);
                self.segments_written.push((env.to_owned(), key));
                return Ok(());
            }
            doc.segment.version = row.version + 1;
        } else {
            doc.segment.version = 1;
        }
        let row = new_row(SEGMENT, &scope, &key, &doc.name, &doc.tags, &doc)?;
        let (action, row, _) = self.write(existing, row, false).await?;
        self.tx.outbox(&project, env, SEGMENT, &key, row.version).await?;
        self.note(SEGMENT, format!("{scope}/{key}"), action);
        self.segments_written.push((env.to_owned(), key));
        Ok(())
    }

    /// Writes a flag: environments it has no configuration for get the default one, empty salts are filled
    /// (from the stored flag when there is one), and every environment whose SDK view changed gets an outbox row.
    async fn put_flag(&mut self, mut doc: FlagDoc, archived: Option<bool>, envs: &[String]) -> Result<()> {
        let project = self.project.clone();
        let existing = self.tx.get(FLAG, &project, &doc.key).await?;
        let old = existing.as_ref().map(|r| r.decode::<FlagDoc>()).transpose()?.map(|r| r.data);
        for env in envs {
            if !doc.environments.contains_key(env) {
                let config = match old.as_ref().and_then(|o| o.environments.get(env)) {
                    Some(config) => config.clone(),
                    None => doc.default_env_config(crate::random_secret("")),
                };
                doc.environments.insert(env.clone(), config);
            }
        }
        for (env, config) in &mut doc.environments {
            if config.salt.is_empty() {
                config.salt = old
                    .as_ref()
                    .and_then(|o| o.environments.get(env))
                    .map_or_else(|| crate::random_secret(""), |c| c.salt.clone());
            }
        }
        let mut row = new_row(FLAG, &project, &doc.key, &doc.name, &doc.tags, &doc)?;
        row.archived = archived.unwrap_or_else(|| existing.as_ref().is_some_and(|r| r.archived));
        let (action, row, _) = self.write(existing, row, false).await?;
        if action != ImportAction::Unchanged {
            for env in envs {
                let before = old.as_ref().and_then(|o| o.render(env, 0)).map(|f| to_value(&f)).transpose()?;
                let after = doc.render(env, 0).map(|f| to_value(&f)).transpose()?;
                if before != after {
                    self.tx.outbox(&project, env, FLAG, &doc.key, row.version).await?;
                }
            }
        }
        self.note(FLAG, format!("{project}/{}", doc.key), action);
        self.flags_written.push(doc.key);
        Ok(())
    }

    /// Validates every flag and segment written, in every environment, against the data as it now stands.
    async fn validate(&mut self) -> Result<()> {
        let project = self.project.clone();
        let flags = self.tx.all(FLAG, &project).await?;
        let envs = self.tx.all(ENVIRONMENT, &project).await?;
        let written: BTreeSet<&str> = self.flags_written.iter().map(String::as_str).collect();
        let mut problems = Vec::new();
        for env in &envs {
            let segments = self.tx.all(SEGMENT, &format!("{project}/{}", env.key)).await?;
            let data = payload(&project, &env.key, &flags, &segments, None)?;
            for row in flags.iter().filter(|r| written.contains(r.key.as_str())) {
                let doc: FlagDoc = row.decode::<FlagDoc>()?.data;
                let Some(flag) = doc.render(&env.key, row.version) else { continue };
                for issue in validate_flag(&flag, &data) {
                    problems
                        .push(format!("flag {:?}: environments/{}{}: {}", row.key, env.key, issue.path, issue.message));
                }
            }
            for (_, key) in self.segments_written.iter().filter(|(e, _)| *e == env.key) {
                let Some(segment) = data.segment(key) else { continue };
                for issue in validate_segment(segment, &data) {
                    problems.push(format!("segment {:?} in environment {:?}: {issue}", key, env.key));
                }
            }
        }
        for row in flags.iter().filter(|r| written.contains(r.key.as_str())) {
            if row.decode::<FlagDoc>()?.data.variations.is_empty() {
                problems.push(format!("flag {:?}: a flag needs at least one variation", row.key));
            }
        }
        self.report.problems.extend(problems);
        Ok(())
    }

    /// Commits when there are no problems and it is not a dry run; rolls back otherwise.
    async fn finish(self) -> Result<ImportReport> {
        let Importer { tx, mut report, .. } = self;
        if report.problems.is_empty() && !report.dry_run {
            tx.commit().await?;
            report.applied = true;
        } else {
            rollback(tx).await?;
        }
        Ok(report)
    }
}

/// Ends a transaction without writing anything, releasing its locks before returning.
async fn rollback(tx: Tx) -> Result<()> {
    let inner = tx.tx;
    inner.rollback().await?;
    Ok(())
}

fn duplicates<'a>(keys: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = BTreeSet::new();
    let mut dups = BTreeSet::new();
    for k in keys {
        if !seen.insert(k) {
            dups.insert(k);
        }
    }
    dups.into_iter().collect()
}

impl Store {
    /// Exports a project: environments (without credentials), context kinds, flags and segments, read in one
    /// consistent snapshot.
    pub async fn export_project(&self, key: &str) -> Result<ProjectExport> {
        let mut tx = self.begin(&Actor::system("export")).await?;
        if self.backend() == crate::Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *tx.tx).await?;
        }
        let project: Project = tx.require(PROJECT, "", key).await?.decode::<Project>()?.data;
        let mut environments = Vec::new();
        let mut segments = BTreeMap::new();
        for row in tx.all(ENVIRONMENT, key).await? {
            let env: Environment = row.decode::<Environment>()?.data;
            let mut docs = Vec::new();
            for seg_row in tx.all(SEGMENT, &format!("{key}/{}", env.key)).await? {
                let mut doc: SegmentDoc = seg_row.decode::<SegmentDoc>()?.data;
                doc.segment.version = seg_row.version;
                docs.push(doc);
            }
            segments.insert(env.key.clone(), docs);
            environments.push(EnvironmentExport::from(env));
        }
        let context_kinds = tx
            .all(CONTEXT_KIND, key)
            .await?
            .iter()
            .map(|r| Ok(r.decode::<ContextKind>()?.data))
            .collect::<Result<_>>()?;
        let flags = tx
            .all(FLAG, key)
            .await?
            .iter()
            .map(|r| Ok(FlagExport { flag: r.decode::<FlagDoc>()?.data, archived: r.archived }))
            .collect::<Result<_>>()?;
        rollback(tx).await?;
        Ok(ProjectExport {
            format: EXPORT_FORMAT.into(),
            version: EXPORT_VERSION,
            exported_at: crate::now_ms(),
            project,
            environments,
            context_kinds,
            flags,
            segments,
        })
    }

    /// Imports an export, all or nothing, in one transaction. Environments get new credentials; every resource
    /// created or updated gets a changelog entry (action `import`), flags and segments outbox rows. Every flag
    /// and segment is validated against the imported data; any problem refuses the whole import (the report
    /// lists them all). Database failures and unsupported export versions are errors.
    pub async fn import_project(
        &self,
        actor: &Actor,
        export: &ProjectExport,
        options: ImportOptions,
    ) -> Result<ImportReport> {
        export.check_header()?;
        let project = export.project.key.clone();
        let tx = self.begin(actor).await?;
        let mut imp = Importer {
            tx,
            project: project.clone(),
            comment: "imported from a Pennant export",
            report: ImportReport { project: project.clone(), dry_run: options.dry_run, ..ImportReport::default() },
            flags_written: Vec::new(),
            segments_written: Vec::new(),
        };

        // Problems visible in the file itself.
        if !pennant_eval::is_valid_key(&project) {
            imp.problem(format!("project {project:?}: {KEY_RULE}"));
        }
        for e in &export.environments {
            if !pennant_eval::is_valid_key(&e.key) {
                imp.problem(format!("environment {:?}: {KEY_RULE}", e.key));
            }
        }
        for k in &export.context_kinds {
            if !pennant_eval::is_valid_key(&k.key) {
                imp.problem(format!("context kind {:?}: {KEY_RULE}", k.key));
            } else if k.key == "kind" || k.key == "multi" {
                imp.problem(format!("context kind {:?} is reserved", k.key));
            }
        }
        for f in &export.flags {
            if !pennant_eval::is_valid_key(&f.flag.key) {
                imp.problem(format!("flag {:?}: {KEY_RULE}", f.flag.key));
            }
        }
        for (env, docs) in &export.segments {
            for d in docs {
                if !pennant_eval::is_valid_key(&d.segment.key) {
                    imp.problem(format!("segment {:?} in environment {env:?}: {KEY_RULE}", d.segment.key));
                }
            }
            for dup in duplicates(docs.iter().map(|d| d.segment.key.as_str())) {
                imp.problem(format!("segment {dup:?} appears more than once in environment {env:?}"));
            }
        }
        for (what, dups) in [
            ("environment", duplicates(export.environments.iter().map(|e| e.key.as_str()))),
            ("context kind", duplicates(export.context_kinds.iter().map(|k| k.key.as_str()))),
            ("flag", duplicates(export.flags.iter().map(|f| f.flag.key.as_str()))),
        ] {
            for dup in dups {
                imp.problem(format!("{what} {dup:?} appears more than once"));
            }
        }
        if imp.tx.get(PROJECT, "", &project).await?.is_some() && !options.replace {
            imp.problem(format!("project {project:?} already exists (import with replace to update it)"));
        }
        if !imp.report.problems.is_empty() {
            return imp.finish().await;
        }

        imp.put_project(&export.project).await?;
        for e in &export.environments {
            imp.put_environment(e).await?;
        }
        let envs: Vec<String> = imp.tx.all(ENVIRONMENT, &project).await?.into_iter().map(|r| r.key).collect();
        for k in &export.context_kinds {
            imp.put_context_kind(k).await?;
        }
        // Segments before flags, so that flags' segment references resolve.
        for (env, docs) in &export.segments {
            if !envs.contains(env) {
                imp.problem(format!("segments for unknown environment {env:?}"));
                continue;
            }
            for doc in docs {
                imp.put_segment(env, doc.clone()).await?;
            }
        }
        for f in &export.flags {
            let unknown: Vec<&String> = f.flag.environments.keys().filter(|k| !envs.contains(k)).collect();
            if !unknown.is_empty() {
                for env in unknown {
                    imp.problem(format!("flag {:?}: unknown environment {env:?}", f.flag.key));
                }
                continue;
            }
            imp.put_flag(f.flag.clone(), Some(f.archived), &envs).await?;
        }
        // Flags already there that the export does not carry get the default configuration in new environments.
        let imported: BTreeSet<&str> = export.flags.iter().map(|f| f.flag.key.as_str()).collect();
        for row in imp.tx.all(FLAG, &project).await? {
            if imported.contains(row.key.as_str()) {
                continue;
            }
            let doc: FlagDoc = row.decode::<FlagDoc>()?.data;
            if envs.iter().any(|e| !doc.environments.contains_key(e)) {
                imp.put_flag(doc, None, &envs).await?;
            }
        }
        imp.validate().await?;
        imp.finish().await
    }

    /// Imports LaunchDarkly's server-side SDK payload (`{"flags": {…}, "segments": {…}}`, the `/sdk/latest-all`
    /// body or a streaming `put`'s data) into one existing environment, all or nothing. Each flag's targeting
    /// becomes that environment's configuration; a new flag gets the default configuration in the project's other
    /// environments, and an existing flag must have the same variations (only this environment's configuration
    /// is replaced). Segments are created or replaced in the environment. Deleted items (tombstones) are
    /// skipped. A payload that is not JSON of that shape, or a missing environment, is an error.
    pub async fn import_launchdarkly_payload(
        &self,
        actor: &Actor,
        project: &str,
        env: &str,
        payload_json: &[u8],
        options: ImportOptions,
    ) -> Result<ImportReport> {
        let (flags, segments) = parse_ld_payload(payload_json)?;
        let tx = self.begin(actor).await?;
        let mut imp = Importer {
            tx,
            project: project.to_owned(),
            comment: "imported from a LaunchDarkly payload",
            report: ImportReport {
                project: project.to_owned(),
                environment: Some(env.to_owned()),
                dry_run: options.dry_run,
                ..ImportReport::default()
            },
            flags_written: Vec::new(),
            segments_written: Vec::new(),
        };
        imp.tx.require(ENVIRONMENT, project, env).await?;
        let envs: Vec<String> = imp.tx.all(ENVIRONMENT, project).await?.into_iter().map(|r| r.key).collect();

        for (key, value) in segments {
            let mut segment: pennant_eval::Segment = match serde_json::from_value(value) {
                Ok(s) => s,
                Err(e) => {
                    imp.problem(format!("segment {key:?}: {e}"));
                    continue;
                }
            };
            if segment.key.is_empty() {
                segment.key.clone_from(&key);
            }
            if segment.key != key {
                imp.problem(format!("segment {key:?}: its key is {:?}", segment.key));
                continue;
            }
            if !pennant_eval::is_valid_key(&key) {
                imp.problem(format!("segment {key:?}: {KEY_RULE}"));
                continue;
            }
            if segment.deleted {
                imp.report.skipped.push(format!("deleted segment {key}"));
                continue;
            }
            if segment.unbounded {
                imp.report.warnings.push(format!(
                    "segment {key:?} is a big segment: its membership lives in LaunchDarkly's big segment store and \
                     is not imported"
                ));
            }
            let existing = imp.tx.get(SEGMENT, &format!("{project}/{env}"), &key).await?;
            let doc = match existing {
                Some(row) => {
                    let mut doc: SegmentDoc = row.decode::<SegmentDoc>()?.data;
                    doc.segment = segment;
                    doc
                }
                None => SegmentDoc { name: key.clone(), description: String::new(), tags: Vec::new(), segment },
            };
            imp.put_segment(env, doc).await?;
        }

        for (key, value) in flags {
            let mut flag: pennant_eval::Flag = match serde_json::from_value(value) {
                Ok(f) => f,
                Err(e) => {
                    imp.problem(format!("flag {key:?}: {e}"));
                    continue;
                }
            };
            if flag.key.is_empty() {
                flag.key.clone_from(&key);
            }
            if flag.key != key {
                imp.problem(format!("flag {key:?}: its key is {:?}", flag.key));
                continue;
            }
            if !pennant_eval::is_valid_key(&key) {
                imp.problem(format!("flag {key:?}: {KEY_RULE}"));
                continue;
            }
            if flag.deleted {
                imp.report.skipped.push(format!("deleted flag {key}"));
                continue;
            }
            let mut lost = Vec::new();
            if flag.migration.is_some() {
                lost.push("migration settings");
            }
            if flag.sampling_ratio.is_some_and(|r| r != 1) {
                lost.push("samplingRatio");
            }
            if flag.exclude_from_summaries {
                lost.push("excludeFromSummaries");
            }
            if !lost.is_empty() {
                imp.report.warnings.push(format!("flag {key:?}: {} not imported", lost.join(", ")));
            }
            let availability = flag.client_side_availability();
            let config = FlagEnvConfig {
                on: flag.on,
                targets: flag.targets,
                context_targets: flag.context_targets,
                rules: flag.rules,
                fallthrough: flag.fallthrough,
                off_variation: flag.off_variation,
                prerequisites: flag.prerequisites,
                salt: flag.salt,
                track_events: flag.track_events,
                track_events_fallthrough: flag.track_events_fallthrough,
                debug_events_until_date: flag.debug_events_until_date,
            };
            let existing = imp.tx.get(FLAG, project, &key).await?;
            let doc = match existing {
                Some(row) => {
                    let mut doc: FlagDoc = row.decode::<FlagDoc>()?.data;
                    let same = doc.variations.len() == flag.variations.len()
                        && doc
                            .variations
                            .iter()
                            .zip(&flag.variations)
                            .all(|(a, b)| pennant_eval::json_equal(&a.value, b));
                    if !same {
                        imp.problem(format!(
                            "flag {key:?}: its variations differ from those of the existing flag ({} here, {} in the \
                             payload)",
                            Value::from(doc.variations.iter().map(|v| v.value.clone()).collect::<Vec<_>>()),
                            Value::from(flag.variations)
                        ));
                        continue;
                    }
                    doc.environments.insert(env.to_owned(), config);
                    doc
                }
                None => FlagDoc {
                    key: key.clone(),
                    name: key.clone(),
                    description: String::new(),
                    tags: Vec::new(),
                    temporary: true,
                    maintainer: None,
                    variations: flag
                        .variations
                        .into_iter()
                        .map(|value| Variation { value, name: None, description: None })
                        .collect(),
                    client_side_availability: availability,
                    defaults: None,
                    environments: BTreeMap::from([(env.to_owned(), config)]),
                },
            };
            imp.put_flag(doc, None, &envs).await?;
        }
        imp.validate().await?;
        imp.finish().await
    }
}

type Items = BTreeMap<String, Value>;

/// The `flags` and `segments` of a payload, also accepted wrapped as a streaming `put` event (`{"data": …}`).
fn parse_ld_payload(bytes: &[u8]) -> Result<(Items, Items)> {
    let bad = |message: String| StoreError::Invalid { kind: "LaunchDarkly payload", issues: vec![message] };
    let value: Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let Value::Object(mut top) = value else {
        return Err(bad("expected a JSON object with \"flags\" and \"segments\"".into()));
    };
    if !top.contains_key("flags")
        && !top.contains_key("segments")
        && let Some(Value::Object(data)) = top.remove("data")
    {
        top = data;
    }
    if !top.contains_key("flags") && !top.contains_key("segments") {
        return Err(bad("expected a JSON object with \"flags\" and \"segments\"".into()));
    }
    let mut take = |name: &str| -> Result<Items> {
        match top.remove(name) {
            None | Some(Value::Null) => Ok(Items::new()),
            Some(Value::Object(map)) => Ok(map.into_iter().collect()),
            Some(_) => Err(bad(format!("\"{name}\" must be an object keyed by {name} key"))),
        }
    };
    Ok((take("flags")?, take("segments")?))
}
