//! The records written to disk, mirroring the official formats field by field (serialised in
//! this field order).
use serde::Serialize;

/// `pretrain.json` entry (ALBEF pre-training list): one per train image.
#[derive(Clone, Debug, Serialize)]
pub struct PretrainEntry {
    /// Image path relative to the output directory.
    pub image: String,
    /// All captions of the image.
    pub caption: Vec<String>,
}

/// `retrieval_train.json` entry (COCO/Flickr Karpathy train as ALBEF/BLIP ship it): one per
/// caption.
#[derive(Clone, Debug, Serialize)]
pub struct RetrievalTrainEntry {
    /// Image path relative to the output directory.
    pub image: String,
    /// One caption.
    pub caption: String,
    /// Integer image id (shared by the image's captions).
    pub image_id: u64,
}

/// `retrieval_{val,test}.json` entry (Karpathy val/test): one per image.
#[derive(Clone, Debug, Serialize)]
pub struct RetrievalEvalEntry {
    /// Image path relative to the output directory.
    pub image: String,
    /// The image's captions (5 by default).
    pub caption: Vec<String>,
    /// Integer image id.
    pub image_id: u64,
}

/// The `info` block of the official VQA v2 files.
#[derive(Clone, Debug, Serialize)]
pub struct VqaInfo {
    /// Free text.
    pub description: String,
    /// Free text.
    pub url: String,
    /// Data set version.
    pub version: String,
    /// Year.
    pub year: u32,
    /// Who made it.
    pub contributor: String,
    /// Fixed date (no clock: outputs are reproducible).
    pub date_created: String,
}

/// The `license` block of the official VQA v2 files.
#[derive(Clone, Debug, Serialize)]
pub struct VqaLicense {
    /// Licence URL.
    pub url: String,
    /// Licence name.
    pub name: String,
}

/// One official VQA v2 question.
#[derive(Clone, Debug, Serialize)]
pub struct VqaQuestion {
    /// Image id.
    pub image_id: u64,
    /// Question text.
    pub question: String,
    /// Question id (`image_id · 10 + k`).
    pub question_id: u64,
}

/// `vqa_{split}_questions.json` (official VQA v2 questions file).
#[derive(Clone, Debug, Serialize)]
pub struct VqaQuestionsFile {
    /// Info block.
    pub info: VqaInfo,
    /// "Open-Ended".
    pub task_type: String,
    /// "shapes".
    pub data_type: String,
    /// Licence block.
    pub license: VqaLicense,
    /// The split ("train", "val", "test").
    pub data_subtype: String,
    /// The questions.
    pub questions: Vec<VqaQuestion>,
}

/// One annotator answer.
#[derive(Clone, Debug, Serialize)]
pub struct VqaAnswer {
    /// The answer.
    pub answer: String,
    /// "yes", "maybe" or "no".
    pub answer_confidence: String,
    /// 1…10.
    pub answer_id: u32,
}

/// One official VQA v2 annotation.
#[derive(Clone, Debug, Serialize)]
pub struct VqaAnnotation {
    /// The question's first words ("what color is the", "how many", …).
    pub question_type: String,
    /// The most frequent annotator answer (always the correct one here).
    pub multiple_choice_answer: String,
    /// Ten annotator answers.
    pub answers: Vec<VqaAnswer>,
    /// Image id.
    pub image_id: u64,
    /// "yes/no", "number" or "other".
    pub answer_type: String,
    /// Question id.
    pub question_id: u64,
}

/// `vqa_{split}_annotations.json` (official VQA v2 annotations file).
#[derive(Clone, Debug, Serialize)]
pub struct VqaAnnotationsFile {
    /// Info block.
    pub info: VqaInfo,
    /// Licence block.
    pub license: VqaLicense,
    /// The split.
    pub data_subtype: String,
    /// The annotations.
    pub annotations: Vec<VqaAnnotation>,
    /// "shapes".
    pub data_type: String,
}

/// `vqa_{split}.json` entry (ALBEF/BLIP VQA list). `answer` holds the ten annotator answers and
/// is absent in the test split, as in the official test file.
#[derive(Clone, Debug, Serialize)]
pub struct AlbefVqaEntry {
    /// Question id.
    pub question_id: u64,
    /// Question text.
    pub question: String,
    /// Ten annotator answers (train/val only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<Vec<String>>,
    /// Image path relative to the output directory.
    pub image: String,
    /// "vqa".
    pub dataset: String,
}

/// `nlvr2_{split}.json` entry (ALBEF NLVR2).
#[derive(Clone, Debug, Serialize)]
pub struct Nlvr2Entry {
    /// The two image paths (left, right).
    pub images: [String; 2],
    /// The statement.
    pub sentence: String,
    /// "True" or "False".
    pub label: String,
}

/// `ve_{split}.json` entry (ALBEF SNLI-VE). `image` is the path with its extension.
#[derive(Clone, Debug, Serialize)]
pub struct VeEntry {
    /// Image path relative to the output directory.
    pub image: String,
    /// The hypothesis.
    pub sentence: String,
    /// "entailment", "neutral" or "contradiction".
    pub label: String,
}

/// An image of the COCO captions annotation file.
#[derive(Clone, Debug, Serialize)]
pub struct CocoImage {
    /// Image id.
    pub id: u64,
    /// Image path relative to the output directory.
    pub file_name: String,
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
}

/// A caption of the COCO captions annotation file.
#[derive(Clone, Debug, Serialize)]
pub struct CocoCaption {
    /// Image id.
    pub image_id: u64,
    /// Caption id.
    pub id: u64,
    /// The caption.
    pub caption: String,
}

/// `caption_{split}_gt.json` (COCO captions annotation file, as pycocoevalcap reads it).
#[derive(Clone, Debug, Serialize)]
pub struct CocoCaptionsFile {
    /// Info block.
    pub info: VqaInfo,
    /// Licences (empty).
    pub licenses: Vec<VqaLicense>,
    /// "captions".
    #[serde(rename = "type")]
    pub kind: String,
    /// The images.
    pub images: Vec<CocoImage>,
    /// The captions.
    pub annotations: Vec<CocoCaption>,
}

/// `scenes_{split}.json` entry: the ground truth of an image.
#[derive(Clone, Debug, Serialize)]
pub struct SceneEntry {
    /// Image id.
    pub image_id: u64,
    /// Image path relative to the output directory.
    pub image: String,
    /// Region file path relative to the output directory (absent without regions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regions: Option<String>,
    /// The scene.
    pub scene: super::scene::Scene,
}
