//! The `conn-exporter` binary: flags to configuration, logging, listeners, signals, exit codes.
//!
//! Exit codes: 0 after a clean shutdown, 1 when the exporter cannot run (a port taken),
//! 2 for a bad flag or value.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use conn_exporter::config::{version_line, Args, Config, Listen};
use conn_exporter::exporter::Exporter;
use conn_exporter::http::{self, App};
use conn_exporter::logging;
use conn_exporter::webconfig::WebConfigFile;

/// glibc keeps a big scrape's memory in per-thread arenas for good (settled RSS stayed at
/// its peak in the benchmark). jemalloc, built with a background thread that returns
/// freed pages within a second (`.cargo/config.toml`), brings memory back down.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    logging::init(args.log_format, args.log_level.into());
    let config = match Config::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            log::error!("bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let web = match config.web_config_file.as_deref().map(WebConfigFile::open).transpose() {
        Ok(w) => w,
        Err(e) => {
            let path = config.web_config_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
            log::error!("bad --web.config.file {path}: {e}");
            return ExitCode::from(2);
        }
    };
    match run(config, web) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(config: Config, web: Option<WebConfigFile>) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // A gzip scrape holds two blocking threads (encoder and compressor): enough for
        // every scrape --web.max-requests lets in, plus the netlink readers.
        .max_blocking_threads(if config.max_requests == 0 { 512 } else { config.max_requests.saturating_mul(2) + 16 })
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        // Before anything else, so that a SIGTERM right after start-up is a clean stop.
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut exporter = Exporter::new(config.exporter.clone());
        if let Some(web) = &web {
            exporter.set_web_config_status(Arc::clone(&web.status));
        }
        log::info!(
            "starting {}; sockets from {}; procfs {}; collectors {}",
            version_line(),
            exporter.source_name(),
            config.exporter.procfs.display(),
            config.exporter.collectors.names().collect::<Vec<_>>().join(",")
        );
        let mut listeners = Vec::new();
        for (flag, listen) in &config.listen {
            for listener in bind(flag, listen)? {
                log::info!("listening on {} (metrics at {})", listener.local_addr()?, config.telemetry_path);
                listeners.push(listener);
            }
        }
        let app =
            Arc::new(App::new(exporter, config.telemetry_path.clone(), config.max_requests, web, config.write_timeout));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(http::serve(listeners, app, stopped, Duration::from_secs(10)));
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        log::info!("{name} received, shutting down");
        let _ = stop.send(true);
        server.await.context("server task")?;
        log::info!("stopped");
        Ok(())
    })
}

/// Pending connections the kernel may queue per listener; the standard library's 128
/// overflowed when a thousand clients connected at once (the kernel caps this at
/// `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 1024;

fn listen_socket(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // `:port` means IPv4 and IPv6, whatever net.ipv6.bindv6only says.
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

fn bind_error(flag: &str, addr: SocketAddr, e: std::io::Error) -> anyhow::Error {
    let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
        format!(
            "address already in use: another process listens on port {}{}. Pick a free one with --web.listen-address (e.g. --web.listen-address=:9101)",
            addr.port(),
            if addr.port() == 9100 { " (9100 is node_exporter's port; it may be running here)" } else { "" }
        )
    } else {
        e.to_string()
    };
    anyhow::anyhow!("cannot listen on --web.listen-address={flag} ({addr}): {hint}")
}

fn bind(flag: &str, listen: &Listen) -> Result<Vec<TcpListener>> {
    let bind_one = |addr: SocketAddr| listen_socket(addr).map_err(|e| bind_error(flag, addr, e));
    match listen {
        Listen::AnyAddress(port) => {
            // One dual-stack socket; hosts with IPv6 switched off get IPv4 alone.
            let v6 = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), *port);
            match listen_socket(v6) {
                Ok(l) => Ok(vec![l]),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(bind_error(flag, v6, e)),
                Err(_) => Ok(vec![bind_one(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), *port))?]),
            }
        }
        Listen::Addresses(addrs) => addrs.iter().map(|a| bind_one(*a)).collect(),
    }
}
