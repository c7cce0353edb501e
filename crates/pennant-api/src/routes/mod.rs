//! Handlers, one module per resource.

pub mod access;
pub mod changelog;
pub mod environments;
pub mod flags;
pub mod instructions;
pub mod projects;
pub mod segments;
pub mod webhooks;

use serde::Deserialize;
use utoipa::IntoParams;

use crate::error::{ApiError, ApiResult};

/// Query parameters shared by list endpoints.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only items with this tag.
    pub tag: Option<String>,
    /// Text to find in keys and names (case-insensitive).
    pub query: Option<String>,
    /// `true`: archived items only.
    pub archived: Option<bool>,
    /// `key`, `name`, `created` or `updated`; prefix `-` for descending.
    pub sort: Option<String>,
    /// Page size, 1–1000 (default 100).
    pub limit: Option<u32>,
    /// `nextCursor` from the previous page.
    pub cursor: Option<String>,
}

impl ListParams {
    pub(crate) fn to_query(&self) -> ApiResult<pennant_store::ListQuery> {
        let (descending, sort) = match self.sort.as_deref() {
            None => (false, pennant_store::SortOrder::Key),
            Some(s) => {
                let (descending, name) = match s.strip_prefix('-') {
                    Some(rest) => (true, rest),
                    None => (false, s),
                };
                let sort = pennant_store::SortOrder::parse(name).ok_or_else(|| {
                    ApiError::bad_request(format!("cannot sort by {name:?}: use key, name, created or updated"))
                })?;
                (descending, sort)
            }
        };
        if self.limit.is_some_and(|l| !(1..=1000).contains(&l)) {
            return Err(ApiError::bad_request("limit must be between 1 and 1000"));
        }
        Ok(pennant_store::ListQuery {
            tag: self.tag.clone(),
            text: self.query.clone(),
            archived: self.archived,
            sort,
            descending,
            limit: self.limit,
            cursor: self.cursor.clone(),
        })
    }
}

/// `?comment=` on DELETE.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CommentParam {
    /// Changelog comment.
    pub comment: Option<String>,
}
