//! Typed LaunchDarkly analytics events, parsed from the batches SDKs post.
//!
//! **These types are the contract with `pennant-insights`.** The front door validates each batch with
//! [`parse_batch`] before queuing it (the queue carries the decompressed JSON array, [`crate::QueuedBatch`]), and the
//! processors parse the queued bytes again with the same function. Change them only together with the processors.
//!
//! Event shapes follow LaunchDarkly's Go SDK output (`go-sdk-events`: `events_output.go`): a POST body is a JSON array
//! of events of kind `feature`, `debug`, `summary`, `index`, `identify`, `custom` and `migration_op`. Diagnostic
//! events are posted one object at a time to separate endpoints and are parsed by [`parse_diagnostic`].
//!
//! Schema 3 (user-based) events are converted while parsing: an event's `user` object becomes a context of kind
//! `user` (built-in attributes and `custom` attributes at the top level, `privateAttributeNames` as
//! `_meta.privateAttributes`), a bare `userKey` becomes `{"kind":"user","key":…}`, and a custom event's user becomes
//! `contextKeys: {"user": key}`. The conversion is decided per event (an event with `context`/`contextKeys` is schema
//! 4), so the schema header is not needed to parse.
//!
//! Strings borrow from the input when they contain no escapes (`Cow::Borrowed`); values, reasons and contexts that
//! the pipeline does not look into are [`RawValue`]s borrowed from the input (a JSON `null` reads as `None`).
//!
//! Errors: a body that is not valid JSON, or not a JSON array, is a [`ParseError`] (the front door answers 400 and
//! queues nothing). A syntactically valid element that is not a usable event (unknown kind, missing or mistyped
//! required field) is skipped and counted in [`ParsedBatch::skipped`]. Parsing never panics.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A parsed batch: the usable events, in order, and how many elements were skipped.
#[derive(Debug, Clone, Default)]
pub struct ParsedBatch<'a> {
    /// The events that parsed.
    pub events: Vec<Event<'a>>,
    /// Elements of the array that were not usable events (unknown kind, missing or mistyped fields).
    pub skipped: usize,
}

/// One analytics event.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// A full evaluation event (`trackEvents`, experiments, rule/fallthrough tracking).
    Feature(FeatureEvent<'a>),
    /// Same shape as a feature event, sent while `debugEventsUntilDate` is in the future; the context is not redacted
    /// for anonymity.
    Debug(FeatureEvent<'a>),
    /// Evaluation counters for one flush interval.
    Summary(SummaryEvent<'a>),
    /// First sight of a context in a flush window (server SDKs).
    Index(ContextEvent<'a>),
    /// `identify` call.
    Identify(ContextEvent<'a>),
    /// `track` call.
    Custom(CustomEvent<'a>),
    /// A migration operation.
    MigrationOp(MigrationOpEvent<'a>),
}

impl Event<'_> {
    /// The event's `kind` as it appears on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Feature(_) => "feature",
            Event::Debug(_) => "debug",
            Event::Summary(_) => "summary",
            Event::Index(_) => "index",
            Event::Identify(_) => "identify",
            Event::Custom(_) => "custom",
            Event::MigrationOp(_) => "migration_op",
        }
    }

    /// When the event happened (Unix ms): `creationDate`, or a summary's `endDate`.
    pub fn timestamp_ms(&self) -> i64 {
        match self {
            Event::Feature(e) | Event::Debug(e) => e.creation_date,
            Event::Summary(e) => e.end_date,
            Event::Index(e) | Event::Identify(e) => e.creation_date,
            Event::Custom(e) => e.creation_date,
            Event::MigrationOp(e) => e.creation_date,
        }
    }
}

/// A `feature` or `debug` event.
#[derive(Debug, Clone)]
pub struct FeatureEvent<'a> {
    /// `creationDate`, Unix ms.
    pub creation_date: i64,
    /// Flag key.
    pub key: Cow<'a, str>,
    /// Flag version (absent when the flag was not found).
    pub version: Option<u64>,
    /// Variation index (absent when the default was served).
    pub variation: Option<u32>,
    /// The value served.
    pub value: Option<&'a RawValue>,
    /// The application's default value.
    pub default: Option<&'a RawValue>,
    /// The context (single- or multi-kind JSON, as redacted by the SDK; schema-3 users converted).
    pub context: Cow<'a, RawValue>,
    /// Evaluation reason, when the SDK sent one.
    pub reason: Option<&'a RawValue>,
    /// Key of the flag this was a prerequisite of.
    pub prereq_of: Option<Cow<'a, str>>,
    /// `samplingRatio` (1 when absent).
    pub sampling_ratio: Option<u64>,
}

/// A `summary` event.
#[derive(Debug, Clone)]
pub struct SummaryEvent<'a> {
    /// `startDate`, Unix ms.
    pub start_date: i64,
    /// `endDate`, Unix ms.
    pub end_date: i64,
    /// One entry per flag evaluated in the interval, in input order.
    pub features: Vec<FlagSummary<'a>>,
}

/// One flag's counters in a summary event.
#[derive(Debug, Clone)]
pub struct FlagSummary<'a> {
    /// Flag key.
    pub key: Cow<'a, str>,
    /// The application's default value.
    pub default: Option<&'a RawValue>,
    /// Context kinds that evaluated the flag (empty for schema 3).
    pub context_kinds: Vec<Cow<'a, str>>,
    /// The counters.
    pub counters: Vec<Counter<'a>>,
}

/// One counter of a flag summary: how often a (variation, version) was served.
#[derive(Debug, Clone)]
pub struct Counter<'a> {
    /// Variation index (absent when the default was served).
    pub variation: Option<u32>,
    /// Flag version (absent when `unknown`).
    pub version: Option<u64>,
    /// The value served.
    pub value: Option<&'a RawValue>,
    /// How many evaluations.
    pub count: u64,
    /// The flag was not found.
    pub unknown: bool,
}

/// An `index` or `identify` event.
#[derive(Debug, Clone)]
pub struct ContextEvent<'a> {
    /// `creationDate`, Unix ms.
    pub creation_date: i64,
    /// The context JSON as the SDK sent it (private attributes already removed and listed in
    /// `_meta.redactedAttributes`); schema-3 users converted.
    pub context: Cow<'a, RawValue>,
}

/// A `custom` event (`track`).
#[derive(Debug, Clone)]
pub struct CustomEvent<'a> {
    /// `creationDate`, Unix ms.
    pub creation_date: i64,
    /// Event key.
    pub key: Cow<'a, str>,
    /// Context kind → key, in input order.
    pub context_keys: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// Arbitrary data attached by the application.
    pub data: Option<&'a RawValue>,
    /// Numeric metric value.
    pub metric_value: Option<f64>,
    /// `samplingRatio` (1 when absent).
    pub sampling_ratio: Option<u64>,
}

/// A `migration_op` event.
#[derive(Debug, Clone)]
pub struct MigrationOpEvent<'a> {
    /// `creationDate`, Unix ms.
    pub creation_date: i64,
    /// `read` or `write`.
    pub operation: Cow<'a, str>,
    /// Context kind → key.
    pub context_keys: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// The migration flag's evaluation.
    pub evaluation: MigrationEvaluation<'a>,
    /// The application's default stage.
    pub default: Option<&'a RawValue>,
    /// `measurements` array (invoked, consistent, latency_ms, error), uninterpreted.
    pub measurements: Option<&'a RawValue>,
    /// `samplingRatio` (1 when absent).
    pub sampling_ratio: Option<u64>,
}

/// The evaluation inside a migration event.
#[derive(Debug, Clone)]
pub struct MigrationEvaluation<'a> {
    /// Flag key.
    pub key: Cow<'a, str>,
    /// The stage served.
    pub value: Option<&'a RawValue>,
    /// Evaluation reason.
    pub reason: Option<&'a RawValue>,
    /// Variation index.
    pub variation: Option<u32>,
    /// Flag version.
    pub version: Option<u64>,
}

/// A diagnostic event (`diagnostic-init` or periodic `diagnostic`), posted one object per request.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiagnosticEvent<'a> {
    /// `diagnostic-init` or `diagnostic`.
    #[serde(borrow)]
    pub kind: Cow<'a, str>,
    /// `{diagnosticId, sdkKeySuffix}`.
    #[serde(borrow, default)]
    pub id: Option<&'a RawValue>,
    /// `creationDate`, Unix ms.
    #[serde(default)]
    pub creation_date: Option<i64>,
    /// Periodic events: start of the interval.
    #[serde(default)]
    pub data_since_date: Option<i64>,
    /// Periodic events: events the SDK dropped.
    #[serde(default)]
    pub dropped_events: Option<u64>,
    /// Periodic events: contexts deduplicated.
    #[serde(default)]
    pub deduplicated_users: Option<u64>,
    /// Periodic events: size of the last batch.
    #[serde(default)]
    pub events_in_last_batch: Option<u64>,
    /// Init events: SDK name and version.
    #[serde(borrow, default)]
    pub sdk: Option<&'a RawValue>,
    /// Init events: SDK configuration.
    #[serde(borrow, default)]
    pub configuration: Option<&'a RawValue>,
    /// Init events: platform.
    #[serde(borrow, default)]
    pub platform: Option<&'a RawValue>,
    /// Periodic events: stream connection attempts.
    #[serde(borrow, default)]
    pub stream_inits: Option<&'a RawValue>,
}

/// Why a body could not be parsed. Any of these means "400, queue nothing".
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not valid JSON (or not UTF-8).
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// Valid JSON but not an array of events.
    #[error("expected a JSON array of events: {0}")]
    NotArray(String),
    /// Valid JSON but not a diagnostic event object.
    #[error("expected a diagnostic event object: {0}")]
    NotDiagnostic(String),
}

/// Parses a batch body (a JSON array of events). See the module documentation for what is an error and what is
/// skipped.
pub fn parse_batch(body: &[u8]) -> Result<ParsedBatch<'_>, ParseError> {
    // Fast path: one pass, typed, borrowing. It fails as a whole on a mistyped field; then the slow path splits
    // the array into raw elements and parses each on its own, skipping the bad ones.
    match serde_json::from_slice::<FastBatch<'_>>(body) {
        Ok(FastBatch(batch)) => Ok(batch),
        Err(e) if e.classify() == serde_json::error::Category::Data => parse_batch_slow(body),
        Err(e) => Err(ParseError::Malformed(e.to_string())),
    }
}

fn parse_batch_slow(body: &[u8]) -> Result<ParsedBatch<'_>, ParseError> {
    let raw: Vec<&RawValue> = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ParseError::NotArray(e.to_string()),
        _ => ParseError::Malformed(e.to_string()),
    })?;
    let mut batch = ParsedBatch { events: Vec::with_capacity(raw.len()), skipped: 0 };
    for element in raw {
        match serde_json::from_str::<Flat<'_>>(element.get()).ok().and_then(Flat::into_event) {
            Some(event) => batch.events.push(event),
            None => batch.skipped += 1,
        }
    }
    Ok(batch)
}

/// Parses a diagnostic event body (one JSON object with a string `kind`).
pub fn parse_diagnostic(body: &[u8]) -> Result<DiagnosticEvent<'_>, ParseError> {
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ParseError::NotDiagnostic(e.to_string()),
        _ => ParseError::Malformed(e.to_string()),
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Wire forms.

/// A string that borrows from the input when it has no escapes.
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// `contextKeys`: an object of kind → key, kept in input order.
struct Keys<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'de: 'a, 'a> Deserialize<'de> for Keys<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Keys<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of context kind to key")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Keys<'de>, A::Error> {
                let mut keys = Vec::with_capacity(2);
                while let Some(Str(kind)) = map.next_key::<Str<'de>>()? {
                    let Str(key) = map.next_value::<Str<'de>>()?;
                    keys.push((kind, key));
                }
                Ok(Keys(keys))
            }
        }
        d.deserialize_map(V)
    }
}

/// A summary's `features`: flag key → counters, kept in input order.
struct Features<'a>(Vec<FlagSummary<'a>>);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FlatFlagSummary<'a> {
    #[serde(borrow, default)]
    default: Option<&'a RawValue>,
    #[serde(borrow, default)]
    context_kinds: Option<Vec<Str<'a>>>,
    #[serde(borrow, default)]
    counters: Vec<FlatCounter<'a>>,
}

#[derive(Deserialize)]
struct FlatCounter<'a> {
    #[serde(default)]
    variation: Option<u32>,
    #[serde(default)]
    version: Option<u64>,
    #[serde(borrow, default)]
    value: Option<&'a RawValue>,
    count: u64,
    #[serde(default)]
    unknown: Option<bool>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Features<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Features<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of flag key to summary")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Features<'de>, A::Error> {
                let mut features = Vec::new();
                while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
                    let flat = map.next_value::<FlatFlagSummary<'de>>()?;
                    features.push(FlagSummary {
                        key,
                        default: flat.default,
                        context_kinds: flat.context_kinds.unwrap_or_default().into_iter().map(|s| s.0).collect(),
                        counters: flat
                            .counters
                            .into_iter()
                            .map(|c| Counter {
                                variation: c.variation,
                                version: c.version,
                                value: c.value,
                                count: c.count,
                                unknown: c.unknown.unwrap_or(false),
                            })
                            .collect(),
                    });
                }
                Ok(Features(features))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Deserialize)]
struct FlatEvaluation<'a> {
    #[serde(borrow)]
    key: Str<'a>,
    #[serde(borrow, default)]
    value: Option<&'a RawValue>,
    #[serde(borrow, default)]
    reason: Option<&'a RawValue>,
    #[serde(default)]
    variation: Option<u32>,
    #[serde(default)]
    version: Option<u64>,
}

/// Every field any event kind has; unknown fields are ignored. Converted to an [`Event`] by kind.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Flat<'a> {
    #[serde(borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(default)]
    creation_date: Option<i64>,
    #[serde(borrow, default)]
    key: Option<Str<'a>>,
    #[serde(default)]
    version: Option<u64>,
    #[serde(default)]
    variation: Option<u32>,
    #[serde(borrow, default)]
    value: Option<&'a RawValue>,
    #[serde(borrow, default)]
    default: Option<&'a RawValue>,
    #[serde(borrow, default)]
    context: Option<&'a RawValue>,
    #[serde(borrow, default)]
    context_keys: Option<Keys<'a>>,
    #[serde(borrow, default)]
    user: Option<&'a RawValue>,
    #[serde(borrow, default)]
    user_key: Option<Str<'a>>,
    #[serde(borrow, default)]
    context_kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    reason: Option<&'a RawValue>,
    #[serde(borrow, default)]
    prereq_of: Option<Str<'a>>,
    #[serde(default)]
    sampling_ratio: Option<u64>,
    #[serde(default)]
    start_date: Option<i64>,
    #[serde(default)]
    end_date: Option<i64>,
    #[serde(borrow, default)]
    features: Option<Features<'a>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    metric_value: Option<f64>,
    #[serde(borrow, default)]
    operation: Option<Str<'a>>,
    #[serde(borrow, default)]
    evaluation: Option<FlatEvaluation<'a>>,
    #[serde(borrow, default)]
    measurements: Option<&'a RawValue>,
}

impl<'a> Flat<'a> {
    fn into_event(self) -> Option<Event<'a>> {
        let kind = self.kind.as_ref()?.0.as_ref();
        match kind {
            "feature" | "debug" => {
                let debug = kind == "debug";
                let context = self.event_context()?;
                let event = FeatureEvent {
                    creation_date: self.creation_date?,
                    key: self.key?.0,
                    version: self.version,
                    variation: self.variation,
                    value: self.value,
                    default: self.default,
                    context,
                    reason: self.reason,
                    prereq_of: self.prereq_of.map(|s| s.0),
                    sampling_ratio: self.sampling_ratio,
                };
                Some(if debug { Event::Debug(event) } else { Event::Feature(event) })
            }
            "summary" => Some(Event::Summary(SummaryEvent {
                start_date: self.start_date?,
                end_date: self.end_date?,
                features: self.features?.0,
            })),
            "index" | "identify" => {
                let identify = kind == "identify";
                let event = ContextEvent { creation_date: self.creation_date?, context: self.event_context()? };
                Some(if identify { Event::Identify(event) } else { Event::Index(event) })
            }
            "custom" => {
                let context_keys = self.context_keys_or_user()?;
                Some(Event::Custom(CustomEvent {
                    creation_date: self.creation_date?,
                    key: self.key?.0,
                    context_keys,
                    data: self.data,
                    metric_value: self.metric_value,
                    sampling_ratio: self.sampling_ratio,
                }))
            }
            "migration_op" => {
                let context_keys = self.context_keys_or_user()?;
                let evaluation = self.evaluation?;
                Some(Event::MigrationOp(MigrationOpEvent {
                    creation_date: self.creation_date?,
                    operation: self.operation?.0,
                    context_keys,
                    evaluation: MigrationEvaluation {
                        key: evaluation.key.0,
                        value: evaluation.value,
                        reason: evaluation.reason,
                        variation: evaluation.variation,
                        version: evaluation.version,
                    },
                    default: self.default,
                    measurements: self.measurements,
                    sampling_ratio: self.sampling_ratio,
                }))
            }
            _ => None,
        }
    }

    /// The event's context: `context` (schema 4), else a converted `user` or `userKey` (schema 3).
    fn event_context(&self) -> Option<Cow<'a, RawValue>> {
        if let Some(context) = self.context {
            return Some(Cow::Borrowed(context));
        }
        let anonymous = self.context_kind.as_ref().is_some_and(|k| k.0 == "anonymousUser");
        if let Some(user) = self.user {
            return convert_user(user, anonymous).map(Cow::Owned);
        }
        let key = self.user_key.as_ref()?;
        let mut context = serde_json::Map::new();
        context.insert("kind".into(), "user".into());
        context.insert("key".into(), key.0.as_ref().into());
        if anonymous {
            context.insert("anonymous".into(), true.into());
        }
        serde_json::value::to_raw_value(&context).ok().map(Cow::Owned)
    }

    fn context_keys_or_user(&self) -> Option<Vec<(Cow<'a, str>, Cow<'a, str>)>> {
        if let Some(keys) = &self.context_keys {
            return Some(keys.0.clone());
        }
        if let Some(context) = self.context {
            // Current SDKs (Python 9.x, for one) send custom events with the whole context instead of keys.
            return context_keys_of(context);
        }
        if let Some(key) = &self.user_key {
            return Some(vec![(Cow::Borrowed("user"), key.0.clone())]);
        }
        let user = self.user?;
        let key = serde_json::from_str::<UserKeyOnly<'a>>(user.get()).ok()?.key?.0;
        Some(vec![(Cow::Borrowed("user"), key)])
    }
}

/// Kind → key of every context in an event's context (single-kind, multi-kind, or an old user without `kind`).
fn context_keys_of<'a>(context: &RawValue) -> Option<Vec<(Cow<'a, str>, Cow<'a, str>)>> {
    let serde_json::Value::Object(fields) = serde_json::from_str::<serde_json::Value>(context.get()).ok()? else {
        return None;
    };
    let key_of =
        |v: &serde_json::Value| v.get("key").and_then(serde_json::Value::as_str).map(|k| Cow::Owned(k.to_owned()));
    match fields.get("kind").and_then(serde_json::Value::as_str) {
        Some("multi") => {
            let keys: Vec<_> = fields
                .iter()
                .filter(|(kind, _)| kind.as_str() != "kind")
                .filter_map(|(kind, part)| Some((Cow::Owned(kind.clone()), key_of(part)?)))
                .collect();
            (!keys.is_empty()).then_some(keys)
        }
        kind => {
            let key = fields.get("key")?.as_str()?;
            Some(vec![(Cow::Owned(kind.unwrap_or("user").to_owned()), Cow::Owned(key.to_owned()))])
        }
    }
}

#[derive(Deserialize)]
struct UserKeyOnly<'a> {
    #[serde(borrow, default)]
    key: Option<Str<'a>>,
}

/// Old-style user attributes that become top-level context attributes.
const USER_BUILT_INS: &[&str] = &["ip", "email", "name", "avatar", "firstName", "lastName", "country"];

/// Converts a schema-3 user object to a context of kind `user`. `None` when it is not an object with a string key.
fn convert_user(user: &RawValue, anonymous: bool) -> Option<Box<RawValue>> {
    let serde_json::Value::Object(mut user) = serde_json::from_str::<serde_json::Value>(user.get()).ok()? else {
        return None;
    };
    let key = match user.remove("key")? {
        serde_json::Value::String(s) => s,
        _ => return None,
    };
    let mut context = serde_json::Map::new();
    context.insert("kind".into(), "user".into());
    context.insert("key".into(), key.into());
    let anonymous = anonymous || user.get("anonymous").and_then(serde_json::Value::as_bool).unwrap_or(false);
    if anonymous {
        context.insert("anonymous".into(), true.into());
    }
    for name in USER_BUILT_INS {
        if let Some(value) = user.remove(*name).filter(|v| !v.is_null()) {
            context.insert((*name).into(), value);
        }
    }
    if let Some(serde_json::Value::Object(custom)) = user.remove("custom") {
        for (name, value) in custom {
            if !matches!(name.as_str(), "kind" | "key" | "anonymous" | "_meta") && !context.contains_key(&name) {
                context.insert(name, value);
            }
        }
    }
    if let Some(serde_json::Value::Array(private)) = user.remove("privateAttributeNames") {
        // Old attribute names are literal names; as attribute references, `/` and `~` must be escaped.
        let refs: Vec<serde_json::Value> = private
            .into_iter()
            .filter_map(|v| match v {
                serde_json::Value::String(s) if s.starts_with('/') => Some(format!("/{}", escape_ref(&s)).into()),
                serde_json::Value::String(s) => Some(s.into()),
                _ => None,
            })
            .collect();
        if !refs.is_empty() {
            let mut meta = serde_json::Map::new();
            meta.insert("privateAttributes".into(), refs.into());
            context.insert("_meta".into(), meta.into());
        }
    }
    serde_json::value::to_raw_value(&context).ok()
}

fn escape_ref(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

/// The whole batch in one pass.
struct FastBatch<'a>(ParsedBatch<'a>);

impl<'de> Deserialize<'de> for FastBatch<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FastBatch<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of events")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FastBatch<'de>, A::Error> {
                let mut batch = ParsedBatch { events: Vec::with_capacity(seq.size_hint().unwrap_or(16)), skipped: 0 };
                while let Some(flat) = seq.next_element::<Flat<'de>>()? {
                    match flat.into_event() {
                        Some(event) => batch.events.push(event),
                        None => batch.skipped += 1,
                    }
                }
                Ok(FastBatch(batch))
            }
        }
        d.deserialize_seq(V)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn one(json: &str) -> Event<'_> {
        let batch = parse_batch(json.as_bytes()).unwrap();
        assert_eq!(batch.skipped, 0, "{json}");
        assert_eq!(batch.events.len(), 1);
        batch.events.into_iter().next().unwrap()
    }

    fn ctx_json(c: &RawValue) -> serde_json::Value {
        serde_json::from_str(c.get()).unwrap()
    }

    #[test]
    fn custom_events_with_a_whole_context_get_its_keys() {
        // As LaunchDarkly's Python SDK 9.x sends them.
        let json = r#"[{"kind":"custom","creationDate":1,"key":"purchase","context":{"key":"s0","kind":"user","name":"S"},
            "data":{"cart":3},"metricValue":42.5}]"#;
        let Event::Custom(e) = one(json) else { panic!("not a custom event") };
        assert_eq!(e.context_keys, vec![(Cow::Borrowed("user"), Cow::Borrowed("s0"))]);
        assert_eq!(e.metric_value, Some(42.5));
        let multi = r#"[{"kind":"custom","creationDate":1,"key":"k","context":{"kind":"multi","user":{"key":"u"},
            "org":{"key":"o","name":"O"}}}]"#;
        let Event::Custom(e) = one(multi) else { panic!("not a custom event") };
        let mut keys: Vec<(String, String)> =
            e.context_keys.into_iter().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        keys.sort();
        assert_eq!(keys, vec![("org".into(), "o".into()), ("user".into(), "u".into())]);
        let legacy = r#"[{"kind":"custom","creationDate":1,"key":"k","context":{"key":"old"}}]"#;
        let Event::Custom(e) = one(legacy) else { panic!("not a custom event") };
        assert_eq!(e.context_keys, vec![(Cow::Borrowed("user"), Cow::Borrowed("old"))]);
        let keyless = r#"[{"kind":"custom","creationDate":1,"key":"k","context":{"kind":"user"}}]"#;
        assert_eq!(parse_batch(keyless.as_bytes()).unwrap().skipped, 1, "a context without a key is skipped");
    }

    #[test]
    fn feature_event_borrows() {
        let json = r#"[{"kind":"feature","creationDate":1700000000000,"key":"flag-a","version":7,"variation":1,
            "value":true,"default":false,"context":{"kind":"user","key":"u1"},"reason":{"kind":"FALLTHROUGH"},
            "prereqOf":"parent","samplingRatio":2,"extra":[1,2,{"x":null}]}]"#;
        let Event::Feature(e) = one(json) else { panic!("not a feature event") };
        assert_eq!(e.creation_date, 1_700_000_000_000);
        assert!(matches!(e.key, Cow::Borrowed("flag-a")));
        assert_eq!((e.version, e.variation), (Some(7), Some(1)));
        assert_eq!(e.value.unwrap().get(), "true");
        assert_eq!(e.default.unwrap().get(), "false");
        assert!(matches!(e.context, Cow::Borrowed(_)));
        assert_eq!(ctx_json(&e.context)["key"], "u1");
        assert_eq!(e.reason.unwrap().get(), r#"{"kind":"FALLTHROUGH"}"#);
        assert_eq!(e.prereq_of.as_deref(), Some("parent"));
        assert_eq!(e.sampling_ratio, Some(2));
    }

    #[test]
    fn escaped_key_is_owned() {
        let Event::Feature(e) =
            one(r#"[{"kind":"feature","creationDate":1,"key":"a\"b","context":{"kind":"user","key":"u"}}]"#)
        else {
            panic!("not a feature event")
        };
        assert_eq!(e.key, "a\"b");
        assert!(matches!(e.key, Cow::Owned(_)));
        assert!(e.value.is_none() && e.variation.is_none());
    }

    #[test]
    fn debug_event() {
        let e = one(r#"[{"kind":"debug","creationDate":5,"key":"f","context":{"kind":"org","key":"o"},"value":3}]"#);
        let Event::Debug(d) = &e else { panic!("not debug") };
        assert_eq!(d.value.unwrap().get(), "3");
        assert_eq!(e.kind(), "debug");
        assert_eq!(e.timestamp_ms(), 5);
    }

    #[test]
    fn summary_event() {
        let json = r#"[{"kind":"summary","startDate":1000,"endDate":2000,"features":{
            "f1":{"default":false,"contextKinds":["user","org"],"counters":[
                {"variation":0,"version":3,"value":true,"count":10},{"variation":1,"version":3,"value":false,"count":2}]},
            "missing":{"default":"x","counters":[{"unknown":true,"value":"x","count":4}]}}}]"#;
        let e = one(json);
        assert_eq!(e.timestamp_ms(), 2000);
        let Event::Summary(s) = e else { panic!("not summary") };
        assert_eq!((s.start_date, s.end_date), (1000, 2000));
        assert_eq!(s.features.len(), 2);
        assert_eq!(s.features[0].key, "f1");
        assert_eq!(s.features[0].context_kinds, vec!["user", "org"]);
        assert_eq!(s.features[0].counters.len(), 2);
        assert_eq!(s.features[0].counters[0].count, 10);
        assert_eq!(s.features[0].counters[1].variation, Some(1));
        let unknown = &s.features[1].counters[0];
        assert!(unknown.unknown);
        assert_eq!((unknown.variation, unknown.version, unknown.count), (None, None, 4));
        assert!(s.features[1].context_kinds.is_empty());
    }

    #[test]
    fn index_and_identify_events() {
        let json = r#"[{"kind":"index","creationDate":1,"context":{"kind":"multi","user":{"key":"u"},"org":{"key":"o"}}},
            {"kind":"identify","creationDate":2,"context":{"kind":"user","key":"u","name":"N",
             "_meta":{"redactedAttributes":["email"]}}}]"#;
        let batch = parse_batch(json.as_bytes()).unwrap();
        assert_eq!(batch.events.len(), 2);
        let Event::Index(i) = &batch.events[0] else { panic!("not index") };
        assert_eq!(ctx_json(&i.context)["org"]["key"], "o");
        let Event::Identify(i) = &batch.events[1] else { panic!("not identify") };
        assert_eq!(ctx_json(&i.context)["name"], "N");
        assert_eq!(i.creation_date, 2);
    }

    #[test]
    fn custom_event() {
        let json = r#"[{"kind":"custom","creationDate":9,"key":"checkout","contextKeys":{"user":"u1","org":"o1"},
            "data":{"cart":[1,2]},"metricValue":12.5}]"#;
        let Event::Custom(c) = one(json) else { panic!("not custom") };
        assert_eq!(c.key, "checkout");
        assert_eq!(c.context_keys, vec![(Cow::Borrowed("user"), Cow::Borrowed("u1")), ("org".into(), "o1".into())]);
        assert_eq!(c.data.unwrap().get(), r#"{"cart":[1,2]}"#);
        assert_eq!(c.metric_value, Some(12.5));
    }

    #[test]
    fn migration_op_event() {
        let json = r#"[{"kind":"migration_op","creationDate":3,"operation":"read","contextKeys":{"user":"u"},
            "evaluation":{"key":"mig","value":"shadow","reason":{"kind":"FALLTHROUGH"},"variation":2,"version":4},
            "default":"off","measurements":[{"key":"invoked","values":{"old":true,"new":true}}],"samplingRatio":1}]"#;
        let Event::MigrationOp(m) = one(json) else { panic!("not migration_op") };
        assert_eq!(m.operation, "read");
        assert_eq!(m.evaluation.key, "mig");
        assert_eq!(m.evaluation.value.unwrap().get(), r#""shadow""#);
        assert_eq!((m.evaluation.variation, m.evaluation.version), (Some(2), Some(4)));
        assert_eq!(m.default.unwrap().get(), r#""off""#);
        assert!(m.measurements.unwrap().get().contains("invoked"));
        assert_eq!(m.context_keys.len(), 1);
    }

    #[test]
    fn schema_3_user_events_are_converted() {
        let json = r#"[
            {"kind":"feature","creationDate":1,"key":"f","user":{"key":"u1","name":"Ann","email":"a@x",
              "secondary":"s","custom":{"plan":"gold","key":"ignored"},"privateAttributeNames":["email","/odd"]},
              "value":true},
            {"kind":"feature","creationDate":2,"key":"f","userKey":"u2","contextKind":"anonymousUser"},
            {"kind":"index","creationDate":3,"user":{"key":"u3","anonymous":true}},
            {"kind":"identify","creationDate":4,"user":{"key":"u4"}},
            {"kind":"custom","creationDate":5,"key":"click","userKey":"u5"},
            {"kind":"custom","creationDate":6,"key":"click","user":{"key":"u6","name":"Z"}}]"#;
        let batch = parse_batch(json.as_bytes()).unwrap();
        assert_eq!((batch.events.len(), batch.skipped), (6, 0));
        let Event::Feature(f) = &batch.events[0] else { panic!() };
        let c = ctx_json(&f.context);
        assert_eq!(
            c,
            serde_json::json!({"kind":"user","key":"u1","name":"Ann","email":"a@x","plan":"gold",
                "_meta":{"privateAttributes":["email","/~1odd"]}})
        );
        let Event::Feature(f) = &batch.events[1] else { panic!() };
        assert_eq!(ctx_json(&f.context), serde_json::json!({"kind":"user","key":"u2","anonymous":true}));
        let Event::Index(i) = &batch.events[2] else { panic!() };
        assert_eq!(ctx_json(&i.context), serde_json::json!({"kind":"user","key":"u3","anonymous":true}));
        let Event::Identify(i) = &batch.events[3] else { panic!() };
        assert_eq!(ctx_json(&i.context), serde_json::json!({"kind":"user","key":"u4"}));
        let Event::Custom(c) = &batch.events[4] else { panic!() };
        assert_eq!(c.context_keys, vec![(Cow::Borrowed("user"), Cow::Borrowed("u5"))]);
        let Event::Custom(c) = &batch.events[5] else { panic!() };
        assert_eq!(c.context_keys, vec![(Cow::Borrowed("user"), Cow::Borrowed("u6"))]);
    }

    #[test]
    fn bad_events_are_skipped_and_counted() {
        let json = r#"[
            {"kind":"custom","creationDate":1,"key":"ok","contextKeys":{"user":"u"}},
            {"kind":"feature","creationDate":"yesterday","key":"f","context":{"key":"u"}},
            {"kind":"nonsense","creationDate":1},
            {"kind":"feature","creationDate":1,"context":{"key":"u"}},
            {"kind":"summary","startDate":1,"endDate":2,"features":{"f":{"counters":[{"count":-1}]}}},
            {"kind":"index","creationDate":1},
            42, "str", null, [],
            {"kind":"identify","creationDate":7,"context":{"kind":"user","key":"k"}}]"#;
        let batch = parse_batch(json.as_bytes()).unwrap();
        assert_eq!(batch.skipped, 9);
        assert_eq!(batch.events.len(), 2);
        assert_eq!(batch.events[0].kind(), "custom");
        assert_eq!(batch.events[1].timestamp_ms(), 7);
    }

    #[test]
    fn unknown_kind_alone_skips_without_slow_path() {
        let batch = parse_batch(br#"[{"kind":"future-kind","creationDate":1}]"#).unwrap();
        assert_eq!((batch.events.len(), batch.skipped), (0, 1));
    }

    #[test]
    fn malformed_and_non_array_bodies_are_errors() {
        assert!(matches!(parse_batch(b"[{\"kind\":\"custom\""), Err(ParseError::Malformed(_))));
        assert!(matches!(parse_batch(b""), Err(ParseError::Malformed(_))));
        assert!(matches!(parse_batch(b"[1,]"), Err(ParseError::Malformed(_))));
        assert!(matches!(parse_batch(b"\xff\xfe"), Err(ParseError::Malformed(_))));
        assert!(matches!(parse_batch(b"{\"kind\":\"custom\"}"), Err(ParseError::NotArray(_))));
        assert!(matches!(parse_batch(b"\"x\""), Err(ParseError::NotArray(_))));
        // Trailing garbage after a good array.
        assert!(parse_batch(b"[] x").is_err());
        assert_eq!(parse_batch(b" [ ] ").unwrap().events.len(), 0);
    }

    #[test]
    fn invalid_utf8_inside_a_string_is_an_error() {
        let mut body = br#"[{"kind":"custom","creationDate":1,"key":"#.to_vec();
        body.extend_from_slice(b"\"\xff\"}]");
        assert!(parse_batch(&body).is_err());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        // Deeply nested elements are skipped (or refused) without overflowing the stack.
        let body = format!("[{}{}]", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse_batch(body.as_bytes()).map_or(true, |b| b.events.is_empty() && b.skipped == 1));
        let body = format!(
            r#"[{{"kind":"custom","creationDate":1,"key":"k","contextKeys":{{}},"data":{}{}}}]"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(parse_batch(body.as_bytes()).map_or(true, |b| b.events.len() + b.skipped == 1));
    }

    #[test]
    fn diagnostics() {
        let init = br#"{"kind":"diagnostic-init","id":{"diagnosticId":"d","sdkKeySuffix":"abc123"},"creationDate":1,
            "sdk":{"name":"go-server-sdk","version":"7.0.0"},"configuration":{},"platform":{"name":"Go"}}"#;
        let d = parse_diagnostic(init).unwrap();
        assert_eq!(d.kind, "diagnostic-init");
        assert!(d.sdk.unwrap().get().contains("go-server-sdk"));
        let periodic = br#"{"kind":"diagnostic","creationDate":2,"dataSinceDate":1,"droppedEvents":3,
            "deduplicatedUsers":4,"eventsInLastBatch":5,"streamInits":[]}"#;
        let d = parse_diagnostic(periodic).unwrap();
        assert_eq!((d.dropped_events, d.events_in_last_batch), (Some(3), Some(5)));
        assert!(matches!(parse_diagnostic(b"[1]"), Err(ParseError::NotDiagnostic(_))));
        assert!(matches!(parse_diagnostic(b"{"), Err(ParseError::Malformed(_))));
    }
}
