//! Insights queries under `/api/v2/insights/{projectKey}/{envKey}/…`: flag-evaluation time series, flag
//! statuses, the contexts index (list, search, detail with every flag's value) and the custom-event export.
//!
//! Flag statuses, over the last [`STATUS_WINDOW_DAYS`] days (the window), from the hour counts and each flag's
//! last-evaluated time:
//! - `new`: not evaluated in the window, and created within it;
//! - `inactive`: not evaluated in the window, and older than it;
//! - `launched`: evaluated in the window, created before it, and every counted evaluation in the window served one
//!   and the same variation (the flag is rolled out to everyone; its code can be cleaned up);
//! - `active`: evaluated in the window otherwise (several variations served, or too young to be called launched).
//!
//! A flag is "evaluated in the window" when it has counts in it or its last-evaluated time falls in it.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use pennant_eval::{AllFlagsOptions, Context, all_flags_state};
use pennant_store::{
    ContextPage, ContextQuery, DAY_MS, Granularity, IndexedContext, Role, SeriesPoint, Store, StoredCustomEvent,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::QueryParams;
use crate::state::ApiState;

/// The flag-status window, in days.
pub const STATUS_WINDOW_DAYS: i64 = 7;

/// Most buckets one time-series request may span.
pub const MAX_BUCKETS: i64 = 10_000;

/// Custom events read from the store per chunk of the export stream.
const EXPORT_PAGE: u32 = 1000;

pub(crate) fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(flag_evaluations))
        .routes(routes!(flag_statuses))
        .routes(routes!(flag_status))
        .routes(routes!(list_contexts))
        .routes(routes!(get_context))
        .routes(routes!(export_custom_events))
}

/// Time-series parameters.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SeriesParams {
    /// `minute`, `hour` (default) or `day`.
    pub granularity: Option<Granularity>,
    /// Start, Unix ms (default: 60 buckets before `to`).
    pub from: Option<i64>,
    /// End (exclusive), Unix ms (default: now).
    pub to: Option<i64>,
}

/// One bucket of a flag's evaluations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeriesBucket {
    /// Bucket start, Unix ms.
    pub time: i64,
    /// Evaluations in the bucket.
    pub total: i64,
    /// Per variation index (-1: no variation reported, e.g. the flag was not found).
    pub variations: Vec<VariationCount>,
}

/// Evaluations of one variation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VariationCount {
    /// Variation index (-1: none reported).
    pub variation: i64,
    /// Evaluations.
    pub count: i64,
}

/// A flag's evaluations over time in one environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EvaluationSeries {
    /// Flag key.
    pub flag_key: String,
    /// Bucket size.
    pub granularity: Granularity,
    /// Range start (bucket-aligned), Unix ms.
    pub from: i64,
    /// Range end (exclusive), Unix ms.
    pub to: i64,
    /// Evaluations in the range.
    pub total: i64,
    /// Per variation over the range.
    pub totals: Vec<VariationCount>,
    /// Buckets that have evaluations, oldest first (buckets without are omitted).
    pub buckets: Vec<SeriesBucket>,
}

/// A flag's status in one environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FlagStatusKind {
    /// Created in the window, not evaluated yet.
    New,
    /// Evaluated in the window, serving several variations or younger than the window.
    Active,
    /// Not evaluated in the window.
    Inactive,
    /// Evaluated in the window, serving one variation to everyone.
    Launched,
}

/// A flag's status in one environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlagStatus {
    /// Flag key.
    pub flag_key: String,
    /// The status (rule in the module documentation).
    pub status: FlagStatusKind,
    /// Last evaluation, Unix ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_evaluated: Option<i64>,
    /// Evaluations in the window.
    pub evaluations: i64,
    /// Variation indexes served in the window.
    pub variations_served: Vec<i64>,
}

/// Statuses of a project's flags in one environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlagStatuses {
    /// Window start, Unix ms.
    pub window_start: i64,
    /// One per flag, by key.
    pub items: Vec<FlagStatus>,
}

/// Context-list parameters.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ContextParams {
    /// Search: every word must start a word of the key, name or an attribute value.
    pub q: Option<String>,
    /// Only this context kind.
    pub kind: Option<String>,
    /// Page size, 1–1000 (default 50).
    pub limit: Option<u32>,
    /// `next` of the previous page.
    pub after: Option<String>,
}

/// One flag's value for a context.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContextFlagValue {
    /// Flag key.
    pub key: String,
    /// The value served (absent: the application's default applies).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub value: Option<Value>,
    /// Variation index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variation: Option<usize>,
    /// Why, as SDKs report it.
    #[schema(value_type = Object)]
    pub reason: Value,
}

/// A context with every flag's value for it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContextDetail {
    /// The context as indexed.
    pub context: IndexedContext,
    /// Every flag of the environment evaluated for it (with the attributes the SDK reported; redacted ones are
    /// unknown to Pennant and so absent), by key.
    pub flags: Vec<ContextFlagValue>,
}

/// Export parameters.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportParams {
    /// Start (creationDate), Unix ms (default: 24 hours before `to`).
    pub from: Option<i64>,
    /// End (exclusive), Unix ms (default: now).
    pub to: Option<i64>,
    /// Only events with this key.
    pub key: Option<String>,
}

async fn require_env(state: &ApiState, principal: &Principal, project: &str, env: &str) -> ApiResult<()> {
    principal.require_project(Role::Reader, project)?;
    state.store.get_environment(project, env).await?;
    Ok(())
}

fn group(points: &[SeriesPoint]) -> (Vec<SeriesBucket>, BTreeMap<i64, i64>) {
    let mut buckets: Vec<SeriesBucket> = Vec::new();
    let mut totals: BTreeMap<i64, i64> = BTreeMap::new();
    for p in points {
        *totals.entry(p.variation).or_insert(0) += p.count;
        match buckets.last_mut() {
            Some(b) if b.time == p.bucket => {
                b.total += p.count;
                b.variations.push(VariationCount { variation: p.variation, count: p.count });
            }
            _ => buckets.push(SeriesBucket {
                time: p.bucket,
                total: p.count,
                variations: vec![VariationCount { variation: p.variation, count: p.count }],
            }),
        }
    }
    (buckets, totals)
}

#[utoipa::path(get, path = "/insights/{projectKey}/{envKey}/flags/{flagKey}/evaluations", tag = "insights",
    params(("projectKey" = String, Path), ("envKey" = String, Path), ("flagKey" = String, Path), SeriesParams),
    responses((status = 200, body = EvaluationSeries), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn flag_evaluations(
    State(state): State<ApiState>,
    principal: Principal,
    Path((project, env, flag)): Path<(String, String, String)>,
    QueryParams(params): QueryParams<SeriesParams>,
) -> ApiResult<Json<EvaluationSeries>> {
    require_env(&state, &principal, &project, &env).await?;
    let granularity = params.granularity.unwrap_or(Granularity::Hour);
    let step = granularity.millis();
    let to = params.to.unwrap_or_else(pennant_store::now_ms);
    let requested_from = params.from.unwrap_or(to.saturating_sub(60 * step));
    // Checked before rounding down to the bucket, which could turn a reversed range into a valid one.
    if requested_from >= to {
        return Err(ApiError::bad_request("from must be before to"));
    }
    let from = granularity.bucket(requested_from);
    if (to - from) / step > MAX_BUCKETS {
        return Err(ApiError::bad_request(format!(
            "the range spans more than {MAX_BUCKETS} buckets; use a coarser granularity or a shorter range"
        )));
    }
    let points = state.store.eval_series(&project, &env, &flag, granularity, from, to).await?;
    let (buckets, totals) = group(&points);
    Ok(Json(EvaluationSeries {
        flag_key: flag,
        granularity,
        from,
        to,
        total: totals.values().sum(),
        totals: totals.into_iter().map(|(variation, count)| VariationCount { variation, count }).collect(),
        buckets,
    }))
}

/// The status rule (see the module documentation).
pub fn status_of(
    created: i64,
    window_start: i64,
    evaluations: i64,
    last_evaluated: Option<i64>,
    variations_served: usize,
) -> FlagStatusKind {
    let evaluated = evaluations > 0 || last_evaluated.is_some_and(|t| t >= window_start);
    if !evaluated {
        if created >= window_start { FlagStatusKind::New } else { FlagStatusKind::Inactive }
    } else if created < window_start && variations_served == 1 {
        FlagStatusKind::Launched
    } else {
        FlagStatusKind::Active
    }
}

async fn statuses(store: &Store, project: &str, env: &str, only: Option<&str>) -> ApiResult<FlagStatuses> {
    let now = pennant_store::now_ms();
    let window_start = now - STATUS_WINDOW_DAYS * DAY_MS;
    let flags = store.flag_creation_times(project).await?;
    let last = store.flags_last_evaluated(project, env).await?;
    let mut served: HashMap<String, BTreeMap<i64, i64>> = HashMap::new();
    for t in store.eval_totals_since(project, env, window_start).await? {
        if t.count > 0 {
            *served.entry(t.flag).or_default().entry(t.variation).or_insert(0) += t.count;
        }
    }
    let items = flags
        .into_iter()
        .filter(|(key, _)| only.is_none_or(|o| o == key))
        .map(|(key, created)| {
            let counts = served.remove(&key).unwrap_or_default();
            let last_evaluated = last.get(&key).copied();
            let evaluations: i64 = counts.values().sum();
            let variations_served: Vec<i64> = counts.keys().copied().collect();
            let status = status_of(created, window_start, evaluations, last_evaluated, variations_served.len());
            FlagStatus { flag_key: key, status, last_evaluated, evaluations, variations_served }
        })
        .collect();
    Ok(FlagStatuses { window_start, items })
}

#[utoipa::path(get, path = "/insights/{projectKey}/{envKey}/flag-statuses", tag = "insights",
    params(("projectKey" = String, Path), ("envKey" = String, Path)),
    responses((status = 200, body = FlagStatuses), (status = 404, body = ErrorBody)))]
async fn flag_statuses(
    State(state): State<ApiState>,
    principal: Principal,
    Path((project, env)): Path<(String, String)>,
) -> ApiResult<Json<FlagStatuses>> {
    require_env(&state, &principal, &project, &env).await?;
    Ok(Json(statuses(&state.store, &project, &env, None).await?))
}

#[utoipa::path(get, path = "/insights/{projectKey}/{envKey}/flag-statuses/{flagKey}", tag = "insights",
    params(("projectKey" = String, Path), ("envKey" = String, Path), ("flagKey" = String, Path)),
    responses((status = 200, body = FlagStatus), (status = 404, body = ErrorBody)))]
async fn flag_status(
    State(state): State<ApiState>,
    principal: Principal,
    Path((project, env, flag)): Path<(String, String, String)>,
) -> ApiResult<Json<FlagStatus>> {
    require_env(&state, &principal, &project, &env).await?;
    let all = statuses(&state.store, &project, &env, Some(&flag)).await?;
    all.items.into_iter().next().map(Json).ok_or_else(|| ApiError::not_found(format!("flag {flag:?} not found")))
}

#[utoipa::path(get, path = "/insights/{projectKey}/{envKey}/contexts", tag = "insights",
    params(("projectKey" = String, Path), ("envKey" = String, Path), ContextParams),
    responses((status = 200, body = ContextPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_contexts(
    State(state): State<ApiState>,
    principal: Principal,
    Path((project, env)): Path<(String, String)>,
    QueryParams(params): QueryParams<ContextParams>,
) -> ApiResult<Json<ContextPage>> {
    require_env(&state, &principal, &project, &env).await?;
    if params.limit.is_some_and(|l| !(1..=1000).contains(&l)) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let q = ContextQuery { q: params.q, kind: params.kind, limit: params.limit, after: params.after };
    match state.store.list_contexts(&project, &env, &q).await {
        Ok(page) => Ok(Json(page)),
        Err(pennant_store::StoreError::Invalid { issues, .. }) => Err(ApiError::bad_request(issues.join("; "))),
        Err(e) => Err(e.into()),
    }
}

#[utoipa::path(get, path = "/insights/{projectKey}/{envKey}/contexts/{kind}/{key}", tag = "insights",
    params(("projectKey" = String, Path), ("envKey" = String, Path), ("kind" = String, Path), ("key" = String, Path)),
    responses((status = 200, body = ContextDetail), (status = 404, body = ErrorBody)))]
async fn get_context(
    State(state): State<ApiState>,
    principal: Principal,
    Path((project, env, kind, key)): Path<(String, String, String, String)>,
) -> ApiResult<Json<ContextDetail>> {
    require_env(&state, &principal, &project, &env).await?;
    let context = state.store.get_context(&project, &env, &kind, &key).await?;
    let mut json = match &context.attributes {
        Value::Object(o) => o.clone(),
        _ => serde_json::Map::new(),
    };
    json.insert("kind".into(), Value::String(context.kind.clone()));
    json.insert("key".into(), Value::String(context.key.clone()));
    if let Some(name) = &context.name {
        json.insert("name".into(), Value::String(name.clone()));
    }
    let ctx = Context::from_value(Value::Object(json))
        .map_err(|e| ApiError::bad_request(format!("the indexed context cannot be evaluated: {e}")))?;
    let payload = state.store.sdk_payload(&project, &env).await?;
    let all =
        all_flags_state(&payload, payload.flags(), &ctx, AllFlagsOptions { with_reasons: true, ..Default::default() });
    let flags = all
        .flags()
        .iter()
        .map(|s| ContextFlagValue {
            key: s.flag.key.clone(),
            value: s.detail.value.cloned(),
            variation: s.detail.variation_index,
            reason: serde_json::to_value(s.detail.reason).unwrap_or(Value::Null),
        })
        .collect();
    Ok(Json(ContextDetail { context, flags }))
}

/// The export's stream state: where the next page starts.
struct ExportCursor {
    store: Store,
    project: String,
    env: String,
    range: (i64, i64),
    key: Option<String>,
    after: Option<(i64, i64)>,
    done: bool,
}

async fn next_chunk(mut c: ExportCursor) -> Option<(Result<Bytes, std::io::Error>, ExportCursor)> {
    if c.done {
        return None;
    }
    let page = c.store.custom_events(&c.project, &c.env, c.range, c.key.as_deref(), c.after, EXPORT_PAGE).await;
    let events: Vec<StoredCustomEvent> = match page {
        Ok(events) => events,
        Err(e) => {
            tracing::error!(error = %e, "custom-event export failed");
            c.done = true;
            return Some((Err(std::io::Error::other(e.to_string())), c));
        }
    };
    if events.len() < usize::try_from(EXPORT_PAGE).unwrap_or(usize::MAX) {
        c.done = true;
    }
    if events.is_empty() {
        return None;
    }
    let mut buf = Vec::with_capacity(events.len() * 128);
    for e in &events {
        if serde_json::to_writer(&mut buf, e).is_ok() {
            buf.push(b'\n');
        }
    }
    c.after = events.last().map(|e| (e.creation_date, e.id));
    Some((Ok(Bytes::from(buf)), c))
}

#[utoipa::path(get, path = "/insights/{projectKey}/{envKey}/custom-events", tag = "insights",
    params(("projectKey" = String, Path), ("envKey" = String, Path), ExportParams),
    responses((status = 200, description = "NDJSON, one StoredCustomEvent per line, oldest first",
        content_type = "application/x-ndjson", body = StoredCustomEvent),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn export_custom_events(
    State(state): State<ApiState>,
    principal: Principal,
    Path((project, env)): Path<(String, String)>,
    QueryParams(params): QueryParams<ExportParams>,
) -> ApiResult<Response> {
    require_env(&state, &principal, &project, &env).await?;
    let to = params.to.unwrap_or_else(pennant_store::now_ms);
    let from = params.from.unwrap_or(to.saturating_sub(DAY_MS));
    if from >= to {
        return Err(ApiError::bad_request("from must be before to"));
    }
    let cursor = ExportCursor {
        store: state.store.clone(),
        project,
        env,
        range: (from, to),
        key: params.key,
        after: None,
        done: false,
    };
    let body = Body::from_stream(futures_util::stream::unfold(cursor, next_chunk));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_rule() {
        let w = 1_000;
        assert_eq!(status_of(w + 1, w, 0, None, 0), FlagStatusKind::New);
        assert_eq!(status_of(w - 1, w, 0, None, 0), FlagStatusKind::Inactive);
        assert_eq!(status_of(w - 1, w, 0, Some(w - 5), 0), FlagStatusKind::Inactive, "evaluated before the window");
        assert_eq!(status_of(w - 1, w, 10, Some(w + 5), 1), FlagStatusKind::Launched);
        assert_eq!(status_of(w - 1, w, 10, Some(w + 5), 2), FlagStatusKind::Active);
        assert_eq!(status_of(w + 1, w, 10, Some(w + 5), 1), FlagStatusKind::Active, "too young to be launched");
        assert_eq!(status_of(w - 1, w, 0, Some(w + 5), 0), FlagStatusKind::Active, "seen in feature events only");
    }
}
