//! The cell cache (`runs/cache/`): used while it matches the store, rebuilt when damaged or
//! stale, never trusted over the cells themselves.

mod support;

use std::path::{Path, PathBuf};

use spo_core::explain::{State, status};
use spo_core::{Pipeline, Plan, RunOptions, RunSummary, Store, gc, run::run};

const PIPE: &str = r#"
[pipeline]
seeds = [0, 1]

[stage.a]
kind = "emit"

[stage.t]
kind = "train"
needs = ["a"]

[sweep.vals]
stage = "t"
grid = { value = [10, 20] }
"#;

struct Fixture {
    dir: tempfile::TempDir,
    pipe: Pipeline,
    reg: spo_core::Registry,
}

impl Fixture {
    fn new() -> Fixture {
        let reg = support::registry();
        let pipe = Pipeline::parse("p.toml", PIPE, &reg).unwrap();
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            pipe,
            reg,
        }
    }

    /// A fresh store handle, as a new process opens it.
    fn store(&self) -> Store {
        Store::open(self.dir.path()).unwrap()
    }

    fn plan(&self, target: &str) -> Plan {
        Plan::build(&self.pipe, &self.reg, &[target.to_owned()]).unwrap()
    }

    fn run(&self, target: &str) -> RunSummary {
        let s = run(
            &self.pipe,
            &self.reg,
            &self.store(),
            &self.plan(target),
            &RunOptions::default(),
            &|_| {},
        )
        .unwrap();
        assert!(s.failed.is_empty(), "{:?}", s.failed);
        s
    }

    fn states(&self, target: &str) -> Vec<State> {
        status(&self.reg, &self.store(), &self.plan(target))
            .unwrap()
            .into_iter()
            .map(|s| s.state)
            .collect()
    }

    fn files_in(&self, sub: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file() && !name(p).starts_with('.'))
            .collect();
        v.sort();
        v
    }

    /// Removes every stat memo: a run that reads a cell the old way re-hashes its files and
    /// writes its memo again; a run served by the cache does not.
    fn drop_memos(&self) {
        for p in self.files_in("memo") {
            std::fs::remove_file(p).unwrap();
        }
    }
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn a_no_op_run_is_served_by_the_cache() {
    let f = Fixture::new();
    assert_eq!(f.run("vals").ran, 5);
    assert!(!f.files_in("cache").is_empty());
    f.drop_memos();
    let s = f.run("vals");
    assert_eq!((s.ran, s.cached), (0, 5));
    assert!(
        f.files_in("memo").is_empty(),
        "no cell was read or re-hashed the old way"
    );
}

#[test]
fn a_damaged_cache_is_detected_and_rebuilt() {
    let f = Fixture::new();
    f.run("vals");
    let before = f.states("vals");
    for p in f.files_in("cache") {
        let mut b = std::fs::read(&p).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0xff;
        std::fs::write(&p, b).unwrap();
    }
    f.drop_memos();
    let s = f.run("vals");
    assert_eq!((s.ran, s.cached), (0, 5), "damage costs time, not results");
    assert!(
        !f.files_in("memo").is_empty(),
        "the cells the damaged records held were read again"
    );
    f.drop_memos();
    f.run("vals");
    assert!(
        f.files_in("memo").is_empty(),
        "the cache was rebuilt by the run before"
    );
    assert_eq!(f.states("vals"), before);
}

#[test]
fn a_garbage_or_truncated_cache_file_changes_no_answer() {
    let f = Fixture::new();
    f.run("vals");
    let before = f.states("vals");
    let files = f.files_in("cache");
    std::fs::write(f.dir.path().join("cache/1.2.cells"), b"not a cache").unwrap();
    for p in &files {
        let b = std::fs::read(p).unwrap();
        std::fs::write(p, &b[..b.len() - 7]).unwrap();
    }
    assert_eq!(f.states("vals"), before);
    let s = f.run("vals");
    assert_eq!((s.ran, s.cached), (0, 5));
}

#[test]
fn a_deleted_file_is_still_no_cache_hit() {
    let f = Fixture::new();
    f.run("vals");
    let store = f.store();
    let key = store
        .keys()
        .unwrap()
        .into_iter()
        .find(|k| spo_core::Manifest::read(&store.cell_dir(k)).unwrap().stage == "a")
        .unwrap();
    std::fs::remove_file(store.cell_dir(&key).join("out.txt")).unwrap();
    let s = run(
        &f.pipe,
        &f.reg,
        &f.store(),
        &f.plan("vals"),
        &RunOptions::default(),
        &|_| {},
    )
    .unwrap();
    assert_eq!(s.failed.len(), 1, "{:?}", s.failed);
    assert!(s.failed[0].1.contains("out.txt"), "{:?}", s.failed);
}

#[test]
fn a_changed_manifest_is_read_not_taken_from_the_cache() {
    let f = Fixture::new();
    f.run("a");
    let store = f.store();
    let key = store.keys().unwrap().pop().unwrap();
    let manifest = store.cell_dir(&key).join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let m: spo_core::Manifest = serde_json::from_str(&text).unwrap();
    // Another digest of the same length: readers of this cell get other keys.
    let other: String = m
        .digest
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    let mut perms = std::fs::metadata(&manifest).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(&manifest, perms).unwrap();
    std::fs::write(&manifest, text.replace(&m.digest, &other)).unwrap();
    let c = f.store().committed_cell(&key).unwrap().unwrap();
    assert_eq!(c.digest, other);
}

#[test]
fn gc_leaves_no_entry_claiming_a_removed_cell() {
    let f = Fixture::new();
    f.run("vals");
    let store = f.store();
    let all = store.keys().unwrap();
    gc::gc(&f.reg, &store, &f.plan("t@value=10"), false).unwrap();
    let kept = f.store().keys().unwrap();
    assert_eq!(kept.len(), 3);
    for k in all.iter().filter(|k| !kept.contains(k)) {
        assert!(f.store().committed_cell(k).unwrap().is_none());
    }
    assert_eq!(f.files_in("cache").len(), 1, "gc merged the cache");
    assert_eq!(
        f.states("vals"),
        [
            State::Cached,
            State::Cached,
            State::Cached,
            State::Stale,
            State::Stale
        ]
    );
    let s = f.run("vals");
    assert_eq!((s.ran, s.cached), (2, 3));
}

#[test]
fn many_segments_are_merged_into_one_file() {
    let f = Fixture::new();
    f.run("a");
    let segment = f.files_in("cache").pop().unwrap();
    // Segments of twenty finished processes.
    for i in 0..20 {
        let p = f
            .dir
            .path()
            .join(format!("cache/{}.{i}.cells", 4_000_000 + i));
        std::fs::copy(&segment, p).unwrap();
    }
    f.run("a");
    assert_eq!(f.files_in("cache").len(), 1);
    f.drop_memos();
    f.run("a");
    assert!(f.files_in("memo").is_empty(), "the merged file serves");
}
