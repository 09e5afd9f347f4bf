//! A deterministic fuzz of pipeline.toml, `--set` and the command line: mutated inputs never
//! panic or hang, every configuration error names its file, line and column inside the input,
//! and the binary exits with 2 for every invalid pipeline.
//!
//! Most cases run in-process through the library (1,500 mutated pipeline files, 1,000 `--set`
//! arguments); 300 run through the binary with mutated files and command lines.

use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use spo_core::config_error::utf8_text;
use spo_core::{ConfigError, Pipeline, Plan, Registry};

const PIPELINE: &[u8] = include_bytes!("../pipeline.toml");

/// A small xorshift stream: the same cases on every run.
struct Cases(u64);

impl Cases {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Fragments that TOML, the schema or UTF-8 care about.
const PIECES: &[&[u8]] = &[
    b"=",
    b"[",
    b"]",
    b"{",
    b"}",
    b"\"",
    b"'",
    b",",
    b".",
    b"\n",
    b"#",
    b" ",
    b"\t",
    b"\r\n",
    b"0",
    b"-1",
    b"1e400",
    b"99999999999999999999",
    b"2.5",
    b"true",
    b"inf",
    b"nan",
    b"[[",
    b"]]",
    b"\"\"\"",
    b"@",
    b"\\",
    b"\xc3\xa9",
    b"\xff",
    b"\xe2\x82",
    b"\x00",
    b"kind",
    b"needs",
    b"params",
    b"steps",
    b"seeds",
    b"stage",
    b"grid",
    b"zip",
    b"rows",
    b"metrics",
    b"includes",
    b"[stage.x]\nkind = \"world\"\n",
    b"[sweep.s]\nstage = \"spo\"\ngrid = { k = [2, 99] }\n",
    b"[table.t]\nrows = { A = \"spo@k=banana\" }\nmetrics = [\"pickscore\"]\n",
    b"[table.u]\nrows = { \"\xc3\xa9\" = \"spo@nope=3,k=\" }\nmetrics = [\"x\"]\n",
    b"[target.all]\nincludes = [\"all\"]\n",
    b"needs = [\"spo\"]\n",
];

/// `base` with one to three random edits.
fn mutate(base: &[u8], c: &mut Cases) -> Vec<u8> {
    let mut b = base.to_vec();
    for _ in 0..1 + c.below(3) {
        let at = c.below(b.len() + 1);
        match c.below(6) {
            0 => {
                let end = (at + 1 + c.below(24)).min(b.len());
                b.drain(at.min(end)..end);
            }
            1 | 2 => {
                let piece = c.pick(PIECES).to_vec();
                b.splice(at..at, piece);
            }
            3 => {
                let piece = c.pick(PIECES).to_vec();
                let end = (at + piece.len()).min(b.len());
                b.splice(at..end, piece);
            }
            4 => {
                let start = b[..at]
                    .iter()
                    .rposition(|&x| x == b'\n')
                    .map_or(0, |i| i + 1);
                let end = b[at..]
                    .iter()
                    .position(|&x| x == b'\n')
                    .map_or(b.len(), |i| at + i + 1);
                let line = b[start..end].to_vec();
                b.splice(start..start, line);
            }
            _ => b.truncate(at),
        }
    }
    b
}

/// Asserts that `e` points inside `text` (file `file`) and renders as `file:line:col: ...`.
fn assert_positioned(e: &ConfigError, file: &str, text: &str) {
    let shown = e.to_string();
    assert_eq!(e.file, file, "{shown}");
    assert!(
        shown.starts_with(&format!("{file}:{}:{}: ", e.line, e.col)),
        "{shown}"
    );
    let lines: Vec<&str> = text.split('\n').collect();
    assert!(
        e.line >= 1 && e.line <= lines.len(),
        "line {} of {}: {shown}",
        e.line,
        lines.len()
    );
    let width = lines[e.line - 1].chars().count();
    assert!(
        e.col >= 1 && e.col <= width + 1,
        "column {} of {width}: {shown}",
        e.col
    );
}

/// Parses `bytes` as pipeline.toml and plans its default targets: the error, if any.
fn parse(bytes: &[u8], registry: &Registry) -> Result<(), (ConfigError, String)> {
    let text = match utf8_text("pipeline.toml", bytes.to_vec()) {
        Ok(t) => t,
        Err(e) => return Err((e, String::from_utf8_lossy(bytes).into_owned())),
    };
    match Pipeline::parse("pipeline.toml", &text, registry) {
        Ok(pipe) => {
            // planning may refuse (a target naming nothing), but never panics
            let _ = Plan::build(&pipe, registry, &[]);
            Ok(())
        }
        Err(e) => Err((e, text)),
    }
}

/// Runs `f` on another thread; a case that hangs fails the test instead of stalling it.
fn within(what: &str, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(600)) {
        Ok(()) => worker.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: a case hung"),
    }
}

#[test]
fn mutated_pipeline_files_never_panic_and_every_error_is_positioned() {
    within("pipeline.toml", || {
        let registry = Registry::new(spo_stages::kinds());
        assert!(
            parse(PIPELINE, &registry).is_ok(),
            "the default pipeline parses"
        );
        let mut c = Cases(0x5eed_0001);
        let mut rejected = 0;
        for case in 0..1500 {
            let bytes = mutate(PIPELINE, &mut c);
            if let Err((e, text)) = parse(&bytes, &registry) {
                rejected += 1;
                let at = std::panic::catch_unwind(|| assert_positioned(&e, "pipeline.toml", &text));
                assert!(at.is_ok(), "case {case}: {e}");
            }
        }
        assert!(
            rejected > 300,
            "only {rejected} of 1500 mutations were invalid"
        );
    });
}

#[test]
fn mutated_set_arguments_never_panic_and_point_into_the_argument() {
    within("--set", || {
        let registry = Registry::new(spo_stages::kinds());
        let text = std::str::from_utf8(PIPELINE).unwrap();
        let pipe = Pipeline::parse("pipeline.toml", text, &registry).unwrap();
        let spaces: &[&str] = &["", "", " ", "  ", "\t"];
        let names: &[&str] = &[
            "spo",
            "k",
            "pipeline",
            "seeds",
            "base",
            "channels",
            "world",
            "t_range",
            "é",
            "ü.ß",
            "\u{1F600}",
            "",
            "x.y",
            "continuation",
            "=",
        ];
        let values: &[&str] = &[
            "3",
            "-1",
            "[1, 2",
            "[0, -1]",
            "[16, 32, 32]",
            "\"x\"",
            "win",
            "1e400",
            "=",
            "9999999999999999999",
            "{a = 1}",
            "\u{1F600}",
            "[",
            "]",
            "[0, 1001]",
            "\"lose\"",
            "[\"é\", 1]",
            "",
            "[[1], [2]]",
        ];
        let mut c = Cases(0x5eed_0002);
        for case in 0..1000 {
            // `stage.param=value` with spaces, non-ASCII and malformed parts; some cut short
            let mut arg = String::new();
            for part in [
                *c.pick(spaces),
                *c.pick(names),
                ".",
                *c.pick(names),
                *c.pick(spaces),
                "=",
                *c.pick(spaces),
                *c.pick(values),
                *c.pick(spaces),
            ] {
                if c.below(12) > 0 {
                    arg.push_str(part);
                }
            }
            let mut p = pipe.clone();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                p.apply_set(&arg, &registry)
            }));
            match result {
                Err(_) => panic!("case {case}: `--set {arg}` panicked"),
                Ok(Err(e)) => assert_positioned(&e, "--set", &arg),
                Ok(Ok(())) => {}
            }
        }
    });
}

fn spo_pipe(dir: &Path, args: &[String]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_spo-pipe"))
        .env_remove("RUST_LOG")
        .current_dir(dir)
        .arg("--store")
        .arg(dir.join("runs"))
        .args(args)
        .output()
        .expect("spawn spo-pipe")
}

#[test]
fn the_binary_exits_2_with_a_position_for_every_invalid_pipeline_and_never_panics() {
    within("the binary", || {
        let registry = Registry::new(spo_stages::kinds());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pipeline.toml");
        let verbs: &[&[&str]] = &[
            &["status"],
            &["dag"],
            &["run", "--dry-run"],
            &["tables"],
            &["why", "spo"],
            &["show", "spo@k=3"],
            &["gc", "--dry-run"],
        ];
        let extras: &[&str] = &[
            "--jobs",
            "0",
            "-j",
            "-1",
            "--set",
            "spo.k=3",
            " é.x=1",
            "spo.k=[1,",
            "--format",
            "dot",
            "nope",
            "spo@k=banana",
            "score-spo@spo.k=3",
            "--json",
            "--seed",
            "x",
            "table6",
            "-vv",
            "--bogus",
            "\u{1F600}",
            "",
            "--set=pipeline.seeds=[0,-1]",
        ];
        let mut c = Cases(0x5eed_0003);
        for case in 0..300 {
            let bytes = if c.below(4) == 0 {
                PIPELINE.to_vec()
            } else {
                mutate(PIPELINE, &mut c)
            };
            std::fs::write(&file, &bytes).unwrap();
            let mut args: Vec<String> = vec!["--pipeline".into(), file.display().to_string()];
            args.extend(c.pick(verbs).iter().map(|s| s.to_string()));
            for _ in 0..c.below(4) {
                args.push(c.pick(extras).to_string());
            }
            let out = spo_pipe(dir.path(), &args);
            let err = String::from_utf8_lossy(&out.stderr);
            let code = out.status.code();
            assert!(
                matches!(code, Some(0..=2)),
                "case {case}: {args:?} exited with {:?}:\n{err}",
                out.status
            );
            if let Err((e, _)) = parse(&bytes, &registry) {
                // the pipeline's error, unless clap refused the command line before reading it
                let at = format!("{}:{}:{}: ", file.display(), e.line, e.col);
                assert!(
                    code == Some(2) && (err.contains(&at) || err.contains("try '--help'")),
                    "case {case}: invalid pipeline ({e}), but {args:?} exited with {code:?}:\n{err}"
                );
            }
        }
        // `--jobs 0` is refused, not taken as 1; a non-ASCII `--set` is an error at its column
        std::fs::write(&file, PIPELINE).unwrap();
        for (args, says) in [
            (&["run", "--jobs", "0", "--dry-run"][..], "0 is not in 1.."),
            (
                &["--set", " é.x=1", "status"][..],
                "--set:1:2: no stage named `é`",
            ),
        ] {
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            let out = spo_pipe(dir.path(), &args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert!(err.contains(says), "{args:?}: {err}");
        }
    });
}
