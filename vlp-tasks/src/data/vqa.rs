//! VQA v2: the official question and annotation files, ALBEF/BLIP's `vqa_*.json`, their
//! `answer_list.json`, and the answer vocabulary of the classifier heads (ViLT / VLMo / BEiT-3).
//!
//! - Official questions (`v2_OpenEnded_mscoco_{train2014,val2014,test2015,test-dev2015}_questions.json`):
//!   `{"data_subtype": "val2014", "questions": [{"image_id", "question", "question_id"}]}`; the image
//!   is `{subtype}/COCO_{subtype}_{image_id:012}.jpg` under the image root (`test-dev2015` images
//!   live in `test2015`).
//! - Official annotations (`v2_mscoco_{train2014,val2014}_annotations.json`): `{"annotations":
//!   [{"question_id", "image_id", "question_type", "answer_type", "multiple_choice_answer",
//!   "answers": [{"answer", "answer_confidence", "answer_id"}]}]}`, joined to the questions by
//!   `question_id` (both files must hold the same ids).
//! - ALBEF/BLIP (`vqa_train.json`, `vqa_val.json`, `vqa_test.json`, `vg_qa.json`): a JSON array of
//!   `{"question_id", "question", "answer": [..] (absent in test files), "image", "dataset": "vqa"|"vg"}`;
//!   `vg` images resolve against a separate Visual Genome root when one is given.
//! - `answer_list.json`: a JSON array of answer strings (ALBEF/BLIP's candidate list, 3,128 answers).
//!
//! The vocabulary of the classifier heads (3,129 answers on VQA v2 train+val) is built as ViLT's
//! `write_vqa.py` (copied by VLMo and BEiT-3): **one count per question, of its
//! `multiple_choice_answer`** (the most frequent of the ten annotator answers), normalised with
//! `metrics::vqa::normalize_word`, over train then val; answers counted at
//! least 9 times are kept in first-appearance order. Counting every annotator answer instead is
//! available as [`VocabCount::EveryAnswer`] (a different vocabulary; not what those models use).
use super::json::{Record, Source};
use super::loader::Dataset;
use super::{Collector, Loaded, ReadOptions, TextPrep};
use crate::metrics::vqa::{
    answer_scores, normalize_word, soft_targets, GtAnswer, ScoreConvention, VqaGroundTruth,
};
use rand::rngs::StdRng;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::Tensor;
use vlp_core::image::ImageTransform;
use vlp_core::{Result, VlpError};

/// One VQA question with what is known about it.
#[derive(Debug, Clone, PartialEq)]
pub struct VqaQuestion {
    /// `question_id` (ALBEF's Visual Genome records may have none).
    pub question_id: Option<u64>,
    /// `image_id` (official files).
    pub image_id: Option<u64>,
    /// Image path as in the file (or as derived from the official subtype and id).
    pub image_rel: String,
    /// Image path resolved against the image root.
    pub image: PathBuf,
    /// The question.
    pub question: String,
    /// The annotator answers (empty for test questions).
    pub answers: Vec<String>,
    /// `multiple_choice_answer` (official annotations).
    pub multiple_choice_answer: Option<String>,
    /// `question_type` (official annotations).
    pub question_type: Option<String>,
    /// `answer_type` (official annotations).
    pub answer_type: Option<String>,
    /// `dataset` (`vqa` or `vg`, ALBEF/BLIP files).
    pub dataset: Option<String>,
}

/// One record of the official annotations file.
#[derive(Debug, Clone, PartialEq)]
pub struct VqaAnnotation {
    /// `question_id`.
    pub question_id: u64,
    /// `image_id`.
    pub image_id: u64,
    /// `question_type`.
    pub question_type: String,
    /// `answer_type`.
    pub answer_type: String,
    /// `multiple_choice_answer`.
    pub multiple_choice_answer: Option<String>,
    /// The annotator answers.
    pub answers: Vec<GtAnswer>,
}

impl VqaAnnotation {
    /// The ground truth the evaluation needs.
    pub fn ground_truth(&self) -> VqaGroundTruth {
        VqaGroundTruth {
            question_id: self.question_id,
            question_type: self.question_type.clone(),
            answer_type: self.answer_type.clone(),
            answers: self.answers.clone(),
        }
    }
}

fn parse_annotation(r: &Record<'_>) -> Result<VqaAnnotation> {
    let question_id = r.uint("question_id")?;
    let image_id = r.uint("image_id")?;
    let question_type = r.string("question_type")?;
    let answer_type = r.string("answer_type")?;
    let multiple_choice_answer = r.opt_string("multiple_choice_answer")?;
    let answers = match r.req("answers")? {
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let f = |k: &str| format!("answers[{i}].{k}");
                let answer = match a.get("answer") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => {
                        return Err(r.err(
                            &f("answer"),
                            format!("expected a string, found {}", super::json::kind(v)),
                        ))
                    }
                    None => return Err(r.err(&f("answer"), "missing")),
                };
                let answer_confidence = a
                    .get("answer_confidence")
                    .and_then(|v| v.as_str())
                    .map(String::from);
                let answer_id = match a.get("answer_id") {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(v.as_u64().ok_or_else(|| {
                        r.err(&f("answer_id"), "expected a non-negative integer")
                    })?),
                };
                Ok(GtAnswer {
                    answer,
                    answer_confidence,
                    answer_id,
                })
            })
            .collect::<Result<Vec<_>>>()?,
        Value::Array(_) => return Err(r.err("answers", "empty list")),
        v => {
            return Err(r.err(
                "answers",
                format!(
                    "expected a list of answer objects, found {}",
                    super::json::kind(v)
                ),
            ))
        }
    };
    Ok(VqaAnnotation {
        question_id,
        image_id,
        question_type,
        answer_type,
        multiple_choice_answer,
        answers,
    })
}

/// Reads an official annotations file.
pub fn read_official_annotations(path: &Path, opts: &ReadOptions) -> Result<Loaded<VqaAnnotation>> {
    let src = Source::read(path)?;
    let (items, _) = src.array_under("annotations")?;
    let mut out = Collector::new(path, opts);
    for r in items {
        out.push(r.and_then(|r| parse_annotation(&r)))?;
    }
    Ok(out.finish())
}

/// The image directory of an official `data_subtype`.
fn image_dir(subtype: &str) -> &str {
    if subtype.starts_with("test-dev") {
        "test2015"
    } else {
        subtype
    }
}

/// Reads an official questions file, joined with its annotations file when one is given (test
/// splits have none).
pub fn read_official(
    questions: &Path,
    annotations: Option<&Path>,
    opts: &ReadOptions,
) -> Result<Loaded<VqaQuestion>> {
    let src = Source::read(questions)?;
    let (items, top) = src.array_under("questions")?;
    let subtype = match top.get("data_subtype") {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Err(src.error(
                0,
                "data_subtype",
                "missing top-level `data_subtype` (e.g. \"val2014\")",
            ))
        }
    };
    let dir = image_dir(&subtype).to_string();
    let mut anns: Option<HashMap<u64, VqaAnnotation>> = None;
    let mut ann_report = None;
    if let Some(a) = annotations {
        let loaded = read_official_annotations(a, opts)?;
        let mut map = HashMap::new();
        for ann in loaded.items {
            map.insert(ann.question_id, ann);
        }
        anns = Some(map);
        ann_report = Some(loaded.report);
    }
    let mut out = Collector::new(questions, opts);
    for rec in items {
        out.push(rec.and_then(|r| {
            let question_id = r.uint("question_id")?;
            let image_id = r.uint("image_id")?;
            let question = r.string("question")?;
            let image_rel = format!("{dir}/COCO_{dir}_{image_id:012}.jpg");
            let mut q = VqaQuestion {
                question_id: Some(question_id),
                image_id: Some(image_id),
                image: opts.image_path(&image_rel),
                image_rel,
                question,
                answers: Vec::new(),
                multiple_choice_answer: None,
                question_type: None,
                answer_type: None,
                dataset: Some("vqa".into()),
            };
            if let Some(map) = anns.as_mut() {
                let a = map.remove(&question_id).ok_or_else(|| {
                    r.err(
                        "question_id",
                        format!(
                            "no annotation for question {question_id} in {}",
                            annotations.unwrap_or(Path::new("")).display()
                        ),
                    )
                })?;
                if a.image_id != image_id {
                    return Err(r.err(
                        "image_id",
                        format!(
                            "{image_id} but the annotation of question {question_id} says {}",
                            a.image_id
                        ),
                    ));
                }
                q.answers = a.answers.into_iter().map(|g| g.answer).collect();
                q.multiple_choice_answer = a.multiple_choice_answer;
                q.question_type = Some(a.question_type);
                q.answer_type = Some(a.answer_type);
            }
            Ok(q)
        }))?;
    }
    if let (Some(map), Some(a)) = (anns, annotations) {
        if let Some(qid) = map.keys().min() {
            let e = VlpError::Data {
                path: a.to_path_buf(),
                line: 0,
                column: 0,
                field: "annotations.question_id".into(),
                msg: format!(
                    "{} annotated questions (e.g. {qid}) are not in {}",
                    map.len(),
                    questions.display()
                ),
            };
            if !opts.skip_bad_samples {
                return Err(e);
            }
            eprintln!("warning: {e} (skipped)");
        }
    }
    let mut loaded = out.finish();
    if let Some(r) = ann_report {
        loaded.report.merge(r);
    }
    Ok(loaded)
}

/// Reads an ALBEF/BLIP `vqa_*.json` (or `vg_qa.json`); `vg_root` is where `dataset: "vg"`
/// images live (default: the image root).
pub fn read_albef(
    path: &Path,
    opts: &ReadOptions,
    vg_root: Option<&Path>,
) -> Result<Loaded<VqaQuestion>> {
    let src = Source::read(path)?;
    let mut out = Collector::new(path, opts);
    for rec in src.records()? {
        out.push(rec.and_then(|r| {
            let question_id = r.opt_uint("question_id")?;
            let question = r.string("question")?;
            let image_rel = r.string("image")?;
            let dataset = r.opt_string("dataset")?;
            let answers = match r.get("answer")? {
                None => Vec::new(),
                Some(_) => r.strings("answer")?,
            };
            if question_id.is_none() && dataset.as_deref() != Some("vg") {
                return Err(r.err("question_id", "missing"));
            }
            let image = match (dataset.as_deref(), vg_root) {
                (Some("vg"), Some(root)) => root.join(&image_rel),
                _ => opts.image_path(&image_rel),
            };
            Ok(VqaQuestion {
                question_id,
                image_id: None,
                image_rel,
                image,
                question,
                answers,
                multiple_choice_answer: None,
                question_type: None,
                answer_type: None,
                dataset,
            })
        }))?;
    }
    Ok(out.finish())
}

/// Reads an answer list: a JSON array of strings (ALBEF/BLIP `answer_list.json`, BEiT-3's
/// `label2answer.json`), or a text file with one answer a line (easy-VQA `answers.txt`).
pub fn read_answer_list(path: &Path) -> Result<Vec<String>> {
    let src = Source::read(path)?;
    let first = src.text.trim_start().chars().next();
    if first == Some('[') {
        let items = src.top_array()?;
        items
            .map(|r| {
                r.and_then(|r| match &r.value {
                    Value::String(s) => Ok(s.clone()),
                    v => Err(r.err(
                        "",
                        format!("expected an answer string, found {}", super::json::kind(v)),
                    )),
                })
            })
            .collect()
    } else {
        Ok(src
            .text
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect())
    }
}

/// What the vocabulary counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VocabCount {
    /// One count per question: its `multiple_choice_answer` (ViLT / VLMo / BEiT-3).
    #[default]
    MultipleChoiceAnswer,
    /// Every annotator answer.
    EveryAnswer,
}

/// The answer vocabulary of a classifier head: answer ↔ label.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AnswerVocab {
    answers: Vec<String>,
    index: HashMap<String, usize>,
}

impl AnswerVocab {
    /// A vocabulary of the given answers in order (duplicates keep their first label).
    pub fn from_answers(answers: Vec<String>) -> Self {
        let mut index = HashMap::new();
        for (i, a) in answers.iter().enumerate() {
            index.entry(a.clone()).or_insert(i);
        }
        AnswerVocab { answers, index }
    }

    /// Builds the vocabulary from questions (train then val, in that order): answers counted at
    /// least `min_count` times (9 for the 3,129-answer VQA v2 vocabulary), normalised with
    /// [`normalize_word`], in first-appearance order. [`VocabCount::MultipleChoiceAnswer`] needs
    /// official annotations.
    pub fn build<'a>(
        questions: impl IntoIterator<Item = &'a VqaQuestion>,
        min_count: usize,
        count: VocabCount,
    ) -> Result<Self> {
        let mut counts: Vec<(String, usize)> = Vec::new();
        let mut pos: HashMap<String, usize> = HashMap::new();
        let mut add = |a: &str| {
            let a = normalize_word(a);
            match pos.get(&a) {
                Some(&i) => counts[i].1 += 1,
                None => {
                    pos.insert(a.clone(), counts.len());
                    counts.push((a, 1));
                }
            }
        };
        for q in questions {
            match count {
                VocabCount::MultipleChoiceAnswer => {
                    let a = q.multiple_choice_answer.as_deref().ok_or_else(|| {
                        VlpError::Msg(format!(
                            "question {:?} has no multiple_choice_answer (official annotations needed for VocabCount::MultipleChoiceAnswer)",
                            q.question_id
                        ))
                    })?;
                    add(a);
                }
                VocabCount::EveryAnswer => q.answers.iter().for_each(|a| add(a)),
            }
        }
        Ok(Self::from_answers(
            counts
                .into_iter()
                .filter(|(_, c)| *c >= min_count)
                .map(|(a, _)| a)
                .collect(),
        ))
    }

    /// Number of answers.
    pub fn len(&self) -> usize {
        self.answers.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }

    /// The label of an answer.
    pub fn index(&self, answer: &str) -> Option<usize> {
        self.index.get(answer).copied()
    }

    /// The answer of a label.
    pub fn answer(&self, label: usize) -> Option<&str> {
        self.answers.get(label).map(String::as_str)
    }

    /// All answers in label order.
    pub fn answers(&self) -> &[String] {
        &self.answers
    }
}

/// Drops the questions none of whose answers is in `vocab` (ViLT's `write_vqa.py` drops them from
/// train and val); returns how many were dropped.
pub fn retain_labelled(questions: &mut Vec<VqaQuestion>, vocab: &AnswerVocab) -> usize {
    let before = questions.len();
    questions.retain(|q| q.answers.iter().any(|a| vocab.index(a).is_some()));
    before - questions.len()
}

/// A VQA training/evaluation sample.
#[derive(Debug)]
pub struct VqaSample {
    /// The transformed image `[3, H, W]`.
    pub image: Tensor,
    /// The preprocessed question.
    pub question: String,
    /// `question_id`.
    pub question_id: Option<u64>,
    /// Distinct answers with their soft scores (generative heads: ALBEF/BLIP).
    pub answers: Vec<(String, f32)>,
    /// (label, score) targets in the vocabulary (classifier heads); empty without a vocabulary.
    pub targets: Vec<(usize, f32)>,
}

/// A VQA data set over read questions.
#[derive(Debug, Clone)]
pub struct VqaDataset {
    questions: Arc<Vec<VqaQuestion>>,
    transform: ImageTransform,
    prep: TextPrep,
    convention: ScoreConvention,
    vocab: Option<Arc<AnswerVocab>>,
}

impl VqaDataset {
    /// A data set; `vocab` turns answers into classifier targets.
    pub fn new(
        questions: Vec<VqaQuestion>,
        transform: ImageTransform,
        prep: TextPrep,
        convention: ScoreConvention,
        vocab: Option<Arc<AnswerVocab>>,
    ) -> Self {
        VqaDataset {
            questions: Arc::new(questions),
            transform,
            prep,
            convention,
            vocab,
        }
    }

    /// The questions.
    pub fn questions(&self) -> &[VqaQuestion] {
        &self.questions
    }
}

impl Dataset for VqaDataset {
    type Sample = VqaSample;
    fn len(&self) -> usize {
        self.questions.len()
    }
    fn get(&self, i: usize, rng: &mut StdRng) -> Result<VqaSample> {
        let q = &self.questions[i];
        let image = self.transform.apply_path(&q.image, rng)?;
        let targets = match &self.vocab {
            Some(v) => soft_targets(&q.answers, v, self.convention),
            None => Vec::new(),
        };
        Ok(VqaSample {
            image,
            question: self.prep.question(&q.question),
            question_id: q.question_id,
            answers: answer_scores(&q.answers, self.convention),
            targets,
        })
    }
}
