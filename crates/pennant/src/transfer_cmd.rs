//! `pennant export`, `pennant import` and `pennant import-launchdarkly`: moving projects between installations
//! and bringing LaunchDarkly data in, straight against the database.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use pennant_store::{Actor, ImportOptions, ImportReport, ProjectExport, Store};

/// The database `pennant serve` uses when none is configured.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://./pennant-data/pennant.db?mode=rwc";

/// Where the data is.
#[derive(Debug, clap::Args)]
pub struct DatabaseArgs {
    /// Database URL: `sqlite://PATH?mode=rwc` or `postgres://USER@HOST/DB`.
    #[arg(long, env = "PENNANT_DATABASE_URL", hide_env_values = true, default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
}

/// Arguments of `pennant export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// The project to export.
    #[arg(long)]
    pub project: String,
    /// Write here instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

/// Arguments of `pennant import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// A file written by `pennant export` (`-` for standard input).
    pub file: PathBuf,
    /// Check and report what would be done; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Update the project if it exists (otherwise an existing project key is refused).
    #[arg(long)]
    pub replace: bool,
}

/// Arguments of `pennant import-launchdarkly`.
#[derive(Debug, clap::Args)]
pub struct ImportLaunchDarklyArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// The (existing) project to import into.
    #[arg(long)]
    pub project: String,
    /// The (existing) environment to import into.
    #[arg(long)]
    pub environment: String,
    /// LaunchDarkly's server-side SDK payload: the body of `/sdk/latest-all` (`{"flags": …, "segments": …}`)
    /// or a streaming `put` event's data (`-` for standard input).
    pub file: PathBuf,
    /// Check and report what would be done; write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Exports a project as pretty-printed JSON.
pub fn export(args: &ExportArgs) -> anyhow::Result<ExitCode> {
    block_on(async {
        let store = open(&args.db.database_url, false).await?;
        let result = store.export_project(&args.project).await;
        store.close().await;
        let export = result.with_context(|| format!("cannot export project {:?}", args.project))?;
        let mut json = serde_json::to_string_pretty(&export).context("cannot serialise the export")?;
        json.push('\n');
        match &args.output {
            Some(path) => {
                std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
                let segments: usize = export.segments.values().map(Vec::len).sum();
                eprintln!(
                    "Exported project {} ({} environments, {} flags, {} segments) to {}.",
                    export.project.key,
                    export.environments.len(),
                    export.flags.len(),
                    segments,
                    path.display()
                );
            }
            None => {
                let mut out = std::io::stdout().lock();
                out.write_all(json.as_bytes()).and_then(|()| out.flush()).context("cannot write the export")?;
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Imports a file written by `pennant export`.
pub fn import(args: &ImportArgs) -> anyhow::Result<ExitCode> {
    let bytes = read_input(&args.file)?;
    let export = ProjectExport::from_json(&bytes).with_context(|| format!("cannot import {}", args.file.display()))?;
    let options = ImportOptions { dry_run: args.dry_run, replace: args.replace };
    block_on(async {
        let store = open(&args.db.database_url, true).await?;
        let result = store.import_project(&Actor::system("pennant import"), &export, options).await;
        store.close().await;
        finish(result.context("the import failed; nothing was written")?)
    })
}

/// Imports LaunchDarkly's SDK payload into one environment.
pub fn import_launchdarkly(args: &ImportLaunchDarklyArgs) -> anyhow::Result<ExitCode> {
    let bytes = read_input(&args.file)?;
    let options = ImportOptions { dry_run: args.dry_run, replace: true };
    block_on(async {
        let store = open(&args.db.database_url, false).await?;
        let actor = Actor::system("pennant import-launchdarkly");
        let result = store.import_launchdarkly_payload(&actor, &args.project, &args.environment, &bytes, options).await;
        store.close().await;
        finish(result.with_context(|| format!("cannot import {}; nothing was written", args.file.display()))?)
    })
}

fn finish(report: ImportReport) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    write!(out, "{report}").and_then(|()| out.flush()).context("cannot write the report")?;
    if report.refused() {
        let n = report.problems.len();
        eprintln!("error: the import was refused ({n} problem{}); nothing was written", if n == 1 { "" } else { "s" });
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn block_on<T>(future: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(future)
}

fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes).context("cannot read standard input")?;
        return Ok(bytes);
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The file behind a `sqlite:` URL (`None` for in-memory databases and other backends).
fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// Opens the database. Only imports create a missing SQLite database (and its directory); reading from one
/// that does not exist is an error rather than an empty new file.
async fn open(url: &str, create: bool) -> anyhow::Result<Store> {
    if let Some(path) = sqlite_path(url) {
        if create {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            }
        } else if !path.exists() {
            bail!("no database at {} (set --database-url or PENNANT_DATABASE_URL)", path.display());
        }
    }
    Store::open(url).await.with_context(|| format!("cannot open the database {}", redact_url(url)))
}

/// A database URL without its password, for messages.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths_and_redaction() {
        assert_eq!(sqlite_path(DEFAULT_DATABASE_URL), Some(PathBuf::from("./pennant-data/pennant.db")));
        assert_eq!(sqlite_path("sqlite:/tmp/x.db"), Some(PathBuf::from("/tmp/x.db")));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://u@h/db"), None);
        assert_eq!(redact_url("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }
}
