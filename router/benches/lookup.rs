//! Lookups per second of `Router::route` with 4 SETs, for both strategies, and of the
//! `consistent_hash` crate's ring on the same table (the reason `ring.rs` exists).
//!
//! `cargo bench -p setgate-router --bench lookup`; criterion reports `thrpt` in elements/s,
//! one element being one key routed.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use setgate_router::{Router, RoutingConfig};

#[path = "../tests/crate_ring/mod.rs"]
mod crate_ring;

const SETS: [(&str, u32); 4] = [("set-a", 1), ("set-b", 1), ("set-c", 1), ("set-d", 1)];

/// 1024 user ids of 8 to 20 characters, the typical range; `numeric` mixes in decimal ids.
fn keys(numeric: bool) -> Vec<String> {
    (0..1024u32)
        .map(|i| {
            if numeric && i % 2 == 0 {
                return (10_000_000 + i * 7919).to_string();
            }
            let mut key = format!("user-{i}-");
            let len = 8 + (i as usize % 13);
            while key.len() < len {
                key.push((b'a' + (key.len() as u8 * 7 + i as u8) % 26) as char);
            }
            key.truncate(len);
            key
        })
        .collect()
}

fn config(toml_text: &str) -> RoutingConfig {
    toml::from_str(toml_text).expect("bench config parses")
}

fn bench(c: &mut Criterion) {
    let hash_router = Router::new(&config(
        r#"
        default = "center"
        sets = [
          { name = "set-a", pool = "a" }, { name = "set-b", pool = "b" },
          { name = "set-c", pool = "c" }, { name = "set-d", pool = "d" },
        ]
        "#,
    ))
    .expect("valid");
    let bucket_router = Router::new(&config(
        r#"
        strategy = "buckets"
        default = "center"
        buckets = 1024
        sets = [
          { name = "set-a", pool = "a" }, { name = "set-b", pool = "b" },
          { name = "set-c", pool = "c" }, { name = "set-d", pool = "d" },
        ]
        bucket_map = [
          { range = "0-255", set = "set-a" }, { range = "256-511", set = "set-b" },
          { range = "512-767", set = "set-c" }, { range = "768-1023", set = "set-d" },
        ]
        "#,
    ))
    .expect("valid");
    let names = keys(false);
    let mixed = keys(true);

    let mut group = c.benchmark_group("route");
    group.throughput(Throughput::Elements(names.len() as u64));
    group.bench_function("consistent-hash/4-sets", |b| {
        b.iter(|| {
            for key in &names {
                black_box(hash_router.route(Some(black_box(key))));
            }
        })
    });
    group.bench_function("buckets/4-sets", |b| {
        b.iter(|| {
            for key in &mixed {
                black_box(bucket_router.route(Some(black_box(key))));
            }
        })
    });
    let crate_ring = crate_ring::build(&SETS);
    group.bench_function("consistent_hash-crate/4-sets", |b| {
        b.iter(|| {
            for key in &names {
                black_box(crate_ring::owner(&crate_ring, black_box(key)));
            }
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = bench
}
criterion_main!(benches);
