//! Cache keys and cell ids: SHA-256 over one canonical encoding of everything that determines a
//! cell's bytes (the key) or its place in the pipeline (the cell id).
//!
//! The encoding is a contract: every committed cell is filed under it, so a change to it
//! orphans every store. `tests::golden_key_bytes` pins its bytes.

use sha2::{Digest, Sha256};

use crate::param::{Params, Value};

/// Everything a cell's bytes depend on; its SHA-256 is the cell's key. Kept beside every
/// committed cell so `why` can say which part changed.
///
/// Encoded (after the tag `spo-pipe-key-v1\0`) in this order, each part as [`Value::encode`]
/// writes it unless said otherwise:
/// 1. `kind`: the stage kind's name;
/// 2. `version`: the kind's code version, 8 bytes little-endian;
/// 3. `params`: the resolved params, a count then (name, value) pairs in name order;
/// 4. `seed`: byte 0, or byte 1 then 8 bytes little-endian;
/// 5. `inputs`: a count (8 bytes LE) then (upstream stage, content digest) pairs, in `needs` order;
/// 6. `external`: the digest of content outside the store, the empty string if none.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CellKey {
    pub kind: String,
    pub version: u32,
    pub params: Params,
    pub seed: Option<u64>,
    /// (upstream stage, content digest of its committed output), in the order of `needs`.
    pub inputs: Vec<(String, String)>,
    /// A digest of content outside the store that the kind declared (e.g. a script), if any.
    #[serde(default)]
    pub external: Option<String>,
}

/// The canonical encoder shared by keys and cell ids.
struct Encoder(Vec<u8>);

impl Encoder {
    fn new(tag: &[u8]) -> Self {
        Encoder(tag.to_vec())
    }
    fn str(&mut self, s: &str) -> &mut Self {
        Value::encode_str(s, &mut self.0);
        self
    }
    fn u64(&mut self, n: u64) -> &mut Self {
        self.0.extend_from_slice(&n.to_le_bytes());
        self
    }
    fn params(&mut self, p: &Params) -> &mut Self {
        p.encode(&mut self.0);
        self
    }
    fn digest(&self) -> String {
        to_hex(&Sha256::digest(&self.0))
    }
}

impl CellKey {
    /// The canonical encoding (see the type's doc).
    pub fn encode(&self) -> Vec<u8> {
        self.view().encode()
    }

    /// The key: lowercase hex SHA-256 of [`CellKey::encode`].
    pub fn key(&self) -> String {
        self.view().key()
    }

    fn view(&self) -> KeyView<'_> {
        KeyView {
            kind: &self.kind,
            version: self.version,
            params: &self.params,
            seed: self.seed,
            inputs: self
                .inputs
                .iter()
                .map(|(s, d)| (s.as_str(), d.as_str()))
                .collect(),
            external: self.external.clone(),
        }
    }
}

/// The parts of a [`CellKey`], borrowed: its key without copying the params, for callers
/// that need only the key (`status` keys every cell of a plan).
#[derive(Debug, Clone)]
pub struct KeyView<'a> {
    pub kind: &'a str,
    pub version: u32,
    pub params: &'a Params,
    pub seed: Option<u64>,
    pub inputs: Vec<(&'a str, &'a str)>,
    pub external: Option<String>,
}

impl KeyView<'_> {
    /// [`CellKey::encode`] of these parts.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(b"spo-pipe-key-v1\0");
        e.str(self.kind)
            .u64(u64::from(self.version))
            .params(self.params);
        match self.seed {
            Some(s) => {
                e.0.push(1);
                e.u64(s);
            }
            None => e.0.push(0),
        }
        e.u64(self.inputs.len() as u64);
        for (stage, digest) in &self.inputs {
            e.str(stage).str(digest);
        }
        e.str(self.external.as_deref().unwrap_or_default());
        e.0
    }

    /// [`CellKey::key`] of these parts.
    pub fn key(&self) -> String {
        to_hex(&Sha256::digest(self.encode()))
    }

    /// The owned parts.
    pub fn to_owned(&self) -> CellKey {
        CellKey {
            kind: self.kind.to_owned(),
            version: self.version,
            params: self.params.clone(),
            seed: self.seed,
            inputs: self
                .inputs
                .iter()
                .map(|&(s, d)| (s.to_owned(), d.to_owned()))
                .collect(),
            external: self.external.clone(),
        }
    }
}

/// The cell id: SHA-256 over the tag `spo-pipe-cell-v1\0`, then the stage's name, its kind and
/// its params, then the ids of its input cells (in `needs` order), each as [`Value::encode`]
/// writes it. Seed and code version are left out, so runs group over seeds and across versions.
pub fn cell_id<'a>(
    stage: &str,
    kind: &str,
    params: &Params,
    input_cells: impl IntoIterator<Item = &'a str>,
) -> String {
    let mut e = Encoder::new(b"spo-pipe-cell-v1\0");
    e.str(stage).str(kind).params(params);
    for c in input_cells {
        e.str(c);
    }
    e.digest()
}

/// `bytes` as lowercase hex, as `hex::encode` writes them, by table (a run keys and reads
/// a few digests per cell, and `hex::encode` goes a char at a time through an iterator).
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// The content digest of a cell's output: SHA-256 over its sorted (path, file digest) pairs.
pub fn output_digest<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut files: Vec<(&str, &str)> = files.into_iter().collect();
    files.sort_unstable();
    let mut h = Sha256::new();
    h.update(b"spo-pipe-output-v1\0");
    for (p, d) in files {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
        h.update(d.as_bytes());
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> CellKey {
        CellKey {
            kind: "k".into(),
            version: 1,
            params: Params([("a".to_string(), Value::Int(1))].into()),
            seed: None,
            inputs: vec![("up".into(), "d1".into())],
            external: None,
        }
    }

    /// The bytes every existing store's keys were made from (written out by hand from the type's
    /// doc; the digests computed independently with Python's hashlib): they must never change.
    #[test]
    fn to_hex_writes_what_hex_encode_does() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(to_hex(&bytes), hex::encode(&bytes));
        assert_eq!(to_hex(&[]), "");
    }

    #[test]
    fn golden_key_bytes() {
        let mut k = parts();
        k.seed = Some(7);
        k.params.0.insert("f".into(), Value::Float(0.5));
        k.external = Some("x".into());
        let expected = concat!(
            "73706f2d706970652d6b65792d763100", // tag
            "73",
            "0100000000000000",
            "6b",               // kind "k"
            "0100000000000000", // version 1
            "0200000000000000", // two params
            "73",
            "0100000000000000",
            "61",
            "69",
            "0100000000000000", // a = Int 1
            "73",
            "0100000000000000",
            "66",
            "66",
            "000000000000e03f", // f = Float 0.5
            "01",
            "0700000000000000", // seed 7
            "0100000000000000", // one input
            "73",
            "0200000000000000",
            "7570", // "up"
            "73",
            "0200000000000000",
            "6431", // "d1"
            "73",
            "0100000000000000",
            "78", // external "x"
        );
        assert_eq!(hex::encode(k.encode()), expected);
        assert_eq!(
            k.key(),
            "49c46e6cc8daa55d9c5750e01d041fab59c9102d76044c37998556b586aa0c4a"
        );
    }

    #[test]
    fn golden_cell_id() {
        let p = Params([("a".to_string(), Value::Int(1))].into());
        assert_eq!(
            cell_id("s", "k", &p, ["c1"]),
            "dbb16d11a3722132c638b01cc13c8899e0820e6fd58163fdae1fe808ae7f0fb6"
        );
    }

    #[test]
    fn every_part_changes_the_key() {
        let base = parts().key();
        let mut p = parts();
        p.version = 2;
        assert_ne!(p.key(), base);
        let mut p = parts();
        p.params.0.insert("a".into(), Value::Int(2));
        assert_ne!(p.key(), base);
        let mut p = parts();
        p.seed = Some(0);
        assert_ne!(p.key(), base);
        let mut p = parts();
        p.inputs[0].1 = "d2".into();
        assert_ne!(p.key(), base);
        let mut p = parts();
        p.external = Some("x".into());
        assert_ne!(p.key(), base);
        assert_eq!(parts().key(), base);
    }

    #[test]
    fn int_and_float_params_differ() {
        let mut p = parts();
        p.params.0.insert("a".into(), Value::Float(1.0));
        assert_ne!(p.key(), parts().key());
    }

    #[test]
    fn output_digest_ignores_order() {
        assert_eq!(
            output_digest([("a", "1"), ("b", "2")]),
            output_digest([("b", "2"), ("a", "1")])
        );
        assert_ne!(
            output_digest([("a", "1"), ("b", "2")]),
            output_digest([("a", "2"), ("b", "1")])
        );
    }
}
