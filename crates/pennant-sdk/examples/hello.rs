//! Connects to a Pennant node and prints a flag's value for one user, then again whenever a change of the flag (or
//! of a segment or prerequisite it uses) gives it a new value or reason.
//!
//! ```sh
//! PENNANT_SDK_KEY=sdk-… PENNANT_URL=http://127.0.0.1:8030 cargo run -p pennant-sdk --example hello -- my-flag
//! ```
//!
//! `PENNANT_URL` defaults to `pennant serve`'s address; the flag key (default `my-flag`) and the user key
//! (`PENNANT_USER`, default `example-user`) are optional. Stop it with Ctrl-C.

use std::time::Duration;

use pennant_sdk::{Client, Config, Context, DEFAULT_URI, DataSourceState};
use tokio::sync::broadcast::error::RecvError;

/// Prints the flag's value and reason, unless they are what was printed last.
fn print_value(client: &Client, context: &Context, flag_key: &str, last: &mut String) {
    let detail = client.json_variation_detail(context, flag_key, serde_json::Value::Null);
    let reason = serde_json::to_string(&detail.reason).unwrap_or_default();
    let line = format!("{flag_key} = {} ({reason})", detail.value);
    if line != *last {
        println!("{line}");
        *last = line;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sdk_key = std::env::var("PENNANT_SDK_KEY").map_err(|_| "set PENNANT_SDK_KEY to an environment's SDK key")?;
    let url = std::env::var("PENNANT_URL").unwrap_or_else(|_| DEFAULT_URI.to_owned());
    let user = std::env::var("PENNANT_USER").unwrap_or_else(|_| "example-user".to_owned());
    let flag_key = std::env::args().nth(1).unwrap_or_else(|| "my-flag".to_owned());

    let client = Client::start(Config::builder(sdk_key).service_uri(url.as_str()).build()?)?;
    // Subscribed before the data arrives, so no change is missed.
    let mut changes = client.flag_changes();
    let mut status = client.data_source_status_receiver();
    if !client.wait_for_initialization(Duration::from_secs(10)).await {
        eprintln!("no flag data from {url} yet: {:?}", client.data_source_status());
    }
    let context = Context::user(&user);
    let mut last = String::new();
    print_value(&client, &context, &flag_key, &mut last);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            changed = status.changed() => {
                if changed.is_err() {
                    break;
                }
                let now = status.borrow_and_update().clone();
                match now.last_error {
                    Some(error) if now.state != DataSourceState::Valid => {
                        eprintln!("data source: {:?} ({})", now.state, error.message);
                    }
                    _ => eprintln!("data source: {:?}", now.state),
                }
            }
            change = changes.recv() => match change {
                Ok(change) if change.key == flag_key => print_value(&client, &context, &flag_key, &mut last),
                Ok(_) => {}
                // Fell behind: some changes were missed, so print the current value.
                Err(RecvError::Lagged(_)) => print_value(&client, &context, &flag_key, &mut last),
                Err(RecvError::Closed) => break,
            },
        }
    }
    client.close().await;
    Ok(())
}
