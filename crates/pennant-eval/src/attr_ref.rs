//! Attribute references: `name`, or `/a/b` paths with `~1` for `/` and `~0` for `~` (as in JSON Pointer).

use std::fmt;
use std::hash::BuildHasher;
use std::sync::LazyLock;

/// Why an attribute reference is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AttrRefError {
    /// The reference is the empty string.
    #[error("attribute reference is empty")]
    Empty,
    /// A path with `//`, a trailing `/`, or only `/`.
    #[error("attribute reference has an empty path component")]
    EmptyComponent,
    /// A `~` not followed by `0` or `1`.
    #[error("attribute reference has an invalid escape sequence")]
    InvalidEscape,
}

/// A parsed attribute reference. Invalid references are kept (with their error) rather than rejected, because
/// LaunchDarkly data may contain them and an evaluation that meets one must report `MALFORMED_FLAG`.
#[derive(Clone, PartialEq, Eq)]
pub struct AttrRef {
    raw: String,
    parsed: Result<Box<[String]>, AttrRefError>,
    // Which top-level attribute the path starts at, decided once so lookups need no string matching.
    head: Head,
    // `name_hash` of the first component, so that custom-attribute lookups need not hash the name.
    first_hash: u64,
}

/// The hash custom attributes are indexed by. One hasher for the whole process: the hash of a clause's attribute
/// is computed when the flag is loaded and must agree with every context's index. Its seed is random, so that
/// nobody can craft attribute names that collide (contexts come from clients).
pub(crate) fn name_hash(name: &str) -> u64 {
    static HASHER: LazyLock<foldhash::fast::RandomState> = LazyLock::new(Default::default);
    HASHER.hash_one(name)
}

/// The top-level attribute a reference starts at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Head {
    Kind,
    Key,
    Name,
    Anonymous,
    Custom,
}

fn head_of(parsed: &Result<Box<[String]>, AttrRefError>) -> Head {
    match parsed.as_ref().ok().and_then(|c| c.first()).map(String::as_str) {
        Some("kind") => Head::Kind,
        Some("key") => Head::Key,
        Some("name") => Head::Name,
        Some("anonymous") => Head::Anonymous,
        _ => Head::Custom,
    }
}

impl AttrRef {
    fn new(raw: &str, parsed: Result<Box<[String]>, AttrRefError>) -> AttrRef {
        let first_hash = parsed.as_ref().ok().and_then(|c| c.first()).map_or(0, |name| name_hash(name));
        AttrRef { raw: raw.to_owned(), head: head_of(&parsed), first_hash, parsed }
    }

    /// Parses a reference in the context-aware syntax: a leading `/` starts a path, anything else is one name.
    pub fn parse(raw: &str) -> AttrRef {
        AttrRef::new(raw, parse_components(raw))
    }

    /// A literal attribute name, as in data written before contexts existed (clauses with no `contextKind`):
    /// `/` and `~` have no special meaning.
    pub fn literal(name: &str) -> AttrRef {
        let parsed =
            if name.is_empty() { Err(AttrRefError::Empty) } else { Ok(vec![name.to_owned()].into_boxed_slice()) };
        AttrRef::new(name, parsed)
    }

    /// The reference for `key`.
    pub fn key() -> AttrRef {
        AttrRef::literal("key")
    }

    /// The text the reference was made from.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The path components, or why the reference is invalid.
    pub fn components(&self) -> Result<&[String], AttrRefError> {
        match &self.parsed {
            Ok(c) => Ok(c),
            Err(e) => Err(*e),
        }
    }

    /// True unless the reference is invalid.
    #[inline]
    pub fn is_valid(&self) -> bool {
        self.parsed.is_ok()
    }

    /// True for exactly the top-level attribute `kind`.
    #[inline]
    pub(crate) fn is_kind(&self) -> bool {
        self.head == Head::Kind && matches!(&self.parsed, Ok(c) if c.len() == 1)
    }

    #[inline]
    pub(crate) fn head(&self) -> Head {
        self.head
    }

    #[inline]
    pub(crate) fn first_hash(&self) -> u64 {
        self.first_hash
    }

    #[inline]
    pub(crate) fn parsed(&self) -> Option<&[String]> {
        self.parsed.as_deref().ok()
    }

    /// True if this is exactly the top-level attribute `name`.
    pub fn is_top_level(&self, name: &str) -> bool {
        matches!(&self.parsed, Ok(c) if c.len() == 1 && c[0] == name)
    }
}

impl fmt::Debug for AttrRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AttrRef({:?})", self.raw)
    }
}

fn parse_components(raw: &str) -> Result<Box<[String]>, AttrRefError> {
    if raw.is_empty() {
        return Err(AttrRefError::Empty);
    }
    let Some(path) = raw.strip_prefix('/') else {
        return Ok(vec![raw.to_owned()].into_boxed_slice());
    };
    path.split('/').map(unescape).collect::<Result<Vec<_>, _>>().map(Vec::into_boxed_slice)
}

fn unescape(component: &str) -> Result<String, AttrRefError> {
    if component.is_empty() {
        return Err(AttrRefError::EmptyComponent);
    }
    if !component.contains('~') {
        return Ok(component.to_owned());
    }
    let mut out = String::with_capacity(component.len());
    let mut chars = component.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return Err(AttrRefError::InvalidEscape),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comps(r: &str) -> Result<Vec<String>, AttrRefError> {
        AttrRef::parse(r).components().map(<[String]>::to_vec)
    }

    #[test]
    fn parses_names_paths_and_escapes() {
        assert_eq!(comps("name").unwrap(), vec!["name"]);
        assert_eq!(comps("a/b").unwrap(), vec!["a/b"]);
        assert_eq!(comps("/a/b").unwrap(), vec!["a", "b"]);
        assert_eq!(comps("/a~1b/c~0d").unwrap(), vec!["a/b", "c~d"]);
        assert_eq!(comps(""), Err(AttrRefError::Empty));
        assert_eq!(comps("/"), Err(AttrRefError::EmptyComponent));
        assert_eq!(comps("/a//b"), Err(AttrRefError::EmptyComponent));
        assert_eq!(comps("/a/"), Err(AttrRefError::EmptyComponent));
        assert_eq!(comps("/a~2"), Err(AttrRefError::InvalidEscape));
        assert_eq!(comps("/a~"), Err(AttrRefError::InvalidEscape));
    }

    #[test]
    fn literal_names_keep_slashes() {
        assert_eq!(AttrRef::literal("/a/b").components().unwrap(), ["/a/b".to_owned()]);
        assert_eq!(AttrRef::literal("").components(), Err(AttrRefError::Empty));
        assert!(AttrRef::literal("kind").is_top_level("kind"));
        assert!(!AttrRef::parse("/kind/x").is_top_level("kind"));
    }
}
