//! `--web.config.file`: the exporter-toolkit YAML format node_exporter uses (TLS, client
//! certificates, basic auth, response headers), checked into a ready-to-serve
//! configuration, and re-read when the file or a file it names changes.

mod p521;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use serde::Deserialize;
use thiserror::Error;

use crate::logging::RateLimit;

/// Why a web configuration was refused; each names the field at fault.
#[derive(Debug, Error)]
pub enum WebConfigError {
    /// The file could not be read.
    #[error("{}", describe_read_error(.path, .source))]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not YAML of the expected shape (unknown fields included).
    #[error("{0}")]
    Syntax(String),
    /// A field with a value that cannot work.
    #[error("{field}: {problem}")]
    Field {
        /// Dotted path of the field.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// A file that could not be read, and when permission was denied, who could not read it
/// and how to let them: the exporter usually runs as an unprivileged user (nobody, or
/// systemd's dynamic user) while keys are made by root with mode 0600.
fn describe_read_error(path: &Path, e: &std::io::Error) -> String {
    if e.kind() != std::io::ErrorKind::PermissionDenied {
        return format!("{}: {e}", path.display());
    }
    let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
    let user = match nix::unistd::User::from_uid(uid) {
        Ok(Some(u)) => format!("user {} (uid {uid}, gid {gid})", u.name),
        _ => format!("uid {uid} (gid {gid}, no name in the user database)"),
    };
    format!(
        "{path}: {e}: the exporter runs as {user}, which cannot read this file or a directory on its path. \
         Let that user read it, e.g. make the file group-owned by a group the exporter runs with and mode 0640 \
         (chgrp GROUP {path} && chmod 0640 {path}; under systemd add SupplementaryGroups=GROUP in a drop-in); \
         see SECURITY.md",
        path = path.display()
    )
}

fn field_error(field: impl Into<String>, problem: impl Into<String>) -> WebConfigError {
    WebConfigError::Field { field: field.into(), problem: problem.into() }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    tls_server_config: Option<RawTls>,
    http_server_config: Option<RawHttp>,
    basic_auth_users: Option<UniqueMap<String>>,
    rate_limit: Option<RawRateLimit>,
}

/// A YAML mapping whose keys must be unique: Go's strict YAML decoding refuses a key given
/// twice, where a plain map would silently keep the last value.
#[derive(Debug, Default)]
struct UniqueMap<V>(BTreeMap<String, V>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<V> {
            type Value = UniqueMap<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((key, value)) = map.next_entry::<String, V>()? {
                    if out.contains_key(&key) {
                        return Err(serde::de::Error::custom(format!("{key:?} is set twice")));
                    }
                    out.insert(key, value);
                }
                Ok(UniqueMap(out))
            }
        }
        deserializer.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    interval: Option<RawDuration>,
    burst: Option<i64>,
}

/// A Go `time.Duration` as YAML gives it: a string (`"1s"`, `"1m30s"`) or an integer
/// number of nanoseconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Nanos(i64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Option<String>,
    key_file: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    client_ca_file: Option<String>,
    client_ca: Option<String>,
    client_auth_type: Option<String>,
    cipher_suites: Option<Vec<String>>,
    curve_preferences: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    prefer_server_cipher_suites: Option<bool>,
    client_allowed_sans: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    http2: Option<bool>,
    headers: Option<UniqueMap<Option<String>>>,
}

/// How client certificates are treated (`client_auth_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// None asked for.
    NoClientCert,
    /// Asked for, not required, not verified.
    RequestClientCert,
    /// Required, not verified.
    RequireAnyClientCert,
    /// Verified against `client_ca_file` when given.
    VerifyClientCertIfGiven,
    /// Required and verified: the only mode that authenticates clients.
    RequireAndVerifyClientCert,
}

/// A checked TLS setup.
#[derive(Debug)]
pub struct TlsSetup {
    /// The rustls configuration handshakes use.
    pub server: Arc<ServerConfig>,
    /// Client certificate policy.
    pub client_auth: ClientAuth,
    /// When not empty, a client certificate must carry one of these SANs.
    pub allowed_sans: Vec<String>,
}

/// A checked web configuration.
#[derive(Debug, Default)]
pub struct WebConfig {
    /// TLS, when configured.
    pub tls: Option<TlsSetup>,
    /// Headers added to every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// User name to bcrypt hash; empty means no authentication.
    pub users: BTreeMap<String, String>,
    /// `rate_limit`: requests past it are answered 429.
    pub rate_limit: Option<RateLimiter>,
    /// What was accepted but will not be served as written (a TLS version or suite rustls
    /// lacks, a setting without effect): logged by whoever puts the configuration in
    /// force, once, as a file may be parsed more than once per load.
    pub warnings: Vec<String>,
}

/// exporter-toolkit's `rate_limit`: a token bucket (Go's `rate.Limiter`) shared by all
/// requests, refilled by one token per `interval` up to `burst`, starting full.
#[derive(Debug)]
pub struct RateLimiter {
    every: Duration,
    burst: u32,
    /// Tokens left and when they were counted.
    state: Mutex<(f64, std::time::Instant)>,
}

impl RateLimiter {
    fn new(every: Duration, burst: u32) -> RateLimiter {
        RateLimiter { every, burst, state: Mutex::new((f64::from(burst), std::time::Instant::now())) }
    }

    /// Takes a token if there is one.
    pub fn allow(&self) -> bool {
        self.allow_at(std::time::Instant::now())
    }

    fn allow_at(&self, now: std::time::Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(state.1);
        let tokens = (state.0 + elapsed.as_secs_f64() / self.every.as_secs_f64()).min(f64::from(self.burst));
        *state = (tokens, now.max(state.1));
        if state.0 >= 1.0 {
            state.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Parses Go's duration syntax (`time.ParseDuration`): decimal numbers with units
/// ns, us, µs, ms, s, m, h, e.g. `1s`, `1.5h`, `2h45m`; `0` alone. A negative duration
/// is returned as zero (exporter-toolkit then has no limit either).
fn parse_go_duration(text: &str) -> Option<Duration> {
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * seconds;
    }
    if negative {
        return Some(Duration::ZERO);
    }
    Duration::try_from_secs_f64(total).ok()
}

/// Response headers exporter-toolkit allows to be set, spelt exactly so (the names are
/// matched case-sensitively there), with the only values it accepts where it limits them
/// (also case-sensitive).
const ALLOWED_HEADERS: [(&str, &[&str]); 5] = [
    ("Content-Security-Policy", &[]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-XSS-Protection", &[]),
    ("Strict-Transport-Security", &[]),
];

/// A TLS version name as exporter-toolkit knows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TlsVersion {
    Tls10,
    Tls11,
    Tls12,
    Tls13,
}

fn tls_version(field: &str, v: &str) -> Result<TlsVersion, WebConfigError> {
    match v {
        "TLS10" => Ok(TlsVersion::Tls10),
        "TLS11" => Ok(TlsVersion::Tls11),
        "TLS12" => Ok(TlsVersion::Tls12),
        "TLS13" => Ok(TlsVersion::Tls13),
        other => Err(field_error(field, format!("unknown TLS version {other:?}; use TLS12 or TLS13"))),
    }
}

/// Cipher suite names exporter-toolkit accepts (Go's `tls.CipherSuites()`), with the
/// suite each names.
const CIPHER_SUITES: [(&str, rustls::CipherSuite); 13] = {
    use rustls::CipherSuite as C;
    [
        ("TLS_AES_128_GCM_SHA256", C::TLS13_AES_128_GCM_SHA256),
        ("TLS_AES_256_GCM_SHA384", C::TLS13_AES_256_GCM_SHA384),
        ("TLS_CHACHA20_POLY1305_SHA256", C::TLS13_CHACHA20_POLY1305_SHA256),
        ("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", C::TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA),
        ("TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", C::TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA),
        ("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", C::TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA),
        ("TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA", C::TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA),
        ("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
        ("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
        ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
        ("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384),
        ("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
        ("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256),
    ]
};

/// Curve names exporter-toolkit accepts, with the group each names.
const CURVES: [(&str, rustls::NamedGroup); 4] = [
    ("CurveP256", rustls::NamedGroup::secp256r1),
    ("CurveP384", rustls::NamedGroup::secp384r1),
    ("CurveP521", rustls::NamedGroup::secp521r1),
    ("X25519", rustls::NamedGroup::X25519),
];

/// HTTP/2 needs one of these when a TLS 1.2 suite list is given; Go's server refuses to
/// start without (exporter-toolkit's `http2` is on by default).
const HTTP2_REQUIRED_SUITES: [&str; 2] =
    ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"];

fn is_bcrypt(hash: &str) -> bool {
    let b = hash.as_bytes();
    b.len() == 60
        && (hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$"))
        && b[4..6].iter().all(u8::is_ascii_digit)
        && (4..=31).contains(&hash[4..6].parse::<u32>().unwrap_or(0))
        && b[6] == b'$'
}

/// An empty string is an unset field in exporter-toolkit (Go's zero value).
fn set(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

impl WebConfig {
    /// Parses and checks a web configuration; relative paths are taken from `base_dir`,
    /// as exporter-toolkit does (the directory of the file).
    pub fn parse(text: &str, base_dir: &Path) -> Result<WebConfig, WebConfigError> {
        let raw: RawFile = if text.trim().is_empty() {
            RawFile::default()
        } else {
            serde_norway::from_str(text).map_err(|e| WebConfigError::Syntax(e.to_string()))?
        };
        let mut config = WebConfig::default();
        for (user, hash) in raw.basic_auth_users.unwrap_or_default().0 {
            if !is_bcrypt(&hash) {
                return Err(field_error(
                    format!("basic_auth_users.{user}"),
                    "not a bcrypt hash ($2y$, $2b$ or $2a$, cost 04 to 31, 60 characters); make one with: conn-exporter hash-password",
                ));
            }
            config.users.insert(user, hash);
        }
        let http2 = raw.http_server_config.as_ref().and_then(|h| h.http2).unwrap_or(true);
        if let Some(http) = raw.http_server_config {
            for (name, value) in http.headers.unwrap_or_default().0 {
                let field = format!("http_server_config.headers.{name}");
                let Some((allowed, values)) = ALLOWED_HEADERS.iter().find(|(h, _)| *h == name) else {
                    let names: Vec<&str> = ALLOWED_HEADERS.iter().map(|(h, _)| *h).collect();
                    return Err(field_error(
                        field,
                        format!("not one of the headers that may be set (spelt exactly so): {}", names.join(", ")),
                    ));
                };
                let value = value.unwrap_or_default();
                if !values.is_empty() && !values.contains(&value.as_str()) {
                    return Err(field_error(
                        field,
                        format!("invalid value {value:?}; expected one of: {}", values.join(", ")),
                    ));
                }
                if value.is_empty() {
                    continue; // blank: not sent
                }
                let value =
                    HeaderValue::from_str(&value).map_err(|_| field_error(&field, "not a valid header value"))?;
                config.headers.push((HeaderName::from_static(static_lower(allowed)), value));
            }
        }
        if let Some(limit) = raw.rate_limit {
            config.rate_limit = rate_limiter(limit, &mut config.warnings)?;
        }
        if let Some(tls) = raw.tls_server_config {
            config.tls = build_tls(tls, base_dir, http2, &mut config.warnings)?;
        }
        Ok(config)
    }

    /// Reads, parses and checks a file.
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| WebConfigError::Read { path: path.to_owned(), source })?;
        WebConfig::parse(&text, path.parent().unwrap_or(Path::new(".")))
    }

    /// Files this configuration was built from besides the YAML itself (certificates,
    /// keys, CAs): a change to any of them reloads the configuration.
    fn referenced_files(text: &str, base_dir: &Path) -> Vec<PathBuf> {
        let raw: RawFile = serde_norway::from_str(text).unwrap_or_default();
        let tls = raw.tls_server_config.unwrap_or_default();
        [set(tls.cert_file), set(tls.key_file), set(tls.client_ca_file)]
            .into_iter()
            .flatten()
            .map(|f| base_dir.join(f))
            .collect()
    }
}

fn static_lower(h: &'static str) -> &'static str {
    match h {
        "Content-Security-Policy" => "content-security-policy",
        "X-Frame-Options" => "x-frame-options",
        "X-Content-Type-Options" => "x-content-type-options",
        "X-XSS-Protection" => "x-xss-protection",
        _ => "strict-transport-security",
    }
}

/// PEM data given inline or as a file; as in exporter-toolkit, the file wins when both are set.
fn read_pem(
    field: &str,
    inline: Option<String>,
    file: Option<String>,
    base_dir: &Path,
) -> Result<Option<Vec<u8>>, WebConfigError> {
    match (set(inline), set(file)) {
        (_, Some(path)) => {
            let path = base_dir.join(path);
            std::fs::read(&path)
                .map(Some)
                .map_err(|e| field_error(format!("tls_server_config.{field}_file"), describe_read_error(&path, &e)))
        }
        (Some(text), None) => Ok(Some(text.into_bytes())),
        (None, None) => Ok(None),
    }
}

fn rate_limiter(raw: RawRateLimit, warnings: &mut Vec<String>) -> Result<Option<RateLimiter>, WebConfigError> {
    let interval = match raw.interval {
        None => Duration::ZERO,
        Some(RawDuration::Nanos(n)) => Duration::from_nanos(u64::try_from(n).unwrap_or(0)),
        Some(RawDuration::Text(t)) => parse_go_duration(&t).ok_or_else(|| {
            field_error("rate_limit.interval", format!("{t:?} is not a duration (e.g. 1s, 500ms, 1m30s)"))
        })?,
    };
    if interval.is_zero() {
        return Ok(None); // 0 switches the limiter off
    }
    let burst = u32::try_from(raw.burst.unwrap_or(0).max(0)).unwrap_or(u32::MAX);
    if burst == 0 {
        warnings.push("rate_limit.burst is 0: every request is answered 429, as with exporter-toolkit".to_owned());
    }
    Ok(Some(RateLimiter::new(interval, burst)))
}

/// Certificates of the system trust store, as Go reads them on Linux (`SSL_CERT_FILE`,
/// else the first bundle found among the usual places): what exporter-toolkit verifies
/// client certificates against when `client_ca_file` is not set.
fn system_roots() -> Result<RootCertStore, String> {
    const BUNDLES: [&str; 6] = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/ca-bundle.pem",
        "/etc/pki/tls/cacert.pem",
        "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
        "/etc/ssl/cert.pem",
    ];
    let candidates: Vec<PathBuf> = match std::env::var_os("SSL_CERT_FILE") {
        Some(f) => vec![PathBuf::from(f)],
        None => BUNDLES.iter().map(PathBuf::from).collect(),
    };
    for path in &candidates {
        let Ok(pem) = std::fs::read(path) else { continue };
        let mut roots = RootCertStore::empty();
        // Like Go's AppendCertsFromPEM, certificates that do not parse are skipped.
        let (added, _) = roots.add_parsable_certificates(CertificateDer::pem_slice_iter(&pem).flatten());
        if added > 0 {
            return Ok(roots);
        }
    }
    Err(format!(
        "not set, and no system trust store to verify client certificates against was found (looked in {}); set client_ca_file",
        candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    ))
}

/// The cryptography of every handshake and of the exporter's random numbers: rustls'
/// aws-lc-rs provider (its default) with P-521 added last, which makes its key exchange
/// groups Go's default list (X25519MLKEM768, X25519, P-256, P-384, P-521) and lets every
/// curve exporter-toolkit names be listed.
pub fn tls_provider() -> CryptoProvider {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups.push(p521::SECP521R1);
    provider
}

/// Checks `tls_server_config` the way exporter-toolkit does: names are checked even when
/// TLS is off; TLS is on when a certificate, key, client CA or client_auth_type is set.
fn build_tls(
    raw: RawTls,
    base_dir: &Path,
    http2: bool,
    warnings: &mut Vec<String>,
) -> Result<Option<TlsSetup>, WebConfigError> {
    let f = |name: &str| format!("tls_server_config.{name}");
    let min = tls_version(&f("min_version"), raw.min_version.as_deref().unwrap_or("TLS12"))?;
    let max = tls_version(&f("max_version"), raw.max_version.as_deref().unwrap_or("TLS13"))?;
    let suite_names = raw.cipher_suites.unwrap_or_default();
    let mut suites = Vec::new();
    for name in &suite_names {
        let (_, suite) = CIPHER_SUITES.iter().find(|(n, _)| n == name).ok_or_else(|| {
            field_error(f("cipher_suites"), format!("unknown cipher {name:?} (the names of Go's tls.CipherSuites())"))
        })?;
        suites.push((name.as_str(), *suite));
    }
    let curve_names = raw.curve_preferences.unwrap_or_default();
    let mut curves = Vec::new();
    for name in &curve_names {
        let (_, group) = CURVES.iter().find(|(n, _)| n == name).ok_or_else(|| {
            field_error(
                f("curve_preferences"),
                format!("unknown curve {name:?} (CurveP256, CurveP384, CurveP521, X25519)"),
            )
        })?;
        curves.push((name.as_str(), *group));
    }
    let client_auth_name = set(raw.client_auth_type);
    let enabled = [&raw.cert_file, &raw.cert, &raw.key_file, &raw.key, &raw.client_ca_file, &raw.client_ca]
        .iter()
        .any(|v| v.as_deref().is_some_and(|s| !s.is_empty()))
        || client_auth_name.is_some();
    if !enabled {
        return Ok(None);
    }

    let cert_pem = read_pem("cert", raw.cert, raw.cert_file, base_dir)?
        .ok_or_else(|| field_error(f("cert_file"), "missing one of cert or cert_file: TLS needs a certificate"))?;
    let key_pem = read_pem("key", raw.key, raw.key_file, base_dir)?
        .ok_or_else(|| field_error(f("key_file"), "missing one of key or key_file: TLS needs a private key"))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| field_error(f("cert_file"), format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(field_error(f("cert_file"), "no certificate in the PEM data"));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| field_error(f("key_file"), format!("unreadable private key: {e}")))?;

    // rustls implements TLS 1.2 and 1.3 only: a lower minimum serves from 1.2 (what
    // every client of an exporter speaks); a lower maximum leaves nothing to serve.
    if max < TlsVersion::Tls12 {
        return Err(field_error(
            f("max_version"),
            format!("{max:?} cannot be served: TLS 1.0 and 1.1 are insecure and rustls does not implement them; use TLS12 or TLS13"),
        ));
    }
    if min < TlsVersion::Tls12 {
        warnings.push(format!(
            "tls_server_config.min_version {min:?}: TLS 1.0 and 1.1 are not implemented (rustls); serving TLS 1.2 and up"
        ));
    }
    let min = min.max(TlsVersion::Tls12);
    if min > max {
        return Err(field_error(f("min_version"), "is above max_version: no TLS version could be negotiated"));
    }
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [(TlsVersion::Tls12, &rustls::version::TLS12), (TlsVersion::Tls13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| (min..=max).contains(v))
            .map(|(_, p)| p)
            .collect();

    let mut provider = tls_provider();
    if !suites.is_empty() {
        if http2 && min < TlsVersion::Tls13 && !suite_names.iter().any(|n| HTTP2_REQUIRED_SUITES.contains(&n.as_str()))
        {
            return Err(field_error(
                f("cipher_suites"),
                format!(
                    "with http_server_config.http2 on (the default) the list needs {}, or node_exporter refuses to start; add one, or set http2: false",
                    HTTP2_REQUIRED_SUITES.join(" or ")
                ),
            ));
        }
        // As in Go, the list governs TLS 1.2 (in its order); TLS 1.3 suites are all kept.
        let all = provider.cipher_suites.clone();
        let mut chosen = Vec::new();
        let mut missing = Vec::new();
        for (name, id) in &suites {
            match all.iter().find(|s| s.suite() == *id) {
                Some(s) if s.tls13().is_none() => chosen.push(*s),
                Some(_) => {} // a TLS 1.3 name: not configurable, as in Go
                None => missing.push(*name),
            }
        }
        if !missing.is_empty() {
            if chosen.is_empty() && min == TlsVersion::Tls12 {
                return Err(field_error(
                    f("cipher_suites"),
                    format!(
                        "{} not implemented by rustls (no CBC suites), and no other TLS 1.2 suite is listed: add one of the GCM or CHACHA20 suites",
                        missing.join(", ")
                    ),
                ));
            }
            warnings.push(format!(
                "tls_server_config.cipher_suites: {} not implemented by rustls (no CBC suites); left out",
                missing.join(", ")
            ));
        }
        if chosen.is_empty() && max == TlsVersion::Tls12 {
            return Err(field_error(f("cipher_suites"), "lists no TLS 1.2 suite, and max_version is TLS12"));
        }
        chosen.extend(all.iter().filter(|s| s.tls13().is_some()).copied());
        provider.cipher_suites = chosen;
    }
    if !curves.is_empty() {
        let mut chosen = Vec::new();
        for (name, group) in &curves {
            let kx = provider.kx_groups.iter().find(|g| g.name() == *group).ok_or_else(|| {
                field_error(f("curve_preferences"), format!("{name} is not implemented by this build's TLS provider"))
            })?;
            chosen.push(*kx);
        }
        provider.kx_groups = chosen;
    }
    let provider = Arc::new(provider);

    let client_auth = match client_auth_name.as_deref().unwrap_or("NoClientCert") {
        "NoClientCert" => ClientAuth::NoClientCert,
        "RequestClientCert" => ClientAuth::RequestClientCert,
        // RequireClientCert: exporter-toolkit's old name, still accepted there.
        "RequireAnyClientCert" | "RequireClientCert" => ClientAuth::RequireAnyClientCert,
        "VerifyClientCertIfGiven" => ClientAuth::VerifyClientCertIfGiven,
        "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerifyClientCert,
        other => return Err(field_error(f("client_auth_type"), format!("invalid ClientAuth {other:?}"))),
    };
    let ca_pem = read_pem("client_ca", raw.client_ca, raw.client_ca_file, base_dir)?;
    let verifier: Arc<dyn ClientCertVerifier> = match client_auth {
        ClientAuth::NoClientCert => {
            if ca_pem.is_some() {
                return Err(field_error(
                    f("client_ca_file"),
                    "a client CA is configured without a client_auth_type that uses it",
                ));
            }
            WebPkiClientVerifier::no_client_auth()
        }
        ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert => Arc::new(AnyClientCert {
            mandatory: client_auth == ClientAuth::RequireAnyClientCert,
            provider: Arc::clone(&provider),
        }),
        ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert => {
            let roots = match ca_pem {
                Some(ca) => {
                    let mut roots = RootCertStore::empty();
                    for cert in CertificateDer::pem_slice_iter(&ca) {
                        let cert =
                            cert.map_err(|e| field_error(f("client_ca_file"), format!("not a PEM certificate: {e}")))?;
                        roots
                            .add(cert)
                            .map_err(|e| field_error(f("client_ca_file"), format!("unusable CA certificate: {e}")))?;
                    }
                    if roots.is_empty() {
                        return Err(field_error(f("client_ca_file"), "no certificate in the PEM data"));
                    }
                    roots
                }
                None => system_roots().map_err(|e| field_error(f("client_ca_file"), e))?,
            };
            let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            let builder = if client_auth == ClientAuth::VerifyClientCertIfGiven {
                builder.allow_unauthenticated()
            } else {
                builder
            };
            builder.build().map_err(|e| field_error(f("client_ca_file"), e.to_string()))?
        }
    };
    let mut allowed_sans = raw.client_allowed_sans.unwrap_or_default();
    if !allowed_sans.is_empty() && client_auth == ClientAuth::NoClientCert {
        // exporter-toolkit accepts this, and never checks: no certificate is asked for.
        warnings
            .push("tls_server_config.client_allowed_sans has no effect with client_auth_type NoClientCert".to_owned());
        allowed_sans.clear();
    }
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| field_error(f("cipher_suites"), e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| field_error(f("key_file"), format!("does not fit the certificate: {e}")))?;
    // The server's order (cipher_suites' order), as prefer_server_cipher_suites (default
    // true) asks; Go has ignored that setting since 1.17, so it is accepted and ignored.
    let _ = raw.prefer_server_cipher_suites;
    server.ignore_client_order = true;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsSetup { server: Arc::new(server), client_auth, allowed_sans }))
}

/// Accepts any client certificate (RequestClientCert, RequireAnyClientCert): the
/// handshake still proves the client holds the certificate's key.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// True when a client certificate carries one of `allowed` as a DNS name, IP address,
/// e-mail address or URI in its subject alternative names.
pub fn cert_has_allowed_san(cert: &CertificateDer<'_>, allowed: &[String]) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else { return false };
    let Ok(Some(san)) = parsed.subject_alternative_name() else { return false };
    san.value.general_names.iter().any(|name| {
        let text = match name {
            GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => s.to_string(),
            GeneralName::IPAddress(b) => match b.len() {
                4 => std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string(),
                16 => <[u8; 16]>::try_from(*b).map(|o| std::net::Ipv6Addr::from(o).to_string()).unwrap_or_default(),
                _ => return false,
            },
            _ => return false,
        };
        allowed.contains(&text)
    })
}

/// Reload bookkeeping, exported as metrics.
#[derive(Debug, Default)]
pub struct ReloadStatus {
    /// Whether the last attempt succeeded.
    pub last_ok: AtomicBool,
    /// Failed reloads since start.
    pub failures: AtomicU64,
}

/// What the watched files looked like: mtime, size and inode of each (none when it
/// cannot be stat'ed).
type Stamp = Vec<Option<(SystemTime, u64, u64)>>;

fn stamp_of(paths: &[PathBuf]) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    paths
        .iter()
        .map(|p| std::fs::metadata(p).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), m.ino())))
        .collect()
}

/// Logs what a configuration put in force accepted but does not serve as written.
fn log_warnings(config: &WebConfig) {
    for warning in &config.warnings {
        log::warn!("{warning}");
    }
}

/// Reads a web configuration file: its configuration, and the files to watch.
type Reader = fn(&Path) -> (Result<WebConfig, WebConfigError>, Vec<PathBuf>);

/// A web configuration file in use: the last good configuration, re-read when the file
/// or one it names changes. A bad change keeps the last good one.
#[derive(Debug)]
pub struct WebConfigFile {
    path: PathBuf,
    /// The files watched, their stamp as it was before the last read, and the
    /// configuration in force.
    state: Mutex<(Vec<PathBuf>, Stamp, Arc<WebConfig>)>,
    /// Reload outcome for metrics.
    pub status: Arc<ReloadStatus>,
    log_limit: RateLimit,
    read: Reader,
}

impl WebConfigFile {
    /// Loads the file; an error here is a start-up error (exit 2).
    pub fn open(path: &Path) -> Result<WebConfigFile, WebConfigError> {
        Self::open_with(path, Self::read)
    }

    fn open_with(path: &Path, read: Reader) -> Result<WebConfigFile, WebConfigError> {
        let (paths, stamp, config) = Self::stamped_read(path, read, vec![path.to_owned()]);
        let config = config?;
        log_warnings(&config);
        let status = Arc::new(ReloadStatus { last_ok: AtomicBool::new(true), failures: AtomicU64::new(0) });
        Ok(WebConfigFile {
            path: path.to_owned(),
            state: Mutex::new((paths, stamp, Arc::new(config))),
            status,
            log_limit: RateLimit::new(Duration::from_secs(60)),
            read,
        })
    }

    /// Reads the file once: its configuration, and the files to watch (itself and those
    /// it names), so that what is watched is what was loaded.
    fn read(path: &Path) -> (Result<WebConfig, WebConfigError>, Vec<PathBuf>) {
        let base = path.parent().unwrap_or(Path::new("."));
        let mut paths = vec![path.to_owned()];
        match std::fs::read_to_string(path) {
            Ok(text) => {
                paths.extend(WebConfig::referenced_files(&text, base));
                (WebConfig::parse(&text, base), paths)
            }
            Err(source) => (Err(WebConfigError::Read { path: path.to_owned(), source }), paths),
        }
    }

    /// Reads with the stamp taken *before* the files are read: an edit that lands during
    /// or after the read changes the files after their stamp, so the next request sees a
    /// change and loads it. (A stamp taken after the read would record the edit as seen
    /// although the configuration in force predates it: a certificate and key rotated in
    /// two steps could stick half-done.) `expected` are the files the last read named;
    /// when this read names others, it is repeated with those stamped first.
    fn stamped_read(
        path: &Path,
        read: Reader,
        mut expected: Vec<PathBuf>,
    ) -> (Vec<PathBuf>, Stamp, Result<WebConfig, WebConfigError>) {
        for _ in 0..3 {
            let before = stamp_of(&expected);
            let (config, paths) = read(path);
            if paths == expected {
                return (paths, before, config);
            }
            expected = paths;
        }
        // The file keeps naming other files while it is read: no stamp, which never
        // equals a real one (there is always the file itself), so the next request reads again.
        let (config, paths) = read(path);
        (paths, Vec::new(), config)
    }

    /// The configuration to use now: reloaded first when a watched file changed (a few
    /// `stat` calls otherwise).
    pub fn current(&self) -> Arc<WebConfig> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if stamp_of(&state.0) == state.1 {
            return Arc::clone(&state.2);
        }
        let (paths, stamp, config) = Self::stamped_read(&self.path, self.read, state.0.clone());
        match config {
            Ok(config) => {
                log::info!("reloaded --web.config.file {}", self.path.display());
                log_warnings(&config);
                self.status.last_ok.store(true, Ordering::Relaxed);
                *state = (paths, stamp, Arc::new(config));
            }
            Err(e) => {
                self.status.last_ok.store(false, Ordering::Relaxed);
                self.status.failures.fetch_add(1, Ordering::Relaxed);
                if self.log_limit.allow() {
                    log::error!(
                        "bad --web.config.file {} after a change, keeping the last good configuration: {e}",
                        self.path.display()
                    );
                }
                // Remember the bad stamp so the same bad file is not parsed per request.
                state.0 = paths;
                state.1 = stamp;
            }
        }
        Arc::clone(&state.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$2y$10$6oXWLD4GBykXWk97rT5HxONmaVL9y0kyYoLFXxUWodxYWmdWw9x/.";

    fn parse(text: &str) -> Result<WebConfig, String> {
        WebConfig::parse(text, Path::new("/nonexistent")).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_and_auth_only_files() {
        assert!(parse("").unwrap().tls.is_none());
        let c = parse(&format!("basic_auth_users:\n  prometheus: {HASH}\n")).unwrap();
        assert_eq!(c.users["prometheus"], HASH);
    }

    #[test]
    fn errors_name_the_field() {
        for (text, needle) in [
            ("basic_auth_users:\n  bob: secret\n", "basic_auth_users.bob"),
            ("unknown_section: 1\n", "unknown field"),
            ("http_server_config:\n  headers:\n    Server: x\n", "http_server_config.headers.Server"),
            ("tls_server_config:\n  cert_file: a.pem\n  key_file: a.key\n", "tls_server_config.cert_file"),
            ("tls_server_config:\n  key_file: a.key\n", "cert_file"),
            ("[1, 2", ""),
            (
                "http_server_config:\n  headers:\n    X-Frame-Options: deny\n    x-frame-options: sameorigin\n",
                "http_server_config.headers.x-frame-options",
            ),
            ("rate_limit:\n  interval: soon\n", "rate_limit.interval"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn headers_are_checked_and_kept() {
        let c = parse("http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n    Strict-Transport-Security: max-age=31536000\n    X-XSS-Protection: 1\n    Content-Security-Policy:\n").unwrap();
        assert_eq!(c.headers.len(), 3, "a blank header is not sent");
        assert!(c.headers.iter().any(|(n, v)| n == "x-xss-protection" && v == "1"), "a YAML number is text");
        assert!(c.headers.iter().any(|(n, v)| n == "x-frame-options" && v == "deny"));
    }

    /// The second step of a two-step edit, landing while the first is being read: the
    /// test's reader writes it right after reading, the worst moment.
    static SECOND_STEP: Mutex<Option<(PathBuf, String)>> = Mutex::new(None);

    fn read_then_edit(path: &Path) -> (Result<WebConfig, WebConfigError>, Vec<PathBuf>) {
        let result = WebConfigFile::read(path);
        if let Some((file, text)) = SECOND_STEP.lock().unwrap().take() {
            let tmp = file.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &file).unwrap();
        }
        result
    }

    #[test]
    fn an_edit_landing_during_a_reload_is_loaded_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.yml");
        let users = |user: &str| format!("basic_auth_users:\n  {user}: {HASH}\n");
        std::fs::write(&path, users("first")).unwrap();
        let file = WebConfigFile::open_with(&path, read_then_edit).unwrap();
        assert!(file.current().users.contains_key("first"));
        // Step one, then step two lands while step one is being read.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, users("second")).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        *SECOND_STEP.lock().unwrap() = Some((path.clone(), users("third")));
        assert!(file.current().users.contains_key("second"), "step one is read");
        assert!(SECOND_STEP.lock().unwrap().is_none(), "step two was written during the read");
        assert!(file.current().users.contains_key("third"), "step two is loaded by the next request");
        assert!(file.current().users.contains_key("third"));
    }

    #[test]
    fn go_durations() {
        let d = |t: &str| parse_go_duration(t);
        assert_eq!(d("1s"), Some(Duration::from_secs(1)));
        assert_eq!(d("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(d("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(d("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(d("0"), Some(Duration::ZERO));
        assert_eq!(d("-1s"), Some(Duration::ZERO));
        for bad in ["", "1", "s", "1d", "1 s", "1s2"] {
            assert_eq!(d(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_rate_limiter_is_a_token_bucket() {
        let limiter = RateLimiter::new(Duration::from_secs(10), 2);
        let t0 = std::time::Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        assert!(limiter.allow_at(at(0)) && limiter.allow_at(at(0)), "starts with burst tokens");
        assert!(!limiter.allow_at(at(0)), "then empty");
        assert!(!limiter.allow_at(at(9)));
        assert!(limiter.allow_at(at(10)), "one token per interval");
        assert!(!limiter.allow_at(at(10)));
        assert!(limiter.allow_at(at(100)) && limiter.allow_at(at(100)) && !limiter.allow_at(at(100)), "up to burst");
        let none = RateLimiter::new(Duration::from_secs(1), 0);
        assert!(!none.allow_at(at(5)), "burst 0 lets nothing through, as in Go");
    }

    #[test]
    fn the_key_exchanges_are_gos_defaults_and_every_curve_name_is_one() {
        use rustls::NamedGroup as G;
        let offered: Vec<G> = tls_provider().kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(offered, [G::X25519MLKEM768, G::X25519, G::secp256r1, G::secp384r1, G::secp521r1]);
        for (name, group) in CURVES {
            assert!(offered.contains(&group), "{name}");
        }
    }

    #[test]
    fn bcrypt_shapes() {
        assert!(is_bcrypt(HASH));
        assert!(is_bcrypt(&HASH.replace("$2y$", "$2b$")));
        assert!(!is_bcrypt(&HASH.replace("$2y$", "$1$")));
        assert!(!is_bcrypt(&HASH[..59]));
        assert!(!is_bcrypt(&HASH.replace("$10$", "$03$")), "cost below bcrypt's 4");
        assert!(!is_bcrypt(&HASH.replace("$10$", "$32$")), "cost above bcrypt's 31");
    }
}
