//! Semantic patch: LaunchDarkly-style instructions (`{"kind": "turnFlagOn"}`, `{"kind": "addRule", ...}`) for
//! flags and segments.
//!
//! A request's instructions are parsed up front (an unknown kind or a bad field is `invalid_request` naming the
//! instruction's index) and then applied in order to one document inside the store's update, so that they are
//! written together or not at all. Clauses, rollouts and targets use LaunchDarkly's JSON shapes.

use pennant_eval::{Clause, FlagRule, Prerequisite, Rollout, Segment, SegmentRule, SegmentTarget, Target};
use pennant_store::{FlagDoc, FlagEnvConfig, SegmentDoc};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};

/// One instruction with where it came from, for error messages.
#[derive(Debug)]
pub(crate) struct Parsed<T> {
    index: usize,
    kind: String,
    instruction: T,
}

impl<T> Parsed<T> {
    fn error(&self, message: impl std::fmt::Display) -> ApiError {
        ApiError::bad_request(format!("instructions/{} ({}): {message}", self.index, self.kind))
    }
}

/// Parses every instruction, or fails naming the first bad one.
fn parse<T: DeserializeOwned>(items: &[Value], known: &[&str]) -> ApiResult<Vec<Parsed<T>>> {
    if items.is_empty() {
        return Err(ApiError::bad_request("instructions must not be empty"));
    }
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let Some(kind) = item.get("kind").and_then(Value::as_str) else {
                return Err(ApiError::bad_request(format!(
                    "instructions/{index}: an instruction is an object with a \"kind\" string"
                )));
            };
            if !known.contains(&kind) {
                return Err(ApiError::bad_request(format!(
                    "instructions/{index}: unknown instruction kind {kind:?}; known kinds: {}",
                    known.join(", ")
                )));
            }
            let instruction = serde_json::from_value(item.clone())
                .map_err(|e| ApiError::bad_request(format!("instructions/{index} ({kind}): {e}")))?;
            Ok(Parsed { index, kind: kind.to_owned(), instruction })
        })
        .collect()
}

/// A flag instruction.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
pub(crate) enum FlagInstruction {
    /// Targeting on.
    TurnFlagOn {},
    /// Targeting off.
    TurnFlagOff {},
    /// A new rule, at the end or before `beforeRuleId`.
    AddRule {
        clauses: Vec<Clause>,
        #[serde(default)]
        variation: Option<i64>,
        #[serde(default)]
        rollout: Option<Rollout>,
        #[serde(default)]
        rule_id: Option<String>,
        #[serde(default)]
        before_rule_id: Option<String>,
        #[serde(default)]
        track_events: bool,
    },
    /// Removes a rule.
    RemoveRule { rule_id: String },
    /// Replaces a rule's clauses.
    UpdateRuleClauses { rule_id: String, clauses: Vec<Clause> },
    /// Replaces what a rule serves.
    UpdateRuleVariationOrRollout {
        rule_id: String,
        #[serde(default)]
        variation: Option<i64>,
        #[serde(default)]
        rollout: Option<Rollout>,
    },
    /// Puts the rules in a new order (every rule ID, once).
    ReorderRules { rule_ids: Vec<String> },
    /// Targets keys individually.
    AddTargets {
        values: Vec<String>,
        variation: i64,
        #[serde(default)]
        context_kind: Option<String>,
    },
    /// Stops targeting keys individually.
    RemoveTargets {
        values: Vec<String>,
        variation: i64,
        #[serde(default)]
        context_kind: Option<String>,
    },
    /// Replaces every individual target.
    ReplaceTargets { targets: Vec<TargetSpec> },
    /// Replaces what is served when nothing matches.
    UpdateFallthroughVariationOrRollout {
        #[serde(default)]
        variation: Option<i64>,
        #[serde(default)]
        rollout: Option<Rollout>,
    },
    /// Replaces the off variation.
    UpdateOffVariation { variation: i64 },
    /// Adds a prerequisite.
    AddPrerequisite { key: String, variation: i64 },
    /// Removes a prerequisite.
    RemovePrerequisite { key: String },
    /// Changes the variation a prerequisite must serve.
    UpdatePrerequisite { key: String, variation: i64 },
    /// Archives the flag.
    ArchiveFlag {},
    /// Restores an archived flag.
    RestoreFlag {},
    /// Renames the flag.
    UpdateName { value: String },
    /// Replaces the description.
    UpdateDescription { value: String },
    /// Adds tags.
    AddTags { values: Vec<String> },
    /// Removes tags.
    RemoveTags { values: Vec<String> },
}

/// One entry of `replaceTargets`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TargetSpec {
    #[serde(default)]
    context_kind: Option<String>,
    variation: i64,
    values: Vec<String>,
}

const FLAG_KINDS: &[&str] = &[
    "turnFlagOn",
    "turnFlagOff",
    "addRule",
    "removeRule",
    "updateRuleClauses",
    "updateRuleVariationOrRollout",
    "reorderRules",
    "addTargets",
    "removeTargets",
    "replaceTargets",
    "updateFallthroughVariationOrRollout",
    "updateOffVariation",
    "addPrerequisite",
    "removePrerequisite",
    "updatePrerequisite",
    "archiveFlag",
    "restoreFlag",
    "updateName",
    "updateDescription",
    "addTags",
    "removeTags",
];

impl FlagInstruction {
    /// Whether the instruction changes one environment's configuration (and so needs `environmentKey`).
    fn needs_environment(&self) -> bool {
        !matches!(
            self,
            FlagInstruction::ArchiveFlag {}
                | FlagInstruction::RestoreFlag {}
                | FlagInstruction::UpdateName { .. }
                | FlagInstruction::UpdateDescription { .. }
                | FlagInstruction::AddTags { .. }
                | FlagInstruction::RemoveTags { .. }
        )
    }
}

/// Parses a flag PATCH's instructions. `has_environment`: whether the request named an environment.
pub(crate) fn parse_flag_instructions(
    items: &[Value],
    has_environment: bool,
) -> ApiResult<Vec<Parsed<FlagInstruction>>> {
    let parsed: Vec<Parsed<FlagInstruction>> = parse(items, FLAG_KINDS)?;
    if !has_environment && let Some(p) = parsed.iter().find(|p| p.instruction.needs_environment()) {
        return Err(p.error("this instruction changes one environment: send \"environmentKey\" with it"));
    }
    Ok(parsed)
}

/// Whether any of the instructions changes an environment's configuration.
pub(crate) fn any_needs_environment(instructions: &[Parsed<FlagInstruction>]) -> bool {
    instructions.iter().any(|p| p.instruction.needs_environment())
}

/// Applies instructions in order to a flag and its archived state.
pub(crate) fn apply_flag_instructions(
    doc: &mut FlagDoc,
    archived: &mut bool,
    environment: Option<&str>,
    instructions: &[Parsed<FlagInstruction>],
) -> ApiResult<()> {
    for p in instructions {
        apply_flag(doc, archived, environment, &p.instruction).map_err(|m| p.error(m))?;
    }
    Ok(())
}

fn apply_flag(
    doc: &mut FlagDoc,
    archived: &mut bool,
    environment: Option<&str>,
    instruction: &FlagInstruction,
) -> Result<(), String> {
    use FlagInstruction as I;
    match instruction {
        I::ArchiveFlag {} => *archived = true,
        I::RestoreFlag {} => *archived = false,
        I::UpdateName { value } => doc.name.clone_from(value),
        I::UpdateDescription { value } => doc.description.clone_from(value),
        I::AddTags { values } => {
            for tag in values {
                if !doc.tags.contains(tag) {
                    doc.tags.push(tag.clone());
                }
            }
        }
        I::RemoveTags { values } => doc.tags.retain(|t| !values.contains(t)),
        env_instruction => {
            let env_key = environment.ok_or("this instruction needs \"environmentKey\"")?;
            let config = doc
                .environments
                .get_mut(env_key)
                .ok_or_else(|| format!("the flag has no configuration in environment {env_key:?}"))?;
            apply_flag_env(config, env_instruction)?;
        }
    }
    Ok(())
}

fn apply_flag_env(config: &mut FlagEnvConfig, instruction: &FlagInstruction) -> Result<(), String> {
    use FlagInstruction as I;
    match instruction {
        I::TurnFlagOn {} => config.on = true,
        I::TurnFlagOff {} => config.on = false,
        I::AddRule { clauses, variation, rollout, rule_id, before_rule_id, track_events } => {
            let served = variation_or_rollout(*variation, rollout.as_ref())?;
            let id = match rule_id {
                Some(id) if id.is_empty() => return Err("ruleId must not be empty".into()),
                Some(id) => id.clone(),
                None => new_rule_id(),
            };
            if config.rules.iter().any(|r| r.id == id) {
                return Err(format!("the flag already has a rule with id {id:?}"));
            }
            let rule = FlagRule {
                id,
                variation: served.variation,
                rollout: served.rollout,
                clauses: clauses.clone(),
                track_events: *track_events,
            };
            insert_rule(&mut config.rules, rule, before_rule_id.as_deref())?;
        }
        I::RemoveRule { rule_id } => {
            let at = rule_index(&config.rules, rule_id)?;
            config.rules.remove(at);
        }
        I::UpdateRuleClauses { rule_id, clauses } => {
            let at = rule_index(&config.rules, rule_id)?;
            config.rules[at].clauses = clauses.clone();
        }
        I::UpdateRuleVariationOrRollout { rule_id, variation, rollout } => {
            let served = variation_or_rollout(*variation, rollout.as_ref())?;
            let at = rule_index(&config.rules, rule_id)?;
            config.rules[at].variation = served.variation;
            config.rules[at].rollout = served.rollout;
        }
        I::ReorderRules { rule_ids } => {
            let mut sorted_new: Vec<&str> = rule_ids.iter().map(String::as_str).collect();
            let mut sorted_old: Vec<&str> = config.rules.iter().map(|r| r.id.as_str()).collect();
            sorted_new.sort_unstable();
            sorted_old.sort_unstable();
            if sorted_new != sorted_old {
                return Err(format!("ruleIds must list every rule of the flag once: {}", sorted_old.join(", ")));
            }
            let mut old = std::mem::take(&mut config.rules);
            for id in rule_ids {
                let at = rule_index(&old, id)?;
                config.rules.push(old.remove(at));
            }
        }
        I::AddTargets { values, variation, context_kind } => {
            add_targets(config, context_kind.as_deref(), *variation, values)?;
        }
        I::RemoveTargets { values, variation, context_kind } => {
            remove_targets(config, context_kind.as_deref(), *variation, values);
        }
        I::ReplaceTargets { targets } => {
            config.targets.clear();
            config.context_targets.clear();
            for t in targets {
                add_targets(config, t.context_kind.as_deref(), t.variation, &t.values)?;
            }
        }
        I::UpdateFallthroughVariationOrRollout { variation, rollout } => {
            config.fallthrough = variation_or_rollout(*variation, rollout.as_ref())?;
        }
        I::UpdateOffVariation { variation } => config.off_variation = Some(*variation),
        I::AddPrerequisite { key, variation } => {
            if config.prerequisites.iter().any(|p| &p.key == key) {
                return Err(format!("flag {key:?} is already a prerequisite; use updatePrerequisite"));
            }
            config.prerequisites.push(Prerequisite { key: key.clone(), variation: *variation });
        }
        I::RemovePrerequisite { key } => {
            let at = prerequisite_index(&config.prerequisites, key)?;
            config.prerequisites.remove(at);
        }
        I::UpdatePrerequisite { key, variation } => {
            let at = prerequisite_index(&config.prerequisites, key)?;
            config.prerequisites[at].variation = *variation;
        }
        I::ArchiveFlag {}
        | I::RestoreFlag {}
        | I::UpdateName { .. }
        | I::UpdateDescription { .. }
        | I::AddTags { .. }
        | I::RemoveTags { .. } => {}
    }
    Ok(())
}

fn variation_or_rollout(
    variation: Option<i64>,
    rollout: Option<&Rollout>,
) -> Result<pennant_eval::VariationOrRollout, String> {
    match (variation, rollout) {
        (Some(v), None) => Ok(pennant_eval::VariationOrRollout { variation: Some(v), rollout: None }),
        (None, Some(r)) => Ok(pennant_eval::VariationOrRollout { variation: None, rollout: Some(r.clone()) }),
        _ => Err("give exactly one of \"variation\" (an index) and \"rollout\"".into()),
    }
}

fn rule_index<R: HasId>(rules: &[R], id: &str) -> Result<usize, String> {
    rules.iter().position(|r| r.id() == id).ok_or_else(|| format!("no rule with id {id:?}"))
}

/// Adds a rule at the end, or before the rule with id `before`.
fn insert_rule<R: HasId>(rules: &mut Vec<R>, rule: R, before: Option<&str>) -> Result<(), String> {
    let at = match before {
        Some(before) => rule_index(rules, before)?,
        None => rules.len(),
    };
    rules.insert(at, rule);
    Ok(())
}

fn prerequisite_index(prerequisites: &[Prerequisite], key: &str) -> Result<usize, String> {
    prerequisites.iter().position(|p| p.key == key).ok_or_else(|| format!("flag {key:?} is not a prerequisite"))
}

trait HasId {
    fn id(&self) -> &str;
}

impl HasId for FlagRule {
    fn id(&self) -> &str {
        &self.id
    }
}

impl HasId for SegmentRule {
    fn id(&self) -> &str {
        &self.id
    }
}

/// A new rule ID, UUID-shaped.
fn new_rule_id() -> String {
    let hex = pennant_store::random_secret("");
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// `None`, empty and `user` are the user kind, whose targets live in `targets`; other kinds use
/// `contextTargets`.
fn user_kind(kind: Option<&str>) -> bool {
    kind.is_none_or(|k| k.is_empty() || k == "user")
}

/// Where targets of a kind live: user-kind targets in `targets` (stored without a kind), others in
/// `contextTargets` (stored with theirs).
struct KindTargets<'a> {
    list: &'a mut Vec<Target>,
    stored_kind: Option<String>,
}

impl KindTargets<'_> {
    fn of<'a>(config: &'a mut FlagEnvConfig, kind: Option<&str>) -> KindTargets<'a> {
        if user_kind(kind) {
            KindTargets { list: &mut config.targets, stored_kind: None }
        } else {
            KindTargets { list: &mut config.context_targets, stored_kind: kind.map(str::to_owned) }
        }
    }

    fn is_kind(&self, t: &Target) -> bool {
        match &self.stored_kind {
            None => user_kind(t.context_kind.as_deref()),
            Some(kind) => t.context_kind.as_deref() == Some(kind.as_str()),
        }
    }

    fn position(&self, variation: i64) -> Option<usize> {
        self.list.iter().position(|t| self.is_kind(t) && t.variation == variation)
    }
}

fn add_targets(
    config: &mut FlagEnvConfig,
    kind: Option<&str>,
    variation: i64,
    values: &[String],
) -> Result<(), String> {
    if values.is_empty() {
        return Err("values must list at least one key".into());
    }
    let targets = KindTargets::of(config, kind);
    for t in targets.list.iter().filter(|t| targets.is_kind(t) && t.variation != variation) {
        if let Some(v) = values.iter().find(|v| t.values.contains(v)) {
            return Err(format!("{v:?} is already targeted to variation {}; remove it there first", t.variation));
        }
    }
    let at = targets.position(variation);
    let mut keys = at.map(|at| targets.list[at].values.clone()).unwrap_or_default();
    for v in values {
        if !keys.contains(v) {
            keys.push(v.clone());
        }
    }
    let target = Target::new(targets.stored_kind.clone(), keys, variation);
    match at {
        Some(at) => targets.list[at] = target,
        None => targets.list.push(target),
    }
    sync_user_placeholders(config);
    Ok(())
}

fn remove_targets(config: &mut FlagEnvConfig, kind: Option<&str>, variation: i64, values: &[String]) {
    let targets = KindTargets::of(config, kind);
    if let Some(at) = targets.position(variation) {
        let keys: Vec<String> = targets.list[at].values.iter().filter(|k| !values.contains(k)).cloned().collect();
        if keys.is_empty() {
            targets.list.remove(at);
        } else {
            targets.list[at] = Target::new(targets.stored_kind.clone(), keys, variation);
        }
    }
    sync_user_placeholders(config);
}

/// Keeps LaunchDarkly's convention: while `contextTargets` has entries of other kinds, every user-kind `targets`
/// entry has a key-less `{"contextKind": "user"}` entry there marking its place in the evaluation order (without
/// one, SDKs would skip it). With no other kinds, the placeholders are dropped and `targets` is used alone.
fn sync_user_placeholders(config: &mut FlagEnvConfig) {
    let is_placeholder = |t: &Target| user_kind(t.context_kind.as_deref()) && t.values.is_empty();
    if config.context_targets.iter().all(is_placeholder) {
        config.context_targets.clear();
        return;
    }
    let user_variations: Vec<i64> = config.targets.iter().map(|t| t.variation).collect();
    config.context_targets.retain(|t| !is_placeholder(t) || user_variations.contains(&t.variation));
    for v in user_variations {
        if !config.context_targets.iter().any(|t| is_placeholder(t) && t.variation == v) {
            config.context_targets.push(Target::new(Some("user".into()), Vec::new(), v));
        }
    }
}

/// A segment instruction.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
pub(crate) enum SegmentInstruction {
    /// Always includes keys.
    #[serde(alias = "addIncluded", alias = "addIncludedUsers")]
    AddIncludedTargets {
        values: Vec<String>,
        #[serde(default)]
        context_kind: Option<String>,
    },
    /// Stops always including keys.
    #[serde(alias = "removeIncluded", alias = "removeIncludedUsers")]
    RemoveIncludedTargets {
        values: Vec<String>,
        #[serde(default)]
        context_kind: Option<String>,
    },
    /// Always excludes keys.
    #[serde(alias = "addExcluded", alias = "addExcludedUsers")]
    AddExcludedTargets {
        values: Vec<String>,
        #[serde(default)]
        context_kind: Option<String>,
    },
    /// Stops always excluding keys.
    #[serde(alias = "removeExcluded", alias = "removeExcludedUsers")]
    RemoveExcludedTargets {
        values: Vec<String>,
        #[serde(default)]
        context_kind: Option<String>,
    },
    /// A new rule, at the end or before `beforeRuleId`.
    AddRule {
        clauses: Vec<Clause>,
        #[serde(default)]
        weight: Option<i64>,
        #[serde(default)]
        bucket_by: Option<String>,
        #[serde(default)]
        rollout_context_kind: Option<String>,
        #[serde(default)]
        rule_id: Option<String>,
        #[serde(default)]
        before_rule_id: Option<String>,
    },
    /// Removes a rule.
    RemoveRule { rule_id: String },
    /// Replaces a rule's clauses.
    UpdateRuleClauses { rule_id: String, clauses: Vec<Clause> },
    /// Renames the segment.
    UpdateName { value: String },
    /// Replaces the description.
    UpdateDescription { value: String },
    /// Adds tags.
    AddTags { values: Vec<String> },
    /// Removes tags.
    RemoveTags { values: Vec<String> },
}

const SEGMENT_KINDS: &[&str] = &[
    "addIncludedTargets",
    "removeIncludedTargets",
    "addExcludedTargets",
    "removeExcludedTargets",
    "addIncluded",
    "removeIncluded",
    "addExcluded",
    "removeExcluded",
    "addIncludedUsers",
    "removeIncludedUsers",
    "addExcludedUsers",
    "removeExcludedUsers",
    "addRule",
    "removeRule",
    "updateRuleClauses",
    "updateName",
    "updateDescription",
    "addTags",
    "removeTags",
];

/// Parses a segment PATCH's instructions.
pub(crate) fn parse_segment_instructions(items: &[Value]) -> ApiResult<Vec<Parsed<SegmentInstruction>>> {
    parse(items, SEGMENT_KINDS)
}

/// Applies instructions in order to a segment.
pub(crate) fn apply_segment_instructions(
    doc: &mut SegmentDoc,
    instructions: &[Parsed<SegmentInstruction>],
) -> ApiResult<()> {
    for p in instructions {
        apply_segment(doc, &p.instruction).map_err(|m| p.error(m))?;
    }
    doc.segment.reindex();
    Ok(())
}

#[derive(Clone, Copy)]
enum List {
    Included,
    Excluded,
}

fn apply_segment(doc: &mut SegmentDoc, instruction: &SegmentInstruction) -> Result<(), String> {
    use SegmentInstruction as I;
    let segment = &mut doc.segment;
    match instruction {
        I::AddIncludedTargets { values, context_kind } => {
            add_segment_keys(segment, List::Included, context_kind.as_deref(), values)?;
        }
        I::RemoveIncludedTargets { values, context_kind } => {
            remove_segment_keys(segment, List::Included, context_kind.as_deref(), values)?;
        }
        I::AddExcludedTargets { values, context_kind } => {
            add_segment_keys(segment, List::Excluded, context_kind.as_deref(), values)?;
        }
        I::RemoveExcludedTargets { values, context_kind } => {
            remove_segment_keys(segment, List::Excluded, context_kind.as_deref(), values)?;
        }
        I::AddRule { clauses, weight, bucket_by, rollout_context_kind, rule_id, before_rule_id } => {
            let id = match rule_id {
                Some(id) if id.is_empty() => return Err("ruleId must not be empty".into()),
                Some(id) => id.clone(),
                None => new_rule_id(),
            };
            if segment.rules.iter().any(|r| r.id == id) {
                return Err(format!("the segment already has a rule with id {id:?}"));
            }
            // Built from JSON so that the rule's bucketing reference is parsed as when it is loaded.
            let rule: SegmentRule = serde_json::from_value(json!({
                "id": id, "clauses": clauses, "weight": weight, "bucketBy": bucket_by,
                "rolloutContextKind": rollout_context_kind,
            }))
            .map_err(|e| e.to_string())?;
            insert_rule(&mut segment.rules, rule, before_rule_id.as_deref())?;
        }
        I::RemoveRule { rule_id } => {
            let at = rule_index(&segment.rules, rule_id)?;
            segment.rules.remove(at);
        }
        I::UpdateRuleClauses { rule_id, clauses } => {
            let at = rule_index(&segment.rules, rule_id)?;
            segment.rules[at].clauses = clauses.clone();
        }
        I::UpdateName { value } => doc.name.clone_from(value),
        I::UpdateDescription { value } => doc.description.clone_from(value),
        I::AddTags { values } => {
            for tag in values {
                if !doc.tags.contains(tag) {
                    doc.tags.push(tag.clone());
                }
            }
        }
        I::RemoveTags { values } => doc.tags.retain(|t| !values.contains(t)),
    }
    Ok(())
}

/// A segment's key list for a kind: `included`/`excluded` for users, else the `…Contexts` entry of the kind.
fn segment_target(kind: &str, values: Vec<String>) -> Result<SegmentTarget, String> {
    serde_json::from_value(json!({"contextKind": kind, "values": values})).map_err(|e| e.to_string())
}

fn add_segment_keys(segment: &mut Segment, list: List, kind: Option<&str>, values: &[String]) -> Result<(), String> {
    if values.is_empty() {
        return Err("values must list at least one key".into());
    }
    let push_new = |keys: &mut Vec<String>| {
        for v in values {
            if !keys.contains(v) {
                keys.push(v.clone());
            }
        }
    };
    match kind {
        Some(kind) if !user_kind(Some(kind)) => {
            let contexts = match list {
                List::Included => &mut segment.included_contexts,
                List::Excluded => &mut segment.excluded_contexts,
            };
            match contexts.iter().position(|t| t.context_kind == kind) {
                Some(at) => {
                    let mut keys = contexts[at].values.clone();
                    push_new(&mut keys);
                    contexts[at] = segment_target(kind, keys)?;
                }
                None => {
                    let mut keys = Vec::new();
                    push_new(&mut keys);
                    contexts.push(segment_target(kind, keys)?);
                }
            }
        }
        _ => push_new(match list {
            List::Included => &mut segment.included,
            List::Excluded => &mut segment.excluded,
        }),
    }
    Ok(())
}

fn remove_segment_keys(segment: &mut Segment, list: List, kind: Option<&str>, values: &[String]) -> Result<(), String> {
    match kind {
        Some(kind) if !user_kind(Some(kind)) => {
            let contexts = match list {
                List::Included => &mut segment.included_contexts,
                List::Excluded => &mut segment.excluded_contexts,
            };
            if let Some(at) = contexts.iter().position(|t| t.context_kind == kind) {
                let keys: Vec<String> = contexts[at].values.iter().filter(|k| !values.contains(k)).cloned().collect();
                if keys.is_empty() {
                    contexts.remove(at);
                } else {
                    contexts[at] = segment_target(kind, keys)?;
                }
            }
        }
        _ => match list {
            List::Included => segment.included.retain(|k| !values.contains(k)),
            List::Excluded => segment.excluded.retain(|k| !values.contains(k)),
        },
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_known_kind_parses_and_unknown_fields_are_refused() {
        let flag_examples = [
            json!({"kind": "turnFlagOn"}),
            json!({"kind": "addRule", "clauses": [{"attribute": "email", "op": "endsWith", "values": ["@x"]}],
                "rollout": {"variations": [{"variation": 0, "weight": 100000}]}}),
            json!({"kind": "replaceTargets", "targets": [{"variation": 0, "values": ["a"]}]}),
            json!({"kind": "archiveFlag"}),
        ];
        for e in &flag_examples {
            parse::<FlagInstruction>(std::slice::from_ref(e), FLAG_KINDS).unwrap();
        }
        for kind in ["addIncluded", "removeExcludedUsers", "addIncludedTargets"] {
            let p = parse::<SegmentInstruction>(&[json!({"kind": kind, "values": ["k"]})], SEGMENT_KINDS).unwrap();
            assert!(matches!(
                p[0].instruction,
                SegmentInstruction::AddIncludedTargets { .. } | SegmentInstruction::RemoveExcludedTargets { .. }
            ));
        }
        let err = parse::<FlagInstruction>(
            &[json!({"kind": "turnFlagOn"}), json!({"kind": "updateName", "value": "x", "typo": 1})],
            FLAG_KINDS,
        )
        .unwrap_err();
        assert!(err.message.starts_with("instructions/1 (updateName): unknown field"), "{}", err.message);
        let err =
            parse::<FlagInstruction>(&[json!({"kind": "turnFlagOn", "environmentKey": "x"})], FLAG_KINDS).unwrap_err();
        assert!(err.message.starts_with("instructions/0 (turnFlagOn): unknown field"), "{}", err.message);
        let err = parse::<FlagInstruction>(&[json!({"kind": "fly"})], FLAG_KINDS).unwrap_err();
        assert!(err.message.starts_with("instructions/0: unknown instruction kind \"fly\""), "{}", err.message);
        let err = parse::<FlagInstruction>(&[json!({"kind": "addTargets", "values": "a", "variation": 0})], FLAG_KINDS)
            .unwrap_err();
        assert!(err.message.starts_with("instructions/0 (addTargets): invalid type"), "{}", err.message);
    }
}
