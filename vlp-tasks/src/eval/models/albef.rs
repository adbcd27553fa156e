//! ALBEF (`vlp_models::albef`) behind the evaluators' traits. Text is encoded as the pipeline
//! encodes it for training ([`TextEncoder`]: ALBEF's `[CLS] x`, answers `[CLS] a [SEP]`).
//!
//! - [`AlbefRetrievalEval`]: a pretraining or retrieval model as a [`RetrievalModel`]
//!   (`Retrieval.py:evaluation`: captions padded to `max_len`, final score = ITM logit only,
//!   [`Fusion::ItmOnly`]).
//! - [`AlbefVqaEval`]: `AlbefVqa` as a ranking [`VqaModel`] (`rank_answer` over the answer list,
//!   `k_test` candidates, the best one).
//! - [`AlbefVqaClassifierEval`]: `AlbefVqaClassifier` (vlp-rs's classifier head) as a
//!   classifier [`VqaModel`] (logits over the answer vocabulary).
//! - [`AlbefNlvr2Eval`], [`AlbefVeEval`]: the NLVR2 and SNLI-VE classifiers.
use super::check_eval_mode;
use crate::eval::classify::{Nlvr2Model, VeModel};
use crate::eval::retrieval::{Fusion, RetrievalModel};
use crate::eval::vqa::{VqaModel, VqaPrediction};
use crate::pipeline::albef::TextEncoder;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};
use vlp_core::layers::bert::CrossInput;
use vlp_core::text::{EncodeOptions, Padding, SpecialStyle};
use vlp_core::{Result, VlpError};
use vlp_models::albef::{
    normalize, AlbefNlvr, AlbefPretrain, AlbefRetrieval, AlbefVe, AlbefVqa, AlbefVqaClassifier,
};
use vlp_models::VlpModel;

/// The ALBEF models with unimodal encoders and an ITM head.
#[derive(Debug, Clone, Copy)]
pub enum AlbefItmModel<'a> {
    /// `model_pretrain.py:ALBEF`.
    Pretrain(&'a AlbefPretrain),
    /// `model_retrieval.py:ALBEF`.
    Retrieval(&'a AlbefRetrieval),
}

impl<'a> From<&'a AlbefPretrain> for AlbefItmModel<'a> {
    fn from(m: &'a AlbefPretrain) -> Self {
        AlbefItmModel::Pretrain(m)
    }
}

impl<'a> From<&'a AlbefRetrieval> for AlbefItmModel<'a> {
    fn from(m: &'a AlbefRetrieval) -> Self {
        AlbefItmModel::Retrieval(m)
    }
}

/// An ALBEF pretraining or retrieval model as a [`RetrievalModel`]; keeps the ViT outputs and
/// text states of the gallery for the ITM rerank.
#[derive(Debug)]
pub struct AlbefRetrievalEval<'a> {
    model: AlbefItmModel<'a>,
    enc: TextEncoder,
    image_embeds: HashMap<usize, Tensor>,
    text_embeds: HashMap<usize, (Tensor, Tensor)>,
}

impl<'a> AlbefRetrievalEval<'a> {
    /// ALBEF's fusion rule: the ITM logit alone.
    pub const FUSION: Fusion = Fusion::ItmOnly;

    /// A view of `model` (in evaluation mode) encoding captions with `enc` (padded to
    /// `enc.max_len`, ALBEF's `max_length` 30).
    pub fn new(model: impl Into<AlbefItmModel<'a>>, enc: &TextEncoder) -> Result<Self> {
        let model = model.into();
        let train = match model {
            AlbefItmModel::Pretrain(m) => m.train,
            AlbefItmModel::Retrieval(m) => m.train,
        };
        check_eval_mode(train, "AlbefRetrievalEval")?;
        Ok(AlbefRetrievalEval {
            model,
            enc: enc.clone(),
            image_embeds: HashMap::new(),
            text_embeds: HashMap::new(),
        })
    }

    fn device(&self) -> Device {
        match self.model {
            AlbefItmModel::Pretrain(m) => m.var_store().device(),
            AlbefItmModel::Retrieval(m) => m.var_store().device(),
        }
    }
}

fn cls(x: &Tensor) -> Tensor {
    x.select(1, 0)
}

fn to_f64(t: &Tensor) -> Result<Vec<f64>> {
    Ok(Vec::<f64>::try_from(
        t.to_kind(Kind::Double).to_device(Device::Cpu).contiguous(),
    )?)
}

impl RetrievalModel for AlbefRetrievalEval<'_> {
    fn encode_images(&mut self, ids: &[usize], pixels: &Tensor) -> Result<Tensor> {
        let px = pixels.to_device(self.device());
        let (emb, feat) = tch::no_grad(|| match self.model {
            AlbefItmModel::Pretrain(m) => {
                let e = m.visual_encoder.forward_t(&px, false);
                let f = normalize(&cls(&e).apply(&m.vision_proj));
                Ok((e, f))
            }
            AlbefItmModel::Retrieval(m) => m.image_features(&px),
        })?;
        for (j, &i) in ids.iter().enumerate() {
            self.image_embeds.insert(i, emb.get(j as i64));
        }
        Ok(feat)
    }

    fn encode_texts(&mut self, ids: &[usize], texts: &[String]) -> Result<Tensor> {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let b = self.enc.tokenizer.encode_batch(
            &refs,
            &EncodeOptions {
                padding: Padding::MaxLength(self.enc.max_len),
                max_length: Some(self.enc.max_len),
                style: SpecialStyle::ClsOnly,
            },
        )?;
        let dev = self.device();
        let (tid, tmask) = (b.input_ids.to_device(dev), b.attention_mask.to_device(dev));
        let (emb, feat) = tch::no_grad(|| match self.model {
            AlbefItmModel::Pretrain(m) => {
                let e = m.text_encoder.bert.text(&tid, &tmask, false);
                let f = normalize(&cls(&e).apply(&m.text_proj));
                Ok((e, f))
            }
            AlbefItmModel::Retrieval(m) => m.text_features(&tid, &tmask),
        })?;
        for (j, &i) in ids.iter().enumerate() {
            self.text_embeds
                .insert(i, (emb.get(j as i64), tmask.get(j as i64)));
        }
        Ok(feat)
    }

    fn itm_scores(&mut self, image_idx: &[usize], text_idx: &[usize]) -> Result<Vec<f64>> {
        let imgs = image_idx
            .iter()
            .map(|i| {
                self.image_embeds
                    .get(i)
                    .map(Tensor::shallow_clone)
                    .ok_or_else(|| VlpError::input("itm_scores", format!("image {i} not encoded")))
            })
            .collect::<Result<Vec<_>>>()?;
        let (mut te, mut tm) = (Vec::new(), Vec::new());
        for t in text_idx {
            let (e, m) = self
                .text_embeds
                .get(t)
                .ok_or_else(|| VlpError::input("itm_scores", format!("text {t} not encoded")))?;
            te.push(e.shallow_clone());
            tm.push(m.shallow_clone());
        }
        let (imgs, te, tm) = (
            Tensor::stack(&imgs, 0),
            Tensor::stack(&te, 0),
            Tensor::stack(&tm, 0),
        );
        let logits = tch::no_grad(|| match self.model {
            AlbefItmModel::Pretrain(m) => {
                let cross = [CrossInput {
                    states: &imgs,
                    mask: None,
                    rows: None,
                }];
                let h = m.text_encoder.bert.fusion(&te, &tm, &cross, false);
                cls(&h).apply(&m.itm_head)
            }
            AlbefItmModel::Retrieval(m) => m.itm_logits(&te, &tm, &imgs),
        });
        to_f64(&logits.select(1, 1))
    }
}

/// `AlbefVqa` as a ranking [`VqaModel`]: `rank_answer` over the answer list with `k` candidates
/// re-scored (`k_test`, 128 in ALBEF's VQA config), the best one chosen.
#[derive(Debug)]
pub struct AlbefVqaEval<'a> {
    model: &'a AlbefVqa,
    enc: TextEncoder,
    k: usize,
    answers: Option<(Tensor, Tensor)>,
}

impl<'a> AlbefVqaEval<'a> {
    /// A view of `model` (in evaluation mode) ranking `k` candidates per question.
    pub fn new(model: &'a AlbefVqa, enc: &TextEncoder, k: usize) -> Result<Self> {
        check_eval_mode(model.train, "AlbefVqaEval")?;
        if k == 0 {
            return Err(VlpError::input("k_test", "must be >= 1"));
        }
        Ok(AlbefVqaEval {
            model,
            enc: enc.clone(),
            k,
            answers: None,
        })
    }
}

impl VqaModel for AlbefVqaEval<'_> {
    fn prepare(&mut self, answers: &[String]) -> Result<()> {
        let refs: Vec<&str> = answers.iter().map(String::as_str).collect();
        let (ids, mask) = self.enc.encode_answers(&refs)?;
        let dev = self.model.var_store().device();
        self.answers = Some((ids.to_device(dev), mask.to_device(dev)));
        Ok(())
    }

    fn predict(&mut self, images: &Tensor, questions: &[String]) -> Result<VqaPrediction> {
        let (aid, amask) = self
            .answers
            .as_ref()
            .ok_or_else(|| VlpError::Msg("AlbefVqaEval: prepare() was not called".into()))?;
        let dev = self.model.var_store().device();
        let refs: Vec<&str> = questions.iter().map(String::as_str).collect();
        let (qi, qm) = self.enc.encode(&refs)?;
        let (qi, qm) = (qi.to_device(dev), qm.to_device(dev));
        let k = (self.k as i64).min(aid.size()[0]);
        let ids = tch::no_grad(|| -> Result<Tensor> {
            let (_, states) = self
                .model
                .encode_question(&images.to_device(dev), &qi, &qm)?;
            let (ids, _) = self.model.rank_answer(&states, &qm, aid, amask, k)?;
            Ok(ids)
        })?;
        let best = Vec::<i64>::try_from(ids.select(1, 0).to_device(Device::Cpu).contiguous())?;
        Ok(VqaPrediction::Choices(
            best.into_iter().map(|b| b as usize).collect(),
        ))
    }
}

/// `AlbefVqaClassifier` as a classifier [`VqaModel`]: logits `[B, n_answers]` over the answer
/// vocabulary the head was trained on (the candidates must be that vocabulary, in label order).
#[derive(Debug)]
pub struct AlbefVqaClassifierEval<'a> {
    model: &'a AlbefVqaClassifier,
    enc: TextEncoder,
}

impl<'a> AlbefVqaClassifierEval<'a> {
    /// A view of `model` (in evaluation mode) encoding questions with `enc`.
    pub fn new(model: &'a AlbefVqaClassifier, enc: &TextEncoder) -> Result<Self> {
        check_eval_mode(model.train, "AlbefVqaClassifierEval")?;
        Ok(AlbefVqaClassifierEval {
            model,
            enc: enc.clone(),
        })
    }
}

impl VqaModel for AlbefVqaClassifierEval<'_> {
    /// Checks that the candidates are as many as the head's answers.
    fn prepare(&mut self, answers: &[String]) -> Result<()> {
        if answers.len() as i64 != self.model.num_answers {
            return Err(VlpError::input(
                "answers",
                format!(
                    "{} candidate answers for a head over {} answers (pass its vocabulary)",
                    answers.len(),
                    self.model.num_answers
                ),
            ));
        }
        Ok(())
    }

    fn predict(&mut self, images: &Tensor, questions: &[String]) -> Result<VqaPrediction> {
        let dev = self.model.var_store().device();
        let refs: Vec<&str> = questions.iter().map(String::as_str).collect();
        let (qi, qm) = self.enc.encode(&refs)?;
        let logits = tch::no_grad(|| {
            self.model.forward(
                &images.to_device(dev),
                &qi.to_device(dev),
                &qm.to_device(dev),
            )
        })?;
        Ok(VqaPrediction::Logits(logits))
    }
}

/// `AlbefNlvr` as an [`Nlvr2Model`] (`model(image0, image1, text)`, `[B, 2]` logits).
#[derive(Debug)]
pub struct AlbefNlvr2Eval<'a> {
    model: &'a AlbefNlvr,
    enc: TextEncoder,
}

impl<'a> AlbefNlvr2Eval<'a> {
    /// A view of `model` (in evaluation mode) encoding sentences with `enc`.
    pub fn new(model: &'a AlbefNlvr, enc: &TextEncoder) -> Result<Self> {
        check_eval_mode(model.train, "AlbefNlvr2Eval")?;
        Ok(AlbefNlvr2Eval {
            model,
            enc: enc.clone(),
        })
    }
}

impl Nlvr2Model for AlbefNlvr2Eval<'_> {
    fn logits(&mut self, images: &Tensor, sentences: &[String]) -> Result<Tensor> {
        let dev = self.model.var_store().device();
        let refs: Vec<&str> = sentences.iter().map(String::as_str).collect();
        let (ti, tm) = self.enc.encode(&refs)?;
        let out = tch::no_grad(|| {
            self.model.forward(
                &images.to_device(dev),
                &ti.to_device(dev),
                &tm.to_device(dev),
            )
        })?;
        Ok(out.logits)
    }
}

/// `AlbefVe` as a [`VeModel`] (`[B, 3]` logits in ALBEF's label order).
#[derive(Debug)]
pub struct AlbefVeEval<'a> {
    model: &'a AlbefVe,
    enc: TextEncoder,
}

impl<'a> AlbefVeEval<'a> {
    /// A view of `model` (in evaluation mode) encoding hypotheses with `enc`.
    pub fn new(model: &'a AlbefVe, enc: &TextEncoder) -> Result<Self> {
        check_eval_mode(model.train, "AlbefVeEval")?;
        Ok(AlbefVeEval {
            model,
            enc: enc.clone(),
        })
    }
}

impl VeModel for AlbefVeEval<'_> {
    fn logits(&mut self, images: &Tensor, sentences: &[String]) -> Result<Tensor> {
        let dev = self.model.var_store().device();
        let refs: Vec<&str> = sentences.iter().map(String::as_str).collect();
        let (ti, tm) = self.enc.encode(&refs)?;
        let out = tch::no_grad(|| {
            self.model.forward(
                &images.to_device(dev),
                &ti.to_device(dev),
                &tm.to_device(dev),
            )
        })?;
        Ok(out.logits)
    }
}
