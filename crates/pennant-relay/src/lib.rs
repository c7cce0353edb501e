//! Pennant's relay: one local process that a fleet of SDKs in one region or network hangs off.
//!
//! For each configured environment the relay runs Pennant's Rust SDK against the upstream service (a Pennant
//! node, another relay, or LaunchDarkly): its streaming data source keeps the environment's flags and segments in
//! memory. Each change is pushed into a [`pennant_stream::Mirror`], so the relay serves the same SDK endpoints as
//! a Pennant streaming node (server-side streaming and polling, client-side and mobile `evalx`, streams), with the
//! same lean streaming path, and connected SDKs get a `patch` or `delete` per changed item. Analytics events
//! posted to the relay are forwarded upstream in batches ([`forward`]).
//!
//! - **Restarts without the upstream**: with a data directory, each environment's last good payload is saved
//!   (written to a temporary file, then renamed) after every change, and loaded at start, so the relay serves at
//!   once, and goes on serving while the upstream is unreachable.
//! - **Offline**: an environment with an offline file serves that file (LaunchDarkly's `/sdk/latest-all` JSON,
//!   such as a saved payload), watched for changes, with no upstream at all.
//! - Status: `GET /status` (each environment's data source state and whether it has data) and `GET /health`
//!   (`200` once every environment has data).

mod config;
mod forward;
mod routes;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pennant_sdk::{Client, DataSourceState, DataSourceStatus, FlagData};
use pennant_stream::{EnvId, Hub, HubOptions, Mirror, MirrorKeys, Source, StreamState};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{EnvironmentConfig, RelayConfig, Upstream};
pub use routes::router;

/// The project every mirrored environment is filed under (environments are told apart by name).
const PROJECT: &str = "relay";

/// What can keep the relay from starting.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Invalid settings.
    #[error("invalid relay configuration: {0}")]
    Config(String),
    /// The SDK could not be started for an environment.
    #[error("environment {name:?}: {message}")]
    Environment {
        /// The environment.
        name: String,
        /// Why.
        message: String,
    },
    /// The data directory could not be used.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// One mirrored environment.
#[derive(Debug)]
struct RelayedEnv {
    name: String,
    id: EnvId,
    client: Client,
    saved_file: Option<PathBuf>,
    /// Becomes `true` once the environment is served (from a saved payload or the data source).
    served: watch::Sender<bool>,
}

/// An environment's status, as `GET /status` reports it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentStatus {
    /// The configured name.
    pub name: String,
    /// `initializing`, `valid`, `interrupted` or `off`: the upstream connection's (or offline file's) state.
    pub state: &'static str,
    /// Whether SDKs are served (from the upstream, the offline file or a saved payload).
    pub has_data: bool,
    /// The last error of the data source, if any.
    pub last_error: Option<String>,
    /// Server-side streams connected.
    pub connections: usize,
}

/// A running relay.
#[derive(Debug)]
pub struct Relay {
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// What the relay's routes see.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: RelayConfig,
    pub(crate) mirror: Arc<Mirror>,
    pub(crate) hub: Arc<Hub>,
    envs: Vec<Arc<RelayedEnv>>,
    /// Sends analytics events upstream; `None` without an upstream.
    pub(crate) forwarder: Option<Arc<forward::Forwarder>>,
    /// Payload IDs of requests whose events the upstream took (a retry of one is not forwarded again).
    pub(crate) delivered: quick_cache::sync::Cache<(String, String), ()>,
}

impl Relay {
    /// Starts mirroring every environment (in the background: use [`Relay::wait_for_data`] to wait). Saved payloads
    /// are loaded first, so an environment that has one is served at once. Stops when `shutdown` becomes `true`.
    pub fn start(config: RelayConfig, shutdown: watch::Receiver<bool>) -> Result<Relay, RelayError> {
        config.validate()?;
        if let Some(dir) = &config.data_dir {
            std::fs::create_dir_all(dir).map_err(|source| RelayError::DataDir { path: dir.clone(), source })?;
        }
        let mirror = Arc::new(Mirror::new());
        let hub = Arc::new(Hub::with_options(HubOptions::default()));
        let mut envs = Vec::new();
        let mut tasks = Vec::new();
        for env in &config.environments {
            let id = EnvId { project: PROJECT.into(), env: env.name.clone() };
            let keys = MirrorKeys {
                sdk_key: env.sdk_key.clone(),
                mobile_key: env.mobile_key.clone(),
                client_side_id: env.client_side_id.clone(),
                secure_mode: env.secure_mode,
            };
            let failed = |message: String| RelayError::Environment { name: env.name.clone(), message };
            mirror.add_environment(id.clone(), keys).map_err(|e| failed(e.to_string()))?;
            // An offline environment's file is its saved payload already.
            let saved_file = (config.data_dir.as_deref())
                .filter(|_| env.offline_file.is_none())
                .map(|dir| saved_payload_path(dir, &env.sdk_key));
            let served = watch::Sender::new(false);
            if let Some(path) = saved_file.as_deref()
                && load_saved(&mirror, &hub, &id, path)
            {
                served.send_replace(true);
            }
            let client = Client::start(sdk_config(&config, env).map_err(|e| failed(e.to_string()))?)
                .map_err(|e| failed(e.to_string()))?;
            let relayed = Arc::new(RelayedEnv { name: env.name.clone(), id, client, saved_file, served });
            tasks.push(tokio::spawn(mirror_environment(
                relayed.clone(),
                mirror.clone(),
                hub.clone(),
                shutdown.clone(),
            )));
            envs.push(relayed);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.connect_timeout * 3)
            .user_agent(concat!("PennantRelay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RelayError::Config(format!("HTTP client: {e}")))?;
        let forwarder = config.upstream.as_ref().map(|upstream| {
            Arc::new(forward::Forwarder::new(
                http,
                &upstream.events_uri,
                config.events_flush_interval,
                config.events_max_body_bytes,
            ))
        });
        let delivered = quick_cache::sync::Cache::new(100_000);
        Ok(Relay { shared: Arc::new(Shared { config, mirror, hub, envs, forwarder, delivered }), shutdown, tasks })
    }

    /// The SDK endpoints' state (for [`pennant_stream::serve`]'s lean streaming path).
    pub fn stream_state(&self) -> StreamState {
        StreamState {
            source: Source::Mirror(self.shared.mirror.clone()),
            hub: self.shared.hub.clone(),
            shutdown: self.shutdown.clone(),
        }
    }

    /// Every environment's status.
    pub fn status(&self) -> Vec<EnvironmentStatus> {
        self.shared.status()
    }

    /// Whether every environment is served.
    pub fn ready(&self) -> bool {
        self.shared.ready()
    }

    /// Waits until every environment is served (`true`) or `timeout` passes (`false`).
    pub async fn wait_for_data(&self, timeout: std::time::Duration) -> bool {
        let all = async {
            for env in &self.shared.envs {
                let mut served = env.served.subscribe();
                if served.wait_for(|served| *served).await.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(timeout, all).await.unwrap_or(false)
    }

    /// Stops the SDK clients and waits for the background tasks.
    pub async fn close(self) {
        for env in &self.shared.envs {
            env.client.close().await;
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

impl Shared {
    pub(crate) fn status(&self) -> Vec<EnvironmentStatus> {
        self.envs.iter().map(|env| self.env_status(env)).collect()
    }

    fn env_status(&self, env: &RelayedEnv) -> EnvironmentStatus {
        let DataSourceStatus { state, last_error, .. } = env.client.data_source_status();
        EnvironmentStatus {
            name: env.name.clone(),
            state: match state {
                DataSourceState::Initializing => "initializing",
                DataSourceState::Valid => "valid",
                DataSourceState::Interrupted => "interrupted",
                DataSourceState::Off => "off",
            },
            has_data: self.mirror.payload(&env.id).is_some(),
            last_error: last_error.map(|e| e.message),
            connections: self.hub.existing(&env.id).map_or(0, |c| c.connections()),
        }
    }

    pub(crate) fn ready(&self) -> bool {
        self.envs.iter().all(|env| self.mirror.payload(&env.id).is_some())
    }
}

/// The SDK's settings for one environment: streaming from the upstream (or the offline file), no events of its
/// own (the relay forwards its SDKs' events instead).
fn sdk_config(config: &RelayConfig, env: &EnvironmentConfig) -> Result<pennant_sdk::Config, pennant_sdk::ConfigError> {
    let builder = pennant_sdk::Config::builder(env.sdk_key.clone()).events_enabled(false);
    match (&env.offline_file, &config.upstream) {
        (Some(file), _) => builder.files([file.clone()]).build(),
        (None, Some(upstream)) => builder
            .base_uri(upstream.base_uri.clone())
            .stream_uri(upstream.stream_uri.clone())
            .connect_timeout(config.connect_timeout)
            .streaming()
            .build(),
        // Ruled out by validation; an offline client serves nothing rather than failing here.
        (None, None) => builder.offline(true).build(),
    }
}

/// Feeds the mirror from the SDK client, and saves each new data set.
async fn mirror_environment(
    env: Arc<RelayedEnv>,
    mirror: Arc<Mirror>,
    hub: Arc<Hub>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut updates = env.client.data_updates();
    // Data that arrived before the subscription is handled first.
    let mut pending = env.client.initialized();
    loop {
        if pending {
            let data = env.client.flag_data();
            if publish(&env, &mirror, &hub, &data)
                && let (Some(path), Some(payload)) = (env.saved_file.clone(), mirror.payload(&env.id))
            {
                // Off the runtime's threads: a large payload on a slow disk must not stall other tasks. Awaited, so
                // saves happen in order (and a burst of changes meanwhile is saved once, as its latest state).
                let saved = tokio::task::spawn_blocking(move || save_atomically(&path, &payload)).await;
                if let Ok(Err(e)) | Err(e) = saved.map_err(std::io::Error::other) {
                    tracing::warn!(environment = %env.name, error = %e, "saving the payload failed");
                }
            }
        }
        tokio::select! {
            changed = updates.changed() => {
                if changed.is_err() {
                    return;
                }
                pending = true;
            }
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// Pushes the client's data into the mirror; returns whether it was taken.
fn publish(env: &RelayedEnv, mirror: &Mirror, hub: &Hub, data: &FlagData) -> bool {
    match mirror.update(hub, &env.id, data.flags(), data.segments()) {
        Ok(update) => {
            env.served.send_replace(true);
            metrics::counter!("pennant_relay_updates_total", "environment" => env.name.clone()).increment(1);
            tracing::debug!(environment = %env.name, ?update, "data updated");
            true
        }
        Err(e) => {
            tracing::error!(environment = %env.name, error = %e, "updating the mirror failed");
            false
        }
    }
}

/// Where an environment's payload is saved: named after a hash of its SDK key (so a renamed environment keeps
/// its file, and no key appears in file names).
fn saved_payload_path(dir: &Path, sdk_key: &str) -> PathBuf {
    let hash = hex::encode(Sha256::digest(sdk_key.as_bytes()));
    dir.join(format!("env-{}.json", &hash[..16]))
}

/// Loads a saved payload into the mirror, if there is a readable one; returns whether it did.
fn load_saved(mirror: &Mirror, hub: &Hub, id: &EnvId, path: &Path) -> bool {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "the saved payload cannot be read");
            return false;
        }
    };
    match FlagData::from_payload_json(&bytes) {
        Ok(data) => match mirror.update(hub, id, data.flags(), data.segments()) {
            Ok(_) => {
                tracing::info!(environment = %id.env, path = %path.display(), "serving the saved payload");
                true
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "the saved payload cannot be served");
                false
            }
        },
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "the saved payload is not valid; ignored");
            false
        }
    }
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one, never a mix.
fn save_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_payload_names_hide_the_key_and_are_stable() {
        let a = saved_payload_path(Path::new("/d"), "sdk-secret-1");
        assert_eq!(a, saved_payload_path(Path::new("/d"), "sdk-secret-1"));
        assert_ne!(a, saved_payload_path(Path::new("/d"), "sdk-secret-2"));
        assert!(!a.to_string_lossy().contains("secret"));
    }

    #[test]
    fn saving_replaces_the_file_whole() {
        let dir = std::env::temp_dir().join(format!("pennant-relay-save-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("env.json");
        save_atomically(&path, b"{\"flags\":{}}").unwrap();
        save_atomically(&path, b"{\"flags\":{},\"segments\":{}}").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"flags\":{},\"segments\":{}}");
        assert!(!path.with_extension("json.tmp").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
