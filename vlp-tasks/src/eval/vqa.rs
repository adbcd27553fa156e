//! A model-agnostic VQA evaluator for both answer styles:
//!
//! - **classifier** over an answer vocabulary (ViLT / VLMo / BEiT-3 heads): the model returns
//!   logits `[B, n_answers]` ([`VqaPrediction::Logits`]) and the answer is the argmax;
//! - **ranking** over an answer list (ALBEF / BLIP `rank_answer`): the model returns the index of
//!   its chosen candidate per question ([`VqaPrediction::Choices`]).
//!
//! Either way the model sees the candidates once ([`VqaModel::prepare`]), then batches of images
//! and questions. The evaluator writes the official result file `[{"question_id", "answer"}]`
//! ([`VqaReport::write_results`], what the VQA evaluation server and `vlp score vqa` read) and,
//! when every question has its annotator answers, the official accuracy
//! ([`crate::metrics::vqa::evaluate`]): `overall`, plus `perAnswerType` / `perQuestionType` when
//! the types are known (official annotations).
use super::{argmax_rows, image_batches, progress_bar, write_json, EvalOptions};
use crate::data::vqa::VqaQuestion;
use crate::data::TextPrep;
use crate::metrics::vqa::{evaluate as vqa_evaluate, GtAnswer, VqaEvalResult, VqaGroundTruth};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use tch::Tensor;
use vlp_core::image::ImageTransform;
use vlp_core::{Result, VlpError};

/// What a model answers for a batch of questions.
#[derive(Debug)]
pub enum VqaPrediction {
    /// Classifier logits `[B, n_answers]` over the candidates in order; the answer is the argmax.
    Logits(Tensor),
    /// The index of the chosen candidate per question (ranking models).
    Choices(Vec<usize>),
}

/// What a model offers the VQA evaluator.
pub trait VqaModel {
    /// Called once before the first batch with the candidate answers: the vocabulary in label
    /// order (classifier) or the answer list to rank (ALBEF/BLIP). Default: nothing to prepare.
    fn prepare(&mut self, answers: &[String]) -> Result<()> {
        let _ = answers;
        Ok(())
    }
    /// Answers a batch: `images` `[B, 3, H, W]` (transformed, on the CPU) and the preprocessed
    /// questions.
    fn predict(&mut self, images: &Tensor, questions: &[String]) -> Result<VqaPrediction>;
}

/// One line of the official result file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VqaResult {
    /// `question_id`.
    pub question_id: u64,
    /// The predicted answer (a candidate, as written in the vocabulary / answer list).
    pub answer: String,
}

/// The evaluator's result.
#[derive(Debug, Clone, Serialize)]
pub struct VqaReport {
    /// Questions answered.
    pub questions: usize,
    /// Candidate answers.
    pub candidates: usize,
    /// The official accuracy (`overall`, `perAnswerType`, `perQuestionType` in percent, the
    /// type maps empty when the types are unknown); `None` without ground-truth answers.
    #[serde(flatten)]
    pub accuracy: Option<VqaEvalResult>,
    /// One answer per question, in question order.
    #[serde(skip)]
    pub results: Vec<VqaResult>,
    /// The chosen candidate index per question, in question order.
    #[serde(skip)]
    pub choices: Vec<usize>,
}

impl VqaReport {
    /// Writes the official result file `[{"question_id": int, "answer": str}]`.
    pub fn write_results(&self, path: &Path) -> Result<()> {
        write_json(path, &self.results)
    }

    /// Writes the report (counts and accuracy) as JSON.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        write_json(path, self)
    }
}

/// Reads a result file written by [`VqaReport::write_results`] (or any official one).
pub fn read_results(path: &Path) -> Result<Vec<VqaResult>> {
    let text = std::fs::read_to_string(path).map_err(|e| VlpError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| VlpError::Data {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        field: "<results>".into(),
        msg: e.to_string(),
    })
}

/// The annotator answers as the official annotations hold them: `answer_id` 1, 2, … in order.
/// The official accuracy compares each annotator with the *other* annotators (records that differ
/// as dicts), so identical answers must stay distinct records, as their ids make them.
pub fn annotator_answers(answers: &[String]) -> Vec<GtAnswer> {
    answers
        .iter()
        .enumerate()
        .map(|(k, a)| GtAnswer {
            answer: a.clone(),
            answer_confidence: None,
            answer_id: Some(k as u64 + 1),
        })
        .collect()
}

/// The ground truth of the questions when every one has answers; `None` when none has; an error
/// naming the first question without answers when only some have.
fn ground_truth(questions: &[VqaQuestion], ids: &[u64]) -> Result<Option<Vec<VqaGroundTruth>>> {
    let with = questions.iter().filter(|q| !q.answers.is_empty()).count();
    if with == 0 {
        return Ok(None);
    }
    if with < questions.len() {
        let i = questions
            .iter()
            .position(|q| q.answers.is_empty())
            .unwrap_or(0);
        return Err(VlpError::input(
            "questions",
            format!(
                "question {} has no answers but {with} of {} have: cannot score a partly annotated set",
                ids[i],
                questions.len()
            ),
        ));
    }
    Ok(Some(
        questions
            .iter()
            .zip(ids)
            .map(|(q, &id)| VqaGroundTruth {
                question_id: id,
                question_type: q.question_type.clone().unwrap_or_default(),
                answer_type: q.answer_type.clone().unwrap_or_default(),
                answers: annotator_answers(&q.answers),
            })
            .collect(),
    ))
}

/// Evaluates `model` on `questions` (images resolved by the reader; `prep` preprocesses the
/// question text) with the candidate `answers` (vocabulary in label order, or the answer list).
/// Every question needs a `question_id` (the result file is keyed by it), unique.
pub fn evaluate<M: VqaModel + ?Sized>(
    model: &mut M,
    questions: &[VqaQuestion],
    answers: &[String],
    transform: ImageTransform,
    prep: TextPrep,
    opts: &EvalOptions,
) -> Result<VqaReport> {
    if questions.is_empty() || answers.is_empty() {
        return Err(VlpError::input(
            "questions",
            "no questions or no candidate answers",
        ));
    }
    let mut ids = Vec::with_capacity(questions.len());
    let mut seen = HashSet::new();
    for (i, q) in questions.iter().enumerate() {
        let id = q.question_id.ok_or_else(|| {
            VlpError::input(
                "questions",
                format!(
                    "question {i} ({:?}, image {}) has no question_id; the result file needs one",
                    q.question,
                    q.image.display()
                ),
            )
        })?;
        if !seen.insert(id) {
            return Err(VlpError::input(
                "questions",
                format!("question_id {id} appears twice"),
            ));
        }
        ids.push(id);
    }
    let gts = ground_truth(questions, &ids)?;
    model.prepare(answers)?;
    let texts: Vec<String> = questions
        .iter()
        .map(|q| prep.question(&q.question))
        .collect();
    let paths: Vec<Vec<PathBuf>> = questions.iter().map(|q| vec![q.image.clone()]).collect();
    let loader = image_batches(paths, transform, opts)?;
    let pb = progress_bar(opts.progress, questions.len() as u64, "VQA");
    let mut choices: Vec<Option<usize>> = vec![None; questions.len()];
    for batch in loader.epoch(0) {
        let (idx, images) = batch?;
        let qs: Vec<String> = idx.iter().map(|&i| texts[i].clone()).collect();
        let picked = match model.predict(&images[0], &qs)? {
            VqaPrediction::Logits(l) => {
                argmax_rows(&l, idx.len(), answers.len(), "VqaModel::predict")?
            }
            VqaPrediction::Choices(c) => {
                if c.len() != idx.len() {
                    return Err(VlpError::input(
                        "VqaModel::predict",
                        format!("{} choices for {} questions", c.len(), idx.len()),
                    ));
                }
                if let Some(bad) = c.iter().find(|&&a| a >= answers.len()) {
                    return Err(VlpError::input(
                        "VqaModel::predict",
                        format!("choice {bad} out of range ({} candidates)", answers.len()),
                    ));
                }
                c
            }
        };
        for (&i, a) in idx.iter().zip(picked) {
            choices[i] = Some(a);
        }
        pb.inc(idx.len() as u64);
    }
    pb.finish_and_clear();
    let choices: Vec<usize> = choices
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            c.ok_or_else(|| VlpError::Msg(format!("question {} was never answered", ids[i])))
        })
        .collect::<Result<_>>()?;
    let results: Vec<VqaResult> = ids
        .iter()
        .zip(&choices)
        .map(|(&question_id, &c)| VqaResult {
            question_id,
            answer: answers[c].clone(),
        })
        .collect();
    let accuracy = match gts {
        None => None,
        Some(gts) => {
            let map: HashMap<u64, String> = results
                .iter()
                .map(|r| (r.question_id, r.answer.clone()))
                .collect();
            let mut acc = vqa_evaluate(&gts, &map)?;
            if questions.iter().any(|q| q.answer_type.is_none()) {
                acc.per_answer_type.clear();
            }
            if questions.iter().any(|q| q.question_type.is_none()) {
                acc.per_question_type.clear();
            }
            Some(acc)
        }
    };
    Ok(VqaReport {
        questions: questions.len(),
        candidates: answers.len(),
        accuracy,
        results,
        choices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::vqa::vqa_accuracy;

    #[test]
    fn annotators_stay_distinct() {
        // 3 of 10 annotators said "yes": each of them sees 2 others (2/3), the other 7 see 3 (1):
        // (3 * 2/3 + 7) / 10 = 0.9, as vqaEval.py computes it.
        let mut a = vec!["yes".to_string(); 3];
        a.extend(vec!["no".to_string(); 7]);
        let gts = annotator_answers(&a);
        assert_eq!(
            gts.iter().map(|g| g.answer_id).collect::<Vec<_>>()[9],
            Some(10)
        );
        assert!((vqa_accuracy("yes", &gts) - 0.9).abs() < 1e-12);
        assert!((vqa_accuracy("no", &gts) - 1.0).abs() < 1e-12);
        let ten = annotator_answers(&vec!["2".to_string(); 10]);
        assert!((vqa_accuracy("two", &ten) - 1.0).abs() < 1e-12);
    }
}
