//! easy-VQA (the PyPI package `easy-vqa`): 64×64 PNG images of one coloured shape and templated
//! questions about it, with 13 possible answers.
//!
//! The package ships `data/{train,test}/questions.json` (a JSON array of
//! `[question, answer, image_id]` triples), `data/{train,test}/images/{image_id}.png` and
//! `data/answers.txt` (one answer a line). [`EasyVqa::package`] finds them in the project's
//! virtualenv.
use super::json::Source;
use super::loader::Dataset;
use super::{Collector, Loaded, ReadOptions};
use crate::data::vqa::AnswerVocab;
use rand::rngs::StdRng;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::Tensor;
use vlp_core::image::ImageTransform;
use vlp_core::{Result, VlpError};

/// The question families of [`family_of_text`].
pub const FAMILIES: [&str; 6] = [
    "colour",
    "shape",
    "yes_no_colour",
    "yes_no_colour_not",
    "yes_no_shape",
    "yes_no_shape_not",
];

/// The question family of an easy-VQA question (its templates, `easy_vqa/questions.py`):
/// `colour` / `shape` (open questions), `yes_no_colour` / `yes_no_shape` (does the image hold
/// a shape of that colour / that shape) and their negated forms `…_not` ("is there not …",
/// "is no … present", "does the image not contain …"); `None` for other text. Works on the raw
/// and on the preprocessed question (lower case, no "?").
pub fn family_of_text(text: &str) -> Option<&'static str> {
    const SHAPES: [&str; 3] = ["circle", "rectangle", "triangle"];
    let t = text.trim().trim_end_matches('?').to_lowercase();
    let words: Vec<&str> = t.split_whitespace().collect();
    let first = *words.first()?;
    if first == "what" {
        return Some(if words.contains(&"color") {
            "colour"
        } else {
            "shape"
        });
    }
    if !["is", "does"].contains(&first) {
        return None;
    }
    let negated = words.contains(&"not") || words.contains(&"no");
    let about_shape = words.iter().any(|w| SHAPES.contains(w));
    Some(match (about_shape, negated) {
        (false, false) => "yes_no_colour",
        (false, true) => "yes_no_colour_not",
        (true, false) => "yes_no_shape",
        (true, true) => "yes_no_shape_not",
    })
}

/// A split of easy-VQA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// `train`.
    Train,
    /// `test`.
    Test,
}

impl Split {
    /// The directory name.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// One easy-VQA question.
#[derive(Debug, Clone, PartialEq)]
pub struct EasyVqaQuestion {
    /// The question.
    pub question: String,
    /// The answer.
    pub answer: String,
    /// The label of the answer in `answers.txt`.
    pub label: usize,
    /// The image id.
    pub image_id: u64,
    /// The image file.
    pub image: PathBuf,
}

/// The easy-VQA data directory (holding `answers.txt`, `train/`, `test/`).
#[derive(Debug, Clone, PartialEq)]
pub struct EasyVqa {
    /// The `data` directory.
    pub root: PathBuf,
    /// The answers of `answers.txt`, in order (label = line).
    pub answers: AnswerVocab,
}

impl EasyVqa {
    /// Opens a data directory and reads its answers.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let answers = crate::data::vqa::read_answer_list(&root.join("answers.txt"))?;
        if answers.is_empty() {
            return Err(VlpError::Data {
                path: root.join("answers.txt"),
                line: 1,
                column: 1,
                field: "<answers>".into(),
                msg: "no answers".into(),
            });
        }
        Ok(EasyVqa {
            root,
            answers: AnswerVocab::from_answers(answers),
        })
    }

    /// The data shipped by the PyPI package in the project's virtualenv.
    pub fn package() -> Result<Self> {
        Self::open(vlp_core::assets::package_path("easy_vqa", "data")?)
    }

    /// The questions of a split; `skip_bad_samples` applies (the image root is the split's
    /// `images/` directory).
    pub fn read(&self, split: Split, skip_bad_samples: bool) -> Result<Loaded<EasyVqaQuestion>> {
        let dir = self.root.join(split.name());
        let opts = ReadOptions {
            image_root: dir.join("images"),
            skip_bad_samples,
        };
        read_questions(&dir.join("questions.json"), &opts, &self.answers)
    }

    /// The image files of a split (`images/*.png`), sorted by id.
    pub fn image_files(&self, split: Split) -> Result<Vec<(u64, PathBuf)>> {
        let dir = self.root.join(split.name()).join("images");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(|e| VlpError::io(&dir, e))? {
            let p = e.map_err(|e| VlpError::io(&dir, e))?.path();
            if p.extension().and_then(|x| x.to_str()) == Some("png") {
                if let Some(id) = p
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse().ok())
                {
                    out.push((id, p));
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Reads a `questions.json` of `[question, answer, image_id]` triples; images are
/// `{image_root}/{image_id}.png`, answers must be in `answers`.
pub fn read_questions(
    path: &Path,
    opts: &ReadOptions,
    answers: &AnswerVocab,
) -> Result<Loaded<EasyVqaQuestion>> {
    let src = Source::read(path)?;
    let mut out = Collector::new(path, opts);
    for rec in src.top_array()? {
        out.push(rec.and_then(|r| {
            let items = match &r.value {
                Value::Array(a) if a.len() == 3 => a,
                v => {
                    return Err(r.err(
                        "",
                        format!(
                            "expected [question, answer, image_id], found {}",
                            super::json::show(v)
                        ),
                    ))
                }
            };
            let question = match &items[0] {
                Value::String(s) if !s.trim().is_empty() => s.clone(),
                v => {
                    return Err(r.err(
                        "question",
                        format!(
                            "expected a non-empty string, found {}",
                            super::json::show(v)
                        ),
                    ))
                }
            };
            let answer = match &items[1] {
                Value::String(s) => s.clone(),
                v => {
                    return Err(r.err(
                        "answer",
                        format!("expected a string, found {}", super::json::show(v)),
                    ))
                }
            };
            let label = answers
                .index(&answer)
                .ok_or_else(|| r.err("answer", format!("`{answer}` is not in answers.txt")))?;
            let image_id = items[2].as_u64().ok_or_else(|| {
                r.err(
                    "image_id",
                    format!(
                        "expected a non-negative integer, found {}",
                        super::json::show(&items[2])
                    ),
                )
            })?;
            Ok(EasyVqaQuestion {
                question,
                answer,
                label,
                image_id,
                image: opts.image_path(&format!("{image_id}.png")),
            })
        }))?;
    }
    Ok(out.finish())
}

/// An easy-VQA sample.
#[derive(Debug)]
pub struct EasyVqaSample {
    /// The transformed image.
    pub image: Tensor,
    /// The question.
    pub question: String,
    /// The answer label.
    pub label: usize,
}

/// An easy-VQA data set.
#[derive(Debug, Clone)]
pub struct EasyVqaDataset {
    questions: Arc<Vec<EasyVqaQuestion>>,
    transform: ImageTransform,
}

impl EasyVqaDataset {
    /// A data set over read questions.
    pub fn new(questions: Vec<EasyVqaQuestion>, transform: ImageTransform) -> Self {
        EasyVqaDataset {
            questions: Arc::new(questions),
            transform,
        }
    }
}

impl Dataset for EasyVqaDataset {
    type Sample = EasyVqaSample;
    fn len(&self) -> usize {
        self.questions.len()
    }
    fn get(&self, i: usize, rng: &mut StdRng) -> Result<EasyVqaSample> {
        let q = &self.questions[i];
        Ok(EasyVqaSample {
            image: self.transform.apply_path(&q.image, rng)?,
            question: q.question.clone(),
            label: q.label,
        })
    }
}
