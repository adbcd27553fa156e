//! ALBEF in the pipeline: size presets, the model config of an experiment, the data sets and
//! batches of every task, the [`Trainable`] implementation of the five variants, and their
//! evaluation with the real metrics (VQA accuracy, retrieval recall with the ItmOnly rule,
//! NLVR2 / SNLI-VE accuracy).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tch::{Device, Tensor};
use vlp_core::checkpoint::{self, LoadMode, LoadReport, ReadOptions as CkptReadOptions};
use vlp_core::image::{ImageTransform, ImageTransformConfig};
use vlp_core::layers::vit::VitConfig;
use vlp_core::text::{pad_batch, EncodeOptions, Padding, SpecialStyle, Tokenizer};
use vlp_core::{Result, VlpError};
use vlp_models::albef::pretrain::{PretrainBatch, PretrainDraws};
use vlp_models::albef::retrieval::RetrievalBatch;
use vlp_models::albef::vqa::VqaTrainBatch;
use vlp_models::albef::{
    AlbefConfig, AlbefNlvr, AlbefNlvrPretrain, AlbefPretrain, AlbefRetrieval, AlbefVe, AlbefVqa,
    AlbefVqaClassifier,
};
use vlp_models::VlpModel;
use vlp_objectives::{word_swap_itm_loss, WordSwap};

use super::config::{ExperimentConfig, InitMode, Preset, Task};
use crate::data::easy_vqa::{
    EasyVqa, EasyVqaDataset, EasyVqaQuestion, EasyVqaSample, Split as EasySplit,
};
use crate::data::grouped::{easy_as_vqa, GroupedVqaDataset, GroupedVqaSample};
use crate::data::karpathy::{self, CaptionDataset, CaptionSample, RetrievalGallery};
use crate::data::loader::{stack_images, DataLoader, Dataset, LoaderConfig};
use crate::data::nlvr2::{
    self, GroupedNlvr2Dataset, GroupedNlvr2Sample, Nlvr2Dataset, Nlvr2Sample,
};
use crate::data::snli_ve::{self, GroupedVeDataset, GroupedVeSample, VeDataset, VeSample};
use crate::data::vqa::{self as vqa_data, AnswerVocab, VqaDataset, VqaQuestion, VqaSample};
use crate::data::{ReadOptions, TextPrep};
use crate::eval::models::albef::AlbefRetrievalEval;
use crate::eval::retrieval::{evaluate_gallery, Fusion, RetrievalEvalConfig};
use crate::metrics::vqa::{question_score, ScoreConvention};
use crate::train::{LossTerms, StepContext, Trainable};

/// The ALBEF config of a preset. `Base` is the paper's model; `Small` and `Tiny` are sized for
/// CPU (bert-base-uncased vocabulary, so the default tokenizer fits every preset).
pub fn albef_preset(preset: Preset) -> AlbefConfig {
    let base = AlbefConfig::default();
    let (img, patch, width, depth, heads, layers, fusion, embed, queue) = match preset {
        Preset::Base => return base,
        Preset::Small => (64, 8, 128, 4, 4, 4, 2, 64, 256),
        Preset::Tiny => (32, 8, 64, 2, 2, 2, 1, 32, 64),
    };
    let mut c = base;
    c.image_res = img;
    c.vision = Some(VitConfig {
        img_size: img,
        patch_size: patch,
        embed_dim: width,
        depth,
        num_heads: heads,
        ..VitConfig::default()
    });
    c.vision_width = width;
    c.embed_dim = embed;
    c.queue_size = queue;
    c.bert.hidden_size = width;
    c.bert.num_hidden_layers = layers;
    c.bert.num_attention_heads = heads;
    c.bert.intermediate_size = 4 * width;
    c.bert.fusion_layer = Some(fusion);
    c.bert.encoder_width = Some(width);
    c.bert.max_position_embeddings = 128;
    // NLVR2: every fusion layer twice, as the base model's 6 + 2 × 6 = 18 (the official class
    // hard-codes 18 layers tied from layer 6, which a 4-layer model does not have).
    c.nlvr_layers = Some(fusion + 2 * (layers - fusion));
    c
}

fn cfg_err(path: &Path, msg: impl Into<String>) -> VlpError {
    VlpError::Config {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// The model config of an experiment: the preset with `model.config` merged over it (a file
/// path relative to the experiment file, or an inline mapping). Errors name `model.config`.
pub fn albef_config(exp: &ExperimentConfig) -> Result<AlbefConfig> {
    let src = &exp.source;
    let v = serde_json::to_value(albef_preset(exp.model.preset))
        .map_err(|e| VlpError::Msg(format!("albef preset: {e}")))?;
    let v = super::config::merged_model_config(exp, v)?;
    let mut c = AlbefConfig::from_json(&v)
        .map_err(|e| cfg_err(src, format!("field `model.config`: {e}")))?;
    if let Some(size) = exp.data.image_size {
        let size = i64::from(size);
        if size != c.image_res {
            c.image_res = size;
            if let Some(vit) = c.vision.as_mut() {
                vit.img_size = size;
            }
        }
    }
    Ok(c)
}

/// One of the five ALBEF variants.
#[derive(Debug)]
pub enum AlbefModel {
    /// `pretrain`.
    Pretrain(Box<AlbefPretrain>),
    /// `retrieval`.
    Retrieval(Box<AlbefRetrieval>),
    /// `vqa`.
    Vqa(Box<AlbefVqa>),
    /// `vqa_cls`: the classifier VQA head (a vlp-rs addition, [`AlbefVqaClassifier`]).
    VqaCls(Box<AlbefVqaClassifier>),
    /// `nlvr2`.
    Nlvr2(Box<AlbefNlvr>),
    /// `pretrain_nlvr`: NLVR2's text-assignment pre-training on image–text pairs.
    PretrainNlvr(Box<AlbefNlvrPretrain>),
    /// `ve`.
    Ve(Box<AlbefVe>),
}

/// The variants the pipeline trains: the registry's five and `vqa_cls`.
pub const PIPELINE_VARIANTS: &[&str] = &[
    "pretrain",
    "pretrain_nlvr",
    "retrieval",
    "vqa",
    "vqa_cls",
    "nlvr2",
    "ve",
];

impl AlbefModel {
    /// Builds `variant` on `device` (`vqa_cls` needs its answer vocabulary: use
    /// [`AlbefModel::build_for`]).
    pub fn build(variant: &str, cfg: &AlbefConfig, device: Device) -> Result<Self> {
        Self::build_with_answers(variant, cfg, None, device)
    }

    /// Builds the experiment's variant; `vqa_cls` gets the size of the task's answer vocabulary
    /// ([`answer_vocab`]).
    pub fn build_for(exp: &ExperimentConfig, cfg: &AlbefConfig, device: Device) -> Result<Self> {
        let n = if exp.model.variant == "vqa_cls" {
            Some(answer_vocab(exp)?.len())
        } else {
            None
        };
        let mut m = Self::build_with_answers(&exp.model.variant, cfg, n, device)?;
        if let AlbefModel::VqaCls(c) = &mut m {
            c.loss = exp.model.vqa_loss;
        }
        Ok(m)
    }

    /// Builds `variant`; `num_answers` sizes the `vqa_cls` head.
    pub fn build_with_answers(
        variant: &str,
        cfg: &AlbefConfig,
        num_answers: Option<usize>,
        device: Device,
    ) -> Result<Self> {
        Ok(match variant {
            "vqa_cls" => {
                let n = num_answers.ok_or_else(|| {
                    VlpError::Msg(
                        "albef vqa_cls: the size of the answer vocabulary is needed".into(),
                    )
                })?;
                AlbefModel::VqaCls(Box::new(AlbefVqaClassifier::new(cfg, n as i64, device)?))
            }
            "pretrain" => AlbefModel::Pretrain(Box::new(AlbefPretrain::new(cfg, device)?)),
            "retrieval" => AlbefModel::Retrieval(Box::new(AlbefRetrieval::new(cfg, device)?)),
            "vqa" => AlbefModel::Vqa(Box::new(AlbefVqa::new(cfg, device)?)),
            "nlvr2" => AlbefModel::Nlvr2(Box::new(AlbefNlvr::new(cfg, device)?)),
            "pretrain_nlvr" => {
                AlbefModel::PretrainNlvr(Box::new(AlbefNlvrPretrain::new(cfg, device)?))
            }
            "ve" => AlbefModel::Ve(Box::new(AlbefVe::new(cfg, device)?)),
            other => {
                return Err(VlpError::Unsupported {
                    what: format!(
                        "variant `{other}` of `albef` (available: {})",
                        PIPELINE_VARIANTS.join(", ")
                    ),
                })
            }
        })
    }

    /// The model as the registry's trait object.
    pub fn as_vlp(&self) -> &dyn VlpModel {
        match self {
            AlbefModel::Pretrain(m) => m.as_ref(),
            AlbefModel::Retrieval(m) => m.as_ref(),
            AlbefModel::Vqa(m) => m.as_ref(),
            AlbefModel::VqaCls(m) => m.as_ref(),
            AlbefModel::Nlvr2(m) => m.as_ref(),
            AlbefModel::PretrainNlvr(m) => m.as_ref(),
            AlbefModel::Ve(m) => m.as_ref(),
        }
    }

    /// Mutable form of [`AlbefModel::as_vlp`].
    pub fn as_vlp_mut(&mut self) -> &mut dyn VlpModel {
        match self {
            AlbefModel::Pretrain(m) => m.as_mut(),
            AlbefModel::Retrieval(m) => m.as_mut(),
            AlbefModel::Vqa(m) => m.as_mut(),
            AlbefModel::VqaCls(m) => m.as_mut(),
            AlbefModel::Nlvr2(m) => m.as_mut(),
            AlbefModel::PretrainNlvr(m) => m.as_mut(),
            AlbefModel::Ve(m) => m.as_mut(),
        }
    }

    /// Dropout on (training) or off (evaluation).
    pub fn set_train(&mut self, train: bool) {
        match self {
            AlbefModel::Pretrain(m) => m.train = train,
            AlbefModel::Retrieval(m) => m.train = train,
            AlbefModel::Vqa(m) => m.train = train,
            AlbefModel::VqaCls(m) => m.train = train,
            AlbefModel::Nlvr2(m) => m.train = train,
            AlbefModel::PretrainNlvr(m) => m.train = train,
            AlbefModel::Ve(m) => m.train = train,
        }
    }

    /// The variant's name.
    pub fn variant(&self) -> &'static str {
        match self {
            AlbefModel::Pretrain(_) => "pretrain",
            AlbefModel::Retrieval(_) => "retrieval",
            AlbefModel::Vqa(_) => "vqa",
            AlbefModel::VqaCls(_) => "vqa_cls",
            AlbefModel::Nlvr2(_) => "nlvr2",
            AlbefModel::PretrainNlvr(_) => "pretrain_nlvr",
            AlbefModel::Ve(_) => "ve",
        }
    }
}

/// The weights file a `model.init` path names: a file as is; a trainer checkpoint directory's
/// `model.safetensors`; a run directory's latest checkpoint.
pub fn resolve_init(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if path.join("model.safetensors").is_file() {
        return Ok(path.join("model.safetensors"));
    }
    let ck = crate::train::Checkpointer::new(path.join("checkpoints"));
    if path.join("checkpoints").is_dir() {
        return Ok(ck.latest()?.join("model.safetensors"));
    }
    Err(VlpError::Msg(format!(
        "{}: not a checkpoint file, a checkpoint directory or a run directory",
        path.display()
    )))
}

/// Loads `path` into the model after its `adapt_state_dict` (the documented renames of the
/// official fine-tuning loaders).
pub fn load_init(model: &mut AlbefModel, path: &Path, mode: InitMode) -> Result<LoadReport> {
    let file = resolve_init(path)?;
    let sd = checkpoint::read_state_dict(&file, &CkptReadOptions::default())?;
    let sd = model.as_vlp().adapt_state_dict(sd)?;
    let mode = match mode {
        InitMode::Strict => LoadMode::Strict,
        InitMode::Partial => LoadMode::Partial,
    };
    checkpoint::load_state_dict(
        model.as_vlp_mut().var_store_mut(),
        &sd,
        mode,
        &file.display().to_string(),
    )
}

/// One training batch (CPU tensors; moved to the model's device in `train_step`).
#[derive(Debug)]
pub enum AlbefBatch {
    /// Image–text pairs with the image index (pretraining, retrieval).
    Pairs {
        /// `[B, 3, H, W]`.
        image: Tensor,
        /// `[B, L]`.
        input_ids: Tensor,
        /// `[B, L]`.
        attention_mask: Tensor,
        /// `[B]` image index (retrieval's `idx`).
        idx: Tensor,
    },
    /// VQA: questions and their weighted answers.
    Vqa {
        /// `[B, 3, H, W]`.
        image: Tensor,
        /// `[B, Lq]`.
        question_ids: Tensor,
        /// `[B, Lq]`.
        question_mask: Tensor,
        /// `[N, La]` (`[CLS] answer [SEP]`).
        answer_ids: Tensor,
        /// `[N, La]`.
        answer_mask: Tensor,
        /// `[B]` answers per question.
        counts: Tensor,
        /// `[N]` answer weights.
        weights: Tensor,
        /// `[B]` image row of each question when the images of the batch are fewer than its
        /// questions (grouped samples: each image encoded once); `None`: one image per question.
        image_index: Option<Tensor>,
        /// `(label, score)` classifier targets of each question (empty without a vocabulary).
        targets: Vec<Vec<(usize, f32)>>,
    },
    /// Classification (NLVR2: `image` is `[image0 (B); image1 (B)]`; SNLI-VE).
    Classify {
        /// `[B or 2B, 3, H, W]`.
        image: Tensor,
        /// `[B, L]`.
        input_ids: Tensor,
        /// `[B, L]`.
        attention_mask: Tensor,
        /// `[B]` class index.
        targets: Tensor,
        /// NLVR2 grouped samples: `[B]` pair row of each sentence (`image` is then
        /// `[image0 (P); image1 (P)]`, each pair encoded once); `None`: one pair per sentence.
        image_index: Option<Tensor>,
    },
}

impl AlbefBatch {
    /// Samples in the batch.
    pub fn len(&self) -> usize {
        let ids = match self {
            AlbefBatch::Pairs { input_ids, .. } => input_ids,
            AlbefBatch::Vqa { question_ids, .. } => question_ids,
            AlbefBatch::Classify { input_ids, .. } => input_ids,
        };
        ids.size()[0] as usize
    }

    /// True for an empty batch.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A sample of any task.
#[derive(Debug)]
pub enum AnySample {
    /// Caption pair.
    Caption(CaptionSample),
    /// VQA question.
    Vqa(VqaSample),
    /// easy-VQA question with its answer string.
    EasyVqa(EasyVqaSample, String),
    /// An image with several of its questions.
    VqaGroup(GroupedVqaSample),
    /// NLVR2 example.
    Nlvr2(Nlvr2Sample),
    /// An NLVR2 image pair with several of its sentences.
    Nlvr2Group(GroupedNlvr2Sample),
    /// SNLI-VE example.
    Ve(VeSample),
    /// An SNLI-VE image with several of its hypotheses.
    VeGroup(GroupedVeSample),
}

/// The training data set of any task.
#[derive(Debug, Clone)]
pub enum AnyDataset {
    /// Pretraining / retrieval.
    Caption(CaptionDataset),
    /// VQA.
    Vqa(VqaDataset),
    /// easy-VQA (with its answers).
    EasyVqa(EasyVqaDataset, Arc<Vec<String>>),
    /// VQA grouped by image (`data.questions_per_image`).
    VqaGrouped(GroupedVqaDataset),
    /// NLVR2.
    Nlvr2(Nlvr2Dataset),
    /// NLVR2 grouped by image pair (`data.sentences_per_pair`).
    Nlvr2Grouped(GroupedNlvr2Dataset),
    /// SNLI-VE.
    Ve(VeDataset),
    /// SNLI-VE grouped by image (`data.hypotheses_per_image`).
    VeGrouped(GroupedVeDataset),
}

impl Dataset for AnyDataset {
    type Sample = AnySample;
    fn len(&self) -> usize {
        match self {
            AnyDataset::Caption(d) => d.len(),
            AnyDataset::Vqa(d) => d.len(),
            AnyDataset::EasyVqa(d, _) => d.len(),
            AnyDataset::VqaGrouped(d) => d.len(),
            AnyDataset::Nlvr2(d) => d.len(),
            AnyDataset::Nlvr2Grouped(d) => d.len(),
            AnyDataset::Ve(d) => d.len(),
            AnyDataset::VeGrouped(d) => d.len(),
        }
    }
    fn get(&self, i: usize, rng: &mut StdRng) -> Result<AnySample> {
        Ok(match self {
            AnyDataset::Caption(d) => AnySample::Caption(d.get(i, rng)?),
            AnyDataset::Vqa(d) => AnySample::Vqa(d.get(i, rng)?),
            AnyDataset::EasyVqa(d, answers) => {
                let s = d.get(i, rng)?;
                let a = answers.get(s.label).cloned().unwrap_or_default();
                AnySample::EasyVqa(s, a)
            }
            AnyDataset::VqaGrouped(d) => AnySample::VqaGroup(d.get(i, rng)?),
            AnyDataset::Nlvr2(d) => AnySample::Nlvr2(d.get(i, rng)?),
            AnyDataset::Nlvr2Grouped(d) => AnySample::Nlvr2Group(d.get(i, rng)?),
            AnyDataset::Ve(d) => AnySample::Ve(d.get(i, rng)?),
            AnyDataset::VeGrouped(d) => AnySample::VeGroup(d.get(i, rng)?),
        })
    }
}

/// Text encoding shared by the collate function and the evaluators: ALBEF's `[CLS] x` style.
#[derive(Debug, Clone)]
pub struct TextEncoder {
    /// The tokenizer.
    pub tokenizer: Arc<Tokenizer>,
    /// Truncation length.
    pub max_len: usize,
}

impl TextEncoder {
    /// `[B, L]` ids and mask of texts (`[CLS] x`, padded to the longest).
    pub fn encode(&self, texts: &[&str]) -> Result<(Tensor, Tensor)> {
        let b = self.tokenizer.encode_batch(
            texts,
            &EncodeOptions::longest(self.max_len).with_style(SpecialStyle::ClsOnly),
        )?;
        Ok((b.input_ids, b.attention_mask))
    }

    /// Answers as the VQA decoder reads them: `[CLS] answer [SEP]` (ALBEF appends `eos` =
    /// `[SEP]` to every answer), padded to the longest.
    pub fn encode_answers(&self, answers: &[&str]) -> Result<(Tensor, Tensor)> {
        let t = &self.tokenizer;
        let seqs = answers
            .iter()
            .map(|a| {
                let mut ids = t.encode(a, SpecialStyle::ClsOnly, Some(self.max_len - 1))?;
                ids.push(t.sep_id());
                Ok(ids)
            })
            .collect::<Result<Vec<_>>>()?;
        let b = pad_batch(&seqs, t.pad_id(), Padding::Longest)?;
        Ok((b.input_ids, b.attention_mask))
    }
}

fn mismatch(what: &str) -> VlpError {
    VlpError::Msg(format!("collate: mixed samples in one batch ({what})"))
}

/// One question of a VQA batch: text, weighted answers, classifier targets.
type QuestionItem = (String, Vec<(String, f32)>, Vec<(usize, f32)>);

/// Builds a batch of any task's samples.
pub fn collate(enc: &TextEncoder, samples: Vec<AnySample>) -> Result<AlbefBatch> {
    let first = samples
        .first()
        .ok_or_else(|| VlpError::Msg("collate: empty batch".into()))?;
    match first {
        AnySample::Caption(_) => {
            let mut imgs = Vec::new();
            let mut texts = Vec::new();
            let mut idx = Vec::new();
            for s in samples {
                let AnySample::Caption(s) = s else {
                    return Err(mismatch("caption"));
                };
                imgs.push(s.image);
                texts.push(s.caption);
                idx.push(s.image_index as i64);
            }
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let (input_ids, attention_mask) = enc.encode(&refs)?;
            Ok(AlbefBatch::Pairs {
                image: stack_images(imgs)?,
                input_ids,
                attention_mask,
                idx: Tensor::from_slice(&idx),
            })
        }
        AnySample::Vqa(_) | AnySample::EasyVqa(..) | AnySample::VqaGroup(_) => {
            let mut imgs = Vec::new();
            let mut qs = Vec::new();
            let mut answers: Vec<String> = Vec::new();
            let mut weights: Vec<f32> = Vec::new();
            let mut counts: Vec<i64> = Vec::new();
            let mut targets: Vec<Vec<(usize, f32)>> = Vec::new();
            let mut image_index: Vec<i64> = Vec::new();
            let mut grouped = false;
            for s in samples {
                let row = imgs.len() as i64;
                let items: Vec<QuestionItem> = match s {
                    AnySample::Vqa(s) => {
                        imgs.push(s.image);
                        vec![(s.question, s.answers, s.targets)]
                    }
                    AnySample::EasyVqa(s, a) => {
                        imgs.push(s.image);
                        vec![(s.question, vec![(a, 1.0)], vec![(s.label, 1.0)])]
                    }
                    AnySample::VqaGroup(g) => {
                        grouped = true;
                        imgs.push(g.image);
                        g.questions
                            .into_iter()
                            .map(|q| (q.question, q.answers, q.targets))
                            .collect()
                    }
                    _ => return Err(mismatch("vqa")),
                };
                for (q, ans, t) in items {
                    qs.push(q);
                    image_index.push(row);
                    targets.push(t);
                    counts.push(ans.len() as i64);
                    for (a, w) in ans {
                        answers.push(a);
                        weights.push(w);
                    }
                }
            }
            let q: Vec<&str> = qs.iter().map(String::as_str).collect();
            let (question_ids, question_mask) = enc.encode(&q)?;
            let a: Vec<&str> = answers.iter().map(String::as_str).collect();
            let (answer_ids, answer_mask) = enc.encode_answers(&a)?;
            Ok(AlbefBatch::Vqa {
                image: stack_images(imgs)?,
                question_ids,
                question_mask,
                answer_ids,
                answer_mask,
                counts: Tensor::from_slice(&counts),
                weights: Tensor::from_slice(&weights),
                image_index: grouped.then(|| Tensor::from_slice(&image_index)),
                targets,
            })
        }
        AnySample::Nlvr2(_)
        | AnySample::Nlvr2Group(_)
        | AnySample::Ve(_)
        | AnySample::VeGroup(_) => {
            let mut left = Vec::new();
            let mut right = Vec::new();
            let mut texts = Vec::new();
            let mut targets = Vec::new();
            let mut image_index: Vec<i64> = Vec::new();
            let mut grouped = false;
            for s in samples {
                let row = left.len() as i64;
                match s {
                    AnySample::Nlvr2(s) => {
                        let [a, b] = s.images;
                        left.push(a);
                        right.push(b);
                        texts.push(s.sentence);
                        targets.push(i64::from(s.label));
                        image_index.push(row);
                    }
                    AnySample::Nlvr2Group(g) => {
                        grouped = true;
                        let [a, b] = g.images;
                        left.push(a);
                        right.push(b);
                        for (sentence, label) in g.sentences {
                            texts.push(sentence);
                            targets.push(i64::from(label));
                            image_index.push(row);
                        }
                    }
                    AnySample::Ve(s) => {
                        left.push(s.image);
                        texts.push(s.sentence);
                        targets.push(s.label.index() as i64);
                        image_index.push(row);
                    }
                    AnySample::VeGroup(g) => {
                        grouped = true;
                        left.push(g.image);
                        for (hypothesis, label) in g.hypotheses {
                            texts.push(hypothesis);
                            targets.push(label.index() as i64);
                            image_index.push(row);
                        }
                    }
                    _ => return Err(mismatch("classification")),
                }
            }
            left.extend(right);
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let (input_ids, attention_mask) = enc.encode(&refs)?;
            Ok(AlbefBatch::Classify {
                image: stack_images(left)?,
                input_ids,
                attention_mask,
                targets: Tensor::from_slice(&targets),
                image_index: grouped.then(|| Tensor::from_slice(&image_index)),
            })
        }
    }
}

/// The tokenizer of an experiment (`data.tokenizer`, default the bundled bert-base-uncased
/// vocabulary of MiniLM).
pub fn tokenizer(exp: &ExperimentConfig) -> Result<Tokenizer> {
    match &exp.data.tokenizer {
        Some(p) => Tokenizer::from_file(exp.data_path(p)),
        None => Tokenizer::from_file(vlp_core::assets::minilm_dir()?),
    }
}

/// The word classes of `model.itm_word_swap` as token ids of the experiment's tokenizer
/// (`None` when empty); errors name the field and the word that is not a single token, a
/// variant other than `pretrain`, or objective weights without `itm_swap`.
pub fn word_swap(exp: &ExperimentConfig) -> Result<Option<WordSwap>> {
    let groups = &exp.model.itm_word_swap;
    if groups.is_empty() {
        return Ok(None);
    }
    if exp.model.variant != "pretrain" {
        return Err(cfg_err(
            &exp.source,
            format!(
                "field `model.itm_word_swap`: only the `pretrain` variant has ITM pairs to swap words in (variant `{}`)",
                exp.model.variant
            ),
        ));
    }
    if !exp.train.objectives.is_empty() && !exp.train.objectives.contains_key("itm_swap") {
        return Err(cfg_err(
            &exp.source,
            "field `model.itm_word_swap`: set, but `train.objectives` lists no `itm_swap` weight (the swapped negatives would not train)",
        ));
    }
    let tok = tokenizer(exp)?;
    let ids = groups
        .iter()
        .enumerate()
        .map(|(g, words)| {
            words
                .iter()
                .map(|w| {
                    tok.token_to_id(w).ok_or_else(|| {
                        cfg_err(
                            &exp.source,
                            format!(
                                "field `model.itm_word_swap[{g}]`: `{w}` is not a single token of the vocabulary {}",
                                tok.path().display()
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<i64>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    WordSwap::new(ids)
        .map(Some)
        .map_err(|e| cfg_err(&exp.source, format!("field `model.itm_word_swap`: {e}")))
}

/// The image transform of an experiment (training augmentation or the evaluation resize).
pub fn transform(exp: &ExperimentConfig, cfg: &AlbefConfig, train: bool) -> Result<ImageTransform> {
    let size = cfg.image_res as u32;
    let c = if train {
        ImageTransformConfig::train(size, exp.data.normalize)
    } else {
        ImageTransformConfig::eval(size, exp.data.normalize)
    };
    ImageTransform::new(c)
}

pub(crate) fn read_opts(exp: &ExperimentConfig) -> ReadOptions {
    ReadOptions::new(exp.image_root()).skipping(exp.data.skip_bad_samples)
}

fn prep(exp: &ExperimentConfig) -> TextPrep {
    TextPrep::Albef {
        max_words: exp.data.max_words,
    }
}

pub(crate) fn need_files(exp: &ExperimentConfig, split: &str) -> Result<Vec<PathBuf>> {
    let files = exp.split_files(split);
    if files.is_empty() {
        return Err(cfg_err(
            &exp.source,
            format!(
                "field `data.{split}_file`: no annotation file for task `{}`",
                exp.data.task.name()
            ),
        ));
    }
    Ok(files)
}

pub(crate) fn easy_vqa(exp: &ExperimentConfig) -> Result<EasyVqa> {
    match &exp.data.root {
        Some(r) => EasyVqa::open(r),
        None => EasyVqa::package(),
    }
}

pub(crate) fn read_vqa(exp: &ExperimentConfig, files: &[PathBuf]) -> Result<Vec<VqaQuestion>> {
    let mut out = Vec::new();
    for f in files {
        out.extend(vqa_data::read_albef(f, &read_opts(exp), None)?.items);
    }
    Ok(out)
}

/// The training set of an experiment's task.
pub fn train_dataset(exp: &ExperimentConfig, cfg: &AlbefConfig) -> Result<AnyDataset> {
    let tf = transform(exp, cfg, true)?;
    Ok(match exp.data.task {
        Task::Pretrain | Task::Retrieval => {
            let files = need_files(exp, "train")?;
            let entries = karpathy::read_many(&files, &read_opts(exp))?.items;
            AnyDataset::Caption(CaptionDataset::new(entries, tf, prep(exp)))
        }
        Task::Vqa | Task::EasyVqa => vqa_train_dataset(exp, tf)?,
        Task::Nlvr2 => {
            let mut ex = Vec::new();
            for f in need_files(exp, "train")? {
                ex.extend(nlvr2::read(&f, &read_opts(exp))?.items);
            }
            nlvr2_train_dataset(exp, ex, tf)?
        }
        Task::Ve => {
            let mut ex = Vec::new();
            for f in need_files(exp, "train")? {
                ex.extend(snli_ve::read(&f, &read_opts(exp))?.items);
            }
            ve_train_dataset(exp, ex, tf)?
        }
    })
}

/// The SNLI-VE training set of read `examples`: grouped by image when
/// `data.hypotheses_per_image` is set (0 is an error naming the field).
pub fn ve_train_dataset(
    exp: &ExperimentConfig,
    examples: Vec<snli_ve::VeExample>,
    tf: ImageTransform,
) -> Result<AnyDataset> {
    Ok(
        match group_size(
            exp,
            exp.data.hypotheses_per_image,
            "data.hypotheses_per_image",
        )? {
            None => AnyDataset::Ve(VeDataset::new(examples, tf, prep(exp))),
            Some(k) => AnyDataset::VeGrouped(GroupedVeDataset::new(examples, k, tf, prep(exp))),
        },
    )
}

/// A `data.*_per_*` grouping size: `None` (one text per sample) or at least 1; 0 is an error
/// naming `field`.
fn group_size(exp: &ExperimentConfig, n: Option<usize>, field: &str) -> Result<Option<usize>> {
    match n {
        Some(0) => Err(cfg_err(
            &exp.source,
            format!("field `{field}`: expected at least 1"),
        )),
        n => Ok(n),
    }
}

/// The NLVR2 training set of read `examples`: grouped by image pair when
/// `data.sentences_per_pair` is set (0 is an error naming the field).
pub fn nlvr2_train_dataset(
    exp: &ExperimentConfig,
    examples: Vec<nlvr2::Nlvr2Example>,
    tf: ImageTransform,
) -> Result<AnyDataset> {
    Ok(
        match group_size(exp, exp.data.sentences_per_pair, "data.sentences_per_pair")? {
            None => AnyDataset::Nlvr2(Nlvr2Dataset::new(examples, tf, prep(exp))),
            Some(k) => {
                AnyDataset::Nlvr2Grouped(GroupedNlvr2Dataset::new(examples, k, tf, prep(exp)))
            }
        },
    )
}

/// The threaded loader of the training set (shuffled per epoch from `train.seed`; the last
/// incomplete batch is dropped as in ALBEF when the set holds at least one batch).
pub fn train_loader(
    exp: &ExperimentConfig,
    cfg: &AlbefConfig,
    enc: TextEncoder,
) -> Result<DataLoader<AnyDataset, AlbefBatch>> {
    let ds = train_dataset(exp, cfg)?;
    if ds.is_empty() {
        return Err(VlpError::Msg(format!(
            "{}: the training set of task `{}` is empty",
            exp.source.display(),
            exp.data.task.name()
        )));
    }
    let mut lc = LoaderConfig::new(exp.train.batch_size);
    lc.seed = exp.train.seed;
    lc.num_workers = exp.data.num_workers;
    lc.skip_bad_samples = exp.data.skip_bad_samples;
    lc.drop_last = ds.len() >= exp.train.batch_size;
    DataLoader::new(ds, move |s: Vec<AnySample>| collate(&enc, s), lc)
}

/// The VQA / easy-VQA training set: grouped by image when `data.questions_per_image` is set,
/// with classifier targets for `vqa_cls` (soft scores count / len, as ALBEF/BLIP).
pub fn vqa_train_dataset(exp: &ExperimentConfig, tf: ImageTransform) -> Result<AnyDataset> {
    if exp.data.task == Task::EasyVqa {
        let ev = easy_vqa(exp)?;
        let qs = ev.read(EasySplit::Train, exp.data.skip_bad_samples)?.items;
        return easy_vqa_train_dataset(exp, tf, qs);
    }
    let vocab = if exp.model.variant == "vqa_cls" {
        Some(Arc::new(answer_vocab(exp)?))
    } else {
        None
    };
    let per_image = exp.data.questions_per_image;
    let qs = read_vqa(exp, &need_files(exp, "train")?)?;
    Ok(match per_image {
        Some(k) => AnyDataset::VqaGrouped(GroupedVqaDataset::new(
            qs,
            k,
            tf,
            prep(exp),
            ScoreConvention::CountOverLen,
            vocab,
        )),
        None => AnyDataset::Vqa(VqaDataset::new(
            qs,
            tf,
            prep(exp),
            ScoreConvention::CountOverLen,
            vocab,
        )),
    })
}

/// The easy-VQA training set of an experiment over the given questions (the training split's,
/// possibly with added ones): grouped by image when `data.questions_per_image` is set.
pub fn easy_vqa_train_dataset(
    exp: &ExperimentConfig,
    tf: ImageTransform,
    qs: Vec<EasyVqaQuestion>,
) -> Result<AnyDataset> {
    let vocab = if exp.model.variant == "vqa_cls" {
        Some(Arc::new(answer_vocab(exp)?))
    } else {
        None
    };
    let ev = easy_vqa(exp)?;
    Ok({
        match exp.data.questions_per_image {
            Some(k) => AnyDataset::VqaGrouped(GroupedVqaDataset::new(
                qs.into_iter().map(easy_as_vqa).collect(),
                k,
                tf,
                TextPrep::Raw,
                ScoreConvention::CountOverLen,
                vocab,
            )),
            None => {
                let answers = Arc::new(ev.answers.answers().to_vec());
                AnyDataset::EasyVqa(EasyVqaDataset::new(qs, tf), answers)
            }
        }
    })
}

/// The answer vocabulary of a VQA experiment, in the order of the classifier's outputs: the
/// `data.answer_list` file (VQA) or easy-VQA's `answers.txt`.
pub fn answer_vocab(exp: &ExperimentConfig) -> Result<AnswerVocab> {
    match exp.data.task {
        Task::EasyVqa => Ok(AnswerVocab::from_answers(
            easy_vqa(exp)?.answers.answers().to_vec(),
        )),
        Task::Vqa => {
            let list = exp.data.answer_list.as_ref().ok_or_else(|| {
                cfg_err(&exp.source, "field `data.answer_list`: required for VQA")
            })?;
            Ok(AnswerVocab::from_answers(vqa_data::read_answer_list(
                &exp.data_path(list),
            )?))
        }
        t => Err(cfg_err(
            &exp.source,
            format!("data.task `{}` has no answer vocabulary", t.name()),
        )),
    }
}

/// Whether `variant` can be trained / evaluated on `task`.
pub fn check_task(variant: &str, task: Task) -> Result<()> {
    let ok = matches!(
        (variant, task),
        ("pretrain", Task::Pretrain | Task::Retrieval)
            | ("pretrain_nlvr", Task::Pretrain)
            | ("retrieval", Task::Retrieval | Task::Pretrain)
            | ("vqa" | "vqa_cls", Task::Vqa | Task::EasyVqa)
            | ("nlvr2", Task::Nlvr2)
            | ("ve", Task::Ve)
    );
    if ok {
        Ok(())
    } else {
        Err(VlpError::Msg(format!(
            "model.variant `{variant}` cannot be trained on data.task `{}`",
            task.name()
        )))
    }
}

/// ALBEF as a [`Trainable`]: the variant plus the distillation weight `alpha` (ramped over the
/// first epoch with `ctx.warmup_ramp()`, as the official scripts do).
#[derive(Debug)]
pub struct AlbefTrainable {
    /// The model.
    pub model: AlbefModel,
    /// `alpha` of the config.
    pub alpha: f64,
    /// Word-swapped ITM negatives in pre-training (`model.itm_word_swap`; objective
    /// `itm_swap`).
    pub word_swap: Option<WordSwap>,
}

/// `[Q, n]` soft targets of `(label, score)` lists; a label outside `0..n` is an error.
pub fn dense_targets(targets: &[Vec<(usize, f32)>], n: i64) -> Result<Tensor> {
    let mut v = vec![0f32; targets.len() * n as usize];
    for (q, t) in targets.iter().enumerate() {
        for &(label, score) in t {
            if label as i64 >= n {
                return Err(VlpError::Msg(format!(
                    "vqa_cls: answer label {label} outside the {n}-answer head"
                )));
            }
            v[q * n as usize + label] = score;
        }
    }
    Ok(Tensor::from_slice(&v).view([targets.len() as i64, n]))
}

fn want(ctx: &StepContext<'_>, name: &str) -> bool {
    ctx.is_active(name) && (ctx.weights.is_empty() || ctx.weights.contains_key(name))
}

impl Trainable for AlbefTrainable {
    type Batch = AlbefBatch;

    fn var_store(&self) -> &tch::nn::VarStore {
        self.model.as_vlp().var_store()
    }

    /// Pretraining returns `itc`, `itm`, `mlm` (those listed in `train.objectives`, all when it
    /// is empty), text assignment `ta`, retrieval `itc`, `itm`, VQA `vqa`, NLVR2 `nlvr2`, SNLI-VE `ve`.
    fn train_step(&mut self, batch: &AlbefBatch, ctx: &StepContext<'_>) -> Result<LossTerms> {
        let dev = ctx.device;
        let alpha = self.alpha * ctx.warmup_ramp();
        self.model.set_train(true);
        let mut lt = LossTerms::new();
        match (&mut self.model, batch) {
            (
                AlbefModel::Pretrain(m),
                AlbefBatch::Pairs {
                    image,
                    input_ids,
                    attention_mask,
                    ..
                },
            ) => {
                let (image, ids, mask) = (
                    image.to_device(dev),
                    input_ids.to_device(dev),
                    attention_mask.to_device(dev),
                );
                let out = m.forward(
                    &PretrainBatch {
                        image: &image,
                        input_ids: &ids,
                        attention_mask: &mask,
                    },
                    alpha,
                    PretrainDraws::default(),
                )?;
                if let (Some(ws), true) = (&self.word_swap, want(ctx, "itm_swap")) {
                    let swapped = ws.swap(&ids)?;
                    let logits =
                        m.itm_logits(&swapped.input_ids, &mask, &out.image_embeds, true)?;
                    let b = logits.size()[0];
                    let pos = out.itm_logits.narrow(0, 0, b);
                    lt.push(
                        "itm_swap",
                        word_swap_itm_loss(&pos, &logits, &swapped.valid)?,
                    );
                }
                for (name, loss) in [
                    ("itc", out.loss_ita),
                    ("itm", out.loss_itm),
                    ("mlm", out.loss_mlm),
                ] {
                    if want(ctx, name) {
                        lt.push(name, loss);
                    }
                }
            }
            (
                AlbefModel::PretrainNlvr(m),
                AlbefBatch::Pairs {
                    image,
                    input_ids,
                    attention_mask,
                    ..
                },
            ) => {
                let out = m.forward(
                    &image.to_device(dev),
                    &input_ids.to_device(dev),
                    &attention_mask.to_device(dev),
                )?;
                lt.push("ta", out.loss);
            }
            (
                AlbefModel::Retrieval(m),
                AlbefBatch::Pairs {
                    image,
                    input_ids,
                    attention_mask,
                    idx,
                },
            ) => {
                let (image, ids, mask, idx) = (
                    image.to_device(dev),
                    input_ids.to_device(dev),
                    attention_mask.to_device(dev),
                    idx.to_device(dev),
                );
                let out = m.train_forward(
                    &RetrievalBatch {
                        image: &image,
                        input_ids: &ids,
                        attention_mask: &mask,
                        idx: &idx,
                    },
                    alpha,
                    None,
                )?;
                for (name, loss) in [("itc", out.loss_ita), ("itm", out.loss_itm)] {
                    if want(ctx, name) {
                        lt.push(name, loss);
                    }
                }
            }
            (
                AlbefModel::Vqa(m),
                AlbefBatch::Vqa {
                    image,
                    question_ids,
                    question_mask,
                    answer_ids,
                    answer_mask,
                    counts,
                    weights,
                    image_index,
                    ..
                },
            ) => {
                let t = |x: &Tensor| x.to_device(dev);
                // Grouped batches: one image row per question for the official forward.
                let image = match image_index {
                    Some(ix) => image.index_select(0, ix),
                    None => image.shallow_clone(),
                };
                let (image, qi, qm, ai, am, k, w) = (
                    t(&image),
                    t(question_ids),
                    t(question_mask),
                    t(answer_ids),
                    t(answer_mask),
                    t(counts),
                    t(weights),
                );
                let out = m.train_forward(
                    &VqaTrainBatch {
                        image: &image,
                        question_ids: &qi,
                        question_mask: &qm,
                        answer_ids: &ai,
                        answer_mask: &am,
                        answers_per_question: &k,
                        weights: &w,
                    },
                    alpha,
                )?;
                lt.push("vqa", out.loss);
            }
            (
                AlbefModel::VqaCls(m),
                AlbefBatch::Vqa {
                    image,
                    question_ids,
                    question_mask,
                    image_index,
                    targets,
                    ..
                },
            ) => {
                let (image, qi, qm) = (
                    image.to_device(dev),
                    question_ids.to_device(dev),
                    question_mask.to_device(dev),
                );
                let logits = match image_index {
                    Some(ix) => m.forward_grouped(&image, ix, &qi, &qm)?,
                    None => m.forward(&image, &qi, &qm)?,
                };
                let dense = dense_targets(targets, m.num_answers)?.to_device(dev);
                lt.push("vqa", m.train_loss(&logits, &dense)?);
            }
            (
                AlbefModel::Nlvr2(m),
                AlbefBatch::Classify {
                    image,
                    input_ids,
                    attention_mask,
                    targets,
                    image_index,
                },
            ) => {
                let loss = m.train_loss_grouped(
                    &image.to_device(dev),
                    image_index.as_ref(),
                    &input_ids.to_device(dev),
                    &attention_mask.to_device(dev),
                    &targets.to_device(dev),
                    alpha,
                )?;
                lt.push("nlvr2", loss);
            }
            (
                AlbefModel::Ve(m),
                AlbefBatch::Classify {
                    image,
                    input_ids,
                    attention_mask,
                    targets,
                    image_index,
                },
            ) => {
                let loss = m.train_loss_grouped(
                    &image.to_device(dev),
                    image_index.as_ref(),
                    &input_ids.to_device(dev),
                    &attention_mask.to_device(dev),
                    &targets.to_device(dev),
                    alpha,
                )?;
                lt.push("ve", loss);
            }
            (m, _) => {
                return Err(VlpError::Msg(format!(
                    "albef {}: the batch does not belong to this variant (check data.task)",
                    m.variant()
                )))
            }
        }
        Ok(lt)
    }
}

// ------------------------------------------------------------------------------------------------
// Evaluation.

/// The evaluation data of an experiment (read once, used at every evaluation).
pub enum EvalData {
    /// Retrieval (also zero-shot retrieval of a pretraining run).
    Retrieval {
        /// The gallery.
        gallery: RetrievalGallery,
    },
    /// VQA: the questions (with their annotator answers) and the candidate answers.
    Vqa {
        /// Questions.
        questions: Vec<VqaQuestion>,
        /// Candidate answers (`answer_list`).
        answers: Vec<String>,
        /// Exact-match accuracy (easy-VQA) instead of the VQA soft accuracy.
        exact: bool,
    },
    /// NLVR2: (left, right, sentence, label).
    Nlvr2(Vec<(PathBuf, PathBuf, String, i64)>),
    /// SNLI-VE: (image, hypothesis, label).
    Ve(Vec<(PathBuf, String, i64)>),
}

impl std::fmt::Debug for EvalData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EvalData::Retrieval { gallery } => write!(
                f,
                "Retrieval({} images, {} texts)",
                gallery.images.len(),
                gallery.texts.len()
            ),
            EvalData::Vqa { questions, .. } => write!(f, "Vqa({} questions)", questions.len()),
            EvalData::Nlvr2(v) => write!(f, "Nlvr2({})", v.len()),
            EvalData::Ve(v) => write!(f, "Ve({})", v.len()),
        }
    }
}

/// Reads the evaluation split (`eval.split`) of the experiment's task.
pub fn eval_data(exp: &ExperimentConfig) -> Result<EvalData> {
    let split = exp.eval.split.as_str();
    let max = exp.eval.max_samples.unwrap_or(usize::MAX);
    Ok(match exp.data.task {
        Task::Pretrain | Task::Retrieval => {
            let files = need_files(exp, split)?;
            let mut entries = karpathy::read_many(&files, &read_opts(exp))?.items;
            entries.truncate(max);
            EvalData::Retrieval {
                gallery: RetrievalGallery::from_entries(&entries, prep(exp)),
            }
        }
        Task::Vqa => {
            let mut questions = read_vqa(exp, &need_files(exp, split)?)?;
            questions.retain(|q| !q.answers.is_empty());
            if questions.is_empty() {
                return Err(VlpError::Msg(format!(
                    "data.{split}_file: no question with answers to score"
                )));
            }
            questions.truncate(max);
            let list = exp.data.answer_list.as_ref().ok_or_else(|| {
                cfg_err(&exp.source, "field `data.answer_list`: required for VQA")
            })?;
            let answers = vqa_data::read_answer_list(&exp.data_path(list))?;
            EvalData::Vqa {
                questions: questions
                    .into_iter()
                    .map(|mut q| {
                        q.question = prep(exp).question(&q.question);
                        q
                    })
                    .collect(),
                answers,
                exact: false,
            }
        }
        Task::EasyVqa => {
            let ev = easy_vqa(exp)?;
            // easy-VQA has no validation split: `train` reads the training questions (the
            // text-only prior of the quickstart), anything else the test split.
            let which = if split == "train" {
                EasySplit::Train
            } else {
                EasySplit::Test
            };
            let mut qs = ev.read(which, exp.data.skip_bad_samples)?.items;
            qs.truncate(max);
            let questions = qs
                .into_iter()
                .enumerate()
                .map(|(i, q)| VqaQuestion {
                    question_id: Some(i as u64),
                    image_id: Some(q.image_id),
                    image_rel: q.image.display().to_string(),
                    image: q.image,
                    question: q.question,
                    answers: vec![q.answer],
                    multiple_choice_answer: None,
                    question_type: None,
                    answer_type: None,
                    dataset: None,
                })
                .collect();
            EvalData::Vqa {
                questions,
                answers: ev.answers.answers().to_vec(),
                exact: true,
            }
        }
        Task::Nlvr2 => {
            let mut v = Vec::new();
            for f in need_files(exp, split)? {
                for e in nlvr2::read(&f, &read_opts(exp))?.items {
                    let [a, b] = e.images;
                    v.push((a, b, prep(exp).caption(&e.sentence), i64::from(e.label)));
                }
            }
            v.truncate(max);
            EvalData::Nlvr2(v)
        }
        Task::Ve => {
            let mut v = Vec::new();
            for f in need_files(exp, split)? {
                for e in snli_ve::read(&f, &read_opts(exp))?.items {
                    v.push((
                        e.image,
                        prep(exp).caption(&e.sentence),
                        e.label.index() as i64,
                    ));
                }
            }
            v.truncate(max);
            EvalData::Ve(v)
        }
    })
}

/// What the evaluators need besides the model.
#[derive(Debug, Clone)]
pub struct EvalSetup {
    /// Text encoding.
    pub enc: TextEncoder,
    /// Evaluation transform.
    pub transform: ImageTransform,
    /// `k_test`.
    pub k_test: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Loader threads for gallery images.
    pub num_workers: usize,
    /// Optional grouping of VQA / NLVR2 / SNLI-VE examples by their text (for example
    /// [`crate::shapes::text_family`]): each group's accuracy is reported as `group_<name>`
    /// (texts it maps to `None` only count in the total).
    pub groups: Option<fn(&str) -> Option<&'static str>>,
}

fn load_images(tf: &ImageTransform, paths: &[&Path], dev: Device) -> Result<Tensor> {
    let mut rng = StdRng::seed_from_u64(0);
    let imgs = paths
        .iter()
        .map(|p| tf.apply_path(p, &mut rng))
        .collect::<Result<Vec<_>>>()?;
    Ok(stack_images(imgs)?.to_device(dev))
}

/// The answer index the classifier head gives each question (argmax of its logits), in the
/// order of `questions`. Questions are sorted by image so that each image of a chunk is
/// encoded once for all of its questions. Call without gradients (as [`evaluate`] does).
pub fn classify_questions(
    m: &AlbefVqaClassifier,
    questions: &[VqaQuestion],
    setup: &EvalSetup,
) -> Result<Vec<usize>> {
    let dev = m.var_store().device();
    let mut order: Vec<usize> = (0..questions.len()).collect();
    order.sort_by(|&a, &b| questions[a].image.cmp(&questions[b].image));
    let mut out = vec![0usize; questions.len()];
    for chunk in order.chunks(setup.batch_size.max(1) * 4) {
        let mut uniq: Vec<&Path> = Vec::new();
        let mut which = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let p = questions[i].image.as_path();
            if uniq.last() != Some(&p) {
                uniq.push(p);
            }
            which.push(uniq.len() as i64 - 1);
        }
        let img = load_images(&setup.transform, &uniq, dev)?;
        let qs: Vec<&str> = chunk
            .iter()
            .map(|&i| questions[i].question.as_str())
            .collect();
        let (qi, qm) = setup.enc.encode(&qs)?;
        let logits = m.forward_grouped(
            &img,
            &Tensor::from_slice(&which).to_device(dev),
            &qi.to_device(dev),
            &qm.to_device(dev),
        )?;
        let best = Vec::<i64>::try_from(logits.argmax(1, false).to_device(Device::Cpu))?;
        for (&i, b) in chunk.iter().zip(best) {
            out[i] = b as usize;
        }
    }
    Ok(out)
}

/// `acc` and `acc_<class>` (percent of the examples of that gold class predicted right; a
/// class without examples is left out) of `(gold, predicted)` label pairs; `names[label]`.
fn class_accuracies(m: &mut BTreeMap<String, f64>, gold_pred: &[(i64, i64)], names: &[&str]) {
    let correct = gold_pred.iter().filter(|(g, p)| g == p).count();
    m.insert("acc".into(), accuracy_pct(correct, gold_pred.len()));
    for (label, name) in names.iter().enumerate() {
        let of: Vec<_> = gold_pred
            .iter()
            .filter(|(g, _)| *g == label as i64)
            .collect();
        if !of.is_empty() {
            let right = of.iter().filter(|(g, p)| g == p).count();
            m.insert(format!("acc_{name}"), accuracy_pct(right, of.len()));
        }
    }
}

/// `group_<name>`: the mean score (percent) of the examples of each group, `texts_scores`
/// holding each example's text and score in [0, 1].
fn group_scores<'t>(
    m: &mut BTreeMap<String, f64>,
    groups: Option<fn(&str) -> Option<&'static str>>,
    texts_scores: impl Iterator<Item = (&'t str, f64)>,
) {
    let Some(group_of) = groups else {
        return;
    };
    let mut sums: BTreeMap<&'static str, (f64, usize)> = BTreeMap::new();
    for (text, score) in texts_scores {
        if let Some(g) = group_of(text) {
            let e = sums.entry(g).or_default();
            e.0 += score;
            e.1 += 1;
        }
    }
    for (g, (sum, n)) in sums {
        m.insert(format!("group_{g}"), 100.0 * sum / n as f64);
    }
}

fn accuracy_pct(correct: usize, total: usize) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * correct as f64 / total as f64
    }
}

/// Evaluates the model (dropout off, no gradients) and returns named metrics: retrieval
/// `txt_r1` … `r_mean` (ALBEF's names), VQA `vqa_acc` (the official soft accuracy, percent; exact
/// match for easy-VQA), NLVR2 / SNLI-VE `acc` (percent).
pub fn evaluate(
    model: &mut AlbefModel,
    data: &EvalData,
    setup: &EvalSetup,
) -> Result<BTreeMap<String, f64>> {
    model.set_train(false);
    let out = tch::no_grad(|| evaluate_inner(&*model, data, setup));
    model.set_train(true);
    out
}

fn evaluate_inner(
    model: &AlbefModel,
    data: &EvalData,
    setup: &EvalSetup,
) -> Result<BTreeMap<String, f64>> {
    let dev = model.as_vlp().var_store().device();
    let bs = setup.batch_size;
    let mut m = BTreeMap::new();
    match (data, model) {
        (EvalData::Retrieval { gallery }, AlbefModel::Pretrain(_) | AlbefModel::Retrieval(_)) => {
            let mut view = match model {
                AlbefModel::Pretrain(p) => AlbefRetrievalEval::new(p.as_ref(), &setup.enc)?,
                AlbefModel::Retrieval(r) => AlbefRetrievalEval::new(r.as_ref(), &setup.enc)?,
                _ => unreachable!("matched above"),
            };
            let mut lc = LoaderConfig::new(bs);
            lc.num_workers = setup.num_workers;
            let mut rc = RetrievalEvalConfig::new(setup.k_test, Fusion::ItmOnly);
            rc.itm_batch_size = bs.max(16);
            rc.text_batch_size = bs.max(16);
            let report = evaluate_gallery(&mut view, gallery, setup.transform.clone(), &lc, &rc)?;
            let v =
                serde_json::to_value(report.metrics).map_err(|e| VlpError::Msg(e.to_string()))?;
            if let serde_json::Value::Object(o) = v {
                for (k, v) in o {
                    if let Some(x) = v.as_f64() {
                        m.insert(k, x);
                    }
                }
            }
        }
        (
            EvalData::Vqa {
                questions,
                answers,
                exact,
            },
            AlbefModel::Vqa(vqa),
        ) => {
            let refs: Vec<&str> = answers.iter().map(String::as_str).collect();
            let (aid, amask) = setup.enc.encode_answers(&refs)?;
            let (aid, amask) = (aid.to_device(dev), amask.to_device(dev));
            let k = (setup.k_test as i64).min(answers.len() as i64);
            let mut total = 0.0;
            let mut scores = Vec::with_capacity(questions.len());
            for chunk in questions.chunks(bs) {
                let paths: Vec<&Path> = chunk.iter().map(|q| q.image.as_path()).collect();
                let img = load_images(&setup.transform, &paths, dev)?;
                let qs: Vec<&str> = chunk.iter().map(|q| q.question.as_str()).collect();
                let (qi, qm) = setup.enc.encode(&qs)?;
                let (qi, qm) = (qi.to_device(dev), qm.to_device(dev));
                let (_, states) = vqa.encode_question(&img, &qi, &qm)?;
                let (ids, _) = vqa.rank_answer(&states, &qm, &aid, &amask, k)?;
                let best = Vec::<i64>::try_from(ids.select(1, 0).to_device(Device::Cpu))?;
                for (q, b) in chunk.iter().zip(best) {
                    let pred = &answers[b as usize];
                    let score = question_score(pred, &q.answers, *exact);
                    total += score;
                    scores.push(score);
                }
            }
            m.insert(
                "vqa_acc".into(),
                100.0 * total / questions.len().max(1) as f64,
            );
            group_scores(
                &mut m,
                setup.groups,
                questions.iter().map(|q| q.question.as_str()).zip(scores),
            );
        }
        (
            EvalData::Vqa {
                questions,
                answers,
                exact,
            },
            AlbefModel::VqaCls(vqa),
        ) => {
            if vqa.num_answers != answers.len() as i64 {
                return Err(VlpError::Msg(format!(
                    "albef vqa_cls: the head has {} answers, the answer list {}",
                    vqa.num_answers,
                    answers.len()
                )));
            }
            let preds = classify_questions(vqa, questions, setup)?;
            let scores: Vec<f64> = questions
                .iter()
                .zip(preds)
                .map(|(q, p)| question_score(&answers[p], &q.answers, *exact))
                .collect();
            m.insert(
                "vqa_acc".into(),
                100.0 * scores.iter().sum::<f64>() / questions.len().max(1) as f64,
            );
            group_scores(
                &mut m,
                setup.groups,
                questions.iter().map(|q| q.question.as_str()).zip(scores),
            );
        }
        (EvalData::Nlvr2(ex), AlbefModel::Nlvr2(nl)) => {
            let mut gold_pred = Vec::with_capacity(ex.len());
            for chunk in ex.chunks(bs) {
                let mut paths: Vec<&Path> = chunk.iter().map(|e| e.0.as_path()).collect();
                paths.extend(chunk.iter().map(|e| e.1.as_path()));
                let img = load_images(&setup.transform, &paths, dev)?;
                let texts: Vec<&str> = chunk.iter().map(|e| e.2.as_str()).collect();
                let (ti, tm) = setup.enc.encode(&texts)?;
                let out = nl.forward(&img, &ti.to_device(dev), &tm.to_device(dev))?;
                let pred =
                    Vec::<i64>::try_from(out.logits.argmax(1, false).to_device(Device::Cpu))?;
                gold_pred.extend(chunk.iter().zip(pred).map(|(e, p)| (e.3, p)));
            }
            class_accuracies(&mut m, &gold_pred, &["false", "true"]);
            group_scores(
                &mut m,
                setup.groups,
                ex.iter()
                    .zip(&gold_pred)
                    .map(|(e, (g, p))| (e.2.as_str(), f64::from(u8::from(g == p)))),
            );
        }
        (EvalData::Ve(ex), AlbefModel::Ve(ve)) => {
            let mut gold_pred = Vec::with_capacity(ex.len());
            for chunk in ex.chunks(bs) {
                let paths: Vec<&Path> = chunk.iter().map(|e| e.0.as_path()).collect();
                let img = load_images(&setup.transform, &paths, dev)?;
                let texts: Vec<&str> = chunk.iter().map(|e| e.1.as_str()).collect();
                let (ti, tm) = setup.enc.encode(&texts)?;
                let out = ve.forward(&img, &ti.to_device(dev), &tm.to_device(dev))?;
                let pred =
                    Vec::<i64>::try_from(out.logits.argmax(1, false).to_device(Device::Cpu))?;
                gold_pred.extend(chunk.iter().zip(pred).map(|(e, p)| (e.2, p)));
            }
            class_accuracies(
                &mut m,
                &gold_pred,
                &["contradiction", "neutral", "entailment"],
            );
            group_scores(
                &mut m,
                setup.groups,
                ex.iter()
                    .zip(&gold_pred)
                    .map(|(e, (g, p))| (e.1.as_str(), f64::from(u8::from(g == p)))),
            );
        }
        (d, model) => {
            return Err(VlpError::Msg(format!(
                "albef {}: cannot evaluate {d:?}",
                model.variant()
            )))
        }
    }
    Ok(m)
}
