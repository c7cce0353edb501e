//! OpenFeature evaluation contexts → Pennant (LaunchDarkly) contexts, as LaunchDarkly's OpenFeature providers
//! translate them.

use std::any::Any;
use std::collections::HashMap;

use open_feature::{EvaluationContext, EvaluationContextFieldValue, EvaluationError, EvaluationErrorCode, StructValue};
use pennant_sdk::{Context, ContextError};
use serde_json::{Map, Number, Value};

/// Why an OpenFeature evaluation context could not be turned into a Pennant context.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContextConversionError {
    /// Neither a targeting key nor a string `key` attribute (OpenFeature's `TARGETING_KEY_MISSING`).
    #[error("the {kind:?} context has no targeting key: set `targeting_key` (or a `targetingKey` or `key` field)")]
    TargetingKeyMissing {
        /// The context kind that lacks a key.
        kind: String,
    },
    /// A field with a type it cannot have (OpenFeature's `INVALID_CONTEXT`).
    #[error("context field {field:?} must be {expected}")]
    InvalidField {
        /// The field.
        field: String,
        /// What it must be.
        expected: &'static str,
    },
    /// A structure field holding a Rust type this provider cannot read (OpenFeature's `INVALID_CONTEXT`).
    #[error(
        "context field {field:?} holds a structure of a type the provider cannot read (use open_feature::StructValue, \
         open_feature::Value, open_feature::EvaluationContext, HashMap<String, EvaluationContextFieldValue>, \
         serde_json::Value or serde_json::Map)"
    )]
    UnsupportedStructure {
        /// The field.
        field: String,
    },
    /// The context was rejected as a LaunchDarkly context, for example an invalid kind (OpenFeature's
    /// `INVALID_CONTEXT`).
    #[error("invalid context: {0}")]
    Invalid(#[from] ContextError),
}

impl ContextConversionError {
    /// The OpenFeature error code: `TARGETING_KEY_MISSING` or `INVALID_CONTEXT`.
    pub fn code(&self) -> EvaluationErrorCode {
        match self {
            ContextConversionError::TargetingKeyMissing { .. } => EvaluationErrorCode::TargetingKeyMissing,
            _ => EvaluationErrorCode::InvalidContext,
        }
    }
}

impl From<ContextConversionError> for EvaluationError {
    fn from(error: ContextConversionError) -> EvaluationError {
        EvaluationError { code: error.code(), message: Some(error.to_string()) }
    }
}

/// The field that selects the context kind.
const KIND: &str = "kind";
/// The kind of a multi-kind context.
const MULTI: &str = "multi";
/// The default kind.
const USER: &str = "user";

/// Translates an OpenFeature evaluation context into a Pennant context, as LaunchDarkly's OpenFeature providers do:
///
/// - The targeting key is the context key; without one, a string `key` field is (when both are set, the targeting
///   key wins). No key at all is [`ContextConversionError::TargetingKeyMissing`].
/// - A string `kind` field selects the kind (default `user`; a `kind` that is not a string is ignored).
/// - `name` (a string) and `anonymous` (a boolean) are the built-in attributes; of another type they are dropped,
///   with a warning, as LaunchDarkly's providers drop them. `privateAttributes` (a list of strings: attribute
///   names or `/`-paths) marks attributes private. `_meta` is reserved and dropped. Every other field is an
///   attribute: date-times become RFC 3339 strings (UTC, milliseconds), structures become JSON objects.
/// - `kind: "multi"` makes a multi-kind context: every other field that is a structure is the context of the kind
///   it is named after, with its own `targetingKey` (or `key`), `name`, `anonymous`, `privateAttributes` and
///   attributes. The top-level targeting key and fields that are not structures are ignored, with a warning.
///
/// The Rust SDK's context fields hold structures as `Arc<dyn Any>`: this reads [`StructValue`],
/// [`open_feature::Value`], a nested [`EvaluationContext`] (its targeting key is the nested context's key),
/// `HashMap<String, EvaluationContextFieldValue>`, [`serde_json::Value`], `serde_json::Map<String, Value>`,
/// `Vec<String>` and `Vec<open_feature::Value>`; any other type is [`ContextConversionError::UnsupportedStructure`].
pub fn to_pennant_context(context: &EvaluationContext) -> Result<Context, ContextConversionError> {
    let kind = match context.custom_fields.get(KIND) {
        None => USER,
        Some(EvaluationContextFieldValue::String(kind)) => kind.as_str(),
        Some(_) => {
            tracing::warn!("the evaluation context's `kind` is not a string; using \"user\"");
            USER
        }
    };
    // Sorted, so that the first error reported does not depend on hash order.
    let mut fields: Vec<(&String, &EvaluationContextFieldValue)> =
        context.custom_fields.iter().filter(|(name, _)| name.as_str() != KIND).collect();
    fields.sort_by(|a, b| a.0.cmp(b.0));

    let json = if kind == MULTI {
        if context.targeting_key.is_some() {
            tracing::warn!("the targeting key of a multi-kind evaluation context is ignored: each kind has its own");
        }
        let mut multi = Map::new();
        multi.insert(KIND.to_owned(), Value::String(MULTI.to_owned()));
        for (name, value) in fields {
            match field_to_json(name, value)? {
                Value::Object(attributes) => {
                    let single = single_context(name, None, attributes)?;
                    multi.insert(name.clone(), Value::Object(single));
                }
                _ => {
                    tracing::warn!(field = %name, "a multi-kind evaluation context's field is not a structure: ignored")
                }
            }
        }
        multi
    } else {
        let mut attributes = Map::new();
        for (name, value) in fields {
            attributes.insert(name.clone(), field_to_json(name, value)?);
        }
        let mut single = single_context(kind, context.targeting_key.as_deref(), attributes)?;
        single.insert(KIND.to_owned(), Value::String(kind.to_owned()));
        single
    };
    Ok(Context::from_value(Value::Object(json))?)
}

/// One kind's context as LaunchDarkly JSON (without `kind`): the key, the built-ins, `_meta`, the attributes.
fn single_context(
    kind: &str,
    targeting_key: Option<&str>,
    mut attributes: Map<String, Value>,
) -> Result<Map<String, Value>, ContextConversionError> {
    let non_empty = |v: Option<Value>| match v {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    };
    let targeting_key_field = non_empty(attributes.remove("targetingKey"));
    let key_field = non_empty(attributes.remove("key"));
    let targeting_key = targeting_key.filter(|k| !k.is_empty()).map(str::to_owned).or(targeting_key_field);
    if targeting_key.is_some() && key_field.is_some() {
        tracing::warn!(kind, "the evaluation context has both a targeting key and a `key` field: `key` is discarded");
    }
    let key = targeting_key
        .or(key_field)
        .ok_or_else(|| ContextConversionError::TargetingKeyMissing { kind: kind.to_owned() })?;

    let mut out = Map::new();
    out.insert("key".to_owned(), Value::String(key));
    for (name, value) in attributes {
        match name.as_str() {
            // Nested contexts may repeat their kind; the field name is the kind.
            KIND => {}
            "name" => match value {
                Value::String(_) => {
                    out.insert(name, value);
                }
                Value::Null => {}
                _ => tracing::warn!(kind, "the context attribute `name` must be a string: dropped"),
            },
            "anonymous" => match value {
                Value::Bool(_) => {
                    out.insert(name, value);
                }
                Value::Null => {}
                _ => tracing::warn!(kind, "the context attribute `anonymous` must be a boolean: dropped"),
            },
            "privateAttributes" => {
                let all_strings = matches!(&value, Value::Array(items) if items.iter().all(Value::is_string));
                if !all_strings {
                    return Err(ContextConversionError::InvalidField { field: name, expected: "a list of strings" });
                }
                let mut meta = Map::new();
                meta.insert(name, value);
                out.insert("_meta".to_owned(), Value::Object(meta));
            }
            "_meta" => tracing::warn!(kind, "`_meta` is reserved and cannot be a context attribute: dropped"),
            _ => {
                out.insert(name, value);
            }
        }
    }
    Ok(out)
}

fn field_to_json(field: &str, value: &EvaluationContextFieldValue) -> Result<Value, ContextConversionError> {
    Ok(match value {
        EvaluationContextFieldValue::Bool(b) => Value::Bool(*b),
        EvaluationContextFieldValue::Int(i) => Value::from(*i),
        EvaluationContextFieldValue::Float(f) => float(*f),
        EvaluationContextFieldValue::String(s) => Value::String(s.clone()),
        EvaluationContextFieldValue::DateTime(t) => {
            // Seconds and nanoseconds of any `OffsetDateTime` fit chrono's range but for extreme years.
            match chrono::DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond()) {
                Some(t) => Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                None => {
                    return Err(ContextConversionError::InvalidField {
                        field: field.to_owned(),
                        expected: "a date-time chrono can represent",
                    });
                }
            }
        }
        EvaluationContextFieldValue::Struct(any) => any_to_json(field, &**any)?,
    })
}

/// A JSON number, or null (an absent attribute) for NaN and infinities, which JSON cannot hold.
fn float(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

fn any_to_json(field: &str, any: &(dyn Any + Send + Sync)) -> Result<Value, ContextConversionError> {
    if let Some(s) = any.downcast_ref::<StructValue>() {
        Ok(struct_to_json(s))
    } else if let Some(v) = any.downcast_ref::<open_feature::Value>() {
        Ok(value_to_json(v))
    } else if let Some(context) = any.downcast_ref::<EvaluationContext>() {
        let mut map = fields_to_json(&context.custom_fields)?;
        if let Some(key) = &context.targeting_key {
            map.insert("targetingKey".to_owned(), Value::String(key.clone()));
        }
        Ok(Value::Object(map))
    } else if let Some(fields) = any.downcast_ref::<HashMap<String, EvaluationContextFieldValue>>() {
        Ok(Value::Object(fields_to_json(fields)?))
    } else if let Some(v) = any.downcast_ref::<Value>() {
        Ok(v.clone())
    } else if let Some(map) = any.downcast_ref::<Map<String, Value>>() {
        Ok(Value::Object(map.clone()))
    } else if let Some(list) = any.downcast_ref::<Vec<String>>() {
        Ok(Value::Array(list.iter().cloned().map(Value::String).collect()))
    } else if let Some(list) = any.downcast_ref::<Vec<open_feature::Value>>() {
        Ok(Value::Array(list.iter().map(value_to_json).collect()))
    } else {
        Err(ContextConversionError::UnsupportedStructure { field: field.to_owned() })
    }
}

fn fields_to_json(
    fields: &HashMap<String, EvaluationContextFieldValue>,
) -> Result<Map<String, Value>, ContextConversionError> {
    let mut sorted: Vec<_> = fields.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    sorted.into_iter().map(|(name, value)| Ok((name.clone(), field_to_json(name, value)?))).collect()
}

fn struct_to_json(s: &StructValue) -> Value {
    Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), value_to_json(v))).collect())
}

/// An OpenFeature value as JSON.
pub(crate) fn value_to_json(value: &open_feature::Value) -> Value {
    match value {
        open_feature::Value::Bool(b) => Value::Bool(*b),
        open_feature::Value::Int(i) => Value::from(*i),
        open_feature::Value::Float(f) => float(*f),
        open_feature::Value::String(s) => Value::String(s.clone()),
        open_feature::Value::Array(items) => Value::Array(items.iter().map(value_to_json).collect()),
        open_feature::Value::Struct(s) => struct_to_json(s),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use serde_json::json;

    fn convert(context: &EvaluationContext) -> Result<Context, ContextConversionError> {
        to_pennant_context(context)
    }

    /// The Pennant context the JSON describes.
    fn expected(json: Value) -> Context {
        Context::from_value(json).unwrap()
    }

    #[test]
    fn the_targeting_key_is_the_key_and_fields_are_attributes() {
        let when = time::OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        let context = EvaluationContext::default()
            .with_targeting_key("u1")
            .with_custom_field("email", "a@example.com")
            .with_custom_field("age", 42)
            .with_custom_field("score", 2.5)
            .with_custom_field("beta", true)
            .with_custom_field("signedUp", when)
            .with_custom_field("name", "Ann")
            .with_custom_field("anonymous", true)
            .with_custom_field(
                "address",
                EvaluationContextFieldValue::new_struct(StructValue::default().with_field("city", "Paris")),
            )
            .with_custom_field(
                "groups",
                EvaluationContextFieldValue::new_struct(open_feature::Value::Array(vec!["a".into(), 1.into()])),
            );
        assert_eq!(
            convert(&context).unwrap(),
            expected(json!({
                "kind": "user", "key": "u1", "name": "Ann", "anonymous": true,
                "email": "a@example.com", "age": 42, "score": 2.5, "beta": true,
                "signedUp": "2023-11-14T22:13:20.123Z", "address": {"city": "Paris"}, "groups": ["a", 1]
            }))
        );
    }

    #[test]
    fn kind_selects_the_kind_and_key_stands_in_for_the_targeting_key() {
        let org = EvaluationContext::default().with_custom_field("kind", "org").with_custom_field("key", "acme");
        assert_eq!(convert(&org).unwrap(), expected(json!({"kind": "org", "key": "acme"})));
        // Both: the targeting key wins and `key` is not an attribute.
        let both = org.clone().with_targeting_key("other");
        let converted = convert(&both).unwrap();
        assert_eq!(converted, expected(json!({"kind": "org", "key": "other"})));
        // A `kind` that is not a string is ignored: a user.
        let odd = EvaluationContext::default().with_targeting_key("u").with_custom_field("kind", 3);
        assert_eq!(convert(&odd).unwrap(), expected(json!({"kind": "user", "key": "u"})));
    }

    #[test]
    fn built_ins_of_the_wrong_type_are_dropped_and_private_attributes_are_meta() {
        let context = EvaluationContext::default()
            .with_targeting_key("u")
            .with_custom_field("name", 5)
            .with_custom_field("anonymous", "yes")
            .with_custom_field("email", "e@example.com")
            .with_custom_field(
                "privateAttributes",
                EvaluationContextFieldValue::new_struct(vec!["email".to_owned(), "/address/city".to_owned()]),
            );
        let converted = convert(&context).unwrap();
        assert_eq!(
            converted,
            expected(json!({"kind": "user", "key": "u", "email": "e@example.com",
                "_meta": {"privateAttributes": ["email", "/address/city"]}}))
        );
        let single = &converted.contexts()[0];
        assert_eq!((single.name(), single.anonymous()), (None, false));
        assert_eq!(single.private_attributes().len(), 2);

        let bad = EvaluationContext::default().with_targeting_key("u").with_custom_field("privateAttributes", "email");
        let error = convert(&bad).unwrap_err();
        assert_eq!(
            error,
            ContextConversionError::InvalidField { field: "privateAttributes".into(), expected: "a list of strings" }
        );
        assert_eq!(error.code(), EvaluationErrorCode::InvalidContext);
    }

    #[test]
    fn multi_kind_contexts_take_each_kind_from_a_structure() {
        let user = EvaluationContext::default().with_targeting_key("u1").with_custom_field("email", "a@example.com");
        let org = StructValue::default()
            .with_field("targetingKey", "acme")
            .with_field("plan", "enterprise")
            .with_field("privateAttributes", vec!["plan"]);
        let device: HashMap<String, EvaluationContextFieldValue> =
            [("key".to_owned(), "d1".into()), ("anonymous".to_owned(), true.into())].into();
        let context = EvaluationContext::default()
            .with_targeting_key("ignored")
            .with_custom_field("kind", "multi")
            .with_custom_field("user", EvaluationContextFieldValue::new_struct(user))
            .with_custom_field("org", EvaluationContextFieldValue::new_struct(org))
            .with_custom_field("device", EvaluationContextFieldValue::Struct(Arc::new(device)))
            .with_custom_field("stray", "not a structure");
        let converted = convert(&context).unwrap();
        assert!(converted.is_multi());
        assert_eq!(
            converted,
            expected(json!({
                "kind": "multi",
                "user": {"key": "u1", "email": "a@example.com"},
                "org": {"key": "acme", "plan": "enterprise", "_meta": {"privateAttributes": ["plan"]}},
                "device": {"key": "d1", "anonymous": true}
            }))
        );
        assert_eq!(converted.fully_qualified_key(), "device:d1:org:acme:user:u1");
    }

    #[test]
    fn a_missing_key_or_an_invalid_context_is_an_error_with_its_open_feature_code() {
        let none = EvaluationContext::default().with_custom_field("email", "a@example.com");
        let error = convert(&none).unwrap_err();
        assert_eq!(error, ContextConversionError::TargetingKeyMissing { kind: "user".into() });
        assert_eq!(EvaluationError::from(error).code, EvaluationErrorCode::TargetingKeyMissing);
        let empty = EvaluationContext::default().with_targeting_key("");
        assert!(matches!(convert(&empty), Err(ContextConversionError::TargetingKeyMissing { .. })));

        let nested = EvaluationContext::default().with_custom_field("kind", "multi").with_custom_field(
            "org",
            EvaluationContextFieldValue::new_struct(StructValue::default().with_field("plan", "pro")),
        );
        assert_eq!(convert(&nested).unwrap_err(), ContextConversionError::TargetingKeyMissing { kind: "org".into() });

        let bad_kind = EvaluationContext::default().with_targeting_key("u").with_custom_field("kind", "no spaces");
        let error = convert(&bad_kind).unwrap_err();
        assert!(matches!(error, ContextConversionError::Invalid(ContextError::InvalidKind(_))), "{error:?}");
        assert_eq!(error.code(), EvaluationErrorCode::InvalidContext);

        let empty_multi = EvaluationContext::default().with_targeting_key("u").with_custom_field("kind", "multi");
        assert_eq!(convert(&empty_multi).unwrap_err(), ContextConversionError::Invalid(ContextError::EmptyMulti));

        #[derive(Debug)]
        struct Opaque;
        let opaque = EvaluationContext::default()
            .with_targeting_key("u")
            .with_custom_field("thing", EvaluationContextFieldValue::new_struct(Opaque));
        let error = convert(&opaque).unwrap_err();
        assert_eq!(error, ContextConversionError::UnsupportedStructure { field: "thing".into() });
        assert_eq!(EvaluationError::from(error).code, EvaluationErrorCode::InvalidContext);
    }

    #[test]
    fn json_structures_nulls_and_non_finite_numbers() {
        let context = EvaluationContext::default()
            .with_targeting_key("u")
            .with_custom_field("json", EvaluationContextFieldValue::new_struct(json!({"a": [1, null], "b": null})))
            .with_custom_field("gone", f64::NAN)
            .with_custom_field("meta", "x")
            .with_custom_field(
                "_meta",
                EvaluationContextFieldValue::new_struct(json!({"privateAttributes": ["meta"]})),
            );
        let converted = convert(&context).unwrap();
        assert_eq!(
            converted,
            expected(json!({"kind": "user", "key": "u", "json": {"a": [1, null], "b": null}, "meta": "x"}))
        );
        assert!(converted.contexts()[0].private_attributes().is_empty(), "`_meta` from the context is dropped");
    }
}
