//! What a relay mirrors and where from.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::RelayError;

/// Where the upstream service is. For a Pennant upstream the three are one URL; LaunchDarkly's service has one
/// host each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Polling endpoints (`/sdk/latest-all`).
    pub base_uri: String,
    /// Streaming endpoint (`/all`).
    pub stream_uri: String,
    /// Analytics events (`/bulk`, …).
    pub events_uri: String,
}

impl Upstream {
    /// One URL for everything (a Pennant node, or another relay).
    pub fn single(uri: impl Into<String>) -> Upstream {
        let uri = uri.into();
        Upstream { base_uri: uri.clone(), stream_uri: uri.clone(), events_uri: uri }
    }
}

/// One mirrored environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentConfig {
    /// A name for logs, status and the saved payload's file (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// The environment's server-side SDK key: the relay connects upstream with it, and server-side SDKs use it.
    pub sdk_key: String,
    /// The mobile key, to serve mobile SDKs.
    pub mobile_key: Option<String>,
    /// The client-side ID, to serve JavaScript SDKs.
    pub client_side_id: Option<String>,
    /// Whether client-side requests must carry the secure-mode hash (as the environment is set upstream).
    pub secure_mode: bool,
    /// Serve this file (the `/sdk/latest-all` JSON, such as a payload the relay saved) instead of the upstream;
    /// it is watched for changes.
    pub offline_file: Option<PathBuf>,
}

/// The relay's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// The upstream service; needed unless every environment is offline.
    pub upstream: Option<Upstream>,
    /// The environments.
    pub environments: Vec<EnvironmentConfig>,
    /// Where each environment's last good payload is saved, so that the relay restarts without the upstream.
    /// `None`: nothing is saved.
    pub data_dir: Option<PathBuf>,
    /// How long posted analytics batches wait to be joined before they go upstream.
    pub events_flush_interval: Duration,
    /// Largest analytics request body accepted, compressed or not (bytes).
    pub events_max_body_bytes: usize,
    /// The upstream's connect timeout, and how long a stream may stay silent before it is reconnected.
    pub connect_timeout: Duration,
}

impl RelayConfig {
    /// Settings with defaults for everything but the upstream and the environments.
    pub fn new(upstream: Option<Upstream>, environments: Vec<EnvironmentConfig>) -> RelayConfig {
        RelayConfig {
            upstream,
            environments,
            data_dir: None,
            events_flush_interval: Duration::from_millis(200),
            events_max_body_bytes: 8 << 20,
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Checks the settings; the error names what is wrong.
    pub fn validate(&self) -> Result<(), RelayError> {
        let invalid = |message: String| Err(RelayError::Config(message));
        if self.environments.is_empty() {
            return invalid("no environment to relay: give at least one SDK key".into());
        }
        if let Some(upstream) = &self.upstream {
            for (name, uri) in [
                ("upstream", &upstream.base_uri),
                ("stream URI", &upstream.stream_uri),
                ("events URI", &upstream.events_uri),
            ] {
                if !(uri.starts_with("http://") || uri.starts_with("https://")) || reqwest::Url::parse(uri).is_err() {
                    return invalid(format!("the {name} {uri:?} is not an http(s) URL"));
                }
            }
        }
        let mut names = HashSet::new();
        let mut keys = HashSet::new();
        for env in &self.environments {
            let name = &env.name;
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
                return invalid(format!("environment name {name:?}: use letters, digits, '-', '_' and '.'"));
            }
            if !names.insert(name.as_str()) {
                return invalid(format!("environment name {name:?} is used twice"));
            }
            if env.sdk_key.trim().is_empty() {
                return invalid(format!("environment {name:?} has no SDK key"));
            }
            for key in [Some(&env.sdk_key), env.mobile_key.as_ref(), env.client_side_id.as_ref()].into_iter().flatten()
            {
                if key.trim().is_empty() || key.chars().any(char::is_whitespace) {
                    return invalid(format!("environment {name:?} has an empty key or one with spaces"));
                }
                if !keys.insert(key.as_str()) {
                    return invalid(format!("environment {name:?} uses a key that another environment uses too"));
                }
            }
            if env.offline_file.is_none() && self.upstream.is_none() {
                return invalid(format!("environment {name:?} needs an upstream URL or an offline file"));
            }
        }
        if self.events_flush_interval.is_zero() || self.events_flush_interval > Duration::from_secs(60) {
            return invalid("the events flush interval must be between 1 ms and 60 s".into());
        }
        if self.events_max_body_bytes < 1024 {
            return invalid("the events body limit must be at least 1024 bytes".into());
        }
        if self.connect_timeout.is_zero() {
            return invalid("the connect timeout must not be zero".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str, key: &str) -> EnvironmentConfig {
        EnvironmentConfig {
            name: name.into(),
            sdk_key: key.into(),
            mobile_key: None,
            client_side_id: None,
            secure_mode: false,
            offline_file: None,
        }
    }

    fn valid() -> RelayConfig {
        RelayConfig::new(Some(Upstream::single("http://127.0.0.1:8030")), vec![env("prod", "sdk-1")])
    }

    #[test]
    fn a_minimal_config_is_valid() {
        valid().validate().unwrap();
        let offline = RelayConfig::new(
            None,
            vec![EnvironmentConfig { offline_file: Some("payload.json".into()), ..env("prod", "sdk-1") }],
        );
        offline.validate().unwrap();
    }

    #[test]
    fn each_invalid_setting_is_refused_with_a_reason() {
        let cases: Vec<(RelayConfig, &str)> = vec![
            (RelayConfig { environments: vec![], ..valid() }, "no environment"),
            (RelayConfig { upstream: Some(Upstream::single("ftp://x")), ..valid() }, "upstream"),
            (
                RelayConfig {
                    upstream: Some(Upstream { events_uri: "nope".into(), ..Upstream::single("http://a") }),
                    ..valid()
                },
                "events URI",
            ),
            (RelayConfig { upstream: None, ..valid() }, "needs an upstream"),
            (RelayConfig { environments: vec![env("a b", "sdk-1")], ..valid() }, "environment name"),
            (RelayConfig { environments: vec![env("", "sdk-1")], ..valid() }, "environment name"),
            (RelayConfig { environments: vec![env("a", "sdk-1"), env("a", "sdk-2")], ..valid() }, "used twice"),
            (RelayConfig { environments: vec![env("a", "sdk-1"), env("b", "sdk-1")], ..valid() }, "another"),
            (RelayConfig { environments: vec![env("a", " ")], ..valid() }, "no SDK key"),
            (
                RelayConfig {
                    environments: vec![EnvironmentConfig { mobile_key: Some("m 1".into()), ..env("a", "sdk-1") }],
                    ..valid()
                },
                "spaces",
            ),
            (RelayConfig { events_flush_interval: Duration::ZERO, ..valid() }, "flush interval"),
            (RelayConfig { events_max_body_bytes: 10, ..valid() }, "body limit"),
            (RelayConfig { connect_timeout: Duration::ZERO, ..valid() }, "connect timeout"),
        ];
        for (config, expected) in cases {
            let error = config.validate().expect_err(expected).to_string();
            assert!(error.contains(expected), "{error:?} should mention {expected:?}");
        }
    }
}
