//! `pennant relay`: mirrors environments of an upstream Pennant (or LaunchDarkly) service and serves SDKs locally
//! (see the `pennant-relay` crate). Settings from a TOML file, `PENNANT_RELAY_*` environment variables and flags
//! (flags win over the environment, which wins over the file).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusBuilder;
use pennant_relay::{EnvironmentConfig, Relay, RelayConfig, Upstream};
use serde::Deserialize;

/// Command-line flags (each also readable from its `PENNANT_RELAY_*` environment variable).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RelayArgs {
    /// TOML configuration file (several environments, each with its keys; see the README).
    #[arg(long, env = "PENNANT_RELAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// The upstream service's URL (a Pennant node, or another relay): streaming, polling and events.
    #[arg(long, env = "PENNANT_RELAY_UPSTREAM")]
    pub upstream: Option<String>,
    /// The upstream's streaming URL, when it differs (LaunchDarkly: https://stream.launchdarkly.com).
    #[arg(long, env = "PENNANT_RELAY_STREAM_URI")]
    pub stream_uri: Option<String>,
    /// The upstream's events URL, when it differs (LaunchDarkly: https://events.launchdarkly.com).
    #[arg(long, env = "PENNANT_RELAY_EVENTS_URI")]
    pub events_uri: Option<String>,
    /// An environment's server-side SDK key; repeat for several environments (comma-separated in the variable).
    #[arg(long = "sdk-key", env = "PENNANT_RELAY_SDK_KEYS", value_delimiter = ',')]
    pub sdk_keys: Vec<String>,
    /// Serve this saved payload (`/sdk/latest-all` JSON, such as one the relay saved) with no upstream: one
    /// environment, whose SDK key is given with --sdk-key. The file is watched for changes.
    #[arg(long, env = "PENNANT_RELAY_OFFLINE")]
    pub offline: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "PENNANT_RELAY_LISTEN")]
    pub listen: Option<String>,
    /// Where each environment's last good payload is saved, so that the relay restarts without the upstream.
    #[arg(long, env = "PENNANT_RELAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Milliseconds posted analytics batches wait to be joined before they are forwarded upstream.
    #[arg(long, env = "PENNANT_RELAY_EVENTS_FLUSH_MS")]
    pub events_flush_ms: Option<u64>,
    /// Log filter, e.g. `info` or `pennant_relay=debug,info`.
    #[arg(long, env = "PENNANT_RELAY_LOG")]
    pub log: Option<String>,
}

/// The same settings as a file, with environments.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
struct FileConfig {
    upstream: Option<String>,
    stream_uri: Option<String>,
    events_uri: Option<String>,
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    events_flush_ms: Option<u64>,
    log: Option<String>,
    #[serde(default)]
    environment: Vec<FileEnvironment>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
struct FileEnvironment {
    name: Option<String>,
    sdk_key: String,
    mobile_key: Option<String>,
    client_side_id: Option<String>,
    #[serde(default)]
    secure_mode: bool,
    offline_file: Option<PathBuf>,
}

/// Validated settings of the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySettings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Log filter.
    pub log: String,
    /// The relay's own settings.
    pub relay: RelayConfig,
}

impl RelayArgs {
    /// The settings, or what is wrong with them.
    pub fn resolve(&self) -> anyhow::Result<RelaySettings> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read configuration file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("invalid configuration file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let listen_text = self.listen.clone().or(file.listen).unwrap_or_else(|| "127.0.0.1:8031".into());
        let listen = listen_text
            .parse::<SocketAddr>()
            .map_err(|_| anyhow::anyhow!("--listen {listen_text:?}: expected HOST:PORT with an IP address"))?;
        let upstream = self.upstream.clone().or(file.upstream).map(|base| {
            let base = base.trim_end_matches('/').to_owned();
            Upstream {
                stream_uri: self.stream_uri.clone().or(file.stream_uri.clone()).unwrap_or_else(|| base.clone()),
                events_uri: self.events_uri.clone().or(file.events_uri.clone()).unwrap_or_else(|| base.clone()),
                base_uri: base,
            }
        });
        if upstream.is_none() && (self.stream_uri.is_some() || self.events_uri.is_some()) {
            anyhow::bail!("--stream-uri and --events-uri need --upstream");
        }
        let mut environments: Vec<EnvironmentConfig> = file
            .environment
            .into_iter()
            .enumerate()
            .map(|(i, e)| EnvironmentConfig {
                name: e.name.unwrap_or_else(|| format!("env-{}", i + 1)),
                sdk_key: e.sdk_key,
                mobile_key: e.mobile_key,
                client_side_id: e.client_side_id,
                secure_mode: e.secure_mode,
                offline_file: e.offline_file,
            })
            .collect();
        let first_flag_env = environments.len();
        for (i, key) in self.sdk_keys.iter().map(|k| k.trim()).filter(|k| !k.is_empty()).enumerate() {
            environments.push(EnvironmentConfig {
                name: format!("env-{}", first_flag_env + i + 1),
                sdk_key: key.to_owned(),
                mobile_key: None,
                client_side_id: None,
                secure_mode: false,
                offline_file: None,
            });
        }
        if let Some(offline) = &self.offline {
            if environments.len() != 1 {
                anyhow::bail!(
                    "--offline serves one environment: give exactly one --sdk-key (several environments: use a \
                     configuration file with offline_file per environment)"
                );
            }
            environments[0].offline_file = Some(offline.clone());
        }
        let mut relay = RelayConfig::new(upstream, environments);
        relay.data_dir = self.data_dir.clone().or(file.data_dir);
        if let Some(ms) = self.events_flush_ms.or(file.events_flush_ms) {
            relay.events_flush_interval = Duration::from_millis(ms);
        }
        relay.validate()?;
        let log = self.log.clone().or(file.log).unwrap_or_else(|| "info".into());
        Ok(RelaySettings { listen, log, relay })
    }
}

/// Runs the relay until SIGINT or SIGTERM.
pub fn run(args: &RelayArgs) -> anyhow::Result<ExitCode> {
    let settings = args.resolve()?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&settings.log))
        .with_writer(std::io::stderr)
        .init();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(relay(settings))?;
    Ok(ExitCode::SUCCESS)
}

async fn relay(settings: RelaySettings) -> anyhow::Result<()> {
    let metrics = PrometheusBuilder::new().install_recorder().context("installing the metrics recorder")?;
    let (stopping, _) = tokio::sync::watch::channel(false);
    let relay = Relay::start(settings.relay.clone(), stopping.subscribe())?;
    let app = pennant_relay::router(&relay)
        .merge(Router::new().route("/metrics", get(move || std::future::ready(metrics.render()))))
        .layer(tower_http::trace::TraceLayer::new_for_http());
    let listener =
        crate::serve::bind(settings.listen, false).with_context(|| format!("listening on {}", settings.listen))?;
    let addr = listener.local_addr()?;

    let upstream = match &settings.relay.upstream {
        Some(u) => format!("upstream {}", u.base_uri),
        None => "offline".to_owned(),
    };
    println!("Pennant relay {} is running at http://{addr} ({upstream})", env!("CARGO_PKG_VERSION"));
    println!("Point SDKs' base, stream and events URIs at http://{addr}; status at http://{addr}/status");
    let ready = relay.wait_for_data(Duration::from_secs(10)).await;
    for env in relay.status() {
        let served = if env.has_data { "serving" } else { "waiting for data" };
        let error = env.last_error.map(|e| format!(" (last error: {e})")).unwrap_or_default();
        println!("  environment {}: {served}, upstream {}{error}", env.name, env.state);
    }
    if !ready {
        println!("Some environments have no data yet: their SDKs get 503 until it arrives.");
    }
    use std::io::Write as _;
    let _ = std::io::stdout().flush();

    let stop = stopping.clone();
    tokio::spawn(async move {
        crate::serve::shutdown_signal().await;
        tracing::info!("shutting down: closing streams");
        stop.send_replace(true);
    });
    let lean = Some(relay.stream_state());
    pennant_stream::serve(listener, app, stopping.subscribe(), lean).await.context("serving HTTP")?;
    relay.close().await;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> RelayArgs {
        RelayArgs {
            upstream: Some("http://127.0.0.1:8030/".into()),
            sdk_keys: vec!["sdk-a".into()],
            ..RelayArgs::default()
        }
    }

    #[test]
    fn flags_give_one_environment_per_key_on_one_upstream() {
        let settings = RelayArgs { sdk_keys: vec!["sdk-a".into(), "sdk-b".into()], ..args() }.resolve().unwrap();
        assert_eq!(settings.listen, "127.0.0.1:8031".parse().unwrap());
        let upstream = settings.relay.upstream.unwrap();
        assert_eq!(upstream, Upstream::single("http://127.0.0.1:8030"));
        let names: Vec<_> = settings.relay.environments.iter().map(|e| (e.name.as_str(), e.sdk_key.as_str())).collect();
        assert_eq!(names, [("env-1", "sdk-a"), ("env-2", "sdk-b")]);
    }

    #[test]
    fn a_file_gives_environments_with_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(
            &path,
            r#"
upstream = "http://pennant:8030"
events_uri = "http://events:8030"
data_dir = "/var/lib/relay"
[[environment]]
name = "production"
sdk_key = "sdk-p"
mobile_key = "mob-p"
client_side_id = "cs-p"
secure_mode = true
"#,
        )
        .unwrap();
        let settings = RelayArgs { config: Some(path), ..RelayArgs::default() }.resolve().unwrap();
        let env = &settings.relay.environments[0];
        assert_eq!(
            (env.name.as_str(), env.mobile_key.as_deref(), env.secure_mode),
            ("production", Some("mob-p"), true)
        );
        let upstream = settings.relay.upstream.unwrap();
        assert_eq!(
            (upstream.stream_uri.as_str(), upstream.events_uri.as_str()),
            ("http://pennant:8030", "http://events:8030")
        );
        assert_eq!(settings.relay.data_dir, Some(PathBuf::from("/var/lib/relay")));
    }

    #[test]
    fn each_invalid_setting_is_refused_with_a_reason() {
        let cases: Vec<(RelayArgs, &str)> = vec![
            (RelayArgs { sdk_keys: vec![], ..args() }, "no environment"),
            (RelayArgs { upstream: None, ..args() }, "needs an upstream URL or an offline file"),
            (RelayArgs { upstream: Some("localhost:8030".into()), ..args() }, "not an http(s) URL"),
            (RelayArgs { upstream: None, stream_uri: Some("http://s".into()), ..args() }, "need --upstream"),
            (RelayArgs { listen: Some("localhost".into()), ..args() }, "--listen"),
            (
                RelayArgs { sdk_keys: vec!["a".into(), "b".into()], offline: Some("p.json".into()), ..args() },
                "--offline serves one environment",
            ),
            (RelayArgs { sdk_keys: vec!["a".into(), "a".into()], ..args() }, "another environment"),
            (RelayArgs { events_flush_ms: Some(0), ..args() }, "flush interval"),
            (RelayArgs { config: Some("/no/such/relay.toml".into()), ..args() }, "cannot read"),
        ];
        for (args, expected) in cases {
            let error = format!("{:#}", args.resolve().expect_err(expected));
            assert!(error.contains(expected), "{error:?} should mention {expected:?}");
        }
    }

    #[test]
    fn unknown_file_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, "upstream = \"http://x\"\nsdk_keys = [\"a\"]\n").unwrap();
        let error = format!("{:#}", RelayArgs { config: Some(path), ..RelayArgs::default() }.resolve().unwrap_err());
        assert!(error.contains("invalid configuration file") && error.contains("sdk_keys"), "{error}");
    }
}
