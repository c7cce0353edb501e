//! A set of string keys with constant-time lookup, built once when data is loaded.

use std::collections::HashSet;

/// Target and segment key lists become one of these: lookups cost the same for 10 keys or 100,000.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeySet(HashSet<Box<str>, foldhash::fast::RandomState>);

impl KeySet {
    pub(crate) fn new<'a>(keys: impl IntoIterator<Item = &'a String>) -> KeySet {
        KeySet(keys.into_iter().map(|k| Box::from(k.as_str())).collect())
    }

    #[inline]
    pub(crate) fn contains(&self, key: &str) -> bool {
        !self.0.is_empty() && self.0.contains(key)
    }
}
