//! `pennant-load events`: posts realistic LaunchDarkly SDK event flushes to `POST /bulk` with C requests in
//! flight, for D seconds or B batches, and measures accepted events/s, the acknowledgement (`202`) latency, and the
//! end-to-end lag: after the last `202`, how long until the insights API reports exactly the evaluations the
//! summaries carried.
//!
//! Every batch is what a server-side SDK flushes: one `summary` event (per-flag, per-variation counters over up to
//! 20 of the `--flags` keys) and a `--mix` of `index`, `feature` and `custom` events (30/40/30 % by default) with
//! user, org and multi-kind contexts. A pool of `--distinct-batches` bodies (gzipped in the `--gzip-ratio` share) is
//! built before the clock starts, with context keys unique across the pool; sends cycle through the pool, each with
//! its own `X-LaunchDarkly-Payload-ID` (so a run longer than the pool sees its contexts again, as a service sees
//! returning users). The tool knows how many evaluations of each flag the accepted batches carried; counts are kept
//! per flag key, so the flags need not exist.
//!
//! Counts are read with `GET /api/v2/insights/{project}/{env}/flags/{flag}/evaluations` (minute buckets) before
//! the run (the baseline, so a server that already has counts for these keys is fine as long as nothing else is
//! sending to them) and polled after it. The run fails if the counts do not reach baseline + sent within
//! `--lag-timeout`, or if they ever exceed it (double counting).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::Error;
use crate::measure::{ms, percentile_ms, sample_server, unix_nanos};

/// Flags in one summary event at most (a realistic flush evaluates a handful to a few dozen flags).
const FLAGS_PER_SUMMARY: usize = 20;

/// Arguments of `pennant-load events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Base URL of the server (events go to `<url>/bulk`, count queries to `<url>/api/v2/insights/…`).
    #[arg(long, default_value = "http://127.0.0.1:8030")]
    url: String,
    /// Server-side SDK key of the environment the events are for.
    #[arg(long, env = "PENNANT_SDK_KEY")]
    sdk_key: String,
    /// API token that may read the project's insights.
    #[arg(long, env = "PENNANT_API_TOKEN")]
    api_token: String,
    /// Project key of the SDK key.
    #[arg(long, default_value = "default")]
    project: String,
    /// Environment key of the SDK key.
    #[arg(long, default_value = "production")]
    environment: String,
    /// Flag keys the summaries report on: `<flag-prefix>0` … `<flag-prefix>N-1` (they need not exist).
    #[arg(long, default_value_t = 20)]
    flags: usize,
    /// Prefix of the flag keys (letters, digits, `-`, `_`, `.`).
    #[arg(long, default_value = "load-")]
    flag_prefix: String,
    /// Events per batch: one summary plus index, feature and custom events.
    #[arg(long, default_value_t = 100)]
    events_per_batch: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds to send for (the default when --batches is not given: 10).
    #[arg(long, conflicts_with = "batches")]
    duration: Option<f64>,
    /// Batches to send in all.
    #[arg(long)]
    batches: Option<u64>,
    /// Send at this many events per second (batch `n` is due `n / rate × events-per-batch` seconds after the
    /// start) instead of as fast as the server answers. Latency is measured from when a batch was due, so a
    /// server that falls behind the schedule shows it in the percentiles (no coordinated omission); give
    /// --concurrency enough room (rate × latency / events-per-batch).
    #[arg(long)]
    rate: Option<f64>,
    /// Share of batches sent gzipped (`Content-Encoding: gzip`), 0 to 1.
    #[arg(long, default_value_t = 0.25)]
    gzip_ratio: f64,
    /// Shares of the events after the summary, in percent: `index=30,feature=40,custom=30` (kinds left out get
    /// none). Index events feed the contexts index, custom events are stored one by one, feature events only move
    /// the flags' last-evaluated times.
    #[arg(long, default_value = "index=30,feature=40,custom=30")]
    mix: Mix,
    /// Distinct bodies built before the run and cycled through (at most --batches).
    #[arg(long, default_value_t = 2048)]
    distinct_batches: usize,
    /// Seconds after the last acknowledgement within which the counts must match.
    #[arg(long, default_value_t = 60.0)]
    lag_timeout: f64,
    /// After the counts matched, wait this long (ms) and check once more that they did not grow further.
    #[arg(long, default_value_t = 500)]
    settle_ms: u64,
    /// Milliseconds between two polls of the counts after the last acknowledgement.
    #[arg(long, default_value_t = 20)]
    poll_ms: u64,
    /// PID of a server process to measure (repeatable; RSS and CPU are summed).
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// Seconds one request may take.
    #[arg(long, default_value_t = 30)]
    request_timeout: u64,
}

impl EventsArgs {
    fn check(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::Args(m.to_owned()));
        if !self.url.starts_with("http://") {
            return bad("--url must be plain http://host:port");
        }
        if self.flags == 0 || self.events_per_batch == 0 || self.concurrency == 0 || self.distinct_batches == 0 {
            return bad("--flags, --events-per-batch, --concurrency and --distinct-batches must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.gzip_ratio) {
            return bad("--gzip-ratio must be between 0 and 1");
        }
        if self.duration.is_some_and(|d| !(d.is_finite() && d > 0.0)) || self.batches == Some(0) {
            return bad("--duration and --batches must be positive");
        }
        if !(self.lag_timeout.is_finite() && self.lag_timeout > 0.0) {
            return bad("--lag-timeout must be positive");
        }
        if self.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
            return bad("--rate must be a positive number of events per second");
        }
        if !self.flag_prefix.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            return bad("--flag-prefix may hold only letters, digits, '-', '_' and '.'");
        }
        Ok(())
    }

    fn flag_key(&self, index: usize) -> String {
        format!("{}{index}", self.flag_prefix)
    }
}

/// The kinds of the events after a batch's summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Index,
    Feature,
    Custom,
}

/// Event mix (`--mix`): percentages of index, feature and custom events.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mix {
    index: f64,
    feature: f64,
    custom: f64,
}

impl std::str::FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Mix, String> {
        let mut mix = Mix { index: 0.0, feature: 0.0, custom: 0.0 };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (kind, share) = part.split_once('=').ok_or_else(|| format!("{part:?} is not KIND=PERCENT"))?;
            let share: f64 = share
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("{part:?}: the share must be a number, 0 or more"))?;
            match kind.trim() {
                "index" => mix.index = share,
                "feature" => mix.feature = share,
                "custom" => mix.custom = share,
                other => return Err(format!("unknown event kind {other:?} (index, feature, custom)")),
            }
        }
        let total = mix.index + mix.feature + mix.custom;
        if total <= 0.0 {
            return Err("the mix needs at least one kind with a share above 0".into());
        }
        Ok(Mix {
            index: mix.index * 100.0 / total,
            feature: mix.feature * 100.0 / total,
            custom: mix.custom * 100.0 / total,
        })
    }
}

impl Mix {
    /// The kind of event `i` (1-based after the summary): slots 0–99 visited in a scattered order, so that any
    /// hundred consecutive events follow the shares exactly and shorter batches approximately.
    fn kind(&self, i: usize) -> Kind {
        let slot = ((i * 61) % 100) as f64;
        if slot < self.index {
            Kind::Index
        } else if slot < self.index + self.feature {
            Kind::Feature
        } else {
            Kind::Custom
        }
    }

    fn describe(&self) -> String {
        format!("index {:.0} %, feature {:.0} %, custom {:.0} %", self.index, self.feature, self.custom)
    }
}

/// One pre-built batch.
#[derive(Debug)]
struct Prebuilt {
    /// The body as sent (gzipped or not).
    body: Bytes,
    gzip: bool,
    events: u64,
    /// Size of the JSON before compression.
    json_bytes: usize,
    /// (flag index, evaluations) the summary carries.
    evaluations: Vec<(usize, u64)>,
}

fn context(run: &str, b: usize, i: usize) -> Value {
    match i % 3 {
        0 => json!({"kind": "user", "key": format!("user-{run}-{b}-{i}"), "name": format!("User {b} {i}"),
                    "email": format!("user{b}.{i}@example.com"), "country": "NZ", "plan": "gold"}),
        1 => json!({"kind": "org", "key": format!("org-{run}-{b}-{i}"), "name": "Acme Ltd", "tier": 3,
                    "_meta": {"redactedAttributes": ["billingEmail"]}}),
        _ => json!({"kind": "multi", "user": {"key": format!("user-{run}-{b}-{i}"), "anonymous": true},
                    "device": {"key": format!("dev-{run}-{b}-{i}"), "os": "android", "version": "14.1"}}),
    }
}

/// Batch `b` of the pool: its JSON body and the evaluations its summary counts per flag index.
fn build_batch(args: &EventsArgs, run: &str, b: usize, now_ms: i64) -> (Vec<u8>, Vec<(usize, u64)>) {
    let in_summary = args.flags.min(FLAGS_PER_SUMMARY);
    let mut features = serde_json::Map::new();
    let mut evaluations = Vec::with_capacity(in_summary);
    for j in 0..in_summary {
        // Distinct flags (j < flags), a different window for each batch when there are more flags than fit.
        let flag = (b * 7 + j) % args.flags;
        let on = 1 + ((b * 31 + j * 17) % 50) as u64;
        let off = ((b * 13 + j * 7) % 20) as u64;
        let mut counters = vec![json!({"variation": 0, "version": 12, "value": true, "count": on})];
        if off > 0 {
            counters.push(json!({"variation": 1, "version": 12, "value": false, "count": off}));
        }
        // Now and then an SDK evaluated a flag it did not know (yet): counted without a variation.
        let unknown = u64::from(j == 0 && b.is_multiple_of(10));
        if unknown > 0 {
            counters.push(json!({"unknown": true, "value": false, "count": unknown}));
        }
        features.insert(
            args.flag_key(flag),
            json!({"default": false, "contextKinds": ["user", "org"], "counters": counters}),
        );
        evaluations.push((flag, on + off + unknown));
    }
    let mut events = vec![json!({"kind": "summary", "startDate": now_ms - 60_000, "endDate": now_ms,
        "features": features})];
    for i in 1..args.events_per_batch {
        let t = now_ms - i as i64;
        events.push(match args.mix.kind(i) {
            Kind::Index => json!({"kind": "index", "creationDate": t, "context": context(run, b, i)}),
            Kind::Feature => json!({"kind": "feature", "creationDate": t, "key": args.flag_key((b + i) % args.flags),
                "version": 12, "variation": i % 2, "value": i % 2 == 0, "default": false,
                "context": context(run, b, i), "reason": {"kind": "RULE_MATCH", "ruleIndex": 0, "ruleId": "a4b1c2d3"}}),
            Kind::Custom => json!({"kind": "custom", "creationDate": t, "key": "checkout-completed",
                "contextKeys": {"user": format!("user-{run}-{b}-{i}")}, "metricValue": 42.5 + i as f64,
                "data": {"cart": {"items": 3, "currency": "NZD"}}}),
        });
    }
    (serde_json::to_vec(&Value::Array(events)).unwrap_or_default(), evaluations)
}

fn gzip(data: &[u8]) -> Result<Vec<u8>, Error> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 4), flate2::Compression::fast());
    encoder.write_all(data)?;
    Ok(encoder.finish()?)
}

/// Whether pool entry `i` is gzipped: spreads the ratio evenly (exactly `ratio` of any whole pool).
fn gzipped(i: usize, ratio: f64) -> bool {
    ((i + 1) as f64 * ratio).floor() > (i as f64 * ratio).floor()
}

fn build_pool(args: &EventsArgs, run: &str, size: usize, now_ms: i64) -> Result<Vec<Prebuilt>, Error> {
    let mut pool = Vec::with_capacity(size);
    for b in 0..size {
        let (json, evaluations) = build_batch(args, run, b, now_ms);
        let gz = gzipped(b, args.gzip_ratio);
        let json_bytes = json.len();
        let body = if gz { gzip(&json)? } else { json };
        pool.push(Prebuilt {
            body: Bytes::from(body),
            gzip: gz,
            events: args.events_per_batch as u64,
            json_bytes,
            evaluations,
        });
    }
    Ok(pool)
}

/// A UUID-shaped payload ID, unique per run and sequence number.
fn payload_id(run: u64, seq: u64) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (run >> 32) as u32,
        (run >> 16) as u16,
        run & 0xfff,
        (seq >> 48) & 0xfff,
        seq & 0xffff_ffff_ffff
    )
}

struct Shared {
    client: reqwest::Client,
    bulk_url: String,
    sdk_key: String,
    pool: Vec<Prebuilt>,
    run: u64,
    next: AtomicU64,
    batches: Option<u64>,
    end: Option<Instant>,
    /// Set on an answer that retrying cannot fix (401, 400, 413…): every worker stops.
    abort: AtomicBool,
    flags: usize,
    /// With --rate: when sending started and the time between two batches.
    schedule: Option<(Instant, Duration)>,
}

#[derive(Debug, Default)]
struct WorkerStats {
    sent: u64,
    sent_events: u64,
    bytes_sent: u64,
    accepted: u64,
    accepted_events: u64,
    rejected_503: u64,
    other_status: u64,
    errors: u64,
    first_error: Option<String>,
    /// Acknowledgement latency of every `202`.
    latencies_ns: Vec<u64>,
    /// Evaluations per flag in accepted batches.
    evaluations: Vec<u64>,
    /// Evaluations per flag in batches whose fate is unknown (the request failed without an answer).
    unknown: Vec<u64>,
    last_ack: Option<Instant>,
}

impl WorkerStats {
    fn merge(&mut self, o: WorkerStats) {
        self.sent += o.sent;
        self.sent_events += o.sent_events;
        self.bytes_sent += o.bytes_sent;
        self.accepted += o.accepted;
        self.accepted_events += o.accepted_events;
        self.rejected_503 += o.rejected_503;
        self.other_status += o.other_status;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        self.latencies_ns.extend(o.latencies_ns);
        for (a, b) in self.evaluations.iter_mut().zip(o.evaluations) {
            *a += b;
        }
        for (a, b) in self.unknown.iter_mut().zip(o.unknown) {
            *a += b;
        }
        self.last_ack = match (self.last_ack, o.last_ack) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

async fn send_loop(shared: Arc<Shared>) -> WorkerStats {
    let mut stats =
        WorkerStats { evaluations: vec![0; shared.flags], unknown: vec![0; shared.flags], ..WorkerStats::default() };
    loop {
        if shared.abort.load(Ordering::Relaxed) || shared.end.is_some_and(|end| Instant::now() >= end) {
            break;
        }
        let seq = shared.next.fetch_add(1, Ordering::Relaxed);
        if shared.batches.is_some_and(|n| seq >= n) {
            break;
        }
        let due = shared.schedule.map(|(start, every)| start + every.mul_f64(seq as f64));
        if let Some(due) = due {
            if shared.end.is_some_and(|end| due >= end) {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
        }
        let batch = &shared.pool[(seq % shared.pool.len() as u64) as usize];
        let mut request = shared
            .client
            .post(&shared.bulk_url)
            .header("Authorization", &shared.sdk_key)
            .header("Content-Type", "application/json")
            .header("User-Agent", "pennant-load/events")
            .header("X-LaunchDarkly-Event-Schema", "4")
            .header("X-LaunchDarkly-Payload-ID", payload_id(shared.run, seq));
        if batch.gzip {
            request = request.header("Content-Encoding", "gzip");
        }
        stats.sent += 1;
        stats.sent_events += batch.events;
        stats.bytes_sent += batch.body.len() as u64;
        let started = due.unwrap_or_else(Instant::now);
        let outcome = async {
            let response = request.body(batch.body.clone()).send().await?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, retry_after, body))
        }
        .await;
        let done = Instant::now();
        match outcome {
            Ok((202, _, _)) => {
                stats.accepted += 1;
                stats.accepted_events += batch.events;
                stats.latencies_ns.push(u64::try_from((done - started).as_nanos()).unwrap_or(u64::MAX));
                for &(flag, n) in &batch.evaluations {
                    stats.evaluations[flag] += n;
                }
                stats.last_ack = Some(done);
            }
            Ok((503, retry_after, _)) => {
                // What an SDK does: wait (here at most a second) and carry on; the batch is not retried.
                stats.rejected_503 += 1;
                let wait = Duration::from_secs(retry_after.unwrap_or(1)).min(Duration::from_secs(1));
                tokio::time::sleep(wait).await;
            }
            Ok((status, _, body)) => {
                stats.other_status += 1;
                if stats.first_error.is_none() {
                    stats.first_error =
                        Some(format!("POST /bulk answered {status}: {}", String::from_utf8_lossy(&body)));
                }
                shared.abort.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                stats.errors += 1;
                for &(flag, n) in &batch.evaluations {
                    stats.unknown[flag] += n;
                }
                if stats.first_error.is_none() {
                    stats.first_error = Some(format!("POST /bulk: {e}"));
                }
            }
        }
    }
    stats
}

/// Reads the flags' evaluation totals through the insights API.
struct Counter {
    client: reqwest::Client,
    base: String,
    token: String,
    /// Per flag: `/api/v2/insights/{project}/{env}/flags/{flag}/evaluations`.
    paths: Vec<String>,
    from: i64,
}

impl Counter {
    /// One flag's evaluations, minute buckets from `from` to an hour from now. A `429` (the API's per-token rate
    /// limit) is waited out as its `Retry-After` says, a few times.
    async fn total(&self, flag: usize) -> Result<u64, Error> {
        let path = &self.paths[flag];
        let mut attempts = 0;
        loop {
            let to = now_ms() + 3_600_000;
            let response = self
                .client
                .get(format!("{}{path}?granularity=minute&from={}&to={to}", self.base, self.from))
                .header("Authorization", &self.token)
                .send()
                .await?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let text = response.text().await?;
            if status == 429 && attempts < 10 {
                attempts += 1;
                tokio::time::sleep(Duration::from_secs(retry_after.unwrap_or(1).clamp(1, 10))).await;
                continue;
            }
            if status != 200 {
                return Err(Error::Api { method: "GET", path: path.clone(), status, body: text });
            }
            let doc: Value = serde_json::from_str(&text)?;
            return doc["total"].as_u64().ok_or_else(|| Error::Api {
                method: "GET",
                path: path.clone(),
                status,
                body: format!("no total in {text}"),
            });
        }
    }

    /// Every flag's total.
    async fn totals(&self) -> Result<Vec<u64>, Error> {
        let mut out = Vec::with_capacity(self.paths.len());
        for flag in 0..self.paths.len() {
            out.push(self.total(flag).await?);
        }
        Ok(out)
    }
}

fn now_ms() -> i64 {
    i64::try_from(unix_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// A value of the server's Prometheus text (`name value` or `name{…} value`, summed over label sets).
async fn scrape_metric(client: &reqwest::Client, base: &str, name: &str) -> Option<f64> {
    let text = client.get(format!("{base}/metrics")).send().await.ok()?.text().await.ok()?;
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

fn self_cpu_seconds() -> Option<f64> {
    sample_server(&[std::process::id()]).ok().flatten().map(|s| s.cpu_seconds)
}

/// The result, printed as a table and as one JSON line.
#[derive(Debug, Serialize)]
struct Report {
    tool: &'static str,
    url: String,
    project: String,
    environment: String,
    flags: usize,
    events_per_batch: usize,
    mix: String,
    concurrency: usize,
    /// --rate (events/s), when the sending was paced.
    rate: Option<f64>,
    gzip_ratio: f64,
    distinct_batches: usize,
    json_bytes_per_batch: f64,
    gzip_bytes_per_batch: Option<f64>,
    build_seconds: f64,
    batches_sent: u64,
    events_sent: u64,
    bytes_sent: u64,
    batches_accepted: u64,
    events_accepted: u64,
    rejected_503: u64,
    other_status: u64,
    errors: u64,
    first_error: Option<String>,
    send_seconds: f64,
    accepted_events_per_second: f64,
    accepted_batches_per_second: f64,
    ack_p50_ms: Option<f64>,
    ack_p99_ms: Option<f64>,
    ack_max_ms: Option<f64>,
    /// Evaluations the accepted summaries carried (over all flags).
    evaluations_sent: u64,
    /// Queued batches not yet processed when the last batch was acknowledged (from /metrics, if exposed).
    queue_depth_at_last_ack: Option<f64>,
    counts_matched: bool,
    double_counted: bool,
    /// From the last acknowledgement to every flag's count matching.
    lag_ms: Option<f64>,
    /// From the first send to every count matching.
    end_to_end_seconds: Option<f64>,
    end_to_end_events_per_second: Option<f64>,
    /// Evaluations counted minus the baseline, per flag (when they did not match).
    mismatches: Vec<FlagMismatch>,
    client_cpu_seconds: Option<f64>,
    /// Client CPU over the send phase as a share of one core.
    client_cpu_share: Option<f64>,
    server_cpu_seconds_send: Option<f64>,
    server_cpu_seconds_total: Option<f64>,
    server_cpu_us_per_event: Option<f64>,
    server_rss_start_bytes: Option<u64>,
    server_rss_peak_bytes: Option<u64>,
    server_rss_end_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
struct FlagMismatch {
    flag: String,
    expected: u64,
    counted: u64,
}

fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

impl Report {
    fn table(&self) -> String {
        let mut t = String::new();
        let mut line = |s: String| {
            t.push_str(&s);
            t.push('\n');
        };
        line(format!(
            "pennant-load events: {}{} in flight, {} events/batch (1 summary over {} flags, then {}), {:.0} % gzip -> {} \
             ({}/{})",
            self.rate.map(|r| format!("{} events/s paced, ", si(r))).unwrap_or_default(),
            self.concurrency,
            self.events_per_batch,
            self.flags.min(FLAGS_PER_SUMMARY),
            self.mix,
            self.gzip_ratio * 100.0,
            self.url,
            self.project,
            self.environment
        ));
        line(format!(
            "built      {} distinct batches in {:.2} s: {:.1} KB JSON each{}",
            self.distinct_batches,
            self.build_seconds,
            self.json_bytes_per_batch / 1e3,
            self.gzip_bytes_per_batch.map(|g| format!(", {:.1} KB gzipped", g / 1e3)).unwrap_or_default()
        ));
        line(format!(
            "sent       {} batches = {} events ({:.1} MB on the wire) in {:.2} s",
            self.batches_sent,
            self.events_sent,
            self.bytes_sent as f64 / 1e6,
            self.send_seconds
        ));
        line(format!(
            "accepted   {} batches = {} events: {} events/s ({:.0} batches/s); 503: {}, other: {}, errors: {}",
            self.batches_accepted,
            self.events_accepted,
            si(self.accepted_events_per_second),
            self.accepted_batches_per_second,
            self.rejected_503,
            self.other_status,
            self.errors
        ));
        line(format!(
            "ack        p50 {} ms   p99 {} ms   max {} ms",
            ms(self.ack_p50_ms),
            ms(self.ack_p99_ms),
            ms(self.ack_max_ms)
        ));
        if let Some(depth) = self.queue_depth_at_last_ack {
            line(format!("queue      {depth:.0} batches waiting for the processor at the last ack"));
        }
        match (self.counts_matched, self.lag_ms) {
            (true, Some(lag)) => line(format!(
                "queryable  all {} flags' counts matched ({} evaluations) {:.3} s after the last ack; end to end {:.2} s \
                 = {} events/s",
                self.flags,
                self.evaluations_sent,
                lag / 1e3,
                self.end_to_end_seconds.unwrap_or(0.0),
                si(self.end_to_end_events_per_second.unwrap_or(0.0))
            )),
            _ => line(format!(
                "queryable  COUNTS DID NOT MATCH{} ({} evaluations sent)",
                if self.double_counted { " (DOUBLE COUNTED)" } else { "" },
                self.evaluations_sent
            )),
        }
        for m in self.mismatches.iter().take(5) {
            line(format!("           {}: expected {}, counted {}", m.flag, m.expected, m.counted));
        }
        if let (Some(cpu), Some(share)) = (self.client_cpu_seconds, self.client_cpu_share) {
            line(format!(
                "client CPU {cpu:.2} s over the send phase ({:.0} % of one core; bodies pre-built)",
                share * 100.0
            ));
        }
        if let (Some(send), Some(total)) = (self.server_cpu_seconds_send, self.server_cpu_seconds_total) {
            line(format!(
                "server CPU {send:.2} s while sending, {total:.2} s until counted = {} us/event; RSS {:.0} MB -> peak {:.0} \
                 MB, end {:.0} MB",
                ms(self.server_cpu_us_per_event),
                self.server_rss_start_bytes.unwrap_or(0) as f64 / 1e6,
                self.server_rss_peak_bytes.unwrap_or(0) as f64 / 1e6,
                self.server_rss_end_bytes.unwrap_or(0) as f64 / 1e6
            ));
        }
        if let Some(e) = &self.first_error {
            line(format!("first error: {e}"));
        }
        t
    }
}

/// Runs the load.
pub fn run(args: EventsArgs) -> Result<(), Error> {
    args.check()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = runtime.block_on(drive(&args))?;
    print!("{}", report.table());
    println!("{}", serde_json::to_string(&report)?);
    if !report.counts_matched {
        return Err(Error::Failed(if report.double_counted {
            "the server counted more evaluations than were sent (double counting)".into()
        } else {
            format!("the counts did not match within --lag-timeout {} s", args.lag_timeout)
        }));
    }
    if report.other_status > 0 {
        return Err(Error::Failed(report.first_error.unwrap_or_else(|| "a batch was refused".into())));
    }
    Ok(())
}

async fn drive(args: &EventsArgs) -> Result<Report, Error> {
    let base = args.url.trim_end_matches('/').to_owned();
    let run_nanos = unix_nanos();
    let run_tag = format!("{:x}", run_nanos & 0xffff_ffff_ffff);
    let pool_size = match args.batches {
        Some(n) => args.distinct_batches.min(usize::try_from(n).unwrap_or(usize::MAX)),
        None => args.distinct_batches,
    };
    let built_at = now_ms();
    let build_started = Instant::now();
    let pool = build_pool(args, &run_tag, pool_size, built_at)?;
    let build_seconds = build_started.elapsed().as_secs_f64();
    let json_bytes_per_batch = pool.iter().map(|b| b.json_bytes as f64).sum::<f64>() / pool.len() as f64;
    let zipped: Vec<f64> = pool.iter().filter(|b| b.gzip).map(|b| b.body.len() as f64).collect();
    let gzip_bytes_per_batch = (!zipped.is_empty()).then(|| zipped.iter().sum::<f64>() / zipped.len() as f64);

    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(args.request_timeout))
        .build()?;
    let counter = Counter {
        client: client.clone(),
        base: base.clone(),
        token: args.api_token.clone(),
        paths: (0..args.flags)
            .map(|i| {
                format!("/api/v2/insights/{}/{}/flags/{}/evaluations", args.project, args.environment, args.flag_key(i))
            })
            .collect(),
        // Summaries end at `built_at`; their minute is well inside this range.
        from: built_at - 3_600_000,
    };
    let baseline = counter.totals().await?;

    // RSS peak sampler.
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let peak_rss = Arc::new(AtomicU64::new(0));
    let sampler = if args.server_pids.is_empty() {
        None
    } else {
        let (stop, peak, pids) = (stop_sampling.clone(), peak_rss.clone(), args.server_pids.clone());
        Some(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(Some(s)) = sample_server(&pids) {
                    peak.fetch_max(s.rss_bytes, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }))
    };

    let server_start = sample_server(&args.server_pids)?;
    let client_cpu_start = self_cpu_seconds();
    let started = Instant::now();
    let end = match (args.duration, args.batches) {
        (Some(d), _) => Some(started + Duration::from_secs_f64(d)),
        (None, None) => Some(started + Duration::from_secs(10)),
        (None, Some(_)) => None,
    };
    let shared = Arc::new(Shared {
        client: client.clone(),
        bulk_url: format!("{base}/bulk"),
        sdk_key: args.sdk_key.clone(),
        pool,
        run: run_nanos,
        next: AtomicU64::new(0),
        batches: args.batches,
        end,
        abort: AtomicBool::new(false),
        flags: args.flags,
        schedule: args.rate.map(|rate| (started, Duration::from_secs_f64(args.events_per_batch as f64 / rate))),
    });
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        workers.spawn(send_loop(shared.clone()));
    }
    let mut stats =
        WorkerStats { evaluations: vec![0; args.flags], unknown: vec![0; args.flags], ..WorkerStats::default() };
    while let Some(joined) = workers.join_next().await {
        stats.merge(joined.map_err(|e| Error::Failed(format!("sender task: {e}")))?);
    }
    let send_done = Instant::now();
    let client_cpu_seconds = client_cpu_start.zip(self_cpu_seconds()).map(|(a, b)| b - a);
    let server_sent = sample_server(&args.server_pids)?;
    let queue_depth_at_last_ack = scrape_metric(&client, &base, "pennant_events_queue_depth").await;
    let last_ack = stats.last_ack.unwrap_or(send_done);
    let send_seconds = last_ack.max(send_done).duration_since(started).as_secs_f64().max(1e-9);

    // End-to-end lag: poll until every flag's count is baseline + accepted (+ at most the batches of unknown fate).
    let expected: Vec<u64> = baseline.iter().zip(&stats.evaluations).map(|(b, e)| b + e).collect();
    let ceiling: Vec<u64> = expected.iter().zip(&stats.unknown).map(|(e, u)| e + u).collect();
    let deadline = last_ack + Duration::from_secs_f64(args.lag_timeout);
    let mut matched_at = None;
    let mut double_counted = false;
    let mut last_totals = baseline.clone();
    // Flags not matched yet. One processor transaction carries many batches and every flag, so the flags match at
    // about the same moment: each round reads them in order and stops at the first one still short, which keeps
    // the polling to a request or two per round (the API's rate limit is per token).
    let mut pending: Vec<usize> = (0..args.flags).collect();
    'poll: loop {
        let mut still = Vec::new();
        for &flag in &pending {
            if !still.is_empty() {
                still.push(flag);
                continue;
            }
            let total = counter.total(flag).await?;
            last_totals[flag] = total;
            if total > ceiling[flag] {
                double_counted = true;
                break 'poll;
            }
            if total < expected[flag] {
                still.push(flag);
            }
        }
        pending = still;
        let now = Instant::now();
        if pending.is_empty() {
            matched_at = Some(now);
            break;
        }
        if now >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(args.poll_ms)).await;
    }
    let server_end = sample_server(&args.server_pids)?;
    if matched_at.is_some() && args.settle_ms > 0 {
        // Nothing more may arrive: a batch counted twice would show up within a processor flush or two.
        tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
        let totals = counter.totals().await?;
        if totals.iter().zip(&ceiling).any(|(t, c)| t > c) {
            double_counted = true;
            matched_at = None;
        }
        last_totals = totals;
    }
    stop_sampling.store(true, Ordering::Relaxed);
    if let Some(s) = sampler {
        let _ = s.await;
    }
    let mismatches = if matched_at.is_some() {
        Vec::new()
    } else {
        (0..args.flags)
            .filter(|&i| last_totals[i] != expected[i])
            .map(|i| FlagMismatch {
                flag: args.flag_key(i),
                expected: expected[i] - baseline[i],
                counted: last_totals[i].saturating_sub(baseline[i]),
            })
            .collect()
    };

    stats.latencies_ns.sort_unstable();
    let lag_ms = matched_at.map(|m| m.saturating_duration_since(last_ack).as_secs_f64() * 1e3);
    let end_to_end_seconds = matched_at.map(|m| m.duration_since(started).as_secs_f64());
    let server_cpu_seconds_send = server_start.zip(server_sent).map(|(a, b)| b.cpu_seconds - a.cpu_seconds);
    let server_cpu_seconds_total = server_start.zip(server_end).map(|(a, b)| b.cpu_seconds - a.cpu_seconds);
    let peak = peak_rss.load(Ordering::Relaxed);
    Ok(Report {
        tool: "pennant-load events",
        url: base,
        project: args.project.clone(),
        environment: args.environment.clone(),
        flags: args.flags,
        events_per_batch: args.events_per_batch,
        mix: args.mix.describe(),
        concurrency: args.concurrency,
        rate: args.rate,
        gzip_ratio: args.gzip_ratio,
        distinct_batches: pool_size,
        json_bytes_per_batch,
        gzip_bytes_per_batch,
        build_seconds,
        batches_sent: stats.sent,
        events_sent: stats.sent_events,
        bytes_sent: stats.bytes_sent,
        batches_accepted: stats.accepted,
        events_accepted: stats.accepted_events,
        rejected_503: stats.rejected_503,
        other_status: stats.other_status,
        errors: stats.errors,
        first_error: stats.first_error,
        send_seconds,
        accepted_events_per_second: stats.accepted_events as f64 / send_seconds,
        accepted_batches_per_second: stats.accepted as f64 / send_seconds,
        ack_p50_ms: percentile_ms(&stats.latencies_ns, 50.0),
        ack_p99_ms: percentile_ms(&stats.latencies_ns, 99.0),
        ack_max_ms: percentile_ms(&stats.latencies_ns, 100.0),
        evaluations_sent: stats.evaluations.iter().sum(),
        queue_depth_at_last_ack,
        counts_matched: matched_at.is_some() && !double_counted,
        double_counted,
        lag_ms,
        end_to_end_seconds,
        end_to_end_events_per_second: end_to_end_seconds.map(|s| stats.accepted_events as f64 / s),
        mismatches,
        client_cpu_seconds,
        client_cpu_share: client_cpu_seconds.map(|c| c / send_seconds),
        server_cpu_seconds_send,
        server_cpu_seconds_total,
        server_cpu_us_per_event: server_cpu_seconds_total
            .filter(|_| stats.accepted_events > 0)
            .map(|c| c * 1e6 / stats.accepted_events as f64),
        server_rss_start_bytes: server_start.map(|s| s.rss_bytes),
        server_rss_peak_bytes: (peak > 0).then_some(peak),
        server_rss_end_bytes: server_end.map(|s| s.rss_bytes),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: EventsArgs,
    }

    fn args(extra: &[&str]) -> EventsArgs {
        let mut argv = vec!["t", "--sdk-key", "sdk-x", "--api-token", "api-x"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn batches_are_realistic_and_counted() {
        let a = args(&["--flags", "30", "--events-per-batch", "50"]);
        let (body, evaluations) = build_batch(&a, "r", 10, 1_764_000_000_000);
        let events: Vec<Value> = serde_json::from_slice(&body).unwrap();
        assert_eq!(events.len(), 50);
        assert_eq!(events[0]["kind"], "summary");
        let features = events[0]["features"].as_object().unwrap();
        assert_eq!(features.len(), FLAGS_PER_SUMMARY);
        // The summary's counters add up to what the tool expects per flag.
        let counted: u64 = features
            .values()
            .flat_map(|f| f["counters"].as_array().unwrap().iter().map(|c| c["count"].as_u64().unwrap()))
            .sum();
        assert_eq!(counted, evaluations.iter().map(|(_, n)| n).sum::<u64>());
        for (flag, _) in &evaluations {
            assert!(features.contains_key(&format!("load-{flag}")));
        }
        let kinds = |k: &str| events.iter().filter(|e| e["kind"] == k).count();
        assert_eq!(kinds("index") + kinds("feature") + kinds("custom"), 49);
        assert!(kinds("index") > 0 && kinds("feature") > 0 && kinds("custom") > 0);
        // Context keys differ between batches.
        let (other, _) = build_batch(&a, "r", 11, 1_764_000_000_000);
        let other: Vec<Value> = serde_json::from_slice(&other).unwrap();
        assert_ne!(events[1]["context"]["key"], other[1]["context"]["key"]);
    }

    #[test]
    fn mixes() {
        let m: Mix = "index=30,feature=40,custom=30".parse().unwrap();
        let count = |k: Kind| (1..=100).filter(|&i| m.kind(i) == k).count();
        assert_eq!((count(Kind::Index), count(Kind::Feature), count(Kind::Custom)), (30, 40, 30));
        let only: Mix = "feature=1".parse().unwrap();
        assert!((1..200).all(|i| only.kind(i) == Kind::Feature));
        assert!("index=0".parse::<Mix>().is_err());
        assert!("goal=5".parse::<Mix>().is_err());
        assert!("index=-1,custom=5".parse::<Mix>().is_err());
        assert!("index".parse::<Mix>().is_err());
    }

    #[test]
    fn gzip_share_is_exact_over_the_pool() {
        assert_eq!((0..100).filter(|&i| gzipped(i, 0.25)).count(), 25);
        assert_eq!((0..100).filter(|&i| gzipped(i, 0.0)).count(), 0);
        assert_eq!((0..100).filter(|&i| gzipped(i, 1.0)).count(), 100);
    }

    #[test]
    fn payload_ids_are_unique_and_uuid_shaped() {
        let a = payload_id(0x1234_5678_9abc_def0, 1);
        assert_eq!(a.len(), 36);
        assert_ne!(a, payload_id(0x1234_5678_9abc_def0, 2));
    }

    #[test]
    fn arguments_are_checked() {
        assert!(args(&[]).check().is_ok());
        assert!(args(&["--gzip-ratio", "1.5"]).check().is_err());
        assert!(args(&["--flags", "0"]).check().is_err());
        assert!(args(&["--flag-prefix", "a/b"]).check().is_err());
        assert!(args(&["--url", "https://x"]).check().is_err());
        assert!(args(&["--rate", "0"]).check().is_err());
        assert!(args(&["--rate", "200000"]).check().is_ok());
        assert!(
            Cli::try_parse_from(["t", "--sdk-key", "k", "--api-token", "t", "--duration", "1", "--batches", "2"])
                .is_err()
        );
    }
}
