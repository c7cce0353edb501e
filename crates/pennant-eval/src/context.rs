//! Evaluation contexts: single-kind, multi-kind, and old-style user objects.

use std::fmt;

use serde_json::{Map, Value};

use crate::attr_ref::{AttrRef, Head, name_hash};
use crate::text;

/// A context kind such as `user` or `org`.
pub type Kind = str;

/// The default kind, and the kind of old-style users.
pub const USER_KIND: &str = "user";

/// A context kind named in flag data, resolved when the data is loaded. `user` is by far the most common kind,
/// and a context remembers where its `user` individual is, so finding it needs no string comparison.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum KindName {
    #[default]
    User,
    Other(Box<str>),
}

impl KindName {
    /// The kind named by an optional `contextKind` property: absent or empty means `user`.
    pub(crate) fn new(kind: Option<&str>) -> KindName {
        match kind {
            None | Some("" | USER_KIND) => KindName::User,
            Some(other) => KindName::Other(other.into()),
        }
    }

    #[inline]
    pub(crate) fn is_user(&self) -> bool {
        matches!(self, KindName::User)
    }
}

/// Why JSON could not be read as a context. Evaluating for such a context gives `USER_NOT_SPECIFIED`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// Not JSON, or not a JSON object.
    #[error("context is not a JSON object: {0}")]
    NotAnObject(String),
    /// The `kind` property is not a valid kind.
    #[error("invalid context kind {0:?}: kinds use only letters, digits, '.', '_' and '-', and may not be \"kind\"")]
    InvalidKind(String),
    /// `key` is missing, not a string, or empty where that is not allowed.
    #[error("context of kind {0:?} must have a non-empty string \"key\"")]
    InvalidKey(String),
    /// A built-in attribute has the wrong JSON type.
    #[error("context attribute {attribute:?} must be {expected}")]
    WrongType {
        /// The attribute's name.
        attribute: String,
        /// What it must be.
        expected: &'static str,
    },
    /// A multi-kind context with no kinds in it.
    #[error("multi-kind context has no individual contexts")]
    EmptyMulti,
}

/// One individual context of one kind.
#[derive(Debug, Clone, PartialEq)]
pub struct SingleContext {
    // Kind, key, name and anonymous are kept as JSON values so attribute lookups can hand out references.
    kind: Value,
    key: Value,
    name: Option<Value>,
    anonymous: Value,
    attributes: Attributes,
    private_attributes: Vec<AttrRef>,
}

/// A context's custom attributes (everything but kind, key, name and anonymous), in name order.
#[derive(Clone, Default)]
pub struct Attributes {
    entries: Box<[Entry]>,
    // An open-addressing table over `entries` indexed by name hash; a slot holds an entry's position plus one, or
    // 0 when empty. Clauses carry their attribute's hash, so a lookup is usually one probe and one string
    // comparison, where a JSON object map compares the name with several keys.
    slots: Box<[u32]>,
}

#[derive(Clone)]
struct Entry {
    hash: u64,
    name: Box<str>,
    value: Value,
}

impl Attributes {
    fn new(map: Map<String, Value>) -> Attributes {
        let mut entries: Vec<Entry> = map
            .into_iter()
            .map(|(name, value)| Entry { hash: name_hash(&name), name: name.into_boxed_str(), value })
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        // At most half full, so probe sequences stay short and always reach an empty slot.
        let mut slots = vec![0u32; (entries.len() * 2).next_power_of_two()];
        let mask = slots.len() - 1;
        for (i, entry) in entries.iter().enumerate() {
            let Ok(slot) = u32::try_from(i + 1) else { break };
            let mut at = slot_of(entry.hash, mask);
            while slots.get(at).is_some_and(|&s| s != 0) {
                at = (at + 1) & mask;
            }
            if let Some(s) = slots.get_mut(at) {
                *s = slot;
            }
        }
        Attributes { entries: entries.into_boxed_slice(), slots: slots.into_boxed_slice() }
    }

    /// The attribute with this name.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.get_hashed(name, name_hash(name))
    }

    /// [`Attributes::get`] with the name's hash already computed.
    #[inline]
    fn get_hashed(&self, name: &str, hash: u64) -> Option<&Value> {
        let mask = self.slots.len().wrapping_sub(1);
        let mut at = slot_of(hash, mask);
        loop {
            // An empty slot (or an empty table) ends the search.
            let position = self.slots.get(at)?.checked_sub(1)?;
            let entry = self.entries.get(position as usize)?;
            if entry.hash == hash && text::eq(&entry.name, name) {
                return Some(&entry.value);
            }
            at = (at + 1) & mask;
        }
    }

    /// The attributes, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|e| (&*e.name, &e.value))
    }

    /// The number of attributes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[inline]
fn slot_of(hash: u64, mask: usize) -> usize {
    #[allow(clippy::cast_possible_truncation)]
    let low = hash as usize;
    low & mask
}

impl PartialEq for Attributes {
    fn eq(&self, other: &Attributes) -> bool {
        self.iter().eq(other.iter())
    }
}

impl fmt::Debug for Attributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl SingleContext {
    /// The context's kind.
    pub fn kind(&self) -> &str {
        self.kind.as_str().unwrap_or(USER_KIND)
    }

    /// The context's key.
    pub fn key(&self) -> &str {
        self.key.as_str().unwrap_or("")
    }

    /// The context's name, if it has one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_ref().and_then(Value::as_str)
    }

    #[inline]
    pub(crate) fn key_value(&self) -> &Value {
        &self.key
    }

    /// Whether the context is anonymous.
    pub fn anonymous(&self) -> bool {
        self.anonymous.as_bool().unwrap_or(false)
    }

    /// Custom attributes (everything but kind, key, name and anonymous).
    pub fn attributes(&self) -> &Attributes {
        &self.attributes
    }

    /// Attribute references the SDK must redact in events.
    pub fn private_attributes(&self) -> &[AttrRef] {
        &self.private_attributes
    }

    /// Looks up an attribute by reference. Path components after the first descend into JSON objects.
    /// Returns `None` for missing attributes and for invalid references.
    #[inline(always)]
    pub fn get(&self, reference: &AttrRef) -> Option<&Value> {
        let (first, rest) = reference.parsed()?.split_first()?;
        let top = match reference.head() {
            Head::Custom => self.attributes.get_hashed(first, reference.first_hash())?,
            Head::Kind => &self.kind,
            Head::Key => &self.key,
            Head::Name => self.name.as_ref()?,
            Head::Anonymous => &self.anonymous,
        };
        if rest.is_empty() { Some(top) } else { descend(top, rest) }
    }

    fn fully_qualified_part(&self, out: &mut String) {
        out.push_str(self.kind());
        out.push(':');
        for c in self.key().chars() {
            match c {
                '%' => out.push_str("%25"),
                ':' => out.push_str("%3A"),
                c => out.push(c),
            }
        }
    }
}

/// An evaluation context: one or more individual contexts of distinct kinds.
#[derive(Debug, Clone, PartialEq)]
pub struct Context {
    multi: bool,
    // Sorted by kind for multi-kind contexts.
    contexts: Vec<SingleContext>,
    // The position of the `user` individual in `contexts`.
    user: Option<usize>,
    fully_qualified_key: String,
}

impl Context {
    /// Reads a context from JSON bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Context, ContextError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| ContextError::NotAnObject(e.to_string()))?;
        Context::from_value(value)
    }

    /// Reads a context from a JSON value: `{"kind":"org","key":…}`, `{"kind":"multi","user":{…},…}`, or an
    /// old-style user object without `kind`.
    pub fn from_value(value: Value) -> Result<Context, ContextError> {
        let Value::Object(mut object) = value else {
            return Err(ContextError::NotAnObject(format!("got {}", type_name(&value))));
        };
        match object.remove("kind") {
            None => Ok(Context::single(parse_old_user(object)?)),
            Some(Value::String(kind)) if kind == "multi" => parse_multi(object),
            Some(Value::String(kind)) => {
                validate_kind(&kind)?;
                Ok(Context::single(parse_single(kind, object)?))
            }
            Some(other) => Err(ContextError::InvalidKind(other.to_string())),
        }
    }

    /// A context of kind `user` with only a key.
    pub fn user(key: &str) -> Context {
        Context::single(SingleContext {
            kind: Value::String(USER_KIND.to_owned()),
            key: Value::String(key.to_owned()),
            name: None,
            anonymous: Value::Bool(false),
            attributes: Attributes::default(),
            private_attributes: Vec::new(),
        })
    }

    fn single(context: SingleContext) -> Context {
        let fully_qualified_key = if context.kind() == USER_KIND {
            context.key().to_owned()
        } else {
            let mut s = String::new();
            context.fully_qualified_part(&mut s);
            s
        };
        let user = (context.kind() == USER_KIND).then_some(0);
        Context { multi: false, contexts: vec![context], user, fully_qualified_key }
    }

    /// True for a multi-kind context.
    pub fn is_multi(&self) -> bool {
        self.multi
    }

    /// The individual contexts (one for a single-kind context).
    pub fn contexts(&self) -> &[SingleContext] {
        &self.contexts
    }

    /// The individual context of a kind, if present.
    #[inline]
    pub fn individual(&self, kind: &str) -> Option<&SingleContext> {
        self.contexts.iter().find(|c| text::eq(c.kind(), kind))
    }

    /// The individual context of a kind named in flag data.
    #[inline]
    pub(crate) fn individual_of(&self, kind: &KindName) -> Option<&SingleContext> {
        match kind {
            KindName::User => self.user.and_then(|i| self.contexts.get(i)),
            KindName::Other(kind) => self.individual_by_name(kind),
        }
    }

    // Out of line so that the `user` case above inlines as a couple of instructions.
    #[inline(never)]
    fn individual_by_name(&self, kind: &str) -> Option<&SingleContext> {
        self.individual(kind)
    }

    /// The kinds present.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.contexts.iter().map(SingleContext::kind)
    }

    /// LaunchDarkly's fully-qualified key: the key for a user, `kind:key` otherwise, and the sorted
    /// `kind:key` parts joined with `:` for a multi-kind context (`%` and `:` in keys escaped).
    pub fn fully_qualified_key(&self) -> &str {
        &self.fully_qualified_key
    }

    /// The key of a single-kind context, or the empty string for a multi-kind one.
    pub fn key(&self) -> &str {
        if self.multi { "" } else { self.contexts.first().map_or("", SingleContext::key) }
    }
}

/// The value at `path` inside `value`'s nested objects.
fn descend<'v>(mut value: &'v Value, path: &[String]) -> Option<&'v Value> {
    for name in path {
        value = value.as_object()?.get(name.as_str())?;
    }
    Some(value)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn validate_kind(kind: &str) -> Result<(), ContextError> {
    let valid = !kind.is_empty()
        && kind != "kind"
        && kind.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid { Ok(()) } else { Err(ContextError::InvalidKind(kind.to_owned())) }
}

fn optional_string(attribute: &str, value: Option<Value>) -> Result<Option<Value>, ContextError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::String(_)) => Ok(Some(v)),
        Some(_) => Err(ContextError::WrongType { attribute: attribute.to_owned(), expected: "a string" }),
    }
}

fn optional_bool(attribute: &str, value: Option<Value>) -> Result<bool, ContextError> {
    match value {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(b),
        Some(_) => Err(ContextError::WrongType { attribute: attribute.to_owned(), expected: "a boolean" }),
    }
}

fn string_list(attribute: &str, value: Option<Value>) -> Result<Vec<String>, ContextError> {
    let wrong = || ContextError::WrongType { attribute: attribute.to_owned(), expected: "an array of strings" };
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(wrong()),
            })
            .collect(),
        Some(_) => Err(wrong()),
    }
}

fn parse_single(kind: String, mut object: Map<String, Value>) -> Result<SingleContext, ContextError> {
    let key = match object.remove("key") {
        Some(Value::String(k)) if !k.is_empty() => k,
        _ => return Err(ContextError::InvalidKey(kind)),
    };
    let name = optional_string("name", object.remove("name"))?;
    let anonymous = optional_bool("anonymous", object.remove("anonymous"))?;
    let private_attributes = match object.remove("_meta") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(mut meta)) => string_list("_meta.privateAttributes", meta.remove("privateAttributes"))?
            .iter()
            .map(|s| AttrRef::parse(s))
            .collect(),
        Some(_) => {
            return Err(ContextError::WrongType { attribute: "_meta".to_owned(), expected: "an object" });
        }
    };
    object.retain(|_, v| !v.is_null());
    Ok(SingleContext {
        kind: Value::String(kind),
        key: Value::String(key),
        name,
        anonymous: Value::Bool(anonymous),
        attributes: Attributes::new(object),
        private_attributes,
    })
}

fn parse_multi(object: Map<String, Value>) -> Result<Context, ContextError> {
    let mut contexts = Vec::with_capacity(object.len());
    for (kind, value) in object {
        validate_kind(&kind)?;
        if kind == "multi" {
            return Err(ContextError::InvalidKind(kind));
        }
        let Value::Object(mut inner) = value else {
            return Err(ContextError::WrongType { attribute: kind, expected: "an object" });
        };
        inner.remove("kind");
        contexts.push(parse_single(kind, inner)?);
    }
    contexts.sort_by(|a, b| a.kind().cmp(b.kind()));
    match contexts.len() {
        0 => Err(ContextError::EmptyMulti),
        1 => Ok(Context::single(contexts.remove(0))),
        _ => {
            let mut fully_qualified_key = String::new();
            for (i, c) in contexts.iter().enumerate() {
                if i > 0 {
                    fully_qualified_key.push(':');
                }
                c.fully_qualified_part(&mut fully_qualified_key);
            }
            let user = contexts.iter().position(|c| c.kind() == USER_KIND);
            Ok(Context { multi: true, contexts, user, fully_qualified_key })
        }
    }
}

/// Built-in string attributes of old-style user objects.
const OLD_USER_STRINGS: [&str; 6] = ["firstName", "lastName", "email", "avatar", "country", "ip"];

fn parse_old_user(mut object: Map<String, Value>) -> Result<SingleContext, ContextError> {
    // Old-style users may have an empty key (LaunchDarkly kept that for compatibility); it must be a string.
    let key = match object.remove("key") {
        Some(Value::String(k)) => k,
        _ => return Err(ContextError::InvalidKey(USER_KIND.to_owned())),
    };
    let name = optional_string("name", object.remove("name"))?;
    let anonymous = optional_bool("anonymous", object.remove("anonymous"))?;
    let mut attributes = Map::new();
    for attr in OLD_USER_STRINGS {
        if let Some(v) = optional_string(attr, object.remove(attr))? {
            attributes.insert(attr.to_owned(), v);
        }
    }
    // `secondary` was retired with contexts: it is accepted and ignored.
    optional_string("secondary", object.remove("secondary"))?;
    match object.remove("custom") {
        None | Some(Value::Null) => {}
        Some(Value::Object(custom)) => {
            for (k, v) in custom {
                let reserved = matches!(k.as_str(), "kind" | "key" | "name" | "anonymous" | "_meta");
                if !reserved && !v.is_null() && !attributes.contains_key(&k) {
                    attributes.insert(k, v);
                }
            }
        }
        Some(_) => {
            return Err(ContextError::WrongType { attribute: "custom".to_owned(), expected: "an object" });
        }
    }
    let private_attributes = string_list("privateAttributeNames", object.remove("privateAttributeNames"))?
        .iter()
        .map(|s| AttrRef::literal(s))
        .collect();
    Ok(SingleContext {
        kind: Value::String(USER_KIND.to_owned()),
        key: Value::String(key),
        name,
        anonymous: Value::Bool(anonymous),
        attributes: Attributes::new(attributes),
        private_attributes,
    })
}

impl<'de> serde::Deserialize<'de> for Context {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Context::from_value(value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(v: Value) -> Result<Context, ContextError> {
        Context::from_value(v)
    }

    #[test]
    fn single_kind_contexts() {
        let c = ctx(json!({"kind":"org","key":"a:b%c","name":"Acme","tier":3,"gone":null})).unwrap();
        assert!(!c.is_multi());
        assert_eq!(c.fully_qualified_key(), "org:a%3Ab%25c");
        let org = c.individual("org").unwrap();
        assert_eq!(org.get(&AttrRef::parse("tier")), Some(&json!(3)));
        assert_eq!(org.get(&AttrRef::parse("gone")), None);
        assert_eq!(org.get(&AttrRef::parse("kind")), Some(&json!("org")));
        assert_eq!(org.get(&AttrRef::parse("anonymous")), Some(&json!(false)));
        assert!(c.individual("user").is_none());
    }

    #[test]
    fn nested_attribute_paths() {
        let c = ctx(json!({"kind":"user","key":"k","address":{"city":"Oslo","a/b":1}})).unwrap();
        let u = c.individual("user").unwrap();
        assert_eq!(u.get(&AttrRef::parse("/address/city")), Some(&json!("Oslo")));
        assert_eq!(u.get(&AttrRef::parse("/address/a~1b")), Some(&json!(1)));
        assert_eq!(u.get(&AttrRef::parse("/address/zip")), None);
        assert_eq!(u.get(&AttrRef::parse("/key/x")), None);
        assert_eq!(u.get(&AttrRef::parse("//")), None);
    }

    #[test]
    fn multi_kind_contexts_sort_by_kind() {
        let c = ctx(json!({"kind":"multi","user":{"key":"u"},"org":{"key":"o"}})).unwrap();
        assert!(c.is_multi());
        assert_eq!(c.kinds().collect::<Vec<_>>(), ["org", "user"]);
        assert_eq!(c.fully_qualified_key(), "org:o:user:u");
        assert_eq!(c.key(), "");
        let one = ctx(json!({"kind":"multi","org":{"key":"o"}})).unwrap();
        assert!(!one.is_multi());
        assert_eq!(one.fully_qualified_key(), "org:o");
    }

    #[test]
    fn custom_attributes_are_found_by_name_at_any_count() {
        for count in [0, 1, 2, 3, 7, 8, 9, 100] {
            let mut object = Map::new();
            for i in 0..count {
                object.insert(format!("attr{i}"), json!(i));
            }
            let attributes = Attributes::new(object);
            assert_eq!(attributes.len(), count);
            assert_eq!(attributes.is_empty(), count == 0);
            for i in 0..count {
                assert_eq!(attributes.get(&format!("attr{i}")), Some(&json!(i)));
                assert_eq!(attributes.get(&format!("attr{i}x")), None);
            }
            assert_eq!(attributes.get("missing"), None);
            assert_eq!(attributes.get(""), None);
            let names: Vec<&str> = attributes.iter().map(|(name, _)| name).collect();
            let mut sorted = names.clone();
            sorted.sort_unstable();
            assert_eq!(names, sorted, "attributes iterate in name order");
        }
    }

    #[test]
    fn old_style_users() {
        let c = ctx(json!({"key":"u","email":"a@b","custom":{"email":"x","groups":["a"],"key":"no"},
            "privateAttributeNames":["email"]}))
        .unwrap();
        let u = c.individual("user").unwrap();
        assert_eq!(u.get(&AttrRef::parse("email")), Some(&json!("a@b")));
        assert_eq!(u.get(&AttrRef::parse("groups")), Some(&json!(["a"])));
        assert_eq!(u.key(), "u");
        assert_eq!(u.private_attributes(), [AttrRef::literal("email")]);
        assert!(ctx(json!({"key":""})).is_ok());
    }

    #[test]
    fn invalid_contexts_are_errors() {
        assert!(matches!(ctx(json!([])), Err(ContextError::NotAnObject(_))));
        assert!(matches!(ctx(json!({"kind":"user"})), Err(ContextError::InvalidKey(_))));
        assert!(matches!(ctx(json!({"kind":"user","key":""})), Err(ContextError::InvalidKey(_))));
        assert!(matches!(ctx(json!({"kind":"kind","key":"k"})), Err(ContextError::InvalidKind(_))));
        assert!(matches!(ctx(json!({"kind":"a b","key":"k"})), Err(ContextError::InvalidKind(_))));
        assert!(matches!(ctx(json!({"kind":"","key":"k"})), Err(ContextError::InvalidKind(_))));
        assert!(matches!(ctx(json!({"kind":null,"key":"k"})), Err(ContextError::InvalidKind(_))));
        assert!(matches!(ctx(json!({"kind":"multi"})), Err(ContextError::EmptyMulti)));
        assert!(matches!(ctx(json!({"kind":"user","key":"k","name":3})), Err(ContextError::WrongType { .. })));
        assert!(matches!(ctx(json!({"key":"k","ip":false})), Err(ContextError::WrongType { .. })));
        assert!(matches!(ctx(json!({})), Err(ContextError::InvalidKey(_))));
        assert!(Context::from_json(b"{").is_err());
    }
}
