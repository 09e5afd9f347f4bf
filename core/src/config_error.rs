//! Errors in pipeline.toml or `--set`, pointing at the file, line and column.

use std::fmt;
use std::ops::Range;

/// A problem in the pipeline definition, with where it is and how to fix it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// The file (or `--set`) the problem is in.
    pub file: String,
    /// 1-based line and column.
    pub line: usize,
    pub col: usize,
    pub message: String,
    /// How to fix it, where we can say.
    pub hint: Option<String>,
    /// The offending source line and a caret under the problem.
    pub snippet: Option<Box<(String, usize, usize)>>,
}

impl std::error::Error for ConfigError {}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )?;
        if let Some(snippet) = &self.snippet {
            let (src, start, width) = snippet.as_ref();
            let n = self.line.to_string();
            let pad = " ".repeat(n.len());
            write!(
                f,
                "\n{pad} |\n{n} | {src}\n{pad} | {}{}",
                " ".repeat(*start),
                "^".repeat((*width).max(1))
            )?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\n  = hint: {h}")?;
        }
        Ok(())
    }
}

/// Where a source text came from, to turn byte spans into positions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Source<'a> {
    pub name: &'a str,
    pub text: &'a str,
}

impl Source<'_> {
    /// An error at byte span `span` (a span that ends inside a character is widened to it).
    pub fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let start = boundary(self.text, span.start, false);
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[start..]
            .find('\n')
            .map_or(self.text.len(), |i| start + i);
        let line = self.text[..start].matches('\n').count() + 1;
        let src = &self.text[line_start..line_end];
        let col_chars = self.text[line_start..start].chars().count();
        let end = boundary(self.text, span.end, true).clamp(start, line_end);
        let width = self.text[start..end].chars().count();
        ConfigError {
            file: self.name.to_owned(),
            line,
            col: col_chars + 1,
            message: message.into(),
            hint: None,
            snippet: Some(Box::new((src.replace('\t', " "), col_chars, width))),
        }
    }
}

/// The character boundary of `text` at or before (`up`: at or after) byte `i`, within `text`.
fn boundary(text: &str, i: usize, up: bool) -> usize {
    let mut i = i.min(text.len());
    while !text.is_char_boundary(i) {
        if up { i += 1 } else { i -= 1 }
    }
    i
}

impl ConfigError {
    /// Adds a hint on how to fix the problem.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}
/// `bytes` of file `file` as text, or an error at the line and column of the first byte that is
/// not UTF-8.
pub fn utf8_text(file: &str, bytes: Vec<u8>) -> Result<String, ConfigError> {
    String::from_utf8(bytes).map_err(|e| {
        let good = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let text = std::str::from_utf8(&bytes[..good]).unwrap_or_default();
        let line_start = text.rfind('\n').map_or(0, |i| i + 1);
        ConfigError {
            file: file.to_owned(),
            line: text.matches('\n').count() + 1,
            col: text[line_start..].chars().count() + 1,
            message: format!("byte 0x{:02x} is not UTF-8", bytes[good]),
            hint: Some("save the file as UTF-8".into()),
            snippet: None,
        }
    })
}

/// The closest candidate within edit distance 2 (a "did you mean").
pub(crate) fn suggest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (levenshtein(word, c), c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// A hint that says "did you mean `x`?" or lists what is allowed.
pub(crate) fn unknown_hint(word: &str, candidates: &[&str], what: &str) -> String {
    match suggest(word, candidates.iter().copied()) {
        Some(s) => format!("did you mean `{s}`?"),
        None if candidates.is_empty() => format!("this {what} takes none"),
        None => format!(
            "expected one of: {}",
            candidates
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_caret() {
        let src = Source {
            name: "p.toml",
            text: "[a]\nkey = 12\n",
        };
        let e = src.error(10..12, "bad");
        assert_eq!((e.line, e.col), (2, 7));
        assert_eq!(
            e.to_string(),
            "p.toml:2:7: bad\n  |\n2 | key = 12\n  |       ^^"
        );
    }

    #[test]
    fn a_span_inside_a_character_widens_to_it() {
        let src = Source {
            name: "--set",
            text: " é.x=1",
        };
        let e = src.error(0..2, "bad");
        assert_eq!((e.line, e.col), (1, 1));
        assert_eq!(e.to_string(), "--set:1:1: bad\n  |\n1 |  é.x=1\n  | ^^");
    }

    #[test]
    fn invalid_utf8_is_positioned() {
        let e = utf8_text("p.toml", b"[a]\nk = \"x\xff\"\n".to_vec()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "p.toml:2:7: byte 0xff is not UTF-8\n  = hint: save the file as UTF-8"
        );
        assert_eq!(utf8_text("p.toml", b"ok".to_vec()).unwrap(), "ok");
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("stpes", ["steps", "lr"]), Some("steps"));
        assert_eq!(suggest("zzzzzz", ["steps", "lr"]), None);
    }
}
