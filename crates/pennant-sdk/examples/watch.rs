//! Connects to a Pennant node and prints every flag change (with the flag's new value for one user) and every
//! change of the data source's status, until Ctrl-C.
//!
//! ```sh
//! PENNANT_SDK_KEY=sdk-… PENNANT_URL=http://127.0.0.1:8030 cargo run -p pennant-sdk --example watch
//! ```
//!
//! `PENNANT_URL` defaults to `pennant serve`'s address, the user key (`PENNANT_USER`) to `example-user`. Change a
//! flag in the UI or through the REST API, or stop and restart the server, and watch the lines come.

use std::time::Duration;

use pennant_sdk::{Client, Config, Context, DEFAULT_URI, DataSourceStatus};
use tokio::sync::broadcast::error::RecvError;

fn print_status(status: &DataSourceStatus) {
    match &status.last_error {
        Some(error) => println!("status: {:?} (last error: {})", status.state, error.message),
        None => println!("status: {:?}", status.state),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sdk_key = std::env::var("PENNANT_SDK_KEY").map_err(|_| "set PENNANT_SDK_KEY to an environment's SDK key")?;
    let url = std::env::var("PENNANT_URL").unwrap_or_else(|_| DEFAULT_URI.to_owned());
    let user = Context::user(&std::env::var("PENNANT_USER").unwrap_or_else(|_| "example-user".to_owned()));

    let client = Client::start(Config::builder(sdk_key).service_uri(url.as_str()).build()?)?;
    // Subscribed before the data arrives, so the first data set's flags are listed as changes too.
    let mut changes = client.flag_changes();
    let mut status = client.data_source_status_receiver();
    print_status(&status.borrow_and_update());
    if !client.wait_for_initialization(Duration::from_secs(10)).await {
        eprintln!("no flag data from {url} yet; still trying");
    }
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            changed = status.changed() => {
                if changed.is_err() {
                    break;
                }
                print_status(&status.borrow_and_update());
            }
            change = changes.recv() => match change {
                Ok(change) => {
                    let detail = client.json_variation_detail(&user, &change.key, serde_json::Value::Null);
                    println!("changed: {} = {} ({})", change.key, detail.value, detail.reason.kind());
                }
                Err(RecvError::Lagged(missed)) => println!("fell behind: {missed} changes not shown"),
                Err(RecvError::Closed) => break,
            },
        }
    }
    client.close().await;
    Ok(())
}
