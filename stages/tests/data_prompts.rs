//! The `prompts` stage: every format against the real files in /work/shared/data (skipped,
//! saying so, when that directory is absent), HPSv2's format on a small file of its shape,
//! and the refusals: a file whose hash does not match, a malformed line.

mod data_common;

use std::path::Path;

use arrow_array::cast::AsArray;
use data_common::{columns, input, read, rows, run, shared_data};
use spo_core::Value;
use spo_stages::prompts::{PromptFormat, Prompts, parse_prompts};

/// Runs the kind on `file` (copied nowhere: the input's dir is the file's own directory).
fn normalise(
    dir: &Path,
    file: &Path,
    format: &str,
    digest: Option<&str>,
    pinned: &str,
) -> (Result<(), spo_core::StageError>, std::path::PathBuf) {
    let name = file.file_name().unwrap().to_str().unwrap();
    let inp = input(
        "fetch",
        "download",
        file.parent().unwrap(),
        &[(name, digest)],
    );
    let (r, cx) = run(
        &Prompts,
        &[
            ("format", Value::Str(format.into())),
            ("sha256", Value::Str(pinned.into())),
        ],
        vec![inp],
        dir,
    );
    (r, cx.out_dir().join("prompts.parquet"))
}

#[test]
fn the_real_prompt_sets_normalise_to_one_table() {
    let Some(data) = shared_data() else { return };
    let p = data.join("prompts");
    // (file, format, prompts, pinned sha256 from SOURCES.md)
    let cases = [
        (
            "spo_4k_training_prompts.json",
            "spo-4k",
            4000,
            "804018fcb30bc9bed28a2a0518855bffd386675a3c5138f96b925071cbae6fc4",
        ),
        (
            "PartiPrompts.tsv",
            "parti",
            1632,
            "fab29e41bb512a169b56acab4cf2a41dcb675e285df2efcde6640c7dd3c440eb",
        ),
        (
            "geneval_evaluation_metadata.jsonl",
            "geneval",
            553,
            "5c48e0813e812e3c373fa5c8ed07a8f0a483be30272b4427b0559c8048e67c13",
        ),
        (
            "geneval_generation_prompts.txt",
            "lines",
            553,
            "55b6e3650e980c13daf30569eb666e000faf19bfc2b7b4cbe999fcdb7aa9d680",
        ),
        (
            "imagereward_benchmark_prompts.json",
            "imagereward",
            100,
            "34682e824ebb3ad8e2531b3cde1b362dc72e1e29946ff6fab77bb49e9edb4b21",
        ),
        (
            "ddpo_simple_animals.txt",
            "lines",
            45,
            "ee3d9b638ce2a40e896a34319af85709d3c1c3188da0b8feda739dcb7363188d",
        ),
    ];
    for (file, format, n, sha) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (r, out) = normalise(dir.path(), &p.join(file), format, None, sha);
        r.unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(rows(&out), n, "{file}");
        assert_eq!(
            columns(&out),
            ["index", "prompt", "category", "metadata", "source"]
        );
        let b = &read(&out)[0];
        let prompt = b.column_by_name("prompt").unwrap().as_string::<i32>();
        let category = b.column_by_name("category").unwrap().as_string::<i32>();
        match format {
            "spo-4k" => {
                assert_eq!(prompt.value(0), "a cat driving a nuke");
                assert!(
                    b.column_by_name("metadata")
                        .unwrap()
                        .as_string::<i32>()
                        .value(0)
                        .contains("\"trainset_idx\":215221")
                );
            }
            "parti" => assert_eq!((prompt.value(0), category.value(0)), ("bond", "Abstract")),
            "geneval" => assert_eq!(
                (prompt.value(0), category.value(0)),
                ("a photo of a bench", "single_object")
            ),
            "imagereward" => assert_eq!(prompt.value(0), "a concept art of a vehicle, cyberpunk"),
            _ => assert!(!prompt.value(0).is_empty()),
        }
    }
}

#[test]
fn a_prompt_file_whose_hash_does_not_match_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("activities.txt");
    std::fs::write(&file, "washing the dishes\nriding a bike\n").unwrap();
    let wrong = "0".repeat(64);
    // The bytes on disk differ from what the download recorded.
    let (r, out) = normalise(dir.path(), &file, "lines", Some(&wrong), "");
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains(&file.display().to_string())
            && msg.contains("its manifest records")
            && msg.contains(&wrong),
        "{msg}"
    );
    assert!(!out.exists());
    // The file is intact but is not the pinned one.
    let (r, out) = normalise(dir.path(), &file, "lines", None, &wrong);
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains(&file.display().to_string()) && msg.contains("the `sha256` param pins"),
        "{msg}"
    );
    assert!(!out.exists());
    let (r, out) = normalise(dir.path(), &file, "lines", None, "");
    r.unwrap();
    assert_eq!(rows(&out), 2);
}

#[test]
fn hpsv2_benchmark_files_keep_their_style_as_category() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("anime.json");
    std::fs::write(
        &file,
        r#"["a hyena fursona at sunset", "a king in a castle"]"#,
    )
    .unwrap();
    let (r, out) = normalise(dir.path(), &file, "hpsv2", None, "");
    r.unwrap();
    let b = &read(&out)[0];
    assert_eq!(
        b.column_by_name("category")
            .unwrap()
            .as_string::<i32>()
            .value(1),
        "anime"
    );
    let all = parse_prompts(
        PromptFormat::Hpsv2,
        br#"{"photo": ["a dog"], "paintings": ["a meadow", "an owl"]}"#,
        "all.json",
    )
    .unwrap();
    assert_eq!(all.len(), 3);
    assert!(
        all.iter()
            .any(|r| r.category.as_deref() == Some("paintings") && r.prompt == "an owl")
    );
}

#[test]
fn malformed_prompt_files_name_the_line() {
    let e = parse_prompts(
        PromptFormat::Geneval,
        b"{\"tag\": \"x\", \"prompt\": \"ok\"}\n{broken\n",
        "m.jsonl",
    )
    .unwrap_err();
    assert!(e.starts_with("line 2: not JSON"), "{e}");
    let e = parse_prompts(
        PromptFormat::Parti,
        b"Prompt\tCategory\tChallenge\tNote\nbond\tAbstract\n",
        "p.tsv",
    )
    .unwrap_err();
    assert!(e.starts_with("line 2: 2 tab-separated fields"), "{e}");
    let e = parse_prompts(
        PromptFormat::Spo4k,
        br#"[{"caption": "a"}, {"trainset_idx": 3}]"#,
        "s.json",
    )
    .unwrap_err();
    assert!(e.contains("record 1: no string `caption`"), "{e}");
    assert!(
        parse_prompts(PromptFormat::Lines, b"\n\n", "empty.txt")
            .unwrap_err()
            .contains("no prompt")
    );
}

#[test]
fn the_download_kind_feeds_the_prompts_kind() {
    let Some(data) = shared_data() else { return };
    let file = data.join("prompts/PartiPrompts.tsv");
    let dir = tempfile::tempdir().unwrap();
    let sha = "fab29e41bb512a169b56acab4cf2a41dcb675e285df2efcde6640c7dd3c440eb";
    let set = [
        ("url", Value::Str(file.display().to_string())),
        ("sha256", Value::Str(sha.into())),
    ];
    let (r, cx) = run(
        &spo_stages::download::Download,
        &set,
        vec![],
        &dir.path().join("dl"),
    );
    r.unwrap();
    let fetched = input(
        "parti-file",
        "download",
        cx.out_dir(),
        &[("PartiPrompts.tsv", None)],
    );
    let (r, cx) = run(
        &Prompts,
        &[("format", Value::Str("parti".into()))],
        vec![fetched],
        &dir.path().join("norm"),
    );
    r.unwrap();
    assert_eq!(rows(&cx.out_dir().join("prompts.parquet")), 1632);
}

#[test]
fn an_input_with_several_files_needs_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "one\ntwo\n").unwrap();
    std::fs::write(dir.path().join("b.txt"), "three\n").unwrap();
    let both = || {
        input(
            "fetch",
            "download",
            dir.path(),
            &[("a.txt", None), ("b.txt", None)],
        )
    };
    let (r, _) = run(
        &Prompts,
        &[("format", Value::Str("lines".into()))],
        vec![both()],
        &dir.path().join("x"),
    );
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains("holds 2 files; set `file`") && msg.contains("a.txt, b.txt"),
        "{msg}"
    );
    let set = [
        ("format", Value::Str("lines".into())),
        ("file", Value::Str("b.txt".into())),
    ];
    let (r, cx) = run(&Prompts, &set, vec![both()], &dir.path().join("y"));
    r.unwrap();
    assert_eq!(rows(&cx.out_dir().join("prompts.parquet")), 1);
}
