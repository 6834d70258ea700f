//! Delta files: what a user taught, as differences of value rows, portable to any store with
//! the same base model and memory init.
//!
//! Layout (little-endian): magic `"ENGRAMD\0"`, format version `u32`, header length `u32`,
//! the header as UTF-8 JSON, row ids (`u32` each), differences (`f32` or `f16` each, rows ×
//! dim), then xxh3-128 of everything before it. The checksum is verified before anything
//! else is read, so a truncated or bit-flipped file is refused as a whole. A signed delta adds
//! a trailer: `"ENGRSIG1"`, the signer's ed25519 public key (32 bytes) and the signature
//! (64 bytes) over everything before the trailer; it is verified on every read.

use std::path::Path;

use half::f16;
use serde_json::{Value as Json, json};
use xxhash_rust::xxh3::{Xxh3, xxh3_128};

use super::history::RowSet;
use super::signing::{DeltaSignature, PublicKey, SigningKey};
#[cfg(test)]
use super::signing::TrustedSigners;
use crate::error::{Error, Result};
use crate::memory::MemoryConfig;

const MAGIC: &[u8; 8] = b"ENGRAMD\0";
/// Delta format version this build reads and writes.
pub const DELTA_FORMAT_VERSION: u32 = 1;
const MAX_HEADER: usize = 16 << 20;
const SIGNATURE_MAGIC: &[u8; 8] = b"ENGRSIG1";
const SIGNATURE_LEN: usize = 8 + 32 + 64;

/// How differences are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeltaPrecision {
    /// Exact: importing reproduces the exporter's rows bit for bit.
    #[default]
    F32,
    /// Half the size; each difference rounded to the nearest f16.
    F16,
}

impl DeltaPrecision {
    fn name(self) -> &'static str {
        match self {
            DeltaPrecision::F32 => "f32",
            DeltaPrecision::F16 => "f16",
        }
    }
    fn bytes(self) -> usize {
        match self {
            DeltaPrecision::F32 => 4,
            DeltaPrecision::F16 => 2,
        }
    }
}

/// A delta: changed value rows as differences, and what they can be applied to.
#[derive(Clone, Debug, PartialEq)]
pub struct Delta {
    /// Content id (hex xxh3-128 of fingerprints, config, row ids and differences).
    pub id: String,
    /// Unix seconds when it was exported.
    pub created: u64,
    /// Free-form label of the app or user that made it.
    pub app_label: String,
    /// The facts learned in it, as text, oldest first.
    pub learned: Vec<String>,
    /// The rows each of them owns, in the same order (empty: not carried; deltas made before
    /// 2026-12-06 and from stores that do not know them all).
    pub learned_rows: Vec<Vec<u32>>,
    /// What it is the difference from: "beginning" or "snapshot NAME".
    pub since: String,
    /// Fingerprint of the base model it was learned on.
    pub base_fingerprint: String,
    /// Init fingerprint of the memory it was learned in.
    pub init_fingerprint: String,
    /// The memory's shape.
    pub config: MemoryConfig,
    /// Row width.
    pub dim: usize,
    /// Storage precision of the differences.
    pub precision: DeltaPrecision,
    /// Global row ids and their differences (already rounded to `precision`).
    pub rows: RowSet,
    /// Who signed it (verified when the file was read), if anyone did.
    pub signature: Option<DeltaSignature>,
}

fn config_json(c: &MemoryConfig) -> Json {
    json!({
        "layers": c.layers, "n_keys": c.n_keys, "heads": c.heads,
        "top_k": c.top_k, "k_dim": c.k_dim, "gated": c.gated,
    })
}

fn config_from_json(v: &Json) -> Option<MemoryConfig> {
    let n = |k: &str| v.get(k)?.as_u64().and_then(|x| usize::try_from(x).ok());
    Some(MemoryConfig {
        layers: v
            .get("layers")?
            .as_array()?
            .iter()
            .map(|l| l.as_u64().and_then(|x| usize::try_from(x).ok()))
            .collect::<Option<_>>()?,
        n_keys: n("n_keys")?,
        heads: n("heads")?,
        top_k: n("top_k")?,
        k_dim: n("k_dim")?,
        gated: v.get("gated")?.as_bool()?,
    })
}

impl Delta {
    /// Builds a delta, rounding differences to `precision` and computing its id.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        base_fingerprint: String,
        init_fingerprint: String,
        config: MemoryConfig,
        dim: usize,
        precision: DeltaPrecision,
        mut rows: RowSet,
        since: String,
        app_label: String,
        learned: Vec<String>,
        created: u64,
    ) -> Self {
        if precision == DeltaPrecision::F16 {
            rows.values
                .iter_mut()
                .for_each(|v| *v = f16::from_f32(*v).to_f32());
        }
        let mut h = Xxh3::new();
        h.update(base_fingerprint.as_bytes());
        h.update(init_fingerprint.as_bytes());
        h.update(config_json(&config).to_string().as_bytes());
        for id in &rows.ids {
            h.update(&id.to_le_bytes());
        }
        for v in &rows.values {
            h.update(&v.to_le_bytes());
        }
        Delta {
            id: format!("{:032x}", h.digest128()),
            created,
            app_label,
            learned,
            learned_rows: Vec::new(),
            since,
            base_fingerprint,
            init_fingerprint,
            config,
            dim,
            precision,
            rows,
            signature: None,
        }
    }

    /// Signs the delta with `key` (replacing an earlier signature).
    pub fn sign(&mut self, key: &SigningKey) {
        self.signature = Some(DeltaSignature {
            signer: key.public(),
            signature: key.sign(&self.unsigned_bytes()),
        });
    }

    /// Checks the signature (if any) against the delta's contents; the signer when signed.
    pub fn verify_signature(&self) -> Result<Option<PublicKey>> {
        match &self.signature {
            None => Ok(None),
            Some(s) => {
                s.signer.verify(&self.unsigned_bytes(), &s.signature)?;
                Ok(Some(s.signer))
            }
        }
    }

    /// The file's bytes (with the signature trailer when signed).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.unsigned_bytes();
        if let Some(s) = &self.signature {
            out.extend(SIGNATURE_MAGIC);
            out.extend(s.signer.0);
            out.extend(s.signature);
        }
        out
    }

    /// The file's bytes without a signature: what a signature signs.
    fn unsigned_bytes(&self) -> Vec<u8> {
        let mut header = json!({
            "id": self.id,
            "created": self.created,
            "app_label": self.app_label,
            "learned": self.learned,
            "since": self.since,
            "base_fingerprint": self.base_fingerprint,
            "init_fingerprint": self.init_fingerprint,
            "config": config_json(&self.config),
            "dim": self.dim,
            "precision": self.precision.name(),
            "rows": self.rows.ids.len(),
        });
        // Left out when empty, so deltas without them keep their bytes.
        if !self.learned_rows.is_empty() {
            header["learned_rows"] = json!(self.learned_rows);
        }
        let header = header.to_string();
        let mut out = Vec::with_capacity(
            32 + header.len() + self.rows.ids.len() * 4 + self.rows.values.len() * 4,
        );
        out.extend(MAGIC);
        out.extend(DELTA_FORMAT_VERSION.to_le_bytes());
        out.extend((header.len() as u32).to_le_bytes());
        out.extend(header.as_bytes());
        for id in &self.rows.ids {
            out.extend(id.to_le_bytes());
        }
        for &v in &self.rows.values {
            match self.precision {
                DeltaPrecision::F32 => out.extend(v.to_le_bytes()),
                DeltaPrecision::F16 => out.extend(f16::from_f32(v).to_le_bytes()),
            }
        }
        out.extend(xxh3_128(&out).to_le_bytes());
        out
    }

    /// Parses and checks a delta file's bytes, verifying its signature if it has one.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (bytes, signature) = split_signature(bytes);
        let mut delta = Self::from_unsigned_bytes(bytes)?;
        if let Some(s) = &signature {
            s.signer.verify(bytes, &s.signature)?;
        }
        delta.signature = signature;
        Ok(delta)
    }

    fn from_unsigned_bytes(bytes: &[u8]) -> Result<Self> {
        let bad = |m: &str| Error::Delta(m.to_owned());
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(bad("not an engram delta file (bad magic)"));
        }
        if bytes.len() < 16 + 16 {
            return Err(bad("file is truncated"));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 16);
        let mut stored = [0u8; 16];
        stored.copy_from_slice(sum);
        if xxh3_128(body) != u128::from_le_bytes(stored) {
            return Err(bad(
                "checksum mismatch: the file is truncated or damaged (nothing was applied)",
            ));
        }
        let u32_at =
            |at: usize| u32::from_le_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
        let version = u32_at(8);
        if version != DELTA_FORMAT_VERSION {
            return Err(Error::Unsupported(format!(
                "delta format version {version} (this build reads {DELTA_FORMAT_VERSION})"
            )));
        }
        let header_len = u32_at(12) as usize;
        if header_len > MAX_HEADER || 16 + header_len > body.len() {
            return Err(bad("header length is out of range"));
        }
        let header: Json = serde_json::from_slice(&body[16..16 + header_len])
            .map_err(|e| Error::Delta(format!("header is not valid JSON: {e}")))?;
        let field = |k: &str| {
            header
                .get(k)
                .ok_or_else(|| Error::Delta(format!("header lacks {k:?}")))
        };
        let text = |k: &str| -> Result<String> {
            field(k)?
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| Error::Delta(format!("header field {k:?} is not a string")))
        };
        let number = |k: &str| -> Result<u64> {
            field(k)?
                .as_u64()
                .ok_or_else(|| Error::Delta(format!("header field {k:?} is not a number")))
        };
        let precision = match text("precision")?.as_str() {
            "f32" => DeltaPrecision::F32,
            "f16" => DeltaPrecision::F16,
            other => return Err(Error::Delta(format!("unknown precision {other:?}"))),
        };
        let config = config_from_json(field("config")?)
            .ok_or_else(|| bad("header field \"config\" is malformed"))?;
        let dim = number("dim")? as usize;
        let n = number("rows")? as usize;
        let payload = &body[16 + header_len..];
        let want = n
            .checked_mul(4 + dim.saturating_mul(precision.bytes()))
            .filter(|&w| w == payload.len())
            .ok_or_else(|| {
                Error::Delta(format!(
                    "{n} rows of {dim} do not match the {} payload bytes",
                    payload.len()
                ))
            })?;
        let (ids_bytes, values_bytes) = payload.split_at(n * 4);
        debug_assert_eq!(want, payload.len());
        let ids: Vec<u32> = ids_bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let values: Vec<f32> = match precision {
            DeltaPrecision::F32 => values_bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DeltaPrecision::F16 => values_bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        };
        if let Some(w) = ids.windows(2).find(|w| w[0] >= w[1]) {
            return Err(Error::Delta(format!(
                "row ids are not ascending ({} then {})",
                w[0], w[1]
            )));
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err(bad("a difference is not finite"));
        }
        let learned = field("learned")?
            .as_array()
            .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_owned)).collect())
            .ok_or_else(|| bad("header field \"learned\" is not a list of strings"))?;
        let delta = Delta::new(
            text("base_fingerprint")?,
            text("init_fingerprint")?,
            config,
            dim,
            precision,
            RowSet { ids, values },
            text("since")?,
            text("app_label")?,
            learned,
            number("created")?,
        );
        let mut delta = delta;
        if let Some(lists) = header.get("learned_rows") {
            let lists: Vec<Vec<u32>> = lists
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|l| {
                            l.as_array()?
                                .iter()
                                .map(|v| v.as_u64().and_then(|r| u32::try_from(r).ok()))
                                .collect()
                        })
                        .collect()
                })
                .ok_or_else(|| bad("header field \"learned_rows\" is not a list of row lists"))?;
            if lists.len() != delta.learned.len() {
                return Err(bad("header field \"learned_rows\" does not match \"learned\""));
            }
            if lists
                .iter()
                .flatten()
                .any(|r| delta.rows.ids.binary_search(r).is_err())
            {
                return Err(bad("header field \"learned_rows\" names a row the delta does not hold"));
            }
            delta.learned_rows = lists;
        }
        let claimed = text("id")?;
        if claimed != delta.id {
            return Err(Error::Delta(format!(
                "id {claimed} does not match the content ({})",
                delta.id
            )));
        }
        Ok(delta)
    }

    /// Reads a delta file.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes).map_err(|e| match e {
            Error::Delta(m) => Error::Delta(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Writes the delta atomically.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path.as_ref(), &self.to_bytes())
    }

    /// A human-readable summary (what `engram delta inspect` prints).
    pub fn describe(&self) -> String {
        let c = &self.config;
        let mut s = format!(
            "delta {}\n  created       {} (unix seconds)\n  app label     {}\n  since         {}\n  \
             rows          {} × {} ({})\n  size          {} bytes\n  base model    {}\n  \
             memory init   {}\n  memory        layers {:?}, {} keys, {} heads, top-{}, k_dim {}{}\n",
            self.id,
            self.created,
            if self.app_label.is_empty() {
                "-"
            } else {
                &self.app_label
            },
            self.since,
            self.rows.ids.len(),
            self.dim,
            self.precision.name(),
            self.to_bytes().len(),
            self.base_fingerprint,
            self.init_fingerprint,
            c.layers,
            c.n_keys,
            c.heads,
            c.top_k,
            c.k_dim,
            if c.gated { ", gated" } else { "" },
        );
        match &self.signature {
            Some(sig) => s.push_str(&format!("  signed by     {} (verified)\n", sig.signer)),
            None => s.push_str("  signed by     nobody (unsigned)\n"),
        }
        s.push_str(&format!("  learned       {} facts\n", self.learned.len()));
        for l in &self.learned {
            s.push_str(&format!("    - {l}\n"));
        }
        s
    }
}

/// Splits a signature trailer off a delta file's bytes.
fn split_signature(bytes: &[u8]) -> (&[u8], Option<DeltaSignature>) {
    let Some(at) = bytes.len().checked_sub(SIGNATURE_LEN) else {
        return (bytes, None);
    };
    let (unsigned, trailer) = bytes.split_at(at);
    if &trailer[..8] != SIGNATURE_MAGIC {
        return (bytes, None);
    }
    let mut signer = [0u8; 32];
    signer.copy_from_slice(&trailer[8..40]);
    let mut signature = [0u8; 64];
    signature.copy_from_slice(&trailer[40..]);
    let signer = PublicKey(signer);
    (unsigned, Some(DeltaSignature { signer, signature }))
}

/// Writes `bytes` to `path` so a crash leaves either the old file or the whole new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temporary_beside(path)?;
    let result = write_file(&tmp, bytes, false).and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    super::journal::sync_parent(path)
}

/// Writes a key file: created readable and writable by its owner only (on Unix) before any
/// byte is written, and never over an existing file (it may hold the only copy of a key):
/// the finished file is linked into place, which fails if the name is taken.
pub fn write_key_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temporary_beside(path)?;
    let result = write_file(&tmp, bytes, true).and_then(|_| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(key_file_exists(path)),
        Err(e) => Err(Error::io(path, e)),
        Ok(()) => super::journal::sync_parent(path),
    }
}

/// The error for a key file that would replace an existing file.
pub(super) fn key_file_exists(path: &Path) -> Error {
    Error::InvalidArgument(format!(
        "{} exists; a key file is never overwritten",
        path.display()
    ))
}

pub(super) fn temporary_beside(path: &Path) -> Result<std::path::PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::InvalidArgument(format!("{} is not a file path", path.display())))?;
    Ok(path.with_file_name(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

fn write_file(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = options.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}


#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Delta {
        let config = MemoryConfig {
            layers: vec![1],
            n_keys: 4,
            heads: 1,
            top_k: 2,
            k_dim: 4,
            gated: false,
        };
        let rows = RowSet {
            ids: vec![3, 9],
            values: vec![0.5, -1.0, 0.25, 2.0],
        };
        Delta::new(
            "base".into(),
            "init".into(),
            config,
            2,
            DeltaPrecision::F32,
            rows,
            "beginning".into(),
            "test".into(),
            vec!["My sister Ana lives in Porto.".into()],
            1,
        )
    }

    #[test]
    fn each_facts_rows_travel_with_it_and_must_be_rows_of_the_delta() {
        let plain = sample();
        let mut with_rows = sample();
        with_rows.learned_rows = vec![vec![3, 9]];
        let back = Delta::from_bytes(&with_rows.to_bytes()).unwrap();
        assert_eq!(back.learned_rows, [vec![3, 9]]);
        // Without them the bytes are those of a delta made before they existed.
        assert!(!String::from_utf8_lossy(&plain.to_bytes()).contains("learned_rows"));
        assert!(Delta::from_bytes(&plain.to_bytes()).unwrap().learned_rows.is_empty());
        for bad in [vec![vec![3, 4]], vec![vec![3], vec![9]]] {
            let mut d = sample();
            d.learned_rows = bad;
            let e = Delta::from_bytes(&d.to_bytes()).unwrap_err().to_string();
            assert!(e.contains("learned_rows"), "{e}");
        }
    }

    #[test]
    fn a_signed_delta_reads_back_verified_and_any_changed_byte_is_refused() {
        let key = SigningKey::from_seed([5; 32]);
        let mut delta = sample();
        let unsigned = delta.to_bytes();
        delta.sign(&key);
        let bytes = delta.to_bytes();
        assert_eq!(bytes.len(), unsigned.len() + SIGNATURE_LEN);
        let back = Delta::from_bytes(&bytes).expect("reads");
        assert_eq!(back, delta);
        assert_eq!(back.verify_signature().unwrap(), Some(key.public()));
        assert_eq!(Delta::from_bytes(&unsigned).unwrap().signature, None);
        // Every byte: header, rows, checksum, the signer's key and the signature itself.
        for at in 0..bytes.len() {
            let mut b = bytes.clone();
            b[at] ^= 0x10;
            assert!(Delta::from_bytes(&b).is_err(), "flip at {at} was accepted");
        }
        // A signature moved onto other content (same signer) fails too.
        let mut other = sample();
        other.learned = vec!["My sister Ana lives in Lisbon.".into()];
        let mut forged = other.to_bytes();
        forged.extend_from_slice(&bytes[unsigned.len()..]);
        let err = Delta::from_bytes(&forged).unwrap_err();
        assert!(err.to_string().contains("does not verify"), "{err}");
    }

    #[test]
    fn the_policy_refuses_unsigned_and_unknown_signers() {
        let (ana, eve) = (SigningKey::from_seed([1; 32]), SigningKey::from_seed([2; 32]));
        let mut trusted = TrustedSigners::new();
        trusted.add(ana.public(), "ana");
        let policy = super::super::SignaturePolicy::RequireTrusted(trusted);
        let mut delta = sample();
        let err = policy.check(&delta.id, None).unwrap_err();
        assert!(err.to_string().contains("unsigned"), "{err}");
        delta.sign(&eve);
        let err = policy.check(&delta.id, delta.signature.as_ref()).unwrap_err();
        assert!(err.to_string().contains("not among"), "{err}");
        assert_eq!(err.kind(), crate::error::ErrorKind::Untrusted);
        delta.sign(&ana);
        policy.check(&delta.id, delta.signature.as_ref()).unwrap();
    }
}
