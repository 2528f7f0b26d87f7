//! Pure parsers: bytes or readers in, typed data out. Nothing here opens a file or a socket.

pub mod conntrack;
pub mod ebpf_close;
pub mod ebpf_socket;
pub mod hex;
pub mod proc_net;
pub mod process;
pub mod route;
pub mod sock_destroy;
pub mod sock_diag;
pub mod sysctl;
pub mod tcp_info;
