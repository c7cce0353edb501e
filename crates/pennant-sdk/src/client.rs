//! The client: starts the data source, evaluates flags from the latest data, reports status and changes.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use hmac::{KeyInit, Mac};
use pennant_eval::{
    AllFlagsOptions, AllFlagsState, BigSegmentsStatus, Context, ErrorKind, Reason, ValueType, VariationDetail,
    all_flags_state, variation_detail,
};
use serde::{Serialize, Serializer};
use serde_json::Value;
use tokio::sync::{broadcast, watch};

use crate::config::{Config, DataSourceConfig};
use crate::data::FlagData;
use crate::events::{self, Events, FlushError};
use crate::source::{DataSource, FileDataSource, PollingDataSource, Shutdown, StreamingDataSource, http_client};
use crate::status::{DataSourceState, DataSourceStatus};
use crate::updates::{DataSourceUpdates, FlagChange};

/// Why a client could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// [`Client::start`] was called outside a Tokio runtime.
    #[error("the client must be started within a Tokio runtime")]
    NoRuntime,
    /// The HTTP client could not be built (TLS set-up failed).
    #[error("the HTTP client could not be built: {0}")]
    Http(#[from] reqwest::Error),
}

/// Why a flag evaluated as it did, owning its strings (the engine's [`Reason`] borrows from the flag data, which
/// the client may replace at any moment).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EvaluationReason {
    /// The flag is off.
    Off,
    /// Nothing matched; the fallthrough was served.
    Fallthrough {
        /// Served by an experiment rollout.
        in_experiment: bool,
    },
    /// The context's key was targeted.
    TargetMatch,
    /// A rule matched.
    RuleMatch {
        /// Index of the rule.
        rule_index: usize,
        /// ID of the rule.
        rule_id: String,
        /// Served by an experiment rollout.
        in_experiment: bool,
    },
    /// A prerequisite was off or served another variation.
    PrerequisiteFailed {
        /// The first prerequisite that failed.
        prerequisite_key: String,
    },
    /// The evaluation failed, and the caller's default was returned.
    Error {
        /// What went wrong (`FLAG_NOT_FOUND`, `WRONG_TYPE`, `CLIENT_NOT_READY`, `MALFORMED_FLAG`, …).
        error_kind: ErrorKind,
    },
}

impl EvaluationReason {
    /// The engine's form, borrowing from this one.
    pub fn as_reason(&self) -> Reason<'_> {
        match self {
            EvaluationReason::Off => Reason::Off,
            EvaluationReason::Fallthrough { in_experiment } => Reason::Fallthrough { in_experiment: *in_experiment },
            EvaluationReason::TargetMatch => Reason::TargetMatch,
            EvaluationReason::RuleMatch { rule_index, rule_id, in_experiment } => {
                Reason::RuleMatch { rule_index: *rule_index, rule_id, in_experiment: *in_experiment }
            }
            EvaluationReason::PrerequisiteFailed { prerequisite_key } => {
                Reason::PrerequisiteFailed { prerequisite_key }
            }
            EvaluationReason::Error { error_kind } => Reason::Error { error_kind: *error_kind },
        }
    }

    /// The reason's `kind` in LaunchDarkly JSON (`OFF`, `FALLTHROUGH`, `RULE_MATCH`, …).
    pub fn kind(&self) -> &'static str {
        self.as_reason().kind()
    }
}

impl From<Reason<'_>> for EvaluationReason {
    fn from(reason: Reason<'_>) -> EvaluationReason {
        match reason {
            Reason::Off => EvaluationReason::Off,
            Reason::Fallthrough { in_experiment } => EvaluationReason::Fallthrough { in_experiment },
            Reason::TargetMatch => EvaluationReason::TargetMatch,
            Reason::RuleMatch { rule_index, rule_id, in_experiment } => {
                EvaluationReason::RuleMatch { rule_index, rule_id: rule_id.to_owned(), in_experiment }
            }
            Reason::PrerequisiteFailed { prerequisite_key } => {
                EvaluationReason::PrerequisiteFailed { prerequisite_key: prerequisite_key.to_owned() }
            }
            Reason::Error { error_kind } => EvaluationReason::Error { error_kind },
        }
    }
}

/// Serialises exactly as LaunchDarkly SDKs write reasons.
impl Serialize for EvaluationReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.as_reason().serialize(s)
    }
}

/// A typed evaluation result: the value (the caller's default when the evaluation failed or served no
/// variation), which variation it was, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct EvaluationDetail<T> {
    /// The value served.
    pub value: T,
    /// The variation's index, or `None` when the default was served.
    pub variation_index: Option<usize>,
    /// Why.
    pub reason: EvaluationReason,
    /// Set when the evaluation met a big segment.
    pub big_segments_status: Option<BigSegmentsStatus>,
}

/// Every flag evaluated for one context, against one snapshot of the data (later changes do not affect it).
#[derive(Debug, Clone)]
pub struct AllFlags {
    data: Arc<FlagData>,
    context: Context,
    options: AllFlagsOptions,
    valid: bool,
}

impl AllFlags {
    /// False when the client had no data yet (the state is then empty).
    pub fn valid(&self) -> bool {
        self.valid
    }

    /// The engine's evaluation of every flag (evaluated when called; keep the result rather than calling it per
    /// flag).
    pub fn state(&self) -> AllFlagsState<'_> {
        all_flags_state(&*self.data, self.data.flags(), &self.context, self.options)
    }
}

/// Serialises as the engine does: the client-side `evalx` document (`{flagKey: {value, variation, version, …}}`),
/// which client-side SDKs can be bootstrapped with.
impl Serialize for AllFlags {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.state().serialize(s)
    }
}

/// A feature-flag client.
///
/// [`Client::start`] connects in the background; evaluations read the latest data without waiting or locking, and
/// return the caller's default (with reason `CLIENT_NOT_READY`) until the first data arrives. Clones share one
/// connection and one event processor; [`Client::close`] sends the events recorded so far and closes the
/// connection. When the last clone is dropped without `close`, the connection closes and the events are sent in
/// the background (if the runtime lives on).
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    updates: DataSourceUpdates,
    shutdown: watch::Sender<bool>,
    /// The event processor, when events are enabled.
    events: Option<Events>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

/// Stands in for the caller's default inside the engine: when the engine returns it, the typed default is used.
static DEFAULT: Value = Value::Null;

impl Client {
    /// Starts the client: the data source connects in the background, on the current Tokio runtime. Use
    /// [`Client::wait_for_initialization`] to wait for the first data.
    pub fn start(config: Config) -> Result<Client, ClientError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ClientError::NoRuntime)?;
        let updates = DataSourceUpdates::new();
        let (shutdown, stopped) = watch::channel(false);
        let source: Option<Arc<dyn DataSource>> = if config.offline() {
            None
        } else {
            Some(match config.data_source() {
                DataSourceConfig::Streaming => {
                    Arc::new(StreamingDataSource::new(&config, http_client(config.connect_timeout())?))
                }
                DataSourceConfig::Polling { interval } => {
                    Arc::new(PollingDataSource::new(&config, http_client(config.connect_timeout())?, *interval))
                }
                DataSourceConfig::File { paths, poll_interval } => {
                    Arc::new(FileDataSource::new(paths.clone(), *poll_interval))
                }
                DataSourceConfig::TestData(test_data) => Arc::new(test_data.clone()),
                DataSourceConfig::Custom(source) => source.clone(),
            })
        };
        let events = if config.events_enabled() {
            Some(Events::start(&config, http_client(config.connect_timeout())?, &runtime))
        } else {
            None
        };
        match source {
            Some(source) => {
                runtime.spawn(source.run(updates.clone(), Shutdown(stopped)));
            }
            None => {
                // Offline: no data will come; every flag is unknown and serves the caller's default.
                updates.init(FlagData::default());
                updates.update_status(DataSourceState::Valid, None);
            }
        }
        Ok(Client { inner: Arc::new(Inner { config, updates, shutdown, events }) })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Whether the client has received data (it keeps serving that data while it reconnects).
    pub fn initialized(&self) -> bool {
        self.inner.updates.shared.store.initialized()
    }

    /// Waits until the client has data (`true`), its data source stopped for good (`false`, for example after a
    /// 401 for a wrong SDK key), or `timeout` passed (`false`). The client keeps trying in the background after a
    /// timeout.
    pub async fn wait_for_initialization(&self, timeout: Duration) -> bool {
        let mut status = self.data_source_status_receiver();
        let wait = async {
            loop {
                if self.initialized() {
                    return true;
                }
                if status.borrow_and_update().state == DataSourceState::Off {
                    return self.initialized();
                }
                if status.changed().await.is_err() {
                    return self.initialized();
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }

    /// The data source's status now.
    pub fn data_source_status(&self) -> DataSourceStatus {
        self.inner.updates.status()
    }

    /// A receiver that sees every change of the data source's status.
    pub fn data_source_status_receiver(&self) -> watch::Receiver<DataSourceStatus> {
        self.inner.updates.shared.status.subscribe()
    }

    /// A receiver of flag changes: for each update received, the key of every flag that was added, changed or
    /// deleted, and of every flag that depends on one of them (as a prerequisite) or on a changed segment,
    /// transitively. The flag's new value may be evaluated as soon as its key is received.
    pub fn flag_changes(&self) -> broadcast::Receiver<FlagChange> {
        self.inner.updates.shared.changes.subscribe()
    }

    /// The flag data now: every flag and segment received (deleted ones are left out of [`FlagData::flags`] and
    /// [`FlagData::segments`]), as an immutable snapshot that later changes do not affect.
    pub fn flag_data(&self) -> Arc<FlagData> {
        self.inner.updates.shared.store.snapshot()
    }

    /// A receiver marked changed whenever the data changes: every full data set received (a stream's `put`, a
    /// poll's new response), and every applied `patch` or `delete`. Read [`Client::flag_data`] when it is. Unlike
    /// [`Client::flag_changes`] it cannot lag: a slow reader sees only the newest state.
    pub fn data_updates(&self) -> watch::Receiver<u64> {
        self.inner.updates.shared.data_version.subscribe()
    }

    /// Closes the client: stops recording analytics events and sends every event recorded so far (waiting for the
    /// delivery, or its failure), then stops the data source; the status becomes `Off`. Evaluations go on serving
    /// the last data received, and record no more events. Closing again does nothing more.
    pub async fn close(&self) {
        if let Some(events) = &self.inner.events {
            events.close().await;
        }
        self.inner.shutdown.send_replace(true);
        self.inner.updates.update_status(DataSourceState::Off, None);
    }

    /// Sends the analytics events recorded so far, and waits until they are delivered or have failed (after their
    /// one retry). `Ok` at once when events are disabled. Events are also sent every
    /// [`Config::flush_interval`] without this call.
    pub async fn flush(&self) -> Result<(), FlushError> {
        match &self.inner.events {
            Some(events) => events.flush().await,
            None => Ok(()),
        }
    }

    /// Records a custom event (`track` in LaunchDarkly's SDKs) for `context`: an event key, optional JSON data and an
    /// optional metric value (for numeric experiment metrics). Does nothing when events are disabled.
    pub fn track(&self, context: &Context, key: &str, data: Option<Value>, metric_value: Option<f64>) {
        if let Some(events) = self.recording() {
            events.track(context, key, data, metric_value);
        }
    }

    /// Records an `identify` event: `context` (with private attributes redacted) is sent to the events service, which
    /// indexes it. Does nothing when events are disabled.
    pub fn identify(&self, context: &Context) {
        if let Some(events) = self.recording() {
            events.identify(context);
        }
    }

    /// Analytics events dropped so far because the event queue or buffer was full ([`Config::events_capacity`]).
    /// Evaluations never wait for the event processor: when it falls behind, events are dropped and counted here.
    pub fn dropped_events(&self) -> u64 {
        self.inner.events.as_ref().map_or(0, Events::dropped)
    }

    /// The event processor, while it records.
    #[inline]
    fn recording(&self) -> Option<&Events> {
        self.inner.events.as_ref().filter(|e| e.recording())
    }

    /// Evaluates a flag through the engine's typed-variation layer (recording analytics events when they are
    /// enabled) and hands the borrowed result to `f`. The engine's default stands for the caller's, so `value` is
    /// [`DEFAULT`] when the default applies; `default` gives the caller's default as JSON for the events.
    fn evaluate<R>(
        &self,
        context: &Context,
        flag_key: &str,
        value_type: ValueType,
        default: &dyn Fn() -> Value,
        with_reason: bool,
        f: impl FnOnce(VariationDetail<'_>) -> R,
    ) -> R {
        let recording = self.recording();
        if !self.initialized() {
            if let Some(events) = recording {
                events.unknown_flag(context, flag_key, default);
            }
            return f(VariationDetail {
                value: Cow::Borrowed(&DEFAULT),
                variation_index: None,
                reason: Reason::Error { error_kind: ErrorKind::ClientNotReady },
                big_segments_status: None,
            });
        }
        let data = self.inner.updates.shared.store.load();
        let detail = match recording {
            None => variation_detail(&**data, flag_key, Ok(context), &DEFAULT, value_type),
            Some(events) => {
                events::evaluate(&data, flag_key, context, value_type, &DEFAULT, events, default, with_reason)
            }
        };
        if let Reason::Error { error_kind } = detail.reason {
            tracing::debug!(flag_key, error = error_kind.as_str(), "evaluation served the default");
        }
        f(detail)
    }

    fn typed<T>(
        &self,
        context: &Context,
        flag_key: &str,
        default: T,
        value_type: ValueType,
        json: &dyn Fn() -> Value,
        convert: impl FnOnce(&Value) -> Option<T>,
    ) -> EvaluationDetail<T> {
        self.evaluate(context, flag_key, value_type, json, true, |detail| {
            let is_default = matches!(detail.value, Cow::Borrowed(v) if std::ptr::eq(v, &DEFAULT));
            let reason = EvaluationReason::from(detail.reason);
            let big_segments_status = detail.big_segments_status;
            if is_default {
                return EvaluationDetail { value: default, variation_index: None, reason, big_segments_status };
            }
            match convert(&detail.value) {
                Some(value) => {
                    EvaluationDetail { value, variation_index: detail.variation_index, reason, big_segments_status }
                }
                None => EvaluationDetail {
                    value: default,
                    variation_index: None,
                    reason: EvaluationReason::Error { error_kind: ErrorKind::WrongType },
                    big_segments_status,
                },
            }
        })
    }

    /// The value of a flag without its details, without allocating for the reason.
    fn value<T>(
        &self,
        context: &Context,
        flag_key: &str,
        default: T,
        value_type: ValueType,
        json: &dyn Fn() -> Value,
        convert: impl FnOnce(&Value) -> Option<T>,
    ) -> T {
        self.evaluate(context, flag_key, value_type, json, false, |detail| {
            if matches!(detail.value, Cow::Borrowed(v) if std::ptr::eq(v, &DEFAULT)) {
                return default;
            }
            convert(&detail.value).unwrap_or(default)
        })
    }

    /// A boolean flag's value for `context`, or `default`.
    pub fn bool_variation(&self, context: &Context, flag_key: &str, default: bool) -> bool {
        self.value(context, flag_key, default, ValueType::Bool, &|| Value::Bool(default), Value::as_bool)
    }

    /// [`Client::bool_variation`] with the variation index and the reason.
    pub fn bool_variation_detail(&self, context: &Context, flag_key: &str, default: bool) -> EvaluationDetail<bool> {
        self.typed(context, flag_key, default, ValueType::Bool, &|| Value::Bool(default), Value::as_bool)
    }

    /// A string flag's value for `context`, or `default`.
    pub fn string_variation(&self, context: &Context, flag_key: &str, default: &str) -> String {
        let json = || Value::String(default.to_owned());
        self.value(context, flag_key, Cow::Borrowed(default), ValueType::String, &json, as_string).into_owned()
    }

    /// [`Client::string_variation`] with the variation index and the reason.
    pub fn string_variation_detail(
        &self,
        context: &Context,
        flag_key: &str,
        default: &str,
    ) -> EvaluationDetail<String> {
        let json = || Value::String(default.to_owned());
        let detail = self.typed(context, flag_key, Cow::Borrowed(default), ValueType::String, &json, as_string);
        EvaluationDetail {
            value: detail.value.into_owned(),
            variation_index: detail.variation_index,
            reason: detail.reason,
            big_segments_status: detail.big_segments_status,
        }
    }

    /// A number flag's value for `context` as an integer (truncated toward zero), or `default`.
    pub fn int_variation(&self, context: &Context, flag_key: &str, default: i64) -> i64 {
        self.value(context, flag_key, default, ValueType::Int, &|| Value::from(default), as_int)
    }

    /// [`Client::int_variation`] with the variation index and the reason.
    pub fn int_variation_detail(&self, context: &Context, flag_key: &str, default: i64) -> EvaluationDetail<i64> {
        self.typed(context, flag_key, default, ValueType::Int, &|| Value::from(default), as_int)
    }

    /// A number flag's value for `context`, or `default`.
    pub fn float_variation(&self, context: &Context, flag_key: &str, default: f64) -> f64 {
        self.value(context, flag_key, default, ValueType::Double, &|| Value::from(default), Value::as_f64)
    }

    /// [`Client::float_variation`] with the variation index and the reason.
    pub fn float_variation_detail(&self, context: &Context, flag_key: &str, default: f64) -> EvaluationDetail<f64> {
        self.typed(context, flag_key, default, ValueType::Double, &|| Value::from(default), Value::as_f64)
    }

    /// Any flag's value for `context`, as JSON, or `default`.
    pub fn json_variation(&self, context: &Context, flag_key: &str, default: Value) -> Value {
        let found = self.value(context, flag_key, None, ValueType::Any, &|| default.clone(), |v| Some(Some(v.clone())));
        found.unwrap_or(default)
    }

    /// [`Client::json_variation`] with the variation index and the reason.
    pub fn json_variation_detail(&self, context: &Context, flag_key: &str, default: Value) -> EvaluationDetail<Value> {
        let detail =
            self.typed(context, flag_key, None, ValueType::Any, &|| default.clone(), |v| Some(Some(v.clone())));
        EvaluationDetail {
            value: detail.value.unwrap_or(default),
            variation_index: detail.variation_index,
            reason: detail.reason,
            big_segments_status: detail.big_segments_status,
        }
    }

    /// Every flag evaluated for `context` with the engine's [`all_flags_state`], against the current data.
    pub fn all_flags_state(&self, context: &Context, options: AllFlagsOptions) -> AllFlags {
        AllFlags {
            data: self.inner.updates.shared.store.snapshot(),
            context: context.clone(),
            options,
            valid: self.initialized(),
        }
    }

    /// The secure-mode hash of `context` for client-side SDKs (`?h=`, LaunchDarkly's `hash` option): hex
    /// HMAC-SHA256 of the context's fully-qualified key, keyed with the SDK key, as Pennant's server checks it.
    pub fn secure_mode_hash(&self, context: &Context) -> String {
        secure_mode_hash(self.inner.config.sdk_key(), context)
    }
}

fn as_string<'d>(value: &Value) -> Option<Cow<'d, str>> {
    value.as_str().map(|s| Cow::Owned(s.to_owned()))
}

/// The engine has truncated non-integers already; numbers beyond `i64` saturate.
fn as_int(value: &Value) -> Option<i64> {
    #[allow(clippy::cast_possible_truncation)]
    value.as_i64().or_else(|| value.as_f64().map(|f| f as i64))
}

pub(crate) fn secure_mode_hash(sdk_key: &str, context: &Context) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(sdk_key.as_bytes()) else {
        return String::new();
    };
    mac.update(context.fully_qualified_key().as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestData;
    use serde_json::json;

    async fn client(td: &TestData) -> Client {
        client_with_events(td, false).await
    }

    /// With events on, they go to a closed port and are not flushed during the test: only the evaluation path with
    /// event recording is exercised.
    async fn client_with_events(td: &TestData, events: bool) -> Client {
        let config = Config::builder("sdk-key")
            .test_data(td)
            .events_enabled(events)
            .events_uri("http://127.0.0.1:9")
            .flush_interval(Duration::from_secs(3600))
            .build()
            .unwrap();
        let client = Client::start(config).unwrap();
        assert!(client.wait_for_initialization(Duration::from_secs(5)).await);
        client
    }

    fn test_data() -> TestData {
        let td = TestData::new();
        td.update(td.flag("bool").variation_for_all(true));
        td.update(td.flag("str").value_for_all(json!("hello")));
        td.update(td.flag("int").value_for_all(json!(7.9)));
        td.update(td.flag("neg").value_for_all(json!(-7.9)));
        td.update(td.flag("huge").value_for_all(json!(u64::MAX)));
        td.update(td.flag("float").value_for_all(json!(2.5)));
        td.update(td.flag("json").value_for_all(json!({"a": [1, 2]})));
        td.update_flag_json(
            json!({"key": "off-null", "on": false, "variations": [1], "fallthrough": {"variation": 0}}),
        )
        .unwrap();
        td.update(
            td.flag("rule").variation_for_all(false).if_match("email", [json!("a@example.com")]).then_return(true),
        );
        td
    }

    #[test]
    fn starting_outside_a_runtime_is_an_error() {
        let config = Config::builder("k").test_data(&TestData::new()).build().unwrap();
        assert!(matches!(Client::start(config), Err(ClientError::NoRuntime)));
    }

    #[tokio::test]
    async fn typed_variations_serve_values_and_details() {
        for events in [false, true] {
            typed_variations(&client_with_events(&test_data(), events).await);
        }
    }

    fn typed_variations(client: &Client) {
        let user = Context::user("u");
        assert!(client.bool_variation(&user, "bool", false));
        assert_eq!(client.string_variation(&user, "str", "d"), "hello");
        assert_eq!(client.int_variation(&user, "int", 0), 7, "truncated toward zero");
        assert_eq!(client.int_variation(&user, "neg", 0), -7);
        assert_eq!(client.int_variation(&user, "huge", 0), i64::MAX, "saturates");
        assert_eq!(client.int_variation(&user, "float", 0), 2);
        assert_eq!(client.float_variation(&user, "float", 0.0), 2.5);
        assert_eq!(client.float_variation(&user, "int", 0.0), 7.9);
        assert_eq!(client.json_variation(&user, "json", json!(null)), json!({"a": [1, 2]}));
        assert_eq!(client.json_variation(&user, "bool", json!(null)), json!(true), "json takes any type");

        let detail = client.bool_variation_detail(&user, "bool", false);
        assert_eq!(
            detail,
            EvaluationDetail {
                value: true,
                variation_index: Some(0),
                reason: EvaluationReason::Fallthrough { in_experiment: false },
                big_segments_status: None,
            }
        );
        let alice = Context::from_value(json!({"kind": "user", "key": "a", "email": "a@example.com"})).unwrap();
        let detail = client.bool_variation_detail(&alice, "rule", false);
        assert_eq!((detail.value, detail.variation_index), (true, Some(0)));
        assert_eq!(
            detail.reason,
            EvaluationReason::RuleMatch { rule_index: 0, rule_id: "rule0".into(), in_experiment: false }
        );
        assert_eq!(
            serde_json::to_value(&detail.reason).unwrap(),
            json!({"kind": "RULE_MATCH", "ruleIndex": 0, "ruleId": "rule0"})
        );
        assert_eq!(client.string_variation_detail(&user, "str", "d").variation_index, Some(0));
        assert_eq!(client.int_variation_detail(&user, "int", 0).value, 7);
        assert_eq!(client.float_variation_detail(&user, "float", 0.0).value, 2.5);
        assert_eq!(client.json_variation_detail(&user, "json", json!(1)).reason.kind(), "FALLTHROUGH");

        // Off with no off variation: the default, reason OFF, not an error.
        let off = client.int_variation_detail(&user, "off-null", 42);
        assert_eq!((off.value, off.variation_index, off.reason), (42, None, EvaluationReason::Off));
    }

    #[tokio::test]
    async fn errors_serve_the_default_with_launchdarkly_error_kinds() {
        for events in [false, true] {
            errors_serve_the_default(&client_with_events(&test_data(), events).await);
        }
    }

    fn errors_serve_the_default(client: &Client) {
        let user = Context::user("u");
        let error = |kind| EvaluationReason::Error { error_kind: kind };
        let missing = client.bool_variation_detail(&user, "missing", true);
        assert_eq!(
            (missing.value, missing.variation_index, missing.reason),
            (true, None, error(ErrorKind::FlagNotFound))
        );
        assert!(client.bool_variation(&user, "missing", true));
        assert!(!client.bool_variation(&user, "missing", false));

        let wrong = client.bool_variation_detail(&user, "str", true);
        assert_eq!((wrong.value, wrong.variation_index, wrong.reason), (true, None, error(ErrorKind::WrongType)));
        assert!(client.bool_variation(&user, "str", true), "wrong type: the default");
        assert_eq!(client.string_variation(&user, "bool", "d"), "d");
        assert_eq!(client.string_variation_detail(&user, "int", "d").reason, error(ErrorKind::WrongType));
        assert_eq!(client.int_variation(&user, "str", 5), 5);
        assert_eq!(client.float_variation_detail(&user, "json", 1.5).value, 1.5);
        assert_eq!(
            serde_json::to_value(error(ErrorKind::WrongType)).unwrap(),
            json!({"kind": "ERROR", "errorKind": "WRONG_TYPE"})
        );
    }

    #[tokio::test]
    async fn before_data_arrives_evaluations_are_client_not_ready() {
        // A custom data source that never delivers.
        #[derive(Debug)]
        struct Never;
        impl DataSource for Never {
            fn run(&self, _: DataSourceUpdates, mut shutdown: Shutdown) -> crate::SourceFuture {
                Box::pin(async move { shutdown.wait().await })
            }
        }
        let config = Config::builder("k").data_source(Arc::new(Never)).events_enabled(false).build().unwrap();
        let client = Client::start(config).unwrap();
        assert!(!client.wait_for_initialization(Duration::from_millis(20)).await, "times out");
        let user = Context::user("u");
        let detail = client.string_variation_detail(&user, "f", "d");
        assert_eq!(
            (detail.value.as_str(), detail.reason),
            ("d", EvaluationReason::Error { error_kind: ErrorKind::ClientNotReady })
        );
        assert!(!client.all_flags_state(&user, AllFlagsOptions::default()).valid());
        assert_eq!(client.data_source_status().state, DataSourceState::Initializing);
        client.close().await;
        assert_eq!(client.data_source_status().state, DataSourceState::Off);
        assert!(!client.wait_for_initialization(Duration::from_secs(5)).await, "closed: false at once");
    }

    #[tokio::test]
    async fn offline_clients_are_ready_and_serve_defaults() {
        let client = Client::start(Config::builder("").offline(true).build().unwrap()).unwrap();
        assert!(client.wait_for_initialization(Duration::from_millis(1)).await);
        let detail = client.bool_variation_detail(&Context::user("u"), "f", true);
        assert_eq!(
            (detail.value, detail.reason),
            (true, EvaluationReason::Error { error_kind: ErrorKind::FlagNotFound })
        );
        assert_eq!(client.data_source_status().state, DataSourceState::Valid);
    }

    #[tokio::test]
    async fn flag_changes_are_broadcast_and_values_follow() {
        let td = test_data();
        let client = client(&td).await;
        let mut changes = client.flag_changes();
        td.update(td.flag("bool").variation_for_all(false));
        let change = tokio::time::timeout(Duration::from_secs(5), changes.recv()).await.unwrap().unwrap();
        assert_eq!(change.key, "bool");
        assert!(!client.bool_variation(&Context::user("u"), "bool", true), "the new value is served once announced");
        td.delete_flag("bool");
        assert_eq!(changes.recv().await.unwrap().key, "bool");
        assert_eq!(
            client.bool_variation_detail(&Context::user("u"), "bool", true).reason,
            EvaluationReason::Error { error_kind: ErrorKind::FlagNotFound }
        );
    }

    #[tokio::test]
    async fn all_flags_state_is_the_engines_for_one_snapshot() {
        let td = test_data();
        let client = client(&td).await;
        let user = Context::user("u");
        let all = client.all_flags_state(&user, AllFlagsOptions { with_reasons: true, ..AllFlagsOptions::default() });
        assert!(all.valid());
        td.update(td.flag("bool").variation_for_all(false));
        let json = serde_json::to_value(&all).unwrap();
        assert_eq!(json["bool"]["value"], json!(true), "the snapshot is not affected by later changes");
        assert_eq!(json["bool"]["reason"], json!({"kind": "FALLTHROUGH"}));
        assert_eq!(json["str"]["value"], json!("hello"));
        assert_eq!(all.state().flags().len(), 9);
        let fresh = client.all_flags_state(&user, AllFlagsOptions::default());
        assert_eq!(fresh.state().get("bool").unwrap().detail.value, Some(&json!(false)));
    }

    #[test]
    fn secure_mode_hash_is_hex_hmac_sha256_of_the_fully_qualified_key() {
        // Expected values computed independently (Python's hmac module).
        let user = Context::user("user-key");
        assert_eq!(
            secure_mode_hash("secret", &user),
            "906e06ddaeef759ef922aa1a2e47a4f2169af86ca4c7a7ea91988531da547cea"
        );
        let org = Context::from_value(json!({"kind": "org", "key": "acme"})).unwrap();
        assert_eq!(
            secure_mode_hash("secret", &org),
            "9ba6f8f08338488e3872f5fb1e735c0039a260ee9252cdd598b1f204189a1612"
        );
    }
}
