//! The provider against the SDK's `TestData` (no network): every type, reasons, errors, status, multi-kind
//! contexts, and the OpenFeature API as an application uses it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use open_feature::provider::{FeatureProvider, ProviderStatus, ResolutionDetails};
use open_feature::{
    EvaluationContext, EvaluationContextFieldValue, EvaluationErrorCode, EvaluationReason, FlagMetadataValue,
    OpenFeature, StructValue, Value,
};
use pennant_openfeature::PennantProvider;
use pennant_sdk::{
    Client, Config, DataSource, DataSourceState, DataSourceUpdates, FlagData, Shutdown, SourceFuture, TestData,
};
use serde_json::json;
use tokio::sync::Notify;

/// Long enough never to fire on a healthy machine; only reached when something is broken.
const DEADLINE: Duration = Duration::from_secs(10);

fn test_data() -> TestData {
    let td = TestData::new();
    td.update(td.flag("bool").variation_for_all(true));
    td.update(td.flag("string").value_for_all(json!("hello")));
    td.update(td.flag("int").value_for_all(json!(42)));
    td.update(td.flag("float").value_for_all(json!(2.5)));
    td.update(td.flag("struct").value_for_all(json!({"limit": 3, "tags": ["a", "b"], "nested": {"on": true}})));
    td.update(td.flag("array").value_for_all(json!([1, 2])));
    td.update(td.flag("off").on(false));
    td.update(td.flag("targeted").variation_for_all(true).variation_for_key("user", "vip", false));
    td.update(td.flag("rule").variation_for_all(false).if_match("email", [json!("a@example.com")]).then_return(true));
    td.update(
        td.flag("org-rule")
            .variation_for_all(false)
            .if_match_context("org", "plan", [json!("enterprise")])
            .then_return(true),
    );
    td.update_flag_json(json!({"key": "prereq", "on": true, "variations": ["on", "off"], "offVariation": 1,
        "fallthrough": {"variation": 0}, "prerequisites": [{"key": "off", "variation": 0}]}))
        .unwrap();
    td.update_flag_json(json!({"key": "malformed", "on": true, "variations": [true, false],
        "fallthrough": {"variation": 7}}))
        .unwrap();
    td.update_flag_json(json!({"key": "off-no-variation", "on": false, "variations": [true, false],
        "fallthrough": {"variation": 0}}))
        .unwrap();
    td
}

/// A provider over `td`, initialised.
async fn provider(td: &TestData) -> PennantProvider {
    let client = Client::start(Config::builder("").test_data(td).build().unwrap()).unwrap();
    let mut provider = PennantProvider::new(client).with_initialization_timeout(DEADLINE);
    provider.initialize(&EvaluationContext::default()).await;
    assert_eq!(provider.status(), ProviderStatus::Ready);
    provider
}

fn user(key: &str) -> EvaluationContext {
    EvaluationContext::default().with_targeting_key(key)
}

fn metadata(details: &ResolutionDetails<impl Sized>, name: &str) -> Option<FlagMetadataValue> {
    details.flag_metadata.as_ref().and_then(|m| m.values.get(name).cloned())
}

fn string(value: &str) -> Option<FlagMetadataValue> {
    Some(FlagMetadataValue::String(value.to_owned()))
}

#[tokio::test]
async fn every_type_resolves_with_its_variant_and_reason() {
    let provider = provider(&test_data()).await;
    assert_eq!(provider.metadata().name, "pennant");
    let u = user("u");

    let b = provider.resolve_bool_value("bool", &u).await.unwrap();
    assert_eq!((b.value, b.variant.as_deref(), b.reason.clone()), (true, Some("0"), Some(EvaluationReason::Default)));
    assert_eq!(metadata(&b, "reasonKind"), string("FALLTHROUGH"));

    let s = provider.resolve_string_value("string", &u).await.unwrap();
    assert_eq!((s.value.as_str(), s.variant.as_deref()), ("hello", Some("0")));
    assert_eq!(s.reason, Some(EvaluationReason::Default));

    let i = provider.resolve_int_value("int", &u).await.unwrap();
    assert_eq!((i.value, i.variant.as_deref()), (42, Some("0")));
    let truncated = provider.resolve_int_value("float", &u).await.unwrap();
    assert_eq!(truncated.value, 2, "a non-integer is truncated, as LaunchDarkly's intVariation does");

    let f = provider.resolve_float_value("float", &u).await.unwrap();
    assert_eq!((f.value, f.reason), (2.5, Some(EvaluationReason::Default)));
    assert_eq!(provider.resolve_float_value("int", &u).await.unwrap().value, 42.0);

    let st = provider.resolve_struct_value("struct", &u).await.unwrap();
    let expected = StructValue::default()
        .with_field("limit", 3)
        .with_field("tags", vec!["a", "b"])
        .with_field("nested", StructValue::default().with_field("on", true));
    assert_eq!(st.value, expected);
    assert_eq!((st.variant.as_deref(), st.reason), (Some("0"), Some(EvaluationReason::Default)));
}

#[tokio::test]
async fn launchdarkly_reasons_map_to_open_feature_reasons() {
    let provider = provider(&test_data()).await;

    let off = provider.resolve_bool_value("off", &user("u")).await.unwrap();
    assert_eq!(
        (off.value, off.variant.as_deref(), off.reason.clone()),
        (false, Some("1"), Some(EvaluationReason::Disabled))
    );
    assert_eq!(metadata(&off, "reasonKind"), string("OFF"));

    let target = provider.resolve_bool_value("targeted", &user("vip")).await.unwrap();
    assert_eq!((target.value, target.variant.as_deref()), (false, Some("1")));
    assert_eq!(target.reason, Some(EvaluationReason::TargetingMatch));
    assert_eq!(metadata(&target, "reasonKind"), string("TARGET_MATCH"));
    let other = provider.resolve_bool_value("targeted", &user("someone")).await.unwrap();
    assert_eq!((other.value, other.reason), (true, Some(EvaluationReason::Default)));

    let alice = user("alice").with_custom_field("email", "a@example.com");
    let rule = provider.resolve_bool_value("rule", &alice).await.unwrap();
    assert_eq!((rule.value, rule.variant.as_deref()), (true, Some("0")));
    assert_eq!(rule.reason, Some(EvaluationReason::TargetingMatch));
    assert_eq!(metadata(&rule, "reasonKind"), string("RULE_MATCH"));
    assert_eq!(metadata(&rule, "ruleIndex"), Some(FlagMetadataValue::Int(0)));
    assert_eq!(metadata(&rule, "ruleId"), string("rule0"));
    assert_eq!(metadata(&rule, "inExperiment"), None);

    let prereq = provider.resolve_string_value("prereq", &user("u")).await.unwrap();
    assert_eq!((prereq.value.as_str(), prereq.variant.as_deref()), ("off", Some("1")), "the off variation");
    assert_eq!(prereq.reason, Some(EvaluationReason::Other("PREREQUISITE_FAILED".into())));
    assert_eq!(metadata(&prereq, "prerequisiteKey"), string("off"));
}

#[tokio::test]
async fn evaluation_errors_map_to_open_feature_error_codes() {
    let provider = provider(&test_data()).await;
    let u = user("u");

    let missing = provider.resolve_bool_value("missing", &u).await.unwrap_err();
    assert_eq!(missing.code, EvaluationErrorCode::FlagNotFound);
    assert!(missing.message.unwrap().contains("FLAG_NOT_FOUND"));

    for code in [
        provider.resolve_bool_value("string", &u).await.unwrap_err().code,
        provider.resolve_string_value("bool", &u).await.unwrap_err().code,
        provider.resolve_int_value("string", &u).await.unwrap_err().code,
        provider.resolve_float_value("struct", &u).await.unwrap_err().code,
        provider.resolve_struct_value("bool", &u).await.unwrap_err().code,
        provider.resolve_struct_value("array", &u).await.unwrap_err().code,
    ] {
        assert_eq!(code, EvaluationErrorCode::TypeMismatch);
    }

    let malformed = provider.resolve_bool_value("malformed", &u).await.unwrap_err();
    assert_eq!(malformed.code, EvaluationErrorCode::ParseError);

    // Off with no off variation: no value to serve, so the caller's default applies through an error.
    let no_variation = provider.resolve_bool_value("off-no-variation", &u).await.unwrap_err();
    assert_eq!(no_variation.code, EvaluationErrorCode::General("GENERAL".into()));
    assert!(no_variation.message.unwrap().contains("reason OFF"));
}

#[tokio::test]
async fn context_errors_are_targeting_key_missing_or_invalid_context() {
    let provider = provider(&test_data()).await;
    let anonymous = EvaluationContext::default().with_custom_field("email", "a@example.com");
    let error = provider.resolve_bool_value("bool", &anonymous).await.unwrap_err();
    assert_eq!(error.code, EvaluationErrorCode::TargetingKeyMissing);
    let error = provider.resolve_string_value("string", &EvaluationContext::default()).await.unwrap_err();
    assert_eq!(error.code, EvaluationErrorCode::TargetingKeyMissing);

    let bad_kind = user("u").with_custom_field("kind", "not a kind");
    assert_eq!(
        provider.resolve_bool_value("bool", &bad_kind).await.unwrap_err().code,
        EvaluationErrorCode::InvalidContext
    );
    // A `key` field stands in for the targeting key.
    let keyed = EvaluationContext::default().with_custom_field("key", "vip");
    assert!(!provider.resolve_bool_value("targeted", &keyed).await.unwrap().value);
}

#[tokio::test]
async fn a_rule_on_the_second_kind_of_a_multi_kind_context_matches() {
    let provider = provider(&test_data()).await;
    let multi = |plan: &str| {
        EvaluationContext::default()
            .with_custom_field("kind", "multi")
            .with_custom_field(
                "user",
                EvaluationContextFieldValue::new_struct(user("u1").with_custom_field("plan", "enterprise")),
            )
            .with_custom_field(
                "org",
                EvaluationContextFieldValue::new_struct(
                    StructValue::default().with_field("targetingKey", "acme").with_field("plan", plan),
                ),
            )
    };
    let hit = provider.resolve_bool_value("org-rule", &multi("enterprise")).await.unwrap();
    assert_eq!((hit.value, hit.variant.as_deref()), (true, Some("0")));
    assert_eq!(hit.reason, Some(EvaluationReason::TargetingMatch));
    assert_eq!(metadata(&hit, "ruleId"), string("rule0"));

    let miss = provider.resolve_bool_value("org-rule", &multi("pro")).await.unwrap();
    assert_eq!((miss.value, miss.reason), (false, Some(EvaluationReason::Default)));
    // The user's own `plan` does not count: the rule is on the org kind.
    let user_only = user("u1").with_custom_field("plan", "enterprise");
    assert!(!provider.resolve_bool_value("org-rule", &user_only).await.unwrap().value);
    // A single org context matches too.
    let org = EvaluationContext::default()
        .with_targeting_key("acme")
        .with_custom_field("kind", "org")
        .with_custom_field("plan", "enterprise");
    assert!(provider.resolve_bool_value("org-rule", &org).await.unwrap().value);
}

/// A data source that delivers (empty) data when its gate opens.
#[derive(Debug, Default)]
struct Gated {
    gate: Arc<Notify>,
}

impl DataSource for Gated {
    fn run(&self, updates: DataSourceUpdates, mut shutdown: Shutdown) -> SourceFuture {
        let gate = self.gate.clone();
        Box::pin(async move {
            tokio::select! {
                () = gate.notified() => {
                    updates.init(FlagData::default());
                    updates.update_status(DataSourceState::Valid, None);
                    shutdown.wait().await;
                }
                () = shutdown.wait() => {}
            }
        })
    }
}

#[tokio::test]
async fn before_data_the_provider_is_not_ready_and_a_timed_out_initialisation_is_an_error_until_data_comes() {
    let source = Arc::new(Gated::default());
    let gate = source.gate.clone();
    let client = Client::start(Config::builder("k").data_source(source).build().unwrap()).unwrap();
    let mut provider = PennantProvider::new(client.clone()).with_initialization_timeout(Duration::from_millis(20));
    let view = provider.clone();
    assert_eq!(provider.status(), ProviderStatus::NotReady);
    let error = provider.resolve_bool_value("bool", &user("u")).await.unwrap_err();
    assert_eq!(error.code, EvaluationErrorCode::ProviderNotReady);

    provider.initialize(&EvaluationContext::default()).await;
    assert_eq!(provider.status(), ProviderStatus::Error, "timed out");
    assert_eq!(view.status(), ProviderStatus::Error, "clones share the outcome");
    assert_eq!(
        provider.resolve_int_value("n", &user("u")).await.unwrap_err().code,
        EvaluationErrorCode::ProviderNotReady
    );

    // The data arrives later: the status follows the client.
    gate.notify_one();
    let mut status = client.data_source_status_receiver();
    tokio::time::timeout(DEADLINE, status.wait_for(|s| s.state == DataSourceState::Valid)).await.unwrap().unwrap();
    assert_eq!(view.status(), ProviderStatus::Ready);
    assert_eq!(
        provider.resolve_bool_value("bool", &user("u")).await.unwrap_err().code,
        EvaluationErrorCode::FlagNotFound
    );

    // Stopped with data: the last data is served, and it is stale.
    client.close().await;
    assert_eq!(view.status(), ProviderStatus::STALE);
}

#[tokio::test]
async fn a_client_stopped_without_data_is_an_error_at_once() {
    let client = Client::start(Config::builder("k").data_source(Arc::new(Gated::default())).build().unwrap()).unwrap();
    client.close().await;
    let mut provider = PennantProvider::new(client).with_initialization_timeout(DEADLINE);
    provider.initialize(&EvaluationContext::default()).await;
    assert_eq!(provider.status(), ProviderStatus::Error);
}

#[tokio::test]
async fn an_application_evaluates_through_the_open_feature_api() {
    // A named provider: the OpenFeature API is a process-wide singleton, shared with any other test.
    const NAME: &str = "pennant-openfeature-tests";
    let td = test_data();
    let client = Client::start(Config::builder("").test_data(&td).build().unwrap()).unwrap();
    let provider = PennantProvider::new(client);
    let view = provider.clone();

    let mut api = OpenFeature::singleton_mut().await;
    api.set_named_provider(NAME, provider).await;
    assert_eq!(api.named_provider_metadata(NAME).await.unwrap().name, "pennant");
    let mut flags = api.create_named_client(NAME);
    drop(api);
    assert_eq!(view.status(), ProviderStatus::Ready, "set_named_provider initialised it");
    // Subscribed once initialised: the first data's flags are not announced to it.
    let mut changes = view.flag_changes();

    // The client's context is merged into each evaluation's.
    flags.set_evaluation_context(user("alice").with_custom_field("email", "a@example.com"));
    assert!(flags.get_bool_value("rule", None, None).await.unwrap());
    let details = flags.get_bool_details("rule", None, None).await.unwrap();
    assert_eq!((details.variant.as_deref(), details.reason), (Some("0"), Some(EvaluationReason::TargetingMatch)));
    assert_eq!(details.flag_metadata.values.get("ruleId"), string("rule0").as_ref());
    assert!(
        !flags
            .get_bool_value("rule", Some(&user("bob").with_custom_field("email", "b@example.com")), None)
            .await
            .unwrap()
    );

    assert_eq!(flags.get_string_value("string", None, None).await.unwrap(), "hello");
    assert_eq!(flags.get_int_value("int", None, None).await.unwrap(), 42);
    assert_eq!(flags.get_float_value("float", None, None).await.unwrap(), 2.5);
    let limits: StructValue = flags.get_struct_value("struct", None, None).await.unwrap();
    assert_eq!(limits.fields.get("limit"), Some(&Value::Int(3)));

    // Errors reach the application, which serves its default.
    let missing = flags.get_bool_value("missing", None, None).await;
    assert_eq!(missing.as_ref().unwrap_err().code, EvaluationErrorCode::FlagNotFound);
    assert!(missing.unwrap_or(true));
    assert_eq!(flags.get_int_value("string", None, None).await.unwrap_err().code, EvaluationErrorCode::TypeMismatch);

    // No provider events in open-feature 0.3: changes are observed through the SDK.
    td.update(td.flag("string").value_for_all(json!("bonjour")));
    let change = tokio::time::timeout(DEADLINE, changes.recv()).await.unwrap().unwrap();
    assert_eq!(change.key, "string");
    assert_eq!(flags.get_string_value("string", None, None).await.unwrap(), "bonjour");
}

/// The next provider event, within the deadline.
async fn next_event(
    events: &mut tokio::sync::mpsc::Receiver<pennant_openfeature::ProviderEvent>,
) -> pennant_openfeature::ProviderEvent {
    tokio::time::timeout(DEADLINE, events.recv()).await.expect("no provider event before the deadline").expect("ended")
}

#[tokio::test]
async fn provider_events_follow_the_data_source_and_flag_changes() {
    use pennant_openfeature::ProviderEvent;
    let source = Arc::new(Gated::default());
    let gate = source.gate.clone();
    let client = Client::start(Config::builder("k").data_source(source).build().unwrap()).unwrap();
    let provider = PennantProvider::new(client.clone());
    let mut events = provider.events();
    gate.notify_one();
    assert_eq!(next_event(&mut events).await, ProviderEvent::Ready);

    // Flags changed: one event with every affected key.
    let td = test_data();
    let with_data = Client::start(Config::builder("k").test_data(&td).build().unwrap()).unwrap();
    assert!(with_data.wait_for_initialization(DEADLINE).await);
    let provider = PennantProvider::new(with_data.clone());
    let mut events = provider.events();
    assert_eq!(next_event(&mut events).await, ProviderEvent::Ready, "ready at once when the data is there");
    td.update(td.flag("bool").variation_for_all(false));
    match next_event(&mut events).await {
        ProviderEvent::ConfigurationChanged { flags_changed } => assert!(flags_changed.contains(&"bool".to_owned())),
        other => panic!("expected a configuration change, got {other:?}"),
    }
    // Closed with data: the last data is served, stale.
    with_data.close().await;
    assert!(matches!(next_event(&mut events).await, ProviderEvent::Stale { .. }));
    assert!(tokio::time::timeout(DEADLINE, events.recv()).await.unwrap().is_none(), "the subscription ends");
    client.close().await;
}

#[tokio::test]
async fn a_rejected_key_is_a_provider_error_event() {
    use pennant_openfeature::ProviderEvent;
    let client = Client::start(Config::builder("k").data_source(Arc::new(Gated::default())).build().unwrap()).unwrap();
    let provider = PennantProvider::new(client.clone());
    let mut events = provider.events();
    client.close().await;
    assert!(matches!(next_event(&mut events).await, ProviderEvent::Error { .. }));
}
