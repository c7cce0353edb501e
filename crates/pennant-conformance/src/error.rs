//! The error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while loading conformance data.
///
/// Evaluation mismatches are not errors: they are reported as failed cases in a [`crate::Report`].
#[derive(Debug, thiserror::Error)]
pub enum ConformanceError {
    /// A file or directory could not be read.
    #[error("cannot read {}", path.display())]
    Io {
        /// The path that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A file (or one of its expansions) is not valid YAML.
    #[error("{location}: invalid YAML")]
    Yaml {
        /// The file name, followed by the parameter set when the error is in an expansion.
        location: String,
        /// The underlying parser error.
        #[source]
        source: serde_yaml_ng::Error,
    },

    /// The YAML parsed but does not have the shape of a test suite.
    #[error("{file}: suite \"{suite}\": {message}")]
    Structure {
        /// The file name.
        file: String,
        /// The suite name, with its parameter set; `<file header>` for errors in `constants` or `parameters`.
        suite: String,
        /// What is wrong.
        message: String,
    },
}
