//! HTML text: escaping, and the frame every page shares.

use std::fmt::Write;

/// Escapes text for an HTML element or a quoted attribute.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The site's sections, in the order of the navigation bar: (file, title).
pub const SECTIONS: [(&str, &str); 5] = [
    ("index.html", "Tables"),
    ("samples.html", "Samples"),
    ("curves.html", "Curves"),
    ("sweeps.html", "Sweeps"),
    ("dag.html", "Cells"),
];

/// The tab icon, inline (so no page asks a server for `/favicon.ico`).
pub const ICON: &str = "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'%3E%3Crect width='16' height='16' rx='3' fill='%231d2330'/%3E%3Cpath d='M3 11l3-4 3 2 4-5' stroke='%239fd0ff' stroke-width='2' fill='none'/%3E%3C/svg%3E";

/// How a page is framed.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// The pipeline's name, shown in every title.
    pub pipeline: &'a str,
    /// `../` for pages one folder down, so links and the style sheet resolve from `file://`.
    pub root: &'a str,
    /// Reload every few seconds (while a run is live, when served).
    pub refresh: bool,
}

/// A whole page: head, navigation and `body`.
pub fn page(f: Frame<'_>, title: &str, body: &str) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{}\
         <title>{} · {}</title><link rel=\"icon\" href=\"{ICON}\"><link rel=\"stylesheet\" href=\"{}assets/style.css\"></head>\n<body>\
         <nav><b>spo-pipe</b> · {}",
        if f.refresh {
            "<meta http-equiv=\"refresh\" content=\"2\">"
        } else {
            ""
        },
        esc(title),
        esc(f.pipeline),
        f.root,
        esc(f.pipeline)
    );
    for (file, name) in SECTIONS {
        let _ = write!(s, " <a href=\"{}{file}\">{name}</a>", f.root);
    }
    let _ = write!(
        s,
        "</nav>\n<main>\n<h1>{}</h1>\n{body}\n</main></body></html>\n",
        esc(title)
    );
    s
}

/// The style sheet.
pub const STYLE: &str = "\
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#fbfbfc}
nav{background:#1d2330;color:#fff;padding:.6em 1.2em}nav a{color:#9fd0ff;margin-left:1em}
main{padding:1em 1.5em;max-width:1400px}h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #d8dbe2;padding:.25em .55em;text-align:right;vertical-align:top}
table.results td{white-space:nowrap}table.results .ci{display:block}
th{background:#eef0f4}td.l,th.l{text-align:left}.best{font-weight:700;background:#e6f4ea}
.ci{color:#5c6270;font-size:.85em}.dec{color:#0a6b2c}.neg{color:#a1261a}
.note{color:#5c6270}.warn{background:#fff3cd;border:1px solid #e0c36a;padding:.5em .8em}
code{background:#eef0f4;padding:0 .25em}
.st{display:inline-block;padding:0 .4em;border-radius:3px;font-size:.85em}
.cached{background:#d6efdc}.running{background:#cfe3ff}.queued{background:#eee}
.missing,.stale{background:#f6e0c0}.damaged{background:#f4c7c3}
img.px{image-rendering:pixelated;width:64px;height:64px;margin:1px}
figure{display:inline-block;margin:2px 6px 6px 0;text-align:center;font-size:.75em}
figure figcaption{max-width:140px}svg{background:#fff;border:1px solid #d8dbe2;margin:.3em .6em .3em 0}
.plots{display:flex;flex-wrap:wrap}
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_names_is_text() {
        assert_eq!(esc("<b a=\"1\">&'"), "&lt;b a=&quot;1&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn pages_one_folder_down_link_back_to_the_root() {
        let f = Frame {
            pipeline: "p",
            root: "../",
            refresh: false,
        };
        let p = page(f, "t", "");
        assert!(p.contains("href=\"../assets/style.css\""));
        assert!(p.contains("href=\"../dag.html\""));
        assert!(!p.contains("refresh"));
    }
}
