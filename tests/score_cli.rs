//! `vlp score … --json` as a user runs it: one JSON object of the metrics on stdout.
use std::process::Command;

#[test]
fn score_vqa_prints_one_json_object() {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/vlp-tasks/tests/data/vqa");
    let out = Command::new(env!("CARGO_BIN_EXE_vlp"))
        .args(["--device", "cpu", "score", "vqa"])
        .args(["--questions", &format!("{data}/questions.json")])
        .args(["--annotations", &format!("{data}/annotations.json")])
        .args(["--results", &format!("{data}/results.json")])
        .arg("--json")
        .output()
        .expect("running vlp");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    // The worked example of vlp-tasks/tests/metrics.rs (official VQA evaluation, by hand).
    assert_eq!(j["overall"], 66.67);
    assert_eq!(j["perAnswerType"]["yes/no"], 80.0);
    assert_eq!(j["perAnswerType"]["number"], 45.0);
    assert_eq!(j["perAnswerType"]["other"], 75.0);
    assert_eq!(j["perQuestionType"]["how many"], 45.0);
}

#[test]
fn score_errors_name_the_file() {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/vlp-tasks/tests/data");
    let out = Command::new(env!("CARGO_BIN_EXE_vlp"))
        .args([
            "score",
            "nlvr2",
            "--annotations",
            &format!("{data}/nlvr2/bad.json"),
        ])
        .args(["--results", &format!("{data}/nlvr2/results.csv"), "--json"])
        .output()
        .expect("running vlp");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.json:3:2: field `[1].images`"), "{err}");
}
