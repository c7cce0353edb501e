//! Evaluates flags from a local JSON file with the file data source, and prints their values for one user again
//! whenever the file changes (checked every second). No server is needed.
//!
//! ```sh
//! echo '{"flagValues": {"banner": "blue", "new-checkout": true}}' > /tmp/flags.json
//! cargo run -p pennant-sdk --example file -- /tmp/flags.json
//! ```
//!
//! The file is LaunchDarkly's `/sdk/latest-all` JSON (`{"flags": …, "segments": …}`, which `curl -H
//! "Authorization: sdk-…" http://127.0.0.1:8030/sdk/latest-all` saves from a Pennant node), the `flagValues`
//! shorthand, or both; several files may be given. The user key is `PENNANT_USER` (default `example-user`). Edit
//! the file (or break it, and fix it) while this runs; stop it with Ctrl-C.

use pennant_sdk::{Client, Config, Context};

/// Every flag's value for `user`, by key.
fn print_values(client: &Client, user: &Context) {
    let data = client.flag_data();
    let mut keys: Vec<&str> = data.flags().map(|f| f.key.as_str()).collect();
    keys.sort_unstable();
    for key in keys {
        let detail = client.json_variation_detail(user, key, serde_json::Value::Null);
        println!("  {key} = {} ({})", detail.value, detail.reason.kind());
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        return Err("usage: file FLAGS.json [MORE.json …]".into());
    }
    let user = Context::user(&std::env::var("PENNANT_USER").unwrap_or_else(|_| "example-user".to_owned()));
    // Nothing to send analytics events to.
    let client = Client::start(Config::builder("").files(&paths).events_enabled(false).build()?)?;
    let mut data = client.data_updates();
    let mut status = client.data_source_status_receiver();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            changed = data.changed() => {
                if changed.is_err() {
                    break;
                }
                data.borrow_and_update();
                println!("flags from {}:", paths.join(", "));
                print_values(&client, &user);
            }
            changed = status.changed() => {
                if changed.is_err() {
                    break;
                }
                let now = status.borrow_and_update().clone();
                match now.last_error {
                    // A bad file: the values printed last are still served.
                    Some(error) if now.state != pennant_sdk::DataSourceState::Valid => {
                        println!("{:?}: {}", now.state, error.message);
                    }
                    _ => println!("{:?}", now.state),
                }
            }
        }
    }
    client.close().await;
    Ok(())
}
