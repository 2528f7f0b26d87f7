//! `--web.config.file`: TLS, client certificates, basic auth, headers and reloads, checked
//! with certificates this test makes, curl, and a real Prometheus.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::util::{binary, require_tool, run, samples, wait_for, Exporter};

/// A CA, a server certificate for 127.0.0.1, and client certificates.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let openssl = require_tool("openssl");
        let dir = tempfile::tempdir().unwrap();
        let sh = |args: &str| {
            let (code, out, err) =
                run(Command::new("sh").arg("-c").arg(format!("cd {} && {args}", dir.path().display())));
            assert_eq!(code, 0, "{args}: {out}{err}");
        };
        let _ = openssl;
        sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca 2>/dev/null");
        sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout rogue-ca.key -out rogue-ca.pem -days 2 -subj /CN=rogue 2>/dev/null");
        for (name, san, ca) in [
            ("server", "IP:127.0.0.1,DNS:localhost", "ca"),
            ("server2", "IP:127.0.0.1,DNS:localhost", "ca"),
            ("client", "DNS:prometheus.example", "ca"),
            ("intruder", "DNS:intruder.example", "ca"),
            ("rogue", "DNS:prometheus.example", "rogue-ca"),
        ] {
            sh(&format!(
                "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {name}.key -out {name}.csr -subj /CN={name} 2>/dev/null && \
                 printf 'subjectAltName={san}\\nextendedKeyUsage=serverAuth,clientAuth\\n' > {name}.ext && \
                 openssl x509 -req -in {name}.csr -CA {ca}.pem -CAkey {ca}.key -CAcreateserial -out {name}.pem -days 2 -extfile {name}.ext 2>/dev/null"
            ));
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn htpasswd(password: &str) -> String {
    let (code, out, err) = run(Command::new(require_tool("htpasswd")).args(["-nbBC", "10", "", password]));
    assert_eq!(code, 0, "{err}");
    out.trim().trim_start_matches(':').to_owned()
}

fn curl(args: &[&str]) -> (i32, String) {
    let (code, out, err) = run(Command::new(require_tool("curl")).args(["-s", "-S", "--max-time", "10"]).args(args));
    (code, format!("{out}{err}"))
}

fn http_code(args: &[&str]) -> String {
    let mut a = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    a.extend_from_slice(args);
    curl(&a).1
}

fn write_config(path: &Path, text: &str) {
    // Write then rename: the exporter never sees half a file, and the inode changes.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn tls_basic_auth_headers_and_reload() {
    let pki = Pki::new();
    let config = pki.path("web.yml");
    let hash = htpasswd("s3cret");
    let base = format!(
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n    Strict-Transport-Security: max-age=31536000\nbasic_auth_users:\n  prometheus: {hash}\n"
    );
    write_config(&config, &base);
    let e = Exporter::start(&["--web.config.file", config.to_str().unwrap()]);
    let url = format!("https://127.0.0.1:{}/metrics", e.addr.port());
    let ca = pki.path("ca.pem");
    let ca = ca.to_str().unwrap();

    assert_eq!(http_code(&["--cacert", ca, &url]), "401");
    assert_eq!(http_code(&["--cacert", ca, "-u", "prometheus:wrong", &url]), "401");
    assert_eq!(http_code(&["--cacert", ca, "-u", "nobody:s3cret", &url]), "401");
    let (code, out) = curl(&["--cacert", ca, "-u", "prometheus:s3cret", "-D", "-", &url]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("x-frame-options: deny") && out.contains("strict-transport-security: max-age=31536000"),
        "{out}"
    );
    assert!(out.contains("network_connections_info{"), "{out}");
    // Plain HTTP gets a 400 saying to use https, as from Go's servers; TLS 1.1 is refused;
    // 1.2 and 1.3 work.
    let plain = format!("http://127.0.0.1:{}/metrics", e.addr.port());
    let (code, out) = curl(&["-w", "\n%{http_code}", &plain]);
    assert_eq!(code, 0, "{out}");
    assert!(out.ends_with("\n400") && out.contains("HTTP request to an HTTPS server: use https://"), "{out}");
    let (code, out) = curl(&["-u", "prometheus:s3cret", "-w", "\n%{http_code}", &plain]);
    assert!(code == 0 && out.ends_with("\n400"), "with credentials too: {out}");
    assert_ne!(curl(&["--cacert", ca, "--tlsv1.1", "--tls-max", "1.1", "-u", "prometheus:s3cret", &url]).0, 0);
    assert_eq!(http_code(&["--cacert", ca, "--tls-max", "1.2", "-u", "prometheus:s3cret", &url]), "200");
    assert_eq!(http_code(&["--cacert", ca, "--tlsv1.3", "-u", "prometheus:s3cret", &url]), "200");

    // A good change is picked up without a restart.
    write_config(&config, &base.replace(&hash, &htpasswd("n3w")));
    wait_for(Duration::from_secs(10), "the new password", || {
        (http_code(&["--cacert", ca, "-u", "prometheus:n3w", &url]) == "200").then_some(())
    });
    assert_eq!(http_code(&["--cacert", ca, "-u", "prometheus:s3cret", &url]), "401");

    // A bad change keeps the last good configuration and shows in the metrics and log.
    write_config(&config, &base.replace("server.key", "missing.key"));
    let (code, text) = curl(&["--cacert", ca, "-u", "prometheus:n3w", &url]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(samples(&text, "conn_exporter_web_config_last_reload_successful")[0].1, 0.0, "{text}");
    assert_eq!(samples(&text, "conn_exporter_web_config_reload_failures_total")[0].1, 1.0);
    let log = e.wait_log("keeping the last good configuration");
    assert!(log.contains("key_file"), "{log}");
}

/// The subject CN of the certificate the exporter serves now (from curl's handshake log).
fn served_cn(ca: &str, port: u16) -> Option<String> {
    let (_, out) = curl(&["-v", "-o", "/dev/null", "--cacert", ca, &format!("https://127.0.0.1:{port}/-/healthy")]);
    let line = out.lines().find(|l| l.contains("subject:"))?;
    Some(line.split("CN=").nth(1)?.split([',', '/', ' ']).next()?.to_owned())
}

#[test]
fn certificate_and_key_rotated_in_two_steps_are_served() {
    let pki = Pki::new();
    let config = pki.path("web.yml");
    let copy = |from: &str, to: &str| {
        let tmp = pki.path(&format!("{to}.tmp"));
        std::fs::copy(pki.path(from), &tmp).unwrap();
        std::fs::rename(&tmp, pki.path(to)).unwrap();
    };
    copy("server.pem", "live.pem");
    copy("server.key", "live.key");
    write_config(&config, "tls_server_config:\n  cert_file: live.pem\n  key_file: live.key\n");
    let e = Exporter::start(&["--web.config.file", config.to_str().unwrap(), "--no-collector.connections"]);
    let ca = pki.path("ca.pem").to_string_lossy().into_owned();
    let port = e.addr.port();
    assert_eq!(served_cn(&ca, port).as_deref(), Some("server"));
    // Requests keep arriving while the files change, so that some land between the steps
    // (a mismatched pair is refused and the last good one kept) or during a reload.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = {
        let (stop, ca) = (std::sync::Arc::clone(&stop), ca.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = served_cn(&ca, port);
            }
        })
    };
    for round in 0..8 {
        let name = if round % 2 == 0 { "server2" } else { "server" };
        copy(&format!("{name}.pem"), "live.pem");
        copy(&format!("{name}.key"), "live.key");
        wait_for(Duration::from_secs(10), &format!("round {round}: {name}'s certificate served"), || {
            (served_cn(&ca, port).as_deref() == Some(name)).then_some(())
        });
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    hammer.join().unwrap();
}

#[test]
fn client_certificates_and_allowed_sans() {
    let pki = Pki::new();
    let config = pki.path("web.yml");
    write_config(
        &config,
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  client_ca_file: ca.pem\n  client_auth_type: RequireAndVerifyClientCert\n  client_allowed_sans: [prometheus.example]\n  min_version: TLS13\n",
    );
    let e = Exporter::start(&["--web.config.file", config.to_str().unwrap()]);
    let url = format!("https://127.0.0.1:{}/metrics", e.addr.port());
    let p = |n: &str| pki.path(n).to_string_lossy().into_owned();
    let with = |name: &str| {
        http_code(&[
            "--cacert",
            &p("ca.pem"),
            "--cert",
            &p(&format!("{name}.pem")),
            "--key",
            &p(&format!("{name}.key")),
            &url,
        ])
    };
    assert_eq!(with("client"), "200");
    assert_ne!(with("intruder"), "200", "a CA-signed certificate without an allowed SAN");
    assert_ne!(with("rogue"), "200", "an allowed SAN signed by another CA");
    assert_ne!(http_code(&["--cacert", &p("ca.pem"), &url]), "200", "no certificate");
    assert_ne!(
        http_code(&[
            "--cacert",
            &p("ca.pem"),
            "--tls-max",
            "1.2",
            "--cert",
            &p("client.pem"),
            "--key",
            &p("client.key"),
            &url
        ]),
        "200",
        "min_version TLS13"
    );
}

#[test]
fn bad_files_at_start_exit_2_naming_the_field() {
    let pki = Pki::new();
    let cases = [
        ("tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  min_version: TLS10\n", "min_version"),
        ("tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  max_version: TLS11\n", "TLS 1.0 and 1.1"),
        ("tls_server_config:\n  cert_file: server.pem\n  key_file: nowhere.key\n", "key_file"),
        ("tls_server_config:\n  cert_file: server.pem\n  key_file: ca.pem\n", "key_file"),
        ("tls_server_config:\n  cert_file: server.pem\n  key_file: client.key\n", "does not fit"),
        ("tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n", "client_ca_file"),
        ("basic_auth_users:\n  bob: plaintext\n", "basic_auth_users.bob"),
        ("basic_auth_user:\n  bob: x\n", "unknown field"),
    ];
    for (text, needle) in cases {
        let path = pki.path("bad.yml");
        std::fs::write(&path, text).unwrap();
        let (code, _, err) = run(Command::new(binary()).args([
            "--web.listen-address=127.0.0.1:0",
            "--web.config.file",
            path.to_str().unwrap(),
        ]));
        assert_eq!(code, 2, "{text}: {err}");
        assert!(err.contains(needle) && err.contains("--web.config.file"), "{text}: {err}");
    }
}

#[test]
fn prometheus_scrapes_over_tls_with_basic_auth_and_a_client_certificate() {
    let pki = Pki::new();
    let config = pki.path("web.yml");
    let hash = htpasswd("s3cret");
    write_config(
        &config,
        &format!("tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  client_ca_file: ca.pem\n  client_auth_type: RequireAndVerifyClientCert\nbasic_auth_users:\n  prometheus: {hash}\n"),
    );
    let e = Exporter::start(&["--web.config.file", config.to_str().unwrap(), "--no-collector.connections"]);
    let dir = pki.dir.path();
    let prom_config = dir.join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: secure\n    scheme: https\n    basic_auth:\n      username: prometheus\n      password: s3cret\n    tls_config:\n      ca_file: {d}/ca.pem\n      cert_file: {d}/client.pem\n      key_file: {d}/client.key\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n  - job_name: no-client-cert\n    scheme: https\n    basic_auth:\n      username: prometheus\n      password: s3cret\n    tls_config:\n      ca_file: {d}/ca.pem\n    static_configs:\n      - targets: ['localhost:{port}']\n",
            d = dir.display(),
            port = e.addr.port()
        ),
    )
    .unwrap();
    let (code, out, err) = run(Command::new(require_tool("promtool")).args(["check", "config"]).arg(&prom_config));
    assert_eq!(code, 0, "{out}{err}");
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut prom = Command::new(require_tool("prometheus"))
        .arg(format!("--config.file={}", prom_config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={listen}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let query = |q: &str| -> Option<serde_json::Value> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
        let qs: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", q)
            .append_pair("time", &now.to_string())
            .finish();
        let r = crate::util::try_http(listen, "GET", &format!("/api/v1/query?{qs}"), &[])?;
        serde_json::from_slice::<serde_json::Value>(&r.body).ok()
    };
    let up = |job: &str| {
        query(&format!("up{{job=\"{job}\"}}"))
            .and_then(|v| v["data"]["result"].get(0).map(|s| s["value"][1].as_str().unwrap_or("").to_owned()))
    };
    // Wait for each job's first scrape, whatever its outcome; the outcome is asserted below.
    let secure = wait_for(Duration::from_secs(60), "the secure scrape", || up("secure"));
    let refused = wait_for(Duration::from_secs(60), "the scrape without a client certificate", || up("no-client-cert"));
    let states = query("sum(network_connection_states{job=\"secure\"})").unwrap();
    let _ = prom.kill();
    let _ = prom.wait();
    assert_eq!(secure, "1");
    assert_eq!(refused, "0", "mTLS refuses a client without a certificate");
    assert!(states["data"]["result"][0]["value"][1].as_str().unwrap().parse::<f64>().unwrap() > 0.0, "{states}");
}

#[test]
fn an_unreadable_key_names_the_user_and_the_file() {
    use std::os::unix::fs::PermissionsExt;
    let pki = Pki::new();
    let dir = pki.dir.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (name, mode) in [("server.pem", 0o644), ("server.key", 0o600)] {
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let config = pki.path("web.yml");
    write_config(&config, "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let nobody = |extra: &[&str]| {
        run(Command::new(require_tool("setpriv"))
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", binary()])
            .args(["--web.listen-address=127.0.0.1:0", "--web.config.file", config.to_str().unwrap()])
            .args(extra))
    };
    let (code, _, err) = nobody(&[]);
    assert_eq!(code, 2, "{err}");
    let key = pki.path("server.key");
    for needle in [
        "tls_server_config.key_file",
        key.to_str().unwrap(),
        "Permission denied",
        "user nobody (uid 65534, gid 65534)",
        "chmod 0640",
        "SupplementaryGroups=",
    ] {
        assert!(err.contains(needle), "{needle:?} missing from: {err}");
    }
    // The YAML file itself, unreadable, says the same.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, _, err) = nobody(&[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(config.to_str().unwrap()) && err.contains("uid 65534"), "{err}");
}
