//! The CLIP BPE tokenizer (77 tokens) in its two flavours, on the `tokenizers` crate.
//!
//! The vocabulary is OpenAI's `bpe_simple_vocab_16e6.txt.gz` (MIT, shipped with open_clip and
//! OpenAI `clip`; sha256 924691ac…6804a), embedded in the crate: 256 byte symbols, the same with
//! `</w>`, 48 894 merges, then `<|startoftext|>` 49406 and `<|endoftext|>` 49407. The model is
//! a byte-level BPE with end-of-word suffix `</w>` behind the CLIP split regex
//! (`'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`), as HF's `CLIPTokenizerFast`
//! builds it. The flavours differ only in how text is cleaned first:
//! - [`TextCleaning::Hf`] (PickScore, CLIP score, the SPM): NFC, whitespace runs → one space,
//!   lowercase;
//! - [`TextCleaning::OpenClip`] (HPSv2): open_clip's `basic_clean` — `ftfy.fix_text` (the parts
//!   of it prompts meet: HTML entities, curly quotes, Latin ligatures, full-width forms, line
//!   breaks and control characters; not its mojibake repair), `html.unescape` twice, then
//!   whitespace collapsed and lowercase.
//!
//! Ids are `[49406] + bpe[..75] + [49407]`, padded with 0 to 77 when batched (padding follows
//! the end-of-text token, so under the causal mask it never reaches the pooled state). A
//! diffusers pipeline's tokenizer pads with its own pad token (SD-1.5: end-of-text), whose
//! states the UNet attends to: [`ClipTokenizer::with_pad`]; [`crate::hf_tokenizer`] reads such
//! a folder.

use std::io::Read;

use candle_core::{Device, Tensor};
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as NormSeq};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSeq;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{SplitDelimiterBehavior, Tokenizer};

use crate::clean::open_clip_clean;
use crate::error::ClipError;

/// The context length.
pub const CONTEXT_LENGTH: usize = 77;
/// `<|startoftext|>`.
pub const BOS_ID: u32 = 49406;
/// `<|endoftext|>`.
pub const EOS_ID: u32 = 49407;

static BPE_GZ: &[u8] = include_bytes!("../assets/bpe_simple_vocab_16e6.txt.gz");

const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// Which reference's text cleaning to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextCleaning {
    /// HF `CLIPTokenizerFast`: NFC, whitespace collapsed, lowercase.
    Hf,
    /// open_clip `SimpleTokenizer` (`clean='lower'`): ftfy + HTML unescape first.
    OpenClip,
}

/// GPT-2's reversible byte → printable character map, in CLIP's vocabulary order.
fn byte_symbols() -> Vec<char> {
    let mut bytes: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<u32> = bytes.clone();
    let mut extra = 0;
    for b in 0..256u32 {
        if !bytes.contains(&b) {
            bytes.push(b);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    chars.into_iter().filter_map(char::from_u32).collect()
}

/// A CLIP tokenizer: the embedded vocabulary, or one read from a Hugging Face tokenizer folder.
#[derive(Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    cleaning: TextCleaning,
    bos: u32,
    eos: u32,
    pad: u32,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("cleaning", &self.cleaning)
            .finish()
    }
}

fn tok_err(e: impl std::fmt::Display) -> ClipError {
    ClipError::Tokenizer(e.to_string())
}

impl ClipTokenizer {
    /// Builds the tokenizer from the embedded BPE file.
    pub fn new(cleaning: TextCleaning) -> Result<Self, ClipError> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(BPE_GZ)
            .read_to_string(&mut text)
            .map_err(tok_err)?;
        // Header line, then the 48 894 merges CLIP uses (49152 − 256 − 2).
        let merges: Vec<(String, String)> = text
            .split('\n')
            .skip(1)
            .take(49152 - 256 - 2)
            .filter_map(|l| l.split_once(' '))
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let symbols = byte_symbols();
        let mut words: Vec<String> = symbols.iter().map(|c| c.to_string()).collect();
        words.extend(symbols.iter().map(|c| format!("{c}</w>")));
        words.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        words.push("<|startoftext|>".into());
        words.push("<|endoftext|>".into());
        if words.len() != 49408 {
            return Err(ClipError::Tokenizer(format!(
                "embedded vocabulary has {} entries, expected 49408",
                words.len()
            )));
        }
        let vocab: Vocab = words
            .into_iter()
            .enumerate()
            .map(|(i, w)| (w, i as u32))
            .collect();
        Self::build(vocab, merges, cleaning, 0)
    }

    /// A tokenizer over `vocab` and `merges` (a folder's own, e.g. a tiny test vocabulary): the
    /// CLIP BPE model and pre-tokenization, `<|startoftext|>`/`<|endoftext|>` looked up in
    /// `vocab`, batches padded with `pad`. The error says which special token is missing.
    pub fn build(
        vocab: Vocab,
        merges: Vec<(String, String)>,
        cleaning: TextCleaning,
        pad: u32,
    ) -> Result<Self, ClipError> {
        let special = |t: &str| {
            vocab
                .get(t)
                .copied()
                .ok_or_else(|| ClipError::Tokenizer(format!("the vocabulary has no `{t}` token")))
        };
        let (bos, eos) = (special("<|startoftext|>")?, special("<|endoftext|>")?);
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .end_of_word_suffix("</w>".into())
            .unk_token("<|endoftext|>".into())
            .build()
            .map_err(tok_err)?;
        let mut inner = Tokenizer::new(bpe);
        let normalizer = NormSeq::new(vec![
            NFC.into(),
            Replace::new(
                tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
                " ",
            )
            .map_err(tok_err)?
            .into(),
            Lowercase.into(),
        ]);
        inner.with_normalizer(Some(normalizer)).map_err(tok_err)?;
        let split = Split::new(
            SplitPattern::Regex(CLIP_PATTERN.into()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(tok_err)?;
        let pre = PreSeq::new(vec![
            split.into(),
            ByteLevel::new(false, false, true).into(),
        ]);
        inner.with_pre_tokenizer(Some(pre));
        Ok(Self {
            inner,
            cleaning,
            bos,
            eos,
            pad,
        })
    }

    /// The id of `token` in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary's size.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// This tokenizer with `token` matched verbatim wherever it stands in a prompt, before any
    /// cleaning or BPE, as transformers treats a tokenizer's special tokens: SDXL's second
    /// tokenizer pads with `!`, so every `!` of a prompt becomes that token (id 0), not `!</w>`.
    pub fn with_special_token(mut self, token: &str) -> Result<Self, ClipError> {
        self.inner
            .add_special_tokens([tokenizers::AddedToken::from(token.to_owned(), true)])
            .map_err(tok_err)?;
        Ok(self)
    }

    /// This tokenizer with batches padded with `pad` (SD-1.5: `<|endoftext|>`; SDXL's second
    /// tokenizer: `!`, id 0).
    pub fn with_pad(mut self, pad: u32) -> Self {
        self.pad = pad;
        self
    }

    /// The cleaning this tokenizer applies.
    pub fn cleaning(&self) -> TextCleaning {
        self.cleaning
    }

    /// Ids of one prompt: `[BOS] + bpe[..75] + [EOS]`, unpadded.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>, ClipError> {
        let text = match self.cleaning {
            TextCleaning::Hf => prompt.to_string(),
            TextCleaning::OpenClip => open_clip_clean(prompt),
        };
        let enc = self.inner.encode(text.as_str(), false).map_err(tok_err)?;
        let body = enc.get_ids();
        let keep = body.len().min(CONTEXT_LENGTH - 2);
        let mut ids = Vec::with_capacity(keep + 2);
        ids.push(self.bos);
        ids.extend_from_slice(&body[..keep]);
        ids.push(self.eos);
        Ok(ids)
    }

    /// `(b, 77)` u32 ids of a batch, padded with the pad id (0 unless [`Self::with_pad`]).
    pub fn encode_batch(&self, prompts: &[&str], device: &Device) -> Result<Tensor, ClipError> {
        let mut flat = vec![self.pad; prompts.len() * CONTEXT_LENGTH];
        for (prompt, row) in prompts.iter().zip(flat.chunks_exact_mut(CONTEXT_LENGTH)) {
            let ids = self.encode(prompt)?;
            row[..ids.len()].copy_from_slice(&ids);
        }
        Ok(Tensor::from_vec(
            flat,
            (prompts.len(), CONTEXT_LENGTH),
            device,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_prompt_and_truncation() -> Result<(), ClipError> {
        let tok = ClipTokenizer::new(TextCleaning::Hf)?;
        // open_clip.tokenize("a photo of a cat") = [49406, 320, 1125, 539, 320, 2368, 49407]
        assert_eq!(
            tok.encode("a photo of a cat")?,
            vec![49406, 320, 1125, 539, 320, 2368, 49407]
        );
        let long = "cat ".repeat(100);
        let ids = tok.encode(&long)?;
        assert_eq!(ids.len(), 77);
        assert_eq!(ids[76], EOS_ID);
        assert_eq!(tok.encode("")?, vec![BOS_ID, EOS_ID]);
        Ok(())
    }
}
