//! The samples page: for each table whose rows lead to images, the same prompts side by side
//! across the rows (methods) and seeds, each image with its scores.

use std::collections::BTreeMap;
use std::fmt::Write;

use spo_core::tables::TableData;
use spo_core::{FileEntry, Manifest, TableDef};

use crate::columns::{Column, Columns};
use crate::context::Ctx;
use crate::files::{self, Shape};
use crate::html::esc;
use crate::site::Site;

/// Most image rows read from one file.
const MAX_ROWS: usize = 100_000;

/// A row's images of one seed: the image table and the per-image records beside it, indexed
/// once.
struct Run {
    seed: Option<u64>,
    images: Columns,
    records: Option<Columns>,
    /// The image rows of each prompt (by [`prompt_key`]), in table order.
    by_prompt: BTreeMap<String, Vec<usize>>,
    /// The record row of each image identity ([`image_id`]), the first where several match.
    record_of: BTreeMap<ImageId, usize>,
}

/// An image's `prompt_index` and `seed`, as bit patterns (they match images to records).
type ImageId = (Option<u64>, Option<u64>);

fn image_id(c: &Columns, row: usize) -> ImageId {
    (
        c.number("prompt_index", row).map(f64::to_bits),
        c.number("seed", row).map(f64::to_bits),
    )
}

/// The samples page's body.
pub fn page(cx: &Ctx<'_>, site: &mut Site) -> String {
    let mut s = String::new();
    for (t, d) in &cx.tables {
        if let Some(section) = table_gallery(cx, site, t, d) {
            s.push_str(&section);
        }
    }
    if s.is_empty() {
        s.push_str(
            "<p class=\"note\">No table of the targets has rows that lead to images yet.</p>",
        );
    }
    s
}

fn table_gallery(cx: &Ctx<'_>, site: &mut Site, t: &TableDef, d: &TableData) -> Option<String> {
    let rows: Vec<(&str, Vec<Run>)> = d
        .rows
        .iter()
        .map(|r| {
            let runs = r
                .runs
                .iter()
                .filter_map(|(seed, key)| run(cx, *seed, key))
                .collect();
            (r.label.as_str(), runs)
        })
        .collect();
    let first = rows.iter().find_map(|(_, runs)| runs.first())?;
    let prompts = first_prompts(&first.images, cx.opts.prompts);
    let mut s = format!(
        "<h2 id=\"{}\">{}</h2>\n<p class=\"note\">The first {} prompts; in each column one line per seed, \
         one image per sample of that seed, with its scores.</p>\n<table class=\"gallery\"><tr><th class=\"l\">prompt</th>",
        esc(&t.name),
        esc(&t.title),
        prompts.len()
    );
    for (label, _) in &rows {
        let _ = write!(s, "<th class=\"l\">{}</th>", esc(label));
    }
    s.push_str("</tr>\n");
    for (key, text) in &prompts {
        let _ = write!(
            s,
            "<tr><td class=\"l\">{}</td>",
            esc(&format!("#{key} {text}"))
        );
        for (_, runs) in &rows {
            s.push_str("<td class=\"l\">");
            for r in runs {
                let _ = write!(
                    s,
                    "<div>{}",
                    r.seed
                        .map_or(String::new(), |x| format!("<small>seed {x}</small><br>"))
                );
                for &i in r.by_prompt.get(key).into_iter().flatten() {
                    s.push_str(&figure(site, r, i, &t.metrics));
                }
                s.push_str("</div>");
            }
            s.push_str("</td>");
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</table>\n");
    Some(s)
}

/// The images behind a scored cell (its own image table or one of its inputs'), with the
/// per-image records of the cell itself.
fn run(cx: &Ctx<'_>, seed: Option<u64>, key: &str) -> Option<Run> {
    let m = cx.manifest(key)?;
    let (img_key, img_file) = image_source(cx, &m)?;
    let images = files::read_table(&cx.store.cell_dir(&img_key), &img_file, MAX_ROWS, false)
        .map_err(|e| cx.problem(e))
        .ok()?;
    let records = files::with_shape(&m, Shape::PerImage).next().and_then(|f| {
        files::read_table(&cx.store.cell_dir(&m.key), f, MAX_ROWS, true)
            .map_err(|e| cx.problem(e))
            .ok()
    });
    let mut by_prompt: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for row in 0..images.rows {
        by_prompt
            .entry(prompt_key(&images, row))
            .or_default()
            .push(row);
    }
    let mut record_of = BTreeMap::new();
    if let Some(rec) = &records {
        for i in 0..rec.rows {
            record_of.entry(image_id(rec, i)).or_insert(i);
        }
    }
    Some(Run {
        seed,
        images,
        records,
        by_prompt,
        record_of,
    })
}

fn image_source(cx: &Ctx<'_>, m: &Manifest) -> Option<(String, FileEntry)> {
    std::iter::once(m.clone())
        .chain(m.inputs.iter().filter_map(|i| cx.manifest(&i.key)))
        .find_map(|im| {
            files::with_shape(&im, Shape::Images)
                .next()
                .map(|f| (im.key.clone(), f.clone()))
        })
}

/// What groups an image table's rows into prompts: `prompt_index`, else the prompt text.
fn prompt_key(c: &Columns, row: usize) -> String {
    c.number("prompt_index", row)
        .map(|v| format!("{v}"))
        .or_else(|| c.text("prompt", row).map(str::to_owned))
        .unwrap_or_else(|| row.to_string())
}

/// The first `n` prompts of an image table, in order: (key, text).
fn first_prompts(c: &Columns, n: usize) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for row in 0..c.rows {
        let key = prompt_key(c, row);
        if !out.iter().any(|(k, _)| *k == key) {
            if out.len() == n {
                break;
            }
            out.push((key, c.text("prompt", row).unwrap_or_default().to_owned()));
        }
    }
    out
}

/// One image with the scores of its record (matched on `prompt_index` and `seed`).
fn figure(site: &mut Site, r: &Run, row: usize, metrics: &[String]) -> String {
    let Some(Column::Bytes(images)) = r.images.get("image") else {
        return String::new();
    };
    let Some(bytes) = images.get(row).and_then(Option::as_deref) else {
        return String::new();
    };
    let Some(ext) = crate::columns::image_ext(bytes) else {
        return "<figure>(not an image)</figure>".into();
    };
    let path = site.asset(bytes, ext);
    let caption = match (&r.records, r.record_of.get(&image_id(&r.images, row))) {
        (Some(rec), Some(&i)) => metrics
            .iter()
            .filter_map(|m| rec.number(m, i).map(|v| format!("{m} {v:.3}")))
            .collect::<Vec<_>>()
            .join("<br>"),
        _ => String::new(),
    };
    let seed = r
        .images
        .number("seed", row)
        .map_or(String::new(), |s| format!("image seed {s}"));
    format!(
        "<figure><img class=\"px\" src=\"{path}\" alt=\"{}\" title=\"{}\"><figcaption>{caption}</figcaption></figure>",
        esc(r.images.text("prompt", row).unwrap_or("image")),
        esc(&seed)
    )
}
