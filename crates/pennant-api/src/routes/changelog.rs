//! The audit log and external change records.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use pennant_store::{ChangelogEntry, ChangelogQuery, ExternalChange, Page, Role};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{JsonBody, QueryParams};
use crate::state::ApiState;

pub(crate) fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_auditlog))
        .routes(routes!(get_auditlog_entry))
        .routes(routes!(record_change))
}

#[utoipa::path(get, path = "/auditlog", tag = "changelog", params(ChangelogQuery),
    responses((status = 200, body = Page<ChangelogEntry>), (status = 401, body = ErrorBody)))]
async fn list_auditlog(
    State(state): State<ApiState>,
    principal: Principal,
    QueryParams(q): QueryParams<ChangelogQuery>,
) -> ApiResult<Json<Page<ChangelogEntry>>> {
    principal.require(Role::Reader)?;
    if let Some(scope) = &q.scope {
        let project = scope.split('/').next().unwrap_or_default();
        principal.require_project(Role::Reader, project)?;
    } else if !principal.projects.is_empty() {
        return Err(ApiError::forbidden("a token limited to projects must ask for a scope"));
    }
    if q.limit.is_some_and(|l| !(1..=500).contains(&l)) {
        return Err(ApiError::bad_request("limit must be between 1 and 500"));
    }
    Ok(Json(state.store.changelog(&q).await?))
}

#[utoipa::path(get, path = "/auditlog/{id}", tag = "changelog", params(("id" = i64, Path)),
    responses((status = 200, body = ChangelogEntry), (status = 404, body = ErrorBody)))]
async fn get_auditlog_entry(
    State(state): State<ApiState>,
    principal: Principal,
    Path(id): Path<i64>,
) -> ApiResult<Json<ChangelogEntry>> {
    principal.require(Role::Reader)?;
    let entry = state.store.changelog_entry(id).await?;
    let project = entry.scope.split('/').next().unwrap_or_default();
    if !principal.projects.is_empty() && !principal.can_see(project) {
        return Err(ApiError::not_found(format!("changelog entry {id} not found")));
    }
    Ok(Json(entry))
}

#[utoipa::path(post, path = "/changelog", tag = "changelog", request_body = ExternalChange,
    responses((status = 201, body = ChangelogEntry), (status = 400, body = ErrorBody)))]
async fn record_change(
    State(state): State<ApiState>,
    principal: Principal,
    JsonBody(change): JsonBody<ExternalChange>,
) -> ApiResult<(StatusCode, Json<ChangelogEntry>)> {
    principal.require(Role::Writer)?;
    if !change.scope.is_empty() {
        principal.require_project(Role::Writer, change.scope.split('/').next().unwrap_or_default())?;
    }
    let entry = state.store.record_external_change(&principal.actor, &change).await?;
    Ok((StatusCode::CREATED, Json(entry)))
}
