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

/// Dummy hashes checked against when the user is unknown, so that unknown and known
/// users take the same time: a bcrypt check's time is set by its cost, so the dummy's
/// cost must be that of the configured hashes. Users with different costs cannot all be
/// matched; the most common cost (the higher on a tie) hides the most names.
fn dummy_cost(users: &BTreeMap<String, String>) -> u32 {
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for hash in users.values() {
        if let Some(cost) = hash_cost(hash) {
            *counts.entry(cost).or_default() += 1;
        }
    }
    counts.into_iter().max_by_key(|&(cost, n)| (n, cost)).map_or(DEFAULT_COST, |(cost, _)| cost)
}

/// The cost field of a `$2?$NN$...` hash.
fn hash_cost(hash: &str) -> Option<u32> {
    hash.get(4..6)?.parse().ok().filter(|c| (4..=31).contains(c))
}

const DEFAULT_COST: u32 = 10;

/// A bcrypt hash of a random string at `cost`, made on first use of that cost (making
/// one takes as long as a check, so only on a blocking thread).
fn dummy_hash(dummies: &Mutex<HashMap<u32, String>>, cost: u32) -> String {
    let mut dummies = dummies.lock().unwrap_or_else(|e| e.into_inner());
    dummies
        .entry(cost)
        .or_insert_with(|| {
            let mut secret = [0u8; 16];
            let _ = crate::webconfig::tls_provider().secure_random.fill(&mut secret);
            bcrypt::hash(secret, cost).unwrap_or_default()
        })
        .clone()
}

/// Checks `Authorization: Basic` headers.
pub struct Authenticator {
    key: [u8; 32],
    cache: Mutex<HashMap<String, ([u8; 32], String)>>,
    slots: Arc<Semaphore>,
    /// The dummy hash by cost, made once per cost (making one takes as long as a check).
    dummies: Arc<Mutex<HashMap<u32, String>>>,
}

impl Default for Authenticator {
    fn default() -> Self {
        let mut key = [0u8; 32];
        // Without randomness the key is zero: the cache still works, digests are only
        // less opaque to someone who can read this process's memory.
        let _ = crate::webconfig::tls_provider().secure_random.fill(&mut key);
        Authenticator {
            key,
            cache: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(2)),
            dummies: Arc::new(Mutex::new(HashMap::new())),
        }
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
        let target = hash.clone();
        let (dummies, cost) = (Arc::clone(&self.dummies), dummy_cost(users));
        let verified = tokio::task::spawn_blocking(move || {
            let target = target.unwrap_or_else(|| dummy_hash(&dummies, cost));
            bcrypt::verify(password, &target).unwrap_or(false)
        })
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
    }

    #[test]
    fn the_dummy_hash_has_the_configured_cost() {
        let users = |costs: &[u32]| -> BTreeMap<String, String> {
            costs.iter().enumerate().map(|(i, &c)| (format!("u{i}"), bcrypt::hash("pw", c).unwrap())).collect()
        };
        assert_eq!(dummy_cost(&users(&[5])), 5);
        assert_eq!(dummy_cost(&users(&[4, 6, 6])), 6, "the most common cost");
        assert_eq!(dummy_cost(&users(&[7, 7, 4])), 7, "the most common cost");
        assert_eq!(dummy_cost(&users(&[4, 5])), 5, "the higher on a tie");
        assert_eq!(dummy_cost(&BTreeMap::new()), DEFAULT_COST);
        let dummies = Mutex::new(HashMap::new());
        for cost in [4, 6] {
            let dummy = dummy_hash(&dummies, cost);
            let parts: bcrypt::HashParts = dummy.parse().unwrap();
            assert_eq!(parts.get_cost(), cost, "{dummy}");
            assert_eq!(dummy_hash(&dummies, cost), dummy, "made once per cost");
        }
    }

    #[tokio::test]
    async fn unknown_users_are_checked_at_the_configured_cost() {
        let users: BTreeMap<String, String> = [("prom".to_owned(), bcrypt::hash("s3cret", 5).unwrap())].into();
        let auth = Authenticator::default();
        assert!(!auth.check(&users, Some(&basic("nobody:s3cret"))).await);
        let dummies = auth.dummies.lock().unwrap();
        let costs: Vec<u32> = dummies.values().map(|h| h.parse::<bcrypt::HashParts>().unwrap().get_cost()).collect();
        assert_eq!(costs, [5], "the unknown user's check ran against a cost-5 dummy");
    }
}
