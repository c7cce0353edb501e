//! `pennant-load sse`: opens N SDK-like streaming connections (`GET /all`) over P worker processes, changes a flag
//! through the REST API R times and measures how fast each change reaches every connection; also the connect
//! rate, the server's resident memory per connection and CPU per delivery, and (with `--storm`) how long it takes
//! for every connection to be dropped and reconnected at once.
//!
//! The coordinator (this module) re-runs its own executable as `pennant-load sse-worker` P times and drives the
//! workers with line-delimited JSON over their stdin/stdout ([`ToWorker`], [`FromWorker`]). Send and receive
//! times are wall-clock (`SystemTime`), which all processes on one machine share.

pub(crate) mod stream;
pub(crate) mod worker;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Args;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

pub use crate::error::Error;
use crate::measure::{ServerSample, ms, percentile_ms, sample_server, unix_nanos};

/// This machine caps a process at 20,000 open files; leave room for the rest.
pub const MAX_CONNECTIONS_PER_PROCESS: usize = 19_000;
/// Ephemeral ports available per source address (`net.ipv4.ip_local_port_range` 32768–60999).
pub const PORTS_PER_SOURCE: usize = 28_232;

/// Arguments of `pennant-load sse`.
#[derive(Debug, Args)]
pub struct SseArgs {
    /// Base URL of the server (plain http); SDK streams go to `<url>/all`, API calls to `<url>/api/v2`.
    #[arg(long, default_value = "http://127.0.0.1:8030")]
    url: String,
    /// Server-side SDK key of the environment the connections stream.
    #[arg(long, env = "PENNANT_SDK_KEY")]
    sdk_key: String,
    /// Base URL of the management API when it is served elsewhere (default: `--url`), e.g. a `--role api` process.
    #[arg(long)]
    api_url: Option<String>,
    /// API token that may write the flag.
    #[arg(long, env = "PENNANT_API_TOKEN")]
    api_token: String,
    /// Project key.
    #[arg(long, default_value = "default")]
    project: String,
    /// Environment key of the SDK key (the flag is toggled there).
    #[arg(long, default_value = "production")]
    environment: String,
    /// Flag to toggle (must exist in the environment).
    #[arg(long)]
    flag: String,
    /// Number of SSE connections.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Worker processes (each holds at most 19,000 connections).
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// Source addresses, bound round-robin: `127.0.0.2-127.0.0.9`, `127.0.0.2,127.0.0.3` or one address.
    #[arg(long, default_value = "127.0.0.1")]
    sources: String,
    /// PID of a server process to measure (repeatable; RSS and CPU are summed).
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// Flag changes to measure.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Afterwards, drop every connection at once and reconnect them all.
    #[arg(long)]
    storm: bool,
    /// Connects per second, over all workers.
    #[arg(long, default_value_t = 10_000.0)]
    connect_rate: f64,
    /// Reconnects per second during the storm, over all workers (0: all at once).
    #[arg(long, default_value_t = 0.0)]
    storm_rate: f64,
    /// Seconds each phase (connect, one round, storm) may take before it is reported incomplete.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

/// What a worker is told.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub(crate) enum ToWorker {
    /// First line: what to connect to.
    Config(WorkerConfig),
    /// Open the connections; answer `ready` once all have their `put` (or the timeout).
    Connect,
    /// A change was sent at `sent_at_ns`: answer once every connection has a version above `baseline`.
    Round { baseline: u64, sent_at_ns: u64 },
    /// Drop every connection, reconnect all; answer `ready`.
    Storm,
    /// Close everything and exit.
    Quit,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerConfig {
    target: SocketAddr,
    /// The whole HTTP request for `/all`.
    request: String,
    flag: String,
    connections: usize,
    /// Global index of this worker's first connection (for the round-robin over sources).
    first_index: usize,
    sources: Vec<IpAddr>,
    connect_rate: f64,
    storm_rate: f64,
    timeout_ms: u64,
}

/// What a worker answers.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum FromWorker {
    Ready(Progress),
    Round(RoundReply),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Progress {
    /// Connections holding a `put`.
    connected: usize,
    /// When the last of them got it: its arrival in the socket (Unix ns).
    at_ns: u64,
    min_version: u64,
    max_version: u64,
    errors: u64,
    reconnects: u64,
    first_error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RoundReply {
    received: usize,
    /// From the change's request to the load tool's read of it, per connection that got it.
    latencies_ns: Vec<u64>,
    /// From the change's request to its arrival in the connection's socket (kernel receive timestamp).
    arrival_latencies_ns: Vec<u64>,
    /// How many of those arrival times are the kernel's (the others are read times).
    stamped: usize,
    max_version: u64,
    errors: u64,
    reconnects: u64,
}

/// Parses `a.b.c.x-a.b.c.y` ranges (last octet) and comma-separated lists of addresses.
pub fn parse_sources(spec: &str) -> Result<Vec<IpAddr>, Error> {
    let bad = |s: &str| Error::Args(format!("bad source address {s:?} (want 127.0.0.2-127.0.0.9 or a,b,c)"));
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: Ipv4Addr = a.trim().parse().map_err(|_| bad(part))?;
            let b: Ipv4Addr = b.trim().parse().map_err(|_| bad(part))?;
            let (ao, bo) = (a.octets(), b.octets());
            if ao[..3] != bo[..3] || ao[3] > bo[3] {
                return Err(bad(part));
            }
            out.extend((ao[3]..=bo[3]).map(|x| IpAddr::V4(Ipv4Addr::new(ao[0], ao[1], ao[2], x))));
        } else {
            out.push(part.parse().map_err(|_| bad(part))?);
        }
    }
    if out.is_empty() {
        return Err(bad(spec));
    }
    Ok(out)
}

/// `http://host:port/prefix` → (address, `host:port`, `/prefix` without a trailing slash).
/// Where API calls go.
fn api_base(args: &SseArgs) -> &str {
    args.api_url.as_deref().unwrap_or(&args.url).trim_end_matches('/')
}

fn parse_url(url: &str) -> Result<(SocketAddr, String, String), Error> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| Error::Args(format!("--url must be plain http://host:port, got {url:?}")))?;
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let with_port = if authority.contains(':') { authority.to_owned() } else { format!("{authority}:80") };
    let addr =
        with_port.to_socket_addrs()?.next().ok_or_else(|| Error::Args(format!("{authority} does not resolve")))?;
    let prefix = path.trim_end_matches('/');
    let prefix = if prefix.is_empty() { String::new() } else { format!("/{prefix}") };
    Ok((addr, authority.to_owned(), prefix))
}

/// Runs the coordinator.
pub fn run(args: SseArgs) -> Result<(), Error> {
    let sources = parse_sources(&args.sources)?;
    if args.connections == 0 || args.processes == 0 {
        return Err(Error::Args("--connections and --processes must be at least 1".into()));
    }
    if args.processes > args.connections {
        return Err(Error::Args("more --processes than --connections".into()));
    }
    let per_process = args.connections.div_ceil(args.processes);
    if per_process > MAX_CONNECTIONS_PER_PROCESS {
        return Err(Error::Args(format!(
            "{per_process} connections per process is over {MAX_CONNECTIONS_PER_PROCESS} (the open-file limit): use \
             --processes {} or more",
            args.connections.div_ceil(MAX_CONNECTIONS_PER_PROCESS)
        )));
    }
    if args.connections > sources.len() * PORTS_PER_SOURCE {
        return Err(Error::Args(format!(
            "{} connections need {} source addresses ({PORTS_PER_SOURCE} ports each), got {}",
            args.connections,
            args.connections.div_ceil(PORTS_PER_SOURCE),
            sources.len()
        )));
    }
    if args.connect_rate.is_nan() || args.connect_rate <= 0.0 || args.storm_rate.is_nan() || args.storm_rate < 0.0 {
        return Err(Error::Args("--connect-rate must be positive and --storm-rate not negative".into()));
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = runtime.block_on(coordinate(&args, sources))?;
    print!("{}", report.table(&args));
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    async fn tell(&mut self, message: &ToWorker) -> Result<(), Error> {
        let mut line = serde_json::to_vec(message)?;
        line.push(b'\n');
        self.stdin.write_all(&line).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    async fn hear(&mut self, within: Duration) -> Result<FromWorker, Error> {
        match tokio::time::timeout(within, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => Ok(serde_json::from_str(&line)?),
            Ok(Ok(None)) => Err(Error::Worker("a worker exited".into())),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(Error::Worker("a worker did not answer in time".into())),
        }
    }
}

async fn tell_all(workers: &mut [Worker], message: &ToWorker) -> Result<(), Error> {
    for w in workers.iter_mut() {
        w.tell(message).await?;
    }
    Ok(())
}

async fn ready_all(workers: &mut [Worker], within: Duration) -> Result<Vec<Progress>, Error> {
    let mut out = Vec::new();
    for w in workers.iter_mut() {
        match w.hear(within).await? {
            FromWorker::Ready(p) => out.push(p),
            other => return Err(Error::Worker(format!("expected ready, got {other:?}"))),
        }
    }
    Ok(out)
}

#[derive(Debug, Serialize)]
struct RoundReport {
    round: usize,
    /// The flag's version after the change.
    version: u64,
    received: usize,
    all_received: bool,
    /// From the change's request to the load tool's read.
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    /// From the change's request to the arrival in the client's socket (the first one: the fan-out's start).
    arrival_min_ms: Option<f64>,
    arrival_p50_ms: Option<f64>,
    arrival_p99_ms: Option<f64>,
    arrival_max_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
struct StormReport {
    seconds: f64,
    connected: usize,
    complete: bool,
}

/// The result, printed as a table and as one JSON line.
#[derive(Debug, Serialize)]
struct Report {
    tool: &'static str,
    url: String,
    flag: String,
    connections: usize,
    processes: usize,
    sources: usize,
    connected: usize,
    connect_seconds: f64,
    connects_per_second: f64,
    server_before: Option<ServerSample>,
    server_connected: Option<ServerSample>,
    server_rss_per_connection_bytes: Option<f64>,
    rounds: Vec<RoundReport>,
    deliveries: usize,
    latency_p50_ms: Option<f64>,
    latency_p99_ms: Option<f64>,
    latency_max_ms: Option<f64>,
    arrival_latency_min_ms: Option<f64>,
    arrival_latency_p50_ms: Option<f64>,
    arrival_latency_p99_ms: Option<f64>,
    arrival_latency_max_ms: Option<f64>,
    /// Each change's p99 to arrival, over the changes: the median change's and the worst change's.
    round_arrival_p99_median_ms: Option<f64>,
    round_arrival_p99_max_ms: Option<f64>,
    /// Deliveries whose arrival time is the kernel's receive timestamp.
    arrivals_stamped: usize,
    server_cpu_seconds: Option<f64>,
    server_cpu_us_per_delivery: Option<f64>,
    storm: Option<StormReport>,
    errors: u64,
    reconnects: u64,
    first_error: Option<String>,
}

impl Report {
    fn table(&self, args: &SseArgs) -> String {
        let mut t = String::new();
        let mut line = |s: String| {
            t.push_str(&s);
            t.push('\n');
        };
        line(format!(
            "pennant-load sse: {} connections, {} processes, {} source addresses -> {} (flag {:?})",
            self.connections, self.processes, self.sources, self.url, self.flag
        ));
        line(format!(
            "connect    {}/{} with their put in {:.3} s = {:.0} connections/s",
            self.connected, self.connections, self.connect_seconds, self.connects_per_second
        ));
        if let (Some(b), Some(a), Some(per)) =
            (self.server_before, self.server_connected, self.server_rss_per_connection_bytes)
        {
            line(format!(
                "server RSS {:.1} MB -> {:.1} MB = {:.1} KB per connection (pids {:?})",
                b.rss_bytes as f64 / 1e6,
                a.rss_bytes as f64 / 1e6,
                per / 1e3,
                args.server_pids
            ));
        }
        line(
            "latency from the change's request: to its arrival in the client's socket | to the load tool's read".into(),
        );
        line(format!(
            "{:<6} {:>8} {:>15} {:>9} {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9}",
            "round", "version", "received", "min ms", "p50 ms", "p99 ms", "max ms", "p50 ms", "p99 ms", "max ms"
        ));
        for r in &self.rounds {
            line(format!(
                "{:<6} {:>8} {:>15} {:>9} {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9}",
                r.round,
                r.version,
                format!("{}/{}", r.received, self.connections),
                ms(r.arrival_min_ms),
                ms(r.arrival_p50_ms),
                ms(r.arrival_p99_ms),
                ms(r.arrival_max_ms),
                ms(r.p50_ms),
                ms(r.p99_ms),
                ms(r.max_ms)
            ));
        }
        line(format!(
            "{:<6} {:>8} {:>15} {:>9} {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9}",
            "all",
            "",
            self.deliveries,
            ms(self.arrival_latency_min_ms),
            ms(self.arrival_latency_p50_ms),
            ms(self.arrival_latency_p99_ms),
            ms(self.arrival_latency_max_ms),
            ms(self.latency_p50_ms),
            ms(self.latency_p99_ms),
            ms(self.latency_max_ms)
        ));
        if let (Some(median), Some(worst)) = (self.round_arrival_p99_median_ms, self.round_arrival_p99_max_ms) {
            line(format!("per change p99 to arrival: median {median:.1} ms, worst {worst:.1} ms"));
        }
        if let (Some(cpu), Some(per)) = (self.server_cpu_seconds, self.server_cpu_us_per_delivery) {
            line(format!("server CPU {cpu:.2} s for {} deliveries = {per:.1} us per delivery", self.deliveries));
        }
        if let Some(s) = &self.storm {
            line(format!(
                "storm      {}/{} reconnected with a put in {:.3} s{}",
                s.connected,
                self.connections,
                s.seconds,
                if s.complete { "" } else { " (INCOMPLETE)" }
            ));
        }
        line(format!("errors     {} (reconnects {})", self.errors, self.reconnects));
        if let Some(e) = &self.first_error {
            line(format!("first error: {e}"));
        }
        t
    }
}

async fn flag_is_on(client: &reqwest::Client, args: &SseArgs) -> Result<bool, Error> {
    let path = format!("/api/v2/flags/{}/{}", args.project, args.flag);
    let response =
        client.get(format!("{}{path}", api_base(args))).header("Authorization", &args.api_token).send().await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    if status != 200 {
        return Err(Error::Api { method: "GET", path, status, body: text });
    }
    let doc: serde_json::Value = serde_json::from_str(&text)?;
    doc["environments"][&args.environment]["on"]
        .as_bool()
        .ok_or_else(|| Error::Args(format!("flag {} has no environment {}", args.flag, args.environment)))
}

async fn set_flag(client: &reqwest::Client, args: &SseArgs, on: bool) -> Result<(), Error> {
    let path = format!("/api/v2/flags/{}/{}", args.project, args.flag);
    let body = serde_json::json!({
        "environmentKey": args.environment,
        "comment": "pennant-load sse",
        "instructions": [{"kind": if on { "turnFlagOn" } else { "turnFlagOff" }}],
    });
    let response = client
        .patch(format!("{}{path}", api_base(args)))
        .header("Authorization", &args.api_token)
        .json(&body)
        .send()
        .await?;
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        let body = response.text().await.unwrap_or_default();
        return Err(Error::Api { method: "PATCH", path, status, body });
    }
    Ok(())
}

async fn coordinate(args: &SseArgs, sources: Vec<IpAddr>) -> Result<Report, Error> {
    let (target, authority, prefix) = parse_url(&args.url)?;
    let request = format!(
        "GET {prefix}/all HTTP/1.1\r\nHost: {authority}\r\nAuthorization: {}\r\nAccept: text/event-stream\r\n\
         User-Agent: pennant-load\r\n\r\n",
        args.sdk_key
    );
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let mut on = flag_is_on(&client, args).await?;
    let phase = Duration::from_secs(args.timeout);
    let answer_within = phase + Duration::from_secs(30);

    let server_before = sample_server(&args.server_pids)?;
    let exe = std::env::current_exe()?;
    let mut workers = Vec::new();
    let mut first_index = 0;
    for p in 0..args.processes {
        let connections = args.connections / args.processes + usize::from(p < args.connections % args.processes);
        let mut child = tokio::process::Command::new(&exe)
            .arg("sse-worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(Error::Worker("no pipes to the worker".into()));
        };
        let mut worker = Worker { child, stdin, lines: BufReader::new(stdout).lines() };
        let share = args.processes as f64;
        worker
            .tell(&ToWorker::Config(WorkerConfig {
                target,
                request: request.clone(),
                flag: args.flag.clone(),
                connections,
                first_index,
                sources: sources.clone(),
                connect_rate: args.connect_rate / share,
                storm_rate: args.storm_rate / share,
                timeout_ms: u64::try_from(phase.as_millis()).unwrap_or(u64::MAX),
            }))
            .await?;
        first_index += connections;
        workers.push(worker);
    }

    // Connect.
    let started_ns = unix_nanos();
    tell_all(&mut workers, &ToWorker::Connect).await?;
    let ready = ready_all(&mut workers, answer_within).await?;
    let connected: usize = ready.iter().map(|p| p.connected).sum();
    let last_ns = ready.iter().map(|p| p.at_ns).max().unwrap_or(started_ns);
    let connect_seconds = last_ns.saturating_sub(started_ns) as f64 / 1e9;
    let server_connected = sample_server(&args.server_pids)?;
    let mut first_error = ready.iter().find_map(|p| p.first_error.clone());
    let mut baseline = ready.iter().map(|p| p.max_version).max().unwrap_or(0);

    // Rounds.
    let mut rounds = Vec::new();
    let mut all_latencies = Vec::new();
    let mut all_arrivals = Vec::new();
    let mut arrivals_stamped = 0;
    let mut errors: u64 = ready.iter().map(|p| p.errors).sum();
    let mut reconnects: u64 = ready.iter().map(|p| p.reconnects).sum();
    let cpu_before = sample_server(&args.server_pids)?;
    for round in 1..=args.rounds {
        on = !on;
        let sent_at_ns = unix_nanos();
        set_flag(&client, args, on).await?;
        tell_all(&mut workers, &ToWorker::Round { baseline, sent_at_ns }).await?;
        let mut latencies = Vec::new();
        let mut arrivals = Vec::new();
        let mut version = baseline;
        (errors, reconnects) = (0, 0);
        for w in workers.iter_mut() {
            match w.hear(answer_within).await? {
                FromWorker::Round(r) => {
                    latencies.extend_from_slice(&r.latencies_ns);
                    arrivals.extend_from_slice(&r.arrival_latencies_ns);
                    arrivals_stamped += r.stamped;
                    version = version.max(r.max_version);
                    errors += r.errors;
                    reconnects += r.reconnects;
                }
                other => return Err(Error::Worker(format!("expected a round, got {other:?}"))),
            }
        }
        latencies.sort_unstable();
        arrivals.sort_unstable();
        rounds.push(RoundReport {
            round,
            version,
            received: latencies.len(),
            all_received: latencies.len() == args.connections,
            p50_ms: percentile_ms(&latencies, 50.0),
            p99_ms: percentile_ms(&latencies, 99.0),
            max_ms: percentile_ms(&latencies, 100.0),
            arrival_min_ms: percentile_ms(&arrivals, 0.0),
            arrival_p50_ms: percentile_ms(&arrivals, 50.0),
            arrival_p99_ms: percentile_ms(&arrivals, 99.0),
            arrival_max_ms: percentile_ms(&arrivals, 100.0),
        });
        all_latencies.extend(latencies);
        all_arrivals.extend(arrivals);
        baseline = version;
    }
    let cpu_after = sample_server(&args.server_pids)?;
    all_latencies.sort_unstable();
    all_arrivals.sort_unstable();
    let deliveries = all_latencies.len();
    let server_cpu_seconds = cpu_before.zip(cpu_after).map(|(b, a)| a.cpu_seconds - b.cpu_seconds);

    // Storm.
    let storm = if args.storm {
        let storm_ns = unix_nanos();
        let t = Instant::now();
        tell_all(&mut workers, &ToWorker::Storm).await?;
        let ready = ready_all(&mut workers, answer_within).await?;
        let connected: usize = ready.iter().map(|p| p.connected).sum();
        let last_ns = ready.iter().map(|p| p.at_ns).max().unwrap_or(storm_ns);
        errors = ready.iter().map(|p| p.errors).sum();
        reconnects = ready.iter().map(|p| p.reconnects).sum();
        if first_error.is_none() {
            first_error = ready.iter().find_map(|p| p.first_error.clone());
        }
        let complete = connected == args.connections;
        let seconds = if complete { last_ns.saturating_sub(storm_ns) as f64 / 1e9 } else { t.elapsed().as_secs_f64() };
        Some(StormReport { seconds, connected, complete })
    } else {
        None
    };

    tell_all(&mut workers, &ToWorker::Quit).await?;
    for w in &mut workers {
        let _ = tokio::time::timeout(Duration::from_secs(10), w.child.wait()).await;
    }

    Ok(Report {
        tool: "pennant-load sse",
        url: args.url.clone(),
        flag: args.flag.clone(),
        connections: args.connections,
        processes: args.processes,
        sources: sources.len(),
        connected,
        connect_seconds,
        connects_per_second: if connect_seconds > 0.0 { connected as f64 / connect_seconds } else { 0.0 },
        server_before,
        server_connected,
        server_rss_per_connection_bytes: server_before
            .zip(server_connected)
            .map(|(b, a)| (a.rss_bytes as f64 - b.rss_bytes as f64) / args.connections as f64),
        deliveries,
        latency_p50_ms: percentile_ms(&all_latencies, 50.0),
        latency_p99_ms: percentile_ms(&all_latencies, 99.0),
        latency_max_ms: percentile_ms(&all_latencies, 100.0),
        arrival_latency_min_ms: percentile_ms(&all_arrivals, 0.0),
        arrival_latency_p50_ms: percentile_ms(&all_arrivals, 50.0),
        arrival_latency_p99_ms: percentile_ms(&all_arrivals, 99.0),
        arrival_latency_max_ms: percentile_ms(&all_arrivals, 100.0),
        round_arrival_p99_median_ms: median(rounds.iter().filter_map(|r| r.arrival_p99_ms).collect()),
        round_arrival_p99_max_ms: rounds.iter().filter_map(|r| r.arrival_p99_ms).reduce(f64::max),
        arrivals_stamped,
        server_cpu_seconds,
        server_cpu_us_per_delivery: server_cpu_seconds
            .filter(|_| deliveries > 0)
            .map(|cpu| cpu * 1e6 / deliveries as f64),
        storm,
        errors,
        reconnects,
        first_error,
        rounds, // Last: the fields above read it.
    })
}

/// The median of `values` (the mean of the two middle ones for an even count).
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_unstable_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sources() {
        let s = parse_sources("127.0.0.2-127.0.0.4").unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[2], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4)));
        assert_eq!(parse_sources("127.0.0.1, 127.0.0.9").unwrap().len(), 2);
        assert!(parse_sources("127.0.0.4-127.0.0.2").is_err());
        assert!(parse_sources("127.0.0.1-127.0.1.2").is_err());
        assert!(parse_sources("nope").is_err());
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn urls() {
        let (addr, authority, prefix) = parse_url("http://127.0.0.1:8030").unwrap();
        assert_eq!((addr.port(), authority.as_str(), prefix.as_str()), (8030, "127.0.0.1:8030", ""));
        assert_eq!(parse_url("http://127.0.0.1:9/relay/").unwrap().2, "/relay");
        assert!(parse_url("https://127.0.0.1:8030").is_err());
    }
}
