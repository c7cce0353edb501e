//! PATCH bodies: RFC 6902 JSON Patch (bare, or wrapped with a comment) and semantic-patch instructions.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{ApiError, ApiResult, ErrorCode};

/// A parsed PATCH body.
#[derive(Debug, Clone, Default)]
pub struct PatchRequest {
    /// JSON Patch operations.
    pub ops: Option<json_patch::Patch>,
    /// Semantic-patch instructions (`{"kind": "turnFlagOn", ...}`).
    pub instructions: Option<Vec<Value>>,
    /// Changelog comment.
    pub comment: String,
    /// The version the change is based on (optimistic concurrency).
    pub version: Option<u64>,
    /// Environment for environment-specific instructions.
    pub environment_key: Option<String>,
}

impl PatchRequest {
    /// Accepts `[ops…]`, `{"patch": [ops…], "comment": …, "version": …}` or
    /// `{"instructions": […], "environmentKey": …, "comment": …, "version": …}`.
    pub fn parse(body: Value) -> ApiResult<PatchRequest> {
        let invalid = |m: String| ApiError::new(ErrorCode::InvalidJson, m);
        match body {
            Value::Array(_) => {
                let ops = serde_json::from_value(body).map_err(|e| invalid(format!("invalid JSON Patch: {e}")))?;
                Ok(PatchRequest { ops: Some(ops), ..PatchRequest::default() })
            }
            Value::Object(mut map) => {
                let comment = match map.remove("comment") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s,
                    Some(_) => return Err(invalid("comment must be a string".into())),
                };
                let version = match map.remove("version") {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(v.as_u64().ok_or_else(|| invalid("version must be a whole number".into()))?),
                };
                let environment_key = match map.remove("environmentKey") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(s),
                    Some(_) => return Err(invalid("environmentKey must be a string".into())),
                };
                let ops = map
                    .remove("patch")
                    .map(|p| serde_json::from_value(p).map_err(|e| invalid(format!("invalid JSON Patch: {e}"))))
                    .transpose()?;
                let instructions = match map.remove("instructions") {
                    None => None,
                    Some(Value::Array(items)) => Some(items),
                    Some(_) => return Err(invalid("instructions must be an array".into())),
                };
                if let Some(unknown) = map.keys().next() {
                    return Err(invalid(format!("unknown field {unknown:?} in PATCH body")));
                }
                match (&ops, &instructions) {
                    (None, None) => {
                        Err(invalid("a PATCH body needs \"patch\" (JSON Patch) or \"instructions\"".into()))
                    }
                    (Some(_), Some(_)) => Err(invalid("send either \"patch\" or \"instructions\", not both".into())),
                    _ => Ok(PatchRequest { ops, instructions, comment, version, environment_key }),
                }
            }
            _ => Err(invalid("a PATCH body is a JSON Patch array or an object".into())),
        }
    }

    /// The version to check: the body's, else `If-Match`'s.
    pub fn expected_version(&self, if_match: Option<u64>) -> ApiResult<Option<u64>> {
        match (self.version, if_match) {
            (Some(a), Some(b)) if a != b => Err(ApiError::bad_request("the body's version and If-Match disagree")),
            (a, b) => Ok(a.or(b)),
        }
    }
}

/// Applies JSON Patch operations to a typed document through its JSON form; the result must still be a valid
/// document of the type.
pub fn apply_json_patch<T: Serialize + DeserializeOwned>(doc: &T, ops: &json_patch::Patch) -> ApiResult<T> {
    let mut value = serde_json::to_value(doc).map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    json_patch::patch(&mut value, ops).map_err(|e| ApiError::bad_request(format!("JSON Patch failed: {e}")))?;
    serde_json::from_value(value)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("the patched document is invalid: {e}")))
}

/// Applies JSON Patch to a document extended with an `archived` field, returning both parts.
pub fn apply_json_patch_with_archived<T: Serialize + DeserializeOwned>(
    doc: &T,
    archived: bool,
    ops: &json_patch::Patch,
) -> ApiResult<(T, bool)> {
    let mut value = serde_json::to_value(doc).map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    if let Value::Object(map) = &mut value {
        map.insert("archived".into(), Value::Bool(archived));
    }
    json_patch::patch(&mut value, ops).map_err(|e| ApiError::bad_request(format!("JSON Patch failed: {e}")))?;
    let archived = match &mut value {
        Value::Object(map) => match map.remove("archived") {
            Some(Value::Bool(b)) => b,
            None => false,
            Some(_) => return Err(ApiError::bad_request("archived must be true or false")),
        },
        _ => return Err(ApiError::bad_request("the patched document must be an object")),
    };
    let doc = serde_json::from_value(value)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("the patched document is invalid: {e}")))?;
    Ok((doc, archived))
}
