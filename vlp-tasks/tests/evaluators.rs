//! The VQA, captioning, NLVR2 / SNLI-VE and retrieval evaluators driven by tiny random-weight
//! ALBEF and BLIP models (the fixture configs and vocabularies of `tests/fixtures/`), on small
//! hand-made data sets in temporary directories: result files in the official formats, read back
//! by `vlp score` with the same metrics; reported metrics equal to those recomputed from the
//! models' own predictions (called directly, one example at a time); retrieval equal to the
//! brute-force N×N scorer and to the models' own evaluation rule when k ≥ N; missing images
//! named in the error.
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};
use vlp_core::image::{ImageTransform, ImageTransformConfig, Normalize};
use vlp_core::text::{EncodeOptions, Padding, SpecialStyle, Tokenizer};
use vlp_models::albef::{
    AlbefConfig, AlbefNlvr, AlbefPretrain, AlbefRetrieval, AlbefVe, AlbefVqa, AlbefVqaClassifier,
};
use vlp_models::blip::{
    with_first_token, BlipConfig, BlipDecoder, BlipNlvr, BlipPretrain, BlipRetrieval, BlipVqa,
};
use vlp_tasks::data::karpathy::{self, RetrievalGallery};
use vlp_tasks::data::loader::LoaderConfig;
use vlp_tasks::data::snli_ve::VeLabel;
use vlp_tasks::data::vqa::{read_albef, read_official};
use vlp_tasks::data::{nlvr2, snli_ve, ReadOptions, TextPrep};
use vlp_tasks::eval::caption::{self, CaptionModel};
use vlp_tasks::eval::classify::{evaluate_nlvr2, evaluate_ve, Nlvr2Model, VeModel};
use vlp_tasks::eval::models::albef::{
    AlbefNlvr2Eval, AlbefRetrievalEval, AlbefVeEval, AlbefVqaClassifierEval, AlbefVqaEval,
};
use vlp_tasks::eval::models::blip::{
    BlipCaptionEval, BlipNlvr2Eval, BlipRetrievalEval, BlipText, BlipVqaEval,
};
use vlp_tasks::eval::retrieval::{
    brute_force_scores, evaluate_gallery, itc_matrix, Fusion, RetrievalEvalConfig, RetrievalModel,
};
use vlp_tasks::eval::vqa::{self, VqaModel, VqaPrediction};
use vlp_tasks::eval::EvalOptions;
use vlp_tasks::metrics::caption::caption_metrics;
use vlp_tasks::metrics::classification::{accuracy, nlvr2_consistency};
use vlp_tasks::metrics::retrieval::{itm_eval, ScoreMatrix};
use vlp_tasks::metrics::vqa::round2;
use vlp_tasks::pipeline::albef::TextEncoder;
use vlp_tasks::score::{compute, ScoreTask};

// ------------------------------------------------------------------------------------------------
// Set-up: fixtures, temporary data, models.
// ------------------------------------------------------------------------------------------------

fn fixture(model: &str, case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(model)
        .join(case)
}

fn config_json(model: &str, case: &str) -> Value {
    let p = fixture(model, case).join("config.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn albef_cfg(case: &str) -> AlbefConfig {
    AlbefConfig::from_json(&config_json("albef", case)).unwrap()
}

fn blip_cfg(case: &str) -> BlipConfig {
    BlipConfig::from_json(&config_json("blip", case)).unwrap()
}

fn albef_text() -> TextEncoder {
    let vocab = fixture("albef", "vqa_1").join("vocab.txt");
    TextEncoder {
        tokenizer: Arc::new(Tokenizer::from_file(vocab).unwrap()),
        max_len: 30,
    }
}

fn blip_text() -> BlipText {
    BlipText::from_vocab(&fixture("blip", "vqa_1").join("vocab.txt"), 35).unwrap()
}

fn transform() -> ImageTransform {
    ImageTransform::new(ImageTransformConfig::eval(32, Normalize::Clip)).unwrap()
}

/// A fresh temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(name: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("vlp-evaluators-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

/// A small image whose content depends on `k` (format from the extension).
fn write_image(path: &Path, k: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = image::RgbImage::from_fn(40, 30, |x, y| {
        image::Rgb([
            ((x * 6 + k * 50) % 256) as u8,
            ((y * 8 + k * 70) % 256) as u8,
            ((x * y + k * 30) % 256) as u8,
        ])
    });
    img.save(path).unwrap();
}

fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// One transformed image `[1, 3, H, W]`.
fn load(path: &Path) -> Tensor {
    transform()
        .apply_path(path, &mut rand::thread_rng())
        .unwrap()
        .unsqueeze(0)
}

fn opts(batch: usize) -> EvalOptions {
    EvalOptions {
        batch_size: batch,
        num_workers: 1,
        progress: false,
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// ------------------------------------------------------------------------------------------------
// VQA.
// ------------------------------------------------------------------------------------------------

const ANSWERS: [&str; 6] = ["yes", "no", "two", "red", "dog", "cat"];

/// Official VQA v2 question and annotation files (val2014) for 5 questions on 3 JPEG images;
/// returns (questions, annotations).
fn write_official_vqa(dir: &Path) -> (PathBuf, PathBuf) {
    for id in [1u32, 2, 3] {
        write_image(&dir.join(format!("val2014/COCO_val2014_{id:012}.jpg")), id);
    }
    let qs = [
        (11, 1, "is there a dog"),
        (12, 1, "what color is the car"),
        (21, 2, "how many people are there"),
        (22, 2, "is the man riding a horse"),
        (31, 3, "what is on the grass"),
    ];
    let questions: Vec<Value> = qs
        .iter()
        .map(|(q, i, t)| json!({"question_id": q, "image_id": i, "question": t}))
        .collect();
    let anns = [
        (11, 1, "is there a", "yes/no", vec!["yes"; 10]),
        (
            12,
            1,
            "what color is the",
            "other",
            vec![
                "red", "red", "red", "blue", "red", "red", "blue", "red", "red", "red",
            ],
        ),
        (
            21,
            2,
            "how many",
            "number",
            vec!["2", "2", "two", "2", "3", "2", "2", "2", "two", "2"],
        ),
        (
            22,
            2,
            "is the",
            "yes/no",
            vec!["no", "no", "no", "yes", "no", "no", "no", "no", "no", "no"],
        ),
        (
            31,
            3,
            "what is on the",
            "other",
            vec![
                "dog", "dog", "cat", "dog", "dog", "dog", "dog", "dog", "dog", "dog",
            ],
        ),
    ];
    let annotations: Vec<Value> = anns
        .iter()
        .map(|(q, i, qt, at, answers)| {
            json!({
                "question_id": q, "image_id": i, "question_type": qt, "answer_type": at,
                "multiple_choice_answer": answers[0],
                "answers": answers.iter().enumerate().map(|(k, a)| json!({
                    "answer": a, "answer_confidence": "yes", "answer_id": k + 1
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let qp = dir.join("questions.json");
    let ap = dir.join("annotations.json");
    write_json(
        &qp,
        &json!({"data_subtype": "val2014", "task_type": "Open-Ended", "questions": questions}),
    );
    write_json(
        &ap,
        &json!({"data_subtype": "val2014", "annotations": annotations}),
    );
    (qp, ap)
}

/// Checks a VQA result file: `[{"question_id": int, "answer": str}]` in question order, answers
/// from the list; returns the answers.
fn check_vqa_results(path: &Path, ids: &[u64]) -> Vec<String> {
    let v = read_json(path);
    let items = v.as_array().expect("a JSON array");
    assert_eq!(items.len(), ids.len());
    items
        .iter()
        .zip(ids)
        .map(|(it, id)| {
            let o = it.as_object().unwrap();
            assert_eq!(o.len(), 2, "{it}");
            assert_eq!(o["question_id"].as_u64(), Some(*id));
            let a = o["answer"].as_str().unwrap().to_string();
            assert!(ANSWERS.contains(&a.as_str()), "{a}");
            a
        })
        .collect()
}

/// `vqaEval.py`'s per-question accuracy, written out here: the answer normalised, then for each
/// annotator `min(#other annotators giving it / 3, 1)`, averaged over the annotators.
fn official_accuracy(pred: &str, gts: &[String]) -> f64 {
    let res = vlp_tasks::metrics::vqa::normalize_answer(pred);
    let all_same = gts.iter().all(|g| g == &gts[0]);
    let gts: Vec<String> = if all_same {
        gts.to_vec()
    } else {
        gts.iter()
            .map(|g| vlp_tasks::metrics::vqa::process_punctuation(g))
            .collect()
    };
    let total: f64 = (0..gts.len())
        .map(|i| {
            let matching = (0..gts.len()).filter(|&j| j != i && gts[j] == res).count();
            (matching as f64 / 3.0).min(1.0)
        })
        .sum();
    total / gts.len() as f64
}

/// The official accuracy of `answers` recomputed from the annotations: overall and per answer
/// type, percent rounded to 2 decimals.
fn expected_vqa(
    questions: &[vlp_tasks::data::vqa::VqaQuestion],
    answers: &[String],
) -> (f64, Vec<(String, f64)>) {
    let accs: Vec<(String, f64)> = questions
        .iter()
        .zip(answers)
        .map(|(q, a)| {
            (
                q.answer_type.clone().unwrap(),
                official_accuracy(a, &q.answers),
            )
        })
        .collect();
    let mean = |v: &[f64]| round2(100.0 * v.iter().sum::<f64>() / v.len() as f64);
    let all: Vec<f64> = accs.iter().map(|a| a.1).collect();
    let mut types: Vec<String> = accs.iter().map(|a| a.0.clone()).collect();
    types.sort();
    types.dedup();
    let per = types
        .into_iter()
        .map(|t| {
            let v: Vec<f64> = accs.iter().filter(|a| a.0 == t).map(|a| a.1).collect();
            (t, mean(&v))
        })
        .collect();
    (mean(&all), per)
}

/// Runs the evaluator, checks its files, its accuracy against the recomputed one and against
/// `vlp score vqa` on the written results; returns the answers.
fn vqa_round_trip<M: VqaModel>(
    model: &mut M,
    dir: &Path,
    name: &str,
    prep: TextPrep,
    direct: impl Fn(&vlp_tasks::data::vqa::VqaQuestion) -> String,
) -> Vec<String> {
    let (qp, ap) = write_official_vqa(dir);
    let questions = read_official(&qp, Some(&ap), &ReadOptions::new(dir))
        .unwrap()
        .items;
    let answers = strings(&ANSWERS);
    let report = vqa::evaluate(model, &questions, &answers, transform(), prep, &opts(2)).unwrap();
    let rp = dir.join(format!("{name}_results.json"));
    report.write_results(&rp).unwrap();
    let ids: Vec<u64> = questions.iter().map(|q| q.question_id.unwrap()).collect();
    let written = check_vqa_results(&rp, &ids);
    assert_eq!(
        vqa::read_results(&rp).unwrap(),
        report.results,
        "read_results round-trips"
    );

    // The evaluator's answers are the model's own, called one question at a time.
    let mine: Vec<String> = questions.iter().map(direct).collect();
    assert_eq!(written, mine, "{name}: batched answers = direct answers");

    // Its accuracy is the official one of those answers.
    let acc = report.accuracy.as_ref().expect("annotated");
    let (overall, per) = expected_vqa(&questions, &mine);
    assert_eq!(acc.overall, overall);
    assert_eq!(
        acc.per_answer_type
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect::<Vec<_>>(),
        per
    );
    assert_eq!(acc.per_question_type.len(), 5);

    // `vlp score vqa` on the written file gives the same numbers.
    let s = compute(&ScoreTask::Vqa {
        questions: qp,
        annotations: ap,
        results: rp,
    })
    .unwrap();
    assert_eq!(s.json["overall"].as_f64(), Some(acc.overall));
    assert_eq!(
        s.json["perAnswerType"],
        serde_json::to_value(&acc.per_answer_type).unwrap()
    );
    assert_eq!(
        s.json["perQuestionType"],
        serde_json::to_value(&acc.per_question_type).unwrap()
    );
    let rep = dir.join(format!("{name}_report.json"));
    report.write_json(&rep).unwrap();
    let r = read_json(&rep);
    assert_eq!(r["overall"].as_f64(), Some(acc.overall));
    assert_eq!(r["questions"], 5);
    written
}

/// A ranking stand-in that answers by keyword, right, partly right or wrong depending on the
/// question, so that the accuracies compared with `vlp score` are not all 0 or 100.
struct Keyword;

fn keyword_answer(q: &str) -> &'static str {
    if q.contains("dog") || q.contains("riding") {
        "yes"
    } else if q.contains("color") {
        "red"
    } else if q.contains("how many") {
        "two"
    } else {
        "cat"
    }
}

impl VqaModel for Keyword {
    fn predict(&mut self, _: &Tensor, qs: &[String]) -> vlp_core::Result<VqaPrediction> {
        Ok(VqaPrediction::Choices(
            qs.iter()
                .map(|q| {
                    ANSWERS
                        .iter()
                        .position(|a| *a == keyword_answer(q))
                        .unwrap()
                })
                .collect(),
        ))
    }
}

#[test]
fn vqa_keyword_round_trip_scores_like_vlp_score() {
    let dir = temp_dir("vqa-keyword");
    let answers = vqa_round_trip(&mut Keyword, &dir, "keyword", TextPrep::Raw, |q| {
        keyword_answer(&q.question).to_string()
    });
    assert_eq!(answers, ["yes", "red", "two", "yes", "cat"]);
}

#[test]
fn vqa_albef_ranking_round_trip() {
    tch::manual_seed(1);
    let model = AlbefVqa::new(&albef_cfg("vqa_1"), Device::Cpu).unwrap();
    let enc = albef_text();
    let mut view = AlbefVqaEval::new(&model, &enc, 3).unwrap();
    let dir = temp_dir("vqa-albef");
    let prep = TextPrep::Albef { max_words: 50 };
    let direct = |q: &vlp_tasks::data::vqa::VqaQuestion| {
        let refs: Vec<&str> = ANSWERS.to_vec();
        let (aid, amask) = enc.encode_answers(&refs).unwrap();
        let (qi, qm) = enc.encode(&[prep.question(&q.question).as_str()]).unwrap();
        let (_, states) =
            tch::no_grad(|| model.encode_question(&load(&q.image), &qi, &qm)).unwrap();
        let (ids, _) = tch::no_grad(|| model.rank_answer(&states, &qm, &aid, &amask, 3)).unwrap();
        ANSWERS[ids.int64_value(&[0, 0]) as usize].to_string()
    };
    vqa_round_trip(&mut view, &dir, "albef", prep, direct);
}

#[test]
fn vqa_albef_classifier_round_trip() {
    tch::manual_seed(8);
    let model =
        AlbefVqaClassifier::new(&albef_cfg("vqa_1"), ANSWERS.len() as i64, Device::Cpu).unwrap();
    let enc = albef_text();
    let mut view = AlbefVqaClassifierEval::new(&model, &enc).unwrap();
    let dir = temp_dir("vqa-albef-cls");
    let prep = TextPrep::Albef { max_words: 50 };
    let direct = |q: &vlp_tasks::data::vqa::VqaQuestion| {
        let (qi, qm) = enc.encode(&[prep.question(&q.question).as_str()]).unwrap();
        let l = tch::no_grad(|| model.forward(&load(&q.image), &qi, &qm)).unwrap();
        ANSWERS[l.argmax(1, false).int64_value(&[0]) as usize].to_string()
    };
    vqa_round_trip(&mut view, &dir, "albef_cls", prep, direct);
    // The candidates must be the head's vocabulary.
    let questions = read_official(&dir.join("questions.json"), None, &ReadOptions::new(&*dir))
        .unwrap()
        .items;
    let e = vqa::evaluate(
        &mut view,
        &questions,
        &strings(&ANSWERS[..5]),
        transform(),
        prep,
        &opts(2),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("5 candidate answers for a head over 6"), "{e}");
}

#[test]
fn vqa_blip_ranking_round_trip() {
    tch::manual_seed(2);
    let model = BlipVqa::new(&blip_cfg("vqa_1"), Device::Cpu).unwrap();
    let text = blip_text();
    let mut view = BlipVqaEval::new(&model, &text, 3).unwrap();
    let dir = temp_dir("vqa-blip");
    let prep = TextPrep::Blip { max_words: 50 };
    let tok = &text.tokenizer;
    let direct = |q: &vlp_tasks::data::vqa::VqaQuestion| {
        let a = tok
            .encode_batch(&ANSWERS[..], &EncodeOptions::longest(35))
            .unwrap();
        let aid = with_first_token(&a.input_ids, model.tokens.bos);
        let b = tok
            .encode_batch(
                &[prep.question(&q.question).as_str()],
                &EncodeOptions::longest(35),
            )
            .unwrap();
        let qi = with_first_token(&b.input_ids, model.tokens.enc);
        let out = tch::no_grad(|| -> vlp_core::Result<_> {
            let (_, states) = model.encode(&load(&q.image), &qi, &b.attention_mask)?;
            model.rank_answer(&states, &b.attention_mask, &aid, &a.attention_mask, 3)
        })
        .unwrap();
        ANSWERS[out.max_ids.int64_value(&[0]) as usize].to_string()
    };
    vqa_round_trip(&mut view, &dir, "blip", prep, direct);
}

/// A classifier stand-in: logits from the image mean and the question length, so that different
/// questions get different answers.
struct MockClassifier {
    calls: usize,
    prepared: Vec<String>,
}

fn mock_logits(images: &Tensor, questions: &[String], n: i64) -> Tensor {
    let b = questions.len() as i64;
    let m = images.mean_dim([1i64, 2, 3].as_slice(), false, Kind::Float);
    let len = Tensor::from_slice(&questions.iter().map(|q| q.len() as f32).collect::<Vec<_>>());
    let classes = Tensor::arange(n, (Kind::Float, Device::Cpu)).view([1, n]);
    let center = ((m * 7.0 + len).remainder(n as f64)).view([b, 1]);
    -(classes - center).abs()
}

impl VqaModel for MockClassifier {
    fn prepare(&mut self, answers: &[String]) -> vlp_core::Result<()> {
        self.prepared = answers.to_vec();
        Ok(())
    }
    fn predict(
        &mut self,
        images: &Tensor,
        questions: &[String],
    ) -> vlp_core::Result<VqaPrediction> {
        self.calls += 1;
        Ok(VqaPrediction::Logits(mock_logits(
            images,
            questions,
            self.prepared.len() as i64,
        )))
    }
}

#[test]
fn vqa_classifier_on_albef_style_files() {
    let dir = temp_dir("vqa-cls");
    for k in 0..3u32 {
        write_image(&dir.join(format!("img/{k}.png")), k);
    }
    let qs = json!([
        {"question_id": 1, "question": "What color is the car?", "answer": ["red", "red", "blue"], "image": "img/0.png", "dataset": "vqa"},
        {"question_id": 2, "question": "Is there a dog?", "answer": ["yes", "yes", "yes"], "image": "img/0.png", "dataset": "vqa"},
        {"question_id": 3, "question": "How many people?", "answer": ["two", "2", "two", "two"], "image": "img/1.png", "dataset": "vqa"},
        {"question_id": 4, "question": "What animal is it?", "answer": ["cat", "dog"], "image": "img/2.png", "dataset": "vqa"},
        {"question_id": 5, "question": "Is it sunny?", "answer": ["no"], "image": "img/2.png", "dataset": "vqa"},
    ]);
    let qp = dir.join("vqa_val.json");
    write_json(&qp, &qs);
    let questions = read_albef(&qp, &ReadOptions::new(&*dir), None)
        .unwrap()
        .items;
    let answers = strings(&ANSWERS);
    let mut m = MockClassifier {
        calls: 0,
        prepared: Vec::new(),
    };
    let report = vqa::evaluate(
        &mut m,
        &questions,
        &answers,
        transform(),
        TextPrep::Raw,
        &opts(2),
    )
    .unwrap();
    assert_eq!(m.prepared, answers, "prepare() gets the candidates");
    assert_eq!(m.calls, 3, "5 questions in batches of 2");
    // Each answer is the argmax of the model's logits for that question alone.
    for (q, r) in questions.iter().zip(&report.results) {
        let l = mock_logits(&load(&q.image), std::slice::from_ref(&q.question), 6);
        let best = l.argmax(1, false).int64_value(&[0]) as usize;
        assert_eq!(r.answer, ANSWERS[best]);
        assert_eq!(Some(r.question_id), q.question_id);
    }
    // Accuracy of those answers; no answer or question types in these files.
    let acc = report.accuracy.as_ref().unwrap();
    let mean: f64 = questions
        .iter()
        .zip(&report.results)
        .map(|(q, r)| official_accuracy(&r.answer, &q.answers))
        .sum::<f64>()
        / 5.0;
    assert_eq!(acc.overall, round2(100.0 * mean));
    assert!(acc.per_answer_type.is_empty() && acc.per_question_type.is_empty());
    let rp = dir.join("results.json");
    report.write_results(&rp).unwrap();
    check_vqa_results(&rp, &[1, 2, 3, 4, 5]);

    // Without answers: results, no accuracy.
    let mut test_qs = questions.clone();
    test_qs.iter_mut().for_each(|q| q.answers.clear());
    let r = vqa::evaluate(
        &mut m,
        &test_qs,
        &answers,
        transform(),
        TextPrep::Raw,
        &opts(4),
    )
    .unwrap();
    assert!(r.accuracy.is_none());
    assert_eq!(r.results, report.results);

    // Bad model output and bad input are errors.
    struct Wrong(usize);
    impl VqaModel for Wrong {
        fn predict(&mut self, _: &Tensor, q: &[String]) -> vlp_core::Result<VqaPrediction> {
            Ok(match self.0 {
                0 => VqaPrediction::Logits(Tensor::zeros(
                    [q.len() as i64, 5],
                    (Kind::Float, Device::Cpu),
                )),
                _ => VqaPrediction::Choices(vec![6; q.len()]),
            })
        }
    }
    let e = vqa::evaluate(
        &mut Wrong(0),
        &questions,
        &answers,
        transform(),
        TextPrep::Raw,
        &opts(2),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("[2, 6]"), "{e}");
    let e = vqa::evaluate(
        &mut Wrong(1),
        &questions,
        &answers,
        transform(),
        TextPrep::Raw,
        &opts(2),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("out of range"), "{e}");
    let mut dup = questions.clone();
    dup[1].question_id = Some(1);
    let e = vqa::evaluate(&mut m, &dup, &answers, transform(), TextPrep::Raw, &opts(2))
        .unwrap_err()
        .to_string();
    assert!(e.contains("question_id 1 appears twice"), "{e}");
    let mut partial = questions.clone();
    partial[3].answers.clear();
    let e = vqa::evaluate(
        &mut m,
        &partial,
        &answers,
        transform(),
        TextPrep::Raw,
        &opts(2),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("question 4 has no answers"), "{e}");
}

// ------------------------------------------------------------------------------------------------
// Captioning.
// ------------------------------------------------------------------------------------------------

#[test]
fn caption_blip_round_trip() {
    tch::manual_seed(3);
    let model = BlipDecoder::new(&blip_cfg("captioning_1"), Device::Cpu).unwrap();
    let text = blip_text();
    let mut view = BlipCaptionEval::new(&model, &text).unwrap();
    let dir = temp_dir("caption");
    for id in [7u32, 42, 391895] {
        write_image(&dir.join(format!("val2014/COCO_val2014_{id:012}.png")), id);
    }
    // An evaluation record with a caption list and two training-style records of one image.
    let ann = json!([
        {"image": "val2014/COCO_val2014_000000000007.png", "caption": ["a dog on the grass", "a black dog sitting on the grass"]},
        {"image": "val2014/COCO_val2014_000000000042.png", "caption": "a man riding a horse in the park", "image_id": "coco_42"},
        {"image": "val2014/COCO_val2014_000000391895.png", "caption": ["a red car on the street", "a car next to a tree"]},
        {"image": "val2014/COCO_val2014_000000000042.png", "caption": "a man on a horse", "image_id": "coco_42"},
    ]);
    let ap = dir.join("coco_karpathy_test.json");
    write_json(&ap, &ann);
    let entries = karpathy::read(&ap, &ReadOptions::new(&*dir)).unwrap().items;
    let images = caption::images_of(&entries).unwrap();
    assert_eq!(images.len(), 3);
    assert_eq!(images[1].references.len(), 2, "records of one image merged");
    let report = caption::evaluate(&mut view, &images, transform(), &opts(2)).unwrap();

    // The result file: COCO results with the numeric ids BLIP derives from the file names.
    let rp = dir.join("results.json");
    report.write_results(&rp).unwrap();
    let v = read_json(&rp);
    let items = v.as_array().unwrap();
    let ids: Vec<u64> = items
        .iter()
        .map(|i| i["image_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [7, 42, 391895]);
    for it in items {
        assert_eq!(it.as_object().unwrap().len(), 2);
        assert!(it["caption"].is_string());
    }

    // Captions are the model's own, one image at a time.
    let prompt = model
        .prompt_ids(&text.tokenizer, &model.cfg.prompt)
        .unwrap();
    let direct: Vec<String> = images
        .iter()
        .map(|im| {
            let ids = tch::no_grad(|| {
                model.generate(&load(&im.image), &prompt, &model.generate_options())
            })
            .unwrap();
            model.captions(&text.tokenizer, &ids).unwrap().remove(0)
        })
        .collect();
    let got: Vec<String> = report.results.iter().map(|r| r.caption.clone()).collect();
    assert_eq!(got, direct);

    // Metrics: pycocoevalcap's of those captions; `vlp score caption` agrees on the files.
    let pairs: Vec<(String, Vec<String>)> = direct
        .iter()
        .cloned()
        .zip(images.iter().map(|i| i.references.clone()))
        .collect();
    let want = caption_metrics(&pairs);
    assert_eq!(report.metrics, Some(want));
    let refp = dir.join("references.json");
    caption::write_references(&refp, &images).unwrap();
    let s = compute(&ScoreTask::Caption {
        references: refp,
        results: rp,
    })
    .unwrap();
    assert_eq!(s.json, serde_json::to_value(want).unwrap());

    // A mock captioner returning one reference per image scores BLEU-1 = 1.
    struct Echo(Vec<String>, usize);
    impl CaptionModel for Echo {
        fn generate(&mut self, images: &Tensor) -> vlp_core::Result<Vec<String>> {
            let b = images.size()[0] as usize;
            let out = self.0[self.1..self.1 + b].to_vec();
            self.1 += b;
            Ok(out)
        }
    }
    let mut echo = Echo(images.iter().map(|i| i.references[0].clone()).collect(), 0);
    let r = caption::evaluate(&mut echo, &images, transform(), &opts(2)).unwrap();
    assert!((r.metrics.unwrap().bleu_1 - 1.0).abs() < 1e-9);
}

// ------------------------------------------------------------------------------------------------
// NLVR2 and SNLI-VE.
// ------------------------------------------------------------------------------------------------

/// Official NLVR2 dev lines: 3 sentences with 2, 2 and 1 examples.
fn write_nlvr2(dir: &Path) -> PathBuf {
    let ids = [
        ("dev-1-0-0", "True"),
        ("dev-1-1-0", "False"),
        ("dev-2-0-1", "False"),
        ("dev-2-1-1", "True"),
        ("dev-3-0-0", "True"),
    ];
    let sentences = [
        "the left image has a dog",
        "the left image has a dog",
        "there are two cats in both images",
        "there are two cats in both images",
        "a man is riding a horse",
    ];
    let mut lines = String::new();
    for (k, ((id, label), s)) in ids.iter().zip(sentences).enumerate() {
        let stem = id.rsplit_once('-').unwrap().0;
        write_image(&dir.join(format!("dev/{stem}-img0.png")), k as u32);
        write_image(&dir.join(format!("dev/{stem}-img1.png")), 10 + k as u32);
        lines += &format!(
            "{}\n",
            json!({"identifier": id, "sentence": s, "label": label, "synset": "dog"})
        );
    }
    let p = dir.join("dev.json");
    std::fs::write(&p, lines).unwrap();
    p
}

fn nlvr2_round_trip<M: Nlvr2Model>(
    model: &mut M,
    dir: &Path,
    name: &str,
    prep: TextPrep,
    direct: impl Fn(&nlvr2::Nlvr2Example) -> Tensor,
) {
    let ap = write_nlvr2(dir);
    let ex = nlvr2::read(&ap, &ReadOptions::new(dir)).unwrap().items;
    let report = evaluate_nlvr2(model, &ex, transform(), prep, &opts(2)).unwrap();
    // Predictions are the argmax of the model's own logits, one example at a time.
    let preds: Vec<bool> = ex
        .iter()
        .map(|e| direct(e).argmax(1, false).int64_value(&[0]) == 1)
        .collect();
    let got: Vec<bool> = report.predictions.iter().map(|&p| p == 1).collect();
    assert_eq!(got, preds, "{name}");
    let pairs: Vec<(bool, bool)> = ex.iter().map(|e| e.label).zip(preds).collect();
    let mut want = accuracy(&pairs, |b| if *b { "True" } else { "False" }.to_string());
    want.consistency = nlvr2_consistency(
        ex.iter()
            .zip(&pairs)
            .map(|(e, (t, p))| (e.identifier.as_deref().unwrap(), t == p)),
    );
    assert_eq!(report.metrics, want);
    assert!(report.metrics.consistency.is_some());
    // Result file: identifier + "True"/"False"; `vlp score nlvr2` reads it with the same metrics.
    let rp = dir.join(format!("{name}_results.json"));
    report.write_results(&rp).unwrap();
    let v = read_json(&rp);
    for (it, e) in v.as_array().unwrap().iter().zip(&ex) {
        assert_eq!(it["identifier"].as_str(), e.identifier.as_deref());
        assert!(matches!(it["prediction"].as_str(), Some("True" | "False")));
    }
    let s = compute(&ScoreTask::Nlvr2 {
        annotations: ap,
        results: rp,
    })
    .unwrap();
    assert_eq!(s.json, serde_json::to_value(&report.metrics).unwrap());
}

#[test]
fn nlvr2_albef_and_blip_round_trip() {
    tch::manual_seed(4);
    let albef = AlbefNlvr::new(&albef_cfg("nlvr2_1"), Device::Cpu).unwrap();
    let enc = albef_text();
    let prep = TextPrep::Albef { max_words: 30 };
    let mut view = AlbefNlvr2Eval::new(&albef, &enc).unwrap();
    nlvr2_round_trip(&mut view, &temp_dir("nlvr2-albef"), "albef", prep, |e| {
        let img = Tensor::cat(&[load(&e.images[0]), load(&e.images[1])], 0);
        let (ti, tm) = enc.encode(&[prep.caption(&e.sentence).as_str()]).unwrap();
        tch::no_grad(|| albef.forward(&img, &ti, &tm))
            .unwrap()
            .logits
    });

    let blip = BlipNlvr::new(&blip_cfg("nlvr2_1"), Device::Cpu).unwrap();
    let text = blip_text();
    let prep = TextPrep::Blip { max_words: 30 };
    let mut view = BlipNlvr2Eval::new(&blip, &text).unwrap();
    nlvr2_round_trip(&mut view, &temp_dir("nlvr2-blip"), "blip", prep, |e| {
        let img = Tensor::cat(&[load(&e.images[0]), load(&e.images[1])], 0);
        let b = text
            .tokenizer
            .encode_batch(
                &[prep.caption(&e.sentence).as_str()],
                &EncodeOptions::longest(35),
            )
            .unwrap();
        let ids = with_first_token(&b.input_ids, blip.tokens.enc);
        tch::no_grad(|| blip.forward(&img, &ids, &b.attention_mask))
            .unwrap()
            .logits
    });
}

#[test]
fn ve_albef_round_trip() {
    tch::manual_seed(5);
    let model = AlbefVe::new(&albef_cfg("ve_1"), Device::Cpu).unwrap();
    let enc = albef_text();
    let mut view = AlbefVeEval::new(&model, &enc).unwrap();
    let dir = temp_dir("ve");
    for k in 0..3u32 {
        write_image(&dir.join(format!("flickr/{k}.jpg")), k);
    }
    let ann = json!([
        {"image": "flickr/0.jpg", "sentence": "A dog is on the grass.", "label": "entailment"},
        {"image": "flickr/0.jpg", "sentence": "A cat sits on a sofa.", "label": "contradiction"},
        {"image": "flickr/1.jpg", "sentence": "Two people are in the park.", "label": "neutral"},
        {"image": "flickr/2.jpg", "sentence": "A red car.", "label": "entailment"},
    ]);
    let ap = dir.join("ve_test.json");
    write_json(&ap, &ann);
    let ex = snli_ve::read(&ap, &ReadOptions::new(&*dir)).unwrap().items;
    let prep = TextPrep::Albef { max_words: 30 };
    let report = evaluate_ve(&mut view, &ex, transform(), prep, &opts(3)).unwrap();
    let preds: Vec<VeLabel> = ex
        .iter()
        .map(|e| {
            let (ti, tm) = enc.encode(&[prep.caption(&e.sentence).as_str()]).unwrap();
            let l = tch::no_grad(|| model.forward(&load(&e.image), &ti, &tm))
                .unwrap()
                .logits;
            VeLabel::ALL[l.argmax(1, false).int64_value(&[0]) as usize]
        })
        .collect();
    let got: Vec<VeLabel> = report
        .predictions
        .iter()
        .map(|&p| VeLabel::ALL[p])
        .collect();
    assert_eq!(got, preds);
    let pairs: Vec<(VeLabel, VeLabel)> = ex.iter().map(|e| e.label).zip(preds).collect();
    assert_eq!(report.metrics, accuracy(&pairs, |l| l.name().to_string()));
    assert!(report.metrics.consistency.is_none());
    let rp = dir.join("results.json");
    report.write_results(&rp).unwrap();
    let v = read_json(&rp);
    for (i, it) in v.as_array().unwrap().iter().enumerate() {
        assert_eq!(
            it["index"].as_u64(),
            Some(i as u64),
            "no identifiers: keyed by index"
        );
        assert!(VeLabel::parse(&it["prediction"]).is_some());
    }
    let s = compute(&ScoreTask::Ve {
        annotations: ap,
        results: rp,
    })
    .unwrap();
    assert_eq!(s.json, serde_json::to_value(&report.metrics).unwrap());
}

// ------------------------------------------------------------------------------------------------
// Retrieval.
// ------------------------------------------------------------------------------------------------

/// A 3-image, 6-caption gallery (two captions per image).
fn write_gallery(dir: &Path) -> RetrievalGallery {
    for k in 0..3u32 {
        write_image(&dir.join(format!("img/{k}.png")), k);
    }
    let ann = json!([
        {"image": "img/0.png", "caption": ["a dog on the grass", "a black dog sitting"], "image_id": 0},
        {"image": "img/1.png", "caption": ["a man riding a horse", "two people in the park"], "image_id": 1},
        {"image": "img/2.png", "caption": ["a red car on the street", "a small tree next to the water"], "image_id": 2},
    ]);
    let p = dir.join("test.json");
    write_json(&p, &ann);
    let entries = karpathy::read(&p, &ReadOptions::new(dir)).unwrap().items;
    RetrievalGallery::from_entries(&entries, TextPrep::Raw)
}

fn all_images(g: &RetrievalGallery) -> Tensor {
    Tensor::cat(&g.images.iter().map(|p| load(p)).collect::<Vec<_>>(), 0)
}

fn assert_close(a: &ScoreMatrix, b: &ScoreMatrix, what: &str) {
    assert_eq!((a.rows, a.cols), (b.rows, b.cols), "{what}");
    for (x, y) in a.data.iter().zip(&b.data) {
        assert!((x - y).abs() < 1e-4, "{what}: {x} vs {y}");
    }
}

fn to_matrix(t: &Tensor) -> ScoreMatrix {
    let s = t.size();
    ScoreMatrix {
        rows: s[0] as usize,
        cols: s[1] as usize,
        data: Vec::<f64>::try_from(t.to_kind(Kind::Double).contiguous().view([-1])).unwrap(),
    }
}

/// The evaluator at k ≥ N equals the brute-force scorer through the same view, and at k = 1
/// costs N_img + N_txt fused passes.
fn check_retrieval<M: RetrievalModel>(
    mut fresh: impl FnMut() -> M,
    g: &RetrievalGallery,
    fusion: Fusion,
) -> ScoreMatrix {
    let (ni, nt) = (g.images.len(), g.texts.len());
    let lc = LoaderConfig::new(2);
    let mut view = fresh();
    let report = evaluate_gallery(
        &mut view,
        g,
        transform(),
        &lc,
        &RetrievalEvalConfig::new(10, fusion),
    )
    .unwrap();
    assert_eq!(report.fused_passes, (2 * ni * nt) as u64);

    let mut bf = fresh();
    let fi = bf
        .encode_images(&(0..ni).collect::<Vec<_>>(), &all_images(g))
        .unwrap();
    let ft = bf
        .encode_texts(&(0..nt).collect::<Vec<_>>(), &g.texts)
        .unwrap();
    let itc = itc_matrix(&mut bf, &fi, &ft).unwrap();
    let brute = brute_force_scores(&mut bf, &itc, fusion).unwrap();
    assert_close(&report.i2t, &brute, "i2t vs brute force");
    assert_close(&report.t2i, &brute.transpose(), "t2i vs brute force");
    let m = itm_eval(&brute, &brute.transpose(), &g.img2txt, &g.txt2img).unwrap();
    assert_eq!(
        serde_json::to_value(report.metrics).unwrap(),
        serde_json::to_value(m).unwrap()
    );

    let small = evaluate_gallery(
        &mut fresh(),
        g,
        transform(),
        &lc,
        &RetrievalEvalConfig::new(1, fusion),
    )
    .unwrap();
    assert_eq!(small.fused_passes, (ni + nt) as u64);
    report.i2t
}

#[test]
fn retrieval_albef_views_match_brute_force_and_model_rule() {
    tch::manual_seed(6);
    let dir = temp_dir("retrieval-albef");
    let g = write_gallery(&dir);
    let enc = albef_text();
    let pre = AlbefPretrain::new(&albef_cfg("pretrain_1"), Device::Cpu).unwrap();
    check_retrieval(
        || AlbefRetrievalEval::new(&pre, &enc).unwrap(),
        &g,
        AlbefRetrievalEval::FUSION,
    );

    let ret = AlbefRetrieval::new(&albef_cfg("retrieval_1"), Device::Cpu).unwrap();
    let i2t = check_retrieval(
        || AlbefRetrievalEval::new(&ret, &enc).unwrap(),
        &g,
        Fusion::ItmOnly,
    );
    // The model's own `Retrieval.py` rule (ITM logit only) on the same padded captions.
    let refs: Vec<&str> = g.texts.iter().map(String::as_str).collect();
    let b = enc
        .tokenizer
        .encode_batch(
            &refs,
            &EncodeOptions {
                padding: Padding::MaxLength(30),
                max_length: Some(30),
                style: SpecialStyle::ClsOnly,
            },
        )
        .unwrap();
    let own = tch::no_grad(|| ret.evaluate(&all_images(&g), &b.input_ids, &b.attention_mask, 10))
        .unwrap();
    assert_close(
        &i2t,
        &to_matrix(&own.i2t),
        "ALBEF evaluator vs AlbefRetrieval::evaluate",
    );
}

#[test]
fn retrieval_blip_views_match_brute_force_and_model_rule() {
    tch::manual_seed(7);
    let dir = temp_dir("retrieval-blip");
    let g = write_gallery(&dir);
    let text = blip_text();
    let pre = BlipPretrain::new(&blip_cfg("pretrain_1"), Device::Cpu).unwrap();
    check_retrieval(
        || BlipRetrievalEval::new(&pre, &text).unwrap(),
        &g,
        BlipRetrievalEval::FUSION,
    );

    let ret = BlipRetrieval::new(&blip_cfg("retrieval_1"), Device::Cpu).unwrap();
    let i2t = check_retrieval(
        || BlipRetrievalEval::new(&ret, &text).unwrap(),
        &g,
        Fusion::ItmPlusItc,
    );
    // The model's own `train_retrieval.py` rule (ITM logit + ITC sim) on the same captions.
    let (ids, mask) = text.encode(&g.texts, Padding::MaxLength(35)).unwrap();
    let own = tch::no_grad(|| ret.evaluate(&all_images(&g), &ids, &mask, 10)).unwrap();
    assert_close(
        &i2t,
        &to_matrix(&own.i2t),
        "BLIP evaluator vs ItmHeads::evaluate",
    );
}

// ------------------------------------------------------------------------------------------------
// Bad input.
// ------------------------------------------------------------------------------------------------

#[test]
fn missing_image_is_named_and_training_mode_rejected() {
    let dir = temp_dir("missing");
    write_image(&dir.join("img/0.png"), 0);
    let qs = json!([
        {"question_id": 1, "question": "Is there a dog?", "answer": ["yes"], "image": "img/0.png"},
        {"question_id": 2, "question": "What color?", "answer": ["red"], "image": "img/gone.png"},
    ]);
    let qp = dir.join("vqa.json");
    write_json(&qp, &qs);
    let questions = read_albef(&qp, &ReadOptions::new(&*dir), None)
        .unwrap()
        .items;
    let mut m = MockClassifier {
        calls: 0,
        prepared: Vec::new(),
    };
    let e = vqa::evaluate(
        &mut m,
        &questions,
        &strings(&ANSWERS),
        transform(),
        TextPrep::Raw,
        &opts(1),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("gone.png"), "{e}");

    struct Never;
    impl CaptionModel for Never {
        fn generate(&mut self, images: &Tensor) -> vlp_core::Result<Vec<String>> {
            Ok(vec!["x".into(); images.size()[0] as usize])
        }
    }
    let images = vec![caption::CaptionImage {
        image: dir.join("img/missing.jpg"),
        image_id: karpathy::ImageId::Int(1),
        references: vec![],
    }];
    let e = caption::evaluate(&mut Never, &images, transform(), &opts(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.jpg"), "{e}");

    struct Ve;
    impl VeModel for Ve {
        fn logits(&mut self, images: &Tensor, _: &[String]) -> vlp_core::Result<Tensor> {
            Ok(Tensor::zeros(
                [images.size()[0], 3],
                (Kind::Float, Device::Cpu),
            ))
        }
    }
    let ann = json!([{"image": "img/0.png", "sentence": "a", "label": 2}, {"image": "img/absent.png", "sentence": "b", "label": 0}]);
    let ap = dir.join("ve.json");
    write_json(&ap, &ann);
    let ex = snli_ve::read(&ap, &ReadOptions::new(&*dir)).unwrap().items;
    let e = evaluate_ve(&mut Ve, &ex, transform(), TextPrep::Raw, &opts(2))
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent.png"), "{e}");

    let mut model = AlbefVqa::new(&albef_cfg("vqa_1"), Device::Cpu).unwrap();
    model.train = true;
    let e = AlbefVqaEval::new(&model, &albef_text(), 3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("training mode"), "{e}");
}
