//! With analytics events on, the common evaluation path allocates nothing: the summary counter is updated in place
//! and a context seen before is not copied. (Allocations are counted on the calling thread only.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use pennant_sdk::{Client, Config, Context, TestData};
use serde_json::json;

/// An events endpoint that accepts everything.
async fn events_server() -> String {
    let app = axum::Router::new().route("/bulk", axum::routing::post(|| async { axum::http::StatusCode::ACCEPTED }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn client(td: &TestData, events: bool) -> Client {
    let config = Config::builder("sdk-key")
        .test_data(td)
        .events_enabled(events)
        .events_uri(events_server().await)
        .flush_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let client = Client::start(config).unwrap();
    assert!(client.wait_for_initialization(Duration::from_secs(5)).await);
    client
}

fn count(f: impl FnOnce()) -> u64 {
    allocation_counter::measure(f).count_total
}

#[tokio::test]
async fn the_common_evaluation_path_does_not_allocate_with_events_on() {
    let td = TestData::new();
    td.update(td.flag("bool").variation_for_all(true));
    td.update(td.flag("number").value_for_all(json!(7)));
    td.update_flag_json(json!({"key": "with-prereq", "on": true, "variations": [false, true],
        "fallthrough": {"variation": 1}, "offVariation": 0, "prerequisites": [{"key": "bool", "variation": 0}]}))
        .unwrap();
    let user = Context::from_value(json!({"kind": "user", "key": "u", "email": "u@example.com"})).unwrap();
    let multi = Context::from_value(json!({"kind": "multi", "user": {"key": "u"}, "org": {"key": "o"}})).unwrap();

    for events in [false, true] {
        let client = client(&td, events).await;
        // Warm up: the first evaluation of each creates its counter and queues each context for an index event.
        let calls = |client: &Client| {
            assert!(client.bool_variation(black_box(&user), "bool", false));
            assert!(client.bool_variation(black_box(&user), "with-prereq", false));
            assert!(client.bool_variation(black_box(&multi), "bool", false));
            assert_eq!(client.int_variation(black_box(&user), "number", 0), 7);
            assert_eq!(client.float_variation(black_box(&user), "number", 0.0), 7.0);
            assert!(client.bool_variation(black_box(&user), "missing", true));
            assert!(!client.bool_variation_detail(black_box(&user), "missing", false).value);
        };
        calls(&client);
        let n = count(|| {
            for _ in 0..100 {
                calls(&client);
            }
        });
        assert_eq!(n, 0, "events {events}: {n} allocations");

        // The count is real: a context never seen before is copied and queued for its index event.
        let stranger = Context::user("stranger");
        let n = count(|| assert!(client.bool_variation(black_box(&stranger), "bool", false)));
        assert_eq!(n > 0, events, "a new context: {n} allocations");

        if events {
            // After a flush the counters are gone but their maps keep their room: the first evaluation of a flag in
            // the next interval does not allocate either (for a boolean default and a user context).
            client.flush().await.unwrap();
            let n = count(|| assert!(client.bool_variation(black_box(&user), "bool", false)));
            assert_eq!(n, 0, "after a flush: {n} allocations");
        }
        client.close().await;
    }
}
