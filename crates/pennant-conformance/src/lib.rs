//! Conformance testing of Pennant's evaluation engine against LaunchDarkly's SDK test-harness data.
//!
//! The data are YAML files, each one or more *suites* of evaluation cases: flag and segment data, then
//! evaluations with the expected value, variation index and reason. A file may define `constants` and
//! `parameters` that are substituted textually before the file is parsed, exactly as LaunchDarkly's harness
//! does it (see [`expand`]).
//!
//! ```no_run
//! let suites = pennant_conformance::load_dir("../shared/conformance/launchdarkly-eval")?;
//! let report = pennant_conformance::run(&suites);
//! println!("{} passed, {} failed", report.passed(), report.failed());
//! # Ok::<(), pennant_conformance::ConformanceError>(())
//! ```

mod error;
pub mod expand;
mod run;
mod suite;

pub use error::ConformanceError;
pub use expand::{Expansion, Substitutions};
pub use run::{CaseResult, Failure, Report, json_equivalent, run, value_type_name, variation_call};
pub use suite::{Case, Expectation, Suite, load_dir, load_file, load_str, parse_suite};
