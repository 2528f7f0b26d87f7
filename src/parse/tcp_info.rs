//! `struct tcp_info` (the `INET_DIAG_INFO` attribute of a sock_diag reply or a
//! socket-destroy notification) decoded into [`TcpInfo`]: the fields the lifecycle
//! counters and the quality collector use.
//!
//! Offsets are those of the UAPI `linux/tcp.h`, which only ever grows at the end: an
//! older kernel's shorter struct leaves the later fields `None`.

/// Offsets in `struct tcp_info`: eight `__u8`, then `__u32`s from 8, `__u64`s where noted.
const TCPI_UNACKED: usize = 24;
const TCPI_LOST: usize = 32;
const TCPI_RTT: usize = 68;
const TCPI_RTTVAR: usize = 72;
const TCPI_TOTAL_RETRANS: usize = 100;
/// `__u64`.
const TCPI_BYTES_ACKED: usize = 120;
/// `__u64`.
const TCPI_BYTES_RECEIVED: usize = 128;
const TCPI_NOTSENT_BYTES: usize = 144;
const TCPI_MIN_RTT: usize = 148;
const TCPI_DATA_SEGS_OUT: usize = 156;
/// `__u64`, microseconds.
const TCPI_RWND_LIMITED: usize = 176;
/// `__u64`, microseconds.
const TCPI_SNDBUF_LIMITED: usize = 184;
/// `__u64`.
const TCPI_BYTES_SENT: usize = 200;
/// `__u64`.
const TCPI_BYTES_RETRANS: usize = 208;
const TCPI_DSACK_DUPS: usize = 216;

/// What is used of a socket's `tcp_info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpInfo {
    /// `tcpi_state`.
    pub state: u8,
    /// `tcpi_rtt`: the smoothed round-trip time, microseconds; 0 when the socket never
    /// had a sample.
    pub rtt_us: u32,
    /// `tcpi_rttvar`, microseconds.
    pub rttvar_us: u32,
    /// `tcpi_min_rtt`, microseconds; `None` when absent or `~0` (never sampled).
    pub min_rtt_us: Option<u32>,
    /// `tcpi_unacked`: segments in flight.
    pub unacked: u32,
    /// `tcpi_lost`: segments in flight now marked lost (not a running total).
    pub lost: u32,
    /// `tcpi_total_retrans`: segments retransmitted, a running total.
    pub total_retrans: u32,
    /// `tcpi_bytes_acked`: sequence space the peer acknowledged (SYN and FIN count one).
    pub bytes_acked: u64,
    /// `tcpi_bytes_received`: sequence space received (a FIN counts one).
    pub bytes_received: u64,
    /// `tcpi_notsent_bytes`: bytes written by the application not yet sent (Linux 4.6+).
    pub notsent_bytes: Option<u32>,
    /// `tcpi_data_segs_out`: data segments sent, retransmissions included, a running
    /// total (Linux 4.6+).
    pub data_segs_out: Option<u32>,
    /// `tcpi_rwnd_limited`: time sending was limited by the peer's receive window,
    /// microseconds (Linux 4.10+).
    pub rwnd_limited_us: Option<u64>,
    /// `tcpi_sndbuf_limited`: time sending was limited by the send buffer, microseconds
    /// (Linux 4.10+).
    pub sndbuf_limited_us: Option<u64>,
    /// `tcpi_bytes_sent`: payload bytes sent, retransmissions included (Linux 4.19+).
    pub bytes_sent: Option<u64>,
    /// `tcpi_bytes_retrans`: payload bytes retransmitted (Linux 4.19+).
    pub bytes_retrans: Option<u64>,
    /// `tcpi_dsack_dups`: segments the peer reported, by DSACK, as received twice
    /// (Linux 5.0+).
    pub dsack_dups: Option<u32>,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Decodes a `tcp_info` attribute's payload; `None` when it is shorter than the fields
/// every kernel with destroy notifications (4.5+) has, up to `tcpi_bytes_received`.
pub fn decode(b: &[u8]) -> Option<TcpInfo> {
    Some(TcpInfo {
        state: *b.first()?,
        unacked: u32_at(b, TCPI_UNACKED)?,
        lost: u32_at(b, TCPI_LOST)?,
        rtt_us: u32_at(b, TCPI_RTT)?,
        rttvar_us: u32_at(b, TCPI_RTTVAR)?,
        total_retrans: u32_at(b, TCPI_TOTAL_RETRANS)?,
        bytes_acked: u64_at(b, TCPI_BYTES_ACKED)?,
        bytes_received: u64_at(b, TCPI_BYTES_RECEIVED)?,
        notsent_bytes: u32_at(b, TCPI_NOTSENT_BYTES),
        min_rtt_us: u32_at(b, TCPI_MIN_RTT).filter(|&v| v != u32::MAX),
        data_segs_out: u32_at(b, TCPI_DATA_SEGS_OUT),
        rwnd_limited_us: u64_at(b, TCPI_RWND_LIMITED),
        sndbuf_limited_us: u64_at(b, TCPI_SNDBUF_LIMITED),
        bytes_sent: u64_at(b, TCPI_BYTES_SENT),
        bytes_retrans: u64_at(b, TCPI_BYTES_RETRANS),
        dsack_dups: u32_at(b, TCPI_DSACK_DUPS),
    })
}

impl TcpInfo {
    /// Retransmitted segments the peer did not report as duplicates: segments that were
    /// lost. A running total (unlike `tcpi_lost`); 0 rather than negative where the
    /// network itself duplicated a segment.
    pub fn lost_segments(&self) -> u64 {
        u64::from(self.total_retrans.saturating_sub(self.dsack_dups.unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    }

    fn put64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    }

    #[test]
    fn every_field_is_read_from_its_offset_and_short_structs_leave_later_fields_out() {
        // Linux 6.18's struct is 248 bytes.
        let mut b = vec![0u8; 248];
        b[0] = 1;
        for (at, v) in [
            (TCPI_UNACKED, 3),
            (TCPI_LOST, 2),
            (TCPI_RTT, 40_123),
            (TCPI_RTTVAR, 500),
            (TCPI_TOTAL_RETRANS, 9),
            (TCPI_NOTSENT_BYTES, 4096),
            (TCPI_MIN_RTT, 40_001),
            (TCPI_DSACK_DUPS, 4),
            (TCPI_DATA_SEGS_OUT, 700),
        ] {
            put32(&mut b, at, v);
        }
        for (at, v) in [
            (TCPI_BYTES_ACKED, 1001),
            (TCPI_BYTES_RECEIVED, 51),
            (TCPI_RWND_LIMITED, 7_000_000),
            (TCPI_SNDBUF_LIMITED, 8),
            (TCPI_BYTES_SENT, 1000),
            (TCPI_BYTES_RETRANS, 10),
        ] {
            put64(&mut b, at, v);
        }
        let i = decode(&b).unwrap();
        assert_eq!((i.state, i.unacked, i.lost, i.rtt_us, i.rttvar_us, i.total_retrans), (1, 3, 2, 40_123, 500, 9));
        assert_eq!((i.bytes_acked, i.bytes_received), (1001, 51));
        assert_eq!((i.notsent_bytes, i.min_rtt_us, i.dsack_dups), (Some(4096), Some(40_001), Some(4)));
        assert_eq!(i.data_segs_out, Some(700));
        assert_eq!((i.rwnd_limited_us, i.sndbuf_limited_us), (Some(7_000_000), Some(8)));
        assert_eq!((i.bytes_sent, i.bytes_retrans), (Some(1000), Some(10)));
        assert_eq!(i.lost_segments(), 5);
        // A 4.9 kernel's struct ends after tcpi_min_rtt's neighbours.
        let old = decode(&b[..TCPI_RWND_LIMITED]).unwrap();
        assert_eq!((old.rwnd_limited_us, old.dsack_dups, old.notsent_bytes), (None, None, Some(4096)));
        assert_eq!(old.lost_segments(), 9, "without DSACK counts every retransmission is a loss");
        assert!(decode(&b[..TCPI_BYTES_RECEIVED + 7]).is_none());
        assert!(decode(&[]).is_none());
        put32(&mut b, TCPI_MIN_RTT, u32::MAX);
        put32(&mut b, TCPI_DSACK_DUPS, 20);
        let i = decode(&b).unwrap();
        assert_eq!((i.min_rtt_us, i.lost_segments()), (None, 0));
    }
}
