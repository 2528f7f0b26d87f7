//! The `secp521r1` (P-521) key exchange group. exporter-toolkit accepts
//! `curve_preferences: [CurveP521]` and Go offers P-521 by default, but rustls' aws-lc-rs
//! provider lists no P-521 group (only X25519, P-256, P-384 and the ML-KEM hybrids),
//! although aws-lc implements the curve: this puts aws-lc's ECDH on P-521 behind rustls'
//! key exchange traits.

use aws_lc_rs::agreement::{agree_ephemeral, EphemeralPrivateKey, UnparsedPublicKey, ECDH_P521};
use rustls::crypto::{ActiveKeyExchange, SharedSecret, SupportedKxGroup};
use rustls::{Error, NamedGroup, PeerMisbehaved};

/// A P-521 point as TLS sends it: uncompressed, 0x04 then x and y of 66 bytes each
/// (RFC 8446 section 4.2.8.2; RFC 8422 section 5.4.1 for TLS 1.2).
const POINT_LEN: usize = 1 + 2 * 66;

/// The group, to be listed in a provider's `kx_groups`.
pub static SECP521R1: &dyn SupportedKxGroup = &Secp521r1;

#[derive(Debug)]
struct Secp521r1;

impl SupportedKxGroup for Secp521r1 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        let failed = |_| Error::General("P-521 key generation failed".to_owned());
        // aws-lc draws from its own generator; the argument is there for ring's API.
        let private =
            EphemeralPrivateKey::generate(&ECDH_P521, &aws_lc_rs::rand::SystemRandom::new()).map_err(failed)?;
        let public = private.compute_public_key().map_err(failed)?.as_ref().to_vec();
        Ok(Box::new(Exchange { private, public }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::secp521r1
    }
}

struct Exchange {
    private: EphemeralPrivateKey,
    public: Vec<u8>,
}

impl ActiveKeyExchange for Exchange {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, Error> {
        // aws-lc would also take a compressed point or a DER public key, which a TLS peer
        // may not send; whether the point is on the curve, aws-lc checks.
        if peer.len() != POINT_LEN || peer[0] != 0x04 {
            return Err(PeerMisbehaved::InvalidKeyShare.into());
        }
        agree_ephemeral(
            self.private,
            UnparsedPublicKey::new(&ECDH_P521, peer),
            Error::from(PeerMisbehaved::InvalidKeyShare),
            |secret| Ok(SharedSecret::from(secret)),
        )
    }

    fn pub_key(&self) -> &[u8] {
        &self.public
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::secp521r1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_sides_agree_on_a_66_byte_secret() {
        let (a, b) = (SECP521R1.start().unwrap(), SECP521R1.start().unwrap());
        assert_eq!((a.group(), a.pub_key().len(), a.pub_key()[0]), (NamedGroup::secp521r1, POINT_LEN, 0x04));
        let (a_pub, b_pub) = (a.pub_key().to_vec(), b.pub_key().to_vec());
        assert_ne!(a_pub, b_pub, "fresh keys each time");
        let (sa, sb) = (a.complete(&b_pub).unwrap(), b.complete(&a_pub).unwrap());
        assert_eq!(sa.secret_bytes(), sb.secret_bytes());
        assert_eq!(sa.secret_bytes().len(), 66, "the x coordinate");
        let via_helper = SECP521R1.start_and_complete(&a_pub).unwrap();
        assert_eq!(via_helper.pub_key.len(), POINT_LEN);
    }

    #[test]
    fn key_shares_tls_does_not_allow_are_refused() {
        let peer = SECP521R1.start().unwrap().pub_key().to_vec();
        let refused = |share: &[u8]| match SECP521R1.start().unwrap().complete(share) {
            Err(Error::PeerMisbehaved(PeerMisbehaved::InvalidKeyShare)) => true,
            Err(e) => panic!("{e}"),
            Ok(_) => false,
        };
        // The same point compressed: 0x02 or 0x03 by the parity of y, then x.
        let mut compressed = vec![2 + (peer[POINT_LEN - 1] & 1)];
        compressed.extend_from_slice(&peer[1..67]);
        assert!(refused(&compressed), "compressed point");
        assert!(refused(&peer[..POINT_LEN - 1]), "short");
        assert!(refused(&[peer.as_slice(), &[0]].concat()), "long");
        assert!(refused(&[0u8; POINT_LEN]), "wrong form byte");
        let mut off_curve = peer.clone();
        off_curve[POINT_LEN - 1] ^= 1;
        assert!(refused(&off_curve), "a point not on the curve");
        let mut infinity = vec![0u8; POINT_LEN];
        infinity[0] = 0x04;
        assert!(refused(&infinity), "all zeros");
        assert!(!refused(&peer), "the point itself is taken");
    }
}
