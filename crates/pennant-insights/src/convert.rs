//! From parsed events to one batch's aggregated contribution ([`BatchInsights`]).
//!
//! Counting rule (LaunchDarkly protocol notes §3): every evaluation an SDK makes is counted in the `summary` event
//! of its flush; `feature` and `debug` events are sent *in addition* for tracked evaluations. So counts come from
//! summary counters only (`count` per variation, in the minute of the summary's `endDate`); feature, debug and
//! migration events only move the flag's last-evaluated time. Index and identify events upsert the contexts index;
//! custom events are stored for export.
//!
//! Times: an event dated in the future (client clocks) beyond [`MAX_CLOCK_SKEW_MS`] past the batch's reception, or
//! not positive, is taken as received at the batch's reception time.

use pennant_events::{ContextEvent, Event, ParsedBatch};
use pennant_store::{BatchInsights, ContextUpsert, CustomEventRecord, NO_VARIATION};
use serde_json::{Map, Value};

/// How far past the reception time an event's own date is believed.
pub const MAX_CLOCK_SKEW_MS: i64 = 5 * 60_000;

/// What converting a batch found, besides the insights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConvertStats {
    /// Events used.
    pub events: usize,
    /// Contexts that could not be read (not an object, no key).
    pub bad_contexts: usize,
}

fn when(ts: i64, received_at: i64) -> i64 {
    if ts <= 0 || ts > received_at.saturating_add(MAX_CLOCK_SKEW_MS) { received_at } else { ts }
}

/// Adds a parsed batch's events to `out` (whose marker, project, environment and reception time are set).
pub fn add_events(out: &mut BatchInsights, batch: &ParsedBatch<'_>) -> ConvertStats {
    let mut stats = ConvertStats::default();
    let received = out.received_at;
    for event in &batch.events {
        stats.events += 1;
        match event {
            Event::Summary(s) => {
                let ts = when(s.end_date, received);
                for f in &s.features {
                    for c in &f.counters {
                        let count = i64::try_from(c.count).unwrap_or(i64::MAX);
                        let variation = c.variation.map_or(NO_VARIATION, i64::from);
                        out.add_count(&f.key, variation, ts, count);
                    }
                }
            }
            Event::Feature(e) | Event::Debug(e) => out.saw_flag(&e.key, when(e.creation_date, received)),
            Event::MigrationOp(m) => out.saw_flag(&m.evaluation.key, when(m.creation_date, received)),
            Event::Index(c) | Event::Identify(c) => {
                if !add_context(out, c, received) {
                    stats.bad_contexts += 1;
                }
            }
            Event::Custom(c) => out.custom.push(CustomEventRecord {
                key: c.key.to_string(),
                ts: when(c.creation_date, received),
                context_keys: c.context_keys.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                data: c.data.and_then(|d| serde_json::from_str(d.get()).ok()),
                metric_value: c.metric_value.filter(|v| v.is_finite()),
            }),
        }
    }
    stats
}

fn add_context(out: &mut BatchInsights, event: &ContextEvent<'_>, received: i64) -> bool {
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(event.context.get()) else { return false };
    let seen_at = when(event.creation_date, received);
    let mut ok = true;
    for c in split_context(obj) {
        match c {
            Some((kind, single)) => match single_context(kind, single, seen_at) {
                Some(c) => out.add_context(c),
                None => ok = false,
            },
            None => ok = false,
        }
    }
    ok
}

/// The individual contexts of a single- or multi-kind context object, with their kinds.
fn split_context(mut obj: Map<String, Value>) -> Vec<Option<(String, Map<String, Value>)>> {
    let kind = match obj.remove("kind") {
        Some(Value::String(k)) => k,
        None => "user".to_owned(),
        Some(_) => return vec![None],
    };
    if kind != "multi" {
        return vec![Some((kind, obj))];
    }
    obj.into_iter()
        .filter(|(k, _)| k != "_meta")
        .map(|(k, v)| match v {
            Value::Object(o) => Some((k, o)),
            _ => None,
        })
        .collect()
}

fn single_context(kind: String, mut obj: Map<String, Value>, seen_at: i64) -> Option<ContextUpsert> {
    obj.remove("kind");
    let key = match obj.remove("key")? {
        Value::String(k) if !k.is_empty() => k,
        _ => return None,
    };
    let name = match obj.remove("name") {
        Some(Value::String(n)) => Some(n),
        _ => None,
    };
    let redacted: Vec<String> = match obj.remove("_meta") {
        Some(Value::Object(mut meta)) => match meta.remove("redactedAttributes") {
            Some(Value::Array(a)) => a.into_iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    let mut attributes = obj;
    let mut name = name;
    // The SDK removed these already; never keep anything it lists as redacted.
    for r in &redacted {
        let path = attr_path(r);
        if path.len() == 1 && path[0] == "name" {
            name = None;
        }
        remove_path(&mut attributes, &path);
    }
    Some(ContextUpsert { kind, key, name, attributes, redacted, seen_at })
}

/// An attribute reference as path components: `/a/b~1c` → `["a", "b/c"]`; a name without a leading slash is one
/// literal component.
fn attr_path(reference: &str) -> Vec<String> {
    match reference.strip_prefix('/') {
        Some(rest) => rest.split('/').map(|p| p.replace("~1", "/").replace("~0", "~")).collect(),
        None => vec![reference.to_owned()],
    }
}

fn remove_path(obj: &mut Map<String, Value>, path: &[String]) {
    match path {
        [] => {}
        [last] => {
            obj.remove(last);
        }
        [head, rest @ ..] => {
            if let Some(Value::Object(inner)) = obj.get_mut(head) {
                remove_path(inner, rest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn convert(body: &str) -> (BatchInsights, ConvertStats) {
        let parsed = pennant_events::parse_batch(body.as_bytes()).unwrap();
        let mut b = BatchInsights::new("m".into(), "p", "e", 1_000_000);
        let stats = add_events(&mut b, &parsed);
        (b, stats)
    }

    #[test]
    fn summaries_count_feature_events_do_not() {
        let (b, _) = convert(
            r#"[{"kind":"summary","startDate":900000,"endDate":930000,"features":{"f":{"default":false,
            "counters":[{"variation":0,"version":3,"value":true,"count":5},{"variation":1,"version":3,"value":false,"count":2},
            {"unknown":true,"value":false,"count":1}]}}},
            {"kind":"feature","creationDate":990000,"key":"f","version":3,"variation":0,"value":true,"context":{"kind":"user","key":"u"}}]"#,
        );
        assert_eq!(b.counts.get(&("f".to_owned(), 0, 900_000)), Some(&5));
        assert_eq!(b.counts.get(&("f".to_owned(), 1, 900_000)), Some(&2));
        assert_eq!(b.counts.get(&("f".to_owned(), NO_VARIATION, 900_000)), Some(&1));
        assert_eq!(b.counts.values().sum::<i64>(), 8);
        assert_eq!(b.flag_seen.get("f"), Some(&990_000));
    }

    #[test]
    fn future_dates_take_reception_time() {
        let (b, _) = convert(
            r#"[{"kind":"summary","startDate":1,"endDate":99999999999,"features":{"f":{"counters":[{"variation":0,"version":1,"value":1,"count":1}]}}}]"#,
        );
        assert_eq!(b.counts.get(&("f".to_owned(), 0, 960_000)), Some(&1));
    }

    #[test]
    fn contexts_split_and_redacted() {
        let (b, stats) = convert(
            r#"[{"kind":"index","creationDate":5000,"context":{"kind":"multi",
                "user":{"key":"u1","name":"Ann","email":"a@x.io","address":{"street":"s","city":"c"},
                    "_meta":{"redactedAttributes":["email","/address/street"]}},
                "org":{"key":"o1","tier":"gold"}}},
               {"kind":"identify","creationDate":6000,"context":{"kind":"user","key":"u2","_meta":{"redactedAttributes":["name"]},"name":"leak"}},
               {"kind":"identify","creationDate":6000,"context":{"kind":"user"}}]"#,
        );
        assert_eq!(stats.bad_contexts, 1);
        let u1 = &b.contexts[&("user".to_owned(), "u1".to_owned())];
        assert_eq!(u1.name.as_deref(), Some("Ann"));
        assert_eq!(Value::Object(u1.attributes.clone()), serde_json::json!({"address": {"city": "c"}}));
        assert_eq!(u1.redacted, vec!["email", "/address/street"]);
        let o1 = &b.contexts[&("org".to_owned(), "o1".to_owned())];
        assert_eq!(o1.attributes.get("tier"), Some(&Value::from("gold")));
        assert_eq!(b.contexts[&("user".to_owned(), "u2".to_owned())].name, None);
    }

    #[test]
    fn custom_events_kept() {
        let (b, _) = convert(
            r#"[{"kind":"custom","creationDate":7000,"key":"checkout","contextKeys":{"user":"u1"},"data":{"a":1},"metricValue":9.5}]"#,
        );
        assert_eq!(b.custom.len(), 1);
        assert_eq!(b.custom[0].key, "checkout");
        assert_eq!(b.custom[0].context_keys.get("user").map(String::as_str), Some("u1"));
        assert_eq!(b.custom[0].metric_value, Some(9.5));
        assert_eq!(b.custom[0].data, Some(serde_json::json!({"a": 1})));
    }
}
