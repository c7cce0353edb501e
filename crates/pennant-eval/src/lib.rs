//! Pennant's flag evaluation engine.
//!
//! It reads LaunchDarkly's server-side flag, segment and context JSON, preprocesses each flag and segment once
//! when it is loaded (hash sets for key lists, compiled regexes, parsed semantic versions and timestamps), and
//! evaluates flags for contexts with exactly LaunchDarkly's semantics. Evaluation borrows everything it returns
//! from the flag data and does not allocate on its common paths.
//!
//! The crate does no I/O and has no async code, so the server and the SDK share it.
//!
//! ```
//! use pennant_eval::{Context, Flag, MemoryStore, evaluate};
//! let flag: Flag = serde_json::from_str(r#"{"key":"f","on":true,"variations":[false,true],
//!     "fallthrough":{"variation":1},"salt":"s","version":1}"#).unwrap();
//! let context = Context::from_json(br#"{"kind":"user","key":"u1"}"#).unwrap();
//! let store = MemoryStore::default();
//! let detail = evaluate(&store, &flag, &context);
//! assert_eq!(detail.value, Some(&serde_json::json!(true)));
//! ```

mod all_flags;
mod attr_ref;
mod bucket;
mod context;
mod eval;
mod keyset;
mod model;
mod operators;
mod reason;
mod store;
mod text;
mod validate;
mod value;
mod variation;

pub use all_flags::{AllFlagsOptions, AllFlagsState, FlagState, all_flags_state};
pub use attr_ref::{AttrRef, AttrRefError};
pub use bucket::bucket_value;
pub use context::{Attributes, Context, ContextError, Kind, SingleContext};
pub use eval::{
    Detail, MAX_NESTING_DEPTH, NoRecorder, PrerequisiteEvent, PrerequisiteRecorder, evaluate, evaluate_with_recorder,
};
pub use model::{
    Clause, ClientSideAvailability, Flag, FlagRule, MigrationSettings, Operator, Prerequisite, Rollout, RolloutKind,
    Segment, SegmentRule, SegmentTarget, Target, VariationOrRollout, WeightedVariation,
};
pub use reason::{BigSegmentsStatus, ErrorKind, Reason};
pub use store::{MemoryStore, Payload, Store};
pub use validate::{ValidationIssue, is_valid_key, validate_flag, validate_segment};
pub use value::json_equal;
pub use variation::{ValueType, VariationDetail, variation_detail};

/// Errors from parsing flag data, segment data or payloads.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The bytes were not valid JSON of the expected shape.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
}
