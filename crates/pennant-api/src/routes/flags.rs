//! Feature flags: one document per flag with its configuration in every environment of its project.

use axum::Json;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, Uri};
use pennant_store::{FlagDoc, FlagEnvConfig, Page, Record, Role};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{JsonBody, QueryParams, if_match};
use crate::patch::{PatchRequest, apply_json_patch_with_archived};
use crate::routes::instructions::{any_needs_environment, apply_flag_instructions, parse_flag_instructions};
use crate::routes::projects::{park, unpark};
use crate::routes::{CommentParam, ListParams};
use crate::state::ApiState;

pub(crate) fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_flags, create_flag))
        .routes(routes!(get_flag, patch_flag, delete_flag))
        .routes(routes!(copy_flag))
}

/// Query parameters plus `?env=`: repeatable (`env=a&env=b`) and comma-separated (`env=a,b`), which plain
/// query deserialisation cannot express. `envs` is `None` when no `env` was given (every environment).
#[derive(Debug)]
struct WithEnvFilter<T> {
    params: T,
    envs: Option<Vec<String>>,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for WithEnvFilter<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let bad = |e: axum::extract::rejection::QueryRejection| ApiError::bad_request(e.body_text());
        let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri).map_err(bad)?;
        let mut envs: Option<Vec<String>> = None;
        for (name, value) in &pairs {
            if name == "env" {
                let list = envs.get_or_insert_with(Vec::new);
                list.extend(value.split(',').map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned));
            }
        }
        // The other parameters, as sent, for the typed parameters.
        let rest: Vec<&str> = parts
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|pair| !pair.is_empty() && *pair != "env" && !pair.starts_with("env="))
            .collect();
        let uri: Uri = format!("/?{}", rest.join("&"))
            .parse()
            .map_err(|_| ApiError::bad_request("the query string is not valid"))?;
        let Query(params) = Query::<T>::try_from_uri(&uri).map_err(bad)?;
        Ok(WithEnvFilter { params, envs })
    }
}

/// No query parameters (besides `env`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

/// Keeps only the environments asked for (unknown keys simply match nothing).
fn only_envs(mut record: Record<FlagDoc>, envs: Option<&[String]>) -> Record<FlagDoc> {
    if let Some(envs) = envs {
        record.data.environments.retain(|k, _| envs.contains(k));
    }
    record
}

/// What `copy` takes from each side.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CopyEnvironment {
    /// Environment key.
    pub key: String,
    /// The flag's version the copy is based on (optimistic concurrency, like `If-Match`).
    #[serde(default)]
    pub current_version: Option<u64>,
}

/// The parts of an environment's configuration `copy` can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum CopyAction {
    /// On or off.
    UpdateOn,
    /// Prerequisites.
    UpdatePrerequisites,
    /// Individual targets (`targets` and `contextTargets`).
    UpdateTargets,
    /// Rules.
    UpdateRules,
    /// Fallthrough.
    UpdateFallthrough,
    /// Off variation.
    UpdateOffVariation,
    /// `trackEvents` and `trackEventsFallthrough` (Pennant's addition).
    UpdateTrackEvents,
}

const ALL_COPY_ACTIONS: [CopyAction; 7] = [
    CopyAction::UpdateOn,
    CopyAction::UpdatePrerequisites,
    CopyAction::UpdateTargets,
    CopyAction::UpdateRules,
    CopyAction::UpdateFallthrough,
    CopyAction::UpdateOffVariation,
    CopyAction::UpdateTrackEvents,
];

/// Copies one environment's configuration of a flag to another.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CopyFlag {
    /// Copy from.
    pub source: CopyEnvironment,
    /// Copy to.
    pub target: CopyEnvironment,
    /// Changelog comment.
    #[serde(default)]
    pub comment: String,
    /// Copy only these parts (default: all).
    #[serde(default)]
    pub included_actions: Option<Vec<CopyAction>>,
    /// Copy everything but these parts.
    #[serde(default)]
    pub excluded_actions: Option<Vec<CopyAction>>,
}

impl CopyFlag {
    fn actions(&self) -> ApiResult<Vec<CopyAction>> {
        match (&self.included_actions, &self.excluded_actions) {
            (Some(_), Some(_)) => Err(ApiError::bad_request("send includedActions or excludedActions, not both")),
            (Some(included), None) => Ok(included.clone()),
            (None, Some(excluded)) => Ok(ALL_COPY_ACTIONS.into_iter().filter(|a| !excluded.contains(a)).collect()),
            (None, None) => Ok(ALL_COPY_ACTIONS.to_vec()),
        }
    }
}

/// Copies the chosen parts of `from` into `to` (never the salt, which stays per environment).
fn copy_config(from: &FlagEnvConfig, to: &mut FlagEnvConfig, actions: &[CopyAction]) {
    for action in actions {
        match action {
            CopyAction::UpdateOn => to.on = from.on,
            CopyAction::UpdatePrerequisites => to.prerequisites.clone_from(&from.prerequisites),
            CopyAction::UpdateTargets => {
                to.targets.clone_from(&from.targets);
                to.context_targets.clone_from(&from.context_targets);
            }
            CopyAction::UpdateRules => to.rules.clone_from(&from.rules),
            CopyAction::UpdateFallthrough => to.fallthrough.clone_from(&from.fallthrough),
            CopyAction::UpdateOffVariation => to.off_variation = from.off_variation,
            CopyAction::UpdateTrackEvents => {
                to.track_events = from.track_events;
                to.track_events_fallthrough = from.track_events_fallthrough;
            }
        }
    }
}

#[utoipa::path(get, path = "/flags/{projectKey}", tag = "flags",
    params(("projectKey" = String, Path), ListParams,
        ("env" = Option<String>, Query, description = "Only these environments' configurations (repeatable or comma-separated)")),
    responses((status = 200, body = Page<Record<FlagDoc>>), (status = 404, body = ErrorBody)))]
async fn list_flags(
    State(state): State<ApiState>,
    principal: Principal,
    Path(project): Path<String>,
    query: WithEnvFilter<ListParams>,
) -> ApiResult<Json<Page<Record<FlagDoc>>>> {
    principal.require_project(Role::Reader, &project)?;
    let page = state.store.list_flags(&project, &query.params.to_query()?).await?;
    let envs = query.envs.as_deref();
    Ok(Json(Page {
        items: page.items.into_iter().map(|r| only_envs(r, envs)).collect(),
        next_cursor: page.next_cursor,
        total_count: page.total_count,
    }))
}

#[utoipa::path(post, path = "/flags/{projectKey}", tag = "flags", params(("projectKey" = String, Path)),
    request_body = FlagDoc,
    responses((status = 201, body = Record<FlagDoc>), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_flag(
    State(state): State<ApiState>,
    principal: Principal,
    Path(project): Path<String>,
    JsonBody(doc): JsonBody<FlagDoc>,
) -> ApiResult<(StatusCode, Json<Record<FlagDoc>>)> {
    principal.require_project(Role::Writer, &project)?;
    let created = state.store.create_flag(&principal.actor, &project, doc, "").await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(get, path = "/flags/{projectKey}/{flagKey}", tag = "flags",
    params(("projectKey" = String, Path), ("flagKey" = String, Path),
        ("env" = Option<String>, Query, description = "Only these environments' configurations (repeatable or comma-separated)")),
    responses((status = 200, body = Record<FlagDoc>), (status = 404, body = ErrorBody)))]
async fn get_flag(
    State(state): State<ApiState>,
    principal: Principal,
    Path((project, key)): Path<(String, String)>,
    query: WithEnvFilter<NoParams>,
) -> ApiResult<Json<Record<FlagDoc>>> {
    principal.require_project(Role::Reader, &project)?;
    let flag = state.store.get_flag(&project, &key).await?;
    Ok(Json(only_envs(flag, query.envs.as_deref())))
}

#[utoipa::path(patch, path = "/flags/{projectKey}/{flagKey}", tag = "flags",
    params(("projectKey" = String, Path), ("flagKey" = String, Path)),
    request_body(content = Object, description = "JSON Patch on the flag (with an `archived` boolean), as an array or \
        {\"patch\": [...], \"comment\": \"...\", \"version\": N}; or semantic patch: \
        {\"environmentKey\": \"...\", \"comment\": \"...\", \"instructions\": [{\"kind\": \"turnFlagOn\"}, ...]}"),
    responses((status = 200, body = Record<FlagDoc>), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn patch_flag(
    State(state): State<ApiState>,
    principal: Principal,
    Path((project, key)): Path<(String, String)>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Record<FlagDoc>>> {
    principal.require_project(Role::Writer, &project)?;
    let request = PatchRequest::parse(body)?;
    let expected = request.expected_version(if_match(&headers)?)?;
    let mut failed = None;
    let result = if let Some(ops) = &request.ops {
        state
            .store
            .update_flag(&principal.actor, &project, &key, expected, &request.comment, |doc, archived| {
                let (patched, now_archived) =
                    apply_json_patch_with_archived(doc, *archived, ops).map_err(|e| park(&mut failed, e))?;
                *doc = patched;
                *archived = now_archived;
                Ok(())
            })
            .await
    } else {
        let items = request.instructions.as_deref().unwrap_or_default();
        let env = request.environment_key.as_deref();
        let instructions = parse_flag_instructions(items, env.is_some())?;
        if let Some(env) = env
            && any_needs_environment(&instructions)
        {
            state.store.get_environment(&project, env).await?;
        }
        state
            .store
            .update_flag(&principal.actor, &project, &key, expected, &request.comment, |doc, archived| {
                apply_flag_instructions(doc, archived, env, &instructions).map_err(|e| park(&mut failed, e))
            })
            .await
    };
    Ok(Json(unpark(result, failed)?))
}

#[utoipa::path(delete, path = "/flags/{projectKey}/{flagKey}", tag = "flags",
    params(("projectKey" = String, Path), ("flagKey" = String, Path), CommentParam),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn delete_flag(
    State(state): State<ApiState>,
    principal: Principal,
    Path((project, key)): Path<(String, String)>,
    QueryParams(c): QueryParams<CommentParam>,
) -> ApiResult<StatusCode> {
    principal.require_project(Role::Writer, &project)?;
    state.store.delete_flag(&principal.actor, &project, &key, c.comment.as_deref().unwrap_or("")).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/flags/{projectKey}/{flagKey}/copy", tag = "flags",
    params(("projectKey" = String, Path), ("flagKey" = String, Path)), request_body = CopyFlag,
    responses((status = 201, body = Record<FlagDoc>), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn copy_flag(
    State(state): State<ApiState>,
    principal: Principal,
    Path((project, key)): Path<(String, String)>,
    headers: HeaderMap,
    JsonBody(copy): JsonBody<CopyFlag>,
) -> ApiResult<(StatusCode, Json<Record<FlagDoc>>)> {
    principal.require_project(Role::Writer, &project)?;
    let actions = copy.actions()?;
    if copy.source.key == copy.target.key {
        return Err(ApiError::bad_request("the source and target environments must differ"));
    }
    let mut expected = if_match(&headers)?;
    for version in [copy.source.current_version, copy.target.current_version].into_iter().flatten() {
        if expected.is_some_and(|e| e != version) {
            return Err(ApiError::bad_request("the versions given (currentVersion, If-Match) disagree"));
        }
        expected = Some(version);
    }
    state.store.get_environment(&project, &copy.source.key).await?;
    state.store.get_environment(&project, &copy.target.key).await?;
    let (source, target) = (copy.source.key.as_str(), copy.target.key.as_str());
    let mut failed = None;
    let result = state
        .store
        .update_flag(&principal.actor, &project, &key, expected, &copy.comment, |doc, _archived| {
            let Some(from) = doc.environments.get(source).cloned() else {
                let e = ApiError::not_found(format!("the flag has no configuration in environment {source:?}"));
                return Err(park(&mut failed, e));
            };
            let fresh = doc.default_env_config(String::new());
            copy_config(&from, doc.environments.entry(target.to_owned()).or_insert(fresh), &actions);
            Ok(())
        })
        .await;
    Ok((StatusCode::CREATED, Json(unpark(result, failed)?)))
}
