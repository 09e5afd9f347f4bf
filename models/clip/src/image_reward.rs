//! ImageReward v1.0 (THUDM/ImageReward `ImageReward/ImageReward.py`): BLIP ViT-L/16 image
//! tokens → MED BERT with cross-attention over them → the `[CLS]` state → a five-layer affine
//! MLP → `(r − 0.16717362830052426) / 1.0333394966054072`.
//!
//! Released files: `ImageReward.pt` (a bare state dict; keys `blip.visual_encoder.*`,
//! `blip.text_encoder.*`, `mlp.layers.{0,2,4,6,7}.*`; `blip.vision_proj`/`text_proj` are unused)
//! and `med_config.json`. The reference loads with `strict=False`; here every needed key is
//! checked. Text: bert-base-uncased WordPiece (the vocabulary, Apache-2.0, is embedded) with
//! `[DEC]` = 30522 and `[ENC]` = 30523 added, 35 tokens, `[CLS] … [SEP]` padded with 0 — the
//! first token stays `[CLS]`, as `score()` leaves it.

use std::io::Read;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::{AddedToken, Tokenizer};

use crate::blip_vit::{BlipVisionConfig, BlipVisionTransformer};
use crate::error::ClipError;
use crate::med_bert::{MedBert, MedConfig};
use crate::scorers::aesthetic::MlpHead;
use crate::weights::{CheckedWeights, read_tensors};

/// `ImageReward.mean`.
pub const REWARD_MEAN: f64 = 0.16717362830052426;
/// `ImageReward.std`.
pub const REWARD_STD: f64 = 1.0333394966054072;
/// Text length.
pub const MAX_LENGTH: usize = 35;

static BERT_VOCAB_GZ: &[u8] = include_bytes!("../assets/bert_base_uncased_vocab.txt.gz");

/// ImageReward's tokenizer (`BertTokenizer('bert-base-uncased')` + `[DEC]`, `[ENC]`).
#[derive(Clone)]
pub struct BertTokenizer {
    inner: Tokenizer,
    cls: u32,
    sep: u32,
}

fn tok_err(e: impl std::fmt::Display) -> ClipError {
    ClipError::Tokenizer(e.to_string())
}

impl BertTokenizer {
    /// Builds the tokenizer from the embedded bert-base-uncased vocabulary.
    pub fn new() -> Result<Self, ClipError> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(BERT_VOCAB_GZ)
            .read_to_string(&mut text)
            .map_err(tok_err)?;
        let vocab: tokenizers::models::bpe::Vocab = text
            .lines()
            .enumerate()
            .map(|(i, w)| (w.to_string(), i as u32))
            .collect();
        let id = |w: &str| {
            vocab
                .get(w)
                .copied()
                .ok_or_else(|| tok_err(format!("vocabulary lacks {w}")))
        };
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        let model = WordPiece::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .continuing_subword_prefix("##".into())
            .max_input_chars_per_word(100)
            .build()
            .map_err(tok_err)?;
        let mut inner = Tokenizer::new(model);
        inner
            .with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
            .map_err(tok_err)?;
        inner.with_pre_tokenizer(Some(BertPreTokenizer));
        let specials: Vec<AddedToken> = [
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]",
        ]
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
        inner.add_special_tokens(specials).map_err(tok_err)?;
        Ok(Self { inner, cls, sep })
    }

    /// Ids of one prompt, `[CLS] + wordpieces[..33] + [SEP]`, unpadded.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>, ClipError> {
        let enc = self.inner.encode(prompt, false).map_err(tok_err)?;
        let body = enc.get_ids();
        let keep = body.len().min(MAX_LENGTH - 2);
        let mut ids = Vec::with_capacity(keep + 2);
        ids.push(self.cls);
        ids.extend_from_slice(&body[..keep]);
        ids.push(self.sep);
        Ok(ids)
    }

    /// `(b, 35)` ids padded with 0 and the `(b, 35)` attention mask.
    pub fn encode_batch(
        &self,
        prompts: &[&str],
        device: &Device,
    ) -> Result<(Tensor, Tensor), ClipError> {
        let mut ids = vec![0u32; prompts.len() * MAX_LENGTH];
        let mut mask = vec![0u32; prompts.len() * MAX_LENGTH];
        for (i, prompt) in prompts.iter().enumerate() {
            let row = self.encode(prompt)?;
            ids[i * MAX_LENGTH..i * MAX_LENGTH + row.len()].copy_from_slice(&row);
            mask[i * MAX_LENGTH..i * MAX_LENGTH + row.len()].fill(1);
        }
        let shape = (prompts.len(), MAX_LENGTH);
        Ok((
            Tensor::from_vec(ids, shape, device)?,
            Tensor::from_vec(mask, shape, device)?,
        ))
    }
}

/// The ImageReward model.
#[derive(Debug, Clone)]
pub struct ImageReward {
    visual_encoder: BlipVisionTransformer,
    text_encoder: MedBert,
    mlp: MlpHead,
}

impl ImageReward {
    /// Loads `ImageReward.pt`-style weights. `vision` is the BLIP ViT shape (the release's is
    /// [`BlipVisionConfig::default`]); `med.encoder_width` is set to its width, as
    /// `BLIP_Pretrain` does.
    pub fn load(
        weights: &Path,
        vision: &BlipVisionConfig,
        med: &MedConfig,
        device: &Device,
    ) -> Result<Self, ClipError> {
        let med = MedConfig {
            encoder_width: vision.embed_dim,
            ..med.clone()
        };
        let checked = CheckedWeights::new(weights, read_tensors(weights)?);
        let (visual_encoder, text_encoder) = checked.build(DType::F32, device, |vb| {
            let blip = vb.pp("blip");
            Ok((
                BlipVisionTransformer::new(vision, blip.pp("visual_encoder"))?,
                MedBert::new(&med, blip.pp("text_encoder"))?,
            ))
        })?;
        let mlp = MlpHead::from_weights(&checked, "mlp.", med.hidden_size)?;
        Ok(Self {
            visual_encoder,
            text_encoder,
            mlp,
        })
    }

    /// Loads a folder holding `ImageReward.pt` and `med_config.json` (and, for non-release
    /// shapes, `vision_config.json`).
    pub fn load_dir(dir: &Path, device: &Device) -> Result<Self, ClipError> {
        let (vision, med) = Self::configs(dir)?;
        Self::load(&dir.join("ImageReward.pt"), &vision, &med, device)
    }

    /// The shapes a folder's model has: its `vision_config.json` (the release's ViT-L/16
    /// where there is none) and its `med_config.json`.
    pub fn configs(dir: &Path) -> Result<(BlipVisionConfig, MedConfig), ClipError> {
        let read_json = |name: &str| -> Result<Option<String>, ClipError> {
            let path = dir.join(name);
            if !path.is_file() {
                return Ok(None);
            }
            std::fs::read_to_string(&path)
                .map(Some)
                .map_err(|source| ClipError::Io { path, source })
        };
        let parse = |name: &str, text: &str| ClipError::Config {
            path: dir.join(name),
            message: text.to_string(),
        };
        let med_text = read_json("med_config.json")?.ok_or_else(|| ClipError::MissingFile {
            dir: dir.to_path_buf(),
            candidates: vec!["med_config.json".into()],
        })?;
        let med: MedConfig = serde_json::from_str(&med_text)
            .map_err(|e| parse("med_config.json", &e.to_string()))?;
        let vision: BlipVisionConfig = match read_json("vision_config.json")? {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| parse("vision_config.json", &e.to_string()))?,
            None => BlipVisionConfig::default(),
        };
        Ok((vision, med))
    }

    /// Rewards of paired `(b, 3, 224, 224)` pixels (OpenAI-normalised) and `(b, 35)` ids/mask.
    pub fn score(
        &self,
        pixels: &Tensor,
        ids: &Tensor,
        mask: &Tensor,
    ) -> Result<Vec<f64>, ClipError> {
        // (b, 1 + g², width)
        let image = self.visual_encoder.forward(pixels)?;
        let text = self.text_encoder.forward(ids, mask, &image)?;
        // The [CLS] state: (b, hidden).
        let cls = text.narrow(1, 0, 1)?.squeeze(1)?;
        Ok(self
            .mlp
            .apply_rows(&cls)?
            .into_iter()
            .map(|r| (r - REWARD_MEAN) / REWARD_STD)
            .collect())
    }
}
