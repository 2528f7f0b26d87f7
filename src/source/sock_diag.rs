//! Sockets from the kernel's NETLINK_SOCK_DIAG (inet_diag) dump: the socket I/O only;
//! `parse::sock_diag` builds the request and decodes the replies.

use std::io;
use std::sync::mpsc::SyncSender;
use std::sync::Mutex;

use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

use super::SourceError;
use crate::model::{Connection, Family};
use crate::parse::sock_diag::{self, DecodeError};

/// The kernel sends at most 32 KiB per dump message batch; twice that never truncates.
const RECV_BYTES: usize = 64 * 1024;

/// A connected NETLINK_SOCK_DIAG socket; each carries one dump.
pub struct SockDiag {
    socket: Socket,
}

impl SockDiag {
    /// Opens the socket. An error here means netlink is refused (seccomp, a sandbox
    /// without AF_NETLINK, an old kernel): callers may fall back to procfs.
    pub fn open() -> Result<SockDiag, SourceError> {
        let kernel = |source| SourceError::Kernel { what: "opening a NETLINK_SOCK_DIAG socket", source };
        let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(kernel)?;
        socket.bind_auto().map_err(kernel)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(kernel)?;
        Ok(SockDiag { socket })
    }
}

/// What the receiving threads hand to the decoding one.
enum Received {
    Batch(Family, Vec<u8>),
    Failed(Family, SourceError),
}

impl SockDiag {
    /// Receives one family's dump, handing each buffer on as it arrives.
    fn receive(&self, family: Family, out: &SyncSender<Received>, pool: &Mutex<Vec<Vec<u8>>>) {
        let af = match family {
            Family::Ipv4 => sock_diag::AF_INET,
            Family::Ipv6 => sock_diag::AF_INET6,
        };
        let failed = |source| Received::Failed(family, SourceError::Kernel { what: "sock_diag dump", source });
        if let Err(e) = self.socket.send(&sock_diag::dump_request(af, sock_diag::ALL_STATES, 1), 0) {
            let _ = out.send(failed(e));
            return;
        }
        loop {
            let recycled = pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let mut buf = recycled.unwrap_or_else(|| Vec::with_capacity(RECV_BYTES));
            buf.clear();
            if let Err(e) = self.socket.recv(&mut buf, 0) {
                let _ = out.send(failed(e));
                return;
            }
            let end = sock_diag::ends_dump(&buf);
            if out.send(Received::Batch(family, buf)).is_err() || end {
                return;
            }
        }
    }

    /// Dumps both families, each received on a thread of its own (over a socket of its
    /// own) while the calling thread decodes into `sink`: the kernel's work, most of the
    /// cost, runs on both cores and overlaps with ours. Returns, per family, how many
    /// sockets were read, or `None` when the kernel has no inet6_diag (IPv6 off), like a
    /// missing `tcp6`.
    pub fn dump_all(self, sink: &mut impl FnMut(Connection)) -> [Result<Option<u64>, SourceError>; 2] {
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Received>(8);
        let pool = Mutex::new(Vec::new());
        let ipv6 = SockDiag::open();
        std::thread::scope(|scope| {
            let pool = &pool;
            let mut results: [Result<Option<u64>, SourceError>; 2] = [Ok(Some(0)), Ok(Some(0))];
            for (family, diag) in [(Family::Ipv4, Ok(self)), (Family::Ipv6, ipv6)] {
                let out = full_tx.clone();
                let spawned = std::thread::Builder::new().name(format!("netlink-{}", family.label())).spawn_scoped(
                    scope,
                    move || match diag {
                        Ok(diag) => diag.receive(family, &out, pool),
                        Err(e) => {
                            let _ = out.send(Received::Failed(family, e));
                        }
                    },
                );
                // A thread the system refuses (TasksMax, RLIMIT_NPROC) fails this
                // family's read, not the process.
                if let Err(source) = spawned {
                    results[family.index()] =
                        Err(SourceError::Kernel { what: "starting a netlink receiver thread", source });
                }
            }
            drop(full_tx);
            for received in full_rx {
                match received {
                    Received::Failed(family, e) => results[family.index()] = Err(e),
                    Received::Batch(family, buf) => {
                        let slot = &mut results[family.index()];
                        if let Ok(Some(count)) = slot {
                            match sock_diag::decode_batch(&buf, |c| {
                                *count += 1;
                                sink(c)
                            }) {
                                Ok(_) => {}
                                Err(DecodeError::Kernel { errno })
                                    if family == Family::Ipv6 && errno == libc_enoent() && *count == 0 =>
                                {
                                    *slot = Ok(None)
                                }
                                Err(e) => {
                                    *slot = Err(SourceError::Kernel {
                                        what: "decoding the sock_diag dump",
                                        source: io::Error::new(io::ErrorKind::InvalidData, e),
                                    })
                                }
                            }
                        }
                        pool.lock().unwrap_or_else(|e| e.into_inner()).push(buf);
                    }
                }
            }
            results
        })
    }
}

/// ENOENT: what the kernel answers for a family whose diag handler is not loaded.
fn libc_enoent() -> i32 {
    nix::errno::Errno::ENOENT as i32
}
