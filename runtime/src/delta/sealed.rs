//! Stores encrypted at rest: the key an app supplies and the sealed forms of the store file,
//! its journal records and its read keys (XChaCha20-Poly1305, a fresh random nonce each time).
//!
//! A sealed file is `"ENGRAMX1"`, a 24-byte nonce, a 16-byte key check and the ciphertext with
//! its 16-byte tag; what the file is ("store", "readkeys") is bound in as associated data, so
//! one sealed file cannot stand in for another. The key check (the tag of an empty message
//! under a second nonce) tells a wrong key from a changed file. A sealed journal record is
//! its nonce and ciphertext; its sequence number is inside, so records cannot be reordered.

use std::fmt;
use std::path::Path;

use chacha20poly1305::aead::{Aead, AeadInPlace, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"ENGRAMX1";
pub(super) const NONCE: usize = 24;
pub(super) const TAG: usize = 16;
/// Bytes before a sealed file's ciphertext: magic, nonce, key check.
pub(super) const SEALED_HEADER: usize = MAGIC.len() + NONCE + TAG;
/// Bytes a sealed file adds to what it holds.
const SEALED_FILE_OVERHEAD: usize = MAGIC.len() + NONCE + TAG + TAG;
/// Bytes a sealed journal record adds to its body.
const SEALED_RECORD_OVERHEAD: usize = NONCE + TAG;
const KEY_TAG: &str = "engram-store-key";

/// The 256-bit key a store is encrypted under, supplied by the app (e.g. from the OS
/// keychain). Wiped from memory when dropped; never printed.
#[derive(Clone)]
pub struct StoreKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreKey(…)")
    }
}

impl StoreKey {
    /// The key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        StoreKey(Zeroizing::new(bytes))
    }

    /// The key from a byte slice, which must be 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let k: [u8; 32] = bytes.try_into().map_err(|_| {
            Error::InvalidArgument(format!("a store key is 32 bytes, not {}", bytes.len()))
        })?;
        Ok(StoreKey::from_bytes(k))
    }

    /// A new random key from the operating system.
    pub fn generate() -> Result<Self> {
        let mut k = Zeroizing::new([0u8; 32]);
        getrandom::fill(k.as_mut())
            .map_err(|e| Error::Internal(format!("no random source for a new key: {e}")))?;
        Ok(StoreKey(k))
    }

    /// The key from 64 hex digits, or from a key file's line `engram-store-key <64 hex>`.
    pub fn from_text(text: &str) -> Result<Self> {
        let mut words = text.split_whitespace();
        let first = words.next().unwrap_or("");
        let hex = if first == KEY_TAG {
            words.next().unwrap_or("")
        } else {
            first
        };
        let t = hex.as_bytes();
        let mut k = Zeroizing::new([0u8; 32]);
        let ok = t.len() == 64
            && t.chunks_exact(2).enumerate().all(|(i, pair)| {
                std::str::from_utf8(pair)
                    .ok()
                    .and_then(|s| u8::from_str_radix(s, 16).ok())
                    .map(|b| k[i] = b)
                    .is_some()
            });
        if !ok {
            return Err(Error::InvalidArgument(
                "a store key is 64 hex digits (or a key file from `engram keys store-key`)".into(),
            ));
        }
        Ok(StoreKey(k))
    }

    /// Reads a key file (`engram-store-key <64 hex>`, or the bare hex).
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?);
        Self::from_text(&text).map_err(|e| match e {
            Error::InvalidArgument(m) => Error::InvalidArgument(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Writes a key file readable by its owner only; an existing file is never replaced.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        let text = Zeroizing::new(format!("{KEY_TAG} {hex}\n"));
        super::write_key_file(path, text.as_bytes())
    }

    pub(super) fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(Key::from_slice(self.0.as_ref()))
    }

    pub(super) fn key_check(&self, nonce: &[u8; NONCE], what: &str) -> Result<[u8; TAG]> {
        let mut check_nonce = *nonce;
        // A nonce of its own: the body's nonce must never encrypt a second message.
        check_nonce[0] ^= 0x80;
        let aad = [b"key check ".as_slice(), what.as_bytes()].concat();
        let tag = self
            .cipher()
            .encrypt(
                XNonce::from_slice(&check_nonce),
                Payload {
                    msg: &[],
                    aad: &aad,
                },
            )
            .map_err(|_| Error::Internal("key check could not be computed".into()))?;
        let mut out = [0u8; TAG];
        out.copy_from_slice(&tag);
        Ok(out)
    }

    /// Encrypts a whole file's bytes; `what` names the kind of file.
    pub fn seal_file(&self, plain: Vec<u8>, what: &str) -> Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(SEALED_HEADER + plain.len() + TAG);
        buf.resize(SEALED_HEADER, 0);
        buf.extend_from_slice(&plain);
        drop(plain);
        self.seal_in_place(&mut buf, what)?;
        Ok(buf)
    }

    /// Seals `buf` where its first `SEALED_HEADER` (48) bytes are room for the header and the
    /// rest is the plain file: encrypted where it lies (no second copy of a large store),
    /// the header written and the tag appended.
    pub fn seal_in_place(&self, buf: &mut Vec<u8>, what: &str) -> Result<()> {
        if buf.len() < SEALED_HEADER {
            return Err(Error::Internal("no room for the sealed header".into()));
        }
        let nonce = random_nonce()?;
        let check = self.key_check(&nonce, what)?;
        let tag = self
            .cipher()
            .encrypt_in_place_detached(
                XNonce::from_slice(&nonce),
                &aad(what),
                &mut buf[SEALED_HEADER..],
            )
            .map_err(|_| Error::Internal(format!("{what} could not be encrypted")))?;
        buf[..MAGIC.len()].copy_from_slice(MAGIC);
        buf[MAGIC.len()..MAGIC.len() + NONCE].copy_from_slice(&nonce);
        buf[MAGIC.len() + NONCE..SEALED_HEADER].copy_from_slice(&check);
        buf.extend_from_slice(&tag);
        Ok(())
    }

    /// Decrypts a sealed file's bytes (in place), telling a wrong key from a changed file.
    pub fn open_file(&self, mut sealed: Vec<u8>, what: &str, path: &Path) -> Result<Vec<u8>> {
        if !sealed.starts_with(MAGIC) || sealed.len() < SEALED_FILE_OVERHEAD {
            return Err(Error::Memory(format!(
                "{} is not encrypted, but a store key was given (open it without one)",
                path.display()
            )));
        }
        let mut nonce = [0u8; NONCE];
        nonce.copy_from_slice(&sealed[8..8 + NONCE]);
        if sealed[8 + NONCE..8 + NONCE + TAG] != self.key_check(&nonce, what)? {
            return Err(Error::Memory(format!(
                "{}: wrong store key (or the file's header was changed)",
                path.display()
            )));
        }
        let tag_at = sealed.len() - TAG;
        let mut tag = [0u8; TAG];
        tag.copy_from_slice(&sealed[tag_at..]);
        sealed.truncate(tag_at);
        sealed.drain(..8 + NONCE + TAG);
        self.cipher()
            .decrypt_in_place_detached(
                XNonce::from_slice(&nonce),
                &aad(what),
                &mut sealed,
                (&tag).into(),
            )
            .map_err(|_| {
                Error::Memory(format!(
                    "{}: store tampered or damaged (its {what} does not authenticate under this key)",
                    path.display()
                ))
            })?;
        Ok(sealed)
    }

    /// Encrypts a journal record's body.
    pub fn seal_record(&self, body: &[u8]) -> Result<Vec<u8>> {
        let nonce = random_nonce()?;
        let ct = self
            .cipher()
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: body,
                    aad: &aad("journal"),
                },
            )
            .map_err(|_| Error::Internal("a journal record could not be encrypted".into()))?;
        let mut out = Vec::with_capacity(NONCE + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypts a sealed journal record's body; `None` if it does not authenticate.
    pub fn open_record(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < SEALED_RECORD_OVERHEAD {
            return None;
        }
        let (nonce, ct) = sealed.split_at(NONCE);
        self.cipher()
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: &aad("journal"),
                },
            )
            .ok()
    }
}

/// Whether `bytes` start like a sealed file (either form).
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC) || bytes.starts_with(super::sealed_store::MAGIC)
}

fn aad(what: &str) -> Vec<u8> {
    [MAGIC.as_slice(), what.as_bytes()].concat()
}

pub(super) fn random_nonce() -> Result<[u8; NONCE]> {
    let mut n = [0u8; NONCE];
    getrandom::fill(&mut n)
        .map_err(|e| Error::Internal(format!("no random source for a nonce: {e}")))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_files_open_only_under_their_key_and_kind_and_unchanged() {
        let key = StoreKey::from_bytes([3; 32]);
        let path = Path::new("test.engram");
        let plain = b"My sister Ana lives in Porto.".to_vec();
        let sealed = key.seal_file(plain.clone(), "store").unwrap();
        assert!(!sealed.windows(5).any(|w| w == b"Porto"));
        assert_eq!(key.open_file(sealed.clone(), "store", path).unwrap(), plain);
        let wrong = StoreKey::from_bytes([4; 32]);
        let err = wrong.open_file(sealed.clone(), "store", path).unwrap_err();
        assert!(err.to_string().contains("wrong store key"), "{err}");
        let err = key.open_file(sealed.clone(), "readkeys", path).unwrap_err();
        assert!(err.to_string().contains("wrong store key"), "{err}");
        for at in 8 + NONCE + TAG..sealed.len() {
            let mut b = sealed.clone();
            b[at] ^= 1;
            let err = key.open_file(b, "store", path).unwrap_err();
            assert!(err.to_string().contains("tampered"), "flip at {at}: {err}");
        }
        let err = key.open_file(plain, "store", path).unwrap_err();
        assert!(err.to_string().contains("not encrypted"), "{err}");
    }

    #[test]
    fn records_round_trip_and_two_seals_of_one_body_differ() {
        let key = StoreKey::from_bytes([9; 32]);
        let (a, b) = (key.seal_record(b"body").unwrap(), key.seal_record(b"body").unwrap());
        assert_ne!(a, b, "a fresh nonce each time");
        assert_eq!(key.open_record(&a).unwrap(), b"body");
        let mut c = a.clone();
        c[30] ^= 1;
        assert!(key.open_record(&c).is_none());
        assert!(StoreKey::from_text("engram-store-key 00").is_err());
        let hex = "ab".repeat(32);
        assert!(StoreKey::from_text(&hex).is_ok());
    }
}
