//! Pennant's server-side Rust SDK.
//!
//! It speaks LaunchDarkly's FDv1 protocol, so it works against a Pennant node or anything else that serves it
//! (LaunchDarkly's Relay Proxy): it streams flag data from `GET {stream_uri}/all` (server-sent events `put`,
//! `patch`, `delete`) or polls `GET {base_uri}/sdk/latest-all` with `If-None-Match`, keeps it in memory, and
//! evaluates flags locally with Pennant's engine, `pennant-eval` (the same code the server runs).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use pennant_sdk::{Client, Config, Context};
//!
//! let config = Config::builder("sdk-0123…").service_uri("http://127.0.0.1:8030").build()?;
//! let client = Client::start(config)?;
//! if !client.wait_for_initialization(Duration::from_secs(5)).await {
//!     eprintln!("no flag data yet: {:?}", client.data_source_status());
//! }
//! let user = Context::user("user-1");
//! if client.bool_variation(&user, "new-checkout", false) {
//!     // …
//! }
//! client.track(&user, "checkout-completed", None, Some(42.0));
//! // On shutdown: sends the analytics events recorded so far, then disconnects.
//! client.close().await;
//! # Ok(()) }
//! ```
//!
//! - Evaluation takes no lock: the data is an immutable snapshot replaced whole on each change
//!   (`arc-swap`), so readers never wait for the stream.
//! - Streaming reconnects with exponential backoff and jitter (reset once a connection stayed up a minute), drops
//!   a connection that was silent (not even a heartbeat) for the read timeout, and treats HTTP statuses as
//!   LaunchDarkly SDKs do: 400, 408, 429 and 5xx are retried, other 4xx (a wrong SDK key) stop it (status `Off`).
//! - `patch` and `delete` apply only when they raise the stored version; deletions leave tombstones.
//! - [`Client::flag_changes`] announces changed flags, including flags that depend on a changed flag or segment;
//!   [`Client::flag_key_changes`] one flag's, and [`Client::flag_value_changes`] one flag's value for one context.
//! - [`TestData`] defines flags in code for unit tests.
//! - [`ConfigBuilder::files`] reads flags from local JSON files (below).
//!
//! # Flags from files
//!
//! [`ConfigBuilder::files`] ([`DataSourceConfig::File`]) takes the flag data from one or more local files instead of
//! a server, for development, tests or an air-gapped deployment. Each file holds a JSON object with any of:
//!
//! - `"flags": {key: flag}` and `"segments": {key: segment}`, as LaunchDarkly's `/sdk/latest-all` serves them (a
//!   Pennant node's `GET /sdk/latest-all`, saved to a file, is a valid file);
//! - `"flagValues": {key: value}`, LaunchDarkly's file-data-source shorthand: a flag that is on and serves that
//!   value to everyone.
//!
//! ```json
//! {"flagValues": {"new-checkout": true, "banner": "blue"},
//!  "flags": {"beta": {"key": "beta", "on": true, "variations": [false, true], "fallthrough": {"variation": 0},
//!                     "targets": [{"variation": 1, "values": ["user-1"]}]}}}
//! ```
//!
//! The files are merged; a key defined twice (in two files or in one) is an error naming both files. Every
//! [`ConfigBuilder::file_poll_interval`] (1 s by default) the files' modification times and lengths are checked,
//! and the files are read again when one changed. A missing, unreadable or invalid file leaves the previous data in
//! place and the status `Interrupted` (or `Initializing` before the first good load) with an `InvalidData` error
//! that names the file and the reason; once it is fixed the status is `Valid` again. Items whose JSON changed get a
//! higher version, so [`Client::flag_changes`] announces them even when the file does not raise `version`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use pennant_sdk::{Client, Config};
//! let config = Config::builder("").files(["flags.json"]).events_enabled(false).build()?;
//! let client = Client::start(config)?;
//! client.wait_for_initialization(std::time::Duration::from_secs(1)).await;
//! # Ok(()) }
//! ```
//!
//! # Analytics events
//!
//! With [`Config::events_enabled`] (the default, unless offline) the client sends LaunchDarkly's analytics events
//! (schema 4) to `POST {events_uri}/bulk`, which Pennant's events front door (and LaunchDarkly's) accepts:
//!
//! - a `summary` event per flush with every evaluation counted per flag, version and variation (unknown flags
//!   included), with the caller's default and the context kinds; prerequisite evaluations are counted too;
//! - an `index` event the first time a context is seen (an LRU of [`Config::context_keys_capacity`] keys, forgotten
//!   every [`Config::context_keys_flush_interval`]);
//! - `feature` events for flags with `trackEvents`, for rules and fallthroughs with event tracking and for
//!   experiments (with the reason; prerequisites with `prereqOf`), and `debug` events while a flag's
//!   `debugEventsUntilDate` is in the future;
//! - `custom` events from [`Client::track`] and `identify` events from [`Client::identify`].
//!
//! Contexts in events have private attributes removed and listed in `_meta.redactedAttributes`:
//! [`ConfigBuilder::all_attributes_private`], [`ConfigBuilder::private_attributes`] (attribute references such as
//! `/address/street`) and each context's own `_meta.privateAttributes`; feature events also redact every attribute
//! of anonymous contexts.
//!
//! Evaluations never wait for the event machinery: counting an evaluation updates a counter in place (no allocation
//! once the counter exists), and everything else is queued with `try_send` into a queue of
//! [`Config::events_capacity`]; when it or the processor's buffer is full, events are dropped and counted
//! ([`Client::dropped_events`]). Events are sent every [`Config::flush_interval`], on [`Client::flush`] (which waits
//! for the outcome) and on [`Client::close`] (which sends everything recorded before it returns), gzipped unless
//! [`ConfigBuilder::compress_events`] is off, each payload with its own `X-LaunchDarkly-Payload-ID`, kept on its one
//! retry (network errors, 400, 408, 429, 5xx; after a second). 401 or 403 stops events for good.

#![deny(missing_docs)]

mod client;
mod config;
mod data;
mod events;
mod listeners;
mod source;
mod status;
mod test_data;
mod updates;

pub use client::{AllFlags, Client, ClientError, EvaluationDetail, EvaluationReason};
pub use config::{
    Config, ConfigBuilder, ConfigError, DEFAULT_CONNECT_TIMEOUT, DEFAULT_CONTEXT_KEYS_CAPACITY,
    DEFAULT_CONTEXT_KEYS_FLUSH_INTERVAL, DEFAULT_EVENTS_CAPACITY, DEFAULT_FILE_POLL_INTERVAL, DEFAULT_FLUSH_INTERVAL,
    DEFAULT_INITIAL_RECONNECT_DELAY, DEFAULT_MAX_RECONNECT_DELAY, DEFAULT_POLL_INTERVAL, DEFAULT_READ_TIMEOUT,
    DEFAULT_URI, DataSourceConfig,
};
pub use data::{DataError, FlagData};
pub use events::FlushError;
pub use listeners::{FlagKeyChanges, FlagValueChange, FlagValueChanges};
pub use source::{DataSource, DataSourceUpdates, Shutdown, SourceFuture};
pub use status::{DataSourceErrorInfo, DataSourceErrorKind, DataSourceState, DataSourceStatus};
pub use test_data::{FlagBuilder, RuleBuilder, TestData, TestDataError, Variation};
pub use updates::{FLAG_CHANGE_CAPACITY, FlagChange};

// The engine's types that appear in this crate's API.
pub use pennant_eval::{
    AllFlagsOptions, AllFlagsState, AttrRef, AttrRefError, BigSegmentsStatus, Context, ContextError, ErrorKind, Reason,
};
