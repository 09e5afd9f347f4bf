//! The index page: every table of the targets with mean ± std, n, and each row's difference
//! from the first row with its 95% bootstrap interval (paired by seed where the seeds match).

use std::fmt::Write;

use spo_core::TableDef;
use spo_core::stats::delta_ci;
use spo_core::tables::{self, Row, TableData};

use crate::context::{Ctx, Status};
use crate::error::Result;
use crate::html::esc;
use crate::svg::{self, Spot};

/// The tables' section of the index page.
pub fn section(cx: &Ctx<'_>) -> Result<String> {
    let mut s = String::new();
    if cx.tables.is_empty() {
        s.push_str("<p class=\"note\">The targets compute no table of the pipeline.</p>");
    }
    for (t, d) in &cx.tables {
        s.push_str(&table(cx, t, d)?);
    }
    Ok(s)
}

fn table(cx: &Ctx<'_>, t: &TableDef, d: &TableData) -> Result<String> {
    let mut s = String::new();
    let _ = write!(
        s,
        "<h2 id=\"{}\">{}</h2>\n<table class=\"results\" data-table=\"{}\"><tr><th class=\"l\" rowspan=\"2\"></th>",
        esc(&t.name),
        esc(&t.title),
        esc(&t.name)
    );
    let base = d.rows.first();
    for m in &t.metrics {
        let _ = write!(s, "<th colspan=\"3\">{}</th>", esc(m));
    }
    s.push_str("</tr><tr>");
    let base_label = base.map_or(String::new(), |b| esc(&b.label));
    for _ in &t.metrics {
        let _ = write!(
            s,
            "<th>mean ± std</th><th>n</th><th title=\"minus {base_label}\">Δ [95% CI]</th>"
        );
    }
    s.push_str("</tr>\n");
    let pages = row_pages(cx, t)?;
    for (r, page) in d.rows.iter().zip(&pages) {
        let label = match page {
            Some(p) => format!("<a href=\"{p}\">{}</a>", esc(&r.label)),
            None => esc(&r.label),
        };
        let _ = write!(
            s,
            "<tr data-row=\"{}\"><td class=\"l\">{label}</td>",
            esc(&r.label)
        );
        for m in &t.metrics {
            s.push_str(&value_cells(t, d, r, base, m));
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</table>\n");
    let lower = if t.lower_is_better.is_empty() {
        String::new()
    } else {
        format!(
            "; lower is better for {}",
            t.lower_is_better
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let _ = write!(
        s,
        "<p class=\"note\">{}; best in bold{lower}. Δ: the row minus {base_label}, with its 95% bootstrap \
         interval (paired by seed unless marked), green (better) or red (worse) where it excludes 0.</p>",
        esc(&d.runs_note)
    );
    if let Some((x, y)) = &t.plot {
        s.push_str(&plot(d, x, y));
    }
    if !d.missing.is_empty() {
        let _ = write!(
            s,
            "<p class=\"warn\">{} cells have no run yet: {}. Compute them with <code>{}</code>.</p>",
            d.missing.len(),
            esc(&d.missing.join(", ")),
            esc(&d.command)
        );
    }
    Ok(s)
}

/// The table's `plot`: each row with both metrics at (x, y); rows lacking one are named.
fn plot(d: &TableData, x: &str, y: &str) -> String {
    let mut spots = Vec::new();
    let mut left_out = Vec::new();
    for r in &d.rows {
        match (r.values.get(x), r.values.get(y)) {
            (Some(vx), Some(vy)) => spots.push(Spot {
                label: r.label.clone(),
                x: vx.mean,
                x_sd: vx.std,
                y: vy.mean,
                y_sd: vy.std,
            }),
            _ => left_out.push(r.label.as_str()),
        }
    }
    let mut s = format!(
        "<div class=\"plots\">{}</div>",
        svg::scatter(&format!("{y} against {x}"), x, y, &spots)
    );
    if !left_out.is_empty() {
        let _ = write!(
            s,
            "<p class=\"note\">Not drawn (no {x} or {y}): {}.</p>",
            esc(&left_out.join(", "))
        );
    }
    s
}

/// The value, n and Δ cells of one metric in one row.
fn value_cells(t: &TableDef, d: &TableData, r: &Row, base: Option<&Row>, m: &str) -> String {
    let Some(v) = r.values.get(m) else {
        return "<td>—</td><td>0</td><td></td>".into();
    };
    let text = if v.n > 1 {
        format!("{:.*} ± {:.*}", t.digits, v.mean, t.digits, v.std)
    } else {
        format!("{:.*}", t.digits, v.mean)
    };
    let class = if d.is_best(m, r) {
        " class=\"best\""
    } else {
        ""
    };
    let mut s = format!(
        "<td{class} data-metric=\"{}\" data-mean=\"{}\" data-std=\"{}\" data-n=\"{}\">{text}</td><td>{}</td>",
        esc(m),
        v.mean,
        v.std,
        v.n,
        v.n
    );
    let delta = base
        .filter(|b| !std::ptr::eq(*b, r))
        .and_then(|b| Some((b.per_seed.get(m)?, b.values.get(m)?)));
    match delta {
        Some((bs, bv)) => {
            let dv = v.mean - bv.mean;
            let (ci, paired) = delta_ci(bs, r.per_seed.get(m).map_or(&[][..], Vec::as_slice));
            let lower = t.lower_is_better.contains(m);
            let (ci_text, class) = match ci {
                Some((lo, hi)) => {
                    let class = if lo > 0.0 || hi < 0.0 {
                        if (lo > 0.0) != lower { "dec" } else { "neg" }
                    } else {
                        ""
                    };
                    (
                        format!(
                            " <span class=\"ci\">[{lo:+.*}, {hi:+.*}]{}</span>",
                            t.digits,
                            t.digits,
                            if paired { "" } else { " unpaired" }
                        ),
                        class,
                    )
                }
                None => (String::new(), ""),
            };
            let _ = write!(s, "<td class=\"{class}\">{dv:+.*}{ci_text}</td>", t.digits);
        }
        None => s.push_str("<td></td>"),
    }
    s
}

/// Each row's page: the cell page of its first seed.
fn row_pages(cx: &Ctx<'_>, t: &TableDef) -> Result<Vec<Option<String>>> {
    Ok(tables::rows_of(cx.pipe, cx.registry, t)?
        .iter()
        .map(|(_, stage, variant)| {
            let node = cx.plan.find(cx.pipe, stage, variant).into_iter().next()?;
            let i = cx.plan.get(&node.cell, node.seed)?;
            Some(cx.cells[i].page.clone())
        })
        .collect())
}

/// How many cells of the plan are in each state, for the page's header.
pub fn counts(cx: &Ctx<'_>) -> String {
    let order = [
        Status::Done,
        Status::Running,
        Status::Queued,
        Status::Stale,
        Status::Missing,
        Status::Damaged,
    ];
    let parts: Vec<String> = order
        .iter()
        .filter_map(|st| {
            let n = cx.cells.iter().filter(|c| c.status == *st).count();
            (n > 0).then(|| format!("{n} {}", st.badge()))
        })
        .collect();
    format!("{} cells: {}", cx.cells.len(), parts.join(", "))
}
