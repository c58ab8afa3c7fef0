//! Frame splitting and message building, the per-message costs of the relay.
//! Run: cargo bench --bench frame

use bytes::{BufMut, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::protocol::build::{self, Severity};
use sluice::protocol::frame::{peek_header, split};

fn data_rows(n: usize) -> BytesMut {
    let mut b = BytesMut::new();
    for i in 0..n {
        let col = format!("value-{i:08}-abcdefghijklmnopqrstuvwxyz");
        b.put_u8(b'D');
        b.put_u32((4 + 2 + 5 * (4 + col.len())) as u32);
        b.put_u16(5);
        for _ in 0..5 {
            b.put_u32(col.len() as u32);
            b.put_slice(col.as_bytes());
        }
    }
    b
}

fn bench_split(c: &mut Criterion) {
    let wire = data_rows(10_000);
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Bytes(wire.len() as u64));
    g.bench_function("split_10k_datarows", |b| {
        b.iter(|| {
            let mut buf = wire.clone();
            let mut n = 0;
            while let Ok(Some(f)) = split(&mut buf, 1 << 30) {
                n += f.bytes.len();
            }
            n
        })
    });
    g.bench_function("header_scan_10k_datarows", |b| {
        b.iter(|| {
            let mut off = 0;
            while let Ok(Some(h)) = peek_header(&wire[off..], 1 << 30) {
                off += h.total;
            }
            off
        })
    });
    g.finish();
}

fn bench_build(c: &mut Criterion) {
    let mut out = BytesMut::with_capacity(4096);
    c.bench_function("build_error_response", |b| {
        b.iter(|| {
            out.clear();
            build::error(
                &mut out,
                Severity::Fatal,
                "28P01",
                "password authentication failed for user \"app\"",
            );
            out.len()
        })
    });
    c.bench_function("build_greeting", |b| {
        b.iter(|| {
            out.clear();
            for (k, v) in [
                ("client_encoding", "UTF8"),
                ("DateStyle", "ISO, MDY"),
                ("TimeZone", "UTC"),
            ] {
                build::parameter_status(&mut out, k, v);
            }
            build::backend_key_data(&mut out, 1234, 5678);
            out.len()
        })
    });
}

criterion_group!(benches, bench_split, bench_build);
criterion_main!(benches);
