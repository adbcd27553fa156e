//! VQA accuracy as the official VQA v2 evaluation computes it (`vqaEval.py` of
//! GT-Vision-Lab/VQA, `PythonEvaluationTools/vqaEvaluation`), and the soft-score training targets.
//!
//! The official rules, mirrored here with their quirks:
//! - the predicted answer: `\n` and `\t` to spaces, stripped, then [`process_punctuation`] and
//!   [`process_digit_article`] (number words to digits, articles dropped, contractions restored);
//! - the ten annotator answers get [`process_punctuation`] only, and only when they are not all
//!   the same string (so a question whose ten answers are identical compares against them raw);
//! - per question: for each annotator, the other nine are kept (leave-one-out, by whole answer
//!   record: answer, confidence and id) and `min(#matching / 3, 1)` taken; the question's accuracy
//!   is the mean over the annotators;
//! - overall, per answer type and per question type: the mean over questions (summed in
//!   annotation order) times 100, rounded to 2 decimals (`round(x, 2)`, ties to even).
use crate::data::vqa::AnswerVocab;
use regex::Regex;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;
use vlp_core::{Result, VlpError};

/// `contractions` of `vqaEval.py` (keys without apostrophes → the contracted form).
const CONTRACTIONS: &[(&str, &str)] = &[
    ("aint", "ain't"),
    ("arent", "aren't"),
    ("cant", "can't"),
    ("couldve", "could've"),
    ("couldnt", "couldn't"),
    ("couldn'tve", "couldn't've"),
    ("couldnt've", "couldn't've"),
    ("didnt", "didn't"),
    ("doesnt", "doesn't"),
    ("dont", "don't"),
    ("hadnt", "hadn't"),
    ("hadnt've", "hadn't've"),
    ("hadn'tve", "hadn't've"),
    ("hasnt", "hasn't"),
    ("havent", "haven't"),
    ("hed", "he'd"),
    ("hed've", "he'd've"),
    ("he'dve", "he'd've"),
    ("hes", "he's"),
    ("howd", "how'd"),
    ("howll", "how'll"),
    ("hows", "how's"),
    ("Id've", "I'd've"),
    ("I'dve", "I'd've"),
    ("Im", "I'm"),
    ("Ive", "I've"),
    ("isnt", "isn't"),
    ("itd", "it'd"),
    ("itd've", "it'd've"),
    ("it'dve", "it'd've"),
    ("itll", "it'll"),
    ("let's", "let's"),
    ("maam", "ma'am"),
    ("mightnt", "mightn't"),
    ("mightnt've", "mightn't've"),
    ("mightn'tve", "mightn't've"),
    ("mightve", "might've"),
    ("mustnt", "mustn't"),
    ("mustve", "must've"),
    ("neednt", "needn't"),
    ("notve", "not've"),
    ("oclock", "o'clock"),
    ("oughtnt", "oughtn't"),
    ("ow's'at", "'ow's'at"),
    ("'ows'at", "'ow's'at"),
    ("'ow'sat", "'ow's'at"),
    ("shant", "shan't"),
    ("shed've", "she'd've"),
    ("she'dve", "she'd've"),
    ("she's", "she's"),
    ("shouldve", "should've"),
    ("shouldnt", "shouldn't"),
    ("shouldnt've", "shouldn't've"),
    ("shouldn'tve", "shouldn't've"),
    ("somebody'd", "somebodyd"),
    ("somebodyd've", "somebody'd've"),
    ("somebody'dve", "somebody'd've"),
    ("somebodyll", "somebody'll"),
    ("somebodys", "somebody's"),
    ("someoned", "someone'd"),
    ("someoned've", "someone'd've"),
    ("someone'dve", "someone'd've"),
    ("someonell", "someone'll"),
    ("someones", "someone's"),
    ("somethingd", "something'd"),
    ("somethingd've", "something'd've"),
    ("something'dve", "something'd've"),
    ("somethingll", "something'll"),
    ("thats", "that's"),
    ("thered", "there'd"),
    ("thered've", "there'd've"),
    ("there'dve", "there'd've"),
    ("therere", "there're"),
    ("theres", "there's"),
    ("theyd", "they'd"),
    ("theyd've", "they'd've"),
    ("they'dve", "they'd've"),
    ("theyll", "they'll"),
    ("theyre", "they're"),
    ("theyve", "they've"),
    ("twas", "'twas"),
    ("wasnt", "wasn't"),
    ("wed've", "we'd've"),
    ("we'dve", "we'd've"),
    ("weve", "we've"),
    ("werent", "weren't"),
    ("whatll", "what'll"),
    ("whatre", "what're"),
    ("whats", "what's"),
    ("whatve", "what've"),
    ("whens", "when's"),
    ("whered", "where'd"),
    ("wheres", "where's"),
    ("whereve", "where've"),
    ("whod", "who'd"),
    ("whod've", "who'd've"),
    ("who'dve", "who'd've"),
    ("wholl", "who'll"),
    ("whos", "who's"),
    ("whove", "who've"),
    ("whyll", "why'll"),
    ("whyre", "why're"),
    ("whys", "why's"),
    ("wont", "won't"),
    ("wouldve", "would've"),
    ("wouldnt", "wouldn't"),
    ("wouldnt've", "wouldn't've"),
    ("wouldn'tve", "wouldn't've"),
    ("yall", "y'all"),
    ("yall'll", "y'all'll"),
    ("y'allll", "y'all'll"),
    ("yall'd've", "y'all'd've"),
    ("y'alld've", "y'all'd've"),
    ("y'all'dve", "y'all'd've"),
    ("youd", "you'd"),
    ("youd've", "you'd've"),
    ("you'dve", "you'd've"),
    ("youll", "you'll"),
    ("youre", "you're"),
    ("youve", "you've"),
];

/// `manualMap`: number words to digits.
const MANUAL_MAP: &[(&str, &str)] = &[
    ("none", "0"),
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
];

/// `articles`.
const ARTICLES: &[&str] = &["a", "an", "the"];

/// `punct`, in the official order (the order matters: each is handled on the text left by the
/// previous ones).
const PUNCT: &[&str] = &[
    ";", "/", "[", "]", "\"", "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
    ",", "?", "!",
];

fn comma_strip() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| Regex::new(r"\d,\d").expect("valid regex"))
}

fn is_digit(c: char) -> bool {
    static R: OnceLock<Regex> = OnceLock::new();
    let r = R.get_or_init(|| Regex::new(r"^\d$").expect("valid regex"));
    c.is_ascii_digit() || (!c.is_ascii() && r.is_match(c.encode_utf8(&mut [0; 4])))
}

/// Python's `str.split()` / `str.strip()` whitespace.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// `processPunctuation`: each of `punct` is deleted when it touches a space in the input (or the
/// input has a digit-comma-digit), else replaced by a space; then periods not followed by a digit
/// are deleted (at most 32 of them: the official code passes `re.UNICODE` as `re.sub`'s count).
pub fn process_punctuation(in_text: &str) -> String {
    let mut out = in_text.to_string();
    let has_comma_num = comma_strip().is_match(in_text);
    for p in PUNCT {
        if in_text.contains(&format!("{p} ")) || in_text.contains(&format!(" {p}")) || has_comma_num
        {
            out = out.replace(p, "");
        } else {
            out = out.replace(p, " ");
        }
    }
    let chars: Vec<char> = out.chars().collect();
    let mut res = String::with_capacity(out.len());
    let mut removed = 0;
    for (i, &c) in chars.iter().enumerate() {
        if c == '.' && removed < 32 && !chars.get(i + 1).is_some_and(|n| is_digit(*n)) {
            removed += 1;
            continue;
        }
        res.push(c);
    }
    res
}

/// `processDigitArticle`: lower-case, split on whitespace, number words to digits, articles
/// dropped, contractions restored, joined with single spaces.
pub fn process_digit_article(in_text: &str) -> String {
    let lower = in_text.to_lowercase();
    let words: Vec<&str> = lower
        .split(is_py_space)
        .filter(|w| !w.is_empty())
        .map(|w| {
            MANUAL_MAP
                .iter()
                .find(|(k, _)| *k == w)
                .map(|(_, v)| *v)
                .unwrap_or(w)
        })
        .filter(|w| !ARTICLES.contains(w))
        .map(|w| {
            CONTRACTIONS
                .iter()
                .find(|(k, _)| *k == w)
                .map(|(_, v)| *v)
                .unwrap_or(w)
        })
        .collect();
    words.join(" ")
}

/// The official normalisation of a predicted answer: newlines and tabs to spaces, strip,
/// [`process_punctuation`], [`process_digit_article`].
pub fn normalize_answer(answer: &str) -> String {
    let a = answer.replace(['\n', '\t'], " ");
    process_digit_article(&process_punctuation(a.trim_matches(is_py_space)))
}

/// ViLT's `normalize_word` (`vilt/utils/glossary.py`, copied by VLMo and BEiT-3): the official
/// punctuation and digit/article steps, then commas removed. Used on vocabulary answers.
pub fn normalize_word(answer: &str) -> String {
    process_digit_article(&process_punctuation(answer)).replace(',', "")
}

/// One annotator answer of the official annotations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GtAnswer {
    /// The answer.
    pub answer: String,
    /// `answer_confidence` (`yes`, `maybe`, `no`).
    pub answer_confidence: Option<String>,
    /// `answer_id` (1..=10).
    pub answer_id: Option<u64>,
}

impl GtAnswer {
    /// An answer with no confidence or id.
    pub fn new(answer: impl Into<String>) -> Self {
        GtAnswer {
            answer: answer.into(),
            answer_confidence: None,
            answer_id: None,
        }
    }
}

/// One question's score of `prediction`: exact match with the first answer when `exact`
/// (easy-VQA, one answer per question), else the official soft [`vqa_accuracy`] over the
/// annotators' `answers`.
pub fn question_score(prediction: &str, answers: &[String], exact: bool) -> f64 {
    if exact {
        f64::from(u8::from(
            answers.first().map(String::as_str) == Some(prediction),
        ))
    } else {
        let gts: Vec<GtAnswer> = answers.iter().map(|a| GtAnswer::new(a.clone())).collect();
        vqa_accuracy(prediction, &gts)
    }
}

/// The official accuracy of one predicted answer (raw, normalised here) against the annotator
/// answers, in [0, 1].
pub fn vqa_accuracy(prediction: &str, gts: &[GtAnswer]) -> f64 {
    if gts.is_empty() {
        return 0.0;
    }
    let res = normalize_answer(prediction);
    let first = &gts[0].answer;
    let all_same = gts.iter().all(|g| &g.answer == first);
    let gts: Vec<GtAnswer> = if all_same {
        gts.to_vec()
    } else {
        gts.iter()
            .map(|g| GtAnswer {
                answer: process_punctuation(&g.answer),
                ..g.clone()
            })
            .collect()
    };
    // Each annotator is compared with the nine others. The official code leaves out the
    // annotator's own record by dict equality, which in the official files (distinct
    // `answer_id`s) is its position; comparing positions keeps that right for answers built
    // without ids too (identical answers are still different annotators).
    let total: f64 = (0..gts.len())
        .map(|i| {
            let matching = gts
                .iter()
                .enumerate()
                .filter(|(j, o)| *j != i && o.answer == res)
                .count();
            (matching as f64 / 3.0).min(1.0)
        })
        .sum();
    total / gts.len() as f64
}

/// Ground truth of one question for [`evaluate`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VqaGroundTruth {
    /// `question_id`.
    pub question_id: u64,
    /// `question_type` (e.g. `what color is the`).
    pub question_type: String,
    /// `answer_type` (`yes/no`, `number`, `other`).
    pub answer_type: String,
    /// The annotator answers.
    pub answers: Vec<GtAnswer>,
}

/// The official evaluation's `accuracy` dict: percentages rounded to 2 decimals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VqaEvalResult {
    /// `overall`.
    pub overall: f64,
    /// `perAnswerType`.
    #[serde(rename = "perAnswerType")]
    pub per_answer_type: BTreeMap<String, f64>,
    /// `perQuestionType`.
    #[serde(rename = "perQuestionType")]
    pub per_question_type: BTreeMap<String, f64>,
    /// Number of questions evaluated.
    pub questions: usize,
}

/// `round(x, 2)` as Python (correctly rounded, ties to even on the exact binary value).
pub fn round2(x: f64) -> f64 {
    format!("{x:.2}").parse().unwrap_or(x)
}

/// The official evaluation: every annotated question must have a prediction in `results`
/// (question id → raw answer) and every prediction an annotated question.
pub fn evaluate(gts: &[VqaGroundTruth], results: &HashMap<u64, String>) -> Result<VqaEvalResult> {
    if gts.is_empty() {
        return Err(VlpError::Msg(
            "VQA evaluation: no annotated questions".into(),
        ));
    }
    let missing: Vec<u64> = gts
        .iter()
        .filter(|g| !results.contains_key(&g.question_id))
        .map(|g| g.question_id)
        .take(5)
        .collect();
    if !missing.is_empty() {
        return Err(VlpError::Msg(format!(
            "results do not correspond to the annotations: no prediction for question_id {missing:?}{}",
            if missing.len() == 5 { " …" } else { "" }
        )));
    }
    let known: std::collections::HashSet<u64> = gts.iter().map(|g| g.question_id).collect();
    if let Some(extra) = results.keys().find(|q| !known.contains(q)) {
        return Err(VlpError::Msg(format!(
            "results do not correspond to the annotations: question_id {extra} is not annotated"
        )));
    }
    let mut all = Vec::with_capacity(gts.len());
    let mut by_q: Vec<(String, Vec<f64>)> = Vec::new();
    let mut by_a: Vec<(String, Vec<f64>)> = Vec::new();
    fn push(groups: &mut Vec<(String, Vec<f64>)>, key: &str, v: f64) {
        match groups.iter_mut().find(|(k, _)| k == key) {
            Some((_, vs)) => vs.push(v),
            None => groups.push((key.to_string(), vec![v])),
        }
    }
    for g in gts {
        let acc = vqa_accuracy(&results[&g.question_id], &g.answers);
        all.push(acc);
        push(&mut by_q, &g.question_type, acc);
        push(&mut by_a, &g.answer_type, acc);
    }
    let pct = |v: &[f64]| round2(100.0 * v.iter().sum::<f64>() / v.len() as f64);
    Ok(VqaEvalResult {
        overall: pct(&all),
        per_answer_type: by_a.iter().map(|(k, v)| (k.clone(), pct(v))).collect(),
        per_question_type: by_q.iter().map(|(k, v)| (k.clone(), pct(v))).collect(),
        questions: gts.len(),
    })
}

/// How soft-score training targets are computed from the annotator answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreConvention {
    /// ViLT / VLMo / BEiT-3 (`write_vqa.py`, `get_score`): 0.3, 0.6, 0.9, 1.0 for an answer given
    /// by 1, 2, 3, ≥4 annotators. Answers are counted as written (not normalised), as there.
    #[default]
    ViltStyle,
    /// ALBEF / BLIP (`vqa_dataset.py`): count / number of answers.
    CountOverLen,
}

/// ViLT's `get_score`.
pub fn vilt_score(count: usize) -> f32 {
    match count {
        0 => 0.0,
        1 => 0.3,
        2 => 0.6,
        3 => 0.9,
        _ => 1.0,
    }
}

/// Each distinct answer (first-appearance order) with its soft score.
pub fn answer_scores(answers: &[String], convention: ScoreConvention) -> Vec<(String, f32)> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for a in answers {
        match counts.iter_mut().find(|(k, _)| k == a) {
            Some((_, c)) => *c += 1,
            None => counts.push((a.clone(), 1)),
        }
    }
    let n = answers.len().max(1) as f32;
    counts
        .into_iter()
        .map(|(a, c)| {
            let s = match convention {
                ScoreConvention::ViltStyle => vilt_score(c),
                ScoreConvention::CountOverLen => c as f32 / n,
            };
            (a, s)
        })
        .collect()
}

/// The (label, score) targets of the answers in `vocab` (answers outside it are dropped, as in
/// `write_vqa.py`).
pub fn soft_targets(
    answers: &[String],
    vocab: &AnswerVocab,
    convention: ScoreConvention,
) -> Vec<(usize, f32)> {
    answer_scores(answers, convention)
        .into_iter()
        .filter_map(|(a, s)| vocab.index(&a).map(|i| (i, s)))
        .collect()
}

/// The dense target vector (length `vocab.len()`) of [`soft_targets`].
pub fn target_vector(
    answers: &[String],
    vocab: &AnswerVocab,
    convention: ScoreConvention,
) -> Vec<f32> {
    let mut v = vec![0.0; vocab.len()];
    for (i, s) in soft_targets(answers, vocab, convention) {
        v[i] = s;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_score_exact_or_soft() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(question_score("red", &a(&["red"]), true), 1.0);
        assert_eq!(question_score("red", &a(&["blue", "red"]), true), 0.0);
        assert_eq!(question_score("red", &a(&[]), true), 0.0);
        let ten = a(&[
            "red", "red", "red", "blue", "blue", "blue", "blue", "blue", "blue", "blue",
        ]);
        let gts: Vec<GtAnswer> = ten.iter().map(|x| GtAnswer::new(x.clone())).collect();
        assert_eq!(
            question_score("red", &ten, false),
            vqa_accuracy("red", &gts)
        );
        assert!((question_score("red", &ten, false) - 0.9).abs() < 1e-9);
        assert_eq!(question_score("green", &ten, false), 0.0);
    }

    #[test]
    fn answers_without_ids_are_still_ten_annotators() {
        let mut gts: Vec<GtAnswer> = (0..3).map(|_| GtAnswer::new("yes")).collect();
        gts.extend((0..7).map(|_| GtAnswer::new("no")));
        // Leaving out a "yes" annotator: 2 matches (2/3); a "no" one: 3 matches (1).
        let want = (3.0 * (2.0 / 3.0) + 7.0) / 10.0;
        assert!((vqa_accuracy("yes", &gts) - want).abs() < 1e-12);
        let with_ids: Vec<GtAnswer> = gts
            .iter()
            .enumerate()
            .map(|(i, g)| GtAnswer {
                answer_id: Some(i as u64 + 1),
                ..g.clone()
            })
            .collect();
        assert_eq!(vqa_accuracy("yes", &gts), vqa_accuracy("yes", &with_ids));
    }

    #[test]
    fn punctuation_rules() {
        // No punctuation touches a space: replaced by spaces; trailing period dropped.
        assert_eq!(process_punctuation("yes."), "yes");
        assert_eq!(process_punctuation("t-shirt"), "t shirt");
        // "- " present: every "-" deleted.
        assert_eq!(process_punctuation("t-shirt - red"), "tshirt  red");
        // digit,digit anywhere: all punctuation deleted.
        assert_eq!(process_punctuation("1,000 (a/b)"), "1000 ab");
        // Periods before digits stay.
        assert_eq!(process_punctuation("3.5."), "3.5");
        assert_eq!(process_digit_article("The Two  dogs"), "2 dogs");
        assert_eq!(process_digit_article("dont an"), "don't");
        assert_eq!(normalize_answer(" A\tdog!\n"), "dog");
        assert_eq!(normalize_word("1,000"), "1000");
        let many = ".".repeat(40);
        assert_eq!(process_punctuation(&many), ".".repeat(8));
    }

    #[test]
    fn round_like_python() {
        assert_eq!(round2(12.125), 12.12);
        assert_eq!(round2(2.675), 2.67);
        assert_eq!(round2(66.666_666), 66.67);
    }
}
