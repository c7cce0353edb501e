//! Analytics events, as LaunchDarkly's server-side SDKs send them (schema 4): every evaluation is counted in a
//! `summary` event; a context's first appearance in a while becomes an `index` event; evaluations of flags with
//! `trackEvents` (or of a rule or fallthrough with event tracking, or in an experiment) become `feature` events,
//! and evaluations while `debugEventsUntilDate` is in the future `debug` events; prerequisite evaluations are counted
//! and tracked too (`prereqOf`); [`Client::track`](crate::Client::track) sends `custom` events and
//! [`Client::identify`](crate::Client::identify) `identify` events.
//!
//! The application's threads never wait for the event machinery:
//!
//! - Summary counters are updated in place ([`summary`]): on the common path (the counter exists from earlier in
//!   the interval) an evaluation costs a thread-affine mutex, one hash lookup and an increment, and allocates nothing.
//! - Whether a context is new is checked against a lock-free table of recently seen context keys; only a context
//!   not in it is copied and queued, and the event processor decides with its LRU ([`lru`]) whether it needs an
//!   `index` event.
//! - Everything else (feature, debug, custom and identify events, index candidates) is queued to the event processor
//!   through a bounded channel with `try_send`: when the channel is full the event is dropped and counted
//!   ([`Client::dropped_events`](crate::Client::dropped_events)). The processor holds at most `events_capacity` events
//!   between flushes and drops (and counts) the rest.
//!
//! Every flush interval (and on [`Client::flush`](crate::Client::flush) and
//! [`Client::close`](crate::Client::close)) the processor hands the events and the summary to the sender, which posts
//! them to `{events_uri}/bulk` ([`sender`]) one payload at a time, in order.

mod lru;
mod processor;
mod redact;
mod sender;
mod summary;

use std::borrow::Cow;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use pennant_eval::{
    Context, Detail, ErrorKind, Flag, PrerequisiteEvent, Reason, ValueType, VariationDetail, evaluate_with_recorder,
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::client::EvaluationReason;
use crate::config::Config;
use crate::data::FlagData;
pub(crate) use processor::Job;
pub(crate) use redact::Redaction;
pub(crate) use summary::Summary;

/// Why [`Client::flush`](crate::Client::flush) did not deliver the events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlushError {
    /// The events endpoint refused the SDK key (401 or 403): no more events are sent by this client.
    #[error("the events endpoint refused the SDK key ({status}); analytics events are no longer sent")]
    Unauthorized {
        /// The HTTP status.
        status: u16,
    },
    /// The payload could not be delivered (after its one retry, where the error allowed one) and was dropped.
    #[error("analytics events could not be delivered: {message}")]
    Failed {
        /// What went wrong.
        message: String,
    },
    /// The client was closed before the events could be sent.
    #[error("the client is closed")]
    Closed,
}

/// The current time, Unix milliseconds.
pub(crate) fn now_ms() -> u64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

/// An evaluation the processor turns into `feature` and/or `debug` events.
#[derive(Debug, Clone)]
pub(crate) struct EvalEvent {
    pub(crate) creation_date: u64,
    pub(crate) context: Context,
    pub(crate) key: String,
    pub(crate) version: Option<u64>,
    pub(crate) variation: Option<usize>,
    pub(crate) value: Value,
    pub(crate) default: Value,
    pub(crate) reason: Option<EvaluationReason>,
    pub(crate) prereq_of: Option<String>,
    /// Send a `feature` event.
    pub(crate) track: bool,
    /// Send a `debug` event.
    pub(crate) debug: bool,
    pub(crate) sampling_ratio: Option<u64>,
}

/// A `track` call.
#[derive(Debug, Clone)]
pub(crate) struct CustomEvent {
    pub(crate) creation_date: u64,
    pub(crate) context: Context,
    pub(crate) key: String,
    pub(crate) data: Option<Value>,
    pub(crate) metric_value: Option<f64>,
}

/// What the application queues for the processor.
#[derive(Debug)]
pub(crate) enum Input {
    Evaluation(Box<EvalEvent>),
    /// A context that may need an `index` event.
    Index {
        creation_date: u64,
        context: Context,
    },
    Identify {
        creation_date: u64,
        context: Context,
    },
    Custom(Box<CustomEvent>),
}

/// Requests to the processor that are never dropped.
#[derive(Debug)]
pub(crate) enum Control {
    Flush(oneshot::Sender<Result<(), FlushError>>),
    Close(oneshot::Sender<()>),
}

/// Context keys seen recently, so that the hot path queues a context for an `index` event only when the processor
/// may not know it: a direct-mapped table of key hashes. A miss (a new context, or an old one whose slot was
/// taken) queues the context; the processor's LRU decides. Cleared with the processor's LRU.
#[derive(Debug)]
pub(crate) struct SeenContexts {
    slots: Box<[AtomicU64]>,
    hasher: foldhash::fast::RandomState,
}

impl SeenContexts {
    fn new(capacity: usize) -> SeenContexts {
        let n = capacity.clamp(16, 1 << 20).next_power_of_two();
        SeenContexts { slots: (0..n).map(|_| AtomicU64::new(0)).collect(), hasher: Default::default() }
    }

    #[inline]
    fn slot(&self, key: &str) -> (&AtomicU64, u64) {
        // Never 0, which marks an empty slot.
        let hash = self.hasher.hash_one(key) | 1;
        #[allow(clippy::cast_possible_truncation)]
        let index = (hash >> 32) as usize & (self.slots.len() - 1);
        (&self.slots[index], hash)
    }

    /// Records `key`; true when it was not recorded.
    #[inline]
    fn insert(&self, key: &str) -> bool {
        let (slot, hash) = self.slot(key);
        if slot.load(Ordering::Relaxed) == hash {
            return false;
        }
        slot.store(hash, Ordering::Relaxed);
        true
    }

    /// Forgets `key` (its index candidate was dropped, so a later sighting should queue it again).
    fn forget(&self, key: &str) {
        let (slot, hash) = self.slot(key);
        let _ = slot.compare_exchange(hash, 0, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub(crate) fn clear(&self) {
        for slot in &self.slots {
            slot.store(0, Ordering::Relaxed);
        }
    }
}

/// State the application's threads and the processor share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) summary: Summary,
    pub(crate) seen: SeenContexts,
    pub(crate) dropped: AtomicU64,
    /// Nothing more is recorded: the client was closed, or the SDK key was refused.
    pub(crate) stopped: AtomicBool,
    /// The status that refused the SDK key (401 or 403), or 0.
    pub(crate) refused: AtomicU16,
    /// The latest `Date` of a successful post (Unix ms), for debug events when the local clock is behind.
    pub(crate) server_time_ms: AtomicU64,
}

impl Shared {
    pub(crate) fn new(context_keys_capacity: usize) -> Shared {
        Shared {
            summary: Summary::new(),
            seen: SeenContexts::new(context_keys_capacity),
            dropped: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            refused: AtomicU16::new(0),
            server_time_ms: AtomicU64::new(0),
        }
    }

    pub(crate) fn refused(&self) -> Option<u16> {
        Some(self.refused.load(Ordering::Acquire)).filter(|&s| s != 0)
    }

    pub(crate) fn drop_events(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }
}

/// The processor's settings.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) capacity: usize,
    pub(crate) flush_interval: Duration,
    pub(crate) context_keys_capacity: usize,
    pub(crate) context_keys_flush_interval: Duration,
    pub(crate) redaction: Redaction,
}

impl Settings {
    pub(crate) fn from_config(config: &Config) -> Settings {
        Settings {
            capacity: config.events_capacity(),
            flush_interval: config.flush_interval(),
            context_keys_capacity: config.context_keys_capacity(),
            context_keys_flush_interval: config.context_keys_flush_interval(),
            redaction: Redaction {
                all_attributes_private: config.all_attributes_private(),
                private_attributes: config.private_attributes().to_vec(),
            },
        }
    }
}

/// One evaluation, as the event machinery needs it.
pub(crate) struct Evaluation<'a> {
    pub(crate) flag: &'a Arc<Flag>,
    pub(crate) variation: Option<usize>,
    /// The variation's value; `None` when the default was served.
    pub(crate) value: Option<&'a Value>,
    pub(crate) reason: Reason<'a>,
    /// The application's default (called only when needed).
    pub(crate) default: &'a dyn Fn() -> Value,
    /// A `*_detail` call: feature events carry the reason.
    pub(crate) with_reason: bool,
    pub(crate) prereq_of: Option<&'a str>,
}

/// The application's handle on the event processor.
#[derive(Debug)]
pub(crate) struct Events {
    shared: Arc<Shared>,
    inputs: mpsc::Sender<Input>,
    control: mpsc::UnboundedSender<Control>,
}

impl Events {
    /// Starts the processor and the HTTP sender on `runtime`.
    pub(crate) fn start(config: &Config, http: reqwest::Client, runtime: &tokio::runtime::Handle) -> Events {
        let settings = Settings::from_config(config);
        let shared = Arc::new(Shared::new(settings.context_keys_capacity));
        let (jobs_tx, jobs_rx) = mpsc::channel(processor::MAX_QUEUED_PAYLOADS);
        let http_sender = sender::HttpSender::new(config, http, shared.clone(), settings.redaction.clone());
        let sender = runtime.spawn(http_sender.run(jobs_rx));
        Events::start_processor(settings, shared, jobs_tx, Some(sender), runtime)
    }

    /// Starts the processor, which hands its payloads to `jobs` (and waits for `sender` when closing).
    pub(crate) fn start_processor(
        settings: Settings,
        shared: Arc<Shared>,
        jobs: mpsc::Sender<Job>,
        sender: Option<tokio::task::JoinHandle<()>>,
        runtime: &tokio::runtime::Handle,
    ) -> Events {
        let (inputs_tx, inputs_rx) = mpsc::channel(settings.capacity);
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let processor = processor::Processor::new(settings, shared.clone(), inputs_rx, control_rx, jobs);
        runtime.spawn(processor.run(sender));
        Events { shared, inputs: inputs_tx, control: control_tx }
    }

    /// Whether events are being recorded (not closed, and the SDK key was not refused).
    #[inline]
    pub(crate) fn recording(&self) -> bool {
        !self.shared.stopped.load(Ordering::Relaxed)
    }

    /// Events dropped because the queue or the buffer was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Records an evaluation of a flag that exists: counts it, and queues what else it needs.
    #[inline]
    pub(crate) fn evaluation(&self, context: &Context, e: &Evaluation<'_>) {
        let flag: &Flag = e.flag;
        if !flag.exclude_from_summaries {
            self.shared.summary.count(e.flag, e.variation, context, e.default);
        }
        let detail =
            Detail { value: e.value, variation_index: e.variation, reason: e.reason, big_segments_status: None };
        let experiment = detail.is_experiment(flag);
        let debug = flag.debug_events_until_date.is_some_and(|until| self.debugging(until));
        if flag.track_events || experiment || debug {
            self.queue_evaluation(context, e, experiment, debug);
        } else {
            self.notice(context);
        }
    }

    /// Records an evaluation of a flag that does not exist (or before the client had data).
    pub(crate) fn unknown_flag(&self, context: &Context, flag_key: &str, default: &dyn Fn() -> Value) {
        self.shared.summary.count_unknown(flag_key, context, default);
        self.notice(context);
    }

    /// Queues an `identify` event.
    pub(crate) fn identify(&self, context: &Context) {
        if self.queue_full() {
            return;
        }
        self.send_noticing(context, Input::Identify { creation_date: now_ms(), context: context.clone() });
    }

    /// Queues a `custom` event.
    pub(crate) fn track(&self, context: &Context, key: &str, data: Option<Value>, metric_value: Option<f64>) {
        if self.queue_full() {
            return;
        }
        let event =
            CustomEvent { creation_date: now_ms(), context: context.clone(), key: key.to_owned(), data, metric_value };
        self.send_noticing(context, Input::Custom(Box::new(event)));
    }

    /// Sends everything recorded so far and waits for the outcome.
    pub(crate) async fn flush(&self) -> Result<(), FlushError> {
        let (reply, outcome) = oneshot::channel();
        if self.control.send(Control::Flush(reply)).is_err() {
            return Err(FlushError::Closed);
        }
        outcome.await.unwrap_or(Err(FlushError::Closed))
    }

    /// Stops recording, sends everything recorded, and waits until the processor and the sender have finished.
    pub(crate) async fn close(&self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
        let (reply, done) = oneshot::channel();
        if self.control.send(Control::Close(reply)).is_ok() {
            let _ = done.await;
        }
    }

    /// Whether debug events are due until `until` (Unix ms): it is later than the local clock and than the
    /// events server's clock as last seen.
    fn debugging(&self, until: u64) -> bool {
        until > now_ms().max(self.shared.server_time_ms.load(Ordering::Relaxed))
    }

    #[inline]
    fn notice(&self, context: &Context) {
        if self.shared.seen.insert(context.fully_qualified_key()) {
            self.queue_index(context);
        }
    }

    /// True (and the event counted as dropped) when the queue is full: the event need not even be built.
    #[inline]
    fn queue_full(&self) -> bool {
        if self.inputs.capacity() == 0 {
            self.shared.drop_events(1);
            return true;
        }
        false
    }

    #[cold]
    fn queue_index(&self, context: &Context) {
        if self.queue_full() {
            self.shared.seen.forget(context.fully_qualified_key());
            return;
        }
        let input = Input::Index { creation_date: now_ms(), context: context.clone() };
        if !self.send(input) {
            self.shared.seen.forget(context.fully_qualified_key());
        }
    }

    #[cold]
    fn queue_evaluation(&self, context: &Context, e: &Evaluation<'_>, experiment: bool, debug: bool) {
        if self.queue_full() {
            return;
        }
        let flag: &Flag = e.flag;
        let event = EvalEvent {
            creation_date: now_ms(),
            context: context.clone(),
            key: flag.key.clone(),
            version: Some(flag.version),
            variation: e.variation,
            value: e.value.cloned().unwrap_or_else(e.default),
            default: (e.default)(),
            reason: (e.with_reason || experiment).then(|| EvaluationReason::from(e.reason)),
            prereq_of: e.prereq_of.map(str::to_owned),
            track: flag.track_events || experiment,
            debug,
            sampling_ratio: flag.sampling_ratio,
        };
        self.send_noticing(context, Input::Evaluation(Box::new(event)));
    }

    /// Queues an event from which the processor notices `context` (deciding its `index` event), so the hot path
    /// need not queue the context again.
    fn send_noticing(&self, context: &Context, input: Input) {
        self.shared.seen.insert(context.fully_qualified_key());
        if !self.send(input) {
            self.shared.seen.forget(context.fully_qualified_key());
        }
    }

    /// Queues without waiting; false (and counted) when the queue is full.
    fn send(&self, input: Input) -> bool {
        match self.inputs.try_send(input) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared.drop_events(1);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// Whether a variation method asking for `value_type` takes `value` (as the engine's typed layer decides).
fn accepts(value_type: ValueType, value: &Value) -> bool {
    match value_type {
        ValueType::Bool => value.is_boolean(),
        ValueType::Int | ValueType::Double => value.is_number(),
        ValueType::String => value.is_string(),
        ValueType::Any => true,
    }
}

/// The engine's typed variation ([`pennant_eval::variation_detail`]) with events recorded: the flag's evaluation,
/// and each prerequisite's. `sentinel` stands for the caller's default in the result; `default` builds the caller's
/// default as JSON for the events (only when they need it).
#[allow(clippy::too_many_arguments)]
pub(crate) fn evaluate<'a>(
    data: &'a FlagData,
    flag_key: &str,
    context: &Context,
    value_type: ValueType,
    sentinel: &'a Value,
    events: &Events,
    default: &dyn Fn() -> Value,
    with_reason: bool,
) -> VariationDetail<'a> {
    let Some(flag) = data.flag_arc(flag_key).filter(|f| !f.deleted) else {
        events.unknown_flag(context, flag_key, default);
        return VariationDetail {
            value: Cow::Borrowed(sentinel),
            variation_index: None,
            reason: Reason::Error { error_kind: ErrorKind::FlagNotFound },
            big_segments_status: None,
        };
    };
    let null = || Value::Null;
    let mut recorder = |p: PrerequisiteEvent<'a>| {
        if let Some(prerequisite) = data.flag_arc(&p.prerequisite_flag.key) {
            let e = Evaluation {
                flag: prerequisite,
                variation: p.detail.variation_index,
                value: p.detail.value,
                reason: p.detail.reason,
                default: &null,
                with_reason,
                prereq_of: Some(&p.target_flag.key),
            };
            events.evaluation(context, &e);
        }
    };
    let detail = evaluate_with_recorder(data, flag, context, &mut recorder);
    let (value, variation_index, reason, big_segments_status) = match detail.value {
        Some(v) if !accepts(value_type, v) => (None, None, Reason::Error { error_kind: ErrorKind::WrongType }, None),
        Some(v) => (Some(v), detail.variation_index, detail.reason, detail.big_segments_status),
        None => (None, None, detail.reason, detail.big_segments_status),
    };
    let e = Evaluation { flag, variation: variation_index, value, reason, default, with_reason, prereq_of: None };
    events.evaluation(context, &e);
    VariationDetail { value: Cow::Borrowed(value.unwrap_or(sentinel)), variation_index, reason, big_segments_status }
}
