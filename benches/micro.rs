//! Criterion micro-benchmarks of the per-socket hot paths: the /proc parser, the netlink
//! decoder and the exposition encoder. `cargo bench --bench micro`; figures in
//! docs/performance.md. Inputs are built here in the kernel's exact layouts.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use conn_exporter::exposition::{Encoder, Format, Number, Value};
use conn_exporter::model::Family;
use conn_exporter::parse::proc_net::{parse_tcp, ByteOrder};
use conn_exporter::parse::sock_diag::{decode_batch, reply_message, AF_INET, AF_INET6};

const SOCKETS: usize = 10_000;

fn proc_net_tcp(n: usize) -> String {
    let mut text = String::from(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n",
    );
    for i in 0..n {
        let src = u32::from_le_bytes([127, 1, (i >> 8) as u8, i as u8]);
        text.push_str(&format!(
            "{i:4}: {src:08X}:{:04X} 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 {} 1 0000000000000000 20 4 30 10 -1\n",
            40000 + i % 20000,
            100000 + i
        ));
    }
    text
}

fn netlink_batch(n: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(n * 88);
    for i in 0..n {
        if i % 10 == 0 {
            let v6 = Ipv6Addr::LOCALHOST.octets();
            buf.extend(reply_message(AF_INET6, 1, &v6, 40000 + (i % 20000) as u16, &v6, 9090, 0));
        } else {
            buf.extend(reply_message(
                AF_INET,
                1,
                &[127, 1, (i >> 8) as u8, i as u8],
                40000 + (i % 20000) as u16,
                &[127, 0, 0, 1],
                8080,
                0,
            ));
        }
    }
    buf
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("per_socket");
    g.throughput(Throughput::Elements(SOCKETS as u64));

    let text = proc_net_tcp(SOCKETS);
    g.bench_function("proc_net_tcp_parse", |b| {
        b.iter(|| {
            let mut n = 0usize;
            parse_tcp(black_box(text.as_bytes()), Family::Ipv4, ByteOrder::Little, |_| n += 1).unwrap();
            n
        })
    });

    let batch = netlink_batch(SOCKETS);
    g.bench_function("sock_diag_decode", |b| {
        b.iter(|| {
            let mut n = 0usize;
            decode_batch(black_box(&batch), |_| n += 1).unwrap();
            n
        })
    });

    let addrs: Vec<(IpAddr, IpAddr)> = (0..SOCKETS)
        .map(|i| {
            if i % 10 == 0 {
                (IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i as u16)), IpAddr::V6(Ipv6Addr::LOCALHOST))
            } else {
                (IpAddr::V4(Ipv4Addr::new(10, 1, (i >> 8) as u8, i as u8)), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)))
            }
        })
        .collect();
    let mut out = Vec::with_capacity(SOCKETS * 200);
    g.bench_function("encode_connection_series", |b| {
        b.iter(|| {
            out.clear();
            let mut enc = Encoder::new(&mut out, Format::OpenMetrics);
            for (i, (src, dst)) in addrs.iter().enumerate() {
                enc.sample(
                    "network_connections_info",
                    &[
                        ("destination_address", Value::Ip(*dst)),
                        ("destination_port", Value::Int(443)),
                        ("interface", Value::Str("eth0")),
                        ("source_address", Value::Ip(*src)),
                        ("source_port", Value::Int(40000 + i as u64 % 20000)),
                        ("state", Value::Str("ESTABLISHED")),
                    ],
                    Number::Int(1),
                )
                .unwrap();
            }
            out.len()
        })
    });
    g.finish();
}

criterion_group!(micro, benches);
criterion_main!(micro);
