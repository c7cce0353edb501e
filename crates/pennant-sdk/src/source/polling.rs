//! Polling: `GET {base_uri}/sdk/latest-all` at an interval, with `If-None-Match` so that unchanged data costs a
//! `304 Not Modified`.

use std::fmt;
use std::time::Duration;

use futures_util::StreamExt as _;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, ETAG, HeaderValue, IF_NONE_MATCH};

use super::body::{ReadError, lines};
use super::{DataSource, Failure, Shutdown, SourceFuture, describe, invalid_data, network_failure, status_failure};
use crate::config::{Config, endpoint};
use crate::data::FlagData;
use crate::status::DataSourceState;
use crate::updates::DataSourceUpdates;

/// The polling data source.
#[derive(Clone)]
pub(crate) struct PollingDataSource {
    http: reqwest::Client,
    url: String,
    sdk_key: String,
    read_timeout: Duration,
    interval: Duration,
}

impl fmt::Debug for PollingDataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PollingDataSource")
            .field("url", &self.url)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// What one poll brought.
#[derive(Debug)]
enum Poll {
    /// New data, and its ETag if the server sent one.
    Data(FlagData, Option<HeaderValue>),
    /// 304: what the client has is current.
    NotModified,
}

impl PollingDataSource {
    pub(crate) fn new(config: &Config, http: reqwest::Client, interval: Duration) -> PollingDataSource {
        PollingDataSource {
            http,
            url: endpoint(config.base_uri(), "sdk/latest-all"),
            sdk_key: config.sdk_key().to_owned(),
            read_timeout: config.read_timeout(),
            interval,
        }
    }

    async fn run_until_stopped(self, updates: DataSourceUpdates, mut shutdown: Shutdown) {
        let mut etag: Option<HeaderValue> = None;
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.wait() => return,
                _ = ticks.tick() => {}
            }
            let result = tokio::select! {
                biased;
                () = shutdown.wait() => return,
                result = self.poll(etag.as_ref()) => result,
            };
            match result {
                Ok(Poll::Data(data, tag)) => {
                    updates.init(data);
                    etag = tag;
                    updates.update_status(DataSourceState::Valid, None);
                }
                Ok(Poll::NotModified) => updates.update_status(DataSourceState::Valid, None),
                Err(Failure::Retry(error)) => {
                    tracing::warn!(url = %self.url, error = %error.message, "poll failed; retrying at the next interval");
                    updates.update_status(DataSourceState::Interrupted, Some(error));
                }
                Err(Failure::Stop(error)) => {
                    tracing::error!(url = %self.url, error = %error.message, "polling failed for good; no more flag updates");
                    updates.update_status(DataSourceState::Off, Some(error));
                    return;
                }
            }
        }
    }

    async fn poll(&self, etag: Option<&HeaderValue>) -> Result<Poll, Failure> {
        let mut request = self.http.get(&self.url).header(AUTHORIZATION, &self.sdk_key);
        if let Some(etag) = etag {
            request = request.header(IF_NONE_MATCH, etag);
        }
        let response = match tokio::time::timeout(self.read_timeout, request.send()).await {
            Err(_) => return Err(network_failure(format!("no response within {:?}", self.read_timeout))),
            Ok(Err(e)) => return Err(network_failure(format!("polling failed: {}", describe(&e)))),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED && etag.is_some() {
            return Ok(Poll::NotModified);
        }
        if !status.is_success() {
            return Err(status_failure(status, "polling"));
        }
        let tag = response.headers().get(ETAG).cloned();
        let mut body = Vec::new();
        let chunks = lines(response, self.read_timeout);
        let mut chunks = std::pin::pin!(chunks);
        while let Some(chunk) = chunks.next().await {
            match chunk {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(ReadError::Timeout(d)) => return Err(network_failure(format!("the response stalled for {d:?}"))),
                Err(e) => return Err(network_failure(describe(&e))),
            }
        }
        let data = FlagData::from_payload_json(&body).map_err(|e| invalid_data(e.to_string()))?;
        Ok(Poll::Data(data, tag))
    }
}

impl DataSource for PollingDataSource {
    fn run(&self, updates: DataSourceUpdates, shutdown: Shutdown) -> SourceFuture {
        Box::pin(self.clone().run_until_stopped(updates, shutdown))
    }
}
