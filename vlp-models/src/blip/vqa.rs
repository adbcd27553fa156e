//! BLIP VQA, `models/blip_vqa.py:BLIP_VQA`: the question is encoded by the image-grounded encoder
//! (`[ENC]` at position 0, cross-attending to the image); a 12-layer (config) causal decoder
//! generates or scores answers (`[DEC] answer [SEP]`) cross-attending to the question states.
//!
//! - [`BlipVqa::train_loss`]: `sum(weights * per-answer summed label-smoothed (0.1) CE) / B`,
//!   question states repeated `n[b]` times for the `n[b]` answers of question `b`.
//! - [`BlipVqa::rank_answer`]: the decoder's first-step logits over `[DEC]` give each candidate's
//!   first-token probability; the top `k` candidates are re-scored by their summed
//!   label-smoothed loss and the smallest loss wins (score = `-loss`; no first-token term is added,
//!   unlike ALBEF).
//! - [`BlipVqa::generate`] (`inference='generate'`): beam search (3 beams, `max_length` 10,
//!   `min_length` 1) from `[DEC]`, see [`super::caption`].
//!
//! Keys: `visual_encoder.*` (drop-path 0.1 in training), `text_encoder.*` (`BertModel`,
//! cross-attention width = ViT width), `text_decoder.{bert,cls}.*` (`BertLMHeadModel`,
//! cross-attention width = `med.encoder_width`).
use super::caption::{beam_generate, GenerateOptions};
use super::{lm_targets, opt_input, BlipConfig, BlipTokens, MedBert, MedLm};
use crate::albef::{
    check_image, check_text, complete_tied, input_on, interpolate_pos_embeds, mlm_tied_pairs,
};
use crate::common::var_store_accessors;
use crate::{Tensors, VlpModel};
use tch::{nn::VarStore, Device, Kind, Tensor};
use vlp_core::checkpoint::StateDict;
use vlp_core::layers::vit::VisionTransformer;
use vlp_core::{Result, VlpError};
use vlp_objectives::lm::try_lm_loss;

/// `models/blip_vqa.py:BLIP_VQA`.
#[derive(Debug)]
pub struct BlipVqa {
    vs: VarStore,
    /// The configuration.
    pub cfg: BlipConfig,
    /// Special tokens (`[ENC]`, `[DEC]`, `[SEP]`, `[PAD]`).
    pub tokens: BlipTokens,
    /// `visual_encoder.*`.
    pub visual_encoder: VisionTransformer,
    /// `text_encoder.*` (question encoder).
    pub text_encoder: MedBert,
    /// `text_decoder.*` (answer decoder).
    pub text_decoder: MedLm,
    /// Dropout / drop-path on (off by default).
    pub train: bool,
}

/// What [`BlipVqa::rank_answer`] computes (names = the fixture probes without `rank_`).
#[derive(Debug)]
pub struct RankOutput {
    /// `[B, V]` decoder logits of the `[DEC]`-only step.
    pub first_token_logits: Tensor,
    /// `[B, k]` answer-list indices of the top-k by first-token probability.
    pub topk_ids: Tensor,
    /// `[B, k]` their first-token probabilities.
    pub topk_first_probs: Tensor,
    /// `[B, k]` summed label-smoothed loss of each top-k candidate.
    pub answer_loss: Tensor,
    /// `[B]` the chosen answer-list index (smallest loss; the official return value).
    pub max_ids: Tensor,
}

impl BlipVqa {
    /// Builds the model on `device`.
    pub fn new(cfg: &BlipConfig, device: Device) -> Result<Self> {
        cfg.validate()?;
        let vs = VarStore::new(device);
        let r = vs.root();
        let vit = cfg.vit_for("vqa", false);
        let vocab = cfg.text_vocab(false);
        let enc = cfg.med_for(Some(vit.embed_dim), vocab);
        let dec = cfg.med_for(None, vocab);
        let visual_encoder = VisionTransformer::new(&(&r / "visual_encoder"), &vit);
        let text_encoder = MedBert::new(&(&r / "text_encoder"), &enc)?;
        let text_decoder = MedLm::new(&(&r / "text_decoder"), &dec)?;
        Ok(BlipVqa {
            tokens: cfg.tokens(false),
            vs,
            cfg: cfg.clone(),
            visual_encoder,
            text_encoder,
            text_decoder,
            train: false,
        })
    }

    /// `(image_embeds [B, 1+N, D], question_states [B, Lq, H])`: the ViT and the image-grounded
    /// question encoder (`question_ids` with `[ENC]` at position 0).
    pub fn encode(
        &self,
        image: &Tensor,
        question_ids: &Tensor,
        question_mask: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        check_image(image, "image")?;
        check_text(question_ids, question_mask, "question_input_ids")?;
        if image.size()[0] != question_ids.size()[0] {
            return Err(VlpError::input(
                "question_input_ids",
                format!(
                    "{} questions for {} images",
                    question_ids.size()[0],
                    image.size()[0]
                ),
            ));
        }
        let image_embeds = self.visual_encoder.forward_t(image, self.train);
        let states = self.text_encoder.multimodal(
            question_ids,
            question_mask,
            &image_embeds,
            None,
            self.train,
        );
        Ok((image_embeds, states))
    }

    /// Per-sequence summed label-smoothed LM loss `[N]` of `answer_ids` (`[DEC]` first) over
    /// question states `[N, Lq, H]` (mask `[N, Lq]`).
    pub fn answer_loss(
        &self,
        answer_ids: &Tensor,
        answer_mask: &Tensor,
        states: &Tensor,
        states_mask: &Tensor,
    ) -> Result<Tensor> {
        check_text(answer_ids, answer_mask, "answer_input_ids")?;
        let logits = self.text_decoder.logits(
            answer_ids,
            answer_mask,
            states,
            Some(states_mask),
            self.train,
        );
        try_lm_loss(
            &logits,
            &lm_targets(answer_ids, self.tokens.pad),
            self.cfg.label_smoothing,
            true,
        )
    }

    /// The training loss `model(image, question, answer, n, weights, train=True)`: answers
    /// `[N, La]` (`[DEC]` first) grouped by question (`n[b]` answers for question `b`, `sum(n) =
    /// N`), `weights` `[N]`.
    #[allow(clippy::too_many_arguments)]
    pub fn train_loss(
        &self,
        image: &Tensor,
        question_ids: &Tensor,
        question_mask: &Tensor,
        answer_ids: &Tensor,
        answer_mask: &Tensor,
        weights: &Tensor,
        n: &[i64],
    ) -> Result<Tensor> {
        let (_, states) = self.encode(image, question_ids, question_mask)?;
        self.train_loss_from_states(&states, question_mask, answer_ids, answer_mask, weights, n)
    }

    /// [`BlipVqa::train_loss`] from already-encoded question states.
    pub fn train_loss_from_states(
        &self,
        states: &Tensor,
        question_mask: &Tensor,
        answer_ids: &Tensor,
        answer_mask: &Tensor,
        weights: &Tensor,
        n: &[i64],
    ) -> Result<Tensor> {
        let b = states.size()[0];
        let total: i64 = n.iter().sum();
        if n.len() as i64 != b
            || total != answer_ids.size()[0]
            || weights.size() != [total]
            || n.iter().any(|&x| x < 0)
        {
            return Err(VlpError::input(
                "answers_per_question",
                format!(
                    "n {n:?} must have one count per question ({b}) summing to the {} answers / weights {:?}",
                    answer_ids.size()[0],
                    weights.size()
                ),
            ));
        }
        let dev = states.device();
        let rep: Vec<i64> = n
            .iter()
            .enumerate()
            .flat_map(|(i, &c)| std::iter::repeat_n(i as i64, c as usize))
            .collect();
        let rep = Tensor::from_slice(&rep).to_device(dev);
        let per = self.answer_loss(
            answer_ids,
            answer_mask,
            &states.index_select(0, &rep),
            &question_mask.index_select(0, &rep),
        )?;
        let kind = per.kind();
        Ok((weights.to_device(dev).to_kind(kind) * per).sum(kind) / b as f64)
    }

    /// `rank_answer(question_states, question_atts, answer_ids, answer_atts, k)`: candidates
    /// `answer_ids` `[M, La]` (`[DEC] answer [SEP]`, padded); `k` is capped at `M`.
    pub fn rank_answer(
        &self,
        states: &Tensor,
        question_mask: &Tensor,
        answer_ids: &Tensor,
        answer_mask: &Tensor,
        k: i64,
    ) -> Result<RankOutput> {
        check_text(answer_ids, answer_mask, "answer_list_input_ids")?;
        let (b, m) = (states.size()[0], answer_ids.size()[0]);
        if k < 1 || answer_ids.size()[1] < 2 {
            return Err(VlpError::input(
                "k_test",
                format!(
                    "need k >= 1 and answers of >= 2 tokens, got k {k}, answers {:?}",
                    answer_ids.size()
                ),
            ));
        }
        let k = k.min(m);
        let dev = states.device();
        let start = answer_ids.get(0).get(0).view([1, 1]).repeat([b, 1]);
        let ones = Tensor::ones([b, 1], (Kind::Int64, dev));
        let first = self
            .text_decoder
            .logits(&start, &ones, states, Some(question_mask), self.train)
            .select(1, 0);
        let first_tok = answer_ids.select(1, 1);
        let prob = first.softmax(1, Kind::Float).index_select(1, &first_tok);
        let (topk_probs, topk_ids) = prob.topk(k, 1, true, true);
        let flat = topk_ids.reshape([-1]);
        let ids = answer_ids.index_select(0, &flat);
        let atts = answer_mask.index_select(0, &flat);
        let st = states.repeat_interleave_self_int(k, 0, None);
        let sm = question_mask.repeat_interleave_self_int(k, 0, None);
        let loss = self.answer_loss(&ids, &atts, &st, &sm)?.view([b, k]);
        let best = loss.neg().argmax(1, false);
        let max_ids = topk_ids.gather(1, &best.unsqueeze(1), false).squeeze_dim(1);
        Ok(RankOutput {
            first_token_logits: first,
            topk_ids,
            topk_first_probs: topk_probs,
            answer_loss: loss,
            max_ids,
        })
    }

    /// `inference='generate'`: beam search from `[DEC]` (defaults: 3 beams, `max_length` 10,
    /// `min_length` 1, EOS `[SEP]`), question states repeated per beam. Returns `[B, T]` ids.
    pub fn generate(&self, question_states: &Tensor, opts: &GenerateOptions) -> Result<Tensor> {
        let b = question_states.size()[0];
        let bos = Tensor::full(
            [b, 1],
            self.tokens.bos,
            (Kind::Int64, question_states.device()),
        );
        beam_generate(&self.text_decoder, question_states, &bos, opts)
    }

    /// The generation options `BLIP_VQA.forward(inference='generate')` uses.
    pub fn generate_options(&self) -> GenerateOptions {
        GenerateOptions {
            num_beams: 3,
            max_length: 10,
            min_length: 1,
            repetition_penalty: 1.0,
            eos: self.tokens.sep,
            pad: self.tokens.pad,
        }
    }
}

impl VlpModel for BlipVqa {
    var_store_accessors!();
    /// `load_checkpoint`: `visual_encoder.pos_embed` interpolated; keys outside `visual_encoder.`,
    /// `text_encoder.`, `text_decoder.` (a pretraining checkpoint's ITC/ITM modules, momentum
    /// copies, queues) dropped; the LM head's tied entries a checkpoint omits are filled from their
    /// partners (present ones must be equal).
    fn adapt_state_dict(&self, mut sd: StateDict) -> Result<StateDict> {
        let grid = self.visual_encoder.cfg.grid();
        interpolate_pos_embeds(&mut sd, &["visual_encoder.pos_embed"], grid)?;
        // a pretraining checkpoint (model_base.pth): its ITC/ITM modules, momentum copies and
        // queues are not in this class (ignored by the official `strict=False` load)
        sd.retain(|k, _| {
            ["visual_encoder.", "text_encoder.", "text_decoder."]
                .iter()
                .any(|p| k.starts_with(p))
        });
        complete_tied(&mut sd, &mlm_tied_pairs("text_decoder."))?;
        Ok(sd)
    }
    /// Inputs: `image`, `question_input_ids` (`[ENC]` first), `question_attention_mask`; training
    /// `answer_input_ids`, `answer_attention_mask`, `answer_weights`, `answers_per_question`;
    /// ranking `answer_list_input_ids`, `answer_list_attention_mask`, `k_test` (input, MANIFEST
    /// or config). Outputs: `image_embeds`, `question_states`, `train_loss`,
    /// `rank_first_token_logits`, `rank_topk_ids`, `rank_topk_first_probs`, `rank_answer_loss`,
    /// `rank_max_ids`.
    fn forward_named(&mut self, inputs: &Tensors, extra: &serde_json::Value) -> Result<Tensors> {
        let dev = self.vs.device();
        let get = |n: &str| opt_input(inputs, n, dev);
        let image = input_on(inputs, "image", dev)?;
        let q = input_on(inputs, "question_input_ids", dev)?;
        let qm = input_on(inputs, "question_attention_mask", dev)?;
        let mut out = Tensors::new();
        tch::no_grad(|| -> Result<()> {
            let (image_embeds, states) = self.encode(&image, &q, &qm)?;
            if let (Some(a), Some(am), Some(w), Some(n)) = (
                get("answer_input_ids"),
                get("answer_attention_mask"),
                get("answer_weights"),
                inputs.get("answers_per_question"),
            ) {
                let n: Vec<i64> = Vec::<i64>::try_from(n.to_kind(Kind::Int64).reshape([-1]))?;
                out.insert(
                    "train_loss".into(),
                    self.train_loss_from_states(&states, &qm, &a, &am, &w, &n)?,
                );
            }
            if let (Some(a), Some(am)) = (
                get("answer_list_input_ids"),
                get("answer_list_attention_mask"),
            ) {
                let k = inputs
                    .get("k_test")
                    .map(|t| t.int64_value(&[]))
                    .or_else(|| extra.get("k_test").and_then(|v| v.as_i64()))
                    .or(self.cfg.k_test)
                    .unwrap_or(128);
                let r = self.rank_answer(&states, &qm, &a, &am, k)?;
                for (name, t) in [
                    ("rank_first_token_logits", r.first_token_logits),
                    ("rank_topk_ids", r.topk_ids),
                    ("rank_topk_first_probs", r.topk_first_probs),
                    ("rank_answer_loss", r.answer_loss),
                    ("rank_max_ids", r.max_ids),
                ] {
                    out.insert(name.into(), t);
                }
            }
            out.insert("image_embeds".into(), image_embeds);
            out.insert("question_states".into(), states);
            Ok(())
        })?;
        Ok(out)
    }
}
