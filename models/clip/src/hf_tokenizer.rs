//! A Hugging Face CLIP tokenizer folder (a diffusers pipeline's `tokenizer/`): the vocabulary
//! and merges from `vocab.json` + `merges.txt` (as SD-1.5's and SDXL's repos ship them) or from
//! `tokenizer.json` (as transformers 5 saves them), the pad token from `tokenizer_config.json`
//! or `special_tokens_map.json` (a string or an `AddedToken` object; default `<|endoftext|>`, as
//! `CLIPTokenizer`'s). Text is cleaned as HF's `CLIPTokenizerFast` cleans it.

use std::path::Path;

use serde_json::Value;
use tokenizers::models::bpe::Vocab;

use crate::error::ClipError;
use crate::tokenizer::{CONTEXT_LENGTH, ClipTokenizer, TextCleaning};

fn read_json(path: &Path) -> Result<Value, ClipError> {
    let text = std::fs::read_to_string(path).map_err(|source| ClipError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| bad(path, format!("not JSON: {e}")))
}

fn bad(path: &Path, message: String) -> ClipError {
    ClipError::Tokenizer(format!("`{}`: {message}", path.display()))
}

fn vocab_of(path: &Path, value: &Value) -> Result<Vocab, ClipError> {
    let map = value
        .as_object()
        .ok_or_else(|| bad(path, "the vocabulary is not a token → id object".into()))?;
    map.iter()
        .map(|(token, id)| {
            let id = id
                .as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| bad(path, format!("token `{token}` has no integer id")))?;
            Ok((token.clone(), id))
        })
        .collect()
}

/// A merge written `"a b"` (merges.txt, older tokenizer.json) or `["a", "b"]`.
fn merge_of(path: &Path, value: &Value) -> Result<(String, String), ClipError> {
    let pair = match value {
        Value::String(s) => s.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())),
        Value::Array(items) => match items.as_slice() {
            [Value::String(a), Value::String(b)] => Some((a.clone(), b.clone())),
            _ => None,
        },
        _ => None,
    };
    pair.ok_or_else(|| bad(path, format!("merge {value} is not a pair of symbols")))
}

fn vocab_and_merges(dir: &Path) -> Result<(Vocab, Vec<(String, String)>), ClipError> {
    let (vocab_path, merges_path) = (dir.join("vocab.json"), dir.join("merges.txt"));
    if vocab_path.is_file() {
        let vocab = vocab_of(&vocab_path, &read_json(&vocab_path)?)?;
        let text = std::fs::read_to_string(&merges_path).map_err(|source| ClipError::Io {
            path: merges_path.clone(),
            source,
        })?;
        let merges = text
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .map(|l| merge_of(&merges_path, &Value::String(l.to_owned())))
            .collect::<Result<_, _>>()?;
        return Ok((vocab, merges));
    }
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Err(bad(
            dir,
            "no vocab.json + merges.txt and no tokenizer.json: not a CLIP tokenizer folder".into(),
        ));
    }
    let json = read_json(&path)?;
    let model = &json["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(bad(
            &path,
            format!("model type {} is not BPE", model["type"]),
        ));
    }
    let vocab = vocab_of(&path, &model["vocab"])?;
    let merges = model["merges"]
        .as_array()
        .ok_or_else(|| bad(&path, "no `model.merges` list".into()))?
        .iter()
        .map(|m| merge_of(&path, m))
        .collect::<Result<_, _>>()?;
    Ok((vocab, merges))
}

/// The pad token's text: `pad_token` of tokenizer_config.json, else of special_tokens_map.json.
fn pad_token(dir: &Path) -> Result<String, ClipError> {
    for name in ["tokenizer_config.json", "special_tokens_map.json"] {
        let path = dir.join(name);
        if !path.is_file() {
            continue;
        }
        let json = read_json(&path)?;
        if name == "tokenizer_config.json"
            && let Some(n) = json["model_max_length"].as_u64()
            && n as usize != CONTEXT_LENGTH
        {
            return Err(bad(
                &path,
                format!("model_max_length = {n}, but CLIP text encoders take {CONTEXT_LENGTH}"),
            ));
        }
        match &json["pad_token"] {
            Value::String(s) => return Ok(s.clone()),
            Value::Object(o) => {
                if let Some(s) = o.get("content").and_then(Value::as_str) {
                    return Ok(s.to_owned());
                }
            }
            _ => {}
        }
    }
    Ok("<|endoftext|>".to_owned())
}

/// Opens the CLIP tokenizer in `dir`. Errors name the file and what is wrong with it.
pub fn open_hf_tokenizer(dir: &Path) -> Result<ClipTokenizer, ClipError> {
    let (vocab, merges) = vocab_and_merges(dir)?;
    let pad_text = pad_token(dir)?;
    let pad = vocab.get(&pad_text).copied().ok_or_else(|| {
        bad(
            dir,
            format!("the pad token `{pad_text}` is not in the vocabulary"),
        )
    })?;
    let tokenizer = ClipTokenizer::build(vocab, merges, TextCleaning::Hf, pad)
        .map_err(|e| bad(dir, e.to_string()))?;
    // The start and end tokens are matched by CLIP's split pattern already; a pad token of
    // another text is a special token transformers matches anywhere in a prompt.
    Ok(match pad_text.as_str() {
        "<|startoftext|>" | "<|endoftext|>" => tokenizer,
        other => tokenizer
            .with_special_token(other)
            .map_err(|e| bad(dir, e.to_string()))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    const VOCAB: &str = r#"{"a": 0, "b": 1, "a</w>": 2, "b</w>": 3, "ab</w>": 4, "<|startoftext|>": 5, "<|endoftext|>": 6, "!": 7}"#;

    #[test]
    fn vocab_and_merges_files_and_tokenizer_json_give_the_same_ids() {
        let files = folder(&[
            ("vocab.json", VOCAB),
            ("merges.txt", "#version: 0.2\na b</w>\n"),
        ]);
        let json = format!(
            r#"{{"model": {{"type": "BPE", "vocab": {VOCAB}, "merges": [["a", "b</w>"]]}}}}"#
        );
        let fast = folder(&[
            ("tokenizer.json", &json),
            (
                "tokenizer_config.json",
                r#"{"pad_token": {"content": "!"}}"#,
            ),
        ]);
        let a = open_hf_tokenizer(files.path()).unwrap();
        let b = open_hf_tokenizer(fast.path()).unwrap();
        assert_eq!(a.encode("ab A").unwrap(), vec![5, 4, 2, 6]);
        assert_eq!(b.encode("ab A").unwrap(), vec![5, 4, 2, 6]);
        let dev = candle_core::Device::Cpu;
        let pad = |t: &ClipTokenizer| {
            t.encode_batch(&["a"], &dev)
                .unwrap()
                .to_vec2::<u32>()
                .unwrap()[0][5]
        };
        assert_eq!(
            (pad(&a), pad(&b)),
            (6, 7),
            "end-of-text by default; `!` as configured"
        );
        // As transformers does, a pad token of its own text is matched anywhere in a prompt.
        assert_eq!(b.encode("a!").unwrap(), vec![5, 2, 7, 6]);
    }

    #[test]
    fn broken_folders_are_named() {
        let empty = folder(&[]);
        let e = open_hf_tokenizer(empty.path()).unwrap_err().to_string();
        assert!(e.contains("not a CLIP tokenizer folder"), "{e}");
        let no_specials = folder(&[("vocab.json", r#"{"a": 0}"#), ("merges.txt", "")]);
        let e = open_hf_tokenizer(no_specials.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("pad token `<|endoftext|>`"), "{e}");
        let long = folder(&[
            ("vocab.json", VOCAB),
            ("merges.txt", ""),
            ("tokenizer_config.json", r#"{"model_max_length": 512}"#),
        ]);
        let e = open_hf_tokenizer(long.path()).unwrap_err().to_string();
        assert!(
            e.contains("tokenizer_config.json") && e.contains("512"),
            "{e}"
        );
        let bad_merge = folder(&[("vocab.json", VOCAB), ("merges.txt", "ab\n")]);
        let e = open_hf_tokenizer(bad_merge.path()).unwrap_err().to_string();
        assert!(e.contains("merges.txt") && e.contains("not a pair"), "{e}");
    }
}
