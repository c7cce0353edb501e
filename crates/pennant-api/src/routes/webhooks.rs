//! Webhook subscriptions and their delivery attempts. Admins only; the signing secret is shown once, when the
//! webhook is created.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use pennant_store::{Page, Record, Role, Webhook, WebhookDelivery, WebhookFilter};
use serde::Deserialize;
use serde_json::Value;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, ErrorBody, ErrorCode};
use crate::extract::{JsonBody, QueryParams, if_match};
use crate::patch::{PatchRequest, apply_json_patch};
use crate::routes::projects::{park, unpark};
use crate::routes::{CommentParam, ListParams};
use crate::state::ApiState;

/// What GETs show instead of the secret.
pub const HIDDEN_SECRET: &str = "[hidden]";

pub(crate) fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_webhooks, create_webhook))
        .routes(routes!(get_webhook, patch_webhook, delete_webhook))
        .routes(routes!(list_deliveries))
}

/// A new webhook. The key is generated, and so is the secret unless one is given.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewWebhook {
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Where to POST (http or https).
    pub url: String,
    /// HMAC-SHA256 signing secret (default: generated, returned once in the response).
    #[serde(default)]
    pub secret: Option<String>,
    /// Deliveries are made only while on (default true).
    #[serde(default = "yes")]
    pub on: bool,
    /// Which changes it receives (default: all).
    #[serde(default)]
    pub filter: WebhookFilter,
}

fn yes() -> bool {
    true
}

/// Paging of delivery attempts.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryParams {
    /// Page size, 1–500 (default 50).
    pub limit: Option<u32>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

/// Webhooks are global: only admins whose token covers every project manage them.
fn require_admin(principal: &Principal) -> ApiResult<()> {
    principal.require(Role::Admin)?;
    if !principal.projects.is_empty() {
        return Err(ApiError::forbidden("webhooks see every project; a token limited to projects cannot manage them"));
    }
    Ok(())
}

fn hidden(mut record: Record<Webhook>) -> Record<Webhook> {
    record.data.secret = HIDDEN_SECRET.into();
    record
}

/// Requests can only go to http(s) URLs with a host.
fn check_url(url: &str) -> ApiResult<()> {
    let problem = match reqwest::Url::parse(url) {
        Err(e) => Some(format!("url {url:?} is not a URL: {e}")),
        Ok(u) if !matches!(u.scheme(), "http" | "https") => Some(format!("url {url:?} must be http or https")),
        Ok(u) if u.host_str().is_none_or(str::is_empty) => Some(format!("url {url:?} has no host")),
        Ok(_) => None,
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(ApiError {
            code: ErrorCode::ValidationFailed,
            message: format!("invalid webhook: {p}"),
            details: vec![p],
            retry_after: None,
        }),
    }
}

#[utoipa::path(get, path = "/webhooks", tag = "webhooks", params(ListParams),
    responses((status = 200, body = Page<Record<Webhook>>, description = "Secrets show as \"[hidden]\"."),
        (status = 403, body = ErrorBody)))]
async fn list_webhooks(
    State(state): State<ApiState>,
    principal: Principal,
    QueryParams(params): QueryParams<ListParams>,
) -> ApiResult<Json<Page<Record<Webhook>>>> {
    require_admin(&principal)?;
    let page = state.store.list_webhooks(&params.to_query()?).await?;
    Ok(Json(Page {
        items: page.items.into_iter().map(hidden).collect(),
        next_cursor: page.next_cursor,
        total_count: page.total_count,
    }))
}

#[utoipa::path(post, path = "/webhooks", tag = "webhooks", request_body = NewWebhook,
    responses((status = 201, body = Record<Webhook>, description = "The only response that shows the secret."),
        (status = 422, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn create_webhook(
    State(state): State<ApiState>,
    principal: Principal,
    JsonBody(new): JsonBody<NewWebhook>,
) -> ApiResult<(StatusCode, Json<Record<Webhook>>)> {
    require_admin(&principal)?;
    check_url(&new.url)?;
    let webhook = Webhook {
        key: String::new(),
        name: new.name,
        url: new.url,
        secret: new.secret.unwrap_or_default(),
        on: new.on,
        filter: new.filter,
    };
    let created = state.store.create_webhook(&principal.actor, webhook, "").await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(get, path = "/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = Record<Webhook>), (status = 404, body = ErrorBody)))]
async fn get_webhook(
    State(state): State<ApiState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Record<Webhook>>> {
    require_admin(&principal)?;
    Ok(Json(hidden(state.store.get_webhook(&id).await?)))
}

#[utoipa::path(patch, path = "/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    request_body(content = Object, description = "JSON Patch array, or {\"patch\": [...], \"comment\": \"...\", \"version\": N}. \
        The document's secret reads \"[hidden]\"; replace it to set a new one."),
    responses((status = 200, body = Record<Webhook>), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn patch_webhook(
    State(state): State<ApiState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Record<Webhook>>> {
    require_admin(&principal)?;
    let request = PatchRequest::parse(body)?;
    let expected = request.expected_version(if_match(&headers)?)?;
    let Some(ops) = &request.ops else {
        return Err(ApiError::bad_request("webhooks take JSON Patch, not instructions"));
    };
    let mut failed = None;
    let result = state
        .store
        .update_webhook(&principal.actor, &id, expected, &request.comment, |webhook| {
            let secret = std::mem::replace(&mut webhook.secret, HIDDEN_SECRET.into());
            let mut patched = apply_json_patch(webhook, ops).map_err(|e| park(&mut failed, e))?;
            if patched.secret == HIDDEN_SECRET {
                patched.secret = secret;
            }
            check_url(&patched.url).map_err(|e| park(&mut failed, e))?;
            *webhook = patched;
            Ok(())
        })
        .await;
    Ok(Json(hidden(unpark(result, failed)?)))
}

#[utoipa::path(delete, path = "/webhooks/{id}", tag = "webhooks", params(("id" = String, Path), CommentParam),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_webhook(
    State(state): State<ApiState>,
    principal: Principal,
    Path(id): Path<String>,
    QueryParams(c): QueryParams<CommentParam>,
) -> ApiResult<StatusCode> {
    require_admin(&principal)?;
    state.store.delete_webhook(&principal.actor, &id, c.comment.as_deref().unwrap_or("")).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/webhooks/{id}/deliveries", tag = "webhooks", params(("id" = String, Path), DeliveryParams),
    responses((status = 200, body = Page<WebhookDelivery>, description = "Delivery attempts, newest first."),
        (status = 404, body = ErrorBody)))]
async fn list_deliveries(
    State(state): State<ApiState>,
    principal: Principal,
    Path(id): Path<String>,
    QueryParams(p): QueryParams<DeliveryParams>,
) -> ApiResult<Json<Page<WebhookDelivery>>> {
    require_admin(&principal)?;
    if p.limit.is_some_and(|l| !(1..=500).contains(&l)) {
        return Err(ApiError::bad_request("limit must be between 1 and 500"));
    }
    Ok(Json(state.store.list_webhook_deliveries(&id, p.limit, p.cursor.as_deref()).await?))
}
