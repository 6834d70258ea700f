//! Signed deltas: ed25519 keys, the signature a delta file may carry, and the signers an app
//! trusts.
//!
//! A signature covers every byte of the unsigned delta file (header, rows, checksum) behind a
//! domain tag, so neither the rows nor the facts' text nor the base model can change without
//! it failing. Key files are one line of text: `engram-secret-key <64 hex>` (written
//! owner-only) and `engram-public-key <64 hex> [label]`; a trusted-signers file holds public
//! key lines (or bare hex), `#` starts a comment.

use std::fmt;
use std::path::Path;

use ed25519_dalek::Signer;

use crate::error::{Error, Result};

/// What a signature signs before the delta's bytes, so it cannot be replayed as another
/// kind of signed message.
const DOMAIN: &[u8] = b"engram delta signature v1\0";
const SECRET_TAG: &str = "engram-secret-key";
const PUBLIC_TAG: &str = "engram-public-key";

/// Who signed a delta: an ed25519 public key, shown as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl PublicKey {
    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self> {
        unhex32(text)
            .map(PublicKey)
            .ok_or_else(|| bad_key(format!("{text:?} is not a public key (64 hex digits)")))
    }

    /// The key's line in a public-key or trusted-signers file.
    pub fn to_line(&self, label: &str) -> String {
        let label = label.replace(['\n', '\r'], " ");
        format!("{PUBLIC_TAG} {self} {label}").trim_end().to_owned() + "\n"
    }

    /// Checks `signature` over the delta bytes `signed`.
    pub(crate) fn verify(&self, signed: &[u8], signature: &[u8; 64]) -> Result<()> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(&self.0).map_err(|_| {
            Error::Delta(format!("signer {self} is not a valid ed25519 public key"))
        })?;
        let sig = ed25519_dalek::Signature::from_bytes(signature);
        key.verify_strict(&message(signed), &sig).map_err(|_| {
                Error::Delta(format!(
                    "signature by {self} does not verify: the file was changed after it was signed \
                     (nothing was applied)"
                ))
            })
    }
}

/// A secret ed25519 key that signs deltas.
pub struct SigningKey(ed25519_dalek::SigningKey);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        write!(f, "SigningKey(public {})", self.public())
    }
}

impl SigningKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| Error::Internal(format!("no random source for a new key: {e}")))?;
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// The key from its 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// The public half, which receivers put in their trusted-signers file.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs the delta bytes `signed`.
    pub(crate) fn sign(&self, signed: &[u8]) -> [u8; 64] {
        self.0.sign(&message(signed)).to_bytes()
    }

    /// Reads a secret-key file (`engram-secret-key <64 hex>`).
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut words = text.split_whitespace();
        match (words.next(), words.next()) {
            (Some(SECRET_TAG), Some(h)) => unhex32(h).map(Self::from_seed).ok_or_else(|| {
                bad_key(format!("{}: the secret key is not 64 hex digits", path.display()))
            }),
            _ => Err(bad_key(format!(
                "{} is not an engram secret-key file (it must start with {SECRET_TAG:?})",
                path.display()
            ))),
        }
    }

    /// Writes the secret-key file atomically, readable by its owner only; an existing file
    /// is never replaced (it may be the only copy of someone's key).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let text = format!("{SECRET_TAG} {}\n", hex(self.0.as_bytes()));
        super::write_key_file(path, text.as_bytes())
    }
}

/// A delta's signature: who signed it and the ed25519 signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaSignature {
    /// The signer's public key.
    pub signer: PublicKey,
    /// The signature over the unsigned file's bytes.
    pub signature: [u8; 64],
}

/// Public keys an app accepts deltas from, each with a label.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedSigners {
    keys: Vec<(PublicKey, String)>,
}

impl TrustedSigners {
    /// An empty set (trusts nobody).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key (a key already present keeps its first label).
    pub fn add(&mut self, key: PublicKey, label: impl Into<String>) {
        if !self.contains(&key) {
            self.keys.push((key, label.into()));
        }
    }

    /// Whether `key` is trusted.
    pub fn contains(&self, key: &PublicKey) -> bool {
        self.keys.iter().any(|(k, _)| k == key)
    }

    /// The keys and their labels, in file order.
    pub fn keys(&self) -> &[(PublicKey, String)] {
        &self.keys
    }

    /// Parses a trusted-signers (or public-key) file's text.
    pub fn parse(text: &str) -> Result<Self> {
        let mut set = TrustedSigners::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let rest = line.strip_prefix(PUBLIC_TAG).map_or(line, str::trim_start);
            let (key, label) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            let key = PublicKey::from_hex(key)
                .map_err(|_| bad_key(format!("line {}: {key:?} is not a public key", n + 1)))?;
            set.add(key, label.trim());
        }
        Ok(set)
    }

    /// Reads a trusted-signers file.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text).map_err(|e| match e {
            Error::InvalidArgument(m) => Error::InvalidArgument(format!("{}: {m}", path.display())),
            other => other,
        })
    }
}

/// Which deltas an engine imports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SignaturePolicy {
    /// Signed or not (a signature that is present must still verify).
    #[default]
    AllowUnsigned,
    /// Only deltas signed by one of these keys.
    RequireTrusted(TrustedSigners),
}

impl SignaturePolicy {
    /// Refuses `signature` (a delta's, already verified) unless this policy accepts it.
    pub fn check(&self, delta_id: &str, signature: Option<&DeltaSignature>) -> Result<()> {
        let SignaturePolicy::RequireTrusted(trusted) = self else {
            return Ok(());
        };
        match signature {
            None => Err(Error::Untrusted(format!(
                "delta {delta_id} is unsigned and this store requires a trusted signature"
            ))),
            Some(s) if !trusted.contains(&s.signer) => Err(Error::Untrusted(format!(
                "delta {delta_id} is signed by {}, which is not among the {} trusted signers",
                s.signer,
                trusted.keys.len()
            ))),
            Some(_) => Ok(()),
        }
    }
}

impl SignaturePolicy {
    /// [`SignaturePolicy::RequireTrusted`] with the keys of a trusted-signers file, or
    /// [`SignaturePolicy::AllowUnsigned`] without one.
    pub fn from_file(trusted_signers: Option<&Path>) -> Result<Self> {
        Ok(match trusted_signers {
            None => SignaturePolicy::AllowUnsigned,
            Some(f) => SignaturePolicy::RequireTrusted(TrustedSigners::read(f)?),
        })
    }
}

/// Makes a new signing key: the secret-key file `secret` (owner-only) and `secret.pub` with
/// its public line; neither may exist yet. Returns the public key.
pub fn generate_key_files(secret: &Path, label: &str) -> Result<PublicKey> {
    let mut public = secret.as_os_str().to_owned();
    public.push(".pub");
    let public = std::path::PathBuf::from(public);
    for p in [secret, public.as_path()] {
        if p.exists() {
            return Err(super::file::key_file_exists(p));
        }
    }
    let key = SigningKey::generate()?;
    key.write(secret)?;
    super::write_atomic(&public, key.public().to_line(label).as_bytes())?;
    Ok(key.public())
}

/// Signs the delta file `path` with the secret-key file `key`, writing it to `out` (or
/// replacing `path`, atomically). Returns the signed delta.
pub fn sign_delta_file(path: &Path, key: &Path, out: Option<&Path>) -> Result<super::Delta> {
    let key = SigningKey::read(key)?;
    let mut delta = super::Delta::read(path)?;
    delta.sign(&key);
    delta.write(out.unwrap_or(path))?;
    Ok(delta)
}

/// Reads the delta file `path` (checksum and signature verified) and applies the policy of
/// the trusted-signers file, if given. Returns the delta; its `signature` names the signer.
pub fn verify_delta_file(path: &Path, trusted_signers: Option<&Path>) -> Result<super::Delta> {
    let policy = SignaturePolicy::from_file(trusted_signers)?;
    let delta = super::Delta::read(path)?;
    policy.check(&delta.id, delta.signature.as_ref())?;
    Ok(delta)
}

fn message(signed: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + signed.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(signed);
    m
}

fn bad_key(message: String) -> Error {
    Error::InvalidArgument(message)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(text: &str) -> Option<[u8; 32]> {
    let t = text.as_bytes();
    if t.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in t.chunks_exact(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_over_the_bytes_it_signed_and_by_its_key() {
        let key = SigningKey::from_seed([7; 32]);
        let other = SigningKey::from_seed([8; 32]);
        let sig = key.sign(b"rows");
        key.public().verify(b"rows", &sig).expect("own signature");
        assert!(key.public().verify(b"rowz", &sig).is_err());
        assert!(other.public().verify(b"rows", &sig).is_err());
    }

    #[test]
    fn trusted_signers_files_parse_lines_bare_keys_and_comments() {
        let a = SigningKey::from_seed([1; 32]).public();
        let b = SigningKey::from_seed([2; 32]).public();
        let text = format!("# team keys\n{}\n{b}  # bare\n\n", a.to_line("Ana's phone").trim());
        let set = TrustedSigners::parse(&text).expect("parses");
        assert_eq!(set.keys(), &[(a, "Ana's phone".into()), (b, String::new())]);
        let err = TrustedSigners::parse("engram-public-key 12zz\n").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
