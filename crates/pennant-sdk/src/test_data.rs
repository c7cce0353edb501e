//! A data source for unit tests: flags defined in code (builder-style or as LaunchDarkly JSON) and changed while
//! the client runs.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use pennant_sdk::{Client, Config, Context, TestData};
//! let td = TestData::new();
//! td.update(td.flag("new-checkout").variation_for_all(false));
//! let client = Client::start(Config::builder("").test_data(&td).build().unwrap()).unwrap();
//! assert!(client.wait_for_initialization(std::time::Duration::from_secs(1)).await);
//! let user = Context::user("u1");
//! assert!(!client.bool_variation(&user, "new-checkout", true));
//! td.update(td.flag("new-checkout").variation_for_key("user", "u1", true));
//! assert!(client.bool_variation(&user, "new-checkout", false));
//! # }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, Weak};

use pennant_eval::{Clause, Flag, FlagRule, Operator, Segment, Target, VariationOrRollout};
use serde_json::Value;

use crate::data::FlagData;
use crate::source::{DataSource, Shutdown, SourceFuture};
use crate::status::DataSourceState;
use crate::updates::{DataSourceUpdates, Shared};

/// Flag JSON that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TestDataError {
    /// Not a LaunchDarkly flag or segment.
    #[error("invalid flag or segment JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// A variation, by index or, for boolean flags, by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variation {
    /// The variation at this index.
    Index(usize),
    /// `true` or `false`; makes the flag boolean (`[true, false]`) if it is not.
    Bool(bool),
}

impl From<usize> for Variation {
    fn from(index: usize) -> Variation {
        Variation::Index(index)
    }
}

impl From<bool> for Variation {
    fn from(value: bool) -> Variation {
        Variation::Bool(value)
    }
}

/// How a test data flag is configured. Start one with [`TestData::flag`]; apply it with [`TestData::update`].
#[derive(Debug, Clone, PartialEq)]
pub struct FlagBuilder {
    key: String,
    on: bool,
    variations: Vec<Value>,
    off_variation: Option<usize>,
    fallthrough_variation: Option<usize>,
    /// Context kind → variation → keys.
    targets: BTreeMap<String, BTreeMap<usize, BTreeSet<String>>>,
    rules: Vec<RuleSpec>,
}

#[derive(Debug, Clone, PartialEq)]
struct ClauseSpec {
    context_kind: String,
    attribute: String,
    values: Vec<Value>,
    negate: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct RuleSpec {
    clauses: Vec<ClauseSpec>,
    variation: usize,
}

const TRUE_INDEX: usize = 0;
const FALSE_INDEX: usize = 1;

impl FlagBuilder {
    /// A boolean flag, on, serving `true` to everyone and `false` when off.
    pub fn new(key: impl Into<String>) -> FlagBuilder {
        FlagBuilder {
            key: key.into(),
            on: true,
            variations: Vec::new(),
            off_variation: None,
            fallthrough_variation: None,
            targets: BTreeMap::new(),
            rules: Vec::new(),
        }
        .boolean_flag()
    }

    fn is_boolean(&self) -> bool {
        self.variations == [Value::Bool(true), Value::Bool(false)]
    }

    /// Makes the flag boolean: variations `[true, false]`, serving `true` when on and `false` when off. Nothing
    /// changes if it is boolean already.
    pub fn boolean_flag(self) -> FlagBuilder {
        if self.is_boolean() {
            return self;
        }
        FlagBuilder {
            variations: vec![Value::Bool(true), Value::Bool(false)],
            fallthrough_variation: Some(TRUE_INDEX),
            off_variation: Some(FALSE_INDEX),
            ..self
        }
    }

    fn index(mut self, variation: Variation) -> (FlagBuilder, usize) {
        match variation {
            Variation::Index(i) => (self, i),
            Variation::Bool(b) => {
                self = self.boolean_flag();
                (self, if b { TRUE_INDEX } else { FALSE_INDEX })
            }
        }
    }

    /// The values the flag can serve (indexes of earlier settings keep their meaning).
    pub fn variations(self, values: impl IntoIterator<Item = Value>) -> FlagBuilder {
        FlagBuilder { variations: values.into_iter().collect(), ..self }
    }

    /// Targeting on or off.
    pub fn on(self, on: bool) -> FlagBuilder {
        FlagBuilder { on, ..self }
    }

    /// What is served when targeting is on and nothing else matched.
    pub fn fallthrough_variation(self, variation: impl Into<Variation>) -> FlagBuilder {
        let (b, i) = self.index(variation.into());
        FlagBuilder { fallthrough_variation: Some(i), ..b }
    }

    /// What is served when targeting is off.
    pub fn off_variation(self, variation: impl Into<Variation>) -> FlagBuilder {
        let (b, i) = self.index(variation.into());
        FlagBuilder { off_variation: Some(i), ..b }
    }

    /// Serve this variation to everyone: targeting on, no targets, no rules.
    pub fn variation_for_all(self, variation: impl Into<Variation>) -> FlagBuilder {
        self.clear_targets().clear_rules().on(true).fallthrough_variation(variation)
    }

    /// Serve this value to everyone (the flag's only variation).
    pub fn value_for_all(self, value: Value) -> FlagBuilder {
        self.variations([value]).variation_for_all(0)
    }

    /// Serve this variation to the context of `kind` with this key (`user` for users), whatever the rules say.
    pub fn variation_for_key(
        self,
        kind: impl Into<String>,
        key: impl Into<String>,
        variation: impl Into<Variation>,
    ) -> FlagBuilder {
        let (mut builder, i) = self.index(variation.into());
        let key = key.into();
        let by_variation = builder.targets.entry(kind.into()).or_default();
        for keys in by_variation.values_mut() {
            keys.remove(&key);
        }
        by_variation.entry(i).or_default().insert(key);
        builder
    }

    /// Removes every individual target.
    pub fn clear_targets(self) -> FlagBuilder {
        FlagBuilder { targets: BTreeMap::new(), ..self }
    }

    /// Removes every rule.
    pub fn clear_rules(self) -> FlagBuilder {
        FlagBuilder { rules: Vec::new(), ..self }
    }

    /// Starts a rule matching users whose `attribute` is one of `values`.
    pub fn if_match(self, attribute: impl Into<String>, values: impl IntoIterator<Item = Value>) -> RuleBuilder {
        self.if_match_context("user", attribute, values)
    }

    /// Starts a rule matching contexts of `kind` whose `attribute` is one of `values`.
    pub fn if_match_context(
        self,
        kind: impl Into<String>,
        attribute: impl Into<String>,
        values: impl IntoIterator<Item = Value>,
    ) -> RuleBuilder {
        RuleBuilder { flag: self, clauses: Vec::new() }.and_match_context(kind, attribute, values)
    }

    /// Starts a rule matching users whose `attribute` is none of `values`.
    pub fn if_not_match(self, attribute: impl Into<String>, values: impl IntoIterator<Item = Value>) -> RuleBuilder {
        RuleBuilder { flag: self, clauses: Vec::new() }.and_not_match(attribute, values)
    }

    fn build(&self, version: u64) -> Flag {
        let variation = |i: usize| i64::try_from(i).unwrap_or(i64::MAX);
        let mut targets = Vec::new();
        let mut context_targets = Vec::new();
        for (kind, by_variation) in &self.targets {
            for (&i, keys) in by_variation.iter().filter(|(_, keys)| !keys.is_empty()) {
                let values: Vec<String> = keys.iter().cloned().collect();
                if kind == "user" {
                    // User keys live in `targets`; an empty `user` entry in `contextTargets` keeps their place.
                    targets.push(Target::new(None, values, variation(i)));
                    context_targets.push(Target::new(Some("user".into()), Vec::new(), variation(i)));
                } else {
                    context_targets.push(Target::new(Some(kind.clone()), values, variation(i)));
                }
            }
        }
        if context_targets.iter().all(|t| t.values.is_empty()) {
            context_targets.clear();
        }
        let rules = self
            .rules
            .iter()
            .enumerate()
            .map(|(n, rule)| FlagRule {
                id: format!("rule{n}"),
                variation: Some(variation(rule.variation)),
                clauses: rule
                    .clauses
                    .iter()
                    .map(|c| {
                        Clause::new(
                            Some(c.context_kind.clone()),
                            c.attribute.clone(),
                            Operator::In,
                            c.values.clone(),
                            c.negate,
                        )
                    })
                    .collect(),
                ..FlagRule::default()
            })
            .collect();
        Flag {
            key: self.key.clone(),
            version,
            on: self.on,
            salt: format!("{}-salt", self.key),
            targets,
            context_targets,
            rules,
            fallthrough: VariationOrRollout { variation: self.fallthrough_variation.map(variation), rollout: None },
            off_variation: self.off_variation.map(variation),
            variations: self.variations.clone(),
            ..Flag::default()
        }
    }
}

/// A rule being built; finish it with [`RuleBuilder::then_return`].
#[derive(Debug, Clone, PartialEq)]
pub struct RuleBuilder {
    flag: FlagBuilder,
    clauses: Vec<ClauseSpec>,
}

impl RuleBuilder {
    /// Also requires the user's `attribute` to be one of `values`.
    pub fn and_match(self, attribute: impl Into<String>, values: impl IntoIterator<Item = Value>) -> RuleBuilder {
        self.and_match_context("user", attribute, values)
    }

    /// Also requires the `kind` context's `attribute` to be one of `values`.
    pub fn and_match_context(
        mut self,
        kind: impl Into<String>,
        attribute: impl Into<String>,
        values: impl IntoIterator<Item = Value>,
    ) -> RuleBuilder {
        self.clauses.push(ClauseSpec {
            context_kind: kind.into(),
            attribute: attribute.into(),
            values: values.into_iter().collect(),
            negate: false,
        });
        self
    }

    /// Also requires the user's `attribute` to be none of `values`.
    pub fn and_not_match(
        mut self,
        attribute: impl Into<String>,
        values: impl IntoIterator<Item = Value>,
    ) -> RuleBuilder {
        self.clauses.push(ClauseSpec {
            context_kind: "user".into(),
            attribute: attribute.into(),
            values: values.into_iter().collect(),
            negate: true,
        });
        self
    }

    /// Serves `variation` when every clause matches; returns the flag builder.
    pub fn then_return(self, variation: impl Into<Variation>) -> FlagBuilder {
        let (mut flag, i) = self.flag.index(variation.into());
        flag.rules.push(RuleSpec { clauses: self.clauses, variation: i });
        flag
    }
}

#[derive(Debug, Default)]
struct State {
    flags: BTreeMap<String, Arc<Flag>>,
    builders: BTreeMap<String, FlagBuilder>,
    segments: BTreeMap<String, Arc<Segment>>,
    clients: Vec<Weak<Shared>>,
}

impl State {
    fn live(&mut self) -> Vec<DataSourceUpdates> {
        self.clients.retain(|c| c.strong_count() > 0);
        self.clients.iter().filter_map(Weak::upgrade).map(|shared| DataSourceUpdates { shared }).collect()
    }

    fn next_flag_version(&self, key: &str) -> u64 {
        self.flags.get(key).map_or(1, |f| f.version + 1)
    }

    fn next_segment_version(&self, key: &str) -> u64 {
        self.segments.get(key).map_or(1, |s| s.version + 1)
    }

    fn set_flag(&mut self, flag: Flag) {
        let flag = Arc::new(flag);
        self.flags.insert(flag.key.clone(), flag.clone());
        for client in self.live() {
            client.upsert_flag(&flag.key, Flag::clone(&flag));
        }
    }

    fn set_segment(&mut self, segment: Segment) {
        let segment = Arc::new(segment);
        self.segments.insert(segment.key.clone(), segment.clone());
        for client in self.live() {
            client.upsert_segment(&segment.key, Segment::clone(&segment));
        }
    }
}

/// Flags defined in code, for tests. Clones share the same flags; every client started with it sees each
/// [`TestData::update`] at once, as if a server had streamed it (versions go up by one per change, so flag-change
/// notifications fire).
#[derive(Clone, Default)]
pub struct TestData {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for TestData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("TestData").field("flags", &state.flags.len()).field("segments", &state.segments.len()).finish()
    }
}

impl TestData {
    /// No flags yet.
    pub fn new() -> TestData {
        TestData::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A builder for flag `key`: its current configuration if it was last set with a builder, otherwise a new
    /// boolean flag that serves `true`.
    pub fn flag(&self, key: &str) -> FlagBuilder {
        self.lock().builders.get(key).cloned().unwrap_or_else(|| FlagBuilder::new(key))
    }

    /// Adds or replaces the flag the builder describes, with the next version.
    pub fn update(&self, builder: FlagBuilder) {
        let mut state = self.lock();
        let flag = builder.build(state.next_flag_version(&builder.key));
        state.builders.insert(builder.key.clone(), builder);
        state.set_flag(flag);
    }

    /// Adds or replaces a flag given as LaunchDarkly flag JSON (its `version` is replaced by the next version).
    pub fn update_flag_json(&self, flag: Value) -> Result<(), TestDataError> {
        let mut flag: Flag = serde_json::from_value(flag)?;
        let mut state = self.lock();
        flag.version = state.next_flag_version(&flag.key);
        state.builders.remove(&flag.key);
        state.set_flag(flag);
        Ok(())
    }

    /// Adds or replaces a segment given as LaunchDarkly segment JSON (its `version` is replaced by the next
    /// version).
    pub fn update_segment_json(&self, segment: Value) -> Result<(), TestDataError> {
        let mut segment: Segment = serde_json::from_value(segment)?;
        let mut state = self.lock();
        segment.version = state.next_segment_version(&segment.key);
        state.set_segment(segment);
        Ok(())
    }

    /// Deletes a flag.
    pub fn delete_flag(&self, key: &str) {
        let mut state = self.lock();
        let version = state.next_flag_version(key);
        state.builders.remove(key);
        state
            .flags
            .insert(key.to_owned(), Arc::new(Flag { key: key.to_owned(), version, deleted: true, ..Flag::default() }));
        for client in state.live() {
            client.delete_flag(key, version);
        }
    }

    fn data(state: &State) -> FlagData {
        let mut data = FlagData::default();
        for flag in state.flags.values() {
            data.insert_flag(Flag::clone(flag));
        }
        for segment in state.segments.values() {
            data.insert_segment(Segment::clone(segment));
        }
        data
    }
}

impl DataSource for TestData {
    fn run(&self, updates: DataSourceUpdates, mut shutdown: Shutdown) -> SourceFuture {
        let state = self.state.clone();
        Box::pin(async move {
            {
                // Registered and initialised under one lock: no update falls in between.
                let mut locked = state.lock().unwrap_or_else(|e| e.into_inner());
                updates.init(TestData::data(&locked));
                locked.clients.push(Arc::downgrade(&updates.shared));
            }
            updates.update_status(DataSourceState::Valid, None);
            shutdown.wait().await;
            let mut locked = state.lock().unwrap_or_else(|e| e.into_inner());
            locked.clients.retain(|c| !std::ptr::eq(c.as_ptr(), Arc::as_ptr(&updates.shared)));
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pennant_eval::{Context, Store as _, evaluate};
    use serde_json::json;

    fn value(flag: &Flag, context: &Context) -> Option<Value> {
        let data = FlagData::default();
        evaluate(&data, flag, context).value.cloned()
    }

    fn user(key: &str) -> Context {
        Context::user(key)
    }

    #[test]
    fn a_new_flag_is_boolean_and_serves_true() {
        let flag = FlagBuilder::new("f").build(1);
        assert_eq!(flag.variations, [json!(true), json!(false)]);
        assert_eq!(value(&flag, &user("u")), Some(json!(true)));
        assert_eq!(value(&FlagBuilder::new("f").on(false).build(1), &user("u")), Some(json!(false)));
    }

    #[test]
    fn variations_targets_and_rules_evaluate_as_built() {
        let flag = FlagBuilder::new("f")
            .variations([json!("a"), json!("b"), json!("c")])
            .fallthrough_variation(0)
            .off_variation(2)
            .variation_for_key("user", "vip", 1usize)
            .variation_for_key("org", "acme", 2usize)
            .if_match("country", [json!("fr"), json!("de")])
            .and_not_match("plan", [json!("free")])
            .then_return(2usize)
            .build(7);
        assert_eq!(flag.version, 7);
        let ctx = |v: Value| Context::from_value(v).unwrap();
        assert_eq!(value(&flag, &user("anyone")), Some(json!("a")));
        assert_eq!(value(&flag, &user("vip")), Some(json!("b")));
        assert_eq!(value(&flag, &ctx(json!({"kind": "org", "key": "acme"}))), Some(json!("c")));
        assert_eq!(
            value(&flag, &ctx(json!({"kind": "user", "key": "x", "country": "fr", "plan": "pro"}))),
            Some(json!("c"))
        );
        // As in LaunchDarkly, a clause on a missing attribute does not match, negated or not.
        assert_eq!(value(&flag, &ctx(json!({"kind": "user", "key": "x", "country": "fr"}))), Some(json!("a")));
        assert_eq!(
            value(&flag, &ctx(json!({"kind": "user", "key": "x", "country": "fr", "plan": "free"}))),
            Some(json!("a"))
        );
        assert_eq!(value(&flag.clone(), &ctx(json!({"kind": "user", "key": "x", "country": "us"}))), Some(json!("a")));
        // The flag is valid as the server would store it.
        let issues = pennant_eval::validate_flag(&flag, &FlagData::default());
        assert!(issues.is_empty(), "{issues:?}");
    }

    #[test]
    fn a_key_targeted_again_moves_to_the_new_variation() {
        let flag =
            FlagBuilder::new("f").variation_for_key("user", "u", false).variation_for_key("user", "u", true).build(1);
        assert_eq!(value(&flag, &user("u")), Some(json!(true)));
        assert_eq!(flag.targets.iter().map(|t| t.values.len()).sum::<usize>(), 1);
    }

    #[test]
    fn value_for_all_and_variation_for_all_reset_targeting() {
        let base =
            FlagBuilder::new("f").variation_for_key("user", "u", false).if_match("k", [json!(1)]).then_return(false);
        let all = base.clone().variation_for_all(false).build(1);
        assert!(all.targets.is_empty() && all.rules.is_empty());
        assert_eq!(value(&all, &user("u")), Some(json!(false)));
        let any = base.value_for_all(json!({"x": 1})).build(1);
        assert_eq!(value(&any, &user("u")), Some(json!({"x": 1})));
    }

    #[tokio::test]
    async fn clients_see_updates_versions_rise_and_stopped_clients_are_forgotten() {
        let td = TestData::new();
        td.update(td.flag("f").variation_for_all(false));
        let updates = DataSourceUpdates::new();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(td.run(updates.clone(), Shutdown(stopped)));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut status = updates.shared.status.subscribe();
        tokio::time::timeout_at(deadline, status.wait_for(|s| s.state == DataSourceState::Valid))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(updates.shared.store.load().flag("f").unwrap().version, 1);

        td.update(td.flag("f").variation_for_all(true));
        let flag = updates.shared.store.load().flag("f").unwrap().clone();
        assert_eq!((flag.version, value(&flag, &user("u"))), (2, Some(json!(true))), "applied synchronously");
        assert!(td.flag("f").rules.is_empty(), "the builder remembers the flag");

        td.update_flag_json(json!({"key": "j", "version": 99, "on": true, "variations": [1, 2],
            "fallthrough": {"variation": 1}}))
            .unwrap();
        assert_eq!(updates.shared.store.load().flag("j").unwrap().version, 1, "the version is the test data's");
        td.update_segment_json(json!({"key": "s", "included": ["u"]})).unwrap();
        assert_eq!(updates.shared.store.load().segment("s").unwrap().included, ["u"]);
        assert!(matches!(td.update_flag_json(json!({"on": true})), Err(TestDataError::Json(_))), "a key is required");
        td.delete_flag("j");
        assert!(updates.shared.store.load().flag("j").unwrap().deleted);

        stop.send(true).unwrap();
        task.await.unwrap();
        assert!(td.lock().live().is_empty(), "a stopped client is no longer updated");
        td.update(td.flag("f").variation_for_all(false));
        assert_eq!(updates.shared.store.load().flag("f").unwrap().version, 2);
    }
}
