//! Inline SVG plots: lines (training curves, seeds overlaid) and points with error bars (sweeps).

use std::fmt::Write;

use crate::html::esc;

const W: f64 = 460.0;
const H: f64 = 250.0;
const LEFT: f64 = 58.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 26.0;
const BOTTOM: f64 = 40.0;

/// Colours for series, chosen to stay apart for colour-blind readers (Okabe–Ito).
const PALETTE: [&str; 8] = [
    "#0072b2", "#e69f00", "#009e73", "#d55e00", "#cc79a7", "#56b4e9", "#6b6b6b", "#f0e442",
];

/// The colour of series group `i`.
pub fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// One line: a name for the legend (lines of one group share it and a colour).
#[derive(Debug, Clone)]
pub struct Line {
    pub group: usize,
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One point with an error bar.
#[derive(Debug, Clone)]
pub struct Bar {
    pub x: f64,
    /// The tick label under it.
    pub label: String,
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
}

/// One row of a table drawn at (x, y), with ± one standard deviation on each axis.
#[derive(Debug, Clone)]
pub struct Spot {
    pub label: String,
    pub x: f64,
    pub x_sd: f64,
    pub y: f64,
    pub y_sd: f64,
}

struct Axes {
    x: (f64, f64),
    y: (f64, f64),
}

impl Axes {
    fn new(xs: impl Iterator<Item = f64> + Clone, ys: impl Iterator<Item = f64> + Clone) -> Axes {
        Axes {
            x: padded(range(xs), 0.0),
            y: padded(range(ys), 0.05),
        }
    }
    fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x.0) / (self.x.1 - self.x.0) * (W - LEFT - RIGHT)
    }
    fn py(&self, y: f64) -> f64 {
        H - BOTTOM - (y - self.y.0) / (self.y.1 - self.y.0) * (H - TOP - BOTTOM)
    }
}

fn range(v: impl Iterator<Item = f64>) -> (f64, f64) {
    v.filter(|x| x.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        })
}

/// A range widened by `frac` on each side, and never empty.
fn padded((lo, hi): (f64, f64), frac: f64) -> (f64, f64) {
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo <= f64::EPSILON * lo.abs().max(1.0) {
        let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.05 };
        return (lo - d, hi + d);
    }
    let d = (hi - lo) * frac;
    (lo - d, hi + d)
}

/// Up to six round tick values across `(lo, hi)`.
pub fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = hi - lo;
    if !(span.is_finite() && span > 0.0) {
        return vec![lo];
    }
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() * step;
    (0..)
        .map(|i| first + i as f64 * step)
        .take_while(|t| *t <= hi + step * 1e-9)
        .collect()
}

/// Round ticks across `(lo, hi)`, each labelled with its value.
fn numeric_ticks((lo, hi): (f64, f64)) -> Vec<(f64, String)> {
    ticks(lo, hi).into_iter().map(|t| (t, num(t))).collect()
}

fn num(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

fn frame(s: &mut String, a: &Axes, title: &str, xlabel: &str, xticks: &[(f64, String)]) {
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" \
         role=\"img\" font-family=\"sans-serif\" font-size=\"10\"><title>{t}</title>\
         <text x=\"{LEFT}\" y=\"15\" font-size=\"12\" font-weight=\"bold\">{t}</text>",
        t = esc(title)
    );
    let (x0, x1) = (LEFT, W - RIGHT);
    let (y0, y1) = (H - BOTTOM, TOP);
    let _ = write!(
        s,
        "<path d=\"M{x0},{y1}V{y0}H{x1}\" fill=\"none\" stroke=\"#888\"/>"
    );
    for t in ticks(a.y.0, a.y.1) {
        let y = a.py(t);
        let _ = write!(
            s,
            "<line x1=\"{x0}\" x2=\"{x1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            x0 - 4.0,
            y + 3.0,
            num(t)
        );
    }
    for (t, label) in xticks {
        let x = a.px(*t);
        let _ = write!(
            s,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{y0}\" y2=\"{}\" stroke=\"#888\"/>\
             <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            y0 + 4.0,
            y0 + 15.0,
            esc(label)
        );
    }
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
        (x0 + x1) / 2.0,
        H - 6.0,
        esc(xlabel)
    );
}

/// Lines against a numeric x, one colour per group, with a legend of the groups.
pub fn lines(title: &str, xlabel: &str, lines: &[Line]) -> String {
    let pts = || lines.iter().flat_map(|l| l.points.iter());
    let a = Axes::new(pts().map(|p| p.0), pts().map(|p| p.1));
    let xt = numeric_ticks(a.x);
    let mut s = String::new();
    frame(&mut s, &a, title, xlabel, &xt);
    let mut legend: Vec<(usize, &str)> = Vec::new();
    for l in lines {
        let mut d = String::new();
        for (i, (x, y)) in l.points.iter().filter(|p| p.1.is_finite()).enumerate() {
            let _ = write!(
                d,
                "{}{:.1},{:.1}",
                if i == 0 { "M" } else { "L" },
                a.px(*x),
                a.py(*y)
            );
        }
        let _ = write!(
            s,
            "<path d=\"{d}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.3\" opacity=\"0.85\"><title>{}</title></path>",
            colour(l.group),
            esc(&l.name)
        );
        // A log of one point is a dot.
        if let [(x, y)] = l.points[..]
            && y.is_finite()
        {
            let _ = write!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"><title>{}</title></circle>",
                a.px(x),
                a.py(y),
                colour(l.group),
                esc(&l.name)
            );
        }
        if !legend.iter().any(|(g, _)| *g == l.group) {
            legend.push((l.group, &l.name));
        }
    }
    if legend.len() > 1 {
        for (i, (g, name)) in legend.iter().enumerate().take(8) {
            let y = TOP + 4.0 + 12.0 * i as f64;
            let _ = write!(
                s,
                "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"3\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>",
                W - RIGHT - 150.0,
                y,
                colour(*g),
                W - RIGHT - 136.0,
                y + 4.0,
                esc(name)
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// Means with error bars; `numeric` places them by value, else evenly in order.
pub fn bars(title: &str, xlabel: &str, bars: &[Bar], numeric: bool) -> String {
    let xs: Vec<f64> = if numeric {
        bars.iter().map(|b| b.x).collect()
    } else {
        (0..bars.len()).map(|i| i as f64).collect()
    };
    let mut a = Axes::new(
        xs.iter().copied(),
        bars.iter().flat_map(|b| [b.lo, b.hi, b.mean]),
    );
    a.x = padded(a.x, 0.08);
    if a.x.1 - a.x.0 < 1e-12 {
        a.x = (a.x.0 - 1.0, a.x.1 + 1.0);
    }
    let xt: Vec<(f64, String)> = xs
        .iter()
        .zip(bars)
        .map(|(x, b)| (*x, b.label.clone()))
        .collect();
    let mut s = String::new();
    frame(&mut s, &a, title, xlabel, &xt);
    for (x, b) in xs.iter().zip(bars) {
        let (px, lo, hi, m) = (a.px(*x), a.py(b.lo), a.py(b.hi), a.py(b.mean));
        let _ = write!(
            s,
            "<g stroke=\"{c}\"><line x1=\"{px:.1}\" x2=\"{px:.1}\" y1=\"{lo:.1}\" y2=\"{hi:.1}\"/>\
             <line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{lo:.1}\" y2=\"{lo:.1}\"/><line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{hi:.1}\" y2=\"{hi:.1}\"/></g>\
             <circle cx=\"{px:.1}\" cy=\"{m:.1}\" r=\"3.5\" fill=\"{c}\"><title>{}: {} [{}, {}]</title></circle>",
            px - 4.0,
            px + 4.0,
            px - 4.0,
            px + 4.0,
            esc(&b.label),
            num(b.mean),
            num(b.lo),
            num(b.hi),
            c = colour(0)
        );
    }
    s.push_str("</svg>");
    s
}

/// Labelled points with error bars on both axes, one colour each.
pub fn scatter(title: &str, xlabel: &str, ylabel: &str, spots: &[Spot]) -> String {
    let finite = |v: f64| if v.is_finite() { v } else { 0.0 };
    let mut a = Axes::new(
        spots
            .iter()
            .flat_map(|p| [p.x - finite(p.x_sd), p.x + finite(p.x_sd)]),
        spots
            .iter()
            .flat_map(|p| [p.y - finite(p.y_sd), p.y + finite(p.y_sd)]),
    );
    a.x = padded(a.x, 0.08);
    let xt = numeric_ticks(a.x);
    let mut s = String::new();
    frame(&mut s, &a, title, xlabel, &xt);
    let _ = write!(
        s,
        "<text transform=\"rotate(-90)\" x=\"{:.1}\" y=\"11\" text-anchor=\"middle\">{}</text>",
        -(TOP + H - BOTTOM) / 2.0,
        esc(ylabel)
    );
    let mut labels: Vec<Label> = Vec::with_capacity(spots.len());
    for (i, p) in spots.iter().enumerate() {
        let (x, y) = (a.px(p.x), a.py(p.y));
        let label = place_label(&labels, x, y, p.label.chars().count());
        labels.push(label);
        let (x0, x1) = (a.px(p.x - finite(p.x_sd)), a.px(p.x + finite(p.x_sd)));
        let (y0, y1) = (a.py(p.y - finite(p.y_sd)), a.py(p.y + finite(p.y_sd)));
        let _ = write!(
            s,
            "<g stroke=\"{c}\"><line x1=\"{x0:.1}\" x2=\"{x1:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/>\
             <line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{y0:.1}\" y2=\"{y1:.1}\"/></g>\
             <circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3.5\" fill=\"{c}\"><title>{l}: {xl} {} ± {}, {yl} {} ± {}</title></circle>\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"{c}\">{l}</text>",
            num(p.x),
            num(p.x_sd),
            num(p.y),
            num(p.y_sd),
            label.x,
            label.y,
            c = colour(i),
            l = esc(&p.label),
            xl = esc(xlabel),
            yl = esc(ylabel),
        );
    }
    s.push_str("</svg>");
    s
}

/// A point's label: where its text starts (baseline) and how wide it is.
#[derive(Debug, Clone, Copy)]
struct Label {
    x: f64,
    y: f64,
    width: f64,
}

impl Label {
    fn overlaps(&self, o: &Label) -> bool {
        self.x < o.x + o.width && o.x < self.x + self.width && (self.y - o.y).abs() < 11.0
    }
}

/// Where a label of `chars` characters goes beside the point at (x, y): right of it and
/// above, else below, else left above or below — the first that overlaps none of `placed`
/// (right above when all do).
fn place_label(placed: &[Label], x: f64, y: f64, chars: usize) -> Label {
    let width = 6.0 * chars as f64;
    let candidates = [
        (x + 5.0, y - 5.0),
        (x + 5.0, y + 13.0),
        (x - 5.0 - width, y - 5.0),
        (x - 5.0 - width, y + 13.0),
    ];
    candidates
        .iter()
        .map(|&(x, y)| Label { x, y, width })
        .find(|l| !placed.iter().any(|o| l.overlaps(o)))
        .unwrap_or(Label {
            x: x + 5.0,
            y: y - 5.0,
            width,
        })
}

/// At most `n` points: means over equal runs of consecutive points (long loss logs stay small).
pub fn thin(points: &[(f64, f64)], n: usize) -> Vec<(f64, f64)> {
    if points.len() <= n || n == 0 {
        return points.to_vec();
    }
    let per = points.len().div_ceil(n);
    points
        .chunks(per)
        .map(|c| {
            let k = c.len() as f64;
            (
                c.iter().map(|p| p.0).sum::<f64>() / k,
                c.iter().map(|p| p.1).sum::<f64>() / k,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_inside_the_range() {
        assert_eq!(
            ticks(0.0, 1.0),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        let t = ticks(0.6903, 0.6941);
        assert!(t.len() >= 2 && t.len() <= 6, "{t:?}");
        assert!(t.iter().all(|v| (0.6903..=0.6941).contains(v)));
    }

    #[test]
    fn points_map_inside_the_frame_and_upwards() {
        let a = Axes::new([0.0, 10.0].into_iter(), [1.0, 2.0].into_iter());
        assert!(a.px(0.0) >= LEFT && a.px(10.0) <= W - RIGHT);
        assert!(a.py(2.0) < a.py(1.0), "larger values are higher up");
        assert!(a.py(2.0) >= TOP && a.py(1.0) <= H - BOTTOM);
    }

    #[test]
    fn a_scatter_draws_each_spot_with_both_error_bars_inside_the_frame() {
        let spots = [
            Spot {
                label: "SPO".into(),
                x: 80.0,
                x_sd: 5.0,
                y: 0.815,
                y_sd: 0.006,
            },
            Spot {
                label: "DPO <b>".into(),
                x: 40.0,
                x_sd: f64::NAN,
                y: 0.805,
                y_sd: 0.002,
            },
        ];
        let svg = scatter("score against cost", "cpu", "score", &spots);
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(
            svg.contains(">SPO</text>") && svg.contains("DPO &lt;b&gt;"),
            "{svg}"
        );
        assert!(
            svg.contains("SPO: cpu 80 ± 5, score 0.815 ± 0.006"),
            "{svg}"
        );
        // every coordinate inside the frame
        let xs: Vec<f64> = svg
            .split(' ')
            .filter_map(|a| {
                ["x=\"", "cx=\"", "x1=\"", "x2=\""]
                    .iter()
                    .find_map(|p| a.strip_prefix(p))
            })
            .map(|v| v.split('"').next().unwrap().parse().unwrap())
            .collect();
        assert!(xs.len() > 10, "{svg}");
        assert!(xs.iter().all(|v| v.abs() <= W), "{xs:?}");
        // the spot with the larger mean is higher up
        let cy = |label: &str| -> f64 {
            let at = svg.find(&format!("<title>{label}:")).unwrap();
            let head = &svg[..at];
            let c = head.rfind("cy=\"").unwrap();
            head[c + 4..].split('"').next().unwrap().parse().unwrap()
        };
        assert!(cy("SPO") < cy("DPO &lt;b&gt;"));
    }

    #[test]
    fn labels_of_nearby_points_do_not_overlap() {
        let first = place_label(&[], 100.0, 100.0, 13);
        let second = place_label(&[first], 104.0, 98.0, 4);
        assert!(!first.overlaps(&second), "{first:?} {second:?}");
        // a point far away keeps the usual place
        let far = place_label(&[first, second], 300.0, 50.0, 4);
        assert_eq!((far.x, far.y), (305.0, 45.0));
    }

    #[test]
    fn a_constant_series_still_has_a_range() {
        assert_eq!(padded((3.0, 3.0), 0.05), (2.85, 3.15));
        assert_eq!(padded((f64::INFINITY, f64::NEG_INFINITY), 0.05), (0.0, 1.0));
    }

    #[test]
    fn thinning_keeps_the_mean_of_each_run() {
        let p: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, i as f64)).collect();
        assert_eq!(
            thin(&p, 5),
            vec![(0.5, 0.5), (2.5, 2.5), (4.5, 4.5), (6.5, 6.5), (8.5, 8.5)]
        );
        assert_eq!(thin(&p, 20), p);
    }
}
