//! A word-level tokenizer for the emoji world's prompts, for the in-world text encoders.
//!
//! The world's prompts use a few hundred words, so a word vocabulary built from them is exact
//! and tiny; the real-weights path uses the CLIP BPE tokenizer in spo-clip instead. Layout:
//! 0 = padding, 1 = start of text, 2 = unknown word, then the words in sorted order, and the
//! end-of-text token last (the largest id, where CLIP's text tower pools).

use std::collections::BTreeSet;

use crate::error::Result;
use spo_core::StageError;

/// The vocabulary.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Vocab {
    pub words: Vec<String>,
    /// Token sequence length (including start and end).
    pub max_len: usize,
}

const PAD: u32 = 0;
const BOS: u32 = 1;
const UNK: u32 = 2;
const FIRST_WORD: u32 = 3;

fn split(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

impl Vocab {
    /// A vocabulary over every word of `prompts`, long enough for the longest.
    pub fn build<'a>(prompts: impl IntoIterator<Item = &'a str>) -> Vocab {
        let mut words = BTreeSet::new();
        let mut longest = 0;
        for p in prompts {
            let n = split(p).map(|w| words.insert(w)).count();
            longest = longest.max(n);
        }
        Vocab {
            words: words.into_iter().collect(),
            max_len: longest + 2,
        }
    }
    /// Number of token ids (the text tower's `vocab_size`).
    pub fn size(&self) -> usize {
        self.words.len() + FIRST_WORD as usize + 1
    }
    /// The end-of-text id (the largest).
    pub fn eos(&self) -> u32 {
        (self.size() - 1) as u32
    }
    /// `max_len` ids: start, words (truncated), end, padding.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = vec![BOS];
        for w in split(text).take(self.max_len - 2) {
            ids.push(
                self.words
                    .binary_search(&w)
                    .map_or(UNK, |i| i as u32 + FIRST_WORD),
            );
        }
        ids.push(self.eos());
        ids.resize(self.max_len, PAD);
        ids
    }
    /// The ids of many texts as one `(n, max_len)` tensor.
    pub fn batch(
        &self,
        texts: &[&str],
        device: &candle_core::Device,
    ) -> Result<candle_core::Tensor> {
        let ids: Vec<u32> = texts.iter().flat_map(|t| self.encode(t)).collect();
        Ok(candle_core::Tensor::from_vec(
            ids,
            (texts.len(), self.max_len),
            device,
        )?)
    }
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
    pub fn from_json(bytes: &[u8], path: &std::path::Path) -> Result<Vocab> {
        Ok(serde_json::from_slice(bytes).map_err(|e| {
            StageError::Failed(format!("{}: not a vocabulary: {e}", path.display()))
        })?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_start_end_padding_and_unknowns() {
        let v = Vocab::build(["a red apple", "two blue cats on the left"]);
        assert_eq!(v.max_len, 8);
        let ids = v.encode("A red zebra");
        assert_eq!(ids.len(), 8);
        assert_eq!(ids[0], BOS);
        assert_eq!(ids[3], UNK);
        assert_eq!(ids[4], v.eos());
        assert_eq!(&ids[5..], &[PAD; 3]);
        assert_ne!(v.encode("red apple"), v.encode("apple red"));
        assert!(
            v.encode("a red apple")
                .iter()
                .all(|&i| (i as usize) < v.size())
        );
    }
}
