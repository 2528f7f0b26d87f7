//! Command-line flags, parsed by clap, then checked and turned into a [`Config`] that the
//! rest of the program uses.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::{ArgAction, Parser};
use log::LevelFilter;
use thiserror::Error;

use crate::classify::Folding;
use crate::exporter::{ExporterConfig, REVISION, VERSION};
pub use crate::lifecycle::ebpf::SourceChoice as LifecycleSource;
use crate::logging::LogFormat;
use crate::metrics::{CollectorName, CollectorSet};
use crate::source::reader::SourceChoice;

/// `--version` text; build.rs bakes the revision in.
pub const LONG_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (revision ", env!("CONN_EXPORTER_REVISION"), ")");

/// Log levels of `--log.level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    /// Everything.
    Debug,
    /// Start-up, shutdown and state changes.
    Info,
    /// Problems that leave the exporter serving.
    Warn,
    /// Problems that stop something.
    Error,
}

impl From<LogLevel> for LevelFilter {
    fn from(l: LogLevel) -> LevelFilter {
        match l {
            LogLevel::Debug => LevelFilter::Debug,
            LogLevel::Info => LevelFilter::Info,
            LogLevel::Warn => LevelFilter::Warn,
            LogLevel::Error => LevelFilter::Error,
        }
    }
}

/// Flags as given, in node_exporter's names.
#[derive(Debug, Parser)]
#[command(
    name = "conn-exporter",
    version = LONG_VERSION,
    about = "Prometheus exporter for every TCP connection of a Linux host, IPv4 and IPv6.",
    after_help = "Subcommand:\n  conn-exporter hash-password [--cost N]   read a password on standard input, print its bcrypt hash for basic_auth_users",
    max_term_width = 100
)]
pub struct Args {
    /// Addresses to listen on, as given.
    #[arg(
        long = "web.listen-address",
        value_name = "ADDR",
        default_value = ":9100",
        action = ArgAction::Append,
        help = "Address to listen on: host:port, [ipv6]:port or :port (every address, IPv4 and IPv6). Repeatable."
    )]
    pub listen_addresses: Vec<String>,

    /// Path under which to expose metrics.
    #[arg(long = "web.telemetry-path", value_name = "PATH", default_value = "/metrics")]
    pub telemetry_path: String,

    /// Web configuration file (exporter-toolkit format): TLS, client certificates, basic
    /// auth, response headers. Re-read when it changes.
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,

    /// Most concurrent scrapes; more are answered 503. 0 means no limit.
    #[arg(long = "web.max-requests", value_name = "N", default_value_t = 40)]
    pub max_requests: usize,

    /// Abort a response when the client has taken none of it for this long (a client that
    /// stops reading), freeing its scrape slot and memory; e.g. 15s, 1m.
    #[arg(long = "web.write-timeout", value_name = "DURATION", default_value = "15s", value_parser = parse_timeout)]
    pub write_timeout: std::time::Duration,

    /// Leave out the exporter's own metrics: conn_exporter_build_info, the scrape_collector
    /// metrics, the web_config reload metrics and process_* metrics.
    #[arg(long = "web.disable-exporter-metrics")]
    pub disable_exporter_metrics: bool,

    /// Root of the procfs tree the socket tables are read from.
    #[arg(long = "path.procfs", value_name = "DIR", default_value = "/proc")]
    pub procfs: PathBuf,

    /// Enable the connections collector (per-connection series; default on).
    #[arg(long = "collector.connections", overrides_with = "no_connections")]
    pub connections: bool,
    /// Disable the connections collector.
    #[arg(long = "no-collector.connections", overrides_with = "connections")]
    pub no_connections: bool,

    /// Enable the states collector (exact counts by family, interface and state; default on).
    #[arg(long = "collector.states", overrides_with = "no_states")]
    pub states: bool,
    /// Disable the states collector.
    #[arg(long = "no-collector.states", overrides_with = "states")]
    pub no_states: bool,

    /// Enable the peers collector (counts by service and remote peer, ephemeral port folded; default on).
    #[arg(long = "collector.peers", overrides_with = "no_peers")]
    pub peers: bool,
    /// Disable the peers collector.
    #[arg(long = "no-collector.peers", overrides_with = "peers")]
    pub no_peers: bool,

    /// Enable the listeners collector (accept queue length and limit per listening socket; default on).
    #[arg(long = "collector.listeners", overrides_with = "no_listeners")]
    pub listeners: bool,
    /// Disable the listeners collector.
    #[arg(long = "no-collector.listeners", overrides_with = "listeners")]
    pub no_listeners: bool,

    /// Enable the lifecycle collector (closed and failed connections, bytes and retransmits, from an eBPF program or the kernel's socket-destroy notifications: see --collector.lifecycle.source; default on).
    #[arg(long = "collector.lifecycle", overrides_with = "no_lifecycle")]
    pub lifecycle: bool,
    /// Disable the lifecycle collector.
    #[arg(long = "no-collector.lifecycle", overrides_with = "lifecycle")]
    pub no_lifecycle: bool,

    /// Most label sets of the lifecycle counters (one label set is up to 5 series: closed,
    /// failed, sent and received bytes, retransmits); past three quarters of it new remote
    /// addresses are counted in destination_address="other" (counts kept, series never
    /// decrease). 0 means no limit.
    #[arg(long = "collector.lifecycle.max-series", value_name = "N", default_value_t = 5000)]
    pub lifecycle_max_series: usize,

    /// Source of the lifecycle counters: ebpf (an eBPF program counting in the kernel;
    /// needs CAP_BPF and CAP_PERFMON; keeps the port of failed connects), netlink
    /// (socket-destroy notifications; no privileges), or auto (ebpf when the kernel allows
    /// it, netlink otherwise). The eBPF program counts without owners: ebpf with
    /// --collector.connections.owner is refused at start (exit 2), auto then takes netlink.
    #[arg(long = "collector.lifecycle.source", value_name = "SOURCE", value_enum, default_value_t = LifecycleSource::Auto)]
    pub lifecycle_source: LifecycleSource,

    /// Enable the quality collector (round-trip time histograms, lost segments, window and
    /// buffer stalls and queues by peer, from each socket's tcp_info; default on).
    #[arg(long = "collector.quality", overrides_with = "no_quality")]
    pub quality: bool,
    /// Disable the quality collector.
    #[arg(long = "no-collector.quality", overrides_with = "quality")]
    pub no_quality: bool,

    /// How often the quality collector samples open connections' tcp_info (one RTT
    /// observation per connection per sample), at least 1s.
    #[arg(long = "collector.quality.interval", value_name = "DURATION", default_value = "15s", value_parser = parse_timeout)]
    pub quality_interval: std::time::Duration,

    /// Most label sets of the quality families (one label set is 19 series of the RTT
    /// histogram's classic buckets plus 7 others); past three quarters of it new remote
    /// addresses are counted in destination_address="other" (counts kept, series never
    /// decrease). 0 means no limit.
    #[arg(long = "collector.quality.max-series", value_name = "N", default_value_t = 500)]
    pub quality_max_series: usize,

    /// Resolve NAT through conntrack: label outbound series with the backend a Service
    /// address was rewritten to, inbound ones with the client's address before SNAT
    /// (needs CAP_NET_ADMIN; default off).
    #[arg(long = "collector.nat", overrides_with = "no_nat")]
    pub nat: bool,
    /// Disable NAT resolution.
    #[arg(long = "no-collector.nat", overrides_with = "nat")]
    pub no_nat: bool,

    /// Translated conntrack entries kept, all namespaces together; past it translations
    /// are counted in conn_exporter_nat_entries_dropped_total and not labelled.
    #[arg(long = "collector.nat.max-entries", value_name = "N", default_value_t = 262_144)]
    pub nat_max_entries: usize,

    /// Most network_connection_peers label sets in a scrape; past it the remote addresses
    /// with the fewest sockets are merged into destination_address="other" (counts kept).
    /// 0 means no limit.
    #[arg(long = "collector.peers.max-series", value_name = "N", default_value_t = 5000)]
    pub peers_max_series: usize,

    /// Count IPv4 remote addresses (IPv4-mapped ones included) by this prefix length in
    /// network_connection_peers (e.g. 24: 198.51.100.0/24); 32 keeps each address.
    #[arg(long = "collector.peers.remote-prefix-length", value_name = "BITS", default_value_t = 32,
          value_parser = clap::value_parser!(u8).range(0..=32))]
    pub peers_prefix_v4: u8,

    /// Count IPv6 remote addresses by this prefix length in network_connection_peers;
    /// 128 keeps each address.
    #[arg(long = "collector.peers.remote-prefix-length-ipv6", value_name = "BITS", default_value_t = 128,
          value_parser = clap::value_parser!(u8).range(0..=128))]
    pub peers_prefix_v6: u8,

    /// Most per-connection series in a scrape (LISTEN and ESTABLISHED kept first). 0 means no limit.
    #[arg(long = "collector.connections.max-series", value_name = "N", default_value_t = 20000)]
    pub max_series: usize,

    /// Where sockets are read from: netlink (sock_diag) when the procfs tree is this
    /// process's own namespace and the kernel allows it (auto), or always one of the two.
    #[arg(long = "collector.connections.source", value_enum, default_value = "auto")]
    pub source: SourceChoice,

    /// Which network namespaces are read: the exporter's own (host), or every one on the
    /// host (all; adds the netns, container_id and pod_uid labels; needs CAP_SYS_ADMIN
    /// and CAP_SYS_PTRACE).
    #[arg(long = "collector.namespaces", value_enum, default_value = "host")]
    pub namespaces: crate::netns::NamespaceMode,

    /// How --collector.namespaces=all reads sockets: with an eBPF walk of the host's TCP
    /// hash table, one pass for every namespace that shares it (ebpf; needs CAP_BPF and
    /// CAP_PERFMON), with a sock_diag dump per namespace (netlink), or the walk where the
    /// kernel allows it and the dumps otherwise (auto).
    #[arg(long = "collector.namespaces.source", value_enum, default_value = "auto")]
    pub namespaces_source: crate::source::socket_table::TableChoice,

    /// Label per-connection, peers, listener and lifecycle series with the owning process
    /// (`process`, its comm) and its `systemd_unit`; a shared socket takes the lowest pid's
    /// owner, a closed inbound connection its listener's.
    #[arg(long = "collector.connections.owner")]
    pub owners: bool,

    /// Only log messages with the given severity or above.
    #[arg(long = "log.level", value_enum, default_value = "info")]
    pub log_level: LogLevel,

    /// Output format of log messages.
    #[arg(long = "log.format", value_enum, default_value = "logfmt")]
    pub log_format: LogFormat,
}

/// The `hash-password` subcommand's own name, checked before the exporter's flags so
/// that those keep working without a subcommand.
pub const HASH_PASSWORD: &str = "hash-password";

/// `conn-exporter hash-password`: a bcrypt hash for `basic_auth_users`.
#[derive(Debug, Parser)]
#[command(
    name = "conn-exporter hash-password",
    // Parsed on its own, from the program's argv[0]: without this, usage and errors
    // would read `conn-exporter [OPTIONS]`, the exporter's command line.
    bin_name = "conn-exporter hash-password",
    version = LONG_VERSION,
    about = "Reads a password on standard input (one line from a terminal, without echo; everything up to the \
             end from a pipe, one trailing newline removed) and prints its bcrypt hash, for basic_auth_users in \
             --web.config.file. An empty password is refused (exit code 2).",
    max_term_width = 100
)]
pub struct HashPasswordArgs {
    /// bcrypt cost: each step doubles the time a check takes (the exporter caches successful checks).
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=31))]
    pub cost: u32,
}

/// A flag value that parsed but makes no sense.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A listen address that is not host:port.
    #[error("--web.listen-address {0:?}: {1}")]
    ListenAddress(String, String),
    /// A telemetry path that is not an absolute path, or is one of the fixed paths.
    #[error("--web.telemetry-path {0:?}: {1}")]
    TelemetryPath(String, &'static str),
    /// Every collector switched off.
    #[error("every collector is disabled: enable at least one of --collector.connections, --collector.states, --collector.peers, --collector.listeners, --collector.lifecycle, --collector.quality")]
    NoCollectors,
    /// The eBPF lifecycle source asked for together with a label only the notifications give.
    #[error("--collector.lifecycle.source=ebpf counts without owners; with {0} use --collector.lifecycle.source=auto or netlink (the socket-destroy notifications, by owner)")]
    EbpfWith(&'static str),
}

/// Where to listen: a wildcard bind for `:port`, or resolved addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// Every address of the host, IPv6 and IPv4 (one dual-stack socket, or IPv4 alone when IPv6 is off).
    AnyAddress(u16),
    /// These addresses.
    Addresses(Vec<SocketAddr>),
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listeners, one entry per flag.
    pub listen: Vec<(String, Listen)>,
    /// Metrics path.
    pub telemetry_path: String,
    /// Concurrent scrape limit; 0 for none.
    pub max_requests: usize,
    /// `--web.config.file`.
    pub web_config_file: Option<PathBuf>,
    /// `--web.write-timeout`.
    pub write_timeout: std::time::Duration,
    /// What a scrape does.
    pub exporter: ExporterConfig,
    /// Log level.
    pub log_level: LevelFilter,
    /// Log format.
    pub log_format: LogFormat,
    /// `--collector.lifecycle.source`.
    pub lifecycle_source: LifecycleSource,
}

/// Parses one `--web.listen-address` value.
pub fn parse_listen(value: &str) -> Result<Listen, ConfigError> {
    let err = |why: &str| ConfigError::ListenAddress(value.to_owned(), why.to_owned());
    if let Some(port) = value.strip_prefix(':') {
        return port.parse().map(Listen::AnyAddress).map_err(|_| err("the port must be a number from 0 to 65535"));
    }
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(err("expected host:port, [ipv6]:port or :port"));
    };
    let port: u16 = port.parse().map_err(|_| err("the port must be a number from 0 to 65535"))?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() {
        return Err(err("empty host"));
    }
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(Listen::Addresses(vec![SocketAddr::new(ip, port)]));
    }
    if host.contains(':') {
        return Err(err("an IPv6 address must be in brackets: [addr]:port"));
    }
    let addrs: Vec<SocketAddr> =
        (host, port).to_socket_addrs().map_err(|e| err(&format!("cannot resolve {host:?}: {e}")))?.collect();
    if addrs.is_empty() {
        return Err(err(&format!("{host:?} resolves to no address")));
    }
    Ok(Listen::Addresses(addrs))
}

impl Config {
    /// Checks parsed flags.
    pub fn from_args(args: Args) -> Result<Config, ConfigError> {
        let listen = args
            .listen_addresses
            .iter()
            .map(|a| parse_listen(a).map(|l| (a.clone(), l)))
            .collect::<Result<Vec<_>, _>>()?;
        let path = &args.telemetry_path;
        if !path.starts_with('/') || path.contains(['?', '#']) {
            return Err(ConfigError::TelemetryPath(path.clone(), "must be an absolute path without query or fragment"));
        }
        if path == "/" || path == "/-/healthy" {
            return Err(ConfigError::TelemetryPath(path.clone(), "is taken by the landing page or health check"));
        }
        let mut collectors = CollectorSet::ALL;
        collectors.set(CollectorName::Connections, !args.no_connections);
        collectors.set(CollectorName::States, !args.no_states);
        collectors.set(CollectorName::Peers, !args.no_peers);
        collectors.set(CollectorName::Listeners, !args.no_listeners);
        collectors.set(CollectorName::Lifecycle, !args.no_lifecycle);
        collectors.set(CollectorName::Quality, !args.no_quality);
        collectors.set(CollectorName::Nat, false);
        if collectors.is_empty() {
            return Err(ConfigError::NoCollectors);
        }
        // An enricher of the families above, with its own success metric.
        collectors.set(CollectorName::Nat, args.nat && !args.no_nat);
        if args.lifecycle_source == LifecycleSource::Ebpf
            && collectors.contains(CollectorName::Lifecycle)
            && args.owners
        {
            return Err(ConfigError::EbpfWith("--collector.connections.owner"));
        }
        Ok(Config {
            listen,
            telemetry_path: args.telemetry_path,
            max_requests: args.max_requests,
            web_config_file: args.web_config_file,
            write_timeout: args.write_timeout,
            exporter: ExporterConfig {
                procfs: args.procfs,
                collectors,
                max_series: args.max_series,
                peers_max_series: args.peers_max_series,
                lifecycle_max_series: args.lifecycle_max_series,
                quality_max_series: args.quality_max_series,
                quality_interval: args.quality_interval,
                nat_max_entries: args.nat_max_entries,
                peers_folding: Folding { ipv4_prefix: args.peers_prefix_v4, ipv6_prefix: args.peers_prefix_v6 },
                exporter_metrics: !args.disable_exporter_metrics,
                source: args.source,
                namespaces: args.namespaces,
                namespaces_source: args.namespaces_source,
                owners: args.owners,
            },
            log_level: args.log_level.into(),
            log_format: args.log_format,
            lifecycle_source: args.lifecycle_source,
        })
    }
}

/// A `--web.write-timeout` value: a humantime duration of at least one second.
fn parse_timeout(value: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(value).map_err(|e| format!("{e} (e.g. 15s, 1m)"))?;
    if d < std::time::Duration::from_secs(1) {
        return Err("must be at least 1s".to_owned());
    }
    Ok(d)
}

/// Version string used by the landing page.
pub fn version_line() -> String {
    format!("conn-exporter {VERSION} (revision {REVISION})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let args = Args::try_parse_from(std::iter::once("conn-exporter").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Config::from_args(args).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_follow_node_exporter() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen, vec![(":9100".to_owned(), Listen::AnyAddress(9100))]);
        assert_eq!(c.telemetry_path, "/metrics");
        assert_eq!(c.max_requests, 40);
        assert_eq!(c.exporter.max_series, 20000);
        assert_eq!(c.exporter.peers_max_series, 5000);
        assert_eq!(c.exporter.peers_folding, Folding::default());
        assert_eq!(c.write_timeout, std::time::Duration::from_secs(15));
        assert_eq!(c.exporter.collectors, defaults());
        assert!(c.exporter.exporter_metrics);
    }

    /// Every collector but NAT resolution, which is opt-in.
    fn defaults() -> CollectorSet {
        let mut set = CollectorSet::ALL;
        set.set(CollectorName::Nat, false);
        set
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen("127.0.0.1:9"), Ok(Listen::Addresses(vec!["127.0.0.1:9".parse().unwrap()])));
        assert_eq!(parse_listen("[::1]:9"), Ok(Listen::Addresses(vec!["[::1]:9".parse().unwrap()])));
        assert!(parse_listen("::1:9").is_err());
        assert!(parse_listen("127.0.0.1").is_err());
        assert!(parse_listen(":99999").is_err());
        assert!(parse_listen(":").is_err());
        let c = parse(&["--web.listen-address", "127.0.0.1:1", "--web.listen-address=[::1]:2"]).unwrap();
        assert_eq!(c.listen.len(), 2);
    }

    #[test]
    fn collectors_switch_and_the_last_flag_wins() {
        let c = parse(&["--no-collector.connections"]).unwrap();
        assert_eq!(
            c.exporter.collectors,
            CollectorSet::of([
                CollectorName::States,
                CollectorName::Peers,
                CollectorName::Listeners,
                CollectorName::Lifecycle,
                CollectorName::Quality
            ])
        );
        let c = parse(&["--no-collector.states", "--collector.states"]).unwrap();
        assert_eq!(c.exporter.collectors, defaults());
        assert!(parse(&[
            "--no-collector.states",
            "--no-collector.connections",
            "--no-collector.peers",
            "--no-collector.listeners",
            "--no-collector.lifecycle",
            "--no-collector.quality"
        ])
        .unwrap_err()
        .contains("every collector"));
        assert!(parse(&["--collector.quality.interval=500ms"]).is_err());
        let c = parse(&["--collector.quality.interval=1m", "--collector.quality.max-series=7"]).unwrap();
        assert_eq!((c.exporter.quality_interval.as_secs(), c.exporter.quality_max_series), (60, 7));
    }

    #[test]
    fn nat_is_off_by_default_and_bounded() {
        let c = parse(&[]).unwrap();
        assert!(!c.exporter.collectors.contains(CollectorName::Nat));
        assert_eq!(c.exporter.nat_max_entries, 262_144);
        let c = parse(&["--collector.nat", "--collector.nat.max-entries=5"]).unwrap();
        assert!(c.exporter.collectors.contains(CollectorName::Nat));
        assert_eq!(c.exporter.nat_max_entries, 5);
        assert!(!parse(&["--collector.nat", "--no-collector.nat"])
            .unwrap()
            .exporter
            .collectors
            .contains(CollectorName::Nat));
        assert!(parse(&["--collector.nat.max-entries=lots"]).unwrap_err().contains("max-entries"));
    }

    #[test]
    fn hash_password_cost() {
        let parse = |a: &[&str]| HashPasswordArgs::try_parse_from(std::iter::once("x").chain(a.iter().copied()));
        assert_eq!(parse(&[]).unwrap().cost, 10);
        assert_eq!(parse(&["--cost", "12"]).unwrap().cost, 12);
        assert!(parse(&["--cost", "3"]).unwrap_err().to_string().contains("--cost"));
        assert!(parse(&["--cost", "32"]).is_err());
    }

    #[test]
    fn the_ebpf_source_is_refused_with_labels_only_the_notifications_give() {
        let flag = "--collector.connections.owner";
        let err = parse(&["--collector.lifecycle.source=ebpf", flag]).unwrap_err();
        assert!(err.contains("--collector.lifecycle.source=ebpf") && err.contains(flag), "{err}");
        assert!(parse(&["--collector.lifecycle.source=auto", flag]).is_ok());
        assert!(parse(&["--collector.lifecycle.source=ebpf", "--no-collector.lifecycle", flag]).is_ok());
        assert!(parse(&["--collector.lifecycle.source=ebpf"]).is_ok());
        // Every namespace is counted by the program too.
        assert!(parse(&["--collector.lifecycle.source=ebpf", "--collector.namespaces=all"]).is_ok());
    }

    #[test]
    fn bad_values_say_which_flag() {
        assert!(parse(&["--collector.connections.max-series", "many"]).unwrap_err().contains("max-series"));
        assert!(parse(&["--log.level", "loud"]).unwrap_err().contains("log.level"));
        assert!(parse(&["--web.telemetry-path", "metrics"]).unwrap_err().contains("telemetry-path"));
        assert!(parse(&["--web.listen-address", "nowhere"]).unwrap_err().contains("listen-address"));
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--collector.peers.remote-prefix-length", "33"]).unwrap_err().contains("remote-prefix-length"));
        assert!(parse(&["--web.write-timeout", "10ms"]).unwrap_err().contains("write-timeout"));
        assert!(parse(&["--collector.lifecycle.source", "bpf"])
            .unwrap_err()
            .contains("invalid value 'bpf' for '--collector.lifecycle.source"));
        assert_eq!(parse(&[]).unwrap().lifecycle_source, LifecycleSource::Auto);
        assert_eq!(
            parse(&["--collector.lifecycle.source=netlink"]).unwrap().lifecycle_source,
            LifecycleSource::Netlink
        );
    }
}
