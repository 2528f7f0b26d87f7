//! Integration tests: the real binary, real sockets, real Prometheus tools. One test
//! binary (see `util` for the shared helpers).

mod cli;
mod faults;
mod formats;
mod golden;
mod hash_password;
mod hostile;
mod lifecycle;
mod live;
#[path = "../support/metrics_proto.rs"]
mod metrics_proto;
mod namespaces;
mod nat;
mod ns;
mod owners;
mod peers;
mod prometheus;
mod quality;
mod robustness;
mod security;
mod service_exit;
mod util;
mod webconfig_compat;
