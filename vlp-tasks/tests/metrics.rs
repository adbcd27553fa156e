//! Metrics against known values: the official VQA evaluation on a worked example computed by
//! hand from its rules, pycocoevalcap's BLEU/CIDEr and PTB tokenisation (values produced by
//! scripts/fixtures/make_caption_metric_cases.py), its ROUGE-L
//! (scripts/fixtures/make_rouge_cases.py), ALBEF's `itm_eval`, NLVR2's `metrics.py`.
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use vlp_tasks::data::vqa::{read_official_annotations, AnswerVocab};
use vlp_tasks::data::ReadOptions;
use vlp_tasks::metrics::caption::{bleu, caption_metrics, cider, ptb_tokenize, rouge_l};
use vlp_tasks::metrics::classification::{accuracy, nlvr2_consistency};
use vlp_tasks::metrics::retrieval::{itm_eval, rank_of, ScoreMatrix};
use vlp_tasks::metrics::vqa::{
    answer_scores, evaluate, normalize_answer, soft_targets, target_vector, vqa_accuracy, GtAnswer,
    ScoreConvention,
};

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

fn json(rel: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(data(rel)).unwrap()).unwrap()
}

fn gts(answers: &[(&str, usize)]) -> Vec<GtAnswer> {
    let mut out = Vec::new();
    for (a, n) in answers {
        for _ in 0..*n {
            let id = out.len() as u64 + 1;
            out.push(GtAnswer {
                answer: a.to_string(),
                answer_confidence: Some("yes".into()),
                answer_id: Some(id),
            });
        }
    }
    out
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

/// The rules of `vqaEval.py`, one by one.
#[test]
fn vqa_accuracy_rules() {
    // Leave-one-out over the 10 annotators: 3 "yes" annotators see 2 matches (2/3), the 7 others
    // see 3 (1): (3·2/3 + 7)/10 = 0.9.
    assert!(close(
        vqa_accuracy("yes", &gts(&[("yes", 3), ("no", 7)])),
        0.9
    ));
    // One match: 1/3 for the 9 others, 0 for the one: 0.3.
    assert!(close(
        vqa_accuracy("no", &gts(&[("yes", 9), ("no", 1)])),
        0.3
    ));
    // The prediction is normalised (case, punctuation, articles, number words).
    assert!(close(
        vqa_accuracy("  The Yes.\n", &gts(&[("yes", 10)])),
        1.0
    ));
    assert!(close(vqa_accuracy("Two", &gts(&[("2", 10)])), 1.0));
    // Ground-truth answers only get the punctuation step, and only when they differ: "Yes" stays
    // capitalised and does not match the normalised prediction.
    assert!(close(vqa_accuracy("yes", &gts(&[("Yes", 10)])), 0.0));
    assert!(close(
        vqa_accuracy("yes", &gts(&[("Yes", 9), ("no", 1)])),
        0.0
    ));
    // … and number words in ground truth are not mapped: "two" ≠ "2".
    assert!(close(vqa_accuracy("2", &gts(&[("two", 10)])), 0.0));
    assert_eq!(normalize_answer("Dark-Red"), "dark red");
    assert_eq!(normalize_answer("an umbrella!"), "umbrella");
}

/// The worked example of tests/data/vqa (6 questions), by hand:
/// - 262148000 "is the" yes/no, GT yes×10, prediction "yes": every annotator sees 9 matches → 1.0
/// - 262148001 "how many" number, GT 2×2, two×3, 3×4, "2."×1 (GT differ, so punctuation:
///   "2." → "2"; "two" stays), prediction "two" → "2": the three "2" annotators see 2 matches
///   (2/3), the seven others 3 (1) → (2 + 7)/10 = 0.9
/// - 393225000 "what color is the" other, GT red×3, Red, maroon×3, dark-red ("dark red"),
///   "dark red", brown; prediction "Dark Red" → "dark red": the two "dark red" annotators see 1
///   match (1/3), the eight others 2 (2/3) → (2/3 + 16/3)/10 = 0.6
/// - 393225001 "what is the man" other, GT umbrella×3, "an umbrella"×2 (articles stay in GT),
///   "umbrella!" ("umbrella " after punctuation), kite×4; prediction "the umbrella" → "umbrella":
///   the three "umbrella" annotators see 2 (2/3), the seven others 3 (1) → 0.9
/// - 458752000 "is the" yes/no, GT yes×2, no×8, prediction "yes": 2×1/3 + 8×2/3 → 0.6
/// - 458752001 "how many" number, GT 1×10, prediction "2" → 0
///
/// overall (1 + 0.9 + 0.6 + 0.9 + 0.6 + 0)/6 = 66.67; yes/no (1 + 0.6)/2 = 80, number
/// (0.9 + 0)/2 = 45, other (0.6 + 0.9)/2 = 75; "is the" 80, "how many" 45, "what color is the" 60,
/// "what is the man" 90.
#[test]
fn vqa_official_evaluation_worked_example() {
    let anns = read_official_annotations(&data("vqa/annotations.json"), &ReadOptions::default())
        .unwrap()
        .items;
    let g: Vec<_> = anns.iter().map(|a| a.ground_truth()).collect();
    let res: HashMap<u64, String> = json("vqa/results.json")
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["question_id"].as_u64().unwrap(),
                r["answer"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let per_q: Vec<f64> = g
        .iter()
        .map(|g| vqa_accuracy(&res[&g.question_id], &g.answers))
        .collect();
    let want = [1.0, 0.9, 0.6, 0.9, 0.6, 0.0];
    assert!(
        per_q.iter().zip(want).all(|(a, b)| close(*a, b)),
        "{per_q:?}"
    );
    let r = evaluate(&g, &res).unwrap();
    assert_eq!(r.overall, 66.67);
    assert_eq!(r.per_answer_type["yes/no"], 80.0);
    assert_eq!(r.per_answer_type["number"], 45.0);
    assert_eq!(r.per_answer_type["other"], 75.0);
    assert_eq!(r.per_question_type["is the"], 80.0);
    assert_eq!(r.per_question_type["how many"], 45.0);
    assert_eq!(r.per_question_type["what color is the"], 60.0);
    assert_eq!(r.per_question_type["what is the man"], 90.0);
    assert_eq!(r.questions, 6);
    // Results must cover the annotated questions, and only them.
    let mut missing = res.clone();
    missing.remove(&393225000);
    assert!(evaluate(&g, &missing)
        .unwrap_err()
        .to_string()
        .contains("393225000"));
    let mut extra = res.clone();
    extra.insert(1, "yes".into());
    assert!(evaluate(&g, &extra)
        .unwrap_err()
        .to_string()
        .contains("question_id 1 "));
}

#[test]
fn vqa_soft_scores() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let net = s(&[
        "net", "net", "net", "netting", "net", "net", "mesh", "net", "net", "net",
    ]);
    assert_eq!(
        answer_scores(&net, ScoreConvention::ViltStyle),
        vec![
            ("net".into(), 1.0),
            ("netting".into(), 0.3),
            ("mesh".into(), 0.3)
        ]
    );
    assert_eq!(
        answer_scores(&net, ScoreConvention::CountOverLen),
        vec![
            ("net".into(), 0.8),
            ("netting".into(), 0.1),
            ("mesh".into(), 0.1)
        ]
    );
    let two_three = s(&["a", "b", "b", "c", "c", "c"]);
    let v: Vec<f32> = answer_scores(&two_three, ScoreConvention::ViltStyle)
        .into_iter()
        .map(|x| x.1)
        .collect();
    assert_eq!(v, vec![0.3, 0.6, 0.9]);
    let vocab = AnswerVocab::from_answers(s(&["yes", "net", "no", "mesh"]));
    assert_eq!(
        soft_targets(&net, &vocab, ScoreConvention::ViltStyle),
        vec![(1, 1.0), (3, 0.3)]
    );
    assert_eq!(
        target_vector(&net, &vocab, ScoreConvention::CountOverLen),
        vec![0.0, 0.8, 0.0, 0.1]
    );
}

/// ALBEF's `itm_eval` on tests/data/retrieval (checked with numpy, `argsort(kind="stable")`):
/// image 0 ties text 0 and text 2 at 0.8 and text 2 ranks first (higher index), so no text is
/// retrieved at rank 0; texts 0 and 3 find their image first.
#[test]
fn retrieval_itm_eval() {
    let rows: Vec<Vec<f64>> = serde_json::from_value(json("retrieval/scores.json")).unwrap();
    let i2t = ScoreMatrix::from_rows(&rows).unwrap();
    let g = json("retrieval/gt.json");
    let img2txt: Vec<Vec<usize>> = serde_json::from_value(g["img2txt"].clone()).unwrap();
    let txt2img: Vec<usize> = serde_json::from_value(g["txt2img"].clone()).unwrap();
    let m = itm_eval(&i2t, &i2t.transpose(), &img2txt, &txt2img).unwrap();
    assert_eq!((m.txt_r1, m.txt_r5, m.txt_r10), (0.0, 100.0, 100.0));
    assert!(close(m.txt_r_mean, 200.0 / 3.0));
    assert!(close(m.img_r1, 100.0 / 3.0));
    assert_eq!((m.img_r5, m.img_r10), (100.0, 100.0));
    assert!(close(m.img_r_mean, 700.0 / 9.0));
    assert!(close(m.r_mean, (200.0 / 3.0 + 700.0 / 9.0) / 2.0));
    let j = serde_json::to_value(m).unwrap();
    for k in [
        "txt_r1",
        "txt_r5",
        "txt_r10",
        "txt_r_mean",
        "img_r1",
        "img_r5",
        "img_r10",
        "img_r_mean",
        "r_mean",
    ] {
        assert!(j[k].is_number(), "{k}");
    }
    // R@K with more candidates: 12 texts, the image's text at rank 7.
    let mut row = vec![0.0; 12];
    for (j, v) in row.iter_mut().enumerate() {
        *v = 1.0 - j as f64 * 0.05;
    }
    assert_eq!(rank_of(&row, 7), 7);
    let m = itm_eval(
        &ScoreMatrix::from_rows(&[row.clone()]).unwrap(),
        &ScoreMatrix::from_rows(&vec![vec![1.0]; 12]).unwrap(),
        &[vec![7]],
        &[0; 12],
    )
    .unwrap();
    assert_eq!((m.txt_r1, m.txt_r5, m.txt_r10), (0.0, 0.0, 100.0));
    assert!(itm_eval(
        &ScoreMatrix::from_rows(&[vec![f64::NAN]]).unwrap(),
        &ScoreMatrix::from_rows(&[vec![0.0]]).unwrap(),
        &[vec![0]],
        &[0]
    )
    .is_err());
}

/// The PTB tokenisation against Stanford PTBTokenizer (as pycocoevalcap runs it), case by case.
#[test]
fn ptb_tokenization_matches_pycocoevalcap() {
    let cases: Vec<(String, String)> =
        serde_json::from_value(json("caption/ptb_cases.json")).unwrap();
    assert!(cases.len() >= 40);
    let bad: Vec<String> = cases
        .iter()
        .filter(|(raw, want)| &ptb_tokenize(raw) != want)
        .map(|(raw, want)| format!("{raw:?}: got {:?}, want {want:?}", ptb_tokenize(raw)))
        .collect();
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

fn caption_pairs() -> Vec<(String, Vec<String>)> {
    let refs = json("caption/references.json");
    let mut by: HashMap<u64, Vec<String>> = HashMap::new();
    for a in refs["annotations"].as_array().unwrap() {
        by.entry(a["image_id"].as_u64().unwrap())
            .or_default()
            .push(a["caption"].as_str().unwrap().to_string());
    }
    json("caption/results.json")
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["caption"].as_str().unwrap().to_string(),
                by[&r["image_id"].as_u64().unwrap()].clone(),
            )
        })
        .collect()
}

/// BLEU-1..4 and CIDEr against pycocoevalcap on the worked example (tests/data/caption).
#[test]
fn caption_metrics_match_pycocoevalcap() {
    let exp = json("caption/expected.json");
    let pairs = caption_pairs();
    // Tokenisation first: every caption as pycocoevalcap tokenised it.
    for (i, r) in json("caption/results.json")
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let id = r["image_id"].as_u64().unwrap().to_string();
        assert_eq!(
            ptb_tokenize(&pairs[i].0),
            exp["tokenized_results"][&id][0].as_str().unwrap()
        );
        let want: Vec<String> =
            serde_json::from_value(exp["tokenized_references"][&id].clone()).unwrap();
        let got: Vec<String> = pairs[i].1.iter().map(|c| ptb_tokenize(c)).collect();
        assert_eq!(got, want);
    }
    let m = caption_metrics(&pairs);
    let tol = 1e-12;
    for (got, key) in [
        (m.bleu_1, "Bleu_1"),
        (m.bleu_2, "Bleu_2"),
        (m.bleu_3, "Bleu_3"),
        (m.bleu_4, "Bleu_4"),
        (m.cider, "CIDEr"),
    ] {
        let want = exp[key].as_f64().unwrap();
        assert!(
            (got - want).abs() < tol,
            "{key}: {got} vs pycocoevalcap {want}"
        );
    }
    let tok: Vec<(String, Vec<String>)> = pairs
        .iter()
        .map(|(h, r)| (ptb_tokenize(h), r.iter().map(|c| ptb_tokenize(c)).collect()))
        .collect();
    let (_, per_image) = cider(&tok);
    let want: Vec<f64> = serde_json::from_value(exp["CIDEr_per_image"].clone()).unwrap();
    assert!(
        per_image
            .iter()
            .zip(&want)
            .all(|(a, b)| (a - b).abs() < tol),
        "{per_image:?} vs {want:?}"
    );
    // Values on the record: B1 0.8721, B4 0.3705, CIDEr 1.6511.
    assert!(
        (m.bleu_1 - 0.8721).abs() < 1e-4
            && (m.bleu_4 - 0.3705).abs() < 1e-4
            && (m.cider - 1.6511).abs() < 1e-4
    );
}

/// ROUGE-L against pycocoevalcap's `Rouge` (tests/data/caption/rouge_expected.json): the worked
/// example from raw captions (PTB tokenisation included) and per image, then 200 pre-tokenised
/// cases (edge cases and seeded random captions), per image and corpus. Within 1e-9 of the
/// recorded values, and bit for bit against their IEEE-754 bits (`*_bits`: serde_json's default
/// float parsing may land 1 ulp off the value Python printed).
#[test]
fn rouge_l_matches_pycocoevalcap() {
    let exp = json("caption/rouge_expected.json");
    let mut worst = 0.0f64;
    let mut check = |got: f64, want: &Value, bits: &Value, what: &str| {
        let (want, bits) = (want.as_f64().unwrap(), bits.as_u64().unwrap());
        let d = (got - want).abs();
        worst = worst.max(d);
        assert!(d < 1e-9, "{what}: {got} vs pycocoevalcap {want}");
        assert_eq!(
            got.to_bits(),
            bits,
            "{what}: {got:e} vs pycocoevalcap {:e}",
            f64::from_bits(bits)
        );
    };
    let pairs = caption_pairs();
    let (want, bits) = (&exp["ROUGE_L"], &exp["ROUGE_L_bits"]);
    check(caption_metrics(&pairs).rouge_l, want, bits, "ROUGE_L");
    let tok: Vec<(String, Vec<String>)> = pairs
        .iter()
        .map(|(h, r)| (ptb_tokenize(h), r.iter().map(|c| ptb_tokenize(c)).collect()))
        .collect();
    let (mean, per_image) = rouge_l(&tok);
    check(mean, want, bits, "ROUGE_L (tokenised)");
    let want = exp["ROUGE_L_per_image"].as_array().unwrap();
    let bits = exp["ROUGE_L_per_image_bits"].as_array().unwrap();
    assert_eq!(per_image.len(), want.len());
    for (i, got) in per_image.iter().enumerate() {
        check(*got, &want[i], &bits[i], &format!("image {i}"));
    }

    let cases = exp["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 200);
    let pairs: Vec<(String, Vec<String>)> = cases
        .iter()
        .map(|c| {
            (
                c["hyp"].as_str().unwrap().to_string(),
                serde_json::from_value(c["refs"].clone()).unwrap(),
            )
        })
        .collect();
    let (mean, per_image) = rouge_l(&pairs);
    for (i, (got, c)) in per_image.iter().zip(cases).enumerate() {
        let what = format!("case {i} {:?}", c["hyp"]);
        check(*got, &c["ROUGE_L"], &c["ROUGE_L_bits"], &what);
    }
    let (want, bits) = (&exp["cases_ROUGE_L"], &exp["cases_ROUGE_L_bits"]);
    check(mean, want, bits, "cases ROUGE_L");
    eprintln!("ROUGE-L: largest difference from pycocoevalcap's values as parsed: {worst:e}");
    // Value on the record: 0.6727 on the worked example.
    assert!((caption_metrics(&caption_pairs()).rouge_l - 0.6727).abs() < 1e-4);
}

#[test]
fn bleu_brevity_and_zero_matches() {
    // A hypothesis identical to its only reference: all 1.
    let b = bleu(&[("a b c d e".into(), vec!["a b c d e".into()])]);
    assert!(b.iter().all(|v| (v - 1.0).abs() < 1e-9), "{b:?}");
    // Half as long: brevity penalty exp(1 - 10/5).
    let b = bleu(&[("a b c d e".into(), vec!["a b c d e f g h i j".into()])]);
    assert!((b[0] - (1.0f64 - 2.0).exp()).abs() < 1e-9, "{b:?}");
    // No 4-gram: BLEU-4 ~ 0 (tiny / small), not NaN.
    let b = bleu(&[("a b c".into(), vec!["x y z".into()])]);
    assert!(b[3] < 1e-5 && b[3].is_finite());
}

#[test]
fn classification_accuracy_and_nlvr2_consistency() {
    let a = accuracy(
        &[(true, true), (true, false), (false, false), (false, false)],
        |b| b.to_string(),
    );
    assert_eq!((a.accuracy, a.correct, a.total), (75.0, 3, 4));
    assert_eq!(a.per_class["true"], 50.0);
    assert_eq!(a.per_class["false"], 100.0);
    // metrics.py: the third part of the identifier is blanked: dev-850-0-0 and dev-850-1-0 are one
    // sentence (one wrong → inconsistent), dev-3-2-1 and dev-3-3-1 another (both right).
    let c = nlvr2_consistency([
        ("dev-850-0-0", true),
        ("dev-850-1-0", false),
        ("dev-3-2-1", true),
        ("dev-3-3-1", true),
    ]);
    assert_eq!(c, Some(50.0));
}
