//! The event processor: a task that turns what the application queued into output events, decides `index` events
//! with its LRU of context keys, holds at most `events_capacity` events, and at each flush hands the events and the
//! summary counters to the sender as one payload.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pennant_eval::Context;
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};

use super::lru::ContextKeys;
use super::redact::Redaction;
use super::summary::Aggregate;
use super::{Control, CustomEvent, EvalEvent, FlushError, Input, Settings, Shared, now_ms};

/// Payloads waiting for the sender. A periodic flush that finds the queue full keeps its events for the next one.
pub(crate) const MAX_QUEUED_PAYLOADS: usize = 4;

/// An event as it is posted.
#[derive(Debug, Clone)]
pub(crate) enum OutputEvent {
    Index { creation_date: u64, context: Context },
    Identify { creation_date: u64, context: Context },
    Feature(Box<EvalEvent>),
    Debug(Box<EvalEvent>),
    Custom(Box<CustomEvent>),
}

/// One payload for the sender, and who waits for its outcome.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) events: Vec<OutputEvent>,
    pub(crate) summary: Aggregate,
    pub(crate) end_ms: u64,
    pub(crate) reply: Option<oneshot::Sender<Result<(), FlushError>>>,
}

impl Job {
    pub(crate) fn is_empty(&self) -> bool {
        self.events.is_empty() && self.summary.is_empty()
    }

    /// The number of events in the payload (the summary counts as one).
    pub(crate) fn len(&self) -> usize {
        self.events.len() + usize::from(!self.summary.is_empty())
    }

    /// The payload: a JSON array of the events, then the summary.
    pub(crate) fn payload<'a>(&'a self, redaction: &'a Redaction) -> Payload<'a> {
        Payload { job: self, redaction }
    }
}

/// Serialises a job as the JSON array that is posted.
#[derive(Debug)]
pub(crate) struct Payload<'a> {
    job: &'a Job,
    redaction: &'a Redaction,
}

impl Serialize for Payload<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.job.len()))?;
        for event in &self.job.events {
            seq.serialize_element(&Out { event, redaction: self.redaction })?;
        }
        if !self.job.summary.is_empty() {
            seq.serialize_element(&self.job.summary.event(self.job.end_ms))?;
        }
        seq.end()
    }
}

struct Out<'a> {
    event: &'a OutputEvent,
    redaction: &'a Redaction,
}

impl Serialize for Out<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        match self.event {
            OutputEvent::Index { creation_date, context } | OutputEvent::Identify { creation_date, context } => {
                let kind = if matches!(self.event, OutputEvent::Index { .. }) { "index" } else { "identify" };
                map.serialize_entry("kind", kind)?;
                map.serialize_entry("creationDate", creation_date)?;
                map.serialize_entry("context", &self.redaction.context(context, false))?;
            }
            OutputEvent::Feature(e) | OutputEvent::Debug(e) => {
                let debug = matches!(self.event, OutputEvent::Debug(_));
                map.serialize_entry("kind", if debug { "debug" } else { "feature" })?;
                map.serialize_entry("creationDate", &e.creation_date)?;
                map.serialize_entry("key", &e.key)?;
                if let Some(version) = e.version {
                    map.serialize_entry("version", &version)?;
                }
                // Debug events show the context as it is (private attributes still redacted).
                map.serialize_entry("context", &self.redaction.context(&e.context, !debug))?;
                if let Some(variation) = e.variation {
                    map.serialize_entry("variation", &variation)?;
                }
                map.serialize_entry("value", &e.value)?;
                map.serialize_entry("default", &e.default)?;
                if let Some(reason) = &e.reason {
                    map.serialize_entry("reason", reason)?;
                }
                if let Some(prereq_of) = &e.prereq_of {
                    map.serialize_entry("prereqOf", prereq_of)?;
                }
                if let Some(ratio) = e.sampling_ratio.filter(|&r| r != 1) {
                    map.serialize_entry("samplingRatio", &ratio)?;
                }
            }
            OutputEvent::Custom(e) => {
                map.serialize_entry("kind", "custom")?;
                map.serialize_entry("creationDate", &e.creation_date)?;
                map.serialize_entry("key", &e.key)?;
                map.serialize_entry("contextKeys", &ContextKeysOut(&e.context))?;
                if let Some(data) = e.data.as_ref().filter(|d| !d.is_null()) {
                    map.serialize_entry("data", data)?;
                }
                if let Some(metric_value) = e.metric_value {
                    map.serialize_entry("metricValue", &metric_value)?;
                }
            }
        }
        map.end()
    }
}

/// `{kind: key}` for each individual context.
struct ContextKeysOut<'a>(&'a Context);

impl Serialize for ContextKeysOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.contexts().len()))?;
        for c in self.0.contexts() {
            map.serialize_entry(c.kind(), c.key())?;
        }
        map.end()
    }
}

/// Whether an event with this `samplingRatio` is sent: one in `ratio` (never for 0).
fn sampled(ratio: Option<u64>) -> bool {
    match ratio {
        None | Some(1) => true,
        Some(0) => false,
        Some(ratio) => rand::random::<u64>().is_multiple_of(ratio),
    }
}

pub(crate) struct Processor {
    settings: Settings,
    shared: Arc<Shared>,
    inputs: mpsc::Receiver<Input>,
    control: mpsc::UnboundedReceiver<Control>,
    jobs: mpsc::Sender<Job>,
    outbox: Vec<OutputEvent>,
    /// Counters drained from the shards and not yet handed to the sender.
    summary: Aggregate,
    keys: ContextKeys,
    /// The buffer was full since the last flush (warned once).
    overflowing: bool,
}

impl Processor {
    pub(crate) fn new(
        settings: Settings,
        shared: Arc<Shared>,
        inputs: mpsc::Receiver<Input>,
        control: mpsc::UnboundedReceiver<Control>,
        jobs: mpsc::Sender<Job>,
    ) -> Processor {
        Processor {
            keys: ContextKeys::new(settings.context_keys_capacity),
            outbox: Vec::new(),
            summary: Aggregate::default(),
            overflowing: false,
            settings,
            shared,
            inputs,
            control,
            jobs,
        }
    }

    /// Runs until the client is closed or dropped; then sends what is left, waits for `sender` to finish, and
    /// answers the close.
    pub(crate) async fn run(mut self, sender: Option<tokio::task::JoinHandle<()>>) {
        let mut flush = ticker(self.settings.flush_interval);
        let mut forget = ticker(self.settings.context_keys_flush_interval);
        let closed: Option<oneshot::Sender<()>> = loop {
            tokio::select! {
                biased;
                control = self.control.recv() => match control {
                    Some(Control::Flush(reply)) => {
                        self.drain_inputs();
                        self.flush(Some(reply), true).await;
                    }
                    Some(Control::Close(reply)) => break Some(reply),
                    None => break None,
                },
                input = self.inputs.recv() => match input {
                    Some(input) => self.process(input),
                    None => break None,
                },
                _ = flush.tick() => self.flush(None, false).await,
                _ = forget.tick() => {
                    self.keys.clear();
                    self.shared.seen.clear();
                }
            }
        };
        self.shared.stopped.store(true, Ordering::Relaxed);
        self.drain_inputs();
        self.flush(None, true).await;
        drop(self.jobs);
        if let Some(sender) = sender {
            let _ = sender.await;
        }
        if let Some(reply) = closed {
            let _ = reply.send(());
        }
    }

    /// Processes everything queued now.
    fn drain_inputs(&mut self) {
        while let Ok(input) = self.inputs.try_recv() {
            self.process(input);
        }
    }

    fn process(&mut self, input: Input) {
        match input {
            Input::Evaluation(e) => {
                self.index(e.creation_date, &e.context);
                if e.debug && sampled(e.sampling_ratio) {
                    self.add(OutputEvent::Debug(e.clone()));
                }
                if e.track && sampled(e.sampling_ratio) {
                    self.add(OutputEvent::Feature(e));
                }
            }
            Input::Index { creation_date, context } => {
                if self.keys.notice(context.fully_qualified_key()) {
                    self.add(OutputEvent::Index { creation_date, context });
                }
            }
            Input::Identify { creation_date, context } => {
                self.keys.notice(context.fully_qualified_key());
                self.add(OutputEvent::Identify { creation_date, context });
            }
            Input::Custom(e) => {
                self.index(e.creation_date, &e.context);
                self.add(OutputEvent::Custom(e));
            }
        }
    }

    /// An `index` event for `context` if the LRU does not know it.
    fn index(&mut self, creation_date: u64, context: &Context) {
        if self.keys.notice(context.fully_qualified_key()) {
            self.add(OutputEvent::Index { creation_date, context: context.clone() });
        }
    }

    fn add(&mut self, event: OutputEvent) {
        if self.outbox.len() >= self.settings.capacity {
            if !self.overflowing {
                self.overflowing = true;
                tracing::warn!(
                    capacity = self.settings.capacity,
                    "analytics event buffer full; events are dropped until the next flush (raise events_capacity)"
                );
            }
            self.shared.drop_events(1);
            return;
        }
        self.outbox.push(event);
    }

    /// Hands the events and the summary to the sender. `wait`: wait for room in the sender's queue (explicit
    /// flushes); otherwise a full queue leaves everything for the next flush.
    async fn flush(&mut self, reply: Option<oneshot::Sender<Result<(), FlushError>>>, wait: bool) {
        self.shared.summary.drain_into(&mut self.summary);
        if let Some(status) = self.shared.refused() {
            // The SDK key was refused: nothing will be sent again.
            self.outbox.clear();
            self.summary = Aggregate::default();
            if let Some(reply) = reply {
                let _ = reply.send(Err(FlushError::Unauthorized { status }));
            }
            return;
        }
        if self.outbox.is_empty() && self.summary.is_empty() && reply.is_none() {
            return;
        }
        let permit = if wait {
            self.jobs.reserve().await.ok()
        } else {
            match self.jobs.try_reserve() {
                Ok(permit) => Some(permit),
                Err(mpsc::error::TrySendError::Full(())) => {
                    tracing::debug!("the event sender is busy; the events wait for the next flush");
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(())) => None,
            }
        };
        let Some(permit) = permit else {
            // The sender is gone (the runtime is shutting down).
            if let Some(reply) = reply {
                let _ = reply.send(Err(FlushError::Closed));
            }
            return;
        };
        self.overflowing = false;
        permit.send(Job {
            events: std::mem::take(&mut self.outbox),
            summary: std::mem::take(&mut self.summary),
            end_ms: now_ms(),
            reply,
        });
    }
}

fn ticker(period: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processor").field("outbox", &self.outbox.len()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Evaluation, Events};
    use pennant_eval::{AttrRef, Flag, Reason};
    use serde_json::{Value, json};

    /// An event pipeline whose payloads the test receives (and answers) itself.
    struct Harness {
        events: Events,
        jobs: mpsc::Receiver<Job>,
        redaction: Redaction,
    }

    fn harness(capacity: usize, redaction: Redaction) -> Harness {
        let settings = Settings {
            capacity,
            flush_interval: Duration::from_secs(3600),
            context_keys_capacity: 100,
            context_keys_flush_interval: Duration::from_secs(3600),
            redaction: redaction.clone(),
        };
        let shared = Arc::new(Shared::new(settings.context_keys_capacity));
        let (tx, jobs) = mpsc::channel(MAX_QUEUED_PAYLOADS);
        let events = Events::start_processor(settings, shared, tx, None, &tokio::runtime::Handle::current());
        Harness { events, jobs, redaction }
    }

    impl Harness {
        /// Flushes and returns the payload as JSON (after checking that the front door reads all of it).
        async fn flush(&mut self) -> Vec<Value> {
            let flushed = self.events.flush();
            tokio::pin!(flushed);
            let mut job = tokio::select! {
                job = self.jobs.recv() => job.unwrap(),
                outcome = &mut flushed => panic!("the flush ended before its payload was handed over: {outcome:?}"),
            };
            let body = serde_json::to_vec(&job.payload(&self.redaction)).unwrap();
            let batch = pennant_events::parse_batch(&body).unwrap();
            assert_eq!((batch.events.len(), batch.skipped), (job.len(), 0), "{}", String::from_utf8_lossy(&body));
            if let Some(reply) = job.reply.take() {
                reply.send(Ok(())).unwrap();
            }
            flushed.await.unwrap();
            serde_json::from_slice(&body).unwrap()
        }
    }

    fn flag(value: Value) -> Arc<Flag> {
        let mut base = json!({"key": "f", "version": 4, "on": true, "variations": [false, true],
            "fallthrough": {"variation": 1}, "rules": [{"id": "r0", "variation": 0, "clauses": []}]});
        for (k, v) in value.as_object().unwrap() {
            base[k] = v.clone();
        }
        Arc::new(serde_json::from_value(base).unwrap())
    }

    fn eval<'a>(flag: &'a Arc<Flag>, reason: Reason<'a>, default: &'a dyn Fn() -> Value) -> Evaluation<'a> {
        Evaluation {
            flag,
            variation: Some(1),
            value: flag.variations.get(1),
            reason,
            default,
            with_reason: false,
            prereq_of: None,
        }
    }

    fn kinds(payload: &[Value]) -> Vec<&str> {
        payload.iter().map(|e| e["kind"].as_str().unwrap()).collect()
    }

    const FALLTHROUGH: Reason<'static> = Reason::Fallthrough { in_experiment: false };

    #[tokio::test]
    async fn untracked_evaluations_are_only_summarised_and_each_context_indexed_once() {
        let mut h = harness(100, Redaction::default());
        let f = flag(json!({}));
        let default = || json!(false);
        let (u1, u2) = (Context::user("u1"), Context::user("u2"));
        for _ in 0..5 {
            h.events.evaluation(&u1, &eval(&f, FALLTHROUGH, &default));
        }
        h.events.evaluation(&u2, &eval(&f, FALLTHROUGH, &default));
        h.events.unknown_flag(&u2, "nope", &default);
        let payload = h.flush().await;
        assert_eq!(kinds(&payload), ["index", "index", "summary"]);
        assert_eq!(payload[0]["context"], json!({"kind": "user", "key": "u1"}));
        assert_eq!(payload[1]["context"]["key"], "u2");
        let features = &payload[2]["features"];
        assert_eq!(features["f"]["counters"], json!([{"variation": 1, "version": 4, "value": true, "count": 6}]));
        assert_eq!(features["nope"]["counters"], json!([{"unknown": true, "value": false, "count": 1}]));

        // The contexts are remembered across flushes (until the context keys are forgotten).
        h.events.evaluation(&u1, &eval(&f, FALLTHROUGH, &default));
        assert_eq!(kinds(&h.flush().await), ["summary"]);
        assert!(h.flush().await.is_empty(), "nothing since the last flush");
    }

    #[tokio::test]
    async fn tracked_flags_rules_fallthroughs_and_experiments_send_feature_events() {
        let mut h = harness(100, Redaction::default());
        let default = || json!(false);
        let user = Context::from_value(json!({"kind": "user", "key": "u", "anonymous": true, "name": "N"})).unwrap();
        let rule = Reason::RuleMatch { rule_index: 0, rule_id: "r0", in_experiment: false };
        let cases: Vec<(Value, Reason<'static>, bool)> = vec![
            (json!({"trackEvents": true}), FALLTHROUGH, true),
            (json!({"trackEventsFallthrough": true}), FALLTHROUGH, true),
            (json!({"trackEventsFallthrough": true}), rule, false),
            (json!({"rules": [{"id": "r0", "variation": 0, "clauses": [], "trackEvents": true}]}), rule, true),
            (json!({"rules": [{"id": "r0", "variation": 0, "clauses": [], "trackEvents": true}]}), FALLTHROUGH, false),
            (json!({}), Reason::Fallthrough { in_experiment: true }, true),
            (json!({}), FALLTHROUGH, false),
            (json!({"trackEvents": true, "samplingRatio": 0}), FALLTHROUGH, false),
        ];
        for (i, (extra, reason, want)) in cases.into_iter().enumerate() {
            let f = flag(extra.clone());
            h.events.evaluation(&user, &eval(&f, reason, &default));
            let payload = h.flush().await;
            let feature: Vec<&Value> = payload.iter().filter(|e| e["kind"] == "feature").collect();
            assert_eq!(feature.len(), usize::from(want), "case {i}: {extra} {reason:?}: {payload:?}");
            if let Some(e) = feature.first() {
                assert_eq!(
                    (e["key"].as_str(), e["version"].as_u64(), e["variation"].as_u64()),
                    (Some("f"), Some(4), Some(1))
                );
                assert_eq!((&e["value"], &e["default"]), (&json!(true), &json!(false)));
                // Anonymous contexts are redacted in feature events.
                assert_eq!(
                    e["context"],
                    json!({"kind": "user", "key": "u", "anonymous": true,
                    "_meta": {"redactedAttributes": ["name"]}})
                );
                let experiment = reason.in_experiment() || extra.get("trackEvents").is_none();
                assert_eq!(e.get("reason").is_some(), experiment, "case {i}: experiments carry the reason");
            }
        }
    }

    #[tokio::test]
    async fn debug_events_are_sent_until_the_date_passes() {
        let mut h = harness(100, Redaction::default());
        let default = || json!(false);
        let user = Context::from_value(json!({"kind": "user", "key": "u", "anonymous": true, "name": "N"})).unwrap();
        let future = flag(json!({"debugEventsUntilDate": now_ms() + 60_000}));
        let past = flag(json!({"debugEventsUntilDate": now_ms() - 1}));
        h.events.evaluation(&user, &eval(&past, FALLTHROUGH, &default));
        let mut with_reason = eval(&future, FALLTHROUGH, &default);
        with_reason.with_reason = true;
        h.events.evaluation(&user, &with_reason);
        let payload = h.flush().await;
        assert_eq!(kinds(&payload), ["index", "debug", "summary"]);
        let debug = &payload[1];
        assert_eq!(
            debug["context"],
            json!({"kind": "user", "key": "u", "anonymous": true, "name": "N"}),
            "not redacted"
        );
        assert_eq!(debug["reason"], json!({"kind": "FALLTHROUGH"}), "a detail call's reason is kept");
        // The events server's clock counts when it is ahead of ours.
        h.events.shared.server_time_ms.store(now_ms() + 120_000, Ordering::Relaxed);
        h.events.evaluation(&user, &eval(&future, FALLTHROUGH, &default));
        assert_eq!(kinds(&h.flush().await), ["summary"]);
    }

    #[tokio::test]
    async fn prerequisites_are_summarised_and_tracked_with_prereq_of() {
        let mut h = harness(100, Redaction::default());
        let mut data = crate::FlagData::default();
        data.insert_flag(
            serde_json::from_value(json!({"key": "parent", "version": 2, "on": true,
            "variations": ["x", "y"], "fallthrough": {"variation": 1}, "offVariation": 0,
            "prerequisites": [{"key": "child", "variation": 1}]}))
            .unwrap(),
        );
        data.insert_flag(
            serde_json::from_value(json!({"key": "child", "version": 9, "on": true, "trackEvents": true,
            "variations": [false, true], "fallthrough": {"variation": 1}}))
            .unwrap(),
        );
        let sentinel = Value::Null;
        let user = Context::user("u");
        let detail = crate::events::evaluate(
            &data,
            "parent",
            &user,
            pennant_eval::ValueType::String,
            &sentinel,
            &h.events,
            &|| json!("d"),
            false,
        );
        assert_eq!((detail.value.as_str(), detail.variation_index), (Some("y"), Some(1)));
        let payload = h.flush().await;
        assert_eq!(kinds(&payload), ["index", "feature", "summary"]);
        assert_eq!(payload[1]["key"], "child");
        assert_eq!(payload[1]["prereqOf"], "parent");
        assert_eq!(payload[1]["default"], Value::Null);
        let features = &payload[2]["features"];
        assert_eq!(features["child"]["counters"], json!([{"variation": 1, "version": 9, "value": true, "count": 1}]));
        assert_eq!(features["child"]["default"], Value::Null);
        assert_eq!(features["parent"]["counters"], json!([{"variation": 1, "version": 2, "value": "y", "count": 1}]));
        assert_eq!(features["parent"]["default"], "d");

        // A wrong type serves the default: counted without a variation.
        let detail = crate::events::evaluate(
            &data,
            "parent",
            &user,
            pennant_eval::ValueType::Bool,
            &sentinel,
            &h.events,
            &|| json!(true),
            false,
        );
        assert_eq!(detail.reason, Reason::Error { error_kind: pennant_eval::ErrorKind::WrongType });
        let payload = h.flush().await;
        let parent = &payload.last().unwrap()["features"]["parent"];
        assert_eq!(parent["counters"], json!([{"version": 2, "value": true, "count": 1}]));
    }

    #[tokio::test]
    async fn custom_and_identify_events_with_redaction() {
        let redaction = Redaction { all_attributes_private: false, private_attributes: vec![AttrRef::parse("email")] };
        let mut h = harness(100, redaction);
        let ann = Context::from_value(json!({"kind": "multi", "user": {"key": "ann", "email": "a@x", "plan": "p"},
            "org": {"key": "acme"}}))
        .unwrap();
        h.events.identify(&ann);
        h.events.track(&ann, "purchase", Some(json!({"items": 2})), Some(9.5));
        h.events.track(&Context::user("bob"), "click", None, None);
        let payload = h.flush().await;
        assert_eq!(kinds(&payload), ["identify", "custom", "index", "custom"]);
        assert_eq!(
            payload[0]["context"],
            json!({"kind": "multi", "org": {"key": "acme"},
            "user": {"key": "ann", "plan": "p", "_meta": {"redactedAttributes": ["email"]}}})
        );
        assert_eq!(payload[1]["contextKeys"], json!({"org": "acme", "user": "ann"}));
        assert_eq!((&payload[1]["data"], &payload[1]["metricValue"]), (&json!({"items": 2}), &json!(9.5)));
        assert_eq!(
            payload[3],
            json!({"kind": "custom", "creationDate": payload[3]["creationDate"], "key": "click",
            "contextKeys": {"user": "bob"}})
        );
    }

    #[tokio::test]
    async fn a_full_queue_or_buffer_drops_and_counts_without_blocking() {
        // The processor holds at most 3 events; the queue holds 3 more.
        let mut h = harness(3, Redaction::default());
        let user = Context::user("u");
        for i in 0..50 {
            h.events.track(&user, &format!("e{i}"), None, None);
        }
        // Nothing waited: 50 calls returned. Whatever was not delivered was counted.
        let payload = h.flush().await;
        assert_eq!(payload.len(), 3, "{payload:?}");
        assert_eq!(h.events.dropped() + payload.len() as u64, 51, "50 custom events and 1 index event");
        assert_eq!(kinds(&payload), ["index", "custom", "custom"]);
    }

    #[tokio::test]
    async fn closing_sends_what_was_queued_and_stops_recording() {
        let mut h = harness(1000, Redaction::default());
        let user = Context::user("u");
        for i in 0..100 {
            h.events.track(&user, &format!("e{i}"), None, None);
        }
        let (_, job) = tokio::join!(h.events.close(), h.jobs.recv());
        let job = job.unwrap();
        assert_eq!(job.len(), 101);
        assert!(!h.events.recording());
        assert!(h.jobs.recv().await.is_none(), "the processor has finished");
        assert_eq!(h.events.flush().await, Err(FlushError::Closed));
    }
}
