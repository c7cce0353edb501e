//! Contexts as events carry them: LaunchDarkly's context JSON with private attributes removed and listed in
//! `_meta.redactedAttributes` (go-sdk-events `context_formatter.go`, the Rust SDK's `ContextAttributes`).
//!
//! An attribute is private when the configuration makes every attribute private, when a configured attribute
//! reference names it, or when the context's own `_meta.privateAttributes` does. A reference may name a property
//! inside an object attribute (`/address/street`): the object is written without that property. `kind`, `key` and
//! `anonymous` are never redacted. Feature and custom events also redact every attribute of an anonymous context
//! (`WriteContextRedactAnonymous`); index, identify and debug events do not.

use std::borrow::Cow;
use std::cell::RefCell;

use pennant_eval::{AttrRef, Context, SingleContext};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

/// The configuration's redaction settings.
#[derive(Debug, Clone, Default)]
pub(crate) struct Redaction {
    /// Redact every attribute.
    pub(crate) all_attributes_private: bool,
    /// Attribute references redacted in every context (valid ones only).
    pub(crate) private_attributes: Vec<AttrRef>,
}

impl Redaction {
    /// `context` as events write it; `redact_anonymous` for feature and custom events.
    pub(crate) fn context<'a>(&'a self, context: &'a Context, redact_anonymous: bool) -> RedactedContext<'a> {
        RedactedContext { context, redaction: self, redact_anonymous }
    }
}

/// Serialises a context with private attributes redacted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RedactedContext<'a> {
    context: &'a Context,
    redaction: &'a Redaction,
    redact_anonymous: bool,
}

impl Serialize for RedactedContext<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !self.context.is_multi()
            && let Some(c) = self.context.contexts().first()
        {
            return self.single(c, true).serialize(s);
        }
        let mut map = s.serialize_map(Some(self.context.contexts().len() + 1))?;
        map.serialize_entry("kind", "multi")?;
        for c in self.context.contexts() {
            map.serialize_entry(c.kind(), &self.single(c, false))?;
        }
        map.end()
    }
}

impl<'a> RedactedContext<'a> {
    fn single(&self, context: &'a SingleContext, include_kind: bool) -> Single<'a> {
        Single { context, redaction: self.redaction, redact_anonymous: self.redact_anonymous, include_kind }
    }
}

/// One individual context.
struct Single<'a> {
    context: &'a SingleContext,
    redaction: &'a Redaction,
    redact_anonymous: bool,
    include_kind: bool,
}

/// How one attribute (or property) is to be written.
enum Verdict {
    /// Whole.
    Keep,
    /// Not at all; this reference is listed.
    Redact(String),
    /// An object some of whose properties are private.
    Filter,
}

impl<'a> Single<'a> {
    /// Every reference that makes something private in this context: the configuration's, then the context's own.
    fn references(&self) -> impl Iterator<Item = (&'a AttrRef, &'a [String])> {
        self.redaction
            .private_attributes
            .iter()
            .chain(self.context.private_attributes())
            .filter_map(|r| r.components().ok().map(|c| (r, c)))
    }

    fn verdict(&self, path: &[&str], value: &Value) -> Verdict {
        let mut nested = false;
        for (reference, components) in self.references() {
            if components.len() < path.len() || !components.iter().zip(path).all(|(c, p)| c == p) {
                continue;
            }
            if components.len() == path.len() {
                return Verdict::Redact(reference_text(reference).into_owned());
            }
            nested |= value.is_object();
        }
        if nested { Verdict::Filter } else { Verdict::Keep }
    }
}

impl Serialize for Single<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let c = self.context;
        let redact_all = self.redaction.all_attributes_private || (self.redact_anonymous && c.anonymous());
        let redacted: RefCell<Vec<String>> = RefCell::new(Vec::new());
        let mut map = s.serialize_map(None)?;
        if self.include_kind {
            map.serialize_entry("kind", c.kind())?;
        }
        map.serialize_entry("key", c.key())?;
        let name = c.name().map(|n| Value::String(n.to_owned()));
        let attributes = name.as_ref().map(|n| ("name", n)).into_iter().chain(c.attributes().iter());
        for (attribute, value) in attributes {
            if redact_all {
                redacted.borrow_mut().push(literal_reference(attribute).into_owned());
                continue;
            }
            match self.verdict(&[attribute], value) {
                Verdict::Keep => map.serialize_entry(attribute, value)?,
                Verdict::Redact(reference) => redacted.borrow_mut().push(reference),
                Verdict::Filter => map.serialize_entry(
                    attribute,
                    &Filtered { single: self, path: vec![attribute], value, redacted: &redacted },
                )?,
            }
        }
        if c.anonymous() {
            map.serialize_entry("anonymous", &true)?;
        }
        let redacted = redacted.into_inner();
        if !redacted.is_empty() {
            map.serialize_entry("_meta", &Meta { redacted_attributes: &redacted })?;
        }
        map.end()
    }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Meta<'a> {
    redacted_attributes: &'a [String],
}

/// An object attribute written property by property, leaving out the private ones.
struct Filtered<'s> {
    single: &'s Single<'s>,
    path: Vec<&'s str>,
    value: &'s Value,
    redacted: &'s RefCell<Vec<String>>,
}

impl Serialize for Filtered<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Value::Object(object) = self.value else {
            return self.value.serialize(s);
        };
        let mut map = s.serialize_map(None)?;
        for (name, value) in object {
            let mut path = self.path.clone();
            path.push(name);
            match self.single.verdict(&path, value) {
                Verdict::Keep => map.serialize_entry(name, value)?,
                Verdict::Redact(reference) => self.redacted.borrow_mut().push(reference),
                Verdict::Filter => {
                    map.serialize_entry(name, &Filtered { single: self.single, path, value, redacted: self.redacted })?
                }
            }
        }
        map.end()
    }
}

/// How a reference is listed in `redactedAttributes`: as written, except that a literal name (from an old-style
/// user's `privateAttributeNames`) starting with `/` is escaped into reference syntax.
fn reference_text(reference: &AttrRef) -> Cow<'_, str> {
    match reference.components() {
        Ok([only]) if only == reference.as_str() => literal_reference(only),
        _ => Cow::Borrowed(reference.as_str()),
    }
}

/// The reference naming the top-level attribute `name`.
fn literal_reference(name: &str) -> Cow<'_, str> {
    if name.starts_with('/') {
        Cow::Owned(format!("/{}", name.replace('~', "~0").replace('/', "~1")))
    } else {
        Cow::Borrowed(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn redact(redaction: &Redaction, context: Value, anonymous: bool) -> Value {
        let context = Context::from_value(context).unwrap();
        serde_json::to_value(redaction.context(&context, anonymous)).unwrap()
    }

    fn refs(r: &[&str]) -> Redaction {
        Redaction { all_attributes_private: false, private_attributes: r.iter().map(|s| AttrRef::parse(s)).collect() }
    }

    #[test]
    fn without_private_attributes_the_context_is_written_whole() {
        let context = json!({"kind": "org", "key": "o", "name": "Acme", "tier": 3, "address": {"city": "Oslo"},
            "anonymous": false});
        let want = json!({"kind": "org", "key": "o", "name": "Acme", "tier": 3, "address": {"city": "Oslo"}});
        assert_eq!(redact(&Redaction::default(), context, true), want, "anonymous false is left out");
    }

    #[test]
    fn configured_references_redact_attributes_and_nested_properties() {
        let redaction = refs(&["email", "/address/street", "name", "kind", "key", "missing", "/tier/x"]);
        let context = json!({"kind": "user", "key": "u", "name": "Ann", "email": "a@x", "tier": 3,
            "address": {"street": "Main St", "city": "Oslo", "geo": {"lat": 1}}});
        let got = redact(&redaction, context, false);
        assert_eq!(
            got,
            json!({"kind": "user", "key": "u", "tier": 3, "address": {"city": "Oslo", "geo": {"lat": 1}},
                "_meta": {"redactedAttributes": ["name", "/address/street", "email"]}})
        );
    }

    #[test]
    fn the_contexts_own_private_attributes_are_redacted_too() {
        let context = json!({"kind": "user", "key": "u", "email": "a@x", "phone": "1", "a": {"b": {"c": 1, "d": 2}},
            "_meta": {"privateAttributes": ["phone", "/a/b/c"]}});
        let got = redact(&refs(&["email"]), context, false);
        assert_eq!(
            got,
            json!({"kind": "user", "key": "u", "a": {"b": {"d": 2}},
                "_meta": {"redactedAttributes": ["/a/b/c", "email", "phone"]}})
        );
        // Old-style users: privateAttributeNames are literal names; one starting with '/' is listed escaped.
        let old = json!({"key": "u", "email": "a@x", "custom": {"/odd": 1, "ok": 2}, "privateAttributeNames":
            ["email", "/odd"]});
        assert_eq!(
            redact(&Redaction::default(), old, false),
            json!({"kind": "user", "key": "u", "ok": 2, "_meta": {"redactedAttributes": ["/~1odd", "email"]}})
        );
    }

    #[test]
    fn all_attributes_private_keeps_only_kind_key_and_anonymous() {
        let redaction = Redaction { all_attributes_private: true, private_attributes: Vec::new() };
        let context = json!({"kind": "user", "key": "u", "name": "Ann", "anonymous": true, "/slash": 1, "b": 2});
        assert_eq!(
            redact(&redaction, context, false),
            json!({"kind": "user", "key": "u", "anonymous": true,
                "_meta": {"redactedAttributes": ["name", "/~1slash", "b"]}})
        );
    }

    #[test]
    fn anonymous_contexts_are_fully_redacted_only_where_asked() {
        let context = json!({"kind": "multi", "user": {"key": "u", "anonymous": true, "name": "Ann", "plan": "x"},
            "org": {"key": "o", "name": "Acme"}});
        assert_eq!(
            redact(&Redaction::default(), context.clone(), true),
            json!({"kind": "multi", "user": {"key": "u", "anonymous": true,
                "_meta": {"redactedAttributes": ["name", "plan"]}}, "org": {"key": "o", "name": "Acme"}}),
            "feature events: the anonymous individual only"
        );
        assert_eq!(
            redact(&Redaction::default(), context, false),
            json!({"kind": "multi", "user": {"key": "u", "anonymous": true, "name": "Ann", "plan": "x"},
                "org": {"key": "o", "name": "Acme"}}),
            "index, identify and debug events"
        );
    }

    #[test]
    fn redacted_contexts_read_back_as_contexts() {
        let redaction = refs(&["email"]);
        let context = json!({"kind": "multi", "user": {"key": "u", "email": "e", "_meta": {"privateAttributes":
            ["x"]}, "x": 1}, "org": {"key": "o", "email": "f"}});
        let got = redact(&redaction, context, false);
        let back = Context::from_value(got).unwrap();
        assert_eq!(back.fully_qualified_key(), "org:o:user:u");
        assert!(back.individual("user").unwrap().attributes().is_empty());
    }
}
