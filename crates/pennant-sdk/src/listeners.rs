//! Change listeners on top of [`Client::flag_changes`]: one flag's changes, and one flag's value for one context.

use pennant_eval::{Context, Store as _};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::client::Client;
use crate::updates::FlagChange;

/// Changes of one flag (see [`Client::flag_key_changes`]).
#[derive(Debug)]
pub struct FlagKeyChanges {
    key: String,
    changes: broadcast::Receiver<FlagChange>,
}

impl FlagKeyChanges {
    /// Waits for the flag's next change; `None` once the client is gone. A listener that fell behind is told of a
    /// change (it may have missed one).
    pub async fn recv(&mut self) -> Option<FlagChange> {
        loop {
            match self.changes.recv().await {
                Ok(change) if change.key == self.key => return Some(change),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => return Some(FlagChange { key: self.key.clone() }),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// A flag's value for one context, before and after a change.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FlagValueChange {
    /// The flag's key.
    pub key: String,
    /// The value before; `None` when the flag did not exist or served no variation (the caller's default).
    pub old_value: Option<Value>,
    /// The value now; `None` as above.
    pub new_value: Option<Value>,
}

/// Changes of one flag's value for one context (see [`Client::flag_value_changes`]).
#[derive(Debug)]
pub struct FlagValueChanges {
    client: Client,
    context: Context,
    last: Option<Value>,
    changes: FlagKeyChanges,
}

impl FlagValueChanges {
    /// Waits until the flag's value for the context differs from the last one seen; `None` once the client is
    /// gone. Changes of the flag that leave the value as it was are skipped.
    pub async fn recv(&mut self) -> Option<FlagValueChange> {
        loop {
            let change = self.changes.recv().await?;
            let value = current_value(&self.client, &change.key, &self.context);
            if value != self.last {
                let old_value = std::mem::replace(&mut self.last, value.clone());
                return Some(FlagValueChange { key: change.key, old_value, new_value: value });
            }
        }
    }

    /// The value last seen (at creation, then after each change returned).
    pub fn value(&self) -> Option<&Value> {
        self.last.as_ref()
    }
}

/// The flag's value for the context now, evaluated without analytics events (watching is not using the flag).
fn current_value(client: &Client, key: &str, context: &Context) -> Option<Value> {
    let data = client.flag_data();
    let flag = data.flag(key).filter(|f| !f.deleted)?;
    pennant_eval::evaluate(&*data, flag, context).value.cloned()
}

impl Client {
    /// Changes of the flag `key`: each time it, or a flag or segment it depends on, changes.
    pub fn flag_key_changes(&self, key: &str) -> FlagKeyChanges {
        FlagKeyChanges { key: key.to_owned(), changes: self.flag_changes() }
    }

    /// Changes of the flag `key`'s value for `context` (LaunchDarkly's "flag value change listener"): the value
    /// is evaluated now and again after each change of the flag, without analytics events, and each difference is
    /// reported with the old and new values.
    pub fn flag_value_changes(&self, key: &str, context: Context) -> FlagValueChanges {
        let changes = self.flag_key_changes(key);
        let last = current_value(self, key, &context);
        FlagValueChanges { client: self.clone(), context, last, changes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, TestData};
    use serde_json::json;
    use std::time::Duration;

    const DEADLINE: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn key_and_value_listeners_see_only_what_concerns_them() {
        let td = TestData::new();
        td.update(td.flag("a").variation_for_all(true));
        td.update(td.flag("b").variation_for_all(true));
        td.update_flag_json(json!({"key": "c", "on": true, "variations": ["x", "y"], "fallthrough": {"variation": 0},
            "prerequisites": [{"key": "a", "variation": 0}], "offVariation": 1}))
            .unwrap();
        let client = Client::start(Config::builder("k").test_data(&td).build().unwrap()).unwrap();
        assert!(client.wait_for_initialization(DEADLINE).await);
        let mut a = client.flag_key_changes("a");
        let mut c_for_ann = client.flag_value_changes("c", Context::user("ann"));
        assert_eq!(c_for_ann.value(), Some(&json!("x")));

        td.update(td.flag("b").variation_for_all(false));
        td.update(td.flag("a").variation_for_all(false));
        let change = tokio::time::timeout(DEADLINE, a.recv()).await.unwrap().unwrap();
        assert_eq!(change.key, "a", "b's change was skipped");
        // c's prerequisite a now fails: c serves its off variation.
        let change = tokio::time::timeout(DEADLINE, c_for_ann.recv()).await.unwrap().unwrap();
        assert_eq!((change.old_value, change.new_value), (Some(json!("x")), Some(json!("y"))));

        // A change of c that keeps ann's value is not reported; the next real change is.
        td.update_flag_json(json!({"key": "c", "on": true, "variations": ["x", "y"], "fallthrough": {"variation": 0},
            "prerequisites": [{"key": "a", "variation": 0}], "offVariation": 1, "salt": "new"}))
            .unwrap();
        td.update(td.flag("a").variation_for_all(true));
        let change = tokio::time::timeout(DEADLINE, c_for_ann.recv()).await.unwrap().unwrap();
        assert_eq!((change.old_value, change.new_value), (Some(json!("y")), Some(json!("x"))));
        client.close().await;
    }
}
