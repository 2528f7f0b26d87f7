//! The kernel side of the lifecycle counters: a NETLINK_SOCK_DIAG socket subscribed to
//! the TCP destroy groups, drained in batches on a thread of its own, and the listener
//! and interface tables the batches are classified against.
//!
//! Netlink multicast delivers one message per `recv`; waking per message costs more than
//! the message (the prototype lost half the connection rate that way). So the
//! thread reads everything queued, classifies the batch, and sleeps [`BATCH_PAUSE`]; the
//! receive buffer holds what arrives meanwhile.
//!
//! Listeners: a dump of LISTEN sockets only (the kernel then skips the established
//! table, so it costs in proportion to the listeners), made after each batch is drained
//! and before it is classified, at most once per [`BATCH_PAUSE`]. A listener that existed
//! when its connections were accepted is still there, or was destroyed in this batch or
//! lately (kept for `CLOSED_LISTENER_GRACE`): the last scrape's snapshot would be up to a
//! scrape interval old and miss listeners that live shorter than that. A socket that
//! looks outbound is held `OUTBOUND_HOLD` (0.5 s) before it is counted so, in case its
//! listener's notification comes in a later batch; the hold bounds memory to half a
//! second of notifications.

use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};
use nix::sys::socket::{getsockopt, setsockopt, sockopt};

use super::{Lifecycle, Status};
use crate::classify::{Direction, ListenerSet};
use crate::iface::InterfaceTable;
use crate::model::{Endpoint, TcpState};
use crate::parse::sock_destroy::{self, DestroyedSocket};
use crate::parse::sock_diag::{self, Batch, DecodeError};
use crate::source::{self, interfaces};

/// `SKNLGRP_INET_TCP_DESTROY` and `SKNLGRP_INET6_TCP_DESTROY` (`linux/sock_diag.h`).
pub const GROUPS: [u32; 2] = [1, 3];
/// Pause between batches.
pub const BATCH_PAUSE: Duration = Duration::from_millis(25);
/// How long a destroyed listener still makes its port inbound.
const CLOSED_LISTENER_GRACE: Duration = Duration::from_secs(5);
/// How long a socket that looks outbound waits before it is counted so. An accepted
/// socket's notification can be read in one batch and its listener's, queued just after
/// it by another kernel worker, in the next, with the listener already gone from the
/// dump in between: held this long, the socket meets its listener among the destroyed
/// ones and counts inbound. Outbound counts appear this much later.
const OUTBOUND_HOLD: Duration = Duration::from_millis(500);
/// How often the interface table is re-read (addresses change rarely).
const INTERFACES_EVERY: Duration = Duration::from_secs(5);
/// The receive buffer asked for: 64 MiB holds ~170k messages, about 8 s at 20k/s.
pub const RECV_BUFFER: usize = 64 << 20;
/// Messages classified at once, to bound the batch's memory.
const MAX_BATCH: usize = 16_384;
/// Minimum time between two overrun log lines.
const OVERRUN_LOG_EVERY: Duration = Duration::from_secs(60);
const TCP_LISTEN: u32 = 10;

/// Why the subscription could not start.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// A netlink call failed.
    #[error("{what}: {source}")]
    Kernel {
        /// The call.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// Opens and subscribes the socket; returns it with the receive buffer it got.
pub fn subscribe() -> Result<(Socket, usize, &'static str), SubscribeError> {
    let kernel = |what| move |source| SubscribeError::Kernel { what, source };
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(kernel("opening a NETLINK_SOCK_DIAG socket"))?;
    // SO_RCVBUFFORCE passes net.core.rmem_max with CAP_NET_ADMIN; without it SO_RCVBUF
    // is capped at rmem_max by the kernel.
    let how = if setsockopt(&socket.as_fd(), sockopt::RcvBufForce, &RECV_BUFFER).is_ok() {
        "SO_RCVBUFFORCE"
    } else {
        let _ = setsockopt(&socket.as_fd(), sockopt::RcvBuf, &RECV_BUFFER);
        "SO_RCVBUF, capped by net.core.rmem_max"
    };
    let got = getsockopt(&socket.as_fd(), sockopt::RcvBuf).unwrap_or(0);
    socket.bind(&SocketAddr::new(0, 0)).map_err(kernel("binding the NETLINK_SOCK_DIAG socket"))?;
    for g in GROUPS {
        socket.add_membership(g).map_err(kernel("joining the TCP destroy groups"))?;
    }
    socket.set_non_blocking(true).map_err(kernel("making the destroy socket non-blocking"))?;
    Ok((socket, got, how))
}

/// Starts the receiving thread (named `lifecycle`). A refused subscription is logged and
/// leaves the collector failed; the exporter goes on. A `procfs` of another network
/// namespace (a fixture tree) has no notifications to give: the collector stays off.
pub fn start(state: Arc<Lifecycle>, procfs: &Path) {
    if !source::is_own_namespace(procfs) {
        log::warn!(
            "lifecycle collector: --path.procfs {} is not this process's network namespace, whose socket-destroy notifications are the only ones it can receive; off",
            procfs.display()
        );
        state.set_status(Status::Failed);
        return;
    }
    let (socket, got, how) = match subscribe() {
        Ok(s) => s,
        Err(e) => {
            log::error!(
                "lifecycle collector: the kernel refused the socket-destroy subscription ({e}); closed and failed connection counters are unavailable"
            );
            state.set_status(Status::Failed);
            return;
        }
    };
    log::info!(
        "lifecycle collector: subscribed to TCP socket-destroy notifications, receive buffer {got} bytes ({how}; asked {RECV_BUFFER})"
    );
    state.set_status(Status::Subscribed);
    let thread_state = Arc::clone(&state);
    let spawned = std::thread::Builder::new().name("lifecycle".into()).spawn(move || run(&socket, &thread_state));
    if let Err(e) = spawned {
        log::error!("lifecycle collector: cannot start its thread ({e})");
        state.set_status(Status::Failed);
    }
}

/// The namespace's listeners and interfaces as the thread keeps them.
struct Tables {
    diag: Option<Socket>,
    open: Vec<Endpoint>,
    closed: Vec<(Endpoint, Instant)>,
    listeners: ListenerSet,
    dumped: Option<Instant>,
    interfaces: InterfaceTable,
    interfaces_read: Option<Instant>,
    dump_failed_logged: bool,
}

impl Tables {
    fn new() -> Tables {
        Tables {
            diag: None,
            open: Vec::new(),
            closed: Vec::new(),
            listeners: ListenerSet::default(),
            dumped: None,
            interfaces: InterfaceTable::default(),
            interfaces_read: None,
            dump_failed_logged: false,
        }
    }

    /// Brings listeners (and now and then interfaces) up to date for a batch.
    fn refresh(&mut self, batch: &[DestroyedSocket]) {
        let now = Instant::now();
        self.closed.retain(|(_, t)| now.duration_since(*t) < CLOSED_LISTENER_GRACE);
        // Listeners destroyed in this batch: no remote, a local port.
        for s in batch {
            if s.remote.port == 0 && s.remote.ip.is_unspecified() && s.local.port != 0 {
                self.closed.push((s.local, now));
            }
        }
        if self.dumped.is_none_or(|t| now.duration_since(t) >= BATCH_PAUSE) {
            match self.dump_listeners() {
                Ok(l) => self.open = l,
                Err(e) if !self.dump_failed_logged => {
                    self.dump_failed_logged = true;
                    log::warn!(
                        "lifecycle collector: listener dump failed ({e}); directions use the last listeners known"
                    );
                }
                Err(_) => {}
            }
            self.dumped = Some(now);
        }
        if self.interfaces_read.is_none_or(|t| now.duration_since(t) >= INTERFACES_EVERY) {
            if let Ok(t) = interfaces::read_live() {
                self.interfaces = t;
            }
            self.interfaces_read = Some(now);
        }
        self.listeners = ListenerSet::new(self.open.iter().chain(self.closed.iter().map(|(e, _)| e)).copied());
    }

    fn dump_listeners(&mut self) -> Result<Vec<Endpoint>, SubscribeError> {
        let kernel = |what| move |source| SubscribeError::Kernel { what, source };
        if self.diag.is_none() {
            let mut s = Socket::new(NETLINK_SOCK_DIAG).map_err(kernel("opening a listener-dump socket"))?;
            s.bind_auto().map_err(kernel("binding the listener-dump socket"))?;
            s.connect(&SocketAddr::new(0, 0)).map_err(kernel("connecting the listener-dump socket"))?;
            self.diag = Some(s);
        }
        let Some(diag) = &self.diag else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        let mut buf = Vec::with_capacity(64 * 1024);
        for af in [sock_diag::AF_INET, sock_diag::AF_INET6] {
            diag.send(&sock_diag::dump_request(af, 1 << TCP_LISTEN, 1), 0).map_err(kernel("listener dump"))?;
            loop {
                buf.clear();
                diag.recv(&mut buf, 0).map_err(kernel("listener dump"))?;
                match sock_diag::decode_batch(&buf, |c| {
                    if c.state == TcpState::Listen {
                        out.push(c.local)
                    }
                }) {
                    Ok(Batch::Done) => break,
                    Ok(Batch::More) => {}
                    // No inet6_diag (IPv6 off): no IPv6 listeners.
                    Err(DecodeError::Kernel { errno }) if errno == nix::errno::Errno::ENOENT as i32 => break,
                    Err(e) => {
                        self.diag = None;
                        return Err(SubscribeError::Kernel {
                            what: "listener dump",
                            source: io::Error::new(io::ErrorKind::InvalidData, e),
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}

fn run(socket: &Socket, state: &Lifecycle) {
    let mut tables = Tables::new();
    let mut batch: Vec<DestroyedSocket> = Vec::with_capacity(1024);
    // Sockets that look outbound, held until OUTBOUND_HOLD has passed: see its note.
    let mut pending: Vec<(DestroyedSocket, Instant)> = Vec::with_capacity(1024);
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut last_overrun_log: Option<Instant> = None;
    let mut overruns_unlogged = 0u64;
    loop {
        let mut empty = false;
        while batch.len() < MAX_BATCH {
            buf.clear();
            match socket.recv(&mut buf, 0) {
                Ok(_) => {
                    state.events.fetch_add(1, Ordering::Relaxed);
                    match sock_destroy::decode_message(&buf) {
                        Ok(Some(s)) => batch.push(s),
                        Ok(None) => {}
                        Err(e) => log::debug!("lifecycle collector: undecodable destroy message ({e})"),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    empty = true;
                    break;
                }
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOBUFS as i32) => {
                    state.overruns.fetch_add(1, Ordering::Relaxed);
                    overruns_unlogged += 1;
                    if last_overrun_log.is_none_or(|t| t.elapsed() >= OVERRUN_LOG_EVERY) {
                        log::warn!(
                            "lifecycle collector: the kernel dropped socket-destroy messages (receive buffer overrun, {overruns_unlogged} since the last warning); counts are lower bounds, raise net.core.rmem_max"
                        );
                        overruns_unlogged = 0;
                        last_overrun_log = Some(Instant::now());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("lifecycle collector: receiving destroy messages failed ({e})");
                    empty = true;
                    break;
                }
            }
        }
        if !batch.is_empty() || !pending.is_empty() {
            tables.refresh(&batch);
            let now = Instant::now();
            pending.extend(batch.drain(..).map(|s| (s, now)));
            let mut counters = state.lock();
            pending.retain(|(s, seen)| {
                let ready = tables.listeners.direction(&s.local) == Direction::Inbound
                    || now.duration_since(*seen) >= OUTBOUND_HOLD;
                if ready {
                    counters.add(s, &tables.listeners, &tables.interfaces);
                }
                !ready
            });
        }
        if empty {
            std::thread::sleep(BATCH_PAUSE);
        }
    }
}
