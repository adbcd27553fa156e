//! BLIP in the pipeline (Li et al., ICML 2022; `salesforce/BLIP` `pretrain.py`,
//! `train_retrieval.py`, `train_caption.py`, `train_vqa.py`, `train_nlvr.py`): size presets, the
//! model config of an experiment, BLIP's tokenisation of every task (`[CLS] x [SEP]`, `[ENC]` /
//! `[DEC]` swapped in at position 0 by the model step, the captioning prompt), the [`Trainable`]
//! implementation of the five trainable variants and their evaluation with the real metrics
//! (retrieval recall with ITM + ITC scores, BLEU/CIDEr of beam-searched captions, VQA accuracy of
//! ranked answers, NLVR2 accuracy).
//!
//! The data sets, batches and evaluation data are ALBEF's ([`super::albef`]) built with BLIP's
//! text cleaning (`TextPrep::Blip`).
use super::albef::{easy_vqa, need_files, read_opts, read_vqa};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tch::{Device, Kind, Tensor};
use vlp_core::checkpoint::{self, LoadMode, LoadReport, ReadOptions as CkptReadOptions};
use vlp_core::image::{ImageTransform, ImageTransformConfig};
use vlp_core::layers::vit::VitConfig;
use vlp_core::text::{pad_batch, EncodeOptions, Padding, SpecialStyle, Tokenizer};
use vlp_core::{Result, VlpError};
use vlp_models::albef::normalize;
use vlp_models::blip::pretrain::PretrainBatch;
use vlp_models::blip::retrieval::RetrievalBatch;
use vlp_models::blip::{
    with_first_token, BlipConfig, BlipDecoder, BlipNlvr, BlipPretrain, BlipRetrieval, BlipTokens,
    BlipVqa,
};
use vlp_models::VlpModel;

use super::albef::{resolve_init, AlbefBatch, AnyDataset, AnySample, EvalData};
use super::config::{ExperimentConfig, InitMode, Preset, Task};
use crate::data::easy_vqa::{EasyVqaDataset, Split as EasySplit};
use crate::data::karpathy::{self, CaptionDataset, RetrievalGallery};
use crate::data::loader::{stack_images, DataLoader, Dataset, LoaderConfig};
use crate::data::nlvr2::{self, Nlvr2Dataset};
use crate::data::vqa::{self as vqa_data, VqaDataset, VqaQuestion};
use crate::data::TextPrep;
use crate::eval::retrieval::{evaluate_gallery, Fusion, RetrievalEvalConfig, RetrievalModel};
use crate::metrics::caption::caption_metrics;
use crate::metrics::vqa::{question_score, ScoreConvention};
use crate::train::{LossTerms, StepContext, Trainable};

/// The variants the pipeline trains and evaluates (`itm` and the HF layouts are inference-only).
pub const VARIANTS: &[&str] = &["pretrain", "retrieval", "captioning", "vqa", "nlvr2"];

/// BLIP's batches are ALBEF's (`Pairs` for pretraining, retrieval and captioning, `Vqa`,
/// `Classify` for NLVR2), holding BLIP's token ids.
pub type BlipBatch = AlbefBatch;

/// The BLIP config of a preset. `Base` is the paper's model (ViT-B/16, BERT-base MED, the class
/// default image size of each variant); `Small` and `Tiny` are sized for CPU like ALBEF's, with
/// the text width equal to the image width so that every checkpoint of a preset loads into every
/// variant (the VQA answer decoder cross-attends at `med.encoder_width`).
pub fn blip_preset(preset: Preset) -> BlipConfig {
    let base = BlipConfig::default();
    let (img, patch, width, depth, heads, layers, embed, queue) = match preset {
        Preset::Base => return base,
        Preset::Small => (64, 8, 128, 4, 4, 4, 64, 256),
        Preset::Tiny => (32, 8, 64, 2, 2, 2, 32, 64),
    };
    let mut c = base;
    c.image_size = Some(img);
    c.vision = Some(VitConfig {
        img_size: img,
        patch_size: patch,
        embed_dim: width,
        depth,
        num_heads: heads,
        ..VitConfig::default()
    });
    c.embed_dim = embed;
    c.queue_size = queue;
    c.med.hidden_size = width;
    c.med.num_hidden_layers = layers;
    c.med.num_attention_heads = heads;
    c.med.intermediate_size = 4 * width;
    c.med.encoder_width = Some(width);
    c.med.max_position_embeddings = 128;
    c
}

fn cfg_err(path: &Path, msg: impl Into<String>) -> VlpError {
    VlpError::Config {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// The model config of an experiment: the preset with `model.config` merged over it (a file path
/// relative to the experiment file, or an inline mapping of `BlipConfig` keys), then
/// `data.image_size`. Errors name `model.config`.
pub fn blip_config(exp: &ExperimentConfig) -> Result<BlipConfig> {
    let src = &exp.source;
    let v = serde_json::to_value(blip_preset(exp.model.preset))
        .map_err(|e| VlpError::Msg(format!("blip preset: {e}")))?;
    let v = super::config::merged_model_config(exp, v)?;
    let mut c = BlipConfig::from_json(&v)
        .map_err(|e| cfg_err(src, format!("field `model.config`: {e}")))?;
    if let Some(size) = exp.data.image_size {
        let size = i64::from(size);
        c.image_size = Some(size);
        if let Some(vit) = c.vision.as_mut() {
            vit.img_size = size;
        }
    }
    Ok(c)
}

/// The input resolution of `variant` under `cfg`.
pub fn image_size(cfg: &BlipConfig, variant: &str) -> i64 {
    cfg.vit_for(variant, false).img_size
}

/// BLIP's tokenizer (`init_tokenizer`: the experiment's WordPiece vocabulary, default
/// bert-base-uncased, plus `[DEC]` and `[ENC]` appended) and the special-token ids it gives.
pub fn blip_tokenizer(exp: &ExperimentConfig) -> Result<(Tokenizer, BlipTokens)> {
    let mut tok = super::albef::tokenizer(exp)?;
    let added = tok.add_special_tokens(&["[DEC]", "[ENC]"]);
    let tokens = BlipTokens {
        pad: tok.pad_id(),
        cls: tok.cls_id(),
        sep: tok.sep_id(),
        bos: added[0],
        enc: added[1],
    };
    Ok((tok, tokens))
}

/// The config with the tokenizer's special tokens (unless `model.config` names its own) and a
/// check that the text vocabulary holds them.
pub fn with_tokens(
    exp: &ExperimentConfig,
    mut cfg: BlipConfig,
    tokens: BlipTokens,
) -> Result<BlipConfig> {
    if cfg.special_tokens.is_none() {
        cfg.special_tokens = Some(tokens);
    }
    let pretrain = exp.model.variant == "pretrain";
    let t = cfg.tokens(pretrain);
    let vocab = cfg.text_vocab(pretrain);
    if t.enc.max(t.bos) >= vocab {
        return Err(cfg_err(
            &exp.source,
            format!(
                "field `model.config`: the text vocabulary ({vocab}, `med.vocab_size`) does not hold the tokenizer's [DEC] {} / [ENC] {}",
                t.bos, t.enc
            ),
        ));
    }
    cfg.validate()
        .map_err(|e| cfg_err(&exp.source, format!("field `model.config`: {e}")))?;
    Ok(cfg)
}

/// One of the five trainable BLIP variants.
#[derive(Debug)]
pub enum BlipModel {
    /// `pretrain` (`BLIP_Pretrain`).
    Pretrain(Box<BlipPretrain>),
    /// `retrieval` (`BLIP_Retrieval`).
    Retrieval(Box<BlipRetrieval>),
    /// `captioning` (`BLIP_Decoder`).
    Captioning(Box<BlipDecoder>),
    /// `vqa` (`BLIP_VQA`).
    Vqa(Box<BlipVqa>),
    /// `nlvr2` (`BLIP_NLVR`).
    Nlvr2(Box<BlipNlvr>),
}

impl BlipModel {
    /// Builds `variant` on `device`. Captioning's `prompt_length` is measured with `tokenizer`
    /// (`len(tokenizer(prompt).input_ids) - 1`).
    pub fn build(
        variant: &str,
        cfg: &BlipConfig,
        tokenizer: &Tokenizer,
        device: Device,
    ) -> Result<Self> {
        Ok(match variant {
            "pretrain" => BlipModel::Pretrain(Box::new(BlipPretrain::new(cfg, device)?)),
            "retrieval" => BlipModel::Retrieval(Box::new(BlipRetrieval::new(cfg, device)?)),
            "captioning" => {
                let mut m = BlipDecoder::new(cfg, device)?;
                m.prompt_length = BlipDecoder::prompt_length_of(tokenizer, &cfg.prompt)?;
                BlipModel::Captioning(Box::new(m))
            }
            "vqa" => BlipModel::Vqa(Box::new(BlipVqa::new(cfg, device)?)),
            "nlvr2" => BlipModel::Nlvr2(Box::new(BlipNlvr::new(cfg, device)?)),
            other => {
                return Err(VlpError::Unsupported {
                    what: format!(
                        "training/evaluating variant `{other}` of `blip` (available: {})",
                        VARIANTS.join(", ")
                    ),
                })
            }
        })
    }

    /// The model as the registry's trait object.
    pub fn as_vlp(&self) -> &dyn VlpModel {
        match self {
            BlipModel::Pretrain(m) => m.as_ref(),
            BlipModel::Retrieval(m) => m.as_ref(),
            BlipModel::Captioning(m) => m.as_ref(),
            BlipModel::Vqa(m) => m.as_ref(),
            BlipModel::Nlvr2(m) => m.as_ref(),
        }
    }

    /// Mutable form of [`BlipModel::as_vlp`].
    pub fn as_vlp_mut(&mut self) -> &mut dyn VlpModel {
        match self {
            BlipModel::Pretrain(m) => m.as_mut(),
            BlipModel::Retrieval(m) => m.as_mut(),
            BlipModel::Captioning(m) => m.as_mut(),
            BlipModel::Vqa(m) => m.as_mut(),
            BlipModel::Nlvr2(m) => m.as_mut(),
        }
    }

    /// Dropout / drop-path on (training) or off (evaluation).
    pub fn set_train(&mut self, train: bool) {
        match self {
            BlipModel::Pretrain(m) => m.train = train,
            BlipModel::Retrieval(m) => m.heads.train = train,
            BlipModel::Captioning(m) => m.train = train,
            BlipModel::Vqa(m) => m.train = train,
            BlipModel::Nlvr2(m) => m.train = train,
        }
    }

    /// The variant's name.
    pub fn variant(&self) -> &'static str {
        match self {
            BlipModel::Pretrain(_) => "pretrain",
            BlipModel::Retrieval(_) => "retrieval",
            BlipModel::Captioning(_) => "captioning",
            BlipModel::Vqa(_) => "vqa",
            BlipModel::Nlvr2(_) => "nlvr2",
        }
    }

    /// The special tokens the model uses.
    pub fn tokens(&self) -> BlipTokens {
        match self {
            BlipModel::Pretrain(m) => m.tokens,
            BlipModel::Retrieval(m) => m.tokens,
            BlipModel::Captioning(m) => m.tokens,
            BlipModel::Vqa(m) => m.tokens,
            BlipModel::Nlvr2(m) => m.tokens,
        }
    }
}

/// Loads `path` (a file, a trainer checkpoint or a run directory) into the model after its
/// `adapt_state_dict` (the official `load_checkpoint`: `pos_embed` interpolation, keys the class
/// lacks dropped, NLVR2's cross-attention duplication, tied copies checked).
pub fn load_init(model: &mut BlipModel, path: &Path, mode: InitMode) -> Result<LoadReport> {
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

// ------------------------------------------------------------------------------------------------
// Text.

/// BLIP's text encoding, shared by the collate function and the evaluators: `[CLS] x [SEP]`
/// (`padding='longest'`, truncated to `max_len`); the model steps put `[ENC]` / `[DEC]` at
/// position 0 as the official forwards do.
#[derive(Debug, Clone)]
pub struct BlipText {
    /// The tokenizer (with `[DEC]`, `[ENC]`).
    pub tokenizer: Arc<Tokenizer>,
    /// The special tokens.
    pub tokens: BlipTokens,
    /// Truncation length (special tokens included).
    pub max_len: usize,
    /// Captioning: the prompt prepended to every training caption (`'a picture of '`).
    pub prompt: Option<String>,
}

impl BlipText {
    /// `[B, L]` ids and mask of texts (`[CLS] x [SEP]`, padded to the longest).
    pub fn encode(&self, texts: &[&str]) -> Result<(Tensor, Tensor)> {
        let b = self
            .tokenizer
            .encode_batch(texts, &EncodeOptions::longest(self.max_len))?;
        Ok((b.input_ids, b.attention_mask))
    }

    /// As [`BlipText::encode`] but padded to `max_len` (`padding='max_length'`, the retrieval
    /// evaluation's texts).
    pub fn encode_max_length(&self, texts: &[&str]) -> Result<(Tensor, Tensor)> {
        let b = self
            .tokenizer
            .encode_batch(texts, &EncodeOptions::max_length(self.max_len))?;
        Ok((b.input_ids, b.attention_mask))
    }

    /// Answers as the VQA decoder reads them: `[DEC] answer [SEP]`, padded to the longest
    /// (`tokenizer(answer, padding='longest')`, position 0 set to `[DEC]`).
    pub fn encode_answers(&self, answers: &[&str]) -> Result<(Tensor, Tensor)> {
        let t = &self.tokenizer;
        let seqs = answers
            .iter()
            .map(|a| {
                let mut ids = t.encode(a, SpecialStyle::ClsSep, Some(self.max_len))?;
                ids[0] = self.tokens.bos;
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

/// Builds a batch of any BLIP task's samples (captions get the prompt when `text.prompt` is set).
pub fn collate(text: &BlipText, samples: Vec<AnySample>) -> Result<BlipBatch> {
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
                texts.push(match &text.prompt {
                    Some(p) => format!("{p}{}", s.caption),
                    None => s.caption,
                });
                idx.push(s.image_index as i64);
            }
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let (input_ids, attention_mask) = text.encode(&refs)?;
            Ok(AlbefBatch::Pairs {
                image: stack_images(imgs)?,
                input_ids,
                attention_mask,
                idx: Tensor::from_slice(&idx),
            })
        }
        AnySample::Vqa(_) | AnySample::EasyVqa(..) => {
            let mut imgs = Vec::new();
            let mut qs = Vec::new();
            let mut answers: Vec<String> = Vec::new();
            let mut weights: Vec<f32> = Vec::new();
            let mut counts: Vec<i64> = Vec::new();
            for s in samples {
                let (image, q, ans) = match s {
                    AnySample::Vqa(s) => (s.image, s.question, s.answers),
                    AnySample::EasyVqa(s, a) => (s.image, s.question, vec![(a, 1.0)]),
                    _ => return Err(mismatch("vqa")),
                };
                imgs.push(image);
                qs.push(q);
                counts.push(ans.len() as i64);
                for (a, w) in ans {
                    answers.push(a);
                    weights.push(w);
                }
            }
            let q: Vec<&str> = qs.iter().map(String::as_str).collect();
            let (question_ids, question_mask) = text.encode(&q)?;
            let a: Vec<&str> = answers.iter().map(String::as_str).collect();
            let (answer_ids, answer_mask) = text.encode_answers(&a)?;
            Ok(AlbefBatch::Vqa {
                image: stack_images(imgs)?,
                question_ids,
                question_mask,
                answer_ids,
                answer_mask,
                counts: Tensor::from_slice(&counts),
                weights: Tensor::from_slice(&weights),
                image_index: None,
                targets: Vec::new(),
            })
        }
        AnySample::Nlvr2(_) => {
            let mut left = Vec::new();
            let mut right = Vec::new();
            let mut texts = Vec::new();
            let mut targets = Vec::new();
            for s in samples {
                let AnySample::Nlvr2(s) = s else {
                    return Err(mismatch("nlvr2"));
                };
                let [a, b] = s.images;
                left.push(a);
                right.push(b);
                texts.push(s.sentence);
                targets.push(i64::from(s.label));
            }
            left.extend(right);
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let (input_ids, attention_mask) = text.encode(&refs)?;
            Ok(AlbefBatch::Classify {
                image: stack_images(left)?,
                input_ids,
                attention_mask,
                targets: Tensor::from_slice(&targets),
                image_index: None,
            })
        }
        AnySample::Nlvr2Group(_) => Err(VlpError::Unsupported {
            what: "BLIP NLVR2 with data.sentences_per_pair (grouped samples)".into(),
        }),
        AnySample::Ve(_) | AnySample::VeGroup(_) => Err(VlpError::Unsupported {
            what: "SNLI-VE with BLIP (BLIP has no SNLI-VE head)".into(),
        }),
        AnySample::VqaGroup(_) => Err(VlpError::Unsupported {
            what: "BLIP VQA with data.questions_per_image (grouped samples)".into(),
        }),
    }
}

// ------------------------------------------------------------------------------------------------
// Data.

/// The image transform of an experiment at `size` (training augmentation or evaluation resize).
pub fn transform(exp: &ExperimentConfig, size: i64, train: bool) -> Result<ImageTransform> {
    let size = size as u32;
    ImageTransform::new(if train {
        ImageTransformConfig::train(size, exp.data.normalize)
    } else {
        ImageTransformConfig::eval(size, exp.data.normalize)
    })
}

fn prep(exp: &ExperimentConfig) -> TextPrep {
    TextPrep::Blip {
        max_words: exp.data.max_words,
    }
}

/// Whether `variant` can be trained / evaluated on `task`.
pub fn check_task(variant: &str, task: Task) -> Result<()> {
    let ok = matches!(
        (variant, task),
        (
            "pretrain" | "retrieval" | "captioning",
            Task::Pretrain | Task::Retrieval
        ) | ("vqa", Task::Vqa | Task::EasyVqa)
            | ("nlvr2", Task::Nlvr2)
    );
    if ok {
        Ok(())
    } else {
        Err(VlpError::Msg(format!(
            "model.variant `{variant}` of blip cannot be trained on data.task `{}`",
            task.name()
        )))
    }
}

/// The training set of an experiment's task (BLIP's `pre_caption` / `pre_question`).
pub fn train_dataset(exp: &ExperimentConfig, size: i64) -> Result<AnyDataset> {
    let tf = transform(exp, size, true)?;
    Ok(match exp.data.task {
        Task::Pretrain | Task::Retrieval => {
            let files = need_files(exp, "train")?;
            let entries = karpathy::read_many(&files, &read_opts(exp))?.items;
            AnyDataset::Caption(CaptionDataset::new(entries, tf, prep(exp)))
        }
        Task::Vqa => {
            let qs = read_vqa(exp, &need_files(exp, "train")?)?;
            AnyDataset::Vqa(VqaDataset::new(
                qs,
                tf,
                prep(exp),
                ScoreConvention::CountOverLen,
                None,
            ))
        }
        Task::EasyVqa => {
            let ev = easy_vqa(exp)?;
            let qs = ev.read(EasySplit::Train, exp.data.skip_bad_samples)?.items;
            let answers = Arc::new(ev.answers.answers().to_vec());
            AnyDataset::EasyVqa(EasyVqaDataset::new(qs, tf), answers)
        }
        Task::Nlvr2 if exp.data.sentences_per_pair.is_some() => {
            return Err(VlpError::Unsupported {
                what: "BLIP NLVR2 with data.sentences_per_pair (grouped samples)".into(),
            })
        }
        Task::Nlvr2 => {
            let mut ex = Vec::new();
            for f in need_files(exp, "train")? {
                ex.extend(nlvr2::read(&f, &read_opts(exp))?.items);
            }
            AnyDataset::Nlvr2(Nlvr2Dataset::new(ex, tf, prep(exp)))
        }
        Task::Ve => {
            return Err(VlpError::Unsupported {
                what: "SNLI-VE with BLIP (BLIP has no SNLI-VE head)".into(),
            })
        }
    })
}

/// The threaded loader of the training set (shuffled per epoch from `train.seed`; the last
/// incomplete batch dropped when the set holds a batch, as BLIP's queues need).
pub fn train_loader(
    exp: &ExperimentConfig,
    size: i64,
    text: BlipText,
) -> Result<DataLoader<AnyDataset, BlipBatch>> {
    let ds = train_dataset(exp, size)?;
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
    DataLoader::new(ds, move |s: Vec<AnySample>| collate(&text, s), lc)
}

/// Reads the evaluation split (`eval.split`) of the experiment's task. Captioning keeps the
/// reference captions raw (the metrics tokenise them as the COCO toolkit does).
pub fn eval_data(exp: &ExperimentConfig) -> Result<EvalData> {
    let split = exp.eval.split.as_str();
    let max = exp.eval.max_samples.unwrap_or(usize::MAX);
    Ok(match exp.data.task {
        Task::Pretrain | Task::Retrieval => {
            let files = need_files(exp, split)?;
            let mut entries = karpathy::read_many(&files, &read_opts(exp))?.items;
            entries.truncate(max);
            let p = if exp.model.variant == "captioning" {
                TextPrep::Raw
            } else {
                prep(exp)
            };
            EvalData::Retrieval {
                gallery: RetrievalGallery::from_entries(&entries, p),
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
            let mut qs = ev.read(EasySplit::Test, exp.data.skip_bad_samples)?.items;
            qs.truncate(max);
            let questions = qs
                .into_iter()
                .enumerate()
                .map(|(i, q)| VqaQuestion {
                    question_id: Some(i as u64),
                    image_id: Some(q.image_id),
                    image_rel: q.image.display().to_string(),
                    image: q.image,
                    question: prep(exp).question(&q.question),
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
            return Err(VlpError::Unsupported {
                what: "SNLI-VE with BLIP (BLIP has no SNLI-VE head)".into(),
            })
        }
    })
}

// ------------------------------------------------------------------------------------------------
// Training.

/// BLIP as a [`Trainable`]: the variant plus the distillation weight `alpha` of the config.
#[derive(Debug)]
pub struct BlipTrainable {
    /// The model.
    pub model: BlipModel,
    /// `alpha` of the config.
    pub alpha: f64,
}

fn want(ctx: &StepContext<'_>, name: &str) -> bool {
    ctx.is_active(name) && (ctx.weights.is_empty() || ctx.weights.contains_key(name))
}

/// `pretrain.py`'s distillation ramp over the first two epochs:
/// `min(1, (epoch * len + i) / (2 * len))` (1 when the epoch length is unknown).
pub fn pretrain_ramp(ctx: &StepContext<'_>) -> f64 {
    match ctx.iters_per_epoch {
        Some(n) if n > 0 => ((ctx.epoch * n + ctx.iter_in_epoch) as f64 / (2 * n) as f64).min(1.0),
        _ => 1.0,
    }
}

impl Trainable for BlipTrainable {
    type Batch = BlipBatch;

    fn var_store(&self) -> &tch::nn::VarStore {
        self.model.as_vlp().var_store()
    }

    /// Pretraining returns `itc`, `itm`, `lm` (those listed in `train.objectives`, all when it is
    /// empty), retrieval `itc`, `itm`, captioning `lm`, VQA `vqa`, NLVR2 `nlvr2`. The momentum
    /// encoders and queues of pretraining and retrieval are updated inside their forward, in the
    /// official order (momentum update first, enqueue after the ITC loss).
    fn train_step(&mut self, batch: &BlipBatch, ctx: &StepContext<'_>) -> Result<LossTerms> {
        let dev = ctx.device;
        self.model.set_train(true);
        let mut lt = LossTerms::new();
        let t = |x: &Tensor| x.to_device(dev);
        match (&mut self.model, batch) {
            (
                BlipModel::Pretrain(m),
                AlbefBatch::Pairs {
                    image,
                    input_ids,
                    attention_mask,
                    ..
                },
            ) => {
                let (image, ids, mask) = (t(image), t(input_ids), t(attention_mask));
                let out = m.forward(
                    &PretrainBatch {
                        image: &image,
                        input_ids: &ids,
                        attention_mask: &mask,
                        encoder_input_ids: None,
                        decoder_input_ids: None,
                    },
                    self.alpha * pretrain_ramp(ctx),
                    None,
                )?;
                for (name, loss) in [
                    ("itc", out.loss_ita),
                    ("itm", out.loss_itm),
                    ("lm", out.loss_lm),
                ] {
                    if want(ctx, name) {
                        lt.push(name, loss);
                    }
                }
            }
            (
                BlipModel::Retrieval(m),
                AlbefBatch::Pairs {
                    image,
                    input_ids,
                    attention_mask,
                    idx,
                },
            ) => {
                let (image, ids, mask, idx) = (t(image), t(input_ids), t(attention_mask), t(idx));
                let out = m.train_forward(
                    &RetrievalBatch {
                        image: &image,
                        input_ids: &ids,
                        attention_mask: &mask,
                        idx: &idx,
                    },
                    self.alpha * ctx.warmup_ramp(),
                    None,
                )?;
                for (name, loss) in [("itc", out.loss_ita), ("itm", out.loss_itm)] {
                    if want(ctx, name) {
                        lt.push(name, loss);
                    }
                }
            }
            (
                BlipModel::Captioning(m),
                AlbefBatch::Pairs {
                    image,
                    input_ids,
                    attention_mask,
                    ..
                },
            ) => {
                let out = m.forward(&t(image), &t(input_ids), &t(attention_mask), None)?;
                lt.push("lm", out.loss);
            }
            (
                BlipModel::Vqa(m),
                AlbefBatch::Vqa {
                    image,
                    question_ids,
                    question_mask,
                    answer_ids,
                    answer_mask,
                    counts,
                    weights,
                    ..
                },
            ) => {
                let n = Vec::<i64>::try_from(counts.to_device(Device::Cpu))?;
                let qi = with_first_token(&t(question_ids), m.tokens.enc);
                let ai = with_first_token(&t(answer_ids), m.tokens.bos);
                let loss = m.train_loss(
                    &t(image),
                    &qi,
                    &t(question_mask),
                    &ai,
                    &t(answer_mask),
                    &t(weights),
                    &n,
                )?;
                lt.push("vqa", loss);
            }
            (
                BlipModel::Nlvr2(m),
                AlbefBatch::Classify {
                    image,
                    input_ids,
                    attention_mask,
                    targets,
                    image_index: None,
                },
            ) => {
                let ids = with_first_token(&t(input_ids), m.tokens.enc);
                let out = m.forward(&t(image), &ids, &t(attention_mask))?;
                lt.push("nlvr2", BlipNlvr::loss(&out.logits, &t(targets)));
            }
            (m, _) => {
                return Err(VlpError::Msg(format!(
                    "blip {}: the batch does not belong to this variant (check data.task)",
                    m.variant()
                )))
            }
        }
        Ok(lt)
    }
}

// ------------------------------------------------------------------------------------------------
// Evaluation.

/// What the evaluators need besides the model.
#[derive(Debug, Clone)]
pub struct BlipEvalSetup {
    /// Text encoding (`max_len`: the retrieval evaluation's `max_length`, 35 officially).
    pub text: BlipText,
    /// Evaluation transform.
    pub transform: ImageTransform,
    /// `k_test` (retrieval rerank, VQA answer candidates).
    pub k_test: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Loader threads for gallery images.
    pub num_workers: usize,
}

fn load_images(tf: &ImageTransform, paths: &[&Path], dev: Device) -> Result<Tensor> {
    let mut rng = StdRng::seed_from_u64(0);
    let imgs = paths
        .iter()
        .map(|p| tf.apply_path(p, &mut rng))
        .collect::<Result<Vec<_>>>()?;
    Ok(stack_images(imgs)?.to_device(dev))
}

fn cls(x: &Tensor) -> Tensor {
    x.select(1, 0)
}

/// The unimodal encoders and ITM head of a pretraining or retrieval model for the retrieval
/// evaluator (`train_retrieval.py:evaluation`: ITC top-k, ITM rerank with `[ENC]` ids, final
/// score = ITM logit + ITC similarity).
struct BlipRetrievalView<'a> {
    model: &'a BlipModel,
    text: &'a BlipText,
    image_embeds: BTreeMap<usize, Tensor>,
    text_ids: BTreeMap<usize, (Tensor, Tensor)>,
}

impl BlipRetrievalView<'_> {
    fn device(&self) -> Device {
        self.model.as_vlp().var_store().device()
    }
}

fn not_retrieval() -> VlpError {
    VlpError::Msg("retrieval needs a blip pretrain/retrieval model".into())
}

impl RetrievalModel for BlipRetrievalView<'_> {
    fn encode_images(&mut self, ids: &[usize], pixels: &Tensor) -> Result<Tensor> {
        let px = pixels.to_device(self.device());
        let (emb, feat) = match self.model {
            BlipModel::Pretrain(m) => {
                let e = m.visual_encoder.forward_t(&px, false);
                let f = normalize(&cls(&e).apply(&m.vision_proj));
                (e, f)
            }
            BlipModel::Retrieval(m) => m.image_features(&px)?,
            _ => return Err(not_retrieval()),
        };
        for (j, &i) in ids.iter().enumerate() {
            self.image_embeds.insert(i, emb.get(j as i64));
        }
        Ok(feat)
    }

    fn encode_texts(&mut self, ids: &[usize], texts: &[String]) -> Result<Tensor> {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let (tid, tmask) = self.text.encode_max_length(&refs)?;
        let dev = self.device();
        let (tid, tmask) = (tid.to_device(dev), tmask.to_device(dev));
        let feat = match self.model {
            BlipModel::Pretrain(m) => {
                let e = m.text_encoder.text(&tid, &tmask, false);
                normalize(&cls(&e).apply(&m.text_proj))
            }
            BlipModel::Retrieval(m) => m.text_features(&tid, &tmask)?.1,
            _ => return Err(not_retrieval()),
        };
        let enc_ids = with_first_token(&tid, self.text.tokens.enc);
        for (j, &i) in ids.iter().enumerate() {
            self.text_ids
                .insert(i, (enc_ids.get(j as i64), tmask.get(j as i64)));
        }
        Ok(feat)
    }

    fn itm_scores(&mut self, image_idx: &[usize], text_idx: &[usize]) -> Result<Vec<f64>> {
        let get_i = |i: &usize| {
            self.image_embeds
                .get(i)
                .map(Tensor::shallow_clone)
                .ok_or_else(|| VlpError::Msg(format!("image {i} not encoded")))
        };
        let imgs = Tensor::stack(&image_idx.iter().map(get_i).collect::<Result<Vec<_>>>()?, 0);
        let mut ti = Vec::new();
        let mut tm = Vec::new();
        for t in text_idx {
            let (e, m) = self
                .text_ids
                .get(t)
                .ok_or_else(|| VlpError::Msg(format!("text {t} not encoded")))?;
            ti.push(e.shallow_clone());
            tm.push(m.shallow_clone());
        }
        let (ti, tm) = (Tensor::stack(&ti, 0), Tensor::stack(&tm, 0));
        let logits = match self.model {
            BlipModel::Pretrain(m) => {
                let h = m.text_encoder.multimodal(&ti, &tm, &imgs, None, false);
                cls(&h).apply(&m.itm_head)
            }
            BlipModel::Retrieval(m) => m.itm_logits(&ti, &tm, &imgs)?,
            _ => return Err(not_retrieval()),
        };
        Ok(Vec::<f64>::try_from(
            logits
                .select(1, 1)
                .to_kind(Kind::Double)
                .to_device(Device::Cpu),
        )?)
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
/// `txt_r1` … `r_mean` (ITM + ITC scores), captioning `bleu_1` … `bleu_4`, `cider` (×100, as
/// the paper reports them; beam search with the config's `num_beams`, `max_length`,
/// `min_length` from the prompt), VQA `vqa_acc` (answers ranked over the answer list; percent),
/// NLVR2 `acc` (percent).
pub fn evaluate(
    model: &mut BlipModel,
    data: &EvalData,
    setup: &BlipEvalSetup,
) -> Result<BTreeMap<String, f64>> {
    model.set_train(false);
    let out = tch::no_grad(|| evaluate_inner(&*model, data, setup));
    model.set_train(true);
    out
}

fn evaluate_inner(
    model: &BlipModel,
    data: &EvalData,
    setup: &BlipEvalSetup,
) -> Result<BTreeMap<String, f64>> {
    let dev = model.as_vlp().var_store().device();
    let bs = setup.batch_size;
    let mut m = BTreeMap::new();
    match (data, model) {
        (EvalData::Retrieval { gallery }, BlipModel::Pretrain(_) | BlipModel::Retrieval(_)) => {
            let mut view = BlipRetrievalView {
                model,
                text: &setup.text,
                image_embeds: BTreeMap::new(),
                text_ids: BTreeMap::new(),
            };
            let mut lc = LoaderConfig::new(bs);
            lc.num_workers = setup.num_workers;
            let mut rc = RetrievalEvalConfig::new(setup.k_test, Fusion::ItmPlusItc);
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
        (EvalData::Retrieval { gallery }, BlipModel::Captioning(cap)) => {
            let tok = &setup.text.tokenizer;
            let prompt = cap.prompt_ids(tok, &cap.cfg.prompt)?;
            let opts = cap.generate_options();
            let mut pairs = Vec::with_capacity(gallery.images.len());
            let order: Vec<usize> = (0..gallery.images.len()).collect();
            for chunk in order.chunks(bs) {
                let paths: Vec<&Path> =
                    chunk.iter().map(|&i| gallery.images[i].as_path()).collect();
                let img = load_images(&setup.transform, &paths, dev)?;
                let ids = cap.generate(&img, &prompt, &opts)?;
                for (&i, c) in chunk.iter().zip(cap.captions(tok, &ids)?) {
                    let refs: Vec<String> = gallery.img2txt[i]
                        .iter()
                        .map(|&t| gallery.texts[t].clone())
                        .collect();
                    pairs.push((c.trim().to_string(), refs));
                }
            }
            let c = caption_metrics(&pairs);
            for (k, v) in [
                ("bleu_1", c.bleu_1),
                ("bleu_2", c.bleu_2),
                ("bleu_3", c.bleu_3),
                ("bleu_4", c.bleu_4),
                ("cider", c.cider),
            ] {
                m.insert(k.into(), 100.0 * v);
            }
        }
        (
            EvalData::Vqa {
                questions,
                answers,
                exact,
            },
            BlipModel::Vqa(vqa),
        ) => {
            let refs: Vec<&str> = answers.iter().map(String::as_str).collect();
            let (aid, amask) = setup.text.encode_answers(&refs)?;
            let (aid, amask) = (aid.to_device(dev), amask.to_device(dev));
            let k = (setup.k_test as i64).min(answers.len() as i64);
            let mut total = 0.0;
            for chunk in questions.chunks(bs) {
                let paths: Vec<&Path> = chunk.iter().map(|q| q.image.as_path()).collect();
                let img = load_images(&setup.transform, &paths, dev)?;
                let qs: Vec<&str> = chunk.iter().map(|q| q.question.as_str()).collect();
                let (qi, qm) = setup.text.encode(&qs)?;
                let qi = with_first_token(&qi.to_device(dev), vqa.tokens.enc);
                let qm = qm.to_device(dev);
                let (_, states) = vqa.encode(&img, &qi, &qm)?;
                let ranked = vqa.rank_answer(&states, &qm, &aid, &amask, k)?;
                let best = Vec::<i64>::try_from(ranked.max_ids.to_device(Device::Cpu))?;
                for (q, b) in chunk.iter().zip(best) {
                    let pred = &answers[b as usize];
                    total += question_score(pred, &q.answers, *exact);
                }
            }
            m.insert(
                "vqa_acc".into(),
                100.0 * total / questions.len().max(1) as f64,
            );
        }
        (EvalData::Nlvr2(ex), BlipModel::Nlvr2(nl)) => {
            let mut correct = 0;
            for chunk in ex.chunks(bs) {
                let mut paths: Vec<&Path> = chunk.iter().map(|e| e.0.as_path()).collect();
                paths.extend(chunk.iter().map(|e| e.1.as_path()));
                let img = load_images(&setup.transform, &paths, dev)?;
                let texts: Vec<&str> = chunk.iter().map(|e| e.2.as_str()).collect();
                let (ti, tm) = setup.text.encode(&texts)?;
                let ti = with_first_token(&ti.to_device(dev), nl.tokens.enc);
                let out = nl.forward(&img, &ti, &tm.to_device(dev))?;
                let pred =
                    Vec::<i64>::try_from(out.logits.argmax(1, false).to_device(Device::Cpu))?;
                correct += chunk.iter().zip(pred).filter(|(e, p)| e.3 == *p).count();
            }
            m.insert("acc".into(), accuracy_pct(correct, ex.len()));
        }
        (d, model) => {
            return Err(VlpError::Msg(format!(
                "blip {}: cannot evaluate {d:?}",
                model.variant()
            )))
        }
    }
    Ok(m)
}
