//! `pennant serve` configuration: typed, with defaults and validation, from a TOML file, `PENNANT_*` environment
//! variables and command-line flags (flags win over the environment, which wins over the file).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Command-line flags (each also readable from its `PENNANT_*` environment variable).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "PENNANT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "PENNANT_LISTEN")]
    pub listen: Option<String>,
    /// Directory for the embedded database and first-start credentials.
    #[arg(long, env = "PENNANT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL: `postgres://…` (scale-out) or `sqlite://PATH` (default: a file in the data directory).
    #[arg(long, env = "PENNANT_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Largest accepted API request body, in bytes.
    #[arg(long, env = "PENNANT_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Sustained API requests per second per token.
    #[arg(long, env = "PENNANT_RATE_LIMIT_PER_SECOND")]
    pub rate_limit_per_second: Option<u32>,
    /// Burst of API requests per token above the sustained rate.
    #[arg(long, env = "PENNANT_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,
    /// Seconds to let in-flight requests finish on shutdown.
    #[arg(long, env = "PENNANT_SHUTDOWN_GRACE_SECONDS")]
    pub shutdown_grace_seconds: Option<u64>,
    /// Log filter, e.g. `info` or `pennant=debug,info`.
    #[arg(long, env = "PENNANT_LOG")]
    pub log: Option<String>,
    /// What this process serves: `all` (default), `api` (management API and webhooks), `stream` (SDK
    /// streaming and polling endpoints) or `events` (the analytics front door and its processors). Several
    /// `stream` or `events` processes can share a port with `--reuse-port`.
    #[arg(long, env = "PENNANT_ROLE")]
    pub role: Option<String>,
    /// Let several processes listen on the same address (SO_REUSEPORT); the kernel spreads connections.
    #[arg(long, env = "PENNANT_REUSE_PORT", num_args = 0..=1, default_missing_value = "true")]
    pub reuse_port: Option<bool>,
    /// NATS server URL (`nats://HOST:PORT`): committed changes are announced there to every streaming node.
    #[arg(long, env = "PENNANT_NATS_URL")]
    pub nats_url: Option<String>,
    /// Redis URL (`redis://HOST:PORT[/DB]`): environment payloads are shared there between nodes.
    #[arg(long, env = "PENNANT_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of NATS subjects and Redis keys, so that several deployments can share those servers.
    #[arg(long, env = "PENNANT_NAMESPACE")]
    pub namespace: Option<String>,
    /// Streams are closed after about this many seconds so that SDKs reconnect and spread over nodes (0: never).
    #[arg(long, env = "PENNANT_STREAM_MAX_CONNECTION_SECONDS")]
    pub stream_max_connection_seconds: Option<u64>,
    /// Seconds between heartbeat comments on idle streams.
    #[arg(long, env = "PENNANT_STREAM_HEARTBEAT_SECONDS")]
    pub stream_heartbeat_seconds: Option<u64>,
    /// Largest analytics request body SDKs may post, compressed or not, in bytes.
    #[arg(long, env = "PENNANT_EVENTS_MAX_BODY_BYTES")]
    pub events_max_body_bytes: Option<usize>,
    /// Most analytics batches waiting in the embedded queue; beyond it SDKs are told to retry later (503).
    #[arg(long, env = "PENNANT_EVENTS_QUEUE_MAX_BATCHES")]
    pub events_queue_max_batches: Option<u64>,
    /// Most bytes of analytics batches waiting in the queue (embedded queue and JetStream stream).
    #[arg(long, env = "PENNANT_EVENTS_QUEUE_MAX_BYTES")]
    pub events_queue_max_bytes: Option<u64>,
    /// Event processors in this process (each takes its own rounds from the queue; they share the contexts
    /// cache). Two keep both cores busy: one parses and aggregates while the other's transaction runs.
    #[arg(long, env = "PENNANT_EVENTS_PROCESSORS")]
    pub events_processors: Option<usize>,
    /// Most queued analytics batches an event processor takes in one round (written, then acknowledged).
    #[arg(long, env = "PENNANT_EVENTS_PROCESSOR_MAX_BATCHES")]
    pub events_processor_max_batches: Option<usize>,
    /// Most analytics events an event processor writes in one transaction (fewer, larger commits; on SQLite the
    /// transaction holds the main database's write lock, which the embedded queue's own file does not share).
    #[arg(long, env = "PENNANT_EVENTS_PROCESSOR_MAX_EVENTS")]
    pub events_processor_max_events: Option<usize>,
    /// Milliseconds an event processor waits for more batches after the first of a round before writing.
    #[arg(long, env = "PENNANT_EVENTS_PROCESSOR_FLUSH_MS")]
    pub events_processor_flush_ms: Option<u64>,
    /// Seconds within which an unchanged context is not written to the contexts index again (its last-seen time
    /// moves in steps of about this much; 0 writes every sighting).
    #[arg(long, env = "PENNANT_EVENTS_CONTEXT_REFRESH_SECONDS")]
    pub events_context_refresh_seconds: Option<u64>,
    /// How many recently written contexts an event processor remembers for the refresh window (0: none).
    #[arg(long, env = "PENNANT_EVENTS_CONTEXT_CACHE")]
    pub events_context_cache: Option<usize>,
    /// Whether an event processor pulls its next round while it writes the current one.
    #[arg(long, env = "PENNANT_EVENTS_PROCESSOR_PREFETCH", num_args = 0..=1, default_missing_value = "true")]
    pub events_processor_prefetch: Option<bool>,
}

/// What a `pennant serve` process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything in one process (the default).
    All,
    /// The management API, webhooks, health and metrics.
    Api,
    /// The SDK streaming and polling endpoints, health and metrics.
    Stream,
    /// The analytics front door (`/bulk`, `/mobile`, …), the event processors, health and metrics.
    Events,
}

impl Role {
    /// Serves the management API.
    pub fn api(self) -> bool {
        matches!(self, Role::All | Role::Api)
    }

    /// Serves the SDK endpoints.
    pub fn stream(self) -> bool {
        matches!(self, Role::All | Role::Stream)
    }

    /// Accepts and processes analytics events.
    pub fn events(self) -> bool {
        matches!(self, Role::All | Role::Events)
    }
}

/// The same settings as a file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    max_body_bytes: Option<usize>,
    rate_limit_per_second: Option<u32>,
    rate_limit_burst: Option<u32>,
    shutdown_grace_seconds: Option<u64>,
    log: Option<String>,
    role: Option<String>,
    reuse_port: Option<bool>,
    nats_url: Option<String>,
    redis_url: Option<String>,
    namespace: Option<String>,
    stream_max_connection_seconds: Option<u64>,
    stream_heartbeat_seconds: Option<u64>,
    events_max_body_bytes: Option<usize>,
    events_queue_max_batches: Option<u64>,
    events_queue_max_bytes: Option<u64>,
    events_processors: Option<usize>,
    events_processor_max_batches: Option<usize>,
    events_processor_max_events: Option<usize>,
    events_processor_flush_ms: Option<u64>,
    events_context_refresh_seconds: Option<u64>,
    events_context_cache: Option<usize>,
    events_processor_prefetch: Option<bool>,
}

/// Validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Database URL (always set: the SQLite default is filled in).
    pub database_url: String,
    /// API body limit.
    pub max_body_bytes: usize,
    /// API rate limit.
    pub rate_limit_per_second: u32,
    /// API burst.
    pub rate_limit_burst: u32,
    /// Shutdown grace.
    pub shutdown_grace_seconds: u64,
    /// Log filter.
    pub log: String,
    /// What this process serves.
    pub role: Role,
    /// SO_REUSEPORT on the listener.
    pub reuse_port: bool,
    /// NATS bus, if any.
    pub nats_url: Option<String>,
    /// Redis payload cache, if any.
    pub redis_url: Option<String>,
    /// NATS subject and Redis key prefix.
    pub namespace: String,
    /// Stream lifetime (`None`: unlimited).
    pub stream_max_connection_seconds: Option<u64>,
    /// Heartbeat interval.
    pub stream_heartbeat_seconds: u64,
    /// Analytics body limit.
    pub events_max_body_bytes: usize,
    /// Embedded queue bound, in batches.
    pub events_queue_max_batches: u64,
    /// Queue bound, in bytes.
    pub events_queue_max_bytes: u64,
    /// How the event processors batch their writes and remember contexts.
    pub events_processor: ProcessorSettings,
}

/// The event processors' settings (see `pennant_insights::ProcessorOptions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessorSettings {
    /// Processors in the process.
    pub count: usize,
    /// Batches per round.
    pub max_batches: usize,
    /// Events per transaction.
    pub max_events: usize,
    /// Wait for more batches after the first of a round.
    pub flush_interval: Duration,
    /// Window within which an unchanged context is not written again.
    pub context_refresh: Duration,
    /// Contexts remembered for that window.
    pub context_cache: usize,
    /// Pull the next round while writing the current one.
    pub prefetch: bool,
}

impl ProcessorSettings {
    /// The processor's options (the others at their defaults).
    pub fn options(&self) -> pennant_insights::ProcessorOptions {
        pennant_insights::ProcessorOptions {
            max_batches: self.max_batches,
            max_events: self.max_events,
            flush_interval: self.flush_interval,
            context_refresh: self.context_refresh,
            context_cache: self.context_cache,
            prefetch: self.prefetch,
            ..pennant_insights::ProcessorOptions::default()
        }
    }
}

/// A configuration that cannot be used, with what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {reason}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file is not valid TOML for these settings.
    #[error("invalid configuration file {path}: {reason}")]
    InvalidFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A setting has a bad value.
    #[error("invalid {setting} {value:?}: {reason}")]
    Invalid {
        /// The setting (flag name).
        setting: &'static str,
        /// The value given.
        value: String,
        /// What is expected.
        reason: &'static str,
    },
}

impl ServeArgs {
    /// Merges flags, environment (already folded into the flags by clap) and the file, then validates.
    pub fn resolve(&self) -> Result<ServeConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        // Before the other settings move their values out of `file`.
        let events_processor = self.processor_settings(&file)?;
        let listen_text = self.listen.clone().or(file.listen).unwrap_or_else(|| "127.0.0.1:8030".into());
        let listen = listen_text.parse::<SocketAddr>().map_err(|_| ConfigError::Invalid {
            setting: "--listen",
            value: listen_text.clone(),
            reason: "expected HOST:PORT with an IP address, e.g. 127.0.0.1:8030",
        })?;
        let data_dir = self.data_dir.clone().or(file.data_dir).unwrap_or_else(|| PathBuf::from("./pennant-data"));
        if data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                setting: "--data-dir",
                value: String::new(),
                reason: "must not be empty",
            });
        }
        let database_url = match self.database_url.clone().or(file.database_url) {
            Some(url) => {
                if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(ConfigError::Invalid {
                        setting: "--database-url",
                        value: url,
                        reason: "use postgres://USER@HOST:PORT/DB or sqlite://PATH",
                    });
                }
                url
            }
            None => format!("sqlite://{}?mode=rwc", data_dir.join("pennant.db").display()),
        };
        let max_body_bytes = self.max_body_bytes.or(file.max_body_bytes).unwrap_or(1 << 20);
        if !(1024..=64 << 20).contains(&max_body_bytes) {
            return Err(ConfigError::Invalid {
                setting: "--max-body-bytes",
                value: max_body_bytes.to_string(),
                reason: "must be between 1024 and 67108864",
            });
        }
        let rate_limit_per_second = self.rate_limit_per_second.or(file.rate_limit_per_second).unwrap_or(100);
        if rate_limit_per_second == 0 {
            return Err(ConfigError::Invalid {
                setting: "--rate-limit-per-second",
                value: "0".into(),
                reason: "must be at least 1",
            });
        }
        let rate_limit_burst = self.rate_limit_burst.or(file.rate_limit_burst).unwrap_or(200);
        if rate_limit_burst == 0 {
            return Err(ConfigError::Invalid {
                setting: "--rate-limit-burst",
                value: "0".into(),
                reason: "must be at least 1",
            });
        }
        let shutdown_grace_seconds = self.shutdown_grace_seconds.or(file.shutdown_grace_seconds).unwrap_or(10);
        if shutdown_grace_seconds > 600 {
            return Err(ConfigError::Invalid {
                setting: "--shutdown-grace-seconds",
                value: shutdown_grace_seconds.to_string(),
                reason: "must be at most 600",
            });
        }
        let log = self.log.clone().or(file.log).unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&log).is_err() {
            return Err(ConfigError::Invalid {
                setting: "--log",
                value: log,
                reason: "not a valid log filter, e.g. info or pennant=debug",
            });
        }
        let role = match self.role.clone().or(file.role).as_deref() {
            None | Some("all") => Role::All,
            Some("api") => Role::Api,
            Some("stream") => Role::Stream,
            Some("events") => Role::Events,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    setting: "--role",
                    value: other.to_owned(),
                    reason: "expected all, api, stream or events",
                });
            }
        };
        let reuse_port = self.reuse_port.or(file.reuse_port).unwrap_or(false);
        let nats_url = self.nats_url.clone().or(file.nats_url);
        if let Some(url) = &nats_url
            && !(url.starts_with("nats://") || url.starts_with("tls://"))
        {
            return Err(ConfigError::Invalid {
                setting: "--nats-url",
                value: url.clone(),
                reason: "use nats://HOST:PORT",
            });
        }
        let redis_url = self.redis_url.clone().or(file.redis_url);
        if let Some(url) = &redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return Err(ConfigError::Invalid {
                setting: "--redis-url",
                value: url.clone(),
                reason: "use redis://HOST:PORT[/DB]",
            });
        }
        let namespace = self.namespace.clone().or(file.namespace).unwrap_or_else(|| "pennant".into());
        if namespace.is_empty()
            || namespace.len() > 64
            || !namespace.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ConfigError::Invalid {
                setting: "--namespace",
                value: namespace,
                reason: "1 to 64 letters, digits, '-' or '_'",
            });
        }
        let lifetime = self.stream_max_connection_seconds.or(file.stream_max_connection_seconds).unwrap_or(3600);
        if (1..10).contains(&lifetime) {
            return Err(ConfigError::Invalid {
                setting: "--stream-max-connection-seconds",
                value: lifetime.to_string(),
                reason: "must be 0 (unlimited) or at least 10",
            });
        }
        let stream_heartbeat_seconds = self.stream_heartbeat_seconds.or(file.stream_heartbeat_seconds).unwrap_or(60);
        if !(1..=170).contains(&stream_heartbeat_seconds) {
            return Err(ConfigError::Invalid {
                setting: "--stream-heartbeat-seconds",
                value: stream_heartbeat_seconds.to_string(),
                reason: "must be between 1 and 170 (SDKs drop streams silent for 3 minutes or more)",
            });
        }
        let events_max_body_bytes = self.events_max_body_bytes.or(file.events_max_body_bytes).unwrap_or(8 << 20);
        if !(1024..=64 << 20).contains(&events_max_body_bytes) {
            return Err(ConfigError::Invalid {
                setting: "--events-max-body-bytes",
                value: events_max_body_bytes.to_string(),
                reason: "must be between 1024 and 67108864",
            });
        }
        let events_queue_max_batches =
            self.events_queue_max_batches.or(file.events_queue_max_batches).unwrap_or(100_000);
        if events_queue_max_batches == 0 {
            return Err(ConfigError::Invalid {
                setting: "--events-queue-max-batches",
                value: "0".into(),
                reason: "must be at least 1",
            });
        }
        let events_queue_max_bytes = self.events_queue_max_bytes.or(file.events_queue_max_bytes).unwrap_or(1 << 30);
        if events_queue_max_bytes < events_max_body_bytes as u64 {
            return Err(ConfigError::Invalid {
                setting: "--events-queue-max-bytes",
                value: events_queue_max_bytes.to_string(),
                reason: "must be at least --events-max-body-bytes, so that one largest batch fits",
            });
        }
        Ok(ServeConfig {
            role,
            events_max_body_bytes,
            events_queue_max_batches,
            events_queue_max_bytes,
            events_processor,
            reuse_port,
            nats_url,
            redis_url,
            namespace,
            stream_max_connection_seconds: (lifetime > 0).then_some(lifetime),
            stream_heartbeat_seconds,
            listen,
            data_dir,
            database_url,
            max_body_bytes,
            rate_limit_per_second,
            rate_limit_burst,
            shutdown_grace_seconds,
            log,
        })
    }
}

/// Event processors per process by default (see `--events-processors`).
const DEFAULT_EVENT_PROCESSORS: usize = 2;

impl ServeArgs {
    fn processor_settings(&self, file: &FileConfig) -> Result<ProcessorSettings, ConfigError> {
        let defaults = pennant_insights::ProcessorOptions::default();
        let count = self.events_processors.or(file.events_processors).unwrap_or(DEFAULT_EVENT_PROCESSORS);
        if !(1..=16).contains(&count) {
            return Err(ConfigError::Invalid {
                setting: "--events-processors",
                value: count.to_string(),
                reason: "must be between 1 and 16",
            });
        }
        let max_batches =
            self.events_processor_max_batches.or(file.events_processor_max_batches).unwrap_or(defaults.max_batches);
        if !(1..=10_000).contains(&max_batches) {
            return Err(ConfigError::Invalid {
                setting: "--events-processor-max-batches",
                value: max_batches.to_string(),
                reason: "must be between 1 and 10000",
            });
        }
        let max_events =
            self.events_processor_max_events.or(file.events_processor_max_events).unwrap_or(defaults.max_events);
        if !(1..=1_000_000).contains(&max_events) {
            return Err(ConfigError::Invalid {
                setting: "--events-processor-max-events",
                value: max_events.to_string(),
                reason: "must be between 1 and 1000000",
            });
        }
        let default_flush_ms = u64::try_from(defaults.flush_interval.as_millis()).unwrap_or(u64::MAX);
        let flush_ms = self.events_processor_flush_ms.or(file.events_processor_flush_ms).unwrap_or(default_flush_ms);
        if !(1..=60_000).contains(&flush_ms) {
            return Err(ConfigError::Invalid {
                setting: "--events-processor-flush-ms",
                value: flush_ms.to_string(),
                reason: "must be between 1 and 60000",
            });
        }
        let refresh = self
            .events_context_refresh_seconds
            .or(file.events_context_refresh_seconds)
            .unwrap_or(defaults.context_refresh.as_secs());
        if refresh > 86_400 {
            return Err(ConfigError::Invalid {
                setting: "--events-context-refresh-seconds",
                value: refresh.to_string(),
                reason: "must be between 0 (write every sighting) and 86400",
            });
        }
        let context_cache = self.events_context_cache.or(file.events_context_cache).unwrap_or(defaults.context_cache);
        if context_cache > 100_000_000 {
            return Err(ConfigError::Invalid {
                setting: "--events-context-cache",
                value: context_cache.to_string(),
                reason: "must be between 0 (remember none) and 100000000",
            });
        }
        Ok(ProcessorSettings {
            count,
            max_batches,
            max_events,
            flush_interval: Duration::from_millis(flush_ms),
            context_refresh: Duration::from_secs(refresh),
            context_cache,
            prefetch: self.events_processor_prefetch.or(file.events_processor_prefetch).unwrap_or(defaults.prefetch),
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Unreadable { path: path.display().to_string(), reason: e.to_string() })?;
    toml::from_str(&text)
        .map_err(|e| ConfigError::InvalidFile { path: path.display().to_string(), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServeArgs {
        ServeArgs::default()
    }

    #[test]
    fn defaults() {
        let c = args().resolve().unwrap();
        assert_eq!(c.listen, "127.0.0.1:8030".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("./pennant-data"));
        assert_eq!(c.database_url, "sqlite://./pennant-data/pennant.db?mode=rwc");
        assert_eq!((c.max_body_bytes, c.rate_limit_per_second, c.rate_limit_burst), (1 << 20, 100, 200));
        assert_eq!((c.role, c.reuse_port, c.nats_url, c.redis_url), (Role::All, false, None, None));
        assert_eq!((c.stream_max_connection_seconds, c.stream_heartbeat_seconds), (Some(3600), 60));
        assert_eq!(
            (c.events_max_body_bytes, c.events_queue_max_batches, c.events_queue_max_bytes),
            (8 << 20, 100_000, 1 << 30)
        );
        let p = c.events_processor;
        assert_eq!((p.count, p.max_batches, p.max_events), (2, 100, 10_000));
        assert_eq!(p.flush_interval, Duration::from_millis(200));
        assert_eq!((p.context_refresh, p.context_cache), (Duration::from_secs(60), 250_000));
        assert_eq!(p.options(), pennant_insights::ProcessorOptions::default());
    }

    #[test]
    fn processor_settings_come_from_the_file_and_flags() {
        let dir = std::env::temp_dir().join(format!("pennant-config-processor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pennant.toml");
        std::fs::write(
            &file,
            "events_processor_max_batches = 50\nevents_processor_max_events = 500\nevents_processor_flush_ms = 20\n\
             events_context_refresh_seconds = 0\nevents_context_cache = 7\nevents_processor_prefetch = false\n\
             events_processors = 3\n",
        )
        .unwrap();
        let a = ServeArgs { config: Some(file), events_processor_max_events: Some(900), ..args() };
        let p = a.resolve().unwrap().events_processor;
        assert_eq!(p.count, 3);
        let o = p.options();
        assert_eq!((o.max_batches, o.max_events, o.flush_interval), (50, 900, Duration::from_millis(20)));
        assert_eq!((o.context_refresh, o.context_cache, o.prefetch), (Duration::ZERO, 7, false));
        assert_eq!(o.idle_wait, pennant_insights::ProcessorOptions::default().idle_wait);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("pennant-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pennant.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:9000\"\nrate_limit_per_second = 5\ndata_dir = \"/var/lib/pennant\"\n",
        )
        .unwrap();
        let mut a = args();
        a.config = Some(file.clone());
        a.listen = Some("127.0.0.1:9001".into());
        let c = a.resolve().unwrap();
        assert_eq!(c.listen, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(c.rate_limit_per_second, 5);
        assert_eq!(c.database_url, "sqlite:///var/lib/pennant/pennant.db?mode=rwc");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn each_invalid_setting_is_refused_with_its_name() {
        let cases: Vec<(ServeArgs, &str)> = vec![
            (ServeArgs { listen: Some("localhost".into()), ..args() }, "--listen"),
            (ServeArgs { listen: Some("127.0.0.1:99999".into()), ..args() }, "--listen"),
            (ServeArgs { data_dir: Some(PathBuf::new()), ..args() }, "--data-dir"),
            (ServeArgs { database_url: Some("mysql://x".into()), ..args() }, "--database-url"),
            (ServeArgs { max_body_bytes: Some(10), ..args() }, "--max-body-bytes"),
            (ServeArgs { rate_limit_per_second: Some(0), ..args() }, "--rate-limit-per-second"),
            (ServeArgs { rate_limit_burst: Some(0), ..args() }, "--rate-limit-burst"),
            (ServeArgs { shutdown_grace_seconds: Some(6000), ..args() }, "--shutdown-grace-seconds"),
            (ServeArgs { log: Some("[[[".into()), ..args() }, "--log"),
            (ServeArgs { role: Some("everything".into()), ..args() }, "--role"),
            (ServeArgs { nats_url: Some("http://127.0.0.1:4222".into()), ..args() }, "--nats-url"),
            (ServeArgs { redis_url: Some("127.0.0.1:6379".into()), ..args() }, "--redis-url"),
            (ServeArgs { namespace: Some(String::new()), ..args() }, "--namespace"),
            (ServeArgs { namespace: Some("a.b".into()), ..args() }, "--namespace"),
            (ServeArgs { stream_max_connection_seconds: Some(3), ..args() }, "--stream-max-connection-seconds"),
            (ServeArgs { stream_heartbeat_seconds: Some(0), ..args() }, "--stream-heartbeat-seconds"),
            (ServeArgs { stream_heartbeat_seconds: Some(180), ..args() }, "--stream-heartbeat-seconds"),
            (ServeArgs { events_max_body_bytes: Some(100), ..args() }, "--events-max-body-bytes"),
            (ServeArgs { events_max_body_bytes: Some(128 << 20), ..args() }, "--events-max-body-bytes"),
            (ServeArgs { events_queue_max_batches: Some(0), ..args() }, "--events-queue-max-batches"),
            (ServeArgs { events_queue_max_bytes: Some(4096), ..args() }, "--events-queue-max-bytes"),
            (ServeArgs { events_processors: Some(0), ..args() }, "--events-processors"),
            (ServeArgs { events_processors: Some(17), ..args() }, "--events-processors"),
            (ServeArgs { events_processor_max_batches: Some(0), ..args() }, "--events-processor-max-batches"),
            (ServeArgs { events_processor_max_batches: Some(10_001), ..args() }, "--events-processor-max-batches"),
            (ServeArgs { events_processor_max_events: Some(0), ..args() }, "--events-processor-max-events"),
            (ServeArgs { events_processor_max_events: Some(1_000_001), ..args() }, "--events-processor-max-events"),
            (ServeArgs { events_processor_flush_ms: Some(0), ..args() }, "--events-processor-flush-ms"),
            (ServeArgs { events_processor_flush_ms: Some(60_001), ..args() }, "--events-processor-flush-ms"),
            (ServeArgs { events_context_refresh_seconds: Some(86_401), ..args() }, "--events-context-refresh-seconds"),
            (ServeArgs { events_context_cache: Some(100_000_001), ..args() }, "--events-context-cache"),
        ];
        for (a, setting) in cases {
            let err = a.resolve().unwrap_err();
            assert!(matches!(&err, ConfigError::Invalid { setting: s, .. } if *s == setting), "{setting}: {err}");
        }
    }

    #[test]
    fn bad_files_are_refused() {
        let missing = ServeArgs { config: Some("/nonexistent/pennant.toml".into()), ..args() };
        assert!(matches!(missing.resolve(), Err(ConfigError::Unreadable { .. })));
        let dir = std::env::temp_dir().join(format!("pennant-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        std::fs::write(&file, "listen_port = 3\n").unwrap();
        let unknown = ServeArgs { config: Some(file.clone()), ..args() };
        assert!(matches!(unknown.resolve(), Err(ConfigError::InvalidFile { .. })));
        std::fs::write(&file, "listen = [").unwrap();
        assert!(matches!(ServeArgs { config: Some(file), ..args() }.resolve(), Err(ConfigError::InvalidFile { .. })));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
