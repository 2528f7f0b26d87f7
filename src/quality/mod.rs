//! The quality collector: how well each peer is served, from what the kernel measures
//! in every TCP socket's `tcp_info`: round-trip times as a histogram, lost segments and
//! the time sending was stalled by the peer's window or the send buffer as counters, the
//! queues as gauges, each by the lifecycle counters' labels and bounded the same way.
//!
//! Two producers feed it, both on the thread that receives the socket-destroy
//! notifications (`lifecycle::subscription`), which is what makes the counts exact:
//! - every `--collector.quality.interval` that thread dumps each namespace's full
//!   sockets with `INET_DIAG_INFO` ([`Sampler::observe`]): one RTT observation per open
//!   connection, and each socket's counters' growth since its last sample;
//! - each destroy notification ([`Sampler::close`]) gives the socket's final RTT (one
//!   observation) and what its counters grew since its last sample.
//!
//! Because one thread does both, a socket's close is always handled after any sample
//! that saw it open: nothing is counted twice, nothing between the last sample and the
//! close is lost. Per socket, only the last sampled values are kept (by cookie, in a
//! map bounded by [`MAX_TRACKED`] per namespace); a socket first seen by the first sample
//! of its namespace adds only what it does from then on, one first seen later was born
//! since the previous sample and adds everything it did.
//!
//! Scrapes only copy the totals: the cost of sampling is off the scrape path, and counts
//! do not depend on how many servers scrape.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::classify::{Direction, Folding, PeerHasher, PeerKey};
use crate::exposition::NativeBuckets;
use crate::lifecycle::Counters;
use crate::parse::sock_destroy::{DestroyedSocket, Outcome};
use crate::parse::sock_diag::InfoSocket;
use crate::parse::tcp_info::TcpInfo;

/// Upper bounds of the classic RTT buckets, microseconds: 50 µs to 5 s in 1-2.5-5
/// steps (16 buckets and `+Inf`), so that in-datacentre round trips are resolved.
pub const RTT_BUCKETS_US: [u32; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000,
];

/// Schema of the native RTT buckets: each is 2^(1/8), about 9%, wider than the one
/// before.
pub const NATIVE_SCHEMA: i8 = 3;

/// Zero threshold of the native buckets: 2^-128 (client_golang's default). An RTT is
/// never this small; observations of no RTT at all are not made.
pub const ZERO_THRESHOLD: f64 = 2.938_735_877_055_719e-39;

/// Most sockets whose last sample one namespace's sampler keeps; past it new sockets
/// are not followed (counted in `conn_exporter_quality_untracked_sockets_total`).
pub const MAX_TRACKED: usize = 1 << 20;

/// Samples a socket may be missing from before its last values are dropped (its close
/// notification normally comes first; one lost to an overrun never comes).
const MISSES_KEPT: u64 = 2;

/// The RTT histogram of one label set: classic and native buckets counted from the same
/// observations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RttHistogram {
    count: u64,
    sum_us: u64,
    /// Observations per classic bucket (not cumulative); the last is `+Inf`.
    classic: [u64; RTT_BUCKETS_US.len() + 1],
    /// Observations per native bucket index.
    native: BTreeMap<i32, u64>,
}

impl RttHistogram {
    /// Counts one round-trip time, in microseconds (what `tcp_info` gives).
    pub fn observe_us(&mut self, rtt_us: u32) {
        self.count += 1;
        self.sum_us += u64::from(rtt_us);
        let classic = RTT_BUCKETS_US.iter().position(|&le| rtt_us <= le).unwrap_or(RTT_BUCKETS_US.len());
        self.classic[classic] += 1;
        *self.native.entry(native_index(f64::from(rtt_us) / 1e6)).or_insert(0) += 1;
    }

    /// Observations.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Their sum, seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_us as f64 / 1e6
    }

    /// Classic buckets as the exposition wants them: `(le seconds, cumulative count)`,
    /// `+Inf` left out.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut n = 0;
        RTT_BUCKETS_US
            .iter()
            .zip(self.classic)
            .map(|(&le, c)| {
                n += c;
                (f64::from(le) / 1e6, n)
            })
            .collect()
    }

    /// The populated native buckets, `(index, count)` by index.
    pub fn native(&self) -> Vec<(i32, u64)> {
        self.native.iter().map(|(&i, &n)| (i, n)).collect()
    }

    /// The native buckets' description, with `positive` from [`native`](Self::native).
    pub fn native_buckets<'a>(&self, positive: &'a [(i32, u64)]) -> NativeBuckets<'a> {
        NativeBuckets { schema: NATIVE_SCHEMA, zero_threshold: ZERO_THRESHOLD, zero_count: 0, positive }
    }
}

/// The native bucket of a positive value at [`NATIVE_SCHEMA`]: the `i` with
/// `2^((i-1)/8) < v <= 2^(i/8)`.
pub fn native_index(v: f64) -> i32 {
    let per_octave = f64::from(1u32 << NATIVE_SCHEMA);
    let mut i = (v.log2() * per_octave).ceil() as i32;
    // log2 may land a hair off at a boundary: settle against the bounds themselves.
    while (f64::from(i - 1) / per_octave).exp2() >= v {
        i -= 1;
    }
    while (f64::from(i) / per_octave).exp2() < v {
        i += 1;
    }
    i
}

/// What a label set has counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QualityTotals {
    /// Round-trip times observed.
    pub rtt: RttHistogram,
    /// Segments lost: retransmitted and not reported duplicate by the peer.
    pub lost_segments: u64,
    /// Data segments sent, retransmissions included.
    pub sent_segments: u64,
    /// Time sending was limited by the peer's receive window, microseconds.
    pub rwnd_limited_us: u64,
    /// Time sending was limited by the send buffer, microseconds.
    pub sndbuf_limited_us: u64,
}

/// The queues of a label set at the last sample, summed over its open sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Send queue: bytes not yet acknowledged (the dump's `wqueue`).
    pub send: u64,
    /// Receive queue: bytes not yet read by the application (`rqueue`).
    pub receive: u64,
    /// Bytes written but not yet sent (`tcpi_notsent_bytes`).
    pub unsent: u64,
}

/// Growth of a socket's running totals between two looks at it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Growth {
    /// `tcpi_total_retrans`.
    pub retransmits: u64,
    /// [`TcpInfo::lost_segments`].
    pub lost_segments: u64,
    /// `tcpi_data_segs_out`.
    pub sent_segments: u64,
    /// `tcpi_rwnd_limited`, microseconds.
    pub rwnd_limited_us: u64,
    /// `tcpi_sndbuf_limited`, microseconds.
    pub sndbuf_limited_us: u64,
}

/// A socket's running totals as last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Last {
    retransmits: u64,
    lost_segments: u64,
    sent_segments: u64,
    rwnd_limited_us: u64,
    sndbuf_limited_us: u64,
    /// The direction it was first counted in: its later growth goes to the same series.
    direction: Direction,
    /// The sample that last saw it.
    seen: u64,
}

impl Last {
    fn of(i: &TcpInfo, direction: Direction, seen: u64) -> Last {
        Last {
            retransmits: u64::from(i.total_retrans),
            lost_segments: i.lost_segments(),
            sent_segments: u64::from(i.data_segs_out.unwrap_or(0)),
            rwnd_limited_us: i.rwnd_limited_us.unwrap_or(0),
            sndbuf_limited_us: i.sndbuf_limited_us.unwrap_or(0),
            direction,
            seen,
        }
    }

    /// What grew from `self` to `now`; a total that went down (it cannot, but a
    /// counter must not follow) grows by nothing.
    fn growth_to(&self, now: &Last) -> Growth {
        Growth {
            retransmits: now.retransmits.saturating_sub(self.retransmits),
            lost_segments: now.lost_segments.saturating_sub(self.lost_segments),
            sent_segments: now.sent_segments.saturating_sub(self.sent_segments),
            rwnd_limited_us: now.rwnd_limited_us.saturating_sub(self.rwnd_limited_us),
            sndbuf_limited_us: now.sndbuf_limited_us.saturating_sub(self.sndbuf_limited_us),
        }
    }

    /// Keeps the larger of each total, so that a later look never counts twice.
    fn advance(&mut self, now: &Last) {
        self.retransmits = self.retransmits.max(now.retransmits);
        self.lost_segments = self.lost_segments.max(now.lost_segments);
        self.sent_segments = self.sent_segments.max(now.sent_segments);
        self.rwnd_limited_us = self.rwnd_limited_us.max(now.rwnd_limited_us);
        self.sndbuf_limited_us = self.sndbuf_limited_us.max(now.sndbuf_limited_us);
        self.seen = now.seen;
    }
}

/// What a look at one socket gives the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Look {
    /// The series it counts in.
    pub direction: Direction,
    /// Its smoothed RTT to observe, microseconds; `None` when it has none.
    pub rtt_us: Option<u32>,
    /// What its running totals grew since the last look.
    pub growth: Growth,
}

/// One namespace's last sampled values of its sockets: pure bookkeeping, fed by the
/// thread that samples and receives the closes.
#[derive(Debug, Default)]
pub struct Sampler {
    /// By cookie: the kernel's, not chosen by whoever opens sockets, so a cheap hasher.
    sockets: HashMap<u64, Last, BuildHasherDefault<PeerHasher>>,
    /// Samples begun; 0 before the first.
    samples: u64,
    /// Whether a sample has completed: sockets first seen after it are new.
    baseline: bool,
    untracked: u64,
}

impl Sampler {
    /// Begins a sample.
    pub fn begin(&mut self) {
        self.samples += 1;
    }

    /// One socket of the sample begun last, in `direction` as the namespace's rule
    /// decided; `None` for a socket without `tcp_info`, or not followed.
    pub fn observe(&mut self, s: &InfoSocket, direction: Direction) -> Option<Look> {
        let info = s.info.as_ref()?;
        let now = Last::of(info, direction, self.samples);
        let rtt_us = (info.rtt_us > 0 && info.state == 1).then_some(info.rtt_us);
        let growth = match self.sockets.get_mut(&s.cookie) {
            Some(last) => {
                let g = last.growth_to(&now);
                last.advance(&now);
                return Some(Look { direction: last.direction, rtt_us, growth: g });
            }
            // Born since the last sample: all it did was done while watched.
            None if self.baseline => Last::of(&TcpInfo::default(), direction, 0).growth_to(&now),
            // Open before the first sample: only what it does from now on.
            None => Growth::default(),
        };
        if self.sockets.len() >= MAX_TRACKED || s.cookie == 0 {
            self.untracked += 1;
            return Some(Look { direction, rtt_us, growth: Growth::default() });
        }
        self.sockets.insert(s.cookie, now);
        Some(Look { direction, rtt_us, growth })
    }

    /// Ends the sample begun last: sockets it did not see for `MISSES_KEPT` (2) samples
    /// are forgotten (their close never came).
    pub fn end(&mut self) {
        let samples = self.samples;
        self.sockets.retain(|_, l| samples - l.seen < MISSES_KEPT);
        self.baseline = true;
    }

    /// A socket's close, in `direction` as decided at its close: its final RTT (for an
    /// established connection) and what grew since its last sample; the direction
    /// it was counted in while open, if it was.
    pub fn close(&mut self, s: &DestroyedSocket, direction: Direction) -> Look {
        let inbound = direction == Direction::Inbound;
        let established = s.outcome(inbound) == Outcome::Closed;
        let Some(info) = s.info else {
            self.sockets.remove(&s.cookie);
            return Look { direction, rtt_us: None, growth: Growth::default() };
        };
        // An aborted connection (a RST sent, SO_LINGER 0) has its smoothed RTT cleared by
        // the kernel before the notification is built, but keeps its minimum RTT: that
        // is its observation then.
        let rtt_us = if info.rtt_us > 0 { Some(info.rtt_us) } else { info.min_rtt_us.filter(|&m| m > 0) };
        let rtt_us = rtt_us.filter(|_| established);
        let now = Last::of(&info, direction, self.samples);
        match self.sockets.remove(&s.cookie) {
            Some(last) => Look { direction: last.direction, rtt_us, growth: last.growth_to(&now) },
            None => Look { direction, rtt_us, growth: Last::of(&TcpInfo::default(), direction, 0).growth_to(&now) },
        }
    }

    /// Sockets not followed because the map was full.
    pub fn untracked(&self) -> u64 {
        self.untracked
    }

    /// Sockets followed now.
    pub fn tracked(&self) -> usize {
        self.sockets.len()
    }
}

/// Whether the collector is sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Not started, or no sample yet.
    Starting = 0,
    /// Sampling.
    Sampling = 1,
    /// It cannot (logged once): the collector reports success 0.
    Failed = 2,
}

/// The quality state shared by the sampling thread and the scrapes.
#[derive(Debug)]
pub struct Quality {
    /// The counters.
    pub counters: Mutex<Counters<QualityTotals>>,
    /// The queues of each label set at the last sample.
    pub backlog: Mutex<HashMap<PeerKey, Backlog>>,
    /// How often open sockets are sampled.
    pub interval: Duration,
    /// Samples taken (of every namespace).
    pub samples: AtomicU64,
    /// Samples that failed (a dump the kernel refused or cut).
    pub failures: AtomicU64,
    /// Sockets not followed because a namespace's map was full.
    pub untracked: AtomicU64,
    /// With the eBPF source: close records its ring buffer had no room for.
    pub closes_lost: AtomicU64,
    /// Wall time of the last sample of every namespace, microseconds.
    pub last_sample_us: AtomicU64,
    /// Whether the last sample read every namespace whole.
    last_ok: AtomicBool,
    status: AtomicU8,
}

impl Quality {
    /// Empty counters with these bounds.
    pub fn new(max_series: usize, folding: Folding, interval: Duration, all_namespaces: bool) -> Quality {
        let mut counters = Counters::with_bound(max_series, folding);
        if all_namespaces {
            counters.set_all_namespaces();
        }
        Quality {
            counters: Mutex::new(counters),
            backlog: Mutex::new(HashMap::new()),
            interval,
            samples: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            untracked: AtomicU64::new(0),
            closes_lost: AtomicU64::new(0),
            last_sample_us: AtomicU64::new(0),
            last_ok: AtomicBool::new(false),
            status: AtomicU8::new(Status::Starting as u8),
        }
    }

    /// The collector's status.
    pub fn status(&self) -> Status {
        match self.status.load(Ordering::Relaxed) {
            1 => Status::Sampling,
            2 => Status::Failed,
            _ => Status::Starting,
        }
    }

    /// Sets the status.
    pub fn set_status(&self, s: Status) {
        self.status.store(s as u8, Ordering::Relaxed);
    }

    /// Whether the last sample read every namespace whole.
    pub fn last_ok(&self) -> bool {
        self.last_ok.load(Ordering::Relaxed)
    }

    /// Records how the last sample went.
    pub fn set_last_ok(&self, ok: bool) {
        self.last_ok.store(ok, Ordering::Relaxed);
    }

    /// The counters, even if a thread panicked while holding them.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Counters<QualityTotals>> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The backlog gauges.
    pub fn lock_backlog(&self) -> std::sync::MutexGuard<'_, HashMap<PeerKey, Backlog>> {
        self.backlog.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Adds a look's growth and RTT to a label set's totals.
pub fn count(t: &mut QualityTotals, look: &Look) {
    if let Some(rtt) = look.rtt_us {
        t.rtt.observe_us(rtt);
    }
    t.lost_segments += look.growth.lost_segments;
    t.sent_segments += look.growth.sent_segments;
    t.rwnd_limited_us += look.growth.rwnd_limited_us;
    t.sndbuf_limited_us += look.growth.sndbuf_limited_us;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Connection, Endpoint, TcpState};

    fn ep(s: &str) -> Endpoint {
        let sa: std::net::SocketAddr = s.parse().unwrap();
        Endpoint::new(sa.ip(), sa.port())
    }

    fn info(retrans: u32, dsack: u32, rwnd: u64, rtt: u32) -> TcpInfo {
        TcpInfo {
            state: 1,
            rtt_us: rtt,
            total_retrans: retrans,
            dsack_dups: Some(dsack),
            rwnd_limited_us: Some(rwnd),
            sndbuf_limited_us: Some(0),
            bytes_acked: 1,
            min_rtt_us: Some(rtt),
            // Ten data segments for each retransmission, to tell the counts apart.
            data_segs_out: Some(retrans * 10),
            ..TcpInfo::default()
        }
    }

    fn open(cookie: u64, i: TcpInfo) -> InfoSocket {
        InfoSocket {
            connection: Connection {
                local: ep("10.0.0.1:40000"),
                remote: ep("10.0.0.2:5432"),
                state: TcpState::Established,
                if_index: 0,
                recv_queue: 0,
                send_queue: 0,
                inode: 1,
            },
            cookie,
            info: Some(i),
        }
    }

    fn closed(cookie: u64, i: TcpInfo) -> DestroyedSocket {
        DestroyedSocket {
            local: ep("10.0.0.1:40000"),
            remote: ep("10.0.0.2:5432"),
            state: TcpState::Close,
            if_index: 0,
            info: Some(TcpInfo { state: 7, ..i }),
            cookie,
        }
    }

    #[test]
    fn buckets_hold_what_their_bounds_say() {
        let mut h = RttHistogram::default();
        for us in [1, 50, 51, 40_000, 5_000_000, 5_000_001] {
            h.observe_us(us);
        }
        let c = h.cumulative();
        assert_eq!(c[0], (0.00005, 2), "1 µs and exactly 50 µs");
        assert_eq!(c[1], (0.0001, 3));
        assert_eq!(c.iter().find(|b| b.0 == 0.05).unwrap().1, 4, "40 ms in le=0.05");
        assert_eq!(c.last().copied(), Some((5.0, 5)), "5 s is in le=5, 5.000001 s only in +Inf");
        assert_eq!(h.count(), 6);
        assert!((h.sum_seconds() - 10.040103).abs() < 1e-9);
        // Native: each observation in (2^((i-1)/8), 2^(i/8)].
        let native = h.native();
        assert_eq!(native.iter().map(|b| b.1).sum::<u64>(), 6);
        for &(i, _) in &native {
            assert!(i > -200 && i < 30, "{i}");
        }
        for v in [1e-6, 5e-5, 0.04, 1.0, 2.0, 0.5, 3.0, 5.000001] {
            let i = native_index(v);
            assert!((f64::from(i - 1) / 8.0).exp2() < v && v <= (f64::from(i) / 8.0).exp2(), "{v} in {i}");
        }
        assert_eq!(
            (native_index(1.0), native_index(2.0), native_index(0.5)),
            (0, 8, -8),
            "powers of two close a bucket"
        );
    }

    #[test]
    fn sockets_open_before_the_first_sample_count_only_what_follows() {
        let mut s = Sampler::default();
        s.begin();
        let first = s.observe(&open(7, info(5, 1, 1_000, 300)), Direction::Outbound).unwrap();
        assert_eq!(first.growth, Growth::default(), "what it did before it was seen is not counted");
        assert_eq!(first.rtt_us, Some(300));
        s.end();
        s.begin();
        let second = s.observe(&open(7, info(8, 1, 4_000, 310)), Direction::Inbound).unwrap();
        assert_eq!(
            second.growth,
            Growth {
                retransmits: 3,
                lost_segments: 3,
                sent_segments: 30,
                rwnd_limited_us: 3_000,
                sndbuf_limited_us: 0
            }
        );
        assert_eq!(second.direction, Direction::Outbound, "it stays in the series it began in");
        s.end();
        // Closes with 2 more retransmits, one reported duplicate.
        let last = s.close(&closed(7, info(10, 2, 4_500, 320)), Direction::Outbound);
        assert_eq!(
            last.growth,
            Growth { retransmits: 2, lost_segments: 1, sent_segments: 20, rwnd_limited_us: 500, sndbuf_limited_us: 0 }
        );
        assert_eq!(last.rtt_us, Some(320));
        assert_eq!(s.tracked(), 0);
    }

    #[test]
    fn a_socket_born_between_samples_counts_its_whole_life() {
        let mut s = Sampler::default();
        s.begin();
        s.end();
        s.begin();
        let seen = s.observe(&open(9, info(2, 0, 100, 50)), Direction::Outbound).unwrap();
        assert_eq!(seen.growth.retransmits, 2);
        s.end();
        // One that lives and dies between two samples: all of it at its close.
        let brief = s.close(&closed(10, info(4, 1, 0, 70)), Direction::Inbound);
        assert_eq!((brief.growth.retransmits, brief.growth.lost_segments, brief.rtt_us), (4, 3, Some(70)));
        assert_eq!(brief.growth.sent_segments, 40);
    }

    #[test]
    fn totals_never_go_back_and_unseen_sockets_are_forgotten() {
        let mut s = Sampler::default();
        s.begin();
        s.observe(&open(1, info(5, 0, 0, 10)), Direction::Outbound);
        s.end();
        s.begin();
        // dsack_dups grew past total_retrans (the network duplicated a segment).
        let g = s.observe(&open(1, info(5, 9, 0, 10)), Direction::Outbound).unwrap().growth;
        assert_eq!(g, Growth::default());
        let g = s.observe(&open(1, info(6, 9, 0, 10)), Direction::Outbound).unwrap().growth;
        assert_eq!((g.retransmits, g.lost_segments), (1, 0), "lost stays at its highest, 5");
        s.end();
        for _ in 0..MISSES_KEPT {
            assert_eq!(s.tracked(), 1);
            s.begin();
            s.end();
        }
        assert_eq!(s.tracked(), 0, "a socket whose close never came is dropped");
    }

    #[test]
    fn an_aborted_connection_is_observed_at_its_minimum_rtt() {
        let mut s = Sampler::default();
        let mut aborted = closed(11, info(0, 0, 0, 0));
        aborted.info =
            Some(TcpInfo { state: 7, rtt_us: 0, min_rtt_us: Some(35), bytes_acked: 0, ..TcpInfo::default() });
        assert_eq!(s.close(&aborted, Direction::Inbound).rtt_us, Some(35));
        aborted.info = Some(TcpInfo { state: 7, rtt_us: 0, min_rtt_us: None, ..TcpInfo::default() });
        assert_eq!(s.close(&aborted, Direction::Inbound).rtt_us, None, "no RTT at all: no observation");
    }

    #[test]
    fn failed_connects_and_sockets_without_info_observe_no_rtt() {
        let mut s = Sampler::default();
        let mut failed = closed(3, TcpInfo { state: 7, ..TcpInfo::default() });
        failed.remote = ep("10.0.0.2:0");
        assert_eq!(s.close(&failed, Direction::Outbound).rtt_us, None);
        let mut no_info = open(4, info(0, 0, 0, 10));
        no_info.info = None;
        assert!(s.observe(&no_info, Direction::Outbound).is_none());
        let mut syn_sent = open(5, info(0, 0, 0, 10));
        syn_sent.info = Some(TcpInfo { state: 2, ..info(1, 0, 0, 10) });
        assert_eq!(s.observe(&syn_sent, Direction::Outbound).unwrap().rtt_us, None, "only established sockets");
    }
}
