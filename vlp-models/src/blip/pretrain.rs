//! BLIP pretraining, `models/blip_pretrain.py:BLIP_Pretrain`: image-text contrastive learning
//! with a momentum queue and distillation (ITC), image-text matching on hard negatives with the
//! image-grounded encoder (ITM, `[ENC]`) and captioning with the image-grounded decoder (LM,
//! `[DEC]`, label smoothing 0.1). There is no MLM.
//!
//! One [`BlipPretrain::forward`] does, in the official order: clamp `temp` to `[0.001, 0.5]` (in
//! place), online features (`mode='text'`, all layers, no cross-attention), **momentum update
//! first**, momentum features, similarities against `[in-batch momentum features ; queue]`, the ITC
//! loss, the enqueue, ITM over `[positives ; text vs negative image ; negative text vs image]` with
//! weights `softmax(sim[:, :B]) + 1e-4` and the diagonal zeroed, and the LM loss of the decoder.
//!
//! The decoder (`text_decoder`, a `BertLMHeadModel`) is tied to the encoder except its
//! self-attention (`tie_encoder_decoder_weights(text_encoder, text_decoder.bert, '',
//! '/attention')`): embeddings, cross-attention, FFN and their LayerNorms are the encoder's
//! tensors, registered a second time under `text_decoder.bert.*` ([`TiedDecoder`]); the
//! decoder's `attention.*` (self-attention and its output) and `cls.predictions.{bias,transform}`
//! are its own. Both copies are in the official state dict; loading checks they are equal.
//!
//! Keys: `visual_encoder.*`, `text_encoder.*` (a `BertModel`, no `bert.` infix),
//! `text_decoder.{bert,cls}.*`, `vision_proj`, `text_proj`, `itm_head`, `temp`, the momentum copies
//! `*_m.*`, and the buffers `image_queue` `[E, Q]`, `text_queue`, `queue_ptr` `[1]`.
use super::{
    lm_targets, opt_input, register_alias, with_first_token, AttnBlock, BlipConfig, BlipTokens,
    Ffn, MedBert,
};
use crate::albef::pretrain::PRETRAIN_PAIRS;
use crate::albef::{
    causal_text_mask, check_image, check_text, complete_tied, init_momentum, input_on,
    interpolate_pos_embeds, scalar_input, MlmHead,
};
use crate::common::{
    itm_hard_negatives, momentum_features, named, project_cls, register_queues,
    var_store_accessors, ItmStep, POS_EMBED_KEYS,
};
use crate::{Tensors, VlpModel};
use tch::{nn, nn::VarStore, Device, Kind, Tensor};
use vlp_core::checkpoint::StateDict;
use vlp_core::layers::linear_torch;
use vlp_core::layers::vit::VisionTransformer;
use vlp_core::{Result, VlpError};
use vlp_objectives::itc::{itc_with_queue, ItcQueueInputs, ItcQueueOutput};
use vlp_objectives::itm::{HardNegativeSampler, NegativeDraws};
use vlp_objectives::lm::try_lm_loss;

/// The encoder variable names (after `text_encoder.`) that the decoder shares: everything but
/// each layer's `attention.*` (skip key `/attention`) and the `position_ids` buffer.
pub fn is_tied_to_decoder(rest: &str) -> bool {
    !rest.contains(".attention.") && rest != "embeddings.position_ids"
}

/// The pretraining decoder `text_decoder` tied to the encoder except self-attention: its own
/// `bert.encoder.layer.N.attention.*`, `bert.embeddings.position_ids` and
/// `cls.predictions.{bias, transform.*}`; the encoder's embeddings, cross-attention and FFN
/// (registered again under `text_decoder.bert.*`); `cls.predictions.decoder.weight` = the word
/// embeddings.
#[derive(Debug)]
pub struct TiedDecoder {
    /// `bert.encoder.layer.N.attention.*` (the decoder's own self-attention).
    pub self_attention: Vec<AttnBlock>,
    ffn: Vec<Ffn>,
    /// `cls.*`.
    pub cls: MlmHead,
}

impl TiedDecoder {
    /// Builds the decoder under `root/text_decoder`, tying it to `encoder` (built under
    /// `root/text_encoder` in the same `VarStore`).
    pub fn new(vs: &VarStore, encoder: &MedBert) -> Result<Self> {
        let root = vs.root();
        let cfg = &encoder.cfg;
        let vars = vs.variables();
        let mut names: Vec<&String> = vars
            .keys()
            .filter(|k| k.starts_with("text_encoder."))
            .collect();
        names.sort();
        for k in names {
            let rest = &k["text_encoder.".len()..];
            if is_tied_to_decoder(rest) {
                let _ = register_alias(&root, &format!("text_decoder.bert.{rest}"), &vars[k]);
            }
        }
        let pe = &root / "text_decoder" / "bert" / "embeddings";
        let ids =
            Tensor::arange(cfg.max_position_embeddings, (Kind::Int64, vs.device())).unsqueeze(0);
        let _ = pe.add("position_ids", ids, false);
        let pl = &root / "text_decoder" / "bert" / "encoder" / "layer";
        let n = cfg.num_hidden_layers;
        let self_attention = (0..n)
            .map(|i| AttnBlock::new(&(&pl / i / "attention"), cfg, None))
            .collect();
        let ffn = (0..n)
            .map(|i| Ffn::from_vars(&vars, &format!("text_encoder.encoder.layer.{i}"), cfg))
            .collect::<Result<Vec<_>>>()?;
        let cls = MlmHead::new(
            &(&root / "text_decoder" / "cls"),
            cfg,
            &encoder.embeddings.word_embeddings.ws,
        );
        Ok(TiedDecoder {
            self_attention,
            ffn,
            cls,
        })
    }

    /// Decoder logits `[B, L, V]` of `ids` (`[DEC]` first, padding `mask`) over `image_embeds`.
    pub fn logits(
        &self,
        encoder: &MedBert,
        ids: &Tensor,
        mask: &Tensor,
        image_embeds: &Tensor,
        train: bool,
    ) -> Tensor {
        let mut h = encoder.embed(ids, 0, train);
        let m = causal_text_mask(mask, h.kind());
        for (i, layer) in encoder.encoder.layers.iter().enumerate() {
            let a = self.self_attention[i].forward_t(&h, None, Some(&m), train);
            let c = layer
                .crossattention
                .as_ref()
                .expect("MED layers have cross-attention")
                .forward_t(&a, Some(image_embeds), None, train);
            h = self.ffn[i].forward_t(&c, train);
        }
        self.cls.forward(&h)
    }
}

/// One pretraining batch.
#[derive(Debug, Clone, Copy)]
pub struct PretrainBatch<'a> {
    /// `[B, 3, H, W]` normalised images.
    pub image: &'a Tensor,
    /// `[B, L]` caption ids (`[CLS] ... [SEP]`, padded to `max_length` 30 officially).
    pub input_ids: &'a Tensor,
    /// `[B, L]` 1 = token, 0 = pad.
    pub attention_mask: &'a Tensor,
    /// `[B, L]` ITM ids; `None` = `input_ids` with `[ENC]` at position 0.
    pub encoder_input_ids: Option<&'a Tensor>,
    /// `[B, L]` LM ids; `None` = `input_ids` with `[DEC]` at position 0.
    pub decoder_input_ids: Option<&'a Tensor>,
}

/// Everything one pretraining forward computes (names = the fixture probes).
#[derive(Debug)]
pub struct PretrainOutput {
    /// ITC loss (with distillation).
    pub loss_ita: Tensor,
    /// ITM loss.
    pub loss_itm: Tensor,
    /// LM loss (label smoothing 0.1, mean over non-ignored targets).
    pub loss_lm: Tensor,
    /// `[B, 1+N, D]` ViT output.
    pub image_embeds: Tensor,
    /// `[B, L, D]` text-mode output.
    pub text_embeds: Tensor,
    /// `[B, E]` normalised image features.
    pub image_feat: Tensor,
    /// `[B, E]` normalised text features.
    pub text_feat: Tensor,
    /// `[B, E]` momentum image features (enqueued).
    pub image_feat_m: Tensor,
    /// `[B, E]` momentum text features (enqueued).
    pub text_feat_m: Tensor,
    /// `[B, B+Q]` image-to-text logits.
    pub sim_i2t: Tensor,
    /// `[B, B+Q]` text-to-image logits.
    pub sim_t2i: Tensor,
    /// `[B, B+Q]` momentum image-to-text logits.
    pub sim_i2t_m: Tensor,
    /// `[B, B+Q]` momentum text-to-image logits.
    pub sim_t2i_m: Tensor,
    /// `[B, B]` multinomial weights of the negative images of each text.
    pub itm_weights_t2i: Tensor,
    /// `[B, B]` multinomial weights of the negative texts of each image.
    pub itm_weights_i2t: Tensor,
    /// The hard negatives used.
    pub negatives: NegativeDraws,
    /// `[B, L, D]` image-grounded encoder output of the positive pairs.
    pub fusion_pos: Tensor,
    /// `[2B, L, D]` image-grounded encoder output of the negative pairs.
    pub fusion_neg: Tensor,
    /// `[3B, 2]` ITM logits.
    pub itm_logits: Tensor,
    /// `[B, L, V]` decoder logits.
    pub decoder_logits: Tensor,
    /// `temp` after the clamp.
    pub temp: Tensor,
}

impl PretrainOutput {
    /// The training loss `loss_ita + loss_itm + loss_lm` (pretrain.py).
    pub fn loss(&self) -> Tensor {
        &self.loss_ita + &self.loss_itm + &self.loss_lm
    }

    /// The outputs by probe name (plus the draws used).
    pub fn into_named(self) -> Tensors {
        named([
            ("loss_ita", self.loss_ita),
            ("loss_itm", self.loss_itm),
            ("loss_lm", self.loss_lm),
            ("image_embeds", self.image_embeds),
            ("text_embeds", self.text_embeds),
            ("image_feat", self.image_feat),
            ("text_feat", self.text_feat),
            ("image_feat_m", self.image_feat_m),
            ("text_feat_m", self.text_feat_m),
            ("sim_i2t", self.sim_i2t),
            ("sim_t2i", self.sim_t2i),
            ("sim_i2t_m", self.sim_i2t_m),
            ("sim_t2i_m", self.sim_t2i_m),
            ("itm_weights_t2i", self.itm_weights_t2i),
            ("itm_weights_i2t", self.itm_weights_i2t),
            ("itm_neg_image_idx", self.negatives.neg_image_idx),
            ("itm_neg_text_idx", self.negatives.neg_text_idx),
            ("fusion_pos", self.fusion_pos),
            ("fusion_neg", self.fusion_neg),
            ("itm_logits", self.itm_logits),
            ("decoder_logits", self.decoder_logits),
            ("temp_after_clamp", self.temp),
        ])
    }
}

/// `models/blip_pretrain.py:BLIP_Pretrain`.
#[derive(Debug)]
pub struct BlipPretrain {
    vs: VarStore,
    /// The configuration.
    pub cfg: BlipConfig,
    /// Special tokens (`[ENC]`, `[DEC]`, `[PAD]`).
    pub tokens: BlipTokens,
    /// `visual_encoder.*`.
    pub visual_encoder: VisionTransformer,
    /// `text_encoder.*` (`BertModel`, vocabulary resized to `len(tokenizer)`).
    pub text_encoder: MedBert,
    /// `vision_proj.*`.
    pub vision_proj: nn::Linear,
    /// `text_proj.*`.
    pub text_proj: nn::Linear,
    /// `itm_head.*`.
    pub itm_head: nn::Linear,
    /// `temp` (learned, clamped at each forward).
    pub temp: Tensor,
    /// `visual_encoder_m.*`.
    pub visual_encoder_m: VisionTransformer,
    /// `vision_proj_m.*`.
    pub vision_proj_m: nn::Linear,
    /// `text_encoder_m.*`.
    pub text_encoder_m: MedBert,
    /// `text_proj_m.*`.
    pub text_proj_m: nn::Linear,
    /// `text_decoder.*` (tied to `text_encoder` except self-attention).
    pub text_decoder: TiedDecoder,
    /// `image_queue` `[E, Q]`.
    pub image_queue: Tensor,
    /// `text_queue` `[E, Q]`.
    pub text_queue: Tensor,
    /// `queue_ptr` `[1]` int64.
    pub queue_ptr: Tensor,
    /// Dropout / drop-path on (off by default).
    pub train: bool,
}

impl BlipPretrain {
    /// Builds the model (momentum copies = online weights, queues random unit columns, pointer 0,
    /// `temp` 0.07) on `device`.
    pub fn new(cfg: &BlipConfig, device: Device) -> Result<Self> {
        cfg.validate()?;
        let vs = VarStore::new(device);
        let r = vs.root();
        let vit = cfg.vit_for("pretrain", false);
        let vit_m = cfg.vit_for("pretrain", true);
        let dv = vit.embed_dim;
        let med = cfg.med_for(Some(dv), cfg.text_vocab(true));
        let (dt, e, q) = (med.hidden_size, cfg.embed_dim, cfg.queue_size);
        let visual_encoder = VisionTransformer::new(&(&r / "visual_encoder"), &vit);
        let text_encoder = MedBert::new(&(&r / "text_encoder"), &med)?;
        let vision_proj = linear_torch(&r / "vision_proj", dv, e);
        let text_proj = linear_torch(&r / "text_proj", dt, e);
        let itm_head = linear_torch(&r / "itm_head", dt, 2);
        let visual_encoder_m = VisionTransformer::new(&(&r / "visual_encoder_m"), &vit_m);
        let vision_proj_m = linear_torch(&r / "vision_proj_m", dv, e);
        let text_encoder_m = MedBert::new(&(&r / "text_encoder_m"), &med)?;
        let text_proj_m = linear_torch(&r / "text_proj_m", dt, e);
        let queues = register_queues(&r, e, q, false, "queue_ptr");
        let temp = r.var("temp", &[], nn::Init::Const(0.07));
        let text_decoder = TiedDecoder::new(&vs, &text_encoder)?;
        init_momentum(&vs, PRETRAIN_PAIRS)?;
        Ok(BlipPretrain {
            tokens: cfg.tokens(true),
            vs,
            cfg: cfg.clone(),
            visual_encoder,
            text_encoder,
            vision_proj,
            text_proj,
            itm_head,
            temp,
            visual_encoder_m,
            vision_proj_m,
            text_encoder_m,
            text_proj_m,
            text_decoder,
            image_queue: queues.image,
            text_queue: queues.text,
            queue_ptr: queues.ptr,
            train: false,
        })
    }

    /// One pretraining step's forward (`model(image, caption, alpha)`), updating the momentum
    /// encoders, `temp` (clamp) and the queues in place. `negatives`: recorded ITM draws, else
    /// drawn with torch's global generator. Run under `tch::no_grad` for evaluation.
    pub fn forward(
        &mut self,
        batch: &PretrainBatch,
        alpha: f64,
        negatives: Option<NegativeDraws>,
    ) -> Result<PretrainOutput> {
        let (image, ids, mask) = (batch.image, batch.input_ids, batch.attention_mask);
        check_image(image, "image")?;
        check_text(ids, mask, "input_ids")?;
        let b = image.size()[0];
        if ids.size()[0] != b {
            return Err(VlpError::input(
                "input_ids",
                format!("batch {} differs from the images' {b}", ids.size()[0]),
            ));
        }
        let train = self.train;
        tch::no_grad(|| {
            let _ = self.temp.shallow_clone().clamp_(0.001, 0.5);
        });
        let temp = self.temp.shallow_clone();

        let image_embeds = self.visual_encoder.forward_t(image, train);
        let image_feat = project_cls(&image_embeds, &self.vision_proj);
        let text_embeds = self.text_encoder.text(ids, mask, train);
        let text_feat = project_cls(&text_embeds, &self.text_proj);

        let (_, image_feat_m, text_feat_m) = momentum_features(
            &self.vs,
            PRETRAIN_PAIRS,
            self.cfg.momentum,
            || self.visual_encoder_m.forward_t(image, train),
            &self.vision_proj_m,
            || self.text_encoder_m.text(ids, mask, train),
            &self.text_proj_m,
        )?;
        let ItcQueueOutput {
            loss: loss_ita,
            sim_i2t,
            sim_t2i,
            sim_i2t_m,
            sim_t2i_m,
        } = itc_with_queue(&ItcQueueInputs {
            image_feat: &image_feat,
            text_feat: &text_feat,
            image_feat_m: &image_feat_m,
            text_feat_m: &text_feat_m,
            image_queue: &self.image_queue,
            text_queue: &self.text_queue,
            idx: None,
            queue_ptr: &self.queue_ptr,
            temp: &temp,
            alpha,
            distill: true,
        })?;

        // ITM: image-grounded encoder with [ENC], hard negatives.
        let enc_ids = match batch.encoder_input_ids {
            Some(t) => t.shallow_clone(),
            None => with_first_token(ids, self.tokens.enc),
        };
        check_text(&enc_ids, mask, "encoder_input_ids")?;
        let itm = itm_hard_negatives(
            ItmStep {
                sampler: HardNegativeSampler::blip_pretrain(),
                sim_i2t: &sim_i2t.narrow(1, 0, b),
                sim_t2i: &sim_t2i.narrow(1, 0, b),
                positives: None,
                draws: negatives,
                text: &enc_ids,
                mask,
                image_embeds: &image_embeds,
                itm_head: &self.itm_head,
            },
            |ids, m, i, rows| self.text_encoder.multimodal_rows(ids, m, i, rows, train),
        )?;

        // LM: image-grounded decoder with [DEC].
        let dec_ids = match batch.decoder_input_ids {
            Some(t) => t.shallow_clone(),
            None => with_first_token(ids, self.tokens.bos),
        };
        check_text(&dec_ids, mask, "decoder_input_ids")?;
        let targets = lm_targets(&dec_ids, self.tokens.pad);
        let decoder_logits =
            self.text_decoder
                .logits(&self.text_encoder, &dec_ids, mask, &image_embeds, train);
        let loss_lm = try_lm_loss(&decoder_logits, &targets, self.cfg.label_smoothing, false)?;

        Ok(PretrainOutput {
            loss_ita,
            loss_itm: itm.loss,
            loss_lm,
            image_embeds,
            text_embeds,
            image_feat,
            text_feat,
            image_feat_m,
            text_feat_m,
            sim_i2t,
            sim_t2i,
            sim_i2t_m,
            sim_t2i_m,
            itm_weights_t2i: itm.weights_t2i,
            itm_weights_i2t: itm.weights_i2t,
            negatives: itm.negatives,
            fusion_pos: itm.fusion_pos,
            fusion_neg: itm.fusion_neg,
            itm_logits: itm.logits,
            decoder_logits,
            temp: self.temp.detach().copy(),
        })
    }
}

/// Checks the tied pairs of the pretraining decoder in `sd` and fills a copy a checkpoint omits
/// (e.g. a de-duplicated safetensors conversion) from its partner.
pub(crate) fn complete_decoder_ties(sd: &mut StateDict) -> Result<()> {
    let mut pairs: Vec<(String, String)> = sd
        .keys()
        .filter_map(|k| {
            let rest = k.strip_prefix("text_encoder.")?;
            is_tied_to_decoder(rest).then(|| (k.clone(), format!("text_decoder.bert.{rest}")))
        })
        .collect();
    pairs.extend([
        (
            "text_encoder.embeddings.word_embeddings.weight".to_string(),
            "text_decoder.cls.predictions.decoder.weight".to_string(),
        ),
        (
            "text_decoder.cls.predictions.bias".to_string(),
            "text_decoder.cls.predictions.decoder.bias".to_string(),
        ),
    ]);
    complete_tied(sd, &pairs)
}

impl VlpModel for BlipPretrain {
    var_store_accessors!();
    /// `load_checkpoint`: `visual_encoder(_m).pos_embed` interpolated to the model's patch grid.
    /// The decoder's tied copies must equal the encoder's; a copy the checkpoint omits is filled
    /// from its partner.
    fn adapt_state_dict(&self, mut sd: StateDict) -> Result<StateDict> {
        let grid = self.visual_encoder.cfg.grid();
        interpolate_pos_embeds(&mut sd, POS_EMBED_KEYS, grid)?;
        complete_decoder_ties(&mut sd)?;
        Ok(sd)
    }
    /// Inputs: `image`, `input_ids`, `attention_mask`, `alpha` (else the MANIFEST's / config's),
    /// optional recorded draws `itm_neg_image_idx`, `itm_neg_text_idx`, optional
    /// `encoder_input_ids` / `decoder_input_ids` (else derived: position 0 replaced by `[ENC]` /
    /// `[DEC]`). Outputs:
    /// [`PretrainOutput::into_named`].
    fn forward_named(&mut self, inputs: &Tensors, extra: &serde_json::Value) -> Result<Tensors> {
        let dev = self.vs.device();
        let image = input_on(inputs, "image", dev)?;
        let ids = input_on(inputs, "input_ids", dev)?;
        let mask = input_on(inputs, "attention_mask", dev)?;
        let alpha = scalar_input(inputs, extra, "alpha", self.cfg.alpha);
        let negatives = match (
            opt_input(inputs, "itm_neg_image_idx", dev),
            opt_input(inputs, "itm_neg_text_idx", dev),
        ) {
            (Some(i), Some(t)) => Some(NegativeDraws::from_indices(i, t)),
            _ => None,
        };
        let enc = opt_input(inputs, "encoder_input_ids", dev);
        let dec = opt_input(inputs, "decoder_input_ids", dev);
        let batch = PretrainBatch {
            image: &image,
            input_ids: &ids,
            attention_mask: &mask,
            encoder_input_ids: enc.as_ref(),
            decoder_input_ids: dec.as_ref(),
        };
        let out = tch::no_grad(|| self.forward(&batch, alpha, negatives))?;
        Ok(out.into_named())
    }
}
