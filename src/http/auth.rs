//! Basic authentication against bcrypt hashes.
//!
//! A bcrypt check costs tens of milliseconds by design, so a successful one is cached:
//! the cache keeps, per user, a keyed digest of the password that passed and the hash it
//! passed against; a request whose digest matches (compared in constant time) and whose
//! configured hash is unchanged skips bcrypt. Slow checks run off the async threads, at
//! most two at a time, so a flood of wrong passwords costs two cores at worst, not all.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use base64::Engine;
use http::HeaderValue;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// A bcrypt hash (cost 10) of a random string, checked against when the user is unknown
/// so that unknown and known users take the same time.
const DUMMY_HASH: &str = "$2y$10$exNtv4ekY9p3nIPdCqtv4..3QE3NwBz4xTT8zLeYmhrtzEanN3R1u";

/// Checks `Authorization: Basic` headers.
pub struct Authenticator {
    key: [u8; 32],
    cache: Mutex<HashMap<String, ([u8; 32], String)>>,
    slots: Arc<Semaphore>,
}

impl Default for Authenticator {
    fn default() -> Self {
        let mut key = [0u8; 32];
        // Without randomness the key is zero: the cache still works, digests are only
        // less opaque to someone who can read this process's memory.
        let _ = rustls::crypto::ring::default_provider().secure_random.fill(&mut key);
        Authenticator { key, cache: Mutex::new(HashMap::new()), slots: Arc::new(Semaphore::new(2)) }
    }
}

/// Splits a `Basic` credential into user and password.
pub fn parse_basic(header: &HeaderValue) -> Option<(String, String)> {
    let value = header.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") || token.len() > 4096 {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(token.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

impl Authenticator {
    fn digest(&self, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// True when the header names a configured user with the right password.
    pub async fn check(&self, users: &BTreeMap<String, String>, header: Option<&HeaderValue>) -> bool {
        let Some((user, password)) = header.and_then(parse_basic) else { return false };
        let digest = self.digest(&password);
        let hash = users.get(&user).cloned();
        if let Some(hash) = &hash {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((known, verified_against)) = cache.get(&user) {
                if verified_against == hash && bool::from(known.ct_eq(&digest)) {
                    return true;
                }
            }
        }
        let Ok(_permit) = self.slots.acquire().await else { return false };
        let target = hash.clone().unwrap_or_else(|| DUMMY_HASH.to_owned());
        let verified = tokio::task::spawn_blocking(move || bcrypt::verify(password, &target).unwrap_or(false))
            .await
            .unwrap_or(false);
        match hash {
            Some(hash) if verified => {
                self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(user, (digest, hash));
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user_pass: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_pass)))
            .unwrap()
    }

    #[test]
    fn header_parsing() {
        assert_eq!(parse_basic(&basic("u:p:q")), Some(("u".into(), "p:q".into())));
        assert_eq!(parse_basic(&HeaderValue::from_static("Bearer x")), None);
        assert_eq!(parse_basic(&HeaderValue::from_static("Basic !!!")), None);
        assert_eq!(parse_basic(&basic("nocolon")), None);
    }

    #[tokio::test]
    async fn right_wrong_unknown_and_cached() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let users: BTreeMap<String, String> = [("prom".to_owned(), hash.clone())].into();
        let auth = Authenticator::default();
        assert!(!auth.check(&users, None).await);
        assert!(!auth.check(&users, Some(&basic("prom:wrong"))).await);
        assert!(!auth.check(&users, Some(&basic("nobody:s3cret"))).await);
        assert!(auth.check(&users, Some(&basic("prom:s3cret"))).await);
        assert!(auth.cache.lock().unwrap().contains_key("prom"));
        assert!(auth.check(&users, Some(&basic("prom:s3cret"))).await, "from the cache");
        assert!(!auth.check(&users, Some(&basic("prom:wrong"))).await, "the cache does not let others in");
        // A changed hash invalidates the cached success.
        let changed: BTreeMap<String, String> = [("prom".to_owned(), bcrypt::hash("other", 4).unwrap())].into();
        assert!(!auth.check(&changed, Some(&basic("prom:s3cret"))).await);
        assert!(bcrypt::verify("x", DUMMY_HASH).is_ok(), "the dummy hash is a real bcrypt hash");
    }
}
