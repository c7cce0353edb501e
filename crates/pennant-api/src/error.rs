//! The API's one error type, and the single table from stable error codes to HTTP statuses.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pennant_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// Stable error codes. Clients match on these, never on messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The body is not valid JSON, or not of the expected shape.
    InvalidJson,
    /// A field, parameter or patch is not acceptable.
    InvalidRequest,
    /// The change would store invalid data (for flags: data SDKs would report as malformed).
    ValidationFailed,
    /// No credentials, or unknown credentials.
    Unauthorized,
    /// An SDK key or mobile key was used on the management API.
    SdkKeyNotAllowed,
    /// The credentials are valid but their role or project scope does not allow this.
    Forbidden,
    /// No such resource.
    NotFound,
    /// The resource exists already.
    AlreadyExists,
    /// The resource changed since the version the request was based on.
    Conflict,
    /// The body is larger than allowed.
    PayloadTooLarge,
    /// Content-Type is not JSON where JSON is required.
    UnsupportedMediaType,
    /// Too many requests for this token; retry after the `Retry-After` header's seconds.
    RateLimited,
    /// Something failed on the server.
    Internal,
}

impl ErrorCode {
    /// The code and the HTTP status that goes with it: the one place this mapping lives.
    pub fn describe(self) -> (&'static str, StatusCode) {
        match self {
            ErrorCode::InvalidJson => ("invalid_json", StatusCode::BAD_REQUEST),
            ErrorCode::InvalidRequest => ("invalid_request", StatusCode::BAD_REQUEST),
            ErrorCode::ValidationFailed => ("validation_failed", StatusCode::UNPROCESSABLE_ENTITY),
            ErrorCode::Unauthorized => ("unauthorized", StatusCode::UNAUTHORIZED),
            ErrorCode::SdkKeyNotAllowed => ("sdk_key_not_allowed", StatusCode::UNAUTHORIZED),
            ErrorCode::Forbidden => ("forbidden", StatusCode::FORBIDDEN),
            ErrorCode::NotFound => ("not_found", StatusCode::NOT_FOUND),
            ErrorCode::AlreadyExists => ("already_exists", StatusCode::CONFLICT),
            ErrorCode::Conflict => ("version_conflict", StatusCode::CONFLICT),
            ErrorCode::PayloadTooLarge => ("payload_too_large", StatusCode::PAYLOAD_TOO_LARGE),
            ErrorCode::UnsupportedMediaType => ("unsupported_media_type", StatusCode::UNSUPPORTED_MEDIA_TYPE),
            ErrorCode::RateLimited => ("rate_limited", StatusCode::TOO_MANY_REQUESTS),
            ErrorCode::Internal => ("internal_error", StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::InvalidJson,
        ErrorCode::InvalidRequest,
        ErrorCode::ValidationFailed,
        ErrorCode::Unauthorized,
        ErrorCode::SdkKeyNotAllowed,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::AlreadyExists,
        ErrorCode::Conflict,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
    ];
}

/// Every error response body: `{"code": "...", "message": "..."}`, plus `details` where there is a list.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable code.
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// Individual problems (validation).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

/// An API error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// The code.
    pub code: ErrorCode,
    /// The message.
    pub message: String,
    /// Individual problems.
    pub details: Vec<String>,
    /// Seconds, for `Retry-After`.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError { code, message: message.into(), details: Vec::new(), retry_after: None }
    }

    /// `invalid_request`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::InvalidRequest, message)
    }

    /// `not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::NotFound, message)
    }

    /// `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Forbidden, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound { .. } => ApiError::new(ErrorCode::NotFound, e.to_string()),
            StoreError::AlreadyExists { .. } => ApiError::new(ErrorCode::AlreadyExists, e.to_string()),
            StoreError::Conflict { .. } => ApiError::new(ErrorCode::Conflict, e.to_string()),
            StoreError::Invalid { kind, ref issues } => ApiError {
                code: ErrorCode::ValidationFailed,
                message: format!("invalid {kind}: {}", issues.join("; ")),
                details: issues.clone(),
                retry_after: None,
            },
            other => {
                tracing::error!(error = %other, "store failure");
                ApiError::new(ErrorCode::Internal, "internal error; see the server log")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, status) = self.code.describe();
        metrics::counter!("pennant_api_errors_total", "code" => code).increment(1);
        let body = ErrorBody { code, message: self.message, details: self.details };
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
