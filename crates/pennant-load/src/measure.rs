//! What both load tools measure: the clock, the server processes' memory and CPU, and latency percentiles.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::error::Error;

/// Nanoseconds since the Unix epoch (comparable between processes, unlike `Instant`).
pub(crate) fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Resident memory (bytes) and CPU time (user + system, seconds) of the server processes, summed.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct ServerSample {
    pub(crate) rss_bytes: u64,
    pub(crate) cpu_seconds: f64,
}

pub(crate) fn sample_server(pids: &[u32]) -> Result<Option<ServerSample>, Error> {
    if pids.is_empty() {
        return Ok(None);
    }
    let mut total = ServerSample::default();
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss_kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::Sample(format!("no VmRSS in /proc/{pid}/status")))?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name (which may contain spaces): state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
        let (Some(utime), Some(stime)) = (ticks(11), ticks(12)) else {
            return Err(Error::Sample(format!("unexpected /proc/{pid}/stat")));
        };
        total.rss_bytes += rss_kb * 1024;
        // USER_HZ is 100 on Linux.
        total.cpu_seconds += (utime + stime) as f64 / 100.0;
    }
    Ok(Some(total))
}

/// Nearest-rank percentile of sorted values, in ms.
pub(crate) fn percentile_ms(sorted_ns: &[u64], p: f64) -> Option<f64> {
    if sorted_ns.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted_ns.len() as f64).ceil() as usize;
    Some(sorted_ns[rank.clamp(1, sorted_ns.len()) - 1] as f64 / 1e6)
}

/// A value in ms with one decimal, or `-`.
pub(crate) fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).map(|i| i * 1_000_000).collect();
        assert_eq!(percentile_ms(&v, 50.0), Some(50.0));
        assert_eq!(percentile_ms(&v, 99.0), Some(99.0));
        assert_eq!(percentile_ms(&v, 100.0), Some(100.0));
        assert_eq!(percentile_ms(&[], 50.0), None);
    }
}
