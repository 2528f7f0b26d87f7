//! The eBPF walk's records: `parse::ebpf_socket::decode`.
//!
//! Checks, besides never panicking: exactly the 64-byte records of a known family decode,
//! and a decoded record is what its bytes say (namespace, ports, interface, inode,
//! queues, state code, kind, pass, bucket, addresses of the family's width).

#![no_main]

use conn_exporter::model::TcpState;
use conn_exporter::parse::ebpf_socket::{decode, Kind, RECORD_LEN};
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;

fuzz_target!(|data: &[u8]| {
    let Some(s) = decode(data) else {
        assert!(data.len() != RECORD_LEN || !matches!(data[56], 2 | 10), "refused {data:?}");
        return;
    };
    assert_eq!(data.len(), RECORD_LEN);
    let u32_at = |at: usize| u32::from_ne_bytes(data[at..at + 4].try_into().unwrap());
    let c = s.connection;
    assert_eq!(s.netns, u32_at(32));
    assert_eq!(s.kind, Kind::from_code(data[58]));
    assert_eq!((s.pass, s.bucket), (data[59], u32_at(60)));
    assert_eq!(c.if_index, u32_at(36));
    assert_eq!(c.inode, u32_at(40));
    assert_eq!((c.recv_queue, c.send_queue), (u32_at(44), u32_at(48)));
    assert_eq!(c.local.port, u16::from_ne_bytes([data[52], data[53]]));
    assert_eq!(c.remote.port, u16::from_ne_bytes([data[54], data[55]]));
    assert_eq!(c.state, TcpState::from_code(data[57]));
    match (c.local.ip, c.remote.ip) {
        (IpAddr::V4(l), IpAddr::V4(r)) => {
            assert_eq!(data[56], 2);
            assert_eq!((l.octets(), r.octets()), (data[0..4].try_into().unwrap(), data[16..20].try_into().unwrap()));
        }
        (IpAddr::V6(l), IpAddr::V6(r)) => {
            assert_eq!(data[56], 10);
            assert_eq!((&l.octets()[..], &r.octets()[..]), (&data[0..16], &data[16..32]));
        }
        _ => panic!("mixed families in {data:?}"),
    }
});
