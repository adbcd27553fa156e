//! VQA samples grouped by image: one sample is an image with up to `per_image` of its
//! questions, so that a model encodes each image once for all of them (the ViT is most of a
//! step's cost; VQA v2 has 5.4 questions per image, easy-VQA 9.6, Shapes 6).
//!
//! The questions of an image are drawn at random (without replacement) from the sample's RNG,
//! so the loader's seed and resumable position still fix every batch. A collate function
//! flattens a batch of groups into `Q` questions with an `image_index` (question → image row).
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tch::Tensor;
use vlp_core::image::ImageTransform;
use vlp_core::Result;

use super::easy_vqa::EasyVqaQuestion;
use super::loader::Dataset;
use super::vqa::{AnswerVocab, VqaQuestion};
use super::TextPrep;
use crate::metrics::vqa::{answer_scores, soft_targets, ScoreConvention};

/// One question of a grouped sample.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupedQuestion {
    /// The preprocessed question.
    pub question: String,
    /// `question_id` when known.
    pub question_id: Option<u64>,
    /// Distinct answers with their soft scores (generative heads).
    pub answers: Vec<(String, f32)>,
    /// `(label, score)` targets in the vocabulary (classifier heads; empty without one).
    pub targets: Vec<(usize, f32)>,
}

/// An image with some of its questions.
#[derive(Debug)]
pub struct GroupedVqaSample {
    /// The transformed image `[3, H, W]`.
    pub image: Tensor,
    /// Its questions (at least one).
    pub questions: Vec<GroupedQuestion>,
}

/// A VQA data set whose items are images (see the module documentation).
#[derive(Debug, Clone)]
pub struct GroupedVqaDataset {
    groups: Arc<Vec<(PathBuf, Vec<VqaQuestion>)>>,
    per_image: usize,
    transform: ImageTransform,
    prep: TextPrep,
    convention: ScoreConvention,
    vocab: Option<Arc<AnswerVocab>>,
}

impl GroupedVqaDataset {
    /// Groups `questions` by image path (images in order of first appearance); each sample
    /// carries at most `per_image` (≥ 1) questions of its image. `vocab` turns answers into
    /// classifier targets.
    pub fn new(
        questions: Vec<VqaQuestion>,
        per_image: usize,
        transform: ImageTransform,
        prep: TextPrep,
        convention: ScoreConvention,
        vocab: Option<Arc<AnswerVocab>>,
    ) -> Self {
        let mut order: Vec<PathBuf> = Vec::new();
        let mut by: BTreeMap<PathBuf, Vec<VqaQuestion>> = BTreeMap::new();
        for q in questions {
            if !by.contains_key(&q.image) {
                order.push(q.image.clone());
            }
            by.entry(q.image.clone()).or_default().push(q);
        }
        let groups = order
            .into_iter()
            .map(|p| {
                let qs = by.remove(&p).unwrap_or_default();
                (p, qs)
            })
            .collect();
        GroupedVqaDataset {
            groups: Arc::new(groups),
            per_image: per_image.max(1),
            transform,
            prep,
            convention,
            vocab,
        }
    }

    /// Number of questions over all images.
    pub fn num_questions(&self) -> usize {
        self.groups.iter().map(|(_, q)| q.len()).sum()
    }
}

/// `items` grouped by `key`, groups in order of first appearance, items in input order.
pub fn group_by_first_appearance<K, T>(
    items: impl IntoIterator<Item = T>,
    key: impl Fn(&T) -> K,
) -> Vec<(K, Vec<T>)>
where
    K: std::hash::Hash + Eq + Clone,
{
    let mut slot: std::collections::HashMap<K, usize> = std::collections::HashMap::new();
    let mut groups: Vec<(K, Vec<T>)> = Vec::new();
    for it in items {
        let k = key(&it);
        let i = *slot.entry(k.clone()).or_insert_with(|| {
            groups.push((k, Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(it);
    }
    groups
}

/// All of `all` when it holds at most `n`, else `n` of them drawn without replacement.
pub fn pick_up_to<'a, T>(all: &'a [T], n: usize, rng: &mut StdRng) -> Vec<&'a T> {
    if all.len() <= n {
        all.iter().collect()
    } else {
        all.choose_multiple(rng, n).collect()
    }
}

/// An easy-VQA question as a VQA question with one annotator answer.
pub fn easy_as_vqa(q: EasyVqaQuestion) -> VqaQuestion {
    VqaQuestion {
        question_id: None,
        image_id: Some(q.image_id),
        image_rel: q.image.display().to_string(),
        image: q.image,
        question: q.question,
        answers: vec![q.answer],
        multiple_choice_answer: None,
        question_type: None,
        answer_type: None,
        dataset: Some("easy_vqa".into()),
    }
}

impl Dataset for GroupedVqaDataset {
    type Sample = GroupedVqaSample;
    fn len(&self) -> usize {
        self.groups.len()
    }
    fn get(&self, i: usize, rng: &mut StdRng) -> Result<GroupedVqaSample> {
        let (path, qs) = &self.groups[i];
        let image = self.transform.apply_path(path, rng)?;
        let picked = pick_up_to(qs, self.per_image, rng);
        let questions = picked
            .into_iter()
            .map(|q| GroupedQuestion {
                question: self.prep.question(&q.question),
                question_id: q.question_id,
                answers: answer_scores(&q.answers, self.convention),
                targets: match &self.vocab {
                    Some(v) => soft_targets(&q.answers, v, self.convention),
                    None => Vec::new(),
                },
            })
            .collect();
        Ok(GroupedVqaSample { image, questions })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use vlp_core::image::{ImageTransformConfig, Normalize};

    fn q(img: &str, text: &str, ans: &[&str]) -> VqaQuestion {
        VqaQuestion {
            question_id: None,
            image_id: None,
            image_rel: img.into(),
            image: PathBuf::from(img),
            question: text.into(),
            answers: ans.iter().map(|s| s.to_string()).collect(),
            multiple_choice_answer: None,
            question_type: None,
            answer_type: None,
            dataset: None,
        }
    }

    #[test]
    fn groups_by_image_and_draws_at_most_per_image_questions() {
        let dir = std::env::temp_dir().join(format!("vlp-grouped-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut qs = Vec::new();
        for (k, n) in [("a.png", 5), ("b.png", 2)] {
            let p = dir.join(k);
            image::RgbImage::from_pixel(8, 8, image::Rgb([10, 20, 30]))
                .save(&p)
                .unwrap();
            for j in 0..n {
                qs.push(q(p.to_str().unwrap(), &format!("q{k}{j}?"), &["yes", "no"]));
            }
        }
        let vocab = Arc::new(AnswerVocab::from_answers(vec!["no".into(), "yes".into()]));
        let tf = ImageTransform::new(ImageTransformConfig::eval(8, Normalize::Clip)).unwrap();
        let ds = GroupedVqaDataset::new(
            qs,
            3,
            tf,
            TextPrep::Raw,
            ScoreConvention::CountOverLen,
            Some(vocab),
        );
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.num_questions(), 7);
        let mut rng = StdRng::seed_from_u64(0);
        let a = ds.get(0, &mut rng).unwrap();
        assert_eq!(a.questions.len(), 3);
        assert_eq!(a.image.size(), [3, 8, 8]);
        let mut seen = std::collections::BTreeSet::new();
        for x in &a.questions {
            assert!(x.question.starts_with("qa.png"), "{}", x.question);
            assert!(seen.insert(x.question.clone()), "drawn twice");
            assert_eq!(x.targets, vec![(1, 0.5), (0, 0.5)]);
        }
        assert_eq!(ds.get(1, &mut rng).unwrap().questions.len(), 2);
        // Same RNG state, same draw.
        let x = ds.get(0, &mut StdRng::seed_from_u64(7)).unwrap();
        let y = ds.get(0, &mut StdRng::seed_from_u64(7)).unwrap();
        let t = |s: &GroupedVqaSample| {
            s.questions
                .iter()
                .map(|q| q.question.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(t(&x), t(&y));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
