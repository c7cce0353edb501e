//! A set of string keys with constant-time lookup, built once when data is loaded.

use std::collections::HashSet;

/// Target and segment key lists become one of these: lookups cost the same for 10 keys or 100,000.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeySet(HashSet<Box<str>, foldhash::fast::RandomState>);

impl KeySet {
    pub(crate) fn new<'a>(keys: impl IntoIterator<Item = &'a String>) -> KeySet {
        KeySet::from_strs(keys.into_iter().map(String::as_str))
    }

    pub(crate) fn from_strs<'a>(keys: impl IntoIterator<Item = &'a str>) -> KeySet {
        KeySet(keys.into_iter().map(Box::from).collect())
    }

    #[inline]
    pub(crate) fn contains(&self, key: &str) -> bool {
        !self.0.is_empty() && self.0.contains(key)
    }
}
