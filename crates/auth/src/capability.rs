//! Capabilities: what a client may do to which blobs until when, signed (ed25519) by the
//! metadata service and checked by storage servers on their own, with no call back to it.

use crate::{AuthError, ClusterKeys};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use shoal_types::store_msg::Capability;
use shoal_types::BlobId;
use std::collections::HashMap;
use std::sync::Mutex;

/// Rights a capability grants.
pub const READ: u8 = 1;
pub const WRITE: u8 = 2;

/// What a capability says (its signed bytes are the postcard encoding of this).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapBody {
    pub cluster: [u8; 16],
    pub rights: u8,
    /// Sorted, so a check is a binary search.
    pub blobs: Vec<u64>,
    pub expires_ns: i64,
}

impl ClusterKeys {
    fn cap_signing_key(&self) -> SigningKey {
        SigningKey::from_bytes(&blake3::keyed_hash(&self.tgt.0, b"shoal capability signing key v1").into())
    }

    /// The public key storage servers check capabilities with.
    pub fn cap_public_key(&self) -> [u8; 32] {
        self.cap_signing_key().verifying_key().to_bytes()
    }

    /// A capability for `rights` on `blobs` until `expires_ns`.
    pub fn sign_capability(&self, rights: u8, blobs: impl IntoIterator<Item = BlobId>, expires_ns: i64) -> Capability {
        let mut ids: Vec<u64> = blobs.into_iter().map(|b| b.0).collect();
        ids.sort_unstable();
        ids.dedup();
        let body = postcard::to_allocvec(&CapBody { cluster: self.cluster, rights, blobs: ids, expires_ns }).expect("encoding a capability");
        let sig = self.cap_signing_key().sign(&body).to_bytes().to_vec();
        Capability { body, sig }
    }
}

/// Verified capabilities remembered by a storage server (a signature is checked once).
pub const VERIFIED_MAX: usize = 4096;

/// A storage server's check of capabilities.
pub struct CapVerifier {
    key: VerifyingKey,
    verified: Mutex<HashMap<[u8; 32], CapBody>>,
}

impl CapVerifier {
    pub fn new(public_key: &[u8; 32]) -> Result<CapVerifier, AuthError> {
        let key = VerifyingKey::from_bytes(public_key).map_err(|_| AuthError::Malformed("capability public key"))?;
        Ok(CapVerifier { key, verified: Mutex::new(HashMap::new()) })
    }

    /// Whether `cap` grants `right` on `blob` now.
    pub fn check(&self, cap: &Capability, blob: BlobId, right: u8, now_ns: i64) -> Result<(), AuthError> {
        let mut h = blake3::Hasher::new();
        h.update(&cap.body);
        h.update(&cap.sig);
        let id: [u8; 32] = h.finalize().into();
        let cached = self.verified.lock().expect("verified lock").get(&id).cloned();
        let body = match cached {
            Some(b) => b,
            None => {
                let sig = Signature::from_slice(&cap.sig).map_err(|_| AuthError::Forged)?;
                self.key.verify(&cap.body, &sig).map_err(|_| AuthError::Forged)?;
                let body: CapBody = postcard::from_bytes(&cap.body).map_err(|_| AuthError::Malformed("capability"))?;
                let mut v = self.verified.lock().expect("verified lock");
                if v.len() >= VERIFIED_MAX {
                    v.retain(|_, b| b.expires_ns > now_ns);
                    if v.len() >= VERIFIED_MAX {
                        v.clear();
                    }
                }
                v.insert(id, body.clone());
                body
            }
        };
        if now_ns >= body.expires_ns {
            return Err(AuthError::CapabilityExpired);
        }
        if body.rights & right != right {
            return Err(AuthError::NotGranted("the capability does not grant this operation"));
        }
        if body.blobs.binary_search(&blob.0).is_err() {
            return Err(AuthError::NotGranted("the capability does not name this blob"));
        }
        Ok(())
    }
}
