//! The whole default DAG, shrunken to tiny steps, end to end: every table of pipeline.toml is
//! filled, a second run computes nothing, and the report of it is whole, in a real browser too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

mod support;

/// Overrides that keep every stage of the default pipeline but make it take seconds.
const TINY: &[&str] = &[
    "pipeline.seeds=[0,1]",
    "world.train_prompts=200",
    "world.validation_prompts=20",
    "text-encoder.weights=\"train\"",
    "text-encoder.steps=10",
    "clip.steps=10",
    "pickscore.steps=3",
    "aesthetic.steps=3",
    "base.weights=\"train\"",
    "base.steps=2",
    "base.batch=8",
    "spm.steps=2",
    "spm.batch=4",
    "spo.rounds=1",
    "spo.prompts=2",
    "spo.steps=4",
    "sample-base.prompts=2",
    "sample-base.per_prompt=1",
    "sample-base.steps=4",
    "sample-spo.prompts=2",
    "sample-spo.per_prompt=1",
    "sample-spo.steps=4",
    "calibrate-judges.pairs=16",
    "calibrate-judges.pool_prompts=2",
    "dpo.steps=2",
    "dpo.batch=2",
    "sample-dpo.prompts=2",
    "sample-dpo.per_prompt=1",
    "sample-dpo.steps=4",
    "d3po.rounds=1",
    "d3po.prompts=2",
    "d3po.steps=4",
    "sample-d3po.prompts=2",
    "sample-d3po.per_prompt=1",
    "sample-d3po.steps=4",
    "ddpo.rounds=1",
    "ddpo.prompts=2",
    "ddpo.steps=4",
    "sample-ddpo.prompts=2",
    "sample-ddpo.per_prompt=1",
    "sample-ddpo.steps=4",
    "mapo.steps=2",
    "mapo.batch=2",
    "sample-mapo.prompts=2",
    "sample-mapo.per_prompt=1",
    "sample-mapo.steps=4",
    "gradspo.rounds=1",
    "gradspo.prompts=2",
    "gradspo.steps=4",
    "sample-gradspo.prompts=2",
    "sample-gradspo.per_prompt=1",
    "sample-gradspo.steps=4",
    "curve-spo.prompts=2",
    "curve-spo.per_prompt=1",
    "curve-spo.steps=4",
    "curve-gradspo.prompts=2",
    "curve-gradspo.per_prompt=1",
    "curve-gradspo.steps=4",
    "curve-dpo.prompts=2",
    "curve-dpo.per_prompt=1",
    "curve-dpo.steps=4",
    "curve-mapo.prompts=2",
    "curve-mapo.per_prompt=1",
    "curve-mapo.steps=4",
    "curve-d3po.prompts=2",
    "curve-d3po.per_prompt=1",
    "curve-d3po.steps=4",
    "curve-ddpo.prompts=2",
    "curve-ddpo.per_prompt=1",
    "curve-ddpo.steps=4",
    "base-xl.weights=\"train\"",
    "base-xl.steps=2",
    "base-xl.batch=8",
    "spm-xl.steps=2",
    "spm-xl.batch=4",
    "mspo-xl.rounds=1",
    "mspo-xl.prompts=2",
    "mspo-xl.steps=4",
    "dpo-xl.steps=2",
    "dpo-xl.batch=2",
    "mapo-xl.steps=2",
    "mapo-xl.batch=2",
    "sample-base-xl.prompts=2",
    "sample-base-xl.per_prompt=1",
    "sample-base-xl.steps=4",
    "sample-mspo-xl.prompts=2",
    "sample-mspo-xl.per_prompt=1",
    "sample-mspo-xl.steps=4",
    "sample-dpo-xl.prompts=2",
    "sample-dpo-xl.per_prompt=1",
    "sample-dpo-xl.steps=4",
    "sample-mapo-xl.prompts=2",
    "sample-mapo-xl.per_prompt=1",
    "sample-mapo-xl.steps=4",
];

fn spo_pipe(store: &Path, args: &[&str]) -> Output {
    support::default_pipeline(store, TINY, args)
        .output()
        .expect("spawn spo-pipe")
}

/// Held by each test while it uses the shared store, so that one's reads and checks never
/// overlap another's run.
static STORE_USE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn use_store() -> std::sync::MutexGuard<'static, ()> {
    STORE_USE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The store of one tiny run of every table (`runs/` in a directory kept for the whole test
/// binary), and that run's output.
fn paper() -> &'static (PathBuf, Output) {
    static STORE: OnceLock<(PathBuf, Output)> = OnceLock::new();
    STORE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e");
        let _ = std::fs::remove_dir_all(&dir);
        let store = dir.join("runs");
        let mut c = support::default_pipeline(&store, TINY, &["run", "paper", "--jobs", "2"]);
        c.env_remove("SPO_PIPE_REPORT");
        (store, c.output().expect("spawn spo-pipe"))
    })
}

#[test]
fn the_default_dag_fills_every_table_and_a_second_run_does_nothing() {
    let _store = use_store();
    let (store, out) = paper();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("report: ") && store.with_file_name("report").join("index.html").is_file(),
        "the run ends with its report:\n{err}"
    );
    // the cost table's plot: each method's score reached against its CPU seconds
    let index = std::fs::read_to_string(store.with_file_name("report").join("index.html")).unwrap();
    let plot = index
        .split("<title>score_final against total_cpu_seconds</title>")
        .nth(1)
        .and_then(|rest| rest.split("</svg>").next())
        .unwrap_or_else(|| panic!("no cost plot in the report"));
    assert_eq!(plot.matches("<circle").count(), 6, "{plot}");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("Table 1") && printed.contains("Table 2") && printed.contains("Table 9"),
        "the run prints its tables:\n{printed}"
    );

    let out = spo_pipe(store, &["tables"]);
    let tables = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "missing cells:\n{}\n{tables}",
        String::from_utf8_lossy(&out.stderr)
    );
    for t in [
        "Table 1",
        "Table 2",
        "Table 3",
        "SPO's win rate",
        "Table 4",
        "Table 5",
        "Table 6",
        "Table 7",
        "Table 8",
        "Table 9",
        "Calibration: the base model",
        "Calibration: the judges",
        "Calibration: SPO",
        "Training cost",
    ] {
        assert!(tables.contains(t), "{t} not rendered:\n{tables}");
    }
    // Table 3's categories need prompts of their kind, which the two tiny prompts may lack; a
    // method whose curve never reaches SPO's midpoint has no CPU seconds to it.
    for section in tables
        .split("\n**")
        .filter(|t| !t.starts_with("Table 3") && !t.starts_with("Training cost"))
    {
        assert!(!section.contains('—'), "a table cell is empty:\n{section}");
    }
    assert!(tables.contains("geneval_mean"), "{tables}");
    assert!(
        tables.contains("| SPO |")
            && tables.contains("| k=6 |")
            && tables.contains("| t_range=[250,500] |"),
        "{tables}"
    );

    // The cost curve's ends are Table 2's rows (same prompts, seeds and sampler), and every
    // method's training cost was measured.
    let numbers = csv_numbers(store);
    let mean = |t: &str, r: &str, m: &str| {
        numbers
            .get(&(t.to_owned(), r.to_owned(), m.to_owned()))
            .map(|v| v.0.clone())
            .unwrap_or_else(|| panic!("no {t} / {r} / {m}"))
    };
    for (row, table2_row) in [
        ("SPO", "SPO"),
        ("Diffusion-DPO", "Diffusion-DPO"),
        ("DDPO", "DDPO"),
    ] {
        assert_eq!(
            mean("cost", row, "score_final"),
            mean("table2", table2_row, "aesthetic")
        );
        assert_eq!(
            mean("cost", row, "score_base"),
            mean("table2", "Base model", "aesthetic")
        );
    }
    for row in ["SPO", "GradSPO", "Diffusion-DPO", "MaPO", "D3PO", "DDPO"] {
        let cpu: f64 = mean("cost", row, "total_cpu_seconds").parse().unwrap();
        assert!(cpu > 0.0, "{row}: {cpu} CPU seconds");
    }
    let judged: f64 = mean("cost", "SPO", "judge_cpu_seconds").parse().unwrap();
    assert!(judged > 0.0, "SPO's cost includes its SPM's");
    // (printed as 0, not −0)
    assert_eq!(
        mean("cost", "DDPO", "judge_cpu_seconds"),
        "0",
        "DDPO trains no judge of its own"
    );

    let out = spo_pipe(store, &["run", "paper"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains(" 0 ran,"),
        "the second run computed something:\n{err}"
    );
    assert!(spo_pipe(store, &["verify"]).status.success());
}

/// `spo-pipe tables NAME --format csv` of every table: (table, row, metric) → (mean, std, n).
fn csv_numbers(store: &Path) -> BTreeMap<(String, String, String), (String, String, String)> {
    let mut out = BTreeMap::new();
    let toml =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pipeline.toml")).unwrap();
    let names: Vec<String> = toml
        .lines()
        .filter_map(|l| {
            l.strip_prefix("[table.")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        let o = spo_pipe(store, &["tables", &name, "--format", "csv"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let mut lines = text.lines().filter(|l| !l.is_empty());
        let header = csv_fields(lines.next().unwrap());
        for line in lines {
            let f = csv_fields(line);
            for (i, h) in header.iter().enumerate().skip(1).step_by(3) {
                let metric = h.strip_suffix("_mean").unwrap().to_owned();
                if f[i + 2] != "0" {
                    out.insert(
                        (name.clone(), f[0].clone(), metric),
                        (f[i].clone(), f[i + 1].clone(), f[i + 2].clone()),
                    );
                }
            }
        }
    }
    out
}

fn csv_fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                out.last_mut().unwrap().push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// The value of attribute `name` in the tag text `tag`.
fn attr(tag: &str, name: &str) -> Option<String> {
    let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    Some(unescape(&tag[at..at + tag[at..].find('"')?]))
}

/// The numbers the report's tables show: (table, row, metric) → (mean, std, n), from the
/// `data-` attributes of `index.html`.
fn html_numbers(index: &str) -> BTreeMap<(String, String, String), (String, String, String)> {
    let mut out = BTreeMap::new();
    for table in index.split("<table class=\"results\"").skip(1) {
        let name = attr(table, "data-table").unwrap();
        for row in table.split("<tr data-row=").skip(1) {
            let label = attr(&format!(" data-row={row}"), "data-row").unwrap();
            for td in row.split("<td").skip(1).filter(|t| t.contains("data-mean")) {
                let tag = &td[..td.find('>').unwrap()];
                out.insert(
                    (
                        name.clone(),
                        label.clone(),
                        attr(tag, "data-metric").unwrap(),
                    ),
                    (
                        attr(tag, "data-mean").unwrap(),
                        attr(tag, "data-std").unwrap(),
                        attr(tag, "data-n").unwrap(),
                    ),
                );
            }
            if row.contains("</table>") {
                break;
            }
        }
    }
    out
}

/// Every local `src` and `href` of every page of the site at `root` resolves: files exist and
/// `#fragments` name an element of the page.
fn assert_links_resolve(root: &Path) -> usize {
    let pages: Vec<PathBuf> = support::walk(root)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "html"))
        .collect();
    let mut checked = 0;
    for page in &pages {
        let html = std::fs::read_to_string(page).unwrap();
        for attr_name in ["src=\"", "href=\""] {
            for part in html.split(attr_name).skip(1) {
                let link = unescape(&part[..part.find('"').unwrap()]);
                if link.starts_with("http") || link.starts_with("data:") {
                    continue;
                }
                let (file, frag) = link.split_once('#').unwrap_or((&link, ""));
                let target = if file.is_empty() {
                    page.clone()
                } else {
                    page.parent().unwrap().join(file)
                };
                assert!(target.is_file(), "{}: broken link {link}", page.display());
                if !frag.is_empty() {
                    let t = std::fs::read_to_string(&target).unwrap();
                    assert!(
                        t.contains(&format!("id=\"{frag}\"")),
                        "{}: no #{frag} in {}",
                        page.display(),
                        target.display()
                    );
                }
                checked += 1;
            }
        }
    }
    checked
}

#[test]
fn the_report_holds_every_table_with_the_numbers_of_tables_and_every_link_resolves() {
    let _store = use_store();
    let (store, run) = paper();
    assert!(run.status.success());
    let site = store.with_file_name("site");
    let before = support::snapshot(store);
    let out = spo_pipe(store, &["report", "paper", "--out", site.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let after = support::snapshot(store);
    assert!(
        before == after,
        "the report wrote into the store: {:?}",
        support::changed(&before, &after)
    );

    let index = std::fs::read_to_string(site.join("index.html")).unwrap();
    assert_eq!(
        html_numbers(&index),
        csv_numbers(store),
        "the report's numbers differ from `tables`"
    );
    assert!(
        index.contains("the row minus Base model"),
        "rows against the base row"
    );
    let samples = std::fs::read_to_string(site.join("samples.html")).unwrap();
    for row in ["Base model", "SPO", "GradSPO"] {
        assert!(
            samples.contains(&format!(">{row}</th>")),
            "no {row} column in the samples"
        );
    }
    assert!(
        samples.matches("<img").count() >= 7 * 2 * 2,
        "images of 7 methods × 2 seeds × 2 prompts"
    );
    assert!(
        samples.contains("pickscore 0."),
        "images carry their scores"
    );
    let curves = std::fs::read_to_string(site.join("curves.html")).unwrap();
    for stage in ["base", "spm", "spo", "dpo", "d3po", "ddpo", "gradspo"] {
        assert!(
            curves.contains(&format!("<h2 id=\"{stage}\">")),
            "no curves of {stage}"
        );
    }
    assert!(
        curves.contains("valid_pair_rate (rounds)"),
        "SPO's per-round log is drawn"
    );
    let sweeps = std::fs::read_to_string(site.join("sweeps.html")).unwrap();
    assert!(
        sweeps.matches("<svg").count() >= 6 * 4,
        "each sweep table, each metric"
    );
    let dag = std::fs::read_to_string(site.join("dag.html")).unwrap();
    assert!(!dag.contains("st missing"), "every cell is cached");
    assert!(assert_links_resolve(&site) > 500);

    let html = site.with_file_name("diff.html");
    let out = spo_pipe(
        store,
        &[
            "diff",
            "score-base",
            "score-spo",
            "--html",
            html.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("data-metric=\"pickscore\""), "{page}");
    assert!(
        page.contains("<td class=\"l\">spo.lr</td>") && page.contains("(unset)"),
        "SPO's params are B's alone"
    );
}

/// Visits every page reachable from `start` within the site; returns the index's table cells.
fn crawl(b: &support::browser::Browser, start: &str) -> (usize, Vec<serde_json::Value>) {
    let root = &start[..start.rfind('/').unwrap() + 1];
    let mut todo = vec![start.to_owned()];
    let mut seen = std::collections::BTreeSet::new();
    let mut cells = Vec::new();
    while let Some(url) = todo.pop() {
        if !seen.insert(url.clone()) {
            continue;
        }
        b.goto(&url);
        let v = b.eval(support::browser::PAGE_CHECK);
        assert!(
            !v["title"].as_str().unwrap_or_default().is_empty(),
            "{url}: no page"
        );
        assert_eq!(
            v["bad"],
            serde_json::json!([]),
            "{url}: images that did not load"
        );
        let errors = b.console_errors();
        assert!(errors.is_empty(), "{url}: console errors {errors:?}");
        if url == start {
            cells = v["cells"].as_array().cloned().unwrap_or_default();
        }
        for l in v["links"].as_array().into_iter().flatten() {
            let l = l.as_str().unwrap_or_default();
            let (page, frag) = l.split_once('#').unwrap_or((l, ""));
            if !frag.is_empty() && page == url {
                let ids = v["ids"].as_array().unwrap();
                assert!(ids.iter().any(|i| i == frag), "{url}: no #{frag}");
            }
            if page.starts_with(root) && page.ends_with(".html") {
                todo.push(page.to_owned());
            }
        }
    }
    (seen.len(), cells)
}

#[test]
fn the_report_loads_in_a_real_browser_from_file_and_from_serve() {
    let _store = use_store();
    let (store, run) = paper();
    assert!(run.status.success());
    let b = match support::browser::Browser::start() {
        Ok(b) => b,
        Err(why) => {
            eprintln!("SKIPPED: no browser ({why})");
            return;
        }
    };
    let site = store.with_file_name("browser-site");
    let out = spo_pipe(store, &["report", "paper", "--out", site.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = csv_numbers(store);
    let as_map = |cells: Vec<serde_json::Value>| -> BTreeMap<_, _> {
        cells
            .iter()
            .map(|c| {
                let s = |i: usize| c[i].as_str().unwrap_or_default().to_owned();
                ((s(0), s(1), s(2)), (s(3), s(4), s(5)))
            })
            .collect()
    };

    let start = format!(
        "file://{}/index.html",
        site.canonicalize().unwrap().display()
    );
    let (pages, cells) = crawl(&b, &start);
    assert!(pages > 100, "{pages} pages");
    assert_eq!(
        as_map(cells),
        want,
        "the tables in the browser differ from `tables`"
    );
    b.goto(&start);
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-index.png");
    b.screenshot(&shot);
    eprintln!("screenshot of the report: {}", shot.display());

    let mut server = support::KillOnDrop(
        support::default_pipeline(store, TINY, &["report", "paper", "--serve", "--port", "0"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.0.stderr.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_owned();
    let (served, cells) = crawl(&b, &format!("{url}index.html"));
    assert_eq!(served, pages, "the served site has the same pages");
    assert_eq!(as_map(cells), want);
}
