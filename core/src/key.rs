//! Cache keys: SHA-256 over a canonical encoding of everything that determines a cell's bytes.

use sha2::{Digest, Sha256};

use crate::param::{Params, Value};

/// The parts of a key, kept beside every committed cell so `why` can say what changed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KeyParts {
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

impl KeyParts {
    /// The key: lowercase hex SHA-256 of the canonical encoding.
    pub fn key(&self) -> String {
        let mut enc = b"spo-pipe-key-v1\0".to_vec();
        Value::Str(self.kind.clone()).encode(&mut enc);
        enc.extend_from_slice(&u64::from(self.version).to_le_bytes());
        self.params.encode(&mut enc);
        match self.seed {
            Some(s) => {
                enc.push(1);
                enc.extend_from_slice(&s.to_le_bytes());
            }
            None => enc.push(0),
        }
        enc.extend_from_slice(&(self.inputs.len() as u64).to_le_bytes());
        for (stage, digest) in &self.inputs {
            Value::Str(stage.clone()).encode(&mut enc);
            Value::Str(digest.clone()).encode(&mut enc);
        }
        Value::Str(self.external.clone().unwrap_or_default()).encode(&mut enc);
        hex::encode(Sha256::digest(&enc))
    }
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

    fn parts() -> KeyParts {
        KeyParts {
            kind: "k".into(),
            version: 1,
            params: Params([("a".to_string(), Value::Int(1))].into()),
            seed: None,
            inputs: vec![("up".into(), "d1".into())],
            external: None,
        }
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
