//! Evaluating every flag for one context: the client-side `evalx` document.

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::Value;

use crate::context::Context;
use crate::eval::{Detail, PrerequisiteEvent, evaluate_with_recorder};
use crate::model::Flag;
use crate::store::Store;

/// Which flags to include and how much to say about each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AllFlagsOptions {
    /// Only flags available to the JavaScript SDK (client-side ID).
    pub client_side_only: bool,
    /// Only flags available to mobile SDKs (mobile key).
    pub mobile_only: bool,
    /// Include every flag's reason (otherwise only experiments carry one).
    pub with_reasons: bool,
}

/// One flag's entry.
#[derive(Debug, Clone)]
pub struct FlagState<'a> {
    /// The flag.
    pub flag: &'a Flag,
    /// Its evaluation.
    pub detail: Detail<'a>,
    /// Keys of the prerequisites evaluated directly for it, in order.
    pub prerequisites: Vec<&'a str>,
}

/// Every flag's evaluation for one context.
#[derive(Debug, Clone)]
pub struct AllFlagsState<'a> {
    flags: Vec<FlagState<'a>>,
    with_reasons: bool,
}

impl<'a> AllFlagsState<'a> {
    /// The entries, in flag-key order.
    pub fn flags(&self) -> &[FlagState<'a>] {
        &self.flags
    }

    /// The entry of one flag.
    pub fn get(&self, key: &str) -> Option<&FlagState<'a>> {
        self.flags.binary_search_by(|s| s.flag.key.as_str().cmp(key)).ok().map(|i| &self.flags[i])
    }
}

/// Evaluates every (non-deleted) flag among `flags` for `context`, with `store` supplying prerequisites and
/// segments.
pub fn all_flags_state<'a, S: Store + ?Sized>(
    store: &'a S,
    flags: impl IntoIterator<Item = &'a Flag>,
    context: &Context,
    options: AllFlagsOptions,
) -> AllFlagsState<'a> {
    let mut selected: Vec<&'a Flag> = flags
        .into_iter()
        .filter(|f| !f.deleted)
        .filter(|f| !options.client_side_only || f.client_side_availability().using_environment_id)
        .filter(|f| !options.mobile_only || f.client_side_availability().using_mobile_key)
        .collect();
    selected.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    let flags = selected
        .into_iter()
        .map(|flag| {
            let mut prerequisites = Vec::new();
            let mut record = |event: PrerequisiteEvent<'a>| {
                if std::ptr::eq(event.target_flag, flag) {
                    prerequisites.push(event.prerequisite_flag.key.as_str());
                }
            };
            let detail = evaluate_with_recorder(store, flag, context, &mut record);
            FlagState { flag, detail, prerequisites }
        })
        .collect();
    AllFlagsState { flags, with_reasons: options.with_reasons }
}

struct EvalxEntry<'s, 'a> {
    state: &'s FlagState<'a>,
    with_reasons: bool,
}

impl Serialize for EvalxEntry<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let FlagState { flag, detail, prerequisites } = self.state;
        let is_experiment = detail.is_experiment(flag);
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("value", detail.value.unwrap_or(&Value::Null))?;
        if let Some(i) = detail.variation_index {
            map.serialize_entry("variation", &i)?;
        }
        map.serialize_entry("version", &flag.version)?;
        map.serialize_entry("flagVersion", &flag.version)?;
        if flag.track_events || is_experiment {
            map.serialize_entry("trackEvents", &true)?;
        }
        if is_experiment {
            map.serialize_entry("trackReason", &true)?;
        }
        if self.with_reasons || is_experiment {
            map.serialize_entry("reason", &detail.reason.with_status(detail.big_segments_status))?;
        }
        if let Some(date) = flag.debug_events_until_date {
            map.serialize_entry("debugEventsUntilDate", &date)?;
        }
        if !prerequisites.is_empty() {
            map.serialize_entry("prerequisites", prerequisites)?;
        }
        map.end()
    }
}

/// Serialises as the client-side `evalx` document: `{flagKey: {value, variation, version, …}}`.
impl Serialize for AllFlagsState<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.flags.len()))?;
        for state in &self.flags {
            map.serialize_entry(&state.flag.key, &EvalxEntry { state, with_reasons: self.with_reasons })?;
        }
        map.end()
    }
}
