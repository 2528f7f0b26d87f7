//! `--web.config.file`: `WebConfig::parse` on any text, with the relative paths in it
//! resolved in `fuzz/webconfig-files/`, which holds a test CA, certificate and key, so
//! inputs that name them reach the TLS checks.
//!
//! Checks, besides never panicking (the YAML parser included): an accepted configuration
//! only holds bcrypt-shaped hashes and the response headers that may be set; a refused
//! one says why.

#![no_main]

use std::path::Path;

use conn_exporter::webconfig::WebConfig;
use libfuzzer_sys::fuzz_target;

const ALLOWED_HEADERS: [&str; 5] = [
    "content-security-policy",
    "x-frame-options",
    "x-content-type-options",
    "x-xss-protection",
    "strict-transport-security",
];

fuzz_target!(|data: &[u8]| {
    // The exporter reads the file with read_to_string: only UTF-8 gets this far.
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Paths are read as given: keep the fuzzer away from device and kernel files, where a
    // read never ends (/dev/zero) or blocks (/dev/stdin); no operator names them.
    let lower = text.to_ascii_lowercase();
    if ["/dev", "/proc", "/sys", "../", "\\x2f", "\\u002f", "\\u0000002f"].iter().any(|p| lower.contains(p)) {
        return;
    }
    let base_dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/webconfig-files"));
    match WebConfig::parse(text, base_dir) {
        Ok(config) => {
            for (user, hash) in &config.users {
                let shaped = hash.len() == 60 && ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p));
                assert!(shaped, "user {user:?} kept with hash {hash:?}");
            }
            for (name, _) in &config.headers {
                assert!(ALLOWED_HEADERS.contains(&name.as_str()), "header {name} may not be set");
            }
        }
        Err(e) => assert!(!e.to_string().is_empty(), "an error that says nothing: {e:?}"),
    }
});
