//! `spo-pipe report` on small `command` pipelines: what it refuses, that it writes nothing into
//! the store, and `--serve` following a run from queued to running to cached.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{KillOnDrop, Project, bin, snapshot, text, walk};

const TWO: &str = r#"
[pipeline]
name = "two"
[stage.slow]
kind = "command"
params = { cmd = "touch $SPO_SCRATCH/started; while [ ! -f $SPO_SCRATCH/go ]; do sleep 0.05; done; echo 1 > $SPO_OUT/o" }
[stage.after]
kind = "command"
needs = ["slow"]
params = { cmd = "echo 2 > $SPO_OUT/o" }
"#;

#[test]
fn a_report_writes_nothing_into_the_store_and_names_what_is_missing() {
    let p = Project::new(&TWO.replace("while [ ! -f $SPO_SCRATCH/go ]; do sleep 0.05; done; ", ""));
    let out = p.run(&["run", "slow"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let before = snapshot(&p.path().join("runs"));
    let out = p.run(&["report", "--out", "site"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let after = snapshot(&p.path().join("runs"));
    assert!(
        before == after,
        "the store changed: {:?}",
        support::changed(&before, &after)
    );
    let dag = std::fs::read_to_string(p.path().join("site/dag.html")).unwrap();
    assert!(dag.contains("cached") && dag.contains("missing"), "{dag}");
    let after = std::fs::read_dir(p.path().join("site/cells"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .find(|page| page.contains("<h1>after</h1>"))
        .expect("a page for the missing cell");
    assert!(after.contains("spo-pipe run after"), "{after}");
}

#[test]
fn bad_targets_outputs_and_ports_are_refused_with_the_store_untouched() {
    let p = Project::new(&TWO.replace("while [ ! -f $SPO_SCRATCH/go ]; do sleep 0.05; done; ", ""));
    let out = p.run(&["report"]);
    assert_eq!(out.status.code(), Some(2), "no store yet");
    assert!(
        text(&out.stderr).contains("no store at"),
        "{}",
        text(&out.stderr)
    );

    assert!(p.run(&["run", "slow"]).status.success());
    let before = snapshot(&p.path().join("runs"));
    let out = p.run(&["report", "nothing-of-that-name"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("nothing-of-that-name"),
        "{}",
        text(&out.stderr)
    );

    std::fs::create_dir(p.path().join("mine")).unwrap();
    std::fs::write(p.path().join("mine/notes.txt"), "keep").unwrap();
    let out = p.run(&["report", "--out", "mine"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not a spo-pipe report"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(p.path().join("mine/notes.txt")).unwrap(),
        "keep"
    );

    std::fs::write(p.path().join("a-file"), "").unwrap();
    let out = p.run(&["report", "--out", "a-file/site"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("a-file"),
        "{}",
        text(&out.stderr)
    );

    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let out = p.run(&["report", "--serve", "--port", &port]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("in use"),
        "{}",
        text(&out.stderr)
    );
    let after = snapshot(&p.path().join("runs"));
    assert!(
        before == after,
        "the store changed: {:?}",
        support::changed(&before, &after)
    );
}

/// Starts `report --serve` on a free port; returns the process and its address.
fn serve(p: &Project) -> (KillOnDrop, String) {
    let mut child = bin()
        .args(["report", "--serve", "--port", "0"])
        .current_dir(p.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    (KillOnDrop(child), addr)
}

fn get(addr: &str, path: &str) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    s
}

/// The state badge of the cell row whose link text is `cell` on the cells page.
fn state_of(dag: &str, cell: &str) -> String {
    let row = dag
        .split("<tr>")
        .find(|r| r.contains(&format!(">{cell}</a>")))
        .unwrap_or_else(|| panic!("no row for {cell}"));
    row.split("class=\"st ")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_default()
        .to_owned()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < Duration::from_secs(60), "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn served_pages_follow_a_run_from_queued_to_running_to_cached() {
    let p = Project::new(TWO);
    // A first cell makes the store.
    let out = p.run(&["run", "--no-report", "slow@cmd='echo 0 > $SPO_OUT/o'"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (_server, addr) = serve(&p);
    let dag = get(&addr, "/dag.html");
    assert!(dag.starts_with("HTTP/1.1 200"), "{dag}");
    assert_eq!(state_of(&dag, "slow"), "missing");
    assert!(!dag.contains("http-equiv=\"refresh\""), "no run: no reload");

    let mut run = p.spawn(&["run", "--no-report"]);
    let scratch = p.path().join("runs/scratch");
    let started = || {
        walk(&scratch)
            .into_iter()
            .find(|f| f.file_name().is_some_and(|n| n == "started"))
    };
    wait_until("the slow cell started", || started().is_some());
    wait_until("the page shows it running", || {
        std::thread::sleep(Duration::from_millis(1000));
        let dag = get(&addr, "/dag.html");
        state_of(&dag, "slow") == "running"
    });
    let dag = get(&addr, "/dag.html");
    assert_eq!(state_of(&dag, "after"), "queued", "{dag}");
    assert!(
        dag.contains("http-equiv=\"refresh\""),
        "pages reload during a run"
    );

    let go = started().unwrap().with_file_name("go");
    std::fs::write(go, "").unwrap();
    assert!(run.wait().unwrap().success());
    wait_until("the page shows both cached", || {
        std::thread::sleep(Duration::from_millis(1000));
        let dag = get(&addr, "/dag.html");
        state_of(&dag, "slow") == "cached" && state_of(&dag, "after") == "cached"
    });
    assert!(!get(&addr, "/dag.html").contains("http-equiv=\"refresh\""));
}

#[test]
fn a_damaged_cell_is_named_on_the_page_with_verify_suggested() {
    let p = Project::new(&TWO.replace("while [ ! -f $SPO_SCRATCH/go ]; do sleep 0.05; done; ", ""));
    assert!(p.run(&["run", "--no-report"]).status.success());
    let manifest = p.committed()[0].join("manifest.json");
    std::fs::write(&manifest, "{ not json").unwrap();
    let out = p.run(&["report", "--out", "site"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("spo-pipe verify"),
        "{}",
        text(&out.stderr)
    );
    let index = std::fs::read_to_string(p.path().join("site/index.html")).unwrap();
    assert!(
        index.contains("damaged") && index.contains("spo-pipe verify"),
        "{index}"
    );
    assert!(
        index.contains("manifest.json"),
        "the page names the file: {index}"
    );
    assert_eq!(
        std::fs::read_to_string(&manifest).unwrap(),
        "{ not json",
        "left as it was"
    );
}
