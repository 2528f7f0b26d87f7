//! Helpers shared by the integration tests: start the exporter, speak HTTP, run tools.

use std::cell::{Cell, RefCell};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

static HOST_SOCKETS: RwLock<()> = RwLock::new(());

thread_local! {
    /// Whether this test thread holds the host's sockets exclusively.
    static EXCLUSIVE: Cell<bool> = const { Cell::new(false) };
    /// This thread's shared hold and how many exporters use it: a second read lock on
    /// one thread could deadlock behind a waiting writer, so there is at most one.
    static SHARED: RefCell<(usize, Option<RwLockReadGuard<'static, ()>>)> = const { RefCell::new((0, None)) };
}

/// The whole host's socket table to one test: tests that compare it with `ss` take this,
/// so that no other test's short-lived connections show up in their comparison. Every
/// other test holds the shared side while it has an exporter running.
pub fn serial() -> Serial {
    let guard = HOST_SOCKETS.write().unwrap_or_else(|e| e.into_inner());
    EXCLUSIVE.with(|e| e.set(true));
    Serial(guard)
}

pub struct Serial(#[allow(dead_code)] RwLockWriteGuard<'static, ()>);

impl Drop for Serial {
    fn drop(&mut self) {
        EXCLUSIVE.with(|e| e.set(false));
    }
}

/// Takes (or counts one more use of) this thread's shared hold; see [`serial`].
pub struct SharedHold(bool);

/// The shared side of [`serial`], for a test that opens sockets without an exporter.
pub fn shared() -> SharedHold {
    SharedHold::take()
}

impl SharedHold {
    fn take() -> SharedHold {
        if EXCLUSIVE.with(Cell::get) {
            return SharedHold(false);
        }
        SHARED.with(|s| {
            let mut s = s.borrow_mut();
            if s.0 == 0 {
                s.1 = Some(HOST_SOCKETS.read().unwrap_or_else(|e| e.into_inner()));
            }
            s.0 += 1;
        });
        SharedHold(true)
    }
}

impl Drop for SharedHold {
    fn drop(&mut self) {
        if self.0 {
            SHARED.with(|s| {
                let mut s = s.borrow_mut();
                s.0 -= 1;
                if s.0 == 0 {
                    s.1 = None;
                }
            });
        }
    }
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    repo().join("tests/fixtures/proc")
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_conn-exporter")
}

/// Fails (never skips) when a tool the tests need is missing.
pub fn require_tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|p| p.is_file()))
        .unwrap_or_default();
    found.unwrap_or_else(|| panic!("{name} is not installed: run scripts/test.sh, which installs it"))
}

/// A running exporter, killed on drop.
pub struct Exporter {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
    _host_sockets: SharedHold,
}

impl Exporter {
    /// Starts the binary on a free loopback port with extra flags.
    pub fn start(args: &[&str]) -> Exporter {
        Exporter::start_with(&[binary()], args)
    }

    /// Starts `command` (the binary, possibly behind a wrapper such as `ip netns exec`).
    pub fn start_with(command: &[&str], args: &[&str]) -> Exporter {
        let host_sockets = SharedHold::take();
        let mut child = Command::new(command[0])
            .args(&command[1..])
            .arg("--web.listen-address=127.0.0.1:0")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn conn-exporter");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap().to_owned());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("exporter did not start; log: {:?}", log.lock().unwrap()));
        Exporter { child, addr: addr.parse().unwrap(), log, _host_sockets: host_sockets }
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        http_get(self.addr, path, &[])
    }

    pub fn scrape(&self) -> String {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200, "{}", r.text());
        let text = r.text();
        assert_no_duplicate_series(&text);
        text
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits (up to 5 s) for a log line containing `needle`; returns the whole log.
    pub fn wait_log(&self, needle: &str) -> String {
        wait_for(Duration::from_secs(5), needle, || {
            let log = self.log_text();
            log.contains(needle).then_some(log)
        })
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("utf-8 body")
    }
}

/// A raw HTTP/1.1 request, so the tests see exactly what goes over the wire.
pub fn http_request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    try_http(addr, method, path, headers).unwrap_or_else(|| panic!("{method} http://{addr}{path}: no response"))
}

/// Like [`http_request`], `None` when the server does not answer.
pub fn try_http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Option<HttpResponse> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    Some(parse_response(&raw, method == "HEAD"))
}

pub fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http_request(addr, "GET", path, headers)
}

fn parse_response(raw: &[u8], head: bool) -> HttpResponse {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("end of headers");
    let head_text = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head_text.split("\r\n");
    let status: u16 = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if chunked && !head {
        body = dechunk(&body);
    }
    HttpResponse { status, headers, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&data[..eol]).unwrap().trim(), 16).unwrap();
        data = &data[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// One sample line: its name, its labels and its value; `None` for comments, blank lines
/// and lines that are not a sample.
pub fn parse_sample(line: &str) -> Option<(&str, Labels, f64)> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let (name, mut rest) = match line.find(['{', ' ']) {
        Some(i) if line.as_bytes()[i] == b'{' => (&line[..i], &line[i + 1..]),
        Some(i) => (&line[..i], &line[i..]),
        None => return None,
    };
    let mut labels = Labels::new();
    if line.as_bytes().get(name.len()) == Some(&b'{') {
        // Label values may hold `\"`, `\\` and `\n`: read them escape by escape.
        loop {
            rest = rest.trim_start_matches(',');
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key.to_owned(), value);
            rest = &after[end + 1..];
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

pub type Labels = std::collections::BTreeMap<String, String>;

/// Panics if a scrape holds two samples with the same name and label set: Prometheus
/// refuses such a scrape. Every parse of a scrape in these tests goes through here.
pub fn assert_no_duplicate_series(text: &str) {
    let mut seen = std::collections::HashSet::new();
    let mut dups = Vec::new();
    for line in text.lines() {
        if let Some((name, labels, _)) = parse_sample(line) {
            if !seen.insert((name, labels)) {
                dups.push(line);
            }
        }
    }
    assert!(dups.is_empty(), "duplicate series (same name and labels) in the scrape:\n{}", dups.join("\n"));
}

/// `name{labels} value` lines of one metric, as (label map, value); checks first that
/// the whole scrape has no duplicate series.
pub fn samples(text: &str, name: &str) -> Vec<(Labels, f64)> {
    assert_no_duplicate_series(text);
    text.lines().filter_map(parse_sample).filter(|(n, _, _)| *n == name).map(|(_, l, v)| (l, v)).collect()
}

/// Asserts that there are `count` collector success samples and that each is `value`.
pub fn assert_collectors(text: &str, count: usize, value: f64) {
    // The collectors that read the socket tables; `lifecycle` is tested in lifecycle.rs,
    // `quality` in quality.rs.
    let mut s = samples(text, "conn_exporter_scrape_collector_success");
    s.retain(|(l, _)| !matches!(l.get("collector").map(String::as_str), Some("lifecycle" | "quality")));
    assert_eq!(s.len(), count, "collector success samples in:\n{text}");
    assert!(s.iter().all(|x| x.1 == value), "every collector's success should be {value}:\n{text}");
}

/// Runs a command, returning (exit code, stdout, stderr).
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `f` until it returns Some, or panics after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a scrape of `tests/fixtures/proc` must hold, as `tests/fixtures/make_fixture.py
/// --facts` states it from the socket list it wrote the fixture from (it fails if the
/// files on disk are not what it writes).
pub fn fixture_facts() -> serde_json::Value {
    let script = repo().join("tests/fixtures/make_fixture.py");
    let (code, out, err) = run(Command::new(require_tool("python3")).arg(script).arg("--facts"));
    assert_eq!(code, 0, "make_fixture.py --facts: {err}");
    serde_json::from_str(&out).unwrap()
}

/// A copy of the fixture tree in a temporary directory, for tests that break it.
pub fn fixture_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures(), dir.path());
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn the_duplicate_series_check_catches_the_same_labels_in_another_order() {
    // The reproduction: two lines for one series, here with the labels reordered.
    let dup = "# TYPE network_connection_states gauge\n\
network_connection_states{family=\"ipv4\",interface=\"lo\",state=\"LISTEN\"} 2\n\
network_connection_states{state=\"LISTEN\",interface=\"lo\",family=\"ipv4\"} 1\n";
    let caught = std::panic::catch_unwind(|| samples(dup, "network_connection_states"));
    let message = caught.expect_err("a duplicate series must fail the parse");
    let message = message.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("duplicate series"), "{message}");
    // Different label sets, and one value that merely looks alike, are fine.
    let distinct = dup.replacen("{state=\"LISTEN\"", "{state=\"CLOSE\"", 1);
    assert_eq!(samples(&distinct, "network_connection_states").len(), 2);
    let escaped = "m{a=\"x\\\"y\"} 1\nm{a=\"x\\\\\"} 1\nm{a=\"x\"} 1\n";
    let parsed = samples(escaped, "m");
    assert_eq!(parsed.iter().map(|s| s.0["a"].as_str()).collect::<Vec<_>>(), ["x\"y", "x\\", "x"]);
}

/// seccomp rule: AF_NETLINK sockets refused, as systemd's `RestrictAddressFamilies=~AF_NETLINK` would.
pub const REFUSE_NETLINK: &str =
    "f.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), 'socket', seccomp.Arg(0, seccomp.EQ, socket.AF_NETLINK))";
/// seccomp rule: every `sendto` refused, so netlink sockets open but no dump request goes out.
pub const REFUSE_SENDTO: &str = "f.add_rule(seccomp.ERRNO(errno.EPERM), 'sendto')";

/// Starts the exporter under a seccomp filter holding `rule` (Debian's python3-seccomp,
/// libseccomp), with extra flags.
pub fn start_under_seccomp(rule: &str, args: &[&str]) -> Exporter {
    let python = "/usr/bin/python3";
    let (code, _, err) = run(Command::new(python).args(["-c", "import seccomp"]));
    assert_eq!(code, 0, "Debian's python3-seccomp is needed (scripts/test.sh installs it): {err}");
    let script = format!(
        "import os, sys, errno, socket, seccomp\nf = seccomp.SyscallFilter(defaction=seccomp.ALLOW)\n{rule}\nf.load()\nos.execv(sys.argv[1], sys.argv[1:])\n"
    );
    Exporter::start_with(&[python, "-c", &script, binary()], args)
}
