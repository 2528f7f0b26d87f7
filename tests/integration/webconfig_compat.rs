//! `--web.config.file` accepts and refuses what exporter-toolkit (node_exporter's web
//! configuration) accepts and refuses, rule by rule, with the field named in each refusal;
//! the few deliberate differences are listed in SECURITY.md and asserted here as such.
//! The cases are our own, covering the rules of exporter-toolkit's `web/tls_config.go`
//! and `web/handler.go` and what its tests exercise.

use std::process::Command;

use conn_exporter::webconfig::WebConfig;

use crate::security::{curl, http_code, write_config, Pki};
use crate::util::{binary, run, Exporter};

/// What a case expects: accepted (with TLS on or off), or refused naming `field`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Tls,
    Plain,
    Refused(&'static str),
}
use Expect::{Plain, Refused, Tls};

/// Whether a case's expectation is exporter-toolkit's too, or one of our listed differences.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Toolkit {
    Same,
    /// exporter-toolkit accepts it (SECURITY.md says why conn-exporter does not).
    Accepts,
}

const TLS: &str = "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n";

fn cases(inline_cert: &str, inline_key: &str, cost4: &str, cost12: &str) -> Vec<(String, Expect, Toolkit)> {
    let tls = |extra: &str| format!("{TLS}{extra}");
    let headers = |h: &str| format!("http_server_config:\n  headers:\n{h}");
    let indent = |pem: &str| pem.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let s = |t: &str| t.to_owned();
    use Toolkit::{Accepts, Same};
    vec![
        // The file as a whole.
        (s(""), Plain, Same),
        (s("\n# nothing\n"), Plain, Same),
        (s("some words\nand more\n"), Refused(""), Same),
        (s("tls_server_config:\n  cert_filse: server.pem\n"), Refused("cert_filse"), Same),
        (s("basic_auth_user:\n  a: b\n"), Refused("basic_auth_user"), Same),
        // basic_auth_users: bcrypt hashes only, any cost bcrypt allows.
        (format!("basic_auth_users:\n  alice: {cost12}\n  bob: {cost4}\n"), Plain, Same),
        (s("basic_auth_users:\n  john: doe\n"), Refused("basic_auth_users.john"), Same),
        (format!("basic_auth_users:\n  eve: {}\n", cost4.replace("$04$", "$03$")), Refused("basic_auth_users.eve"), Same),
        // Headers: five names spelt exactly; two with fixed values, case-sensitive.
        (
            headers("    X-Frame-Options: sameorigin\n    X-Content-Type-Options: nosniff\n    X-XSS-Protection: 1\n    Content-Security-Policy: \"default-src 'self'\"\n    Strict-Transport-Security: max-age=31536000; includeSubDomains\n"),
            Plain,
            Same,
        ),
        (headers("    X-Frame-Options: deny\n"), Plain, Same),
        (headers("    Content-Security-Policy: \"\"\n"), Plain, Same),
        (headers("    X-Frame-Options: foo\n"), Refused("http_server_config.headers.X-Frame-Options"), Same),
        (headers("    X-Frame-Options: DENY\n"), Refused("http_server_config.headers.X-Frame-Options"), Same),
        (headers("    X-Content-Type-Options: sniff\n"), Refused("http_server_config.headers.X-Content-Type-Options"), Same),
        (headers("    X-Content-Type-Options: \"\"\n"), Refused("http_server_config.headers.X-Content-Type-Options"), Same),
        (headers("    x-frame-options: deny\n"), Refused("http_server_config.headers.x-frame-options"), Same),
        (headers("    Content-Type: foo\n"), Refused("http_server_config.headers.Content-Type"), Same),
        (headers("    X-Frame-Options: deny\n    X-Frame-Options: sameorigin\n"), Refused("\"X-Frame-Options\" is set twice"), Same),
        (format!("basic_auth_users:\n  bob: {cost4}\n  bob: {cost12}\n"), Refused("\"bob\" is set twice"), Same),
        (s("http_server_config:\n  http2: false\n"), Plain, Same),
        (s("http_server_config:\n  http3: true\n"), Refused("http3"), Same),
        // rate_limit: a Go duration (or nanoseconds), 0 switches it off.
        (s("rate_limit:\n  interval: 0\n  burst: 0\n"), Plain, Same),
        (s("rate_limit:\n  interval: 1s\n  burst: 0\n"), Plain, Same),
        (s("rate_limit:\n  interval: 1m30s\n  burst: 10\n"), Plain, Same),
        (s("rate_limit:\n  interval: 1000000000\n  burst: 5\n"), Plain, Same),
        (s("rate_limit:\n  interval: fast\n  burst: 5\n"), Refused("rate_limit.interval"), Same),
        (s("rate_limit:\n  interval: 1s\n  burst: many\n"), Refused("burst"), Same),
        (s("rate_limit:\n  every: 1s\n"), Refused("every"), Same),
        // When TLS is on: a certificate, a key, a client CA or client_auth_type set.
        (s(TLS), Tls, Same),
        (s("tls_server_config:\n  min_version: TLS13\n"), Plain, Same),
        (s("tls_server_config:\n  cert_file: \"\"\n  key_file: \"\"\n"), Plain, Same),
        (s("tls_server_config:\n  cert_file: \"\"\n  key_file: server.key\n"), Refused("tls_server_config.cert_file"), Same),
        (s("tls_server_config:\n  cert: \"\"\n  key_file: server.key\n"), Refused("tls_server_config.cert_file"), Same),
        (s("tls_server_config:\n  cert_file: server.pem\n  key_file: \"\"\n"), Refused("tls_server_config.key_file"), Same),
        (s("tls_server_config:\n  cert_file: server.pem\n  key: \"\"\n"), Refused("tls_server_config.key_file"), Same),
        (
            s("tls_server_config:\n  cert_file: \"\"\n  key_file: \"\"\n  client_auth_type: x\n"),
            Refused("tls_server_config.cert_file"),
            Same,
        ),
        (s("tls_server_config:\n  cert_file: nowhere.pem\n  key_file: server.key\n"), Refused("tls_server_config.cert_file"), Same),
        (s("tls_server_config:\n  cert_file: server.pem\n  key_file: nowhere.key\n"), Refused("tls_server_config.key_file"), Same),
        // Inline PEM; with both inline and file, the file wins.
        (format!("tls_server_config:\n  cert: |\n{}  key: |\n{}", indent(inline_cert), indent(inline_key)), Tls, Same),
        (format!("tls_server_config:\n  cert_file: server.pem\n  key: |\n{}", indent(inline_key)), Tls, Same),
        (format!("{TLS}  cert: not pem at all\n"), Tls, Same),
        // Versions.
        (tls("  min_version: TLS12\n  max_version: TLS12\n"), Tls, Same),
        (tls("  min_version: TLS13\n"), Tls, Same),
        (tls("  min_version: TLS10\n"), Tls, Same),
        (tls("  min_version: TLS111\n"), Refused("tls_server_config.min_version"), Same),
        (tls("  max_version: TLS14\n"), Refused("tls_server_config.max_version"), Same),
        (tls("  max_version: TLS11\n"), Refused("tls_server_config.max_version"), Accepts),
        (tls("  min_version: TLS13\n  max_version: TLS12\n"), Refused("tls_server_config.min_version"), Accepts),
        // Cipher suites: Go's names; TLS 1.3 names accepted (1.3 suites are not configurable).
        (
            tls("  cipher_suites:\n  - TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\n  - TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384\n  - TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\n  - TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384\n  - TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256\n  - TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256\n  - TLS_AES_128_GCM_SHA256\n  - TLS_AES_256_GCM_SHA384\n  - TLS_CHACHA20_POLY1305_SHA256\n  - TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA\n  - TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA\n  - TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA\n  - TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA\n"),
            Tls,
            Same,
        ),
        (tls("  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384]\n  prefer_server_cipher_suites: false\n"), Tls, Same),
        (tls("  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]\n  min_version: TLS12\n  max_version: TLS12\n"), Tls, Same),
        (tls("  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA2048]\n"), Refused("tls_server_config.cipher_suites"), Same),
        (tls("  cipher_suites: [TLS_RSA_WITH_AES_128_GCM_SHA256]\n"), Refused("tls_server_config.cipher_suites"), Same),
        (
            tls("  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384]\n  max_version: TLS12\n"),
            Refused("tls_server_config.cipher_suites"),
            Same,
        ),
        (
            format!("{}http_server_config:\n  http2: false\n", tls("  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384]\n  max_version: TLS12\n")),
            Tls,
            Same,
        ),
        (
            format!("{}http_server_config:\n  http2: false\n", tls("  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA]\n")),
            Refused("tls_server_config.cipher_suites"),
            Accepts,
        ),
        // Curves: Go's four names, each one alone too (exporter-toolkit's someCurves file
        // lists P-521 only).
        (tls("  curve_preferences: [CurveP256, CurveP384, CurveP521, X25519]\n"), Tls, Same),
        (tls("  curve_preferences: [X25519]\n  min_version: TLS13\n"), Tls, Same),
        (tls("  curve_preferences: [CurveP257]\n"), Refused("tls_server_config.curve_preferences"), Same),
        (tls("  curve_preferences: [CurveP521]\n"), Tls, Same),
        (tls("  curve_preferences: [CurveP384]\n"), Tls, Same),
        (tls("  curve_preferences: [CurveP256]\n"), Tls, Same),
        // Client certificates.
        (tls("  client_auth_type: NoClientCert\n"), Tls, Same),
        (tls("  client_auth_type: RequestClientCert\n"), Tls, Same),
        (tls("  client_auth_type: RequireAnyClientCert\n"), Tls, Same),
        (tls("  client_auth_type: RequireClientCert\n"), Tls, Same),
        (tls("  client_auth_type: VerifyClientCertIfGiven\n"), Tls, Same),
        (tls("  client_auth_type: RequireAndVerifyClientCert\n"), Tls, Same),
        (tls("  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n  client_allowed_sans: [one, prometheus.example]\n"), Tls, Same),
        (tls("  client_auth_type: RequireAnyClientCert\n  client_ca_file: ca.pem\n"), Tls, Same),
        (tls("  client_allowed_sans: [prometheus.example]\n"), Tls, Same),
        (tls("  client_auth_type: requireandverifyclientcert\n"), Refused("tls_server_config.client_auth_type"), Same),
        (tls("  client_ca_file: ca.pem\n"), Refused("tls_server_config.client_ca_file"), Same),
        (tls("  client_ca_file: nowhere.pem\n"), Refused("tls_server_config.client_ca_file"), Same),
        (
            tls("  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: server.key\n"),
            Refused("tls_server_config.client_ca_file"),
            Accepts,
        ),
    ]
}

#[test]
fn each_rule_accepted_or_refused_naming_the_field() {
    let pki = Pki::new();
    let read = |n: &str| std::fs::read_to_string(pki.path(n)).unwrap();
    let cost4 = bcrypt::hash("x", 4).unwrap();
    let cost12 = "$2y$12$1DpfPeqF9HzHJt.EWswy1exHluGfbhnn3yXhR7Xes6m3WJqFg0Wby";
    let mut failures = Vec::new();
    let all = cases(&read("server.pem"), &read("server.key"), &cost4, cost12);
    for (text, expect, _) in &all {
        let got = match WebConfig::parse(text, pki.dir.path()) {
            Ok(c) if c.tls.is_some() => Tls,
            Ok(_) => Plain,
            Err(e) => {
                let e = e.to_string();
                match expect {
                    Refused(field) if e.contains(field) => *expect,
                    _ => {
                        failures.push(format!("{text:?}: expected {expect:?}, refused: {e}"));
                        continue;
                    }
                }
            }
        };
        if got != *expect {
            failures.push(format!("{text:?}: expected {expect:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases:\n{}", failures.len(), all.len(), failures.join("\n"));
    let differences = all.iter().filter(|c| c.2 == Toolkit::Accepts).count();
    assert_eq!(differences, 4, "the deliberate differences listed in SECURITY.md");
}

#[test]
fn refused_at_start_with_exit_2() {
    let pki = Pki::new();
    let config = pki.path("web.yml");
    for (text, field) in [
        ("http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n", "X-Content-Type-Options"),
        (
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  curve_preferences: [CurveP257]\n",
            "CurveP257",
        ),
    ] {
        write_config(&config, text);
        let (code, _, err) = run(Command::new("timeout")
            .args(["20", binary(), "--web.listen-address=127.0.0.1:0", "--web.config.file"])
            .arg(&config));
        assert_eq!(code, 2, "{text}: {err}");
        assert!(err.contains(field), "{text}: {err}");
    }
}

#[test]
fn rate_limit_answers_429_past_the_burst() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("web.yml");
    write_config(&config, "rate_limit:\n  interval: 1h\n  burst: 3\n");
    let e = Exporter::start(&["--web.config.file", config.to_str().unwrap(), "--no-collector.connections"]);
    let statuses: Vec<u16> = (0..5).map(|_| e.get("/-/healthy").status).collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let r = e.get("/metrics");
    assert_eq!((r.status, r.text()), (429, "Too Many Requests\n".to_owned()));
}

#[test]
fn verify_client_cert_if_given_without_a_ca_uses_the_system_trust_store() {
    let pki = Pki::new();
    let config = pki.path("web.yml");
    write_config(
        &config,
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  client_auth_type: VerifyClientCertIfGiven\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA]\n  curve_preferences: [CurveP521, CurveP256]\n",
    );
    let e = Exporter::start(&["--web.config.file", config.to_str().unwrap(), "--no-collector.connections"]);
    let url = format!("https://127.0.0.1:{}/-/healthy", e.addr.port());
    let p = |n: &str| pki.path(n).to_string_lossy().into_owned();
    // No certificate: let in. One from our own CA, which no system store trusts: refused.
    assert_eq!(http_code(&["--cacert", &p("ca.pem"), &url]), "200");
    assert_eq!(http_code(&["--cacert", &p("ca.pem"), "--tls-max", "1.2", &url]), "200");
    let (code, out) = curl(&["--cacert", &p("ca.pem"), "--cert", &p("client.pem"), "--key", &p("client.key"), &url]);
    assert_ne!(code, 0, "a client certificate the system store does not trust is refused: {out}");
    // The suites offered are the listed ones that rustls implements (the CBC suite was
    // left out, with a warning); the curves are the listed ones.
    let log = e.log_text();
    assert!(log.contains("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA") && !log.contains("CurveP521"), "{log}");
    let tls12 = |cipher: &str| http_code(&["--cacert", &p("ca.pem"), "--tls-max", "1.2", "--ciphers", cipher, &url]);
    assert_eq!(tls12("ECDHE-ECDSA-AES128-GCM-SHA256"), "200");
    assert_ne!(tls12("ECDHE-ECDSA-AES256-GCM-SHA384"), "200", "a suite not listed");
    assert_ne!(tls12("ECDHE-ECDSA-AES128-SHA"), "200", "CBC");
    let curve = |c: &str| http_code(&["--cacert", &p("ca.pem"), "--curves", c, &url]);
    assert_ne!(curve("P-384"), "200", "a curve not listed");
    assert_eq!(curve("P-521"), "200");
    assert_eq!(curve("P-256"), "200");
}

/// exporter-toolkit's `web_config_noAuth_someCurves.good.yml` lists P-521 alone: a client
/// that offers only P-521 gets through and one that offers another curve does not. With
/// no curve_preferences, P-521 is offered too, as by Go.
#[test]
fn p521_alone_is_served() {
    let pki = Pki::new();
    // A TLS 1.2 client also holds the certificate's curve to the groups it offers (RFC 8422
    // section 5.1): offering P-521 alone, it needs a P-521 certificate.
    let (code, out, err) = run(Command::new("sh").arg("-c").arg(format!(
        "cd {} && openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-521 -nodes -keyout p521.key -out p521.csr -subj /CN=p521 2>/dev/null && \
         printf 'subjectAltName=IP:127.0.0.1\\n' > p521.ext && \
         openssl x509 -req -in p521.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out p521.pem -days 2 -extfile p521.ext 2>/dev/null",
        pki.dir.path().display()
    )));
    assert_eq!(code, 0, "{out}{err}");
    let config = pki.path("web.yml");
    let ca = pki.path("ca.pem").to_string_lossy().into_owned();
    let p256_cert = "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n";
    let p521_cert = "tls_server_config:\n  cert_file: p521.pem\n  key_file: p521.key\n";
    let only_p521 = "  curve_preferences: [CurveP521]\n";
    for (cert, curves, offered, tls_max, served) in [
        (p256_cert, only_p521, "P-521", "1.3", true),
        (p521_cert, only_p521, "P-521", "1.3", true),
        (p521_cert, only_p521, "P-521", "1.2", true),
        (p256_cert, only_p521, "P-256", "1.3", false),
        (p256_cert, only_p521, "X25519", "1.3", false),
        (p256_cert, only_p521, "P-256", "1.2", false),
        (p256_cert, "", "P-521", "1.3", true),
        (p521_cert, "", "P-521", "1.2", true),
    ] {
        write_config(&config, &format!("{cert}{curves}"));
        let e = Exporter::start(&["--web.config.file", config.to_str().unwrap(), "--no-collector.connections"]);
        let url = format!("https://127.0.0.1:{}/-/healthy", e.addr.port());
        let code = http_code(&["--cacert", &ca, "--tls-max", tls_max, "--curves", offered, &url]);
        assert_eq!(code == "200", served, "{cert}{curves}: client offers {offered} up to TLS {tls_max}: {code}");
    }
}

/// Regression: with `min_version: TLS10` the start-up log said "serving TLS 1.2 and up"
/// twice, as the file was parsed once more to stamp the certificate and key it names.
#[test]
fn a_warning_about_the_file_is_logged_once() {
    let pki = Pki::new();
    let config = pki.path("web.yml");
    write_config(&config, &format!("{TLS}  min_version: TLS10\n"));
    let e = Exporter::start(&["--web.config.file", config.to_str().unwrap(), "--no-collector.connections"]);
    let url = format!("https://127.0.0.1:{}/-/healthy", e.addr.port());
    assert_eq!(http_code(&["--cacert", &pki.path("ca.pem").to_string_lossy(), "--tls-max", "1.2", &url]), "200");
    let log = e.log_text();
    assert_eq!(log.lines().filter(|l| l.contains("serving TLS 1.2 and up")).count(), 1, "{log}");
}
