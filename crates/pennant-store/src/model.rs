//! The management API's resources, as stored (JSON documents) and as returned.

use std::collections::BTreeMap;

use pennant_eval::{ClientSideAvailability, FlagRule, Prerequisite, Target, VariationOrRollout};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Actor {
    /// `member`, `token` or `system`.
    pub kind: String,
    /// Member or token ID.
    pub id: String,
    /// Display name (email for members, token name for tokens).
    pub name: String,
}

impl Actor {
    /// Pennant itself (first-start bootstrap, imports run from the CLI).
    pub fn system(name: &str) -> Actor {
        Actor { kind: "system".into(), id: "system".into(), name: name.into() }
    }
}

/// Version and timestamps kept alongside every resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    /// Raised by every write; used for optimistic concurrency.
    pub version: u64,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub updated_at: i64,
    /// Archived resources are hidden from lists unless asked for.
    pub archived: bool,
}

/// A resource with its metadata. Serialises as the resource's fields plus `_version`, `_createdAt`, ….
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Record<T> {
    /// The resource.
    #[serde(flatten)]
    pub data: T,
    /// Version.
    #[serde(rename = "_version")]
    pub version: u64,
    /// Created, Unix ms.
    #[serde(rename = "_createdAt")]
    pub created_at: i64,
    /// Last changed, Unix ms.
    #[serde(rename = "_updatedAt")]
    pub updated_at: i64,
    /// Archived.
    #[serde(rename = "_archived")]
    pub archived: bool,
}

/// A project: flags and environments live in one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Project {
    /// Unique key.
    pub key: String,
    /// Display name.
    pub name: String,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// An environment of a project, with its SDK credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Environment {
    /// Unique key within the project.
    pub key: String,
    /// Display name.
    pub name: String,
    /// Colour shown in the dashboard (hex, no `#`).
    #[serde(default = "default_color")]
    pub color: String,
    /// Client-side (JavaScript) requests must carry a secure-mode hash.
    #[serde(default)]
    pub secure_mode: bool,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Server-side SDK key.
    #[serde(default)]
    pub sdk_key: String,
    /// Mobile key.
    #[serde(default)]
    pub mobile_key: String,
    /// Client-side ID (not secret).
    #[serde(default, rename = "_id")]
    pub client_side_id: String,
}

pub(crate) fn default_color() -> String {
    "417505".into()
}

/// One variation of a flag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Variation {
    /// The value served.
    #[schema(value_type = Object)]
    pub value: Value,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Variations new environments start with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlagDefaults {
    /// Served when the flag is turned on (the fallthrough).
    pub on_variation: i64,
    /// Served when the flag is off.
    pub off_variation: i64,
}

/// A flag's targeting in one environment: everything LaunchDarkly's SDK flag has that varies by environment.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlagEnvConfig {
    /// Targeting on.
    #[serde(default)]
    pub on: bool,
    /// User keys targeted individually.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub targets: Vec<Target>,
    /// Keys of any kind targeted individually.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub context_targets: Vec<Target>,
    /// Rules, first match wins.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub rules: Vec<FlagRule>,
    /// Served when nothing matched.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub fallthrough: VariationOrRollout,
    /// Served when off.
    #[serde(default)]
    pub off_variation: Option<i64>,
    /// Prerequisite flags.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub prerequisites: Vec<Prerequisite>,
    /// Bucketing salt.
    #[serde(default)]
    pub salt: String,
    /// Full feature events for every evaluation.
    #[serde(default)]
    pub track_events: bool,
    /// Full feature events for fallthrough evaluations.
    #[serde(default)]
    pub track_events_fallthrough: bool,
    /// Debug events until (Unix ms).
    #[serde(default)]
    pub debug_events_until_date: Option<u64>,
}

/// A feature flag with its configuration in every environment of its project.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlagDoc {
    /// Unique key within the project.
    pub key: String,
    /// Display name.
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Temporary flags are meant to be removed after a release.
    #[serde(default = "yes")]
    pub temporary: bool,
    /// Member responsible for the flag.
    #[serde(default)]
    pub maintainer: Option<String>,
    /// The values the flag can serve.
    pub variations: Vec<Variation>,
    /// Which client-side SDKs may evaluate it.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub client_side_availability: ClientSideAvailability,
    /// Variations new environments start with (default: on → first, off → last).
    #[serde(default)]
    pub defaults: Option<FlagDefaults>,
    /// Configuration per environment key.
    #[serde(default)]
    pub environments: BTreeMap<String, FlagEnvConfig>,
}

fn yes() -> bool {
    true
}

impl FlagDoc {
    /// The configuration an environment starts with.
    pub fn default_env_config(&self, salt: String) -> FlagEnvConfig {
        let last = i64::try_from(self.variations.len()).unwrap_or(1).saturating_sub(1).max(0);
        let defaults = self.defaults.unwrap_or(FlagDefaults { on_variation: 0, off_variation: last });
        FlagEnvConfig {
            fallthrough: VariationOrRollout { variation: Some(defaults.on_variation), rollout: None },
            off_variation: Some(defaults.off_variation),
            salt,
            ..FlagEnvConfig::default()
        }
    }

    /// The flag as LaunchDarkly's SDKs see it in one environment (`None` if it has no configuration there).
    pub fn render(&self, env_key: &str, version: u64) -> Option<pennant_eval::Flag> {
        let env = self.environments.get(env_key)?;
        let availability = self.client_side_availability;
        Some(pennant_eval::Flag {
            key: self.key.clone(),
            version,
            on: env.on,
            prerequisites: env.prerequisites.clone(),
            salt: env.salt.clone(),
            targets: env.targets.clone(),
            context_targets: env.context_targets.clone(),
            rules: env.rules.clone(),
            fallthrough: env.fallthrough.clone(),
            off_variation: env.off_variation,
            variations: self.variations.iter().map(|v| v.value.clone()).collect(),
            client_side_availability: Some(availability),
            client_side: availability.using_environment_id,
            track_events: env.track_events,
            track_events_fallthrough: env.track_events_fallthrough,
            debug_events_until_date: env.debug_events_until_date,
            // Archived flags stay in the payload: SDKs still evaluate them until code stops asking.
            deleted: false,
            sampling_ratio: None,
            migration: None,
            exclude_from_summaries: false,
        })
    }
}

/// A segment in one environment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SegmentDoc {
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Membership, in LaunchDarkly's SDK shape (key, included, excluded, rules, …).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub segment: pennant_eval::Segment,
}

/// A context kind known to a project.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContextKind {
    /// The kind, e.g. `org`.
    pub key: String,
    /// Display name.
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
}

/// Which changes a webhook receives.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookFilter {
    /// Project keys (empty: all).
    #[serde(default)]
    pub projects: Vec<String>,
    /// Environment keys (empty: all).
    #[serde(default)]
    pub environments: Vec<String>,
    /// Resource kinds such as `flag`, `segment` (empty: all).
    #[serde(default)]
    pub resource_kinds: Vec<String>,
}

/// A webhook subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Webhook {
    /// ID.
    #[serde(default)]
    pub key: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Where to POST.
    pub url: String,
    /// HMAC-SHA256 signing secret.
    #[serde(default)]
    pub secret: String,
    /// Deliveries are made only while on.
    #[serde(default = "yes")]
    pub on: bool,
    /// What it receives.
    #[serde(default)]
    pub filter: WebhookFilter,
}

/// One changelog entry: a change Pennant made, or one recorded from outside (a deploy, a config change).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangelogEntry {
    /// Monotonic ID.
    pub id: i64,
    /// Unix ms.
    pub date: i64,
    /// Who.
    pub actor: Actor,
    /// `project`, `environment`, `flag`, `segment`, … or the kind of an external change (`deploy`, …).
    pub resource_kind: String,
    /// Parent path of the resource (`proj`, `proj/env`).
    pub scope: String,
    /// Resource key.
    pub resource_key: String,
    /// `create`, `update`, `delete`, `archive`, … or free text for external changes.
    pub action: String,
    /// Comment given with the change.
    pub comment: String,
    /// The resource before.
    #[schema(value_type = Option<Object>)]
    pub before: Option<Value>,
    /// The resource after.
    #[schema(value_type = Option<Object>)]
    pub after: Option<Value>,
    /// RFC 6902 JSON Patch from before to after.
    #[schema(value_type = Vec<Object>)]
    pub diff: Value,
}
