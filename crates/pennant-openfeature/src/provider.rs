//! The provider: initialisation and status from the SDK client, typed resolution, reasons and errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use open_feature::provider::{FeatureProvider, ProviderMetadata, ProviderStatus, ResolutionDetails};
use open_feature::{
    EvaluationContext, EvaluationError, EvaluationErrorCode, EvaluationResult, FlagMetadata, StructValue, async_trait,
};
use pennant_sdk::{
    BigSegmentsStatus, Client, Context, DataSourceState, ErrorKind, EvaluationDetail, EvaluationReason, FlagChange,
};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::context::to_pennant_context;

/// The provider's name in its metadata.
pub const PROVIDER_NAME: &str = "pennant";

/// How long [`FeatureProvider::initialize`] waits for the client's first data by default.
pub const DEFAULT_INITIALIZATION_TIMEOUT: Duration = Duration::from_secs(10);

/// The code of OpenFeature's `GENERAL` errors (the Rust SDK spells it as [`EvaluationErrorCode::General`] with a
/// string).
pub const GENERAL: &str = "GENERAL";

/// An OpenFeature provider that evaluates flags with a Pennant SDK [`Client`].
///
/// Clones share the client and the initialisation outcome: keep one to read [`FeatureProvider::status`] after
/// handing the provider to OpenFeature, whose API offers no status accessor in `open-feature` 0.3.
#[derive(Debug, Clone)]
pub struct PennantProvider {
    client: Client,
    metadata: ProviderMetadata,
    initialization_timeout: Duration,
    initialization_failed: Arc<AtomicBool>,
}

impl PennantProvider {
    /// A provider evaluating with `client` (started already, with [`Client::start`]).
    pub fn new(client: Client) -> PennantProvider {
        PennantProvider {
            client,
            metadata: ProviderMetadata::new(PROVIDER_NAME),
            initialization_timeout: DEFAULT_INITIALIZATION_TIMEOUT,
            initialization_failed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// How long [`FeatureProvider::initialize`] waits for the client's first data (default
    /// [`DEFAULT_INITIALIZATION_TIMEOUT`]). OpenFeature's `set_provider` holds the provider registry while it
    /// waits, so evaluations through OpenFeature wait too.
    pub fn with_initialization_timeout(self, timeout: Duration) -> PennantProvider {
        PennantProvider { initialization_timeout: timeout, ..self }
    }

    /// The SDK client: its data-source status ([`Client::data_source_status_receiver`]), flag changes, and
    /// everything OpenFeature does not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The SDK's flag-change notifications ([`Client::flag_changes`]), one per changed flag.
    pub fn flag_changes(&self) -> broadcast::Receiver<FlagChange> {
        self.client.flag_changes()
    }

    /// OpenFeature's provider events (`PROVIDER_READY`, `PROVIDER_STALE`, `PROVIDER_ERROR`,
    /// `PROVIDER_CONFIGURATION_CHANGED` with the changed flags' keys), which `open-feature` 0.3 cannot carry to its
    /// handlers yet: see [`crate::ProviderEvent`]. Each call starts its own subscription (on the current Tokio
    /// runtime), beginning with `PROVIDER_READY` if the data is valid already; dropping the receiver ends it.
    pub fn events(&self) -> tokio::sync::mpsc::Receiver<crate::ProviderEvent> {
        crate::events::spawn(&self.client)
    }

    fn resolve<T>(
        &self,
        flag_key: &str,
        context: &EvaluationContext,
        evaluate: impl FnOnce(&Client, &Context) -> EvaluationDetail<T>,
    ) -> EvaluationResult<ResolutionDetails<T>> {
        let context = to_pennant_context(context)?;
        resolution(flag_key, evaluate(&self.client, &context))
    }
}

#[async_trait]
impl FeatureProvider for PennantProvider {
    /// Waits for the client's first data, up to the initialisation timeout: the status is then `Ready`, or `Error`
    /// when the data did not come in time or the data source stopped (a rejected SDK key). The client keeps trying
    /// after a timeout, and the status follows it.
    async fn initialize(&mut self, _context: &EvaluationContext) {
        let ready = self.client.wait_for_initialization(self.initialization_timeout).await;
        self.initialization_failed.store(!ready, Ordering::Relaxed);
        if !ready {
            let status = self.client.data_source_status();
            tracing::warn!(
                timeout = ?self.initialization_timeout,
                state = ?status.state,
                error = ?status.last_error,
                "the Pennant client has no flag data: the OpenFeature provider is in error"
            );
        }
    }

    /// From the client's data source: `Ready` while it is valid; `STALE` while it is interrupted, or stopped with
    /// data (the last data is served); `Error` when it stopped without data, or [`FeatureProvider::initialize`]
    /// timed out and no data has come since; `NotReady` before that.
    fn status(&self) -> ProviderStatus {
        match self.client.data_source_status().state {
            DataSourceState::Valid => ProviderStatus::Ready,
            DataSourceState::Interrupted => ProviderStatus::STALE,
            DataSourceState::Off if self.client.initialized() => ProviderStatus::STALE,
            DataSourceState::Off => ProviderStatus::Error,
            DataSourceState::Initializing if self.initialization_failed.load(Ordering::Relaxed) => {
                ProviderStatus::Error
            }
            DataSourceState::Initializing => ProviderStatus::NotReady,
        }
    }

    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    async fn resolve_bool_value(
        &self,
        flag_key: &str,
        context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<bool>> {
        self.resolve(flag_key, context, |client, context| client.bool_variation_detail(context, flag_key, false))
    }

    /// A number flag's value; a non-integer is truncated toward zero, as LaunchDarkly SDKs' `intVariation` does.
    async fn resolve_int_value(
        &self,
        flag_key: &str,
        context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<i64>> {
        self.resolve(flag_key, context, |client, context| client.int_variation_detail(context, flag_key, 0))
    }

    async fn resolve_float_value(
        &self,
        flag_key: &str,
        context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<f64>> {
        self.resolve(flag_key, context, |client, context| client.float_variation_detail(context, flag_key, 0.0))
    }

    async fn resolve_string_value(
        &self,
        flag_key: &str,
        context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<String>> {
        self.resolve(flag_key, context, |client, context| client.string_variation_detail(context, flag_key, ""))
    }

    /// A JSON object flag's value. Null members of objects are left out (OpenFeature values have no null); a null
    /// inside an array, or a value that is not an object, is `TYPE_MISMATCH`.
    async fn resolve_struct_value(
        &self,
        flag_key: &str,
        context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<StructValue>> {
        let details = self.resolve(flag_key, context, |client, context| {
            client.json_variation_detail(context, flag_key, Value::Null)
        })?;
        let value = match &details.value {
            Value::Object(_) => json_to_value(&details.value),
            _ => None,
        };
        match value {
            Some(open_feature::Value::Struct(value)) => Ok(ResolutionDetails {
                value,
                variant: details.variant,
                reason: details.reason,
                flag_metadata: details.flag_metadata,
            }),
            _ => Err(EvaluationError {
                code: EvaluationErrorCode::TypeMismatch,
                message: Some(format!(
                    "flag {flag_key:?} is not a JSON object OpenFeature can represent (objects only, no null in arrays)"
                )),
            }),
        }
    }
}

/// The OpenFeature resolution of an SDK evaluation: errors become OpenFeature errors (the caller's default then
/// applies); a served variation becomes the value, its index the variant, the reason an OpenFeature reason, and
/// the LaunchDarkly reason's details flag metadata.
fn resolution<T>(flag_key: &str, detail: EvaluationDetail<T>) -> EvaluationResult<ResolutionDetails<T>> {
    if let EvaluationReason::Error { error_kind } = detail.reason {
        return Err(EvaluationError {
            code: error_code(error_kind),
            message: Some(format!("flag {flag_key:?}: {}", error_kind.as_str())),
        });
    }
    // No variation and no error: the flag is off (or a prerequisite failed) and has no off variation, and the SDK
    // served the default. OpenFeature providers get no default to serve, so the caller's default applies through
    // an error.
    let Some(index) = detail.variation_index else {
        return Err(EvaluationError {
            code: EvaluationErrorCode::General(GENERAL.to_owned()),
            message: Some(format!(
                "flag {flag_key:?} served no variation (reason {}): the caller's default applies",
                detail.reason.kind()
            )),
        });
    };
    Ok(ResolutionDetails {
        value: detail.value,
        variant: Some(index.to_string()),
        reason: Some(reason(&detail.reason)),
        flag_metadata: Some(flag_metadata(&detail.reason, detail.big_segments_status)),
    })
}

/// LaunchDarkly reasons as OpenFeature's: `OFF` → `DISABLED`, `TARGET_MATCH` and `RULE_MATCH` →
/// `TARGETING_MATCH`, `FALLTHROUGH` → `DEFAULT`; `PREREQUISITE_FAILED` has no OpenFeature counterpart and keeps
/// its LaunchDarkly name.
pub(crate) fn reason(reason: &EvaluationReason) -> open_feature::EvaluationReason {
    match reason {
        EvaluationReason::Off => open_feature::EvaluationReason::Disabled,
        EvaluationReason::TargetMatch | EvaluationReason::RuleMatch { .. } => {
            open_feature::EvaluationReason::TargetingMatch
        }
        EvaluationReason::Fallthrough { .. } => open_feature::EvaluationReason::Default,
        EvaluationReason::PrerequisiteFailed { .. } => open_feature::EvaluationReason::Other(reason.kind().to_owned()),
        EvaluationReason::Error { .. } => open_feature::EvaluationReason::Error,
    }
}

/// LaunchDarkly error kinds as OpenFeature error codes: `FLAG_NOT_FOUND`, `WRONG_TYPE` → `TYPE_MISMATCH`,
/// `CLIENT_NOT_READY` → `PROVIDER_NOT_READY`, `MALFORMED_FLAG` → `PARSE_ERROR`, the others `GENERAL`.
pub(crate) fn error_code(kind: ErrorKind) -> EvaluationErrorCode {
    match kind {
        ErrorKind::FlagNotFound => EvaluationErrorCode::FlagNotFound,
        ErrorKind::WrongType => EvaluationErrorCode::TypeMismatch,
        ErrorKind::ClientNotReady => EvaluationErrorCode::ProviderNotReady,
        ErrorKind::MalformedFlag => EvaluationErrorCode::ParseError,
        ErrorKind::UserNotSpecified | ErrorKind::Exception => EvaluationErrorCode::General(GENERAL.to_owned()),
    }
}

/// The LaunchDarkly reason's details, which OpenFeature's reasons do not carry: `reasonKind` (`RULE_MATCH`, …),
/// `ruleIndex` and `ruleId`, `inExperiment` (when true), `prerequisiteKey`, and `bigSegmentsStatus` (when a big
/// segment was met).
fn flag_metadata(reason: &EvaluationReason, big_segments_status: Option<BigSegmentsStatus>) -> FlagMetadata {
    let mut metadata = FlagMetadata::default().with_value("reasonKind", reason.kind());
    match reason {
        EvaluationReason::RuleMatch { rule_index, rule_id, in_experiment } => {
            metadata.add_value("ruleIndex", i64::try_from(*rule_index).unwrap_or(i64::MAX));
            metadata.add_value("ruleId", rule_id.as_str());
            if *in_experiment {
                metadata.add_value("inExperiment", true);
            }
        }
        EvaluationReason::Fallthrough { in_experiment: true } => metadata.add_value("inExperiment", true),
        EvaluationReason::PrerequisiteFailed { prerequisite_key } => {
            metadata.add_value("prerequisiteKey", prerequisite_key.as_str());
        }
        _ => {}
    }
    if let Some(status) = big_segments_status {
        let name = match status {
            BigSegmentsStatus::Healthy => "HEALTHY",
            BigSegmentsStatus::Stale => "STALE",
            BigSegmentsStatus::NotConfigured => "NOT_CONFIGURED",
            BigSegmentsStatus::StoreError => "STORE_ERROR",
        };
        metadata.add_value("bigSegmentsStatus", name);
    }
    metadata
}

/// JSON as an OpenFeature value: integers that fit `i64` are `Int`, other numbers `Float`; null members of objects
/// are left out; `None` for a null anywhere else.
fn json_to_value(json: &Value) -> Option<open_feature::Value> {
    Some(match json {
        Value::Null => return None,
        Value::Bool(b) => open_feature::Value::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => open_feature::Value::Int(i),
            None => open_feature::Value::Float(n.as_f64()?),
        },
        Value::String(s) => open_feature::Value::String(s.clone()),
        Value::Array(items) => open_feature::Value::Array(items.iter().map(json_to_value).collect::<Option<_>>()?),
        Value::Object(members) => {
            let mut fields = StructValue::default();
            for (name, value) in members.iter().filter(|(_, v)| !v.is_null()) {
                fields.add_field(name.clone(), json_to_value(value)?);
            }
            open_feature::Value::Struct(fields)
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::context::value_to_json;
    use serde_json::json;

    #[test]
    fn json_converts_to_open_feature_values_and_back() {
        let json = json!({"i": 1, "big": u64::MAX, "f": 2.5, "s": "x", "b": true, "a": [1, [2]], "o": {"n": null}});
        let value = json_to_value(&json).unwrap();
        let struct_value = value.as_struct().unwrap();
        assert_eq!(struct_value.fields["i"], open_feature::Value::Int(1));
        #[allow(clippy::cast_precision_loss)]
        let big = u64::MAX as f64;
        assert_eq!(struct_value.fields["big"], open_feature::Value::Float(big));
        assert!(struct_value.fields["o"].as_struct().unwrap().fields.is_empty(), "null members are left out");
        let back = value_to_json(&value);
        assert_eq!(back["a"], json!([1, [2]]));
        assert_eq!(back["f"], json!(2.5));
        assert_eq!(json_to_value(&json!([1, null])), None);
    }

    #[test]
    fn error_kinds_map_to_open_feature_codes() {
        let general = EvaluationErrorCode::General(GENERAL.into());
        for (kind, code) in [
            (ErrorKind::FlagNotFound, EvaluationErrorCode::FlagNotFound),
            (ErrorKind::WrongType, EvaluationErrorCode::TypeMismatch),
            (ErrorKind::ClientNotReady, EvaluationErrorCode::ProviderNotReady),
            (ErrorKind::MalformedFlag, EvaluationErrorCode::ParseError),
            (ErrorKind::UserNotSpecified, general.clone()),
            (ErrorKind::Exception, general.clone()),
        ] {
            assert_eq!(error_code(kind), code, "{kind:?}");
        }
        assert_eq!(general.to_string(), "GENERAL");
    }
}
