//! NETLINK_SOCK_DIAG receive buffers: `decode_batch`, `ends_dump` and `decode_socket`.
//!
//! Checks, besides never panicking: the receiving thread's `ends_dump` and the decoder
//! agree, so the receiver stops where the decoder stops (a buffer that `decode_batch`
//! finds `Done` or cannot decode ends the dump); every socket decoded is the
//! `inet_diag_msg` its bytes say; `decode_socket` refuses exactly the short payloads and
//! foreign families.

#![no_main]

use std::net::IpAddr;

use conn_exporter::parse::sock_diag::{decode_batch, decode_socket, ends_dump, Batch, AF_INET, AF_INET6};
use libfuzzer_sys::fuzz_target;

/// `struct inet_diag_msg` is 72 bytes.
const MSG_LEN: usize = 72;

fn check_socket(msg: &[u8]) {
    let Ok(conn) = decode_socket(msg) else {
        assert!(msg.len() < MSG_LEN || !matches!(msg[0], AF_INET | AF_INET6), "decode_socket refused {msg:?}");
        return;
    };
    assert!(msg.len() >= MSG_LEN && matches!(msg[0], AF_INET | AF_INET6));
    // inet_diag_sockid at 4: sport, dport (big-endian), src[16], dst[16], if (host order).
    assert_eq!(conn.local.port, u16::from_be_bytes([msg[4], msg[5]]));
    assert_eq!(conn.remote.port, u16::from_be_bytes([msg[6], msg[7]]));
    for (ip, raw) in [(conn.local.ip, &msg[8..24]), (conn.remote.ip, &msg[24..40])] {
        match ip {
            IpAddr::V4(v4) => assert!(msg[0] == AF_INET && v4.octets() == raw[..4]),
            IpAddr::V6(v6) => assert!(msg[0] == AF_INET6 && v6.octets() == raw[..]),
        }
    }
    assert_eq!(conn.if_index, u32::from_ne_bytes([msg[40], msg[41], msg[42], msg[43]]));
    assert!(conn.state as u8 == msg[1] || conn.state as u8 == 0);
}

fuzz_target!(|data: &[u8]| {
    let mut sockets = 0usize;
    let decoded = decode_batch(data, |_| sockets += 1);
    let ends = ends_dump(data);
    match &decoded {
        Ok(Batch::More) => {}
        Ok(Batch::Done) | Err(_) => assert!(ends, "decode_batch gave {decoded:?} but ends_dump says the dump goes on"),
    }
    // Each socket takes a 16-byte header and a 72-byte payload.
    assert!(sockets <= data.len() / (16 + MSG_LEN));
    check_socket(data);
    if data.len() > 16 {
        check_socket(&data[16..]);
    }
});
