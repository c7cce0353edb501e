//! Who is calling: API access tokens and dashboard sessions. SDK credentials are refused here.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;
use governor::clock::{Clock, DefaultClock};
use pennant_store::{Actor, Role};

use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::state::ApiState;

/// The name of the dashboard's session cookie.
pub const SESSION_COOKIE: &str = "pennant_session";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Recorded in the changelog.
    pub actor: Actor,
    /// What it may do.
    pub role: Role,
    /// Projects it is limited to (empty: all).
    pub projects: Vec<String>,
}

impl Principal {
    /// Requires at least `role`.
    pub fn require(&self, role: Role) -> ApiResult<()> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this needs the {} role; the caller has {}",
                role.as_str(),
                self.role.as_str()
            )))
        }
    }

    /// Requires at least `role` and access to `project`.
    pub fn require_project(&self, role: Role, project: &str) -> ApiResult<()> {
        self.require(role)?;
        if self.can_see(project) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("the caller's token is not allowed on project {project:?}")))
        }
    }

    /// Whether the caller may see a project at all.
    pub fn can_see(&self, project: &str) -> bool {
        self.projects.is_empty() || self.projects.iter().any(|p| p == project)
    }
}

/// The credential in a request: `Authorization: Bearer X`, `Authorization: X`, or the session cookie.
fn credential(parts: &Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let value = value.trim();
        let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).unwrap_or(value);
        return Some(token.trim().to_owned());
    }
    parts.headers.get_all(COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (name, value) = c.trim().split_once('=')?;
        (name == SESSION_COOKIE).then(|| value.to_owned())
    })
}

impl<S> FromRequestParts<S> for Principal
where
    ApiState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = ApiState::from_ref(state);
        let Some(secret) = credential(parts) else {
            return Err(ApiError::new(ErrorCode::Unauthorized, "send an API access token in the Authorization header"));
        };
        let principal = if secret.starts_with("ses-") {
            let member = state.store.session_member(&secret).await?.ok_or_else(|| {
                ApiError::new(ErrorCode::Unauthorized, "the session has expired or does not exist; sign in again")
            })?;
            Principal {
                actor: Actor { kind: "member".into(), id: member.id.clone(), name: member.email.clone() },
                role: member.role,
                projects: Vec::new(),
            }
        } else if let Some(token) = state.store.token_by_secret(&secret).await? {
            Principal {
                actor: Actor { kind: "token".into(), id: token.id.clone(), name: token.name.clone() },
                role: token.role,
                projects: token.projects,
            }
        } else if secret.starts_with("sdk-")
            || secret.starts_with("mob-")
            || state.store.find_credential(&secret).await?.is_some()
        {
            return Err(ApiError::new(
                ErrorCode::SdkKeyNotAllowed,
                "SDK keys, mobile keys and client-side IDs only work on the SDK endpoints; use an API access token",
            ));
        } else {
            return Err(ApiError::new(ErrorCode::Unauthorized, "unknown or revoked access token"));
        };
        if let Err(not_until) = state.limiter.check_key(&principal.actor.id) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let mut err = ApiError::new(ErrorCode::RateLimited, "too many requests for this token; slow down");
            err.retry_after = Some(wait.as_secs().max(1));
            return Err(err);
        }
        Ok(principal)
    }
}
