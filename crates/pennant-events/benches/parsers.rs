//! The candidate JSON parsers side by side on the same realistic SDK batches (see `common`): serde_json, sonic-rs
//! and simd-json deserialising the same owned-types model, and Pennant's borrowed one-pass model on serde_json
//! (the one the front door uses). simd-json parses in place, so its timing includes the copy it needs.
//!
//! `cargo bench -p pennant-events --features parser-candidates --bench parsers` — events/s and bytes/s. The
//! candidates are optional dependencies behind that feature, so normal builds and CI never compile them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_debug_implementations)]

mod common;

use std::hint::black_box;
use std::time::Duration;

use common::{OwnedEvent, batch};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    for n in [100, 1000] {
        let body = batch(n);
        assert_eq!(sonic_rs::from_slice::<Vec<OwnedEvent>>(&body).unwrap().len(), n);
        assert_eq!(simd_json::serde::from_slice::<Vec<OwnedEvent>>(&mut body.clone()).unwrap().len(), n);
        assert_eq!(pennant_events::parse_batch(&body).unwrap().events.len(), n);
        for (unit, throughput) in
            [("events", Throughput::Elements(n as u64)), ("bytes", Throughput::Bytes(body.len() as u64))]
        {
            let mut g = c.benchmark_group(format!("parsers/{unit}/batch_{n}"));
            g.throughput(throughput);
            g.measurement_time(Duration::from_secs(3));
            g.bench_function("serde_json_owned", |b| {
                b.iter(|| serde_json::from_slice::<Vec<OwnedEvent>>(black_box(&body)).unwrap().len())
            });
            g.bench_function("sonic_rs_owned", |b| {
                b.iter(|| sonic_rs::from_slice::<Vec<OwnedEvent>>(black_box(&body)).unwrap().len())
            });
            g.bench_function("simd_json_owned", |b| {
                b.iter(|| {
                    let mut copy = black_box(&body).clone();
                    simd_json::serde::from_slice::<Vec<OwnedEvent>>(&mut copy).unwrap().len()
                })
            });
            g.bench_function("pennant_borrowed_serde_json", |b| {
                b.iter(|| pennant_events::parse_batch(black_box(&body)).unwrap().events.len())
            });
            g.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
