//! Routing costs: statement classification cold (parsed), cached, and of a
//! one-off SELECT (not cached), and
//! the per-checkout routing decision.
//! Run: cargo bench --bench route

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use sluice::config::{Balance, Consistency};
use sluice::route::classify::{PrimaryFunctions, classify};
use sluice::route::decide::decide;
use sluice::route::replicas::ReplicaView;
use sluice::route::{Classifier, Need, SessionRoute};

const TYPICAL: &str = "SELECT a.id, a.name, b.total FROM accounts a JOIN balances b ON b.account_id = a.id \
     WHERE a.region IN ($1, $2, $3) AND b.updated_at > now() - interval '1 day' ORDER BY b.total DESC LIMIT 50";
const CTE: &str = "WITH recent AS (SELECT * FROM orders WHERE created_at > $1) \
     SELECT customer_id, count(*) FROM recent GROUP BY customer_id HAVING count(*) > 3";

fn bench_classify(c: &mut Criterion) {
    let none = PrimaryFunctions::default();
    let mut g = c.benchmark_group("classify");
    g.bench_function("cold_plain_select_lexical", |b| {
        b.iter(|| classify(black_box(TYPICAL), &none))
    });
    g.bench_function("cold_cte_parsed", |b| {
        b.iter(|| classify(black_box(CTE), &none))
    });
    g.bench_function("cold_insert_parsed", |b| {
        b.iter(|| {
            classify(
                black_box("INSERT INTO t (a, b) VALUES ($1, $2) RETURNING id"),
                &none,
            )
        })
    });
    let cached = Classifier::new(PrimaryFunctions::default());
    cached.classify(CTE);
    g.bench_function("cached_cte", |b| b.iter(|| cached.classify(black_box(CTE))));
    cached.classify(TYPICAL);
    g.bench_function("cached_typical_select", |b| {
        b.iter(|| cached.classify(black_box(TYPICAL)))
    });
    // Values written in and no parameters: not cached, decided in one pass.
    let one_off = "SELECT abalance FROM pgbench_accounts WHERE aid = 81234;";
    g.bench_function("one_off_simple_protocol_select", |b| {
        b.iter(|| cached.classify(black_box(one_off)))
    });
    g.finish();
}

fn bench_decide(c: &mut Criterion) {
    let class = classify("SELECT 1", &PrimaryFunctions::default());
    let views = [
        ReplicaView {
            usable: true,
            replay_lsn: 100,
            outstanding: 2,
        },
        ReplicaView {
            usable: true,
            replay_lsn: 90,
            outstanding: 1,
        },
    ];
    let mut rr = 0usize;
    c.bench_function("decide_read_two_replicas", |b| {
        b.iter(|| {
            rr += 1;
            decide(
                black_box(&class),
                SessionRoute::Auto,
                Consistency::Session,
                Need::Lsn(95),
                &views,
                Balance::LeastOutstanding,
                rr,
            )
        })
    });
    // A single figure for the README: cached classification per call.
    let cached = Classifier::new(PrimaryFunctions::default());
    cached.classify(TYPICAL);
    let n = 1_000_000;
    let t = Instant::now();
    for _ in 0..n {
        black_box(cached.classify(black_box(TYPICAL)));
    }
    eprintln!(
        "cached classification of a 200-byte SELECT: {:?} per call",
        t.elapsed() / n
    );
}

criterion_group!(benches, bench_classify, bench_decide);
criterion_main!(benches);
