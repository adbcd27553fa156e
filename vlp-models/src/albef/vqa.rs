//! ALBEF for VQA, `models/model_vqa.py:ALBEF`: a question encoder and a generative answer
//! decoder.
//!
//! - `text_encoder` (`BertModel`, `bert` config as is) encodes the question and cross-attends to
//!   the image from `fusion_layer` on.
//! - `text_decoder` (`BertLMHeadModel`: `bert.*` + `cls.predictions.*`, decoder tied to its word
//!   embeddings) has **6 layers with `fusion_layer = 0`** (hard-coded), i.e. causal
//!   self-attention plus cross-attention in every layer — to the **question states**, not the
//!   image.
//! - Answers are tokenised as `[CLS] answer [SEP]` (the dataset appends the string `[SEP]`; ALBEF's
//!   tokenizer adds no `[SEP]` itself); `[CLS]` is the BOS, pads become -100 targets.
//! - Training ([`AlbefVqa::train_forward`]): each question's states are repeated for its `k`
//!   answers; the per-answer loss is the summed shifted NLL, distilled with `distill` from the
//!   momentum decoder (`(1 - α)·NLL + α·Σ_t soft-CE` over the non-pad targets), times the answer
//!   weight, summed and divided by the batch size.
//! - Inference ([`AlbefVqa::rank_answer`]): the first-token distribution from a BOS-only decoder
//!   step picks the top-k candidates of an answer list; each is scored by
//!   `log p(first token) + (-summed NLL of the whole answer)` — the official code **counts the
//!   first token's log-probability twice** (the NLL includes it again); this port keeps that —
//!   and the result is a softmax over the k, sorted.
//!
//! Keys: `visual_encoder.*`, `text_encoder.*`, `text_decoder.bert.*`, `text_decoder.cls.*`, and
//! with `distill` the `*_m` copies (momentum 0.995, hard-coded).
use super::{
    check_image, check_text, complete_tied, drop_prefixes, has_pretrain_layout, init_momentum,
    input_on, interpolate_pos_embeds, mlm_tied_pairs, momentum_update, resize_patch_embeds,
    scalar_input, AlbefBert, AlbefConfig, AlbefMaskedLm, MomentumPairs, SpecialTokens,
    FINETUNE_MOMENTUM, PRETRAIN_ONLY_PREFIXES,
};
use crate::common::{var_store_accessors, POS_EMBED_KEYS};
use crate::{Tensors, VlpModel};
use tch::{nn::VarStore, Device, Kind, Tensor};
use vlp_core::checkpoint::StateDict;
use vlp_core::layers::bert::{BertConfig, CrossInput};
use vlp_core::layers::vit::VisionTransformer;
use vlp_core::{Result, VlpError};
use vlp_objectives::lm::try_lm_loss;

/// The online/momentum module pairs of `model_vqa.py`.
pub const VQA_PAIRS: MomentumPairs = &[
    ("visual_encoder.", "visual_encoder_m."),
    ("text_encoder.", "text_encoder_m."),
    ("text_decoder.", "text_decoder_m."),
];

/// Layers of the answer decoder (hard-coded by the official class).
pub const DECODER_LAYERS: i64 = 6;

/// The answer decoder's BERT config: `cfg` with `fusion_layer = 0` and 6 layers.
pub fn decoder_config(cfg: &BertConfig) -> BertConfig {
    BertConfig {
        fusion_layer: Some(0),
        num_hidden_layers: DECODER_LAYERS,
        ..cfg.clone()
    }
}

/// The momentum copies of the VQA model (`distill=True`).
#[derive(Debug)]
pub struct VqaMomentum {
    /// `visual_encoder_m.*`.
    pub visual_encoder_m: VisionTransformer,
    /// `text_encoder_m.*`.
    pub text_encoder_m: AlbefBert,
    /// `text_decoder_m.*`.
    pub text_decoder_m: AlbefMaskedLm,
}

/// `models/model_vqa.py:ALBEF`.
#[derive(Debug)]
pub struct AlbefVqa {
    vs: VarStore,
    /// The configuration.
    pub cfg: AlbefConfig,
    /// `visual_encoder.*`.
    pub visual_encoder: VisionTransformer,
    /// `text_encoder.*` (question encoder).
    pub text_encoder: AlbefBert,
    /// `text_decoder.*` (answer decoder).
    pub text_decoder: AlbefMaskedLm,
    /// Momentum copies (with `distill`).
    pub momentum: Option<VqaMomentum>,
    /// Special tokens (`[PAD]` becomes the -100 target; `pad` defaults to `bert.pad_token_id`).
    pub tokens: SpecialTokens,
    /// Dropout on (off by default).
    pub train: bool,
}

/// One VQA training batch: `B` images and questions, `N` answers.
#[derive(Debug, Clone, Copy)]
pub struct VqaTrainBatch<'a> {
    /// `[B, 3, H, W]` normalised images.
    pub image: &'a Tensor,
    /// `[B, Lq]` question ids.
    pub question_ids: &'a Tensor,
    /// `[B, Lq]` question mask.
    pub question_mask: &'a Tensor,
    /// `[N, La]` answer ids (`[CLS] answer [SEP]`, padded).
    pub answer_ids: &'a Tensor,
    /// `[N, La]` answer mask.
    pub answer_mask: &'a Tensor,
    /// `[B]` int64: how many of the `N` answers belong to each question (the official `k`).
    pub answers_per_question: &'a Tensor,
    /// `[N]` answer weights.
    pub weights: &'a Tensor,
}

/// Outputs of the VQA training forward.
#[derive(Debug)]
pub struct VqaTrainOutput {
    /// `sum(weights * answer_loss) / B`.
    pub loss: Tensor,
    /// `[N]` per-answer loss before weighting (distilled when `distill`).
    pub answer_loss: Tensor,
    /// `[B, 1+P, D]` ViT output.
    pub image_embeds: Tensor,
    /// `[B, Lq, D]` question encoder output.
    pub question_states: Tensor,
}

/// Decoder logits `[N, L, V]` of answers `[N, L]` cross-attending to `states` `[N, Lq, D]`.
fn decoder_logits(
    dec: &AlbefMaskedLm,
    ids: &Tensor,
    mask: &Tensor,
    states: &Tensor,
    states_mask: &Tensor,
    train: bool,
) -> Tensor {
    let cm = super::text_mask(states_mask, states.kind());
    let cross = [CrossInput {
        states,
        mask: Some(&cm),
        rows: None,
    }];
    let h = dec.bert.decode(ids, mask, &cross, train);
    dec.cls.forward(&h)
}

impl AlbefVqa {
    /// Builds the model on `device` (momentum copies = online weights when `distill`).
    pub fn new(cfg: &AlbefConfig, device: Device) -> Result<Self> {
        cfg.validate()?;
        let vs = VarStore::new(device);
        let r = vs.root();
        let vit = cfg.vit();
        let dec_cfg = decoder_config(&cfg.bert);
        let visual_encoder = VisionTransformer::new(&(&r / "visual_encoder"), &vit);
        let text_encoder = AlbefBert::new(&(&r / "text_encoder"), &cfg.bert)?;
        let text_decoder = AlbefMaskedLm::new(&(&r / "text_decoder"), &dec_cfg)?;
        let momentum = if cfg.distill {
            Some(VqaMomentum {
                visual_encoder_m: VisionTransformer::new(&(&r / "visual_encoder_m"), &vit),
                text_encoder_m: AlbefBert::new(&(&r / "text_encoder_m"), &cfg.bert)?,
                text_decoder_m: AlbefMaskedLm::new(&(&r / "text_decoder_m"), &dec_cfg)?,
            })
        } else {
            None
        };
        if momentum.is_some() {
            init_momentum(&vs, VQA_PAIRS)?;
        }
        Ok(AlbefVqa {
            vs,
            cfg: cfg.clone(),
            visual_encoder,
            text_encoder,
            text_decoder,
            momentum,
            tokens: SpecialTokens {
                pad: cfg.bert.pad_token_id,
                ..SpecialTokens::default()
            },
            train: false,
        })
    }

    /// `(image_embeds, question_states)`: the question encoder (`mode='multi_modal'`) over the
    /// image.
    pub fn encode_question(
        &self,
        image: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        check_image(image, "image")?;
        check_text(input_ids, attention_mask, "question_input_ids")?;
        if image.size()[0] != input_ids.size()[0] {
            return Err(VlpError::input(
                "question_input_ids",
                "one question per image expected",
            ));
        }
        let image_embeds = self.visual_encoder.forward_t(image, self.train);
        let cross = [CrossInput {
            states: &image_embeds,
            mask: None,
            rows: None,
        }];
        let q = self
            .text_encoder
            .multimodal(input_ids, attention_mask, &cross, self.train);
        Ok((image_embeds, q))
    }

    fn targets(&self, answer_ids: &Tensor) -> Tensor {
        answer_ids.masked_fill(&answer_ids.eq(self.tokens.pad), -100)
    }

    /// The training forward `model(image, question, answer, train=True, alpha, k, weights)`
    /// (see [`VqaTrainBatch`]). With `distill`, the momentum update comes first.
    pub fn train_forward(&self, batch: &VqaTrainBatch, alpha: f64) -> Result<VqaTrainOutput> {
        let VqaTrainBatch {
            image,
            question_ids,
            question_mask,
            answer_ids,
            answer_mask,
            answers_per_question,
            weights,
        } = *batch;
        check_text(answer_ids, answer_mask, "answer_input_ids")?;
        let (image_embeds, question_states) =
            self.encode_question(image, question_ids, question_mask)?;
        let b = image.size()[0];
        let n = answer_ids.size()[0];
        let k = answers_per_question
            .to_device(image.device())
            .to_kind(Kind::Int64);
        if k.size() != [b] || k.sum(Kind::Int64).int64_value(&[]) != n || weights.size() != [n] {
            return Err(VlpError::input(
                "answers_per_question",
                format!(
                    "expected [{b}] counts summing to the {n} answers and [{n}] weights, got {:?} and {:?}",
                    k.size(),
                    weights.size()
                ),
            ));
        }
        let rep = Tensor::arange(b, (Kind::Int64, image.device())).repeat_interleave_self_tensor(
            &k,
            0,
            Some(n),
        );
        let states = question_states.index_select(0, &rep);
        let atts = question_mask.index_select(0, &rep);
        let targets = self.targets(answer_ids);
        let logits_m = match &self.momentum {
            None => None,
            Some(m) => Some(tch::no_grad(|| -> Result<Tensor> {
                momentum_update(&self.vs, VQA_PAIRS, FINETUNE_MOMENTUM)?;
                let image_embeds_m = m.visual_encoder_m.forward_t(image, self.train);
                let cross = [CrossInput {
                    states: &image_embeds_m,
                    mask: None,
                    rows: None,
                }];
                let q_m =
                    m.text_encoder_m
                        .multimodal(question_ids, question_mask, &cross, self.train);
                let states_m = q_m.index_select(0, &rep);
                Ok(decoder_logits(
                    &m.text_decoder_m,
                    answer_ids,
                    answer_mask,
                    &states_m,
                    &atts,
                    self.train,
                ))
            })?),
        };
        let logits = decoder_logits(
            &self.text_decoder,
            answer_ids,
            answer_mask,
            &states,
            &atts,
            self.train,
        );
        let nll = try_lm_loss(&logits, &targets, 0.0, true)?;
        let answer_loss = match logits_m {
            None => nll,
            Some(lm) => {
                let l = logits.size()[1];
                let shifted = logits.narrow(1, 0, l - 1);
                let soft = lm.narrow(1, 0, l - 1).softmax(-1, Kind::Float);
                let per = -(shifted.log_softmax(-1, Kind::Float) * soft).sum_dim_intlist(
                    -1,
                    false,
                    Kind::Float,
                );
                let keep = targets.narrow(1, 1, l - 1).ne(-100).to_kind(Kind::Float);
                let distill = (per * keep).sum_dim_intlist(1, false, Kind::Float);
                nll * (1.0 - alpha) + distill * alpha
            }
        };
        let loss = (weights.to_device(image.device()) * &answer_loss).sum(Kind::Float) / b as f64;
        Ok(VqaTrainOutput {
            loss,
            answer_loss,
            image_embeds,
            question_states,
        })
    }

    /// `rank_answer`: ranks the answer list (`[A, La]` ids, `[CLS]` first) for each question
    /// (`question_states` `[B, Lq, D]`, mask `[B, Lq]`) and returns `(topk_ids [B, k] indices into
    /// the list, topk_probs [B, k])`, best first. The score keeps the official double-counted
    /// first-token log-probability. `k` is capped at `A` (the official `topk` would fail).
    pub fn rank_answer(
        &self,
        question_states: &Tensor,
        question_mask: &Tensor,
        answer_ids: &Tensor,
        answer_mask: &Tensor,
        k: i64,
    ) -> Result<(Tensor, Tensor)> {
        check_text(answer_ids, answer_mask, "answer_list_input_ids")?;
        let (nq, na, la) = (
            question_states.size()[0],
            answer_ids.size()[0],
            answer_ids.size()[1],
        );
        if k < 1 || la < 2 {
            return Err(VlpError::input(
                "k_test",
                format!("need k >= 1 and answers of >= 2 tokens, got k {k}, {la} tokens"),
            ));
        }
        let k = k.min(na);
        let dev = question_states.device();
        let start = answer_ids.get(0).get(0).repeat([nq, 1]);
        let start_mask = Tensor::ones([nq, 1], (Kind::Int64, dev));
        let first = decoder_logits(
            &self.text_decoder,
            &start,
            &start_mask,
            question_states,
            question_mask,
            self.train,
        )
        .select(1, 0);
        let prob_first = first
            .softmax(1, Kind::Float)
            .index_select(1, &answer_ids.select(1, 1));
        let (topk_probs, topk_ids) = prob_first.topk(k, 1, true, true);
        let flat = topk_ids.reshape([-1]);
        let input_ids = answer_ids.index_select(0, &flat);
        let input_atts = answer_mask.index_select(0, &flat);
        let targets = self.targets(&input_ids);
        let states = question_states.repeat_interleave_self_int(k, Some(0), None);
        let atts = question_mask.repeat_interleave_self_int(k, Some(0), None);
        let logits = decoder_logits(
            &self.text_decoder,
            &input_ids,
            &input_atts,
            &states,
            &atts,
            self.train,
        );
        let answer_loss = try_lm_loss(&logits, &targets, 0.0, true)?;
        let log_probs = Tensor::cat(
            &[
                topk_probs.reshape([-1, 1]).log(),
                -answer_loss.reshape([-1, 1]),
            ],
            1,
        );
        let scores = log_probs
            .sum_dim_intlist(1, false, Kind::Float)
            .view([nq, k]);
        let probs = scores.softmax(-1, Kind::Float);
        let (probs, rerank) = probs.topk(k, 1, true, true);
        Ok((topk_ids.gather(1, &rerank, false), probs))
    }
}

/// `VQA.py`'s conversion of a pretraining checkpoint (training, not `--evaluate`): `bert.`
/// removed for the encoder, and the answer decoder initialised from the multimodal encoder —
/// encoder layers `n >= fusion` become decoder layers `n - fusion` (text-only layers are not
/// copied), the embeddings and the MLM head (`cls.*`) move to the decoder; momentum copies
/// likewise. The official loader hard-codes `fusion = 6` (ALBEF-base); here it is the config's
/// `fusion_layer`, which is the same at base and also initialises the decoder of smaller
/// presets (documented deviation: with the official rule a 4-layer encoder would leave the
/// decoder at random init). Decoder layers beyond the encoder's fusion layers stay as built.
fn pretrain_to_vqa(sd: &mut StateDict, fusion: i64) -> Result<()> {
    let keys: Vec<String> = sd.keys().cloned().collect();
    for key in keys {
        if !key.starts_with("text_encoder") {
            continue;
        }
        let t = sd.get(&key).expect("listed").shallow_clone();
        if key.contains("bert") {
            sd.insert(key.replacen("bert.", "", 1), t.shallow_clone());
        }
        let mut parts: Vec<String> = key.split('.').map(str::to_string).collect();
        if key.contains("layer.") && parts.len() > 4 && parts[3] == "layer" {
            let n: i64 = parts[4].parse().map_err(|_| {
                VlpError::Msg(format!(
                    "{key}: layer number `{}` is not an integer",
                    parts[4]
                ))
            })?;
            if n < fusion || n - fusion >= DECODER_LAYERS {
                sd.remove(&key);
                continue;
            }
            parts[4] = (n - fusion).to_string();
        }
        let dec = parts.join(".").replacen("text_encoder", "text_decoder", 1);
        sd.insert(dec, t);
        sd.remove(&key);
    }
    Ok(())
}

impl VlpModel for AlbefVqa {
    var_store_accessors!();
    /// `VQA.py`: `visual_encoder(_m).pos_embed` interpolated to the model's grid. A pretraining
    /// checkpoint (`text_encoder.bert.*`) is converted as the official loader does for training
    /// (see `pretrain_to_vqa`: encoder rename, decoder from the fusion layers (6–11 at base), MLM head to the
    /// decoder), and the pretraining-only modules are dropped. Tied decoder entries
    /// (`cls.predictions.decoder.*`) a checkpoint omits are filled from their partners.
    fn adapt_state_dict(&self, mut sd: StateDict) -> Result<StateDict> {
        let grid = self.cfg.vit().grid();
        interpolate_pos_embeds(&mut sd, POS_EMBED_KEYS, grid)?;
        resize_patch_embeds(&mut sd, self.cfg.vit().patch_size);
        if has_pretrain_layout(&sd) {
            pretrain_to_vqa(&mut sd, self.cfg.fusion_layer() as i64)?;
            drop_prefixes(&mut sd, PRETRAIN_ONLY_PREFIXES);
        }
        if self.momentum.is_none() {
            drop_prefixes(
                &mut sd,
                &["visual_encoder_m.", "text_encoder_m.", "text_decoder_m."],
            );
        }
        let mut pairs = mlm_tied_pairs("text_decoder.").to_vec();
        if self.momentum.is_some() {
            pairs.extend(mlm_tied_pairs("text_decoder_m."));
        }
        complete_tied(&mut sd, &pairs)?;
        Ok(sd)
    }
    /// Inputs: `image` with (training) `question_input_ids`, `question_attention_mask`,
    /// `answer_input_ids`, `answer_attention_mask`, `answer_weights`, `answers_per_question`,
    /// `alpha`, and/or (ranking) `test_question_input_ids`, `test_question_attention_mask`,
    /// `answer_list_input_ids`, `answer_list_attention_mask`, `k_test` (input, MANIFEST or config).
    /// Outputs: `image_embeds`, `question_states`, `train_loss`, `train_answer_loss`,
    /// `test_question_states`, `rank_topk_ids`, `rank_topk_probs`.
    fn forward_named(&mut self, inputs: &Tensors, extra: &serde_json::Value) -> Result<Tensors> {
        let dev = self.vs.device();
        let get = |n: &str| inputs.get(n).map(|t| t.to_device(dev));
        let image = input_on(inputs, "image", dev)?;
        let mut out = Tensors::new();
        tch::no_grad(|| -> Result<()> {
            if let (Some(qi), Some(qm), Some(ai), Some(am), Some(w), Some(k)) = (
                get("question_input_ids"),
                get("question_attention_mask"),
                get("answer_input_ids"),
                get("answer_attention_mask"),
                get("answer_weights"),
                get("answers_per_question"),
            ) {
                let alpha = scalar_input(inputs, extra, "alpha", self.cfg.alpha);
                let batch = VqaTrainBatch {
                    image: &image,
                    question_ids: &qi,
                    question_mask: &qm,
                    answer_ids: &ai,
                    answer_mask: &am,
                    answers_per_question: &k,
                    weights: &w,
                };
                let t = self.train_forward(&batch, alpha)?;
                out.insert("train_loss".into(), t.loss);
                out.insert("train_answer_loss".into(), t.answer_loss);
                out.insert("image_embeds".into(), t.image_embeds);
                out.insert("question_states".into(), t.question_states);
            }
            if let (Some(qi), Some(qm), Some(ai), Some(am)) = (
                get("test_question_input_ids"),
                get("test_question_attention_mask"),
                get("answer_list_input_ids"),
                get("answer_list_attention_mask"),
            ) {
                let k = inputs
                    .get("k_test")
                    .map(|t| t.int64_value(&[]))
                    .or_else(|| extra.get("k_test").and_then(|v| v.as_i64()))
                    .or(self.cfg.k_test)
                    .ok_or_else(|| {
                        VlpError::input("k_test", "not given by the inputs, MANIFEST or config")
                    })?;
                let (image_embeds, states) = self.encode_question(&image, &qi, &qm)?;
                let (ids, probs) = self.rank_answer(&states, &qm, &ai, &am, k)?;
                out.insert("test_question_states".into(), states);
                out.insert("rank_topk_ids".into(), ids);
                out.insert("rank_topk_probs".into(), probs);
                out.entry("image_embeds".into()).or_insert(image_embeds);
            }
            Ok(())
        })?;
        if out.is_empty() {
            return Err(VlpError::input(
                "question_input_ids",
                "no complete input group (training or ranking)",
            ));
        }
        Ok(out)
    }
}
