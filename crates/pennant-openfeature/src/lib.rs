//! An [OpenFeature](https://openfeature.dev) provider for Pennant's server-side Rust SDK, for the Rust OpenFeature
//! SDK (`open-feature` 0.3).
//!
//! [`PennantProvider`] wraps a started [`pennant_sdk::Client`] and resolves boolean, string, integer, float and
//! structure flags through its `*_variation_detail` methods:
//!
//! - **Contexts**: the targeting key is the context key, a `kind` field selects the kind (default `user`), other
//!   fields are attributes, and `kind: "multi"` builds a multi-kind context from structure fields, as
//!   LaunchDarkly's OpenFeature providers do (see [`to_pennant_context`]). No key is `TARGETING_KEY_MISSING`; a
//!   context Pennant rejects is `INVALID_CONTEXT`.
//! - **Reasons**: `OFF` → `DISABLED`, `TARGET_MATCH` and `RULE_MATCH` → `TARGETING_MATCH`, `FALLTHROUGH` →
//!   `DEFAULT`, `PREREQUISITE_FAILED` kept as is. The variant is the variation's index; the flag metadata holds
//!   the LaunchDarkly reason's details (`reasonKind`, `ruleIndex`, `ruleId`, `inExperiment`, `prerequisiteKey`).
//! - **Errors**: `FLAG_NOT_FOUND` → `FLAG_NOT_FOUND`, `WRONG_TYPE` → `TYPE_MISMATCH`, `CLIENT_NOT_READY` →
//!   `PROVIDER_NOT_READY`, `MALFORMED_FLAG` → `PARSE_ERROR`, others `GENERAL`. The Rust SDK passes providers no
//!   default value, so a flag that serves no variation (off, with no off variation) is a `GENERAL` error too: the
//!   application's default then applies, as it would with the SDK.
//! - **Status**: [`initialize`](open_feature::provider::FeatureProvider::initialize) waits for the client's first
//!   data (with a timeout) and the status is `Ready` or `Error`; afterwards it follows the client's data source.
//!
//! `open-feature` 0.3 has no provider events (its README: "Events are not yet available in the Rust SDK"), so
//! [`PennantProvider::events`] delivers OpenFeature's provider events to the application itself
//! ([`ProviderEvent`]: ready, stale, error, configuration changed with the changed flags).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use open_feature::{EvaluationContext, EvaluationContextFieldValue, OpenFeature};
//! use pennant_openfeature::{PennantProvider, ProviderEvent};
//! use pennant_sdk::{Client, Config};
//!
//! let client = Client::start(Config::builder("sdk-0123…").service_uri("http://127.0.0.1:8030").build()?)?;
//! let provider = PennantProvider::new(client).with_initialization_timeout(Duration::from_secs(5));
//! let mut events = provider.events();
//!
//! let mut api = OpenFeature::singleton_mut().await;
//! api.set_provider(provider).await; // waits for the first flag data, up to 5 s
//! let flags = api.create_client();
//! drop(api);
//!
//! let user = EvaluationContext::default().with_targeting_key("user-1").with_custom_field("email", "a@example.com");
//! let enabled = flags.get_bool_value("new-checkout", Some(&user), None).await.unwrap_or(false);
//!
//! // A user in an organisation: a multi-kind context, one structure per kind.
//! let org = EvaluationContext::default().with_targeting_key("acme").with_custom_field("plan", "enterprise");
//! let both = EvaluationContext::default()
//!     .with_custom_field("kind", "multi")
//!     .with_custom_field("user", EvaluationContextFieldValue::new_struct(user))
//!     .with_custom_field("org", EvaluationContextFieldValue::new_struct(org));
//! let limit = flags.get_int_value("upload-limit-mb", Some(&both), None).await.unwrap_or(10);
//!
//! while let Some(event) = events.recv().await {
//!     if let ProviderEvent::ConfigurationChanged { flags_changed } = &event {
//!         println!("flags changed: {flags_changed:?}");
//!     }
//! }
//! # let _ = (enabled, limit);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod context;
mod events;
mod provider;

pub use context::{ContextConversionError, to_pennant_context};
pub use events::ProviderEvent;
pub use provider::{DEFAULT_INITIALIZATION_TIMEOUT, GENERAL, PROVIDER_NAME, PennantProvider};

/// The OpenFeature SDK this provider implements, re-exported so that applications use the same version.
pub use open_feature;
/// The Pennant SDK, re-exported.
pub use pennant_sdk;
/// A flag whose evaluations may have changed, from [`PennantProvider::flag_changes`].
pub use pennant_sdk::FlagChange;
