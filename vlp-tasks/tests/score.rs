//! `vlp score` as a library function, on the committed example files.
use clap::Parser;
use serde_json::Value;
use std::path::{Path, PathBuf};
use vlp_tasks::score::{compute, run_to, ScoreArgs, ScoreTask};

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

/// A stand-in for the `vlp` command line (the real one lives in the root crate).
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    Score(ScoreArgs),
}

fn parse(args: &[&str]) -> ScoreArgs {
    let mut all = vec!["vlp", "score"];
    all.extend_from_slice(args);
    match Cli::try_parse_from(all).unwrap().cmd {
        Cmd::Score(a) => a,
    }
}

fn run_json(args: &[&str]) -> Value {
    let mut out = Vec::new();
    run_to(&parse(args), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    serde_json::from_str(&text).unwrap()
}

fn s(p: PathBuf) -> String {
    p.display().to_string()
}

#[test]
fn vqa() {
    let (q, a, r) = (
        s(data("vqa/questions.json")),
        s(data("vqa/annotations.json")),
        s(data("vqa/results.json")),
    );
    let j = run_json(&[
        "vqa",
        "--questions",
        &q,
        "--annotations",
        &a,
        "--results",
        &r,
        "--json",
    ]);
    assert_eq!(j["overall"], 66.67);
    assert_eq!(j["perAnswerType"]["yes/no"], 80.0);
    assert_eq!(j["perAnswerType"]["number"], 45.0);
    assert_eq!(j["perAnswerType"]["other"], 75.0);
    assert_eq!(j["perQuestionType"]["what is the man"], 90.0);
    // The table.
    let mut out = Vec::new();
    run_to(
        &parse(&[
            "vqa",
            "--questions",
            &q,
            "--annotations",
            &a,
            "--results",
            &r,
        ]),
        &mut out,
    )
    .unwrap();
    let table = String::from_utf8(out).unwrap();
    assert!(
        table.lines().next().unwrap().starts_with("overall") && table.contains("66.67"),
        "{table}"
    );
    assert!(
        table.contains("answer type: yes/no") && table.contains("80.00"),
        "{table}"
    );
    // Results naming an unknown question are rejected with the record's place.
    let bad = std::env::temp_dir().join(format!("vlp-score-vqa-{}.json", std::process::id()));
    std::fs::write(&bad, "[\n {\"question_id\": 262148000, \"answer\": \"yes\"},\n {\"question_id\": 7, \"answer\": \"no\"}\n]").unwrap();
    let e = compute(&ScoreTask::Vqa {
        questions: q.into(),
        annotations: a.into(),
        results: bad.clone(),
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(":3:2: field `[1].question_id`: question 7 is not in"),
        "{e}"
    );
    std::fs::remove_file(bad).ok();
}

#[test]
fn caption() {
    let j = run_json(&[
        "--json",
        "caption",
        "--references",
        &s(data("caption/references.json")),
        "--results",
        &s(data("caption/results.json")),
    ]);
    let exp: Value =
        serde_json::from_str(&std::fs::read_to_string(data("caption/expected.json")).unwrap())
            .unwrap();
    for k in ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr"] {
        let (got, want) = (j[k].as_f64().unwrap(), exp[k].as_f64().unwrap());
        assert!((got - want).abs() < 1e-12, "{k}: {got} vs {want}");
    }
    let rouge: Value = serde_json::from_str(
        &std::fs::read_to_string(data("caption/rouge_expected.json")).unwrap(),
    )
    .unwrap();
    let (got, want) = (
        j["ROUGE_L"].as_f64().unwrap(),
        rouge["ROUGE_L"].as_f64().unwrap(),
    );
    assert!((got - want).abs() < 1e-12, "ROUGE_L: {got} vs {want}");
    assert_eq!(j.as_object().unwrap().len(), 6);
    // The table prints it too, between BLEU and CIDEr as pycocoevalcap orders its metrics.
    let table = compute(&ScoreTask::Caption {
        references: data("caption/references.json"),
        results: data("caption/results.json"),
    })
    .unwrap()
    .table;
    let (b, r, c) = (
        table.find("Bleu_4").unwrap(),
        table.find("ROUGE_L").unwrap(),
        table.find("CIDEr").unwrap(),
    );
    assert!(b < r && r < c, "{table}");
    assert!(table.contains(&format!("{:.4}", want)), "{table}");
}

#[test]
fn caption_needs_one_result_per_image() {
    let bad = std::env::temp_dir().join(format!("vlp-score-cap-{}.json", std::process::id()));
    std::fs::write(
        &bad,
        r#"[{"image_id": 391895, "caption": "a man"}, {"image_id": 391895, "caption": "a bike"}]"#,
    )
    .unwrap();
    let e = compute(&ScoreTask::Caption {
        references: data("caption/references.json"),
        results: bad.clone(),
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("[1].image_id") && e.contains("second caption for image 391895"),
        "{e}"
    );
    std::fs::write(&bad, r#"[{"image_id": 1, "caption": "a man"}]"#).unwrap();
    let e = compute(&ScoreTask::Caption {
        references: data("caption/references.json"),
        results: bad.clone(),
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("image 1 has no reference"), "{e}");
    std::fs::remove_file(bad).ok();
}

#[test]
fn retrieval() {
    let j = run_json(&[
        "retrieval",
        "--scores",
        &s(data("retrieval/scores.json")),
        "--gt",
        &s(data("retrieval/gt.json")),
        "--json",
    ]);
    assert_eq!(j["txt_r1"], 0.0);
    assert_eq!(j["txt_r5"], 100.0);
    assert!((j["img_r1"].as_f64().unwrap() - 100.0 / 3.0).abs() < 1e-12);
    assert!((j["r_mean"].as_f64().unwrap() - 650.0 / 9.0).abs() < 1e-12);
    assert_eq!(j.as_object().unwrap().len(), 9);
}

#[test]
fn nlvr2_and_ve() {
    // Official CSV against official JSON lines: 3 of 4 right; one of the two sentences has all
    // its examples right (metrics.py consistency).
    let j = run_json(&[
        "nlvr2",
        "--annotations",
        &s(data("nlvr2/dev.jsonl")),
        "--results",
        &s(data("nlvr2/results.csv")),
        "--json",
    ]);
    assert_eq!(j["accuracy"], 75.0);
    assert_eq!(j["consistency"], 50.0);
    assert_eq!(
        (j["correct"].as_u64(), j["total"].as_u64()),
        (Some(3), Some(4))
    );
    // ALBEF annotations (no identifiers): predictions by index.
    let j = run_json(&[
        "nlvr2",
        "--annotations",
        &s(data("nlvr2/nlvr_dev.json")),
        "--results",
        &s(data("nlvr2/results_index.json")),
        "--json",
    ]);
    assert!((j["accuracy"].as_f64().unwrap() - 200.0 / 3.0).abs() < 1e-12);
    assert!(j.get("consistency").is_none());
    // SNLI-VE by pairID: entailment and neutral right, contradiction predicted neutral (1).
    let j = run_json(&[
        "ve",
        "--annotations",
        &s(data("ve/snli_ve_dev.jsonl")),
        "--results",
        &s(data("ve/results.json")),
        "--json",
    ]);
    assert!((j["accuracy"].as_f64().unwrap() - 200.0 / 3.0).abs() < 1e-12);
    assert_eq!(j["per_class"]["contradiction"], 0.0);
    assert_eq!(j["per_class"]["entailment"], 100.0);
    // A missing prediction is an error naming the example.
    let e = compute(&ScoreTask::Ve {
        annotations: data("ve/ve_dev.json"),
        results: data("nlvr2/results_index.json"),
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("expected entailment, neutral or contradiction, found \"False\""),
        "{e}"
    );
    let e = compute(&ScoreTask::Nlvr2 {
        annotations: data("nlvr2/dev.jsonl"),
        results: data("nlvr2/results_index.json"),
    });
    assert!(e
        .unwrap_err()
        .to_string()
        .contains("examples have no prediction (first: dev-3-3-1)"));
}
