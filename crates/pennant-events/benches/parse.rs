//! Event-batch parsing, side by side on the same bytes: plain `serde_json` derive with owned `String`s and
//! `serde_json::Value` for free-form JSON (the baseline a straightforward implementation would write), and Pennant's
//! borrowed model (`pennant_events::parse_batch`).
//!
//! `cargo bench -p pennant-events --bench parse` — reports events/s (`events/…`) and bytes/s (`bytes/…`).
//! Batches are realistic SDK flushes: one summary event (20 flags) plus a mix of index (30 %), feature (40 %) and
//! custom (30 %) events with user, org and multi-kind contexts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_debug_implementations)]

mod common;

use std::hint::black_box;
use std::time::Duration;

use common::{OwnedEvent, batch};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    for n in [100, 1000] {
        let body = batch(n);
        // Sanity: both parse everything.
        assert_eq!(pennant_events::parse_batch(&body).unwrap().events.len(), n);
        assert_eq!(serde_json::from_slice::<Vec<OwnedEvent>>(&body).unwrap().len(), n);
        eprintln!("batch of {n} events: {} bytes ({} bytes/event)", body.len(), body.len() / n);
        for (unit, throughput) in
            [("events", Throughput::Elements(n as u64)), ("bytes", Throughput::Bytes(body.len() as u64))]
        {
            let mut g = c.benchmark_group(format!("{unit}/batch_{n}"));
            g.throughput(throughput);
            g.measurement_time(Duration::from_secs(4));
            g.bench_function("serde_json_owned", |b| {
                b.iter(|| serde_json::from_slice::<Vec<OwnedEvent>>(black_box(&body)).unwrap().len())
            });
            g.bench_function("pennant_borrowed", |b| {
                b.iter(|| pennant_events::parse_batch(black_box(&body)).unwrap().events.len())
            });
            g.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
