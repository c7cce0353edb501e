//! The client's configuration: where to connect, how to fetch flag data, timeouts, and validation.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pennant_eval::{AttrRef, AttrRefError};
use reqwest::Url;

use crate::source::DataSource;
use crate::test_data::TestData;

/// The address `pennant serve` listens on by default; every URI defaults to it.
pub const DEFAULT_URI: &str = "http://127.0.0.1:8030";
/// How long a connection attempt may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may stay silent (not even a heartbeat comment) before it is dropped.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// The first delay before reconnecting a stream; it doubles with each failure in a row.
pub const DEFAULT_INITIAL_RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// The longest delay before reconnecting a stream.
pub const DEFAULT_MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);
/// How often polling mode asks for the data.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(30);
/// How often the file data source checks whether its files changed.
pub const DEFAULT_FILE_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Most analytics events held between flushes (and queued between the application and the event processor).
pub const DEFAULT_EVENTS_CAPACITY: usize = 10_000;
/// How often analytics events are sent.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// How many context keys the event processor remembers, to send one `index` event per context.
pub const DEFAULT_CONTEXT_KEYS_CAPACITY: usize = 1000;
/// How often the remembered context keys are forgotten (each context then gets a new `index` event).
pub const DEFAULT_CONTEXT_KEYS_FLUSH_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// An invalid configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// No SDK key, where the data source needs one.
    #[error("the SDK key is empty")]
    EmptySdkKey,
    /// The SDK key cannot be sent as an HTTP header value.
    #[error("the SDK key contains characters that cannot be sent in an HTTP header")]
    InvalidSdkKey,
    /// A URI that is not an absolute `http` or `https` URL with a host.
    #[error("{setting} {uri:?} is not usable: {reason}")]
    InvalidUri {
        /// Which setting.
        setting: &'static str,
        /// The value given.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A duration that must be positive is zero.
    #[error("{setting} must be greater than zero")]
    ZeroDuration {
        /// Which setting.
        setting: &'static str,
    },
    /// The initial reconnect delay is longer than the maximum.
    #[error("the initial reconnect delay ({initial:?}) is longer than the maximum ({max:?})")]
    ReconnectDelays {
        /// The initial delay.
        initial: Duration,
        /// The maximum delay.
        max: Duration,
    },
    /// A capacity that must be positive is zero.
    #[error("{setting} must be greater than zero")]
    ZeroCapacity {
        /// Which setting.
        setting: &'static str,
    },
    /// The file data source was given no file.
    #[error("the file data source needs at least one file")]
    NoFiles,
    /// A private attribute that is not a valid attribute reference.
    #[error("private attribute {reference:?} is not a valid attribute reference: {error}")]
    InvalidPrivateAttribute {
        /// The reference given.
        reference: String,
        /// What is wrong with it.
        error: AttrRefError,
    },
}

/// Where the client gets its flag data.
#[derive(Clone, Default)]
pub enum DataSourceConfig {
    /// Server-sent events at `GET {stream_uri}/all` (the default).
    #[default]
    Streaming,
    /// `GET {base_uri}/sdk/latest-all` at this interval, with `If-None-Match`.
    Polling {
        /// Time between the start of one request and the next.
        interval: Duration,
    },
    /// Local JSON files ([`ConfigBuilder::files`]), each LaunchDarkly's `/sdk/latest-all` body
    /// (`{"flags": {…}, "segments": {…}}`) or its file-data-source shorthand `{"flagValues": {key: value}}` (or
    /// both), merged; checked for changes (modification time and length) at `poll_interval`. No SDK key is needed.
    File {
        /// The files, merged; a key defined in two of them is an error.
        paths: Vec<PathBuf>,
        /// How often the files' modification times and lengths are checked.
        poll_interval: Duration,
    },
    /// Flags defined in code, for tests ([`TestData`]).
    TestData(TestData),
    /// Any other implementation of [`DataSource`].
    Custom(Arc<dyn DataSource>),
}

impl fmt::Debug for DataSourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSourceConfig::Streaming => f.write_str("Streaming"),
            DataSourceConfig::Polling { interval } => f.debug_struct("Polling").field("interval", interval).finish(),
            DataSourceConfig::File { paths, poll_interval } => {
                f.debug_struct("File").field("paths", paths).field("poll_interval", poll_interval).finish()
            }
            DataSourceConfig::TestData(_) => f.write_str("TestData"),
            DataSourceConfig::Custom(source) => f.debug_tuple("Custom").field(source).finish(),
        }
    }
}

/// A validated configuration; build one with [`Config::builder`].
#[derive(Clone)]
pub struct Config {
    sdk_key: String,
    base_uri: Url,
    stream_uri: Url,
    events_uri: Url,
    connect_timeout: Duration,
    read_timeout: Duration,
    initial_reconnect_delay: Duration,
    max_reconnect_delay: Duration,
    offline: bool,
    events_enabled: bool,
    events: EventsSettings,
    private_attributes: Vec<AttrRef>,
    data_source: DataSourceConfig,
}

/// The analytics-event settings, as the builder and the config hold them.
#[derive(Debug, Clone)]
struct EventsSettings {
    capacity: usize,
    flush_interval: Duration,
    context_keys_capacity: usize,
    context_keys_flush_interval: Duration,
    all_attributes_private: bool,
    private_attributes: Vec<String>,
    compress: bool,
}

impl Default for EventsSettings {
    fn default() -> EventsSettings {
        EventsSettings {
            capacity: DEFAULT_EVENTS_CAPACITY,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            context_keys_capacity: DEFAULT_CONTEXT_KEYS_CAPACITY,
            context_keys_flush_interval: DEFAULT_CONTEXT_KEYS_FLUSH_INTERVAL,
            all_attributes_private: false,
            private_attributes: Vec::new(),
            compress: true,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The SDK key is a secret: never in logs.
        f.debug_struct("Config")
            .field("sdk_key", &"<redacted>")
            .field("base_uri", &self.base_uri.as_str())
            .field("stream_uri", &self.stream_uri.as_str())
            .field("events_uri", &self.events_uri.as_str())
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("initial_reconnect_delay", &self.initial_reconnect_delay)
            .field("max_reconnect_delay", &self.max_reconnect_delay)
            .field("offline", &self.offline)
            .field("events_enabled", &self.events_enabled)
            .field("events", &self.events)
            .field("private_attributes", &self.private_attributes.iter().map(AttrRef::as_str).collect::<Vec<_>>())
            .field("data_source", &self.data_source)
            .finish()
    }
}

impl Config {
    /// A builder with every setting at its default.
    pub fn builder(sdk_key: impl Into<String>) -> ConfigBuilder {
        ConfigBuilder::new(sdk_key)
    }

    /// The SDK key (`Authorization` header; key of the secure-mode hash).
    pub fn sdk_key(&self) -> &str {
        &self.sdk_key
    }

    /// Polling requests go to `{base_uri}/sdk/latest-all`.
    pub fn base_uri(&self) -> &Url {
        &self.base_uri
    }

    /// The stream is `{stream_uri}/all`.
    pub fn stream_uri(&self) -> &Url {
        &self.stream_uri
    }

    /// Analytics events are posted to `{events_uri}/bulk`.
    pub fn events_uri(&self) -> &Url {
        &self.events_uri
    }

    /// How long a connection attempt may take.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// How long an open connection may stay silent: a stream that receives nothing, not even a heartbeat comment,
    /// for this long is dropped and reconnected; a response that stalls this long fails.
    pub fn read_timeout(&self) -> Duration {
        self.read_timeout
    }

    /// The delay before the first reconnection attempt; it doubles with each failure in a row, with jitter.
    pub fn initial_reconnect_delay(&self) -> Duration {
        self.initial_reconnect_delay
    }

    /// The longest delay between reconnection attempts.
    pub fn max_reconnect_delay(&self) -> Duration {
        self.max_reconnect_delay
    }

    /// The client makes no connections and serves every flag's default.
    pub fn offline(&self) -> bool {
        self.offline
    }

    /// Whether analytics events are sent (always false when offline).
    pub fn events_enabled(&self) -> bool {
        self.events_enabled && !self.offline
    }

    /// Most analytics events held between flushes; more are dropped and counted
    /// ([`Client::dropped_events`](crate::Client::dropped_events)). The queue between the application and the event
    /// processor has the same capacity.
    pub fn events_capacity(&self) -> usize {
        self.events.capacity
    }

    /// How often analytics events are sent.
    pub fn flush_interval(&self) -> Duration {
        self.events.flush_interval
    }

    /// How many context keys the event processor remembers (least recently seen forgotten first): a context it
    /// remembers gets no new `index` event.
    pub fn context_keys_capacity(&self) -> usize {
        self.events.context_keys_capacity
    }

    /// How often the remembered context keys are all forgotten.
    pub fn context_keys_flush_interval(&self) -> Duration {
        self.events.context_keys_flush_interval
    }

    /// Whether every attribute of every context (except `kind`, `key` and `anonymous`) is redacted in events.
    pub fn all_attributes_private(&self) -> bool {
        self.events.all_attributes_private
    }

    /// Attributes redacted in every context sent in events (in addition to each context's own
    /// `_meta.privateAttributes`).
    pub fn private_attributes(&self) -> &[AttrRef] {
        &self.private_attributes
    }

    /// Whether event payloads are gzip-compressed (`Content-Encoding: gzip`).
    pub fn compress_events(&self) -> bool {
        self.events.compress
    }

    /// Where flag data comes from.
    pub fn data_source(&self) -> &DataSourceConfig {
        &self.data_source
    }
}

/// Builds a [`Config`]; [`ConfigBuilder::build`] validates it.
#[derive(Clone)]
pub struct ConfigBuilder {
    sdk_key: String,
    base_uri: String,
    stream_uri: String,
    events_uri: String,
    connect_timeout: Duration,
    read_timeout: Duration,
    initial_reconnect_delay: Duration,
    max_reconnect_delay: Duration,
    offline: bool,
    events_enabled: bool,
    events: EventsSettings,
    data_source: DataSourceConfig,
    /// Kept apart from `data_source` so that it may be set before or after [`ConfigBuilder::files`].
    file_poll_interval: Duration,
}

impl fmt::Debug for ConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigBuilder")
            .field("sdk_key", &"<redacted>")
            .field("base_uri", &self.base_uri)
            .field("stream_uri", &self.stream_uri)
            .field("events_uri", &self.events_uri)
            .field("data_source", &self.data_source)
            .finish_non_exhaustive()
    }
}

impl ConfigBuilder {
    /// Every setting at its default: streaming from `pennant serve`'s default address.
    pub fn new(sdk_key: impl Into<String>) -> ConfigBuilder {
        ConfigBuilder {
            sdk_key: sdk_key.into(),
            base_uri: DEFAULT_URI.into(),
            stream_uri: DEFAULT_URI.into(),
            events_uri: DEFAULT_URI.into(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            initial_reconnect_delay: DEFAULT_INITIAL_RECONNECT_DELAY,
            max_reconnect_delay: DEFAULT_MAX_RECONNECT_DELAY,
            offline: false,
            events_enabled: true,
            events: EventsSettings::default(),
            data_source: DataSourceConfig::Streaming,
            file_poll_interval: DEFAULT_FILE_POLL_INTERVAL,
        }
    }

    /// Sets the base, stream and events URIs together: one Pennant node (or LaunchDarkly Relay Proxy) serves all.
    pub fn service_uri(self, uri: impl Into<String>) -> ConfigBuilder {
        let uri = uri.into();
        ConfigBuilder { base_uri: uri.clone(), stream_uri: uri.clone(), events_uri: uri, ..self }
    }

    /// The polling base URI (`{uri}/sdk/latest-all`).
    pub fn base_uri(self, uri: impl Into<String>) -> ConfigBuilder {
        ConfigBuilder { base_uri: uri.into(), ..self }
    }

    /// The streaming base URI (`{uri}/all`).
    pub fn stream_uri(self, uri: impl Into<String>) -> ConfigBuilder {
        ConfigBuilder { stream_uri: uri.into(), ..self }
    }

    /// The events base URI.
    pub fn events_uri(self, uri: impl Into<String>) -> ConfigBuilder {
        ConfigBuilder { events_uri: uri.into(), ..self }
    }

    /// How long a connection attempt may take (default 10 s).
    pub fn connect_timeout(self, timeout: Duration) -> ConfigBuilder {
        ConfigBuilder { connect_timeout: timeout, ..self }
    }

    /// How long an open connection may stay silent before it is dropped (default 5 minutes; servers send a
    /// heartbeat comment more often than that).
    pub fn read_timeout(self, timeout: Duration) -> ConfigBuilder {
        ConfigBuilder { read_timeout: timeout, ..self }
    }

    /// The delay before the first reconnection attempt (default 1 s).
    pub fn initial_reconnect_delay(self, delay: Duration) -> ConfigBuilder {
        ConfigBuilder { initial_reconnect_delay: delay, ..self }
    }

    /// The longest delay between reconnection attempts (default 30 s).
    pub fn max_reconnect_delay(self, delay: Duration) -> ConfigBuilder {
        ConfigBuilder { max_reconnect_delay: delay, ..self }
    }

    /// Offline: no connections, every evaluation returns the caller's default.
    pub fn offline(self, offline: bool) -> ConfigBuilder {
        ConfigBuilder { offline, ..self }
    }

    /// Whether to send analytics events (default true).
    pub fn events_enabled(self, enabled: bool) -> ConfigBuilder {
        ConfigBuilder { events_enabled: enabled, ..self }
    }

    /// Most analytics events held between flushes, and queued between the application and the event processor
    /// (default 10,000). More are dropped and counted; evaluations never wait.
    pub fn events_capacity(mut self, capacity: usize) -> ConfigBuilder {
        self.events.capacity = capacity;
        self
    }

    /// How often analytics events are sent (default 5 s).
    pub fn flush_interval(mut self, interval: Duration) -> ConfigBuilder {
        self.events.flush_interval = interval;
        self
    }

    /// How many context keys the event processor remembers to send one `index` event per context (default 1000).
    pub fn context_keys_capacity(mut self, capacity: usize) -> ConfigBuilder {
        self.events.context_keys_capacity = capacity;
        self
    }

    /// How often the remembered context keys are forgotten (default 5 minutes).
    pub fn context_keys_flush_interval(mut self, interval: Duration) -> ConfigBuilder {
        self.events.context_keys_flush_interval = interval;
        self
    }

    /// Redact every attribute of every context in events, except `kind`, `key` and `anonymous` (default false).
    pub fn all_attributes_private(mut self, private: bool) -> ConfigBuilder {
        self.events.all_attributes_private = private;
        self
    }

    /// Attributes to redact in every context sent in events, as attribute references (`email`, or `/address/street`
    /// for a property inside an object attribute). Replaces any set before.
    pub fn private_attributes(mut self, references: impl IntoIterator<Item = impl Into<String>>) -> ConfigBuilder {
        self.events.private_attributes = references.into_iter().map(Into::into).collect();
        self
    }

    /// Gzip event payloads (`Content-Encoding: gzip`; default true: Pennant and LaunchDarkly accept it).
    pub fn compress_events(mut self, compress: bool) -> ConfigBuilder {
        self.events.compress = compress;
        self
    }

    /// Stream the data (the default).
    pub fn streaming(self) -> ConfigBuilder {
        ConfigBuilder { data_source: DataSourceConfig::Streaming, ..self }
    }

    /// Poll for the data at this interval instead of streaming.
    pub fn polling(self, interval: Duration) -> ConfigBuilder {
        ConfigBuilder { data_source: DataSourceConfig::Polling { interval }, ..self }
    }

    /// Read the flag data from local JSON files instead of a server, and re-read them when they change. Each file is
    /// LaunchDarkly's `/sdk/latest-all` body (`{"flags": {key: flag}, "segments": {key: segment}}`), LaunchDarkly's
    /// shorthand `{"flagValues": {key: value}}` (a flag that is on and serves that value to everyone), or both; the
    /// files are merged, and a key defined twice is an error. No SDK key is needed; analytics events are still sent
    /// unless [`ConfigBuilder::events_enabled`] is false. An empty list fails [`ConfigBuilder::build`].
    pub fn files(self, paths: impl IntoIterator<Item = impl Into<PathBuf>>) -> ConfigBuilder {
        let paths = paths.into_iter().map(Into::into).collect();
        let poll_interval = self.file_poll_interval;
        ConfigBuilder { data_source: DataSourceConfig::File { paths, poll_interval }, ..self }
    }

    /// How often the file data source checks its files' modification times and lengths (default 1 s).
    pub fn file_poll_interval(mut self, interval: Duration) -> ConfigBuilder {
        self.file_poll_interval = interval;
        if let DataSourceConfig::File { poll_interval, .. } = &mut self.data_source {
            *poll_interval = interval;
        }
        self
    }

    /// Take flags from a [`TestData`] instead of a server. No SDK key is needed.
    pub fn test_data(self, test_data: &TestData) -> ConfigBuilder {
        ConfigBuilder { data_source: DataSourceConfig::TestData(test_data.clone()), ..self }
    }

    /// Take flag data from any other [`DataSource`].
    pub fn data_source(self, source: Arc<dyn DataSource>) -> ConfigBuilder {
        ConfigBuilder { data_source: DataSourceConfig::Custom(source), ..self }
    }

    /// Validates the settings.
    pub fn build(self) -> Result<Config, ConfigError> {
        let needs_key =
            !self.offline && matches!(self.data_source, DataSourceConfig::Streaming | DataSourceConfig::Polling { .. });
        if self.sdk_key.is_empty() && needs_key {
            return Err(ConfigError::EmptySdkKey);
        }
        if reqwest::header::HeaderValue::from_str(&self.sdk_key).is_err() {
            return Err(ConfigError::InvalidSdkKey);
        }
        let base_uri = parse_uri("base_uri", &self.base_uri)?;
        let stream_uri = parse_uri("stream_uri", &self.stream_uri)?;
        let events_uri = parse_uri("events_uri", &self.events_uri)?;
        for (setting, value) in [
            ("connect_timeout", self.connect_timeout),
            ("read_timeout", self.read_timeout),
            ("initial_reconnect_delay", self.initial_reconnect_delay),
            ("max_reconnect_delay", self.max_reconnect_delay),
            ("flush_interval", self.events.flush_interval),
            ("context_keys_flush_interval", self.events.context_keys_flush_interval),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration { setting });
            }
        }
        if let DataSourceConfig::Polling { interval } = self.data_source
            && interval.is_zero()
        {
            return Err(ConfigError::ZeroDuration { setting: "polling interval" });
        }
        if self.file_poll_interval.is_zero() {
            return Err(ConfigError::ZeroDuration { setting: "file_poll_interval" });
        }
        if let DataSourceConfig::File { paths, .. } = &self.data_source
            && paths.is_empty()
        {
            return Err(ConfigError::NoFiles);
        }
        if self.initial_reconnect_delay > self.max_reconnect_delay {
            return Err(ConfigError::ReconnectDelays {
                initial: self.initial_reconnect_delay,
                max: self.max_reconnect_delay,
            });
        }
        for (setting, value) in
            [("events_capacity", self.events.capacity), ("context_keys_capacity", self.events.context_keys_capacity)]
        {
            if value == 0 {
                return Err(ConfigError::ZeroCapacity { setting });
            }
        }
        let private_attributes = self
            .events
            .private_attributes
            .iter()
            .map(|raw| {
                let reference = AttrRef::parse(raw);
                match reference.components() {
                    Ok(_) => Ok(reference),
                    Err(error) => Err(ConfigError::InvalidPrivateAttribute { reference: raw.clone(), error }),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Config {
            sdk_key: self.sdk_key,
            base_uri,
            stream_uri,
            events_uri,
            connect_timeout: self.connect_timeout,
            read_timeout: self.read_timeout,
            initial_reconnect_delay: self.initial_reconnect_delay,
            max_reconnect_delay: self.max_reconnect_delay,
            offline: self.offline,
            events_enabled: self.events_enabled,
            events: self.events,
            private_attributes,
            data_source: self.data_source,
        })
    }
}

fn parse_uri(setting: &'static str, uri: &str) -> Result<Url, ConfigError> {
    let invalid = |reason: String| ConfigError::InvalidUri { setting, uri: uri.to_owned(), reason };
    let url = Url::parse(uri).map_err(|e| invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!("the scheme must be http or https, not {:?}", url.scheme())));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("there is no host".into()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("a base URI takes no query or fragment".into()));
    }
    Ok(url)
}

/// `{base}/{path}`, whether or not `base` ends with a slash; a base path is kept (`http://h/prefix` → `http://h/prefix/all`).
pub(crate) fn endpoint(base: &Url, path: &str) -> String {
    format!("{}/{}", base.as_str().trim_end_matches('/'), path.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_point_at_a_local_pennant() {
        let config = Config::builder("sdk-123").build().unwrap();
        assert_eq!(config.stream_uri().as_str(), "http://127.0.0.1:8030/");
        assert_eq!(config.read_timeout(), Duration::from_secs(300));
        assert_eq!(config.initial_reconnect_delay(), Duration::from_secs(1));
        assert!(matches!(config.data_source(), DataSourceConfig::Streaming));
        assert!(config.events_enabled());
        assert!(!config.offline());
    }

    #[test]
    fn every_setting_is_kept() {
        let config = Config::builder("sdk-123")
            .base_uri("https://poll.example.com/prefix/")
            .stream_uri("http://stream.example.com:8080")
            .events_uri("http://events.example.com")
            .connect_timeout(Duration::from_millis(1500))
            .read_timeout(Duration::from_secs(7))
            .initial_reconnect_delay(Duration::from_millis(20))
            .max_reconnect_delay(Duration::from_millis(40))
            .events_enabled(false)
            .polling(Duration::from_secs(5))
            .build()
            .unwrap();
        assert_eq!(endpoint(config.base_uri(), "/sdk/latest-all"), "https://poll.example.com/prefix/sdk/latest-all");
        assert_eq!(endpoint(config.stream_uri(), "all"), "http://stream.example.com:8080/all");
        assert_eq!(config.events_uri().host_str(), Some("events.example.com"));
        assert_eq!(config.connect_timeout(), Duration::from_millis(1500));
        assert_eq!(config.read_timeout(), Duration::from_secs(7));
        assert_eq!(config.initial_reconnect_delay(), Duration::from_millis(20));
        assert_eq!(config.max_reconnect_delay(), Duration::from_millis(40));
        assert!(!config.events_enabled());
        assert!(matches!(config.data_source(), DataSourceConfig::Polling { interval } if interval.as_secs() == 5));
        let all = Config::builder("k").service_uri("http://relay:9000").build().unwrap();
        assert_eq!([all.base_uri(), all.stream_uri(), all.events_uri()].map(Url::as_str), ["http://relay:9000/"; 3]);
    }

    #[test]
    fn offline_turns_events_off() {
        let config = Config::builder("").offline(true).build().unwrap();
        assert!(config.offline());
        assert!(!config.events_enabled(), "offline sends nothing");
    }

    #[test]
    fn invalid_settings_are_typed_errors() {
        let cases: Vec<(ConfigBuilder, ConfigError)> = vec![
            (Config::builder(""), ConfigError::EmptySdkKey),
            (Config::builder("").polling(Duration::from_secs(1)), ConfigError::EmptySdkKey),
            (Config::builder("sdk\nkey"), ConfigError::InvalidSdkKey),
            (
                Config::builder("k").connect_timeout(Duration::ZERO),
                ConfigError::ZeroDuration { setting: "connect_timeout" },
            ),
            (Config::builder("k").read_timeout(Duration::ZERO), ConfigError::ZeroDuration { setting: "read_timeout" }),
            (
                Config::builder("k").initial_reconnect_delay(Duration::ZERO),
                ConfigError::ZeroDuration { setting: "initial_reconnect_delay" },
            ),
            (Config::builder("k").polling(Duration::ZERO), ConfigError::ZeroDuration { setting: "polling interval" }),
            (
                Config::builder("k").initial_reconnect_delay(Duration::from_secs(60)),
                ConfigError::ReconnectDelays { initial: Duration::from_secs(60), max: Duration::from_secs(30) },
            ),
        ];
        for (builder, want) in cases {
            assert_eq!(builder.build().unwrap_err(), want);
        }
        for (uri, reason) in [
            ("localhost:8030", "scheme"),
            ("ftp://h", "http or https"),
            ("not a url", "relative URL"),
            ("http://h/?x=1", "query"),
            ("file:///tmp", "scheme"),
        ] {
            match Config::builder("k").stream_uri(uri).build() {
                Err(ConfigError::InvalidUri { setting: "stream_uri", uri: got, reason: r }) => {
                    assert_eq!(got, uri);
                    assert!(r.contains(reason), "{uri}: {r}");
                }
                other => panic!("{uri}: {other:?}"),
            }
        }
        // A test data source needs no key.
        assert!(Config::builder("").test_data(&TestData::new()).build().is_ok());
    }

    #[test]
    fn file_settings_are_kept_in_either_order_and_validated() {
        let config = Config::builder("").files(["a.json", "b.json"]).build().unwrap();
        match config.data_source() {
            DataSourceConfig::File { paths, poll_interval } => {
                assert_eq!(paths, &[PathBuf::from("a.json"), PathBuf::from("b.json")]);
                assert_eq!(*poll_interval, DEFAULT_FILE_POLL_INTERVAL);
            }
            other => panic!("{other:?}"),
        }
        let ms = Duration::from_millis(50);
        for builder in [
            Config::builder("").files(["a.json"]).file_poll_interval(ms),
            Config::builder("").file_poll_interval(ms).files(["a.json"]),
        ] {
            let config = builder.build().unwrap();
            assert!(
                matches!(config.data_source(), DataSourceConfig::File { poll_interval, .. } if *poll_interval == ms)
            );
        }
        assert_eq!(Config::builder("").files(Vec::<PathBuf>::new()).build().unwrap_err(), ConfigError::NoFiles);
        assert_eq!(
            Config::builder("").files(["a.json"]).file_poll_interval(Duration::ZERO).build().unwrap_err(),
            ConfigError::ZeroDuration { setting: "file_poll_interval" }
        );
    }

    #[test]
    fn event_settings_have_launchdarkly_defaults_and_are_validated() {
        let config = Config::builder("k").build().unwrap();
        assert_eq!(config.events_capacity(), 10_000);
        assert_eq!(config.flush_interval(), Duration::from_secs(5));
        assert_eq!(config.context_keys_capacity(), 1000);
        assert_eq!(config.context_keys_flush_interval(), Duration::from_secs(300));
        assert!(!config.all_attributes_private());
        assert!(config.private_attributes().is_empty());
        assert!(config.compress_events());

        let config = Config::builder("k")
            .events_capacity(5)
            .flush_interval(Duration::from_millis(100))
            .context_keys_capacity(7)
            .context_keys_flush_interval(Duration::from_secs(1))
            .all_attributes_private(true)
            .private_attributes(["email", "/address/street"])
            .compress_events(false)
            .build()
            .unwrap();
        assert_eq!((config.events_capacity(), config.context_keys_capacity()), (5, 7));
        assert_eq!(
            (config.flush_interval(), config.context_keys_flush_interval()),
            (Duration::from_millis(100), Duration::from_secs(1))
        );
        assert!(config.all_attributes_private() && !config.compress_events());
        let refs: Vec<_> = config.private_attributes().iter().map(|r| r.components().unwrap().to_vec()).collect();
        assert_eq!(refs, [vec!["email".to_owned()], vec!["address".to_owned(), "street".to_owned()]]);

        let cases: Vec<(ConfigBuilder, ConfigError)> = vec![
            (Config::builder("k").events_capacity(0), ConfigError::ZeroCapacity { setting: "events_capacity" }),
            (
                Config::builder("k").context_keys_capacity(0),
                ConfigError::ZeroCapacity { setting: "context_keys_capacity" },
            ),
            (
                Config::builder("k").flush_interval(Duration::ZERO),
                ConfigError::ZeroDuration { setting: "flush_interval" },
            ),
            (
                Config::builder("k").context_keys_flush_interval(Duration::ZERO),
                ConfigError::ZeroDuration { setting: "context_keys_flush_interval" },
            ),
            (
                Config::builder("k").private_attributes(["ok", "/a//b"]),
                ConfigError::InvalidPrivateAttribute { reference: "/a//b".into(), error: AttrRefError::EmptyComponent },
            ),
            (
                Config::builder("k").private_attributes([""]),
                ConfigError::InvalidPrivateAttribute { reference: String::new(), error: AttrRefError::Empty },
            ),
        ];
        for (builder, want) in cases {
            assert_eq!(builder.build().unwrap_err(), want);
        }
    }

    #[test]
    fn debug_output_hides_the_sdk_key() {
        let config = Config::builder("sdk-secret-1234").build().unwrap();
        assert!(!format!("{config:?}").contains("secret"));
        assert!(!format!("{:?}", Config::builder("sdk-secret-1234")).contains("secret"));
    }
}
