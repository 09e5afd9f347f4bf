//! open_clip's text cleaning (`basic_clean` + `whitespace_clean` + lowercase), as used by HPSv2.
//!
//! open_clip runs `ftfy.fix_text`, then `html.unescape` twice, strips, collapses whitespace with
//! Python's `str.split()` and lowercases. This module reproduces the ftfy steps that change
//! ordinary prompts: NFC, HTML entities (a small table plus numeric references), curly quotes
//! (`\u{2018}`–`\u{201B}`, `\u{02BC}` → `'`; `\u{201C}`–`\u{201F}` → `"`), Latin ligatures,
//! full-width forms (NFKC of U+FF01–U+FFEF, U+3000 → space), line breaks, C1 controls read as
//! Windows-1252 and the control characters ftfy removes. Not reproduced: ftfy's mojibake repair
//! (`fix_encoding`) and the full HTML5 entity list; prompts that need them tokenize as HF does.

use tokenizers::NormalizedString;

fn nfc(text: &str) -> String {
    let mut n = NormalizedString::from(text);
    n.nfc();
    n.get().to_string()
}

fn nfkc_char(c: char) -> String {
    let mut n = NormalizedString::from(c.to_string().as_str());
    n.nfkc();
    n.get().to_string()
}

/// Named entities resolved here (the common ones; `html.unescape` knows 2 231).
const ENTITIES: &[(&str, &str)] = &[
    ("amp", "&"),
    ("lt", "<"),
    ("gt", ">"),
    ("quot", "\""),
    ("apos", "'"),
    ("nbsp", "\u{a0}"),
    ("copy", "\u{a9}"),
    ("reg", "\u{ae}"),
    ("trade", "\u{2122}"),
    ("hellip", "\u{2026}"),
    ("mdash", "\u{2014}"),
    ("ndash", "\u{2013}"),
    ("lsquo", "\u{2018}"),
    ("rsquo", "\u{2019}"),
    ("ldquo", "\u{201c}"),
    ("rdquo", "\u{201d}"),
    ("eacute", "\u{e9}"),
    ("deg", "\u{b0}"),
];

/// One pass of `html.unescape` for `&name;`, `&#N;` and `&#xH;` (and the legacy
/// semicolon-less `&amp`, `&lt`, `&gt`, `&quot`).
pub fn html_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('&') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos + 1..];
        if let Some((ch, used)) = entity(tail) {
            out.push_str(&ch);
            rest = &tail[used..];
        } else {
            out.push('&');
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// The replacement for an entity at the start of `tail` (after `&`) and the bytes it used.
fn entity(tail: &str) -> Option<(String, usize)> {
    if let Some(num) = tail.strip_prefix('#') {
        let (digits, radix, skip) = match num.strip_prefix(['x', 'X']) {
            Some(hex) => (hex, 16, 2),
            None => (num, 10, 1),
        };
        let len = digits
            .find(|c: char| !c.is_digit(radix))
            .unwrap_or(digits.len());
        let value = u32::from_str_radix(&digits[..len], radix).ok()?;
        let semi = usize::from(digits[len..].starts_with(';'));
        let ch = char::from_u32(value).unwrap_or('\u{fffd}');
        return Some((ch.to_string(), skip + len + semi));
    }
    for (name, value) in ENTITIES {
        if let Some(after) = tail.strip_prefix(name) {
            if after.starts_with(';') {
                return Some((value.to_string(), name.len() + 1));
            }
            if matches!(*name, "amp" | "lt" | "gt" | "quot") {
                return Some((value.to_string(), name.len()));
            }
        }
    }
    None
}

/// Windows-1252's characters for the C1 range 0x80–0x9F (None where it has none).
fn cp1252_c1(c: char) -> Option<char> {
    const TABLE: [u32; 32] = [
        0x20AC, 0, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039,
        0x0152, 0, 0x017D, 0, 0, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014, 0x02DC,
        0x2122, 0x0161, 0x203A, 0x0153, 0, 0x017E, 0x0178,
    ];
    let i = (c as u32).checked_sub(0x80)? as usize;
    TABLE
        .get(i)
        .copied()
        .filter(|&v| v != 0)
        .and_then(char::from_u32)
}

fn ligature(c: char) -> Option<&'static str> {
    Some(match c {
        '\u{132}' => "IJ",
        '\u{133}' => "ij",
        '\u{149}' => "\u{2bc}n",
        '\u{1c4}' => "D\u{17d}",
        '\u{1c5}' => "D\u{17e}",
        '\u{1c6}' => "d\u{17e}",
        '\u{1c7}' => "LJ",
        '\u{1c8}' => "Lj",
        '\u{1c9}' => "lj",
        '\u{1ca}' => "NJ",
        '\u{1cb}' => "Nj",
        '\u{1cc}' => "nj",
        '\u{fb00}' => "ff",
        '\u{fb01}' => "fi",
        '\u{fb02}' => "fl",
        '\u{fb03}' => "ffi",
        '\u{fb04}' => "ffl",
        '\u{fb05}' => "\u{17f}t",
        '\u{fb06}' => "st",
        _ => return None,
    })
}

fn removed_control(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}' | '\u{b}' | '\u{e}'..='\u{1f}' | '\u{7f}'
        | '\u{206a}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffc}')
}

/// The subset of `ftfy.fix_text` described in the module doc.
pub fn ftfy_lite(text: &str) -> String {
    let unescaped = if text.contains('<') {
        text.to_string()
    } else {
        html_unescape(text)
    };
    let unified = unescaped.replace("\r\n", "\n");
    let mut out = String::with_capacity(unified.len());
    for c in unified.chars() {
        let c = cp1252_c1(c).unwrap_or(c);
        match c {
            '\u{2bc}' | '\u{2018}'..='\u{201b}' => out.push('\''),
            '\u{201c}'..='\u{201f}' => out.push('"'),
            '\r' | '\u{2028}' | '\u{2029}' | '\u{85}' => out.push('\n'),
            '\u{3000}' => out.push(' '),
            '\u{ff01}'..='\u{ffef}' => out.push_str(&nfkc_char(c)),
            c if removed_control(c) => {}
            c => match ligature(c) {
                Some(s) => out.push_str(s),
                None => out.push(c),
            },
        }
    }
    nfc(&out)
}

/// open_clip's `_clean_lower`: `whitespace_clean(basic_clean(text)).lower()`.
pub fn open_clip_clean(text: &str) -> String {
    let basic = html_unescape(&html_unescape(&ftfy_lite(text)));
    // Python's str.split() also splits on the separators U+001C–U+001F.
    let words: Vec<&str> = basic
        .split(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
        .filter(|w| !w.is_empty())
        .collect();
    words.join(" ").to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_like_open_clip() {
        assert_eq!(
            open_clip_clean("  A cup of Coffee &amp; “latte art”,\tcorgi’s ﬁne  "),
            "a cup of coffee & \"latte art\", corgi's fine"
        );
        assert_eq!(open_clip_clean("zaha，realistic"), "zaha,realistic");
        assert_eq!(html_unescape("&#65;&#x42;&lt;&D"), "AB<&D");
        assert_eq!(open_clip_clean("&amp;amp;"), "&");
    }
}
