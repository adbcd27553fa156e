//! BLIP (`vlp_models::blip`) behind the evaluators' traits. Text is encoded as BLIP's
//! `init_tokenizer()` does ([`BlipText`]: BERT WordPiece `[CLS] x [SEP]` with `[DEC]` and `[ENC]`
//! appended to the vocabulary); position 0 is swapped for `[ENC]` / `[DEC]` where the official
//! code swaps it.
//!
//! - [`BlipRetrievalEval`]: a pretraining, retrieval or ITM model as a [`RetrievalModel`]
//!   (`train_retrieval.py:evaluation`: captions padded to 35 tokens, ITC on `[CLS]`, ITM over
//!   `[ENC]` ids, final score = ITM logit + ITC sim, [`Fusion::ItmPlusItc`]).
//! - [`BlipVqaEval`]: `BlipVqa` as a ranking [`VqaModel`] (`inference='rank'`: questions with
//!   `[ENC]`, answers `[DEC] a [SEP]`, `k_test` candidates, smallest loss wins).
//! - [`BlipCaptionEval`]: `BlipDecoder` as a [`CaptionModel`] (beam search from the config's
//!   prompt, prompt stripped).
//! - [`BlipNlvr2Eval`]: `BlipNlvr` as an [`Nlvr2Model`] (sentence with `[ENC]`).
use super::check_eval_mode;
use crate::eval::caption::CaptionModel;
use crate::eval::classify::Nlvr2Model;
use crate::eval::retrieval::{Fusion, RetrievalModel};
use crate::eval::vqa::{VqaModel, VqaPrediction};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};
use vlp_core::text::{EncodeOptions, Padding, SpecialStyle, Tokenizer};
use vlp_core::{Result, VlpError};
use vlp_models::albef::normalize;
use vlp_models::blip::caption::GenerateOptions;
use vlp_models::blip::retrieval::ItmHeads;
use vlp_models::blip::{
    with_first_token, BlipDecoder, BlipItm, BlipNlvr, BlipPretrain, BlipRetrieval, BlipTokens,
    BlipVqa,
};
use vlp_models::VlpModel;

/// BLIP's text encoding: the tokenizer with `[DEC]`, `[ENC]` added, and the truncation length.
#[derive(Debug, Clone)]
pub struct BlipText {
    /// The tokenizer (`[DEC]`, `[ENC]` among its special tokens).
    pub tokenizer: Arc<Tokenizer>,
    /// Truncation length in tokens, special tokens included (BLIP: 35 for captions and
    /// questions).
    pub max_len: usize,
}

impl BlipText {
    /// BLIP's tokenizer from a WordPiece vocabulary (`vocab.txt` or a tokenizer directory) with
    /// `[DEC]` and `[ENC]` appended, truncating at `max_len` tokens.
    pub fn from_vocab(path: &Path, max_len: usize) -> Result<Self> {
        let mut tokenizer = Tokenizer::from_file(path)?;
        tokenizer.add_special_tokens(&["[DEC]", "[ENC]"]);
        Ok(BlipText {
            tokenizer: Arc::new(tokenizer),
            max_len,
        })
    }

    /// `[B, L]` ids and mask of `[CLS] x [SEP]`, padded as `padding` says.
    pub fn encode(&self, texts: &[String], padding: Padding) -> Result<(Tensor, Tensor)> {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let b = self.tokenizer.encode_batch(
            &refs,
            &EncodeOptions {
                padding,
                max_length: Some(self.max_len),
                style: SpecialStyle::ClsSep,
            },
        )?;
        Ok((b.input_ids, b.attention_mask))
    }
}

/// The BLIP models with unimodal encoders and an ITM head.
#[derive(Debug, Clone, Copy)]
pub enum BlipItmModel<'a> {
    /// `blip_pretrain.py:BLIP_Pretrain`.
    Pretrain(&'a BlipPretrain),
    /// The inference modules of `BLIP_Retrieval` / `BLIP_ITM`.
    Heads(&'a ItmHeads),
}

impl<'a> From<&'a BlipPretrain> for BlipItmModel<'a> {
    fn from(m: &'a BlipPretrain) -> Self {
        BlipItmModel::Pretrain(m)
    }
}

impl<'a> From<&'a BlipRetrieval> for BlipItmModel<'a> {
    fn from(m: &'a BlipRetrieval) -> Self {
        BlipItmModel::Heads(&m.heads)
    }
}

impl<'a> From<&'a BlipItm> for BlipItmModel<'a> {
    fn from(m: &'a BlipItm) -> Self {
        BlipItmModel::Heads(&m.heads)
    }
}

impl<'a> From<&'a ItmHeads> for BlipItmModel<'a> {
    fn from(m: &'a ItmHeads) -> Self {
        BlipItmModel::Heads(m)
    }
}

impl BlipItmModel<'_> {
    fn train(&self) -> bool {
        match self {
            BlipItmModel::Pretrain(m) => m.train,
            BlipItmModel::Heads(h) => h.train,
        }
    }
    fn tokens(&self) -> BlipTokens {
        match self {
            BlipItmModel::Pretrain(m) => m.tokens,
            BlipItmModel::Heads(h) => h.tokens,
        }
    }
    fn device(&self) -> Device {
        match self {
            BlipItmModel::Pretrain(m) => m.itm_head.ws.device(),
            BlipItmModel::Heads(h) => h.itm_head.ws.device(),
        }
    }
}

/// A BLIP pretraining, retrieval or ITM model as a [`RetrievalModel`]; keeps the ViT outputs and
/// caption ids of the gallery for the ITM rerank.
#[derive(Debug)]
pub struct BlipRetrievalEval<'a> {
    model: BlipItmModel<'a>,
    text: BlipText,
    image_embeds: HashMap<usize, Tensor>,
    text_ids: HashMap<usize, (Tensor, Tensor)>,
}

impl<'a> BlipRetrievalEval<'a> {
    /// BLIP's fusion rule: ITM logit + ITC similarity.
    pub const FUSION: Fusion = Fusion::ItmPlusItc;

    /// A view of `model` (in evaluation mode) encoding captions with `text` (padded to
    /// `text.max_len`, BLIP's `max_length` 35).
    pub fn new(model: impl Into<BlipItmModel<'a>>, text: &BlipText) -> Result<Self> {
        let model = model.into();
        check_eval_mode(model.train(), "BlipRetrievalEval")?;
        Ok(BlipRetrievalEval {
            model,
            text: text.clone(),
            image_embeds: HashMap::new(),
            text_ids: HashMap::new(),
        })
    }
}

fn to_f64(t: &Tensor) -> Result<Vec<f64>> {
    Ok(Vec::<f64>::try_from(
        t.to_kind(Kind::Double).to_device(Device::Cpu).contiguous(),
    )?)
}

impl RetrievalModel for BlipRetrievalEval<'_> {
    fn encode_images(&mut self, ids: &[usize], pixels: &Tensor) -> Result<Tensor> {
        let px = pixels.to_device(self.model.device());
        let (emb, feat) = tch::no_grad(|| match self.model {
            BlipItmModel::Pretrain(m) => {
                let e = m.visual_encoder.forward_t(&px, false);
                let f = normalize(&e.select(1, 0).apply(&m.vision_proj));
                Ok((e, f))
            }
            BlipItmModel::Heads(h) => h.image_features(&px),
        })?;
        for (j, &i) in ids.iter().enumerate() {
            self.image_embeds.insert(i, emb.get(j as i64));
        }
        Ok(feat)
    }

    fn encode_texts(&mut self, ids: &[usize], texts: &[String]) -> Result<Tensor> {
        let dev = self.model.device();
        let (tid, tmask) = self
            .text
            .encode(texts, Padding::MaxLength(self.text.max_len))?;
        let (tid, tmask) = (tid.to_device(dev), tmask.to_device(dev));
        let feat = tch::no_grad(|| match self.model {
            BlipItmModel::Pretrain(m) => {
                let e = m.text_encoder.text(&tid, &tmask, false);
                Ok(normalize(&e.select(1, 0).apply(&m.text_proj)))
            }
            BlipItmModel::Heads(h) => h.text_features(&tid, &tmask).map(|(_, f)| f),
        })?;
        for (j, &i) in ids.iter().enumerate() {
            self.text_ids
                .insert(i, (tid.get(j as i64), tmask.get(j as i64)));
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
        let (mut ti, mut tm) = (Vec::new(), Vec::new());
        for t in text_idx {
            let (i, m) = self
                .text_ids
                .get(t)
                .ok_or_else(|| VlpError::input("itm_scores", format!("text {t} not encoded")))?;
            ti.push(i.shallow_clone());
            tm.push(m.shallow_clone());
        }
        let imgs = Tensor::stack(&imgs, 0);
        let enc_ids = with_first_token(&Tensor::stack(&ti, 0), self.model.tokens().enc);
        let tm = Tensor::stack(&tm, 0);
        let logits = tch::no_grad(|| match self.model {
            BlipItmModel::Pretrain(m) => {
                let h = m.text_encoder.multimodal(&enc_ids, &tm, &imgs, None, false);
                Ok(h.select(1, 0).apply(&m.itm_head))
            }
            BlipItmModel::Heads(h) => h.itm_logits(&enc_ids, &tm, &imgs),
        })?;
        to_f64(&logits.select(1, 1))
    }
}

/// `BlipVqa` as a ranking [`VqaModel`] (`rank_answer` with `k` candidates, `k_test` 128 in BLIP's
/// VQA config).
#[derive(Debug)]
pub struct BlipVqaEval<'a> {
    model: &'a BlipVqa,
    text: BlipText,
    k: usize,
    answers: Option<(Tensor, Tensor)>,
}

impl<'a> BlipVqaEval<'a> {
    /// A view of `model` (in evaluation mode) ranking `k` candidates per question.
    pub fn new(model: &'a BlipVqa, text: &BlipText, k: usize) -> Result<Self> {
        check_eval_mode(model.train, "BlipVqaEval")?;
        if k == 0 {
            return Err(VlpError::input("k_test", "must be >= 1"));
        }
        Ok(BlipVqaEval {
            model,
            text: text.clone(),
            k,
            answers: None,
        })
    }

    fn device(&self) -> Device {
        self.model.var_store().device()
    }
}

impl VqaModel for BlipVqaEval<'_> {
    /// `tokenizer(answer_list, padding='longest')` with `[DEC]` at position 0.
    fn prepare(&mut self, answers: &[String]) -> Result<()> {
        let (ids, mask) = self.text.encode(answers, Padding::Longest)?;
        let ids = with_first_token(&ids, self.model.tokens.bos);
        let dev = self.device();
        self.answers = Some((ids.to_device(dev), mask.to_device(dev)));
        Ok(())
    }

    fn predict(&mut self, images: &Tensor, questions: &[String]) -> Result<VqaPrediction> {
        let (aid, amask) = self
            .answers
            .as_ref()
            .ok_or_else(|| VlpError::Msg("BlipVqaEval: prepare() was not called".into()))?;
        let dev = self.device();
        let (qi, qm) = self.text.encode(questions, Padding::Longest)?;
        let qi = with_first_token(&qi, self.model.tokens.enc).to_device(dev);
        let qm = qm.to_device(dev);
        let k = (self.k as i64).min(aid.size()[0]);
        let best = tch::no_grad(|| -> Result<Tensor> {
            let (_, states) = self.model.encode(&images.to_device(dev), &qi, &qm)?;
            Ok(self.model.rank_answer(&states, &qm, aid, amask, k)?.max_ids)
        })?;
        let best = Vec::<i64>::try_from(best.to_device(Device::Cpu).contiguous())?;
        Ok(VqaPrediction::Choices(
            best.into_iter().map(|b| b as usize).collect(),
        ))
    }
}

/// `BlipDecoder` as a [`CaptionModel`]: beam search (the config's `num_beams`, `max_length`,
/// `min_length`, `repetition_penalty` unless [`BlipCaptionEval::with_options`]) from the config's
/// prompt (`a picture of `), captions decoded with the prompt stripped.
#[derive(Debug)]
pub struct BlipCaptionEval<'a> {
    model: &'a BlipDecoder,
    tokenizer: Arc<Tokenizer>,
    prompt: Tensor,
    opts: GenerateOptions,
}

impl<'a> BlipCaptionEval<'a> {
    /// A view of `model` (in evaluation mode) decoding with `text`'s tokenizer.
    pub fn new(model: &'a BlipDecoder, text: &BlipText) -> Result<Self> {
        check_eval_mode(model.train, "BlipCaptionEval")?;
        let prompt = model.prompt_ids(&text.tokenizer, &model.cfg.prompt)?;
        Ok(BlipCaptionEval {
            model,
            tokenizer: text.tokenizer.clone(),
            prompt,
            opts: model.generate_options(),
        })
    }

    /// The same view with other generation options.
    pub fn with_options(mut self, opts: GenerateOptions) -> Self {
        self.opts = opts;
        self
    }
}

impl CaptionModel for BlipCaptionEval<'_> {
    fn generate(&mut self, images: &Tensor) -> Result<Vec<String>> {
        let dev = self.prompt.device();
        let ids = tch::no_grad(|| {
            self.model
                .generate(&images.to_device(dev), &self.prompt, &self.opts)
        })?;
        self.model.captions(&self.tokenizer, &ids)
    }
}

/// `BlipNlvr` as an [`Nlvr2Model`] (sentence `[ENC] x [SEP]`, padded to the longest).
#[derive(Debug)]
pub struct BlipNlvr2Eval<'a> {
    model: &'a BlipNlvr,
    text: BlipText,
}

impl<'a> BlipNlvr2Eval<'a> {
    /// A view of `model` (in evaluation mode) encoding sentences with `text`.
    pub fn new(model: &'a BlipNlvr, text: &BlipText) -> Result<Self> {
        check_eval_mode(model.train, "BlipNlvr2Eval")?;
        Ok(BlipNlvr2Eval {
            model,
            text: text.clone(),
        })
    }
}

impl Nlvr2Model for BlipNlvr2Eval<'_> {
    fn logits(&mut self, images: &Tensor, sentences: &[String]) -> Result<Tensor> {
        let dev = self.model.var_store().device();
        let (ti, tm) = self.text.encode(sentences, Padding::Longest)?;
        let ti = with_first_token(&ti, self.model.tokens.enc);
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
