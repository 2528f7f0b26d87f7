//! `--web.config.file`: the exporter-toolkit YAML format node_exporter uses (TLS, client
//! certificates, basic auth, response headers), checked into a ready-to-serve
//! configuration, and re-read when the file or a file it names changes.

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
    basic_auth_users: Option<BTreeMap<String, String>>,
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
    headers: Option<BTreeMap<String, String>>,
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
}

/// Response headers exporter-toolkit allows to be set.
const ALLOWED_HEADERS: [&str; 5] = [
    "Content-Security-Policy",
    "X-Frame-Options",
    "X-Content-Type-Options",
    "X-XSS-Protection",
    "Strict-Transport-Security",
];

fn tls_version(field: &str, v: &str) -> Result<&'static rustls::SupportedProtocolVersion, WebConfigError> {
    match v {
        "TLS13" => Ok(&rustls::version::TLS13),
        "TLS12" => Ok(&rustls::version::TLS12),
        "TLS10" | "TLS11" => Err(field_error(
            field,
            format!("{v} is not supported: TLS 1.0 and 1.1 are insecure and rustls does not implement them; use TLS12 or TLS13"),
        )),
        other => Err(field_error(field, format!("unknown TLS version {other:?}; use TLS12 or TLS13"))),
    }
}

fn is_bcrypt(hash: &str) -> bool {
    let b = hash.as_bytes();
    b.len() == 60
        && (hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$"))
        && b[4..6].iter().all(u8::is_ascii_digit)
        && b[6] == b'$'
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
        for (user, hash) in raw.basic_auth_users.unwrap_or_default() {
            if !is_bcrypt(&hash) {
                return Err(field_error(
                    format!("basic_auth_users.{user}"),
                    "not a bcrypt hash ($2y$, $2b$ or $2a$, 60 characters); make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n'",
                ));
            }
            config.users.insert(user, hash);
        }
        if let Some(http) = raw.http_server_config {
            let _ = http.http2; // HTTP/1.1 is served either way; see docs.
            for (name, value) in http.headers.unwrap_or_default() {
                let field = format!("http_server_config.headers.{name}");
                let Some(allowed) = ALLOWED_HEADERS.iter().find(|h| h.eq_ignore_ascii_case(&name)) else {
                    return Err(field_error(
                        field,
                        format!("not one of the headers that may be set: {}", ALLOWED_HEADERS.join(", ")),
                    ));
                };
                let value =
                    HeaderValue::from_str(&value).map_err(|_| field_error(&field, "not a valid header value"))?;
                if config.headers.iter().any(|(n, _)| n.as_str().eq_ignore_ascii_case(allowed)) {
                    return Err(field_error(field, "set twice (header names are case-insensitive)"));
                }
                config.headers.push((HeaderName::from_static(static_lower(allowed)), value));
            }
        }
        if let Some(tls) = raw.tls_server_config {
            config.tls = Some(build_tls(tls, base_dir)?);
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
        [tls.cert_file, tls.key_file, tls.client_ca_file].into_iter().flatten().map(|f| base_dir.join(f)).collect()
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

fn read_pem(
    field: &str,
    inline: Option<String>,
    file: Option<String>,
    base_dir: &Path,
) -> Result<Option<Vec<u8>>, WebConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(field_error(field, format!("set either {field} or {field}_file, not both"))),
        (Some(text), None) => Ok(Some(text.into_bytes())),
        (None, Some(path)) => {
            let path = base_dir.join(path);
            std::fs::read(&path)
                .map(Some)
                .map_err(|e| field_error(format!("tls_server_config.{field}_file"), describe_read_error(&path, &e)))
        }
        (None, None) => Ok(None),
    }
}

fn build_tls(raw: RawTls, base_dir: &Path) -> Result<TlsSetup, WebConfigError> {
    let f = |name: &str| format!("tls_server_config.{name}");
    let min = tls_version(&f("min_version"), raw.min_version.as_deref().unwrap_or("TLS12"))?;
    let max = tls_version(&f("max_version"), raw.max_version.as_deref().unwrap_or("TLS13"))?;
    let rank = |v: &rustls::SupportedProtocolVersion| if v.version == rustls::ProtocolVersion::TLSv1_3 { 1 } else { 0 };
    if rank(min) > rank(max) {
        return Err(field_error(f("min_version"), "is above max_version"));
    }
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [&rustls::version::TLS12, &rustls::version::TLS13]
        .into_iter()
        .filter(|v| rank(v) >= rank(min) && rank(v) <= rank(max))
        .collect();

    let cert_pem = read_pem("cert", raw.cert, raw.cert_file, base_dir)?
        .ok_or_else(|| field_error(f("cert_file"), "missing: TLS needs a certificate and a key"))?;
    let key_pem = read_pem("key", raw.key, raw.key_file, base_dir)?
        .ok_or_else(|| field_error(f("key_file"), "missing: TLS needs a certificate and a key"))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| field_error(f("cert_file"), format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(field_error(f("cert_file"), "no certificate in the PEM data"));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| field_error(f("key_file"), format!("unreadable private key: {e}")))?;

    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(names) = raw.cipher_suites.filter(|n| !n.is_empty()) {
        // As in Go, the list governs TLS 1.2; TLS 1.3 suites are not configurable.
        let all = provider.cipher_suites.clone();
        let mut chosen: Vec<_> = Vec::new();
        for name in &names {
            let want = name.trim_end_matches("_SHA256").to_owned();
            let suite = all
                .iter()
                .find(|s| {
                    let n = format!("{:?}", s.suite());
                    s.tls13().is_none() && (n == *name || n.trim_end_matches("_SHA256") == want)
                })
                .ok_or_else(|| {
                    field_error(f("cipher_suites"), format!("unknown or unsupported TLS 1.2 cipher suite {name:?}"))
                })?;
            chosen.push(*suite);
        }
        chosen.extend(all.iter().filter(|s| s.tls13().is_some()).copied());
        provider.cipher_suites = chosen;
    }
    if let Some(curves) = raw.curve_preferences.filter(|c| !c.is_empty()) {
        let all = provider.kx_groups.clone();
        let mut chosen = Vec::new();
        for name in &curves {
            let want = match name.as_str() {
                "CurveP256" => "secp256r1",
                "CurveP384" => "secp384r1",
                "X25519" => "X25519",
                other => {
                    return Err(field_error(
                        f("curve_preferences"),
                        format!("unsupported curve {other:?} (CurveP256, CurveP384, X25519)"),
                    ))
                }
            };
            if let Some(g) = all.iter().find(|g| format!("{:?}", g.name()) == want) {
                chosen.push(*g);
            }
        }
        provider.kx_groups = chosen;
    }
    let _ = raw.prefer_server_cipher_suites; // rustls always prefers the server's order.
    let provider = Arc::new(provider);

    let client_auth = match raw.client_auth_type.as_deref().unwrap_or("NoClientCert") {
        "" | "NoClientCert" => ClientAuth::NoClientCert,
        "RequestClientCert" => ClientAuth::RequestClientCert,
        "RequireAnyClientCert" => ClientAuth::RequireAnyClientCert,
        "VerifyClientCertIfGiven" => ClientAuth::VerifyClientCertIfGiven,
        "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerifyClientCert,
        other => return Err(field_error(f("client_auth_type"), format!("unknown value {other:?}"))),
    };
    let ca_pem = read_pem("client_ca", raw.client_ca, raw.client_ca_file, base_dir)?;
    let verifier: Arc<dyn ClientCertVerifier> = match client_auth {
        ClientAuth::NoClientCert => {
            if ca_pem.is_some() {
                return Err(field_error(f("client_ca_file"), "set without a client_auth_type that uses it"));
            }
            WebPkiClientVerifier::no_client_auth()
        }
        ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert => Arc::new(AnyClientCert {
            mandatory: client_auth == ClientAuth::RequireAnyClientCert,
            provider: Arc::clone(&provider),
        }),
        ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert => {
            let ca = ca_pem.ok_or_else(|| {
                field_error(f("client_ca_file"), format!("required by client_auth_type {client_auth:?}"))
            })?;
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&ca) {
                let cert = cert.map_err(|e| field_error(f("client_ca_file"), format!("not a PEM certificate: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| field_error(f("client_ca_file"), format!("unusable CA certificate: {e}")))?;
            }
            let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            let builder = if client_auth == ClientAuth::VerifyClientCertIfGiven {
                builder.allow_unauthenticated()
            } else {
                builder
            };
            builder.build().map_err(|e| field_error(f("client_ca_file"), e.to_string()))?
        }
    };
    let allowed_sans = raw.client_allowed_sans.unwrap_or_default();
    if !allowed_sans.is_empty() && client_auth != ClientAuth::RequireAndVerifyClientCert {
        return Err(field_error(f("client_allowed_sans"), "needs client_auth_type RequireAndVerifyClientCert"));
    }
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| field_error(f("min_version"), e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| field_error(f("key_file"), format!("does not fit the certificate: {e}")))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsSetup { server: Arc::new(server), client_auth, allowed_sans })
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
                "set twice",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn headers_are_checked_and_kept() {
        let c = parse("http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n    strict-transport-security: max-age=31536000\n").unwrap();
        assert_eq!(c.headers.len(), 2);
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
    fn bcrypt_shapes() {
        assert!(is_bcrypt(HASH));
        assert!(is_bcrypt(&HASH.replace("$2y$", "$2b$")));
        assert!(!is_bcrypt(&HASH.replace("$2y$", "$1$")));
        assert!(!is_bcrypt(&HASH[..59]));
    }
}
