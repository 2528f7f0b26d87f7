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

use conn_exporter::config::{version_line, Args, Config, HashPasswordArgs, Listen, HASH_PASSWORD};
use conn_exporter::exporter::Exporter;
use conn_exporter::http::{self, App};
use conn_exporter::logging;
use conn_exporter::metrics::CollectorName;
use conn_exporter::webconfig::WebConfigFile;

/// glibc keeps a big scrape's memory in per-thread arenas for good (settled RSS stayed at
/// its peak in the benchmark). jemalloc, built with a background thread that returns
/// freed pages within a second (`.cargo/config.toml`), brings memory back down.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let mut argv = std::env::args_os();
    let program = argv.next().unwrap_or_default();
    let rest: Vec<_> = argv.collect();
    if rest.first().is_some_and(|a| a == HASH_PASSWORD) {
        return match HashPasswordArgs::try_parse_from(std::iter::once(program).chain(rest.into_iter().skip(1))) {
            Ok(args) => hash_password(args.cost),
            Err(e) => {
                let _ = e.print();
                if e.use_stderr() {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                }
            }
        };
    }
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

/// bcrypt uses the first 72 bytes of a password; a longer one would be cut without a word.
const BCRYPT_MAX_PASSWORD: usize = 72;

/// `conn-exporter hash-password`: exit 0 with the hash on standard output, 2 for an
/// unusable password, 1 when standard input cannot be read.
fn hash_password(cost: u32) -> ExitCode {
    let password = match read_password() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("conn-exporter hash-password: cannot read the password from standard input: {e:#}");
            return ExitCode::from(1);
        }
    };
    if password.is_empty() {
        eprintln!(
            "conn-exporter hash-password: empty password refused; give it on standard input, e.g. printf '%s\\n' \"$PASSWORD\" | conn-exporter hash-password"
        );
        return ExitCode::from(2);
    }
    if password.len() > BCRYPT_MAX_PASSWORD {
        eprintln!(
            "conn-exporter hash-password: the password is {} bytes; bcrypt uses at most {BCRYPT_MAX_PASSWORD}, so the rest would be ignored: use a shorter one",
            password.len()
        );
        return ExitCode::from(2);
    }
    match bcrypt::hash_with_result(&password, cost) {
        // $2y$, as `htpasswd -B` writes it; exporter-toolkit accepts $2a$, $2b$ and $2y$.
        Ok(parts) => {
            println!("{}", parts.format_for_version(bcrypt::Version::TwoY));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("conn-exporter hash-password: {e}");
            ExitCode::from(1)
        }
    }
}

/// The password from standard input: a line typed without echo on a terminal, or all of
/// a pipe; one trailing newline (`\n` or `\r\n`) is not part of it.
fn read_password() -> Result<Vec<u8>> {
    use std::io::{BufRead, IsTerminal, Read};
    let stdin = std::io::stdin();
    let mut password = Vec::new();
    if stdin.is_terminal() {
        use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
        // Echo goes off before the prompt shows, so nothing typed after it is echoed.
        let saved = tcgetattr(&stdin).ok();
        if let Some(saved) = &saved {
            let mut quiet = saved.clone();
            quiet.local_flags.remove(LocalFlags::ECHO);
            quiet.local_flags.insert(LocalFlags::ECHONL);
            let _ = tcsetattr(&stdin, SetArg::TCSANOW, &quiet);
        }
        eprint!("Password: ");
        let read = stdin.lock().read_until(b'\n', &mut password);
        if let Some(saved) = &saved {
            let _ = tcsetattr(&stdin, SetArg::TCSANOW, saved);
        }
        read.context("reading from the terminal")?;
    } else {
        stdin.lock().read_to_end(&mut password).context("reading standard input")?;
    }
    if password.ends_with(b"\n") {
        password.pop();
        if password.ends_with(b"\r") {
            password.pop();
        }
    }
    Ok(password)
}

fn run(config: Config, web: Option<WebConfigFile>) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // A gzip scrape holds two blocking threads (encoder and compressor), and at most two
        // bcrypt checks run at once. With the main thread, two workers, the two netlink
        // receivers of each of the three kinds of shared read, the lifecycle listener and
        // jemalloc's purger, a process needs at most 2 x --web.max-requests + 13 threads
        // (93 at the default 40): the shipped unit's TasksMax=128 holds that.
        .max_blocking_threads(if config.max_requests == 0 { 512 } else { config.max_requests.saturating_mul(2) + 2 })
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
        if config.exporter.namespaces == conn_exporter::netns::NamespaceMode::All {
            log::info!("--collector.namespaces=all: sockets are read {}", exporter.all_mode_reads());
        }
        let procfs_only = config.exporter.source == conn_exporter::source::reader::SourceChoice::Procfs;
        let quality = config.exporter.collectors.contains(CollectorName::Quality) && !procfs_only;
        if procfs_only && config.exporter.collectors.contains(CollectorName::Quality) {
            // Only the netlink dumps and notifications carry tcp_info.
            log::error!(
                "quality collector: off: --collector.connections.source=procfs reads /proc/net/tcp, which has no tcp_info; it reports success 0"
            );
            exporter.quality().set_status(conn_exporter::quality::Status::Failed);
        }
        if let Some(nat) = exporter.nat() {
            // Before the counters' threads: their first closes find the table seeded.
            conn_exporter::nat::start(nat, exporter.lifecycle().namespaces.clone());
        }
        if config.exporter.collectors.contains(CollectorName::Lifecycle) {
            conn_exporter::lifecycle::ebpf::start(
                exporter.lifecycle(),
                &config.exporter.procfs,
                config.lifecycle_source,
                config.exporter.lifecycle_max_series,
                config.exporter.owners,
            );
        } else if quality {
            let lifecycle = exporter.lifecycle();
            let notifications = conn_exporter::lifecycle::Lifecycle::quality_only(
                lifecycle.namespaces.clone(),
                lifecycle.owners.clone(),
                exporter.quality(),
                None,
            )
            .with_nat(exporter.nat());
            conn_exporter::lifecycle::subscription::start(Arc::new(notifications), &config.exporter.procfs);
        }

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
