//! The cells page (the stage graph, every cell with its state) and one page per cell: params,
//! inputs by key, files with sizes and digests, metrics, timings, host, version, and what the
//! cell holds to look at.

use std::collections::BTreeMap;
use std::fmt::Write;

use spo_core::{FileInfo, Manifest, Node};

use crate::context::{Ctx, Status};
use crate::curves::{self, Member};
use crate::files::{self, Shape};
use crate::html::{Frame, esc, page};
use crate::site::Site;

/// Images shown from one image table on a cell page.
const CELL_IMAGES: usize = 48;

/// The cells page's body.
pub fn dag_page(cx: &Ctx<'_>) -> String {
    let mut s = graph(cx);
    let stages = cx.stages();
    for stage in stages {
        let name = &cx.pipe.stages[stage].name;
        let _ = write!(
            s,
            "<h2 id=\"stage-{0}\">{0} <small class=\"note\">kind {1}</small></h2>\n<table><tr><th class=\"l\">cell</th><th>state</th><th class=\"l\">key</th><th>seconds</th></tr>\n",
            esc(name),
            esc(&cx.pipe.stages[stage].kind)
        );
        for (i, n) in cx.plan.nodes.iter().enumerate() {
            if n.stage != stage {
                continue;
            }
            let c = &cx.cells[i];
            let m = (c.status == Status::Done)
                .then(|| c.run_key.as_deref().and_then(|k| cx.manifest(k)))
                .flatten();
            let _ = writeln!(
                s,
                "<tr><td class=\"l\"><a href=\"{}\">{}</a></td><td>{}</td><td class=\"l\"><code>{}</code></td><td>{}</td></tr>",
                c.page,
                esc(&n.display()),
                c.status.badge(),
                c.run_key.as_deref().map_or("", |k| &k[..k.len().min(12)]),
                m.map_or(String::new(), |m| format!("{:.1}", m.seconds))
            );
        }
        s.push_str("</table>\n");
    }
    s
}

/// The stage graph as SVG: stages in columns by depth, coloured by their cells' states.
fn graph(cx: &Ctx<'_>) -> String {
    let stages = cx.stages();
    let index_of = |name: &str| cx.pipe.stage_index(name);
    let mut depth: BTreeMap<usize, usize> = BTreeMap::new();
    // Stages are in dependency order in the pipeline, so one pass fixes every depth.
    for &st in &stages {
        let d = cx.pipe.stages[st]
            .needs
            .iter()
            .filter_map(|n| index_of(n).and_then(|i| depth.get(&i)))
            .map(|d| d + 1)
            .max()
            .unwrap_or(0);
        depth.insert(st, d);
    }
    let mut rows: BTreeMap<usize, usize> = BTreeMap::new();
    let mut pos: BTreeMap<usize, (f64, f64)> = BTreeMap::new();
    for &st in &stages {
        let d = depth[&st];
        let r = rows.entry(d).or_insert(0);
        pos.insert(st, (10.0 + d as f64 * 160.0, 10.0 + *r as f64 * 34.0));
        *r += 1;
    }
    let w = 10.0 + (rows.len().max(1)) as f64 * 160.0;
    let h = 20.0 + rows.values().max().copied().unwrap_or(1) as f64 * 34.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
         role=\"img\" font-family=\"sans-serif\" font-size=\"11\"><title>stage graph</title>"
    );
    for &st in &stages {
        let (x, y) = pos[&st];
        for need in &cx.pipe.stages[st].needs {
            if let Some((px, py)) = index_of(need).and_then(|i| pos.get(&i)) {
                let _ = write!(
                    s,
                    "<path d=\"M{},{} C{},{} {},{} {},{}\" fill=\"none\" stroke=\"#9aa\"/>",
                    px + 130.0,
                    py + 13.0,
                    px + 145.0,
                    py + 13.0,
                    x - 15.0,
                    y + 13.0,
                    x,
                    y + 13.0
                );
            }
        }
    }
    for &st in &stages {
        let (x, y) = pos[&st];
        let states: Vec<Status> = cx
            .plan
            .nodes
            .iter()
            .zip(&cx.cells)
            .filter(|(n, _)| n.stage == st)
            .map(|(_, c)| c.status)
            .collect();
        let done = states.iter().filter(|s| **s == Status::Done).count();
        let fill = if states.contains(&Status::Damaged) {
            "#f4c7c3"
        } else if states.contains(&Status::Running) {
            "#cfe3ff"
        } else if done == states.len() {
            "#d6efdc"
        } else {
            "#f6e0c0"
        };
        let name = &cx.pipe.stages[st].name;
        let short: String = name.chars().take(17).collect();
        let _ = write!(
            s,
            "<a href=\"#stage-{n}\"><rect x=\"{x}\" y=\"{y}\" width=\"130\" height=\"26\" rx=\"4\" fill=\"{fill}\" stroke=\"#667\"/>\
             <text x=\"{}\" y=\"{}\">{} {done}/{}</text><title>{n}: {done} of {} cells cached</title></a>",
            x + 5.0,
            y + 17.0,
            esc(&short),
            states.len(),
            states.len(),
            n = esc(name)
        );
    }
    s.push_str("</svg>");
    s
}

/// Writes one page per cell of the plan.
pub fn cell_pages(cx: &Ctx<'_>, site: &mut Site, frame: Frame<'_>) {
    for (i, n) in cx.plan.nodes.iter().enumerate() {
        let c = &cx.cells[i];
        let mut body = format!(
            "<p>State {} · stage <a href=\"../dag.html#stage-{}\">{}</a> · kind <code>{}</code>{}</p>\n",
            c.status.badge(),
            esc(&n.stage_name),
            esc(&n.stage_name),
            esc(&n.kind),
            n.seed.map_or(String::new(), |s| format!(" · seed {s}"))
        );
        if c.status != Status::Done {
            let _ = writeln!(
                body,
                "<p>Not in the store at its current key. Compute it with <code>spo-pipe run {}</code>.{}</p>",
                esc(&selector(n)),
                if c.run_key.is_some() {
                    " Below: its latest run, from before its key changed."
                } else {
                    ""
                }
            );
        }
        if c.status == Status::Damaged {
            body.push_str(
                "<p class=\"warn\">Its manifest cannot be read: run <code>spo-pipe verify --repair</code>.</p>",
            );
        }
        match c.run_key.as_deref().and_then(|k| cx.manifest(k)) {
            Some(m) => body.push_str(&committed(cx, site, n, &m)),
            None => body.push_str(&params_table(
                n.params.0.iter().map(|(k, v)| (k.clone(), v.to_string())),
            )),
        }
        site.put(c.page.clone(), page(frame, &n.display(), &body));
    }
}

/// The cell's selector for `spo-pipe run`.
fn selector(n: &Node) -> String {
    match n.label.split_once('[') {
        Some((stage, rest)) => format!("'{stage}@{}'", rest.trim_end_matches(']')),
        None => n.label.clone(),
    }
}

fn params_table(params: impl Iterator<Item = (String, String)>) -> String {
    let mut s = String::from("<h2>Params</h2><table>");
    for (k, v) in params {
        let _ = write!(
            s,
            "<tr><td class=\"l\">{}</td><td class=\"l\"><code>{}</code></td></tr>",
            esc(&k),
            esc(&v)
        );
    }
    s.push_str("</table>\n");
    s
}

fn committed(cx: &Ctx<'_>, site: &mut Site, n: &Node, m: &Manifest) -> String {
    let mut s = format!(
        "<table><tr><td class=\"l\">key</td><td class=\"l\"><code>{}</code></td></tr>\
         <tr><td class=\"l\">content digest</td><td class=\"l\"><code>{}</code></td></tr>\
         <tr><td class=\"l\">ran</td><td class=\"l\">{:.1} s from unix time {:.0} on {} with spo-pipe {} (kind v{})</td></tr></table>\n",
        esc(&m.key),
        esc(&m.digest),
        m.seconds,
        m.started,
        esc(&m.host),
        esc(&m.tool_version),
        m.version
    );
    s.push_str(&params_table(
        m.params.0.iter().map(|(k, v)| (k.clone(), v.to_string())),
    ));
    if !m.inputs.is_empty() {
        s.push_str("<h2>Inputs</h2><table><tr><th class=\"l\">stage</th><th class=\"l\">key</th><th class=\"l\">content</th></tr>");
        for i in &m.inputs {
            let key = match cx.page_of_key(&i.key) {
                Some(p) => format!("<a href=\"../{p}\"><code>{}</code></a>", esc(&i.key)),
                None => format!("<code>{}</code>", esc(&i.key)),
            };
            let _ = write!(
                s,
                "<tr><td class=\"l\">{}</td><td class=\"l\">{key}</td><td class=\"l\"><code>{}</code></td></tr>",
                esc(&i.stage),
                esc(&i.digest[..i.digest.len().min(16)])
            );
        }
        s.push_str("</table>\n");
    }
    s.push_str("<h2>Files</h2><table><tr><th class=\"l\">file</th><th>bytes</th><th class=\"l\">sha256</th><th class=\"l\">holds</th></tr>");
    for f in &m.files {
        let holds = match &f.info {
            Some(FileInfo::Parquet { rows, columns }) => {
                format!("{rows} rows: {}", columns.join(", "))
            }
            Some(FileInfo::Safetensors { tensors }) => format!("{} tensors", tensors.len()),
            Some(FileInfo::Png { width, height }) => format!("{width}×{height} PNG"),
            None => String::new(),
        };
        let _ = write!(
            s,
            "<tr><td class=\"l\">{}</td><td>{}</td><td class=\"l\"><code>{}</code></td><td class=\"l\">{}</td></tr>",
            esc(&f.path),
            f.bytes,
            esc(&f.sha256),
            esc(&holds)
        );
    }
    s.push_str("</table>\n");
    if !m.metrics.is_empty() {
        s.push_str("<h2>Metrics</h2><table>");
        for (k, v) in &m.metrics {
            let _ = write!(s, "<tr><td class=\"l\">{}</td><td>{v}</td></tr>", esc(k));
        }
        s.push_str("</table>\n");
    }
    s.push_str(&pictures(cx, site, m));
    if files::with_shape(m, Shape::Curve).next().is_some() {
        s.push_str("<h2>Curves</h2>");
        s.push_str(&curves::plots(
            cx,
            &[Member {
                group: 0,
                name: n.display(),
                manifest: m.clone(),
            }],
        ));
    }
    s
}

/// The cell's PNG files and the first images of its image tables.
fn pictures(cx: &Ctx<'_>, site: &mut Site, m: &Manifest) -> String {
    let dir = cx.store.cell_dir(&m.key);
    let mut s = String::new();
    for f in files::with_shape(m, Shape::Png) {
        match files::read_checked(&dir, f) {
            Ok(bytes) => {
                let p = site.asset(&bytes, "png");
                let _ = write!(
                    s,
                    "<figure><img src=\"../{p}\" alt=\"{0}\"><figcaption>{0}</figcaption></figure>",
                    esc(&f.path)
                );
            }
            Err(e) => {
                let _ = write!(
                    s,
                    "<p class=\"warn\">{}: run <code>spo-pipe verify</code>.</p>",
                    esc(&e)
                );
                cx.problem(e);
            }
        }
    }
    for f in files::with_shape(m, Shape::Images) {
        let table = match files::read_table(&dir, f, CELL_IMAGES, false) {
            Ok(t) => t,
            Err(e) => {
                cx.problem(e);
                continue;
            }
        };
        let Some(crate::columns::Column::Bytes(images)) = table.get("image") else {
            continue;
        };
        let _ = write!(s, "<h3>{} (first {})</h3>", esc(&f.path), images.len());
        for (row, img) in images.iter().enumerate() {
            let Some((bytes, ext)) = img
                .as_deref()
                .and_then(|b| crate::columns::image_ext(b).map(|e| (b, e)))
            else {
                continue;
            };
            let p = site.asset(bytes, ext);
            let _ = write!(
                s,
                "<figure><img class=\"px\" src=\"../{p}\" alt=\"{0}\" title=\"{0}\"></figure>",
                esc(table.text("prompt", row).unwrap_or("image"))
            );
        }
    }
    if s.is_empty() {
        s
    } else {
        format!("<h2>Images</h2>{s}")
    }
}
