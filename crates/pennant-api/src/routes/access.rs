//! Members, dashboard sessions and API access tokens.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use pennant_store::{ApiToken, Member, NewToken, Role};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Principal, SESSION_COOKIE};
use crate::error::{ApiError, ApiResult, ErrorBody, ErrorCode};
use crate::extract::JsonBody;
use crate::state::ApiState;

static STAND_IN_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| hash_password("not a real password").unwrap_or_default());

/// How long a dashboard session lasts.
const SESSION_TTL_MS: i64 = 12 * 60 * 60 * 1000;

pub(crate) fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(delete_token))
        .routes(routes!(list_members, create_member))
        .routes(routes!(login, logout))
        .routes(routes!(caller_identity))
}

/// Hashes a password with argon2id (PHC string).
pub fn hash_password(password: &str) -> ApiResult<String> {
    use argon2::PasswordHasher;
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("password hashing failed: {e}")))
}

fn verify_password(password: &str, phc: &str) -> bool {
    use argon2::PasswordVerifier;
    argon2::PasswordHash::new(phc)
        .is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// A new token and its secret, which is shown only in this response.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedToken {
    /// The token.
    #[serde(flatten)]
    pub token: ApiToken,
    /// The secret to send as `Authorization: <secret>`.
    pub secret: String,
}

#[utoipa::path(get, path = "/tokens", tag = "access", responses((status = 200, body = [ApiToken])))]
async fn list_tokens(State(state): State<ApiState>, principal: Principal) -> ApiResult<Json<Vec<ApiToken>>> {
    principal.require(Role::Admin)?;
    Ok(Json(state.store.list_tokens().await?))
}

#[utoipa::path(post, path = "/tokens", tag = "access", request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 403, body = ErrorBody)))]
async fn create_token(
    State(state): State<ApiState>,
    principal: Principal,
    JsonBody(new): JsonBody<NewToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    principal.require(Role::Admin)?;
    if !principal.projects.is_empty() && (new.projects.is_empty() || new.projects.iter().any(|p| !principal.can_see(p)))
    {
        return Err(ApiError::forbidden(
            "a token limited to projects can only make tokens limited to the same projects",
        ));
    }
    let (token, secret) = state.store.create_token(&principal.actor, new).await?;
    Ok((StatusCode::CREATED, Json(CreatedToken { token, secret })))
}

#[utoipa::path(delete, path = "/tokens/{id}", tag = "access", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_token(
    State(state): State<ApiState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    principal.require(Role::Admin)?;
    state.store.delete_token(&principal.actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A member to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewMember {
    /// Email, used to sign in.
    pub email: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Role.
    pub role: Role,
    /// Initial password (at least 10 characters).
    pub password: String,
}

#[utoipa::path(get, path = "/members", tag = "access", responses((status = 200, body = [Member])))]
async fn list_members(State(state): State<ApiState>, principal: Principal) -> ApiResult<Json<Vec<Member>>> {
    principal.require(Role::Admin)?;
    Ok(Json(state.store.list_members().await?))
}

#[utoipa::path(post, path = "/members", tag = "access", request_body = NewMember,
    responses((status = 201, body = Member), (status = 409, body = ErrorBody)))]
async fn create_member(
    State(state): State<ApiState>,
    principal: Principal,
    JsonBody(new): JsonBody<NewMember>,
) -> ApiResult<(StatusCode, Json<Member>)> {
    principal.require(Role::Admin)?;
    if new.password.chars().count() < 10 {
        return Err(ApiError::bad_request("a password needs at least 10 characters"));
    }
    let hash = hash_password(&new.password)?;
    let member = state.store.create_member(&principal.actor, &new.email, &new.name, new.role, &hash).await?;
    Ok((StatusCode::CREATED, Json(member)))
}

/// Sign-in credentials.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// Email.
    pub email: String,
    /// Password.
    pub password: String,
}

/// A new session.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    /// Send as `Authorization: Bearer <token>`, or rely on the cookie set with it.
    pub token: String,
    /// Who signed in.
    pub member: Member,
}

#[utoipa::path(post, path = "/sessions", tag = "access", request_body = Login,
    responses((status = 201, body = Session), (status = 401, body = ErrorBody)))]
async fn login(State(state): State<ApiState>, JsonBody(login): JsonBody<Login>) -> ApiResult<Response> {
    let member = state.store.member_by_email(&login.email).await?;
    // Verify against a stand-in hash when the member is unknown, so timing does not reveal which emails exist.
    let phc = member.as_ref().map_or(STAND_IN_HASH.as_str(), |m| m.password_hash.as_str());
    let ok = verify_password(&login.password, phc);
    let Some(member) = member.filter(|_| ok) else {
        return Err(ApiError::new(ErrorCode::Unauthorized, "wrong email or password"));
    };
    let token = state.store.create_session(&member.id, SESSION_TTL_MS).await?;
    let cookie =
        format!("{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}", SESSION_TTL_MS / 1000);
    let mut response = (StatusCode::CREATED, Json(Session { token, member })).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(SET_COOKIE, v);
    }
    Ok(response)
}

#[utoipa::path(delete, path = "/sessions", tag = "access", responses((status = 204)))]
async fn logout(State(state): State<ApiState>, principal: Principal, headers: HeaderMap) -> ApiResult<Response> {
    if principal.actor.kind == "member"
        && let Some(token) = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim_start_matches("Bearer ").trim().to_owned())
            .filter(|t| t.starts_with("ses-"))
            .or_else(|| cookie_token(&headers))
    {
        state.store.delete_session(&token).await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")) {
        response.headers_mut().insert(SET_COOKIE, v);
    }
    Ok(response)
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (name, value) = c.trim().split_once('=')?;
            (name == SESSION_COOKIE).then(|| value.to_owned())
        })
}

/// The caller as the API sees it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallerIdentity {
    /// `member` or `token`.
    pub kind: String,
    /// ID.
    pub id: String,
    /// Name or email.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Projects the caller is limited to (empty: all).
    pub projects: Vec<String>,
}

#[utoipa::path(get, path = "/caller-identity", tag = "access", responses((status = 200, body = CallerIdentity)))]
async fn caller_identity(principal: Principal) -> Json<CallerIdentity> {
    Json(CallerIdentity {
        kind: principal.actor.kind,
        id: principal.actor.id,
        name: principal.actor.name,
        role: principal.role,
        projects: principal.projects,
    })
}
