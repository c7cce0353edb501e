//! What the processor tests share.
#![allow(dead_code, clippy::panic)]

use std::time::Duration;

/// Polls `done` every 5 ms until it holds; fails after 30 s, naming `what`.
pub async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
