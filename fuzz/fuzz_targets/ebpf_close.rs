//! The eBPF program's close records: `parse::ebpf_close::decode`.
//!
//! Checks, besides never panicking: exactly the 104-byte records of a known family and
//! direction decode, and a decoded record is what its bytes say (ports, cookie, RTT,
//! retransmits, the lost segments never above the retransmits).

#![no_main]

use conn_exporter::classify::Direction;
use conn_exporter::parse::ebpf_close::{decode, RECORD_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(r) = decode(data) else {
        assert!(data.len() != RECORD_LEN || !matches!(data[52], 2 | 10) || data[53] > 1, "refused {data:?}");
        return;
    };
    assert_eq!(data.len(), RECORD_LEN);
    assert_eq!(r.direction, if data[53] == 0 { Direction::Inbound } else { Direction::Outbound });
    let s = r.socket;
    assert_eq!(s.cookie, u64::from_ne_bytes(data[0..8].try_into().unwrap()));
    assert_eq!(s.local.port, u16::from_ne_bytes([data[48], data[49]]));
    assert_eq!(s.remote.port, u16::from_ne_bytes([data[50], data[51]]));
    let i = s.info.expect("a record carries its tcp_info fields");
    // A failed connect (byte 54) has no RTT, whatever the field holds.
    let rtt = if data[54] == 1 { 0 } else { u32::from_ne_bytes(data[56..60].try_into().unwrap()) };
    assert_eq!(i.rtt_us, rtt);
    assert_eq!(i.total_retrans, u32::from_ne_bytes(data[60..64].try_into().unwrap()));
    assert!(i.lost_segments() <= u64::from(i.total_retrans));
});
