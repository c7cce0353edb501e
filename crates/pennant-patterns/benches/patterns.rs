//! Hot-path costs of the three patterns (single thread): `cargo bench -p pennant-patterns`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use pennant_patterns::{Batch, Coalescer, LatestWins, LatestWinsConfig, LayeredCache};

const KEYS: usize = 10_000;

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("env-{i}:flags:v1")).collect()
}

fn bench(c: &mut Criterion) {
    let keys = keys();
    let value = Bytes::from(vec![7u8; 256]);

    // Baseline: a bare quick_cache hit.
    let raw = quick_cache::sync::Cache::<String, Bytes>::new(KEYS);
    for k in &keys {
        raw.insert(k.clone(), value.clone());
    }
    let mut i = 0;
    c.bench_function("quick_cache_hit", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(raw.get(&keys[i]))
        })
    });

    // LayeredCache L1 hit: quick_cache + counters (an L1 hit completes in one poll).
    let cache: LayeredCache<String, Bytes, String> = LayeredCache::builder("bench").l1_capacity(KEYS).build();
    for k in &keys {
        let v = value.clone();
        let _ = cache.get(k, move || async move { Ok(v) }).now_or_never();
    }
    c.bench_function("layered_l1_hit", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(cache.get(&keys[i], || async { Err("miss".to_owned()) }).now_or_never())
        })
    });

    // Coalescer, uncontended: the fixed cost of going through the singleflight.
    let coalescer = Coalescer::<String, Bytes, String>::new();
    c.bench_function("coalescer_uncontended", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            let v = value.clone();
            black_box(coalescer.get_or_load(keys[i].clone(), async move { Ok(v) }).now_or_never())
        })
    });

    // LatestWins::submit overwriting one of 10k pending keys.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let _guard = runtime.enter();
    let config = LatestWinsConfig { interval: Duration::from_secs(3600), max_pending: usize::MAX };
    let writer = LatestWins::spawn(config, |_: Batch<String, u64>| async { Ok::<_, String>(()) });
    let mut n = 0u64;
    c.bench_function("latest_wins_submit", |b| {
        b.iter(|| {
            n += 1;
            i = (i + 1) % KEYS;
            black_box(writer.submit(keys[i].clone(), n))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
