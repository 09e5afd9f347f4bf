//! Token ids equal the references on every prompt in shared/data/prompts: CLIP ids equal
//! open_clip's (OpenCLIP cleaning) and HF `CLIPTokenizer`'s (HF cleaning); ImageReward's BERT
//! ids equal `BertTokenizer(bert-base-uncased) + [DEC] + [ENC]` truncated to 35.
//!
//! Goldens: tests/fixtures/clip/make_fixtures.py (`write_token_goldens`), one gzip file per
//! prompt set, one line per prompt, tab-separated: open_clip's ids; `=` when HF's ids are the
//! same, else HF's ids; the BERT ids up to `[SEP]`. The prompts are read from the shared folder
//! with the script's extraction rules.

mod common;

use std::io::Read;

use common::*;
use spo_clip::image_reward::BertTokenizer;
use spo_clip::{ClipTokenizer, TextCleaning};

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn lines(text: &str) -> Vec<String> {
    text.split('\n')
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn json_field(text: &str, field: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(text).expect("json");
    v.as_array()
        .expect("list")
        .iter()
        .map(|o| o[field].as_str().expect("string field").to_string())
        .collect()
}

fn prompt_sets(dir: &std::path::Path) -> Vec<(&'static str, Vec<String>)> {
    let p = dir.join("prompts");
    let parti = read(&p.join("PartiPrompts.tsv"))
        .split('\n')
        .skip(1)
        .filter(|r| !r.is_empty())
        .map(|r| r.split('\t').next().unwrap_or("").to_string())
        .collect();
    let metadata = read(&p.join("geneval_evaluation_metadata.jsonl"))
        .split('\n')
        .filter(|r| !r.is_empty())
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(r).expect("jsonl row");
            v["prompt"].as_str().expect("prompt").to_string()
        })
        .collect();
    vec![
        ("parti", parti),
        (
            "geneval",
            lines(&read(&p.join("geneval_generation_prompts.txt"))),
        ),
        (
            "geneval_objects",
            lines(&read(&p.join("geneval_object_names.txt"))),
        ),
        (
            "ddpo_animals",
            lines(&read(&p.join("ddpo_simple_animals.txt"))),
        ),
        (
            "ddpo_activities",
            lines(&read(&p.join("ddpo_activities.txt"))),
        ),
        ("geneval_metadata", metadata),
        (
            "spo_4k",
            json_field(&read(&p.join("spo_4k_training_prompts.json")), "caption"),
        ),
        (
            "imagereward",
            json_field(
                &read(&p.join("imagereward_benchmark_prompts.json")),
                "prompt",
            ),
        ),
    ]
}

fn parse_ids(s: &str) -> Vec<u32> {
    s.split(' ')
        .filter(|t| !t.is_empty())
        .map(|t| t.parse().expect("id"))
        .collect()
}

#[test]
fn ids_equal_the_references_on_every_shared_prompt() {
    let Some(data) = shared_data() else { return };
    let open_clip = ClipTokenizer::new(TextCleaning::OpenClip).expect("tokenizer");
    let hf = ClipTokenizer::new(TextCleaning::Hf).expect("tokenizer");
    let bert = BertTokenizer::new().expect("tokenizer");
    let mut total = 0;
    for (name, prompts) in prompt_sets(&data) {
        let path = fixtures().join(format!("goldens/tokens_{name}.txt.gz"));
        let mut text = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&path).expect("golden"))
            .read_to_string(&mut text)
            .expect("gzip");
        let golden: Vec<&str> = text.split('\n').filter(|l| !l.is_empty()).collect();
        assert_eq!(golden.len(), prompts.len(), "{name}: prompt count");
        let mut mismatches = Vec::new();
        for (prompt, line) in prompts.iter().zip(&golden) {
            let fields: Vec<&str> = line.split('\t').collect();
            let (oc, hf_field, bert_field) = (fields[0], fields[1], fields[2]);
            let want_bert = parse_ids(bert_field);
            let got_bert = bert.encode(prompt).expect("encode");
            let want_oc = parse_ids(oc);
            let want_hf = if hf_field == "=" {
                want_oc.clone()
            } else {
                parse_ids(hf_field)
            };
            let got_oc = open_clip.encode(prompt).expect("encode");
            let got_hf = hf.encode(prompt).expect("encode");
            if got_oc != want_oc || got_hf != want_hf || got_bert != want_bert {
                mismatches.push(format!(
                    "{prompt:?}\n open_clip want {want_oc:?}\n           got  {got_oc:?}\n hf        want {want_hf:?}\n           got  {got_hf:?}\n bert      want {want_bert:?}\n           got  {got_bert:?}"
                ));
            }
        }
        assert!(
            mismatches.is_empty(),
            "{name}: {} of {} prompts differ:\n{}",
            mismatches.len(),
            prompts.len(),
            mismatches[..mismatches.len().min(5)].join("\n")
        );
        total += prompts.len();
    }
    println!("{total} prompts: ids equal open_clip's, HF's and ImageReward's BERT tokenizer's");
    assert!(total > 6000);
}
