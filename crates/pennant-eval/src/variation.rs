//! The typed-variation layer an SDK puts in front of the evaluator: flag lookup, the caller's default, and the
//! value-type check (`FLAG_NOT_FOUND`, `USER_NOT_SPECIFIED`, `WRONG_TYPE`).

use std::borrow::Cow;

use serde_json::Value;

use crate::context::{Context, ContextError};
use crate::eval::evaluate;
use crate::reason::{BigSegmentsStatus, ErrorKind, Reason};
use crate::store::Store;

/// The type a variation method asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    /// `bool_variation`.
    Bool,
    /// `int_variation`: any number, truncated toward zero.
    Int,
    /// `float_variation`.
    Double,
    /// `str_variation`.
    String,
    /// `json_variation`: anything.
    Any,
}

impl ValueType {
    /// Reads `bool`, `int`, `double`, `string` or `any`.
    pub fn parse(s: &str) -> Option<ValueType> {
        Some(match s {
            "bool" => ValueType::Bool,
            "int" => ValueType::Int,
            "double" => ValueType::Double,
            "string" => ValueType::String,
            "any" => ValueType::Any,
            _ => return None,
        })
    }

    fn accepts(self, value: &Value) -> bool {
        match self {
            ValueType::Bool => value.is_boolean(),
            ValueType::Int | ValueType::Double => value.is_number(),
            ValueType::String => value.is_string(),
            ValueType::Any => true,
        }
    }
}

/// What a variation method returns: never empty, the default standing in where the flag gives no value.
#[derive(Debug, Clone, PartialEq)]
pub struct VariationDetail<'a> {
    /// The value served to the application.
    pub value: Cow<'a, Value>,
    /// The variation index, if a variation was served.
    pub variation_index: Option<usize>,
    /// Why.
    pub reason: Reason<'a>,
    /// Set when the evaluation met a big segment.
    pub big_segments_status: Option<BigSegmentsStatus>,
}

impl<'a> VariationDetail<'a> {
    fn default_with(default: &'a Value, reason: Reason<'a>) -> VariationDetail<'a> {
        VariationDetail { value: Cow::Borrowed(default), variation_index: None, reason, big_segments_status: None }
    }
}

/// Evaluates flag `flag_key` as an SDK's typed variation method does.
pub fn variation_detail<'a, S: Store + ?Sized>(
    store: &'a S,
    flag_key: &str,
    context: Result<&Context, &ContextError>,
    default: &'a Value,
    value_type: ValueType,
) -> VariationDetail<'a> {
    let Some(flag) = store.flag(flag_key).filter(|f| !f.deleted) else {
        return VariationDetail::default_with(default, Reason::Error { error_kind: ErrorKind::FlagNotFound });
    };
    let Ok(context) = context else {
        return VariationDetail::default_with(default, Reason::Error { error_kind: ErrorKind::UserNotSpecified });
    };
    let detail = evaluate(store, flag, context);
    let Some(value) = detail.value else {
        let mut out = VariationDetail::default_with(default, detail.reason);
        out.big_segments_status = detail.big_segments_status;
        return out;
    };
    if !value_type.accepts(value) {
        return VariationDetail::default_with(default, Reason::Error { error_kind: ErrorKind::WrongType });
    }
    let value = match (value_type, value.as_f64()) {
        (ValueType::Int, Some(f)) if !value.is_i64() && !value.is_u64() => {
            #[allow(clippy::cast_possible_truncation)]
            let truncated = f.trunc() as i64;
            Cow::Owned(Value::from(truncated))
        }
        _ => Cow::Borrowed(value),
    };
    VariationDetail {
        value,
        variation_index: detail.variation_index,
        reason: detail.reason,
        big_segments_status: detail.big_segments_status,
    }
}
