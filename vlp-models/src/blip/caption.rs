//! BLIP captioning, `models/blip.py:BLIP_Decoder`: a ViT and an image-grounded causal decoder
//! (`text_decoder`, a `BertLMHeadModel` cross-attending to every image token).
//!
//! - [`BlipDecoder::forward`]: captions start with `[DEC]` (the tokenizer's `[CLS]` replaced),
//!   targets are the ids with pads and the first `prompt_length` positions (`[DEC] a picture of`:
//!   `len(tokenizer(prompt).input_ids) - 1` = 4) set to -100, loss = shifted cross-entropy with
//!   label smoothing 0.1, mean over the kept targets.
//! - [`BlipDecoder::generate`]: `text_decoder.generate` of transformers 4.25 from the prompt
//!   `[DEC] a picture of` (trailing `[SEP]` dropped), EOS `[SEP]`, PAD 0: beam search (official
//!   `num_beams` 3, `max_length` 20, `min_length` 5 for COCO, repetition penalty 1.0) or nucleus
//!   sampling (`top_p` 0.9, `top_k` 50 (HF's default), repetition penalty 1.1). The image
//!   embeddings are repeated per beam. Returns the raw ids, prompt included, as the official
//!   `outputs` before decoding; [`BlipDecoder::captions`] decodes them and strips the prompt.
//!
//! Incremental decoding: [`MedDecoder`] implements [`IncrementalDecoder`] over
//! [`BertLayer::forward_cached`](vlp_core::layers::bert::BertLayer::forward_cached): per layer a
//! self-attention key/value cache and a cross-attention cache of the (fixed) context, both
//! reordered with the beams. VQA's answer generation uses it too.
//!
//! Keys: `visual_encoder.*`, `text_decoder.bert.*`, `text_decoder.cls.predictions.*`.
use super::{lm_targets, opt_input, with_first_token, BlipConfig, BlipTokens, MedLm};
use crate::albef::{
    check_image, check_text, complete_tied, input_on, interpolate_pos_embeds, mlm_tied_pairs,
};
use crate::common::var_store_accessors;
use crate::{Tensors, VlpModel};
use tch::{nn::VarStore, Device, Kind, Tensor};
use vlp_core::attention::{causal_mask, BERT_MASK_VALUE};
use vlp_core::checkpoint::StateDict;
use vlp_core::generation::{generate, GenerationConfig, IncrementalDecoder};
use vlp_core::layers::bert::{BertLayerCache, CrossInput};
use vlp_core::layers::vit::VisionTransformer;
use vlp_core::text::{SpecialStyle, Tokenizer};
use vlp_core::{Result, VlpError};
use vlp_objectives::lm::try_lm_loss;

/// A [`MedLm`] decoding incrementally over a fixed context (image embeddings or VQA question
/// states): the adapter [`generate`] drives.
#[derive(Debug)]
pub struct MedDecoder<'a> {
    lm: &'a MedLm,
    context: Tensor,
    context_keep: Option<Tensor>,
    caches: Vec<BertLayerCache>,
    past: i64,
}

impl<'a> MedDecoder<'a> {
    /// A decoder over `context` `[N, Lk, W]` (`context_keep` `[N, Lk]` 1 = attended, `None` =
    /// all), with empty caches.
    pub fn new(lm: &'a MedLm, context: &Tensor, context_keep: Option<&Tensor>) -> Self {
        MedDecoder {
            lm,
            context: context.shallow_clone(),
            context_keep: context_keep.map(Tensor::shallow_clone),
            caches: (0..lm.bert.encoder.layers.len())
                .map(|_| BertLayerCache::default())
                .collect(),
            past: 0,
        }
    }

    /// Number of positions fed so far.
    pub fn past_length(&self) -> i64 {
        self.past
    }
}

impl IncrementalDecoder for MedDecoder<'_> {
    fn step(&mut self, new_tokens: &Tensor) -> Result<Tensor> {
        let size = new_tokens.size();
        if size.len() != 2 || size[0] != self.context.size()[0] {
            return Err(VlpError::input(
                "new_tokens",
                format!("expected [{}, T], got {size:?}", self.context.size()[0]),
            ));
        }
        let t = size[1];
        let mut x = self.lm.bert.embed(new_tokens, self.past, false);
        let kind = x.kind();
        let self_mask =
            (t > 1).then(|| causal_mask(t, self.past + t, BERT_MASK_VALUE, kind, x.device()));
        let cmask = self
            .context_keep
            .as_ref()
            .map(|k| super::cross_mask(k, kind));
        let cross = CrossInput {
            states: &self.context,
            mask: cmask.as_ref(),
            rows: None,
        };
        for (layer, cache) in self
            .lm
            .bert
            .encoder
            .layers
            .iter()
            .zip(self.caches.iter_mut())
        {
            x = layer.forward_cached(&x, self_mask.as_ref(), Some(cross), cache);
        }
        self.past += t;
        Ok(self.lm.cls.forward(&x.select(1, t - 1)))
    }

    fn reorder(&mut self, index: &Tensor) -> Result<()> {
        let index = index.to_device(self.context.device());
        for c in &mut self.caches {
            c.self_kv.reorder(&index);
            c.cross_kv.reorder(&index);
        }
        self.context = self.context.index_select(0, &index);
        self.context_keep = self
            .context_keep
            .as_ref()
            .map(|k| k.index_select(0, &index));
        Ok(())
    }
}

/// The `text_decoder.generate` arguments BLIP passes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerateOptions {
    /// Beams (beam search when > 1).
    pub num_beams: i64,
    /// Maximum length, prompt included.
    pub max_length: i64,
    /// Minimum length, prompt included.
    pub min_length: i64,
    /// Repetition penalty.
    pub repetition_penalty: f64,
    /// EOS (`[SEP]`).
    pub eos: i64,
    /// PAD.
    pub pad: i64,
}

/// Runs transformers-4.25 beam search (or greedy search with one beam) of `lm` from `prompt`
/// `[B, P]` over `context` `[B, Lk, W]` (repeated per beam), returning `[B, T]` ids, prompt
/// included, rows that finish early padded.
pub fn beam_generate(
    lm: &MedLm,
    context: &Tensor,
    prompt: &Tensor,
    opts: &GenerateOptions,
) -> Result<Tensor> {
    let cfg = GenerationConfig {
        max_length: opts.max_length,
        min_length: opts.min_length,
        num_beams: opts.num_beams,
        repetition_penalty: opts.repetition_penalty,
        eos_token_id: opts.eos,
        pad_token_id: opts.pad,
        ..GenerationConfig::default()
    };
    let mut dec = MedDecoder::new(lm, context, None);
    Ok(generate(&mut dec, prompt, &cfg, None, None)?.sequences)
}

/// `models/blip.py:BLIP_Decoder`.
#[derive(Debug)]
pub struct BlipDecoder {
    vs: VarStore,
    /// The configuration (`prompt`, generation settings).
    pub cfg: BlipConfig,
    /// Special tokens (`[DEC]`, `[SEP]`, `[PAD]`).
    pub tokens: BlipTokens,
    /// `visual_encoder.*`.
    pub visual_encoder: VisionTransformer,
    /// `text_decoder.*`.
    pub text_decoder: MedLm,
    /// Target positions masked for the prompt (`prompt_length`); default: the prompt's
    /// whitespace-separated words + 1 (4 for `'a picture of '` with bert-base-uncased). Set it
    /// from [`BlipDecoder::prompt_length_of`] for other prompts/vocabularies.
    pub prompt_length: i64,
    /// Dropout on (off by default).
    pub train: bool,
}

/// Outputs of [`BlipDecoder::forward`].
#[derive(Debug)]
pub struct CaptionOutput {
    /// `[B, 1+N, D]` ViT output.
    pub image_embeds: Tensor,
    /// `[B, L, V]` decoder logits.
    pub logits: Tensor,
    /// `[B, L]` LM targets used.
    pub labels: Tensor,
    /// LM loss (label smoothing 0.1, mean).
    pub loss: Tensor,
}

impl BlipDecoder {
    /// Builds the model on `device`.
    pub fn new(cfg: &BlipConfig, device: Device) -> Result<Self> {
        cfg.validate()?;
        let vs = VarStore::new(device);
        let r = vs.root();
        let vit = cfg.vit_for("captioning", false);
        let med = cfg.med_for(Some(vit.embed_dim), cfg.text_vocab(false));
        let visual_encoder = VisionTransformer::new(&(&r / "visual_encoder"), &vit);
        let text_decoder = MedLm::new(&(&r / "text_decoder"), &med)?;
        Ok(BlipDecoder {
            tokens: cfg.tokens(false),
            prompt_length: cfg.prompt.split_whitespace().count() as i64 + 1,
            vs,
            cfg: cfg.clone(),
            visual_encoder,
            text_decoder,
            train: false,
        })
    }

    /// `len(tokenizer(prompt).input_ids) - 1` with BLIP's tokenizer.
    pub fn prompt_length_of(tokenizer: &Tokenizer, prompt: &str) -> Result<i64> {
        Ok(tokenizer.encode(prompt, SpecialStyle::ClsSep, None)?.len() as i64 - 1)
    }

    /// The generation prompt `[1, P]`: `prompt` tokenised (`[CLS] ... [SEP]`), `[CLS]` replaced
    /// by `[DEC]`, the trailing `[SEP]` dropped.
    pub fn prompt_ids(&self, tokenizer: &Tokenizer, prompt: &str) -> Result<Tensor> {
        let mut ids = tokenizer.encode(prompt, SpecialStyle::ClsSep, None)?;
        ids[0] = self.tokens.bos;
        ids.pop();
        Ok(Tensor::from_slice(&ids)
            .view([1, -1])
            .to_device(self.vs.device()))
    }

    /// The LM targets of caption ids `[B, L]` (`[DEC]` first): pads and the first
    /// `prompt_length` positions -100.
    pub fn targets(&self, ids: &Tensor) -> Tensor {
        let t = lm_targets(ids, self.tokens.pad);
        let n = self.prompt_length.min(ids.size()[1]);
        if n > 0 {
            let _ = t.narrow(1, 0, n).fill_(-100);
        }
        t
    }

    /// `model(image, caption)`: `input_ids` `[B, L]` (position 0 is set to `[DEC]`), `labels`
    /// (default [`BlipDecoder::targets`]).
    pub fn forward(
        &self,
        image: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        labels: Option<&Tensor>,
    ) -> Result<CaptionOutput> {
        check_image(image, "image")?;
        check_text(input_ids, attention_mask, "input_ids")?;
        if image.size()[0] != input_ids.size()[0] {
            return Err(VlpError::input(
                "input_ids",
                format!(
                    "{} captions for {} images",
                    input_ids.size()[0],
                    image.size()[0]
                ),
            ));
        }
        let ids = with_first_token(input_ids, self.tokens.bos);
        self.forward_ids(image, &ids, attention_mask, labels)
    }

    /// Like [`BlipDecoder::forward`] but with `input_ids` used as given (HF
    /// `BlipForConditionalGeneration.forward` does not replace position 0).
    pub fn forward_ids(
        &self,
        image: &Tensor,
        ids: &Tensor,
        attention_mask: &Tensor,
        labels: Option<&Tensor>,
    ) -> Result<CaptionOutput> {
        check_image(image, "image")?;
        check_text(ids, attention_mask, "input_ids")?;
        let labels = match labels {
            Some(l) => l.to_device(ids.device()),
            None => self.targets(ids),
        };
        let image_embeds = self.visual_encoder.forward_t(image, self.train);
        let logits = self
            .text_decoder
            .logits(ids, attention_mask, &image_embeds, None, self.train);
        let loss = try_lm_loss(&logits, &labels, self.cfg.label_smoothing, false)?;
        Ok(CaptionOutput {
            image_embeds,
            logits,
            labels,
            loss,
        })
    }

    /// The generation options of the config (`num_beams`, `max_length`, `min_length`,
    /// `repetition_penalty`; EOS `[SEP]`).
    pub fn generate_options(&self) -> GenerateOptions {
        GenerateOptions {
            num_beams: self.cfg.num_beams,
            max_length: self.cfg.max_length,
            min_length: self.cfg.min_length,
            repetition_penalty: self.cfg.repetition_penalty,
            eos: self.tokens.sep,
            pad: self.tokens.pad,
        }
    }

    /// `model.generate(image, sample=False, ...)`: beam search from `prompt` (`[1, P]` or
    /// `[B, P]`, see [`BlipDecoder::prompt_ids`]) over the image; `[B, T]` ids, prompt included.
    pub fn generate(
        &self,
        image: &Tensor,
        prompt: &Tensor,
        opts: &GenerateOptions,
    ) -> Result<Tensor> {
        check_image(image, "image")?;
        let b = image.size()[0];
        let prompt = match prompt.size()[0] {
            1 => prompt.repeat([b, 1]),
            n if n == b => prompt.shallow_clone(),
            n => {
                return Err(VlpError::input(
                    "prompt",
                    format!("{n} prompts for {b} images"),
                ))
            }
        };
        let image_embeds = self.visual_encoder.forward_t(image, false);
        beam_generate(
            &self.text_decoder,
            &image_embeds,
            &prompt.to_device(image_embeds.device()),
            opts,
        )
    }

    /// `model.generate(image, sample=True, top_p, ...)`: nucleus sampling (`top_p`, HF's default
    /// `top_k` 50, repetition penalty 1.1, the config's `max_length`/`min_length`) with libtorch's
    /// global generator (`seed = None`, as the official code draws; call `tch::manual_seed` first)
    /// or a private seeded one.
    pub fn sample(
        &self,
        image: &Tensor,
        prompt: &Tensor,
        top_p: f64,
        seed: Option<u64>,
    ) -> Result<Tensor> {
        self.sample_with(image, prompt, top_p, &self.cfg, self.tokens.sep, seed)
    }

    fn sample_with(
        &self,
        image: &Tensor,
        prompt: &Tensor,
        top_p: f64,
        cfg: &BlipConfig,
        eos: i64,
        seed: Option<u64>,
    ) -> Result<Tensor> {
        check_image(image, "image")?;
        let b = image.size()[0];
        let prompt = match prompt.size()[0] {
            1 => prompt.repeat([b, 1]),
            n if n == b => prompt.shallow_clone(),
            n => {
                return Err(VlpError::input(
                    "prompt",
                    format!("{n} prompts for {b} images"),
                ))
            }
        };
        let image_embeds = self.visual_encoder.forward_t(image, false);
        let gc = GenerationConfig {
            max_length: cfg.max_length,
            min_length: cfg.min_length,
            do_sample: true,
            top_p,
            top_k: 50,
            repetition_penalty: 1.1,
            eos_token_id: eos,
            pad_token_id: self.tokens.pad,
            ..GenerationConfig::default()
        };
        let mut dec = MedDecoder::new(&self.text_decoder, &image_embeds, None);
        Ok(generate(
            &mut dec,
            &prompt.to_device(image_embeds.device()),
            &gc,
            None,
            seed,
        )?
        .sequences)
    }

    /// Decodes generated ids into captions (special tokens skipped, the prompt string stripped by
    /// its length, as `BLIP_Decoder.generate` does).
    pub fn captions(&self, tokenizer: &Tokenizer, ids: &Tensor) -> Result<Vec<String>> {
        let rows = ids.size()[0];
        (0..rows)
            .map(|i| {
                let row = Vec::<i64>::try_from(ids.get(i).to_device(Device::Cpu))?;
                let text = tokenizer.decode(&row, true)?;
                Ok(text.chars().skip(self.cfg.prompt.chars().count()).collect())
            })
            .collect()
    }
}

/// The EOS of a fixture: the last attended token of the first caption (`[SEP]`), if any.
fn eos_from_captions(ids: &Tensor, mask: &Tensor) -> Option<i64> {
    let n = mask.get(0).sum(Kind::Int64).int64_value(&[]);
    (n > 0).then(|| ids.get(0).int64_value(&[n - 1]))
}

impl VlpModel for BlipDecoder {
    var_store_accessors!();
    /// `load_checkpoint`: `visual_encoder.pos_embed` interpolated; keys outside `visual_encoder.`
    /// and `text_decoder.` (a pretraining checkpoint's encoder, momentum copies, queues, ...)
    /// dropped, as the official `strict=False` load ignores them; the LM head's tied entries a
    /// checkpoint omits are filled from their partners (present ones must be equal).
    fn adapt_state_dict(&self, mut sd: StateDict) -> Result<StateDict> {
        let grid = self.visual_encoder.cfg.grid();
        interpolate_pos_embeds(&mut sd, &["visual_encoder.pos_embed"], grid)?;
        // a pretraining checkpoint: everything but the ViT and the decoder is not in this class
        sd.retain(|k, _| k.starts_with("visual_encoder.") || k.starts_with("text_decoder."));
        complete_tied(&mut sd, &mlm_tied_pairs("text_decoder."))?;
        Ok(sd)
    }
    /// Inputs: `image`; `input_ids` + `attention_mask` (+ `labels`, else derived with the
    /// MANIFEST's `prompt_length`) for the loss; `generate_input_ids` (the prompt) for beam
    /// search with the MANIFEST's `generate_kwargs` (else the config's); EOS = `[SEP]`, taken from
    /// the last token of the first caption when captions are given. Outputs: `image_embeds`,
    /// `decoder_logits`, `loss`, `generated_ids`.
    fn forward_named(&mut self, inputs: &Tensors, extra: &serde_json::Value) -> Result<Tensors> {
        let dev = self.vs.device();
        let get = |n: &str| opt_input(inputs, n, dev);
        let image = input_on(inputs, "image", dev)?;
        if let Some(n) = extra.get("prompt_length").and_then(|v| v.as_i64()) {
            self.prompt_length = n;
        }
        let mut out = Tensors::new();
        let mut eos = self.tokens.sep;
        tch::no_grad(|| -> Result<()> {
            if let (Some(ids), Some(mask)) = (get("input_ids"), get("attention_mask")) {
                if let Some(e) = eos_from_captions(&ids, &mask) {
                    eos = e;
                }
                let labels = get("labels");
                let o = self.forward(&image, &ids, &mask, labels.as_ref())?;
                out.insert("image_embeds".into(), o.image_embeds);
                out.insert("decoder_logits".into(), o.logits);
                out.insert("loss".into(), o.loss);
            }
            if let Some(prompt) = get("generate_input_ids") {
                let kw = extra.get("generate_kwargs");
                let int = |k: &str, d: i64| {
                    kw.and_then(|v| v.get(k))
                        .and_then(|v| v.as_i64())
                        .unwrap_or(d)
                };
                let mut opts = self.generate_options();
                opts.num_beams = int("num_beams", opts.num_beams);
                opts.max_length = int("max_length", opts.max_length);
                opts.min_length = int("min_length", opts.min_length);
                opts.repetition_penalty = kw
                    .and_then(|v| v.get("repetition_penalty"))
                    .and_then(|v| v.as_f64())
                    .unwrap_or(opts.repetition_penalty);
                opts.eos = eos;
                if kw.and_then(|v| v.get("sample")).and_then(|v| v.as_bool()) == Some(true) {
                    // Nucleus sampling draws from torch's global generator: reproducible only
                    // with the seed the run used (MANIFEST `seed`); without it the probe stays
                    // uncomputed (a failure, never a pass).
                    if let Some(seed) = extra.get("seed").and_then(|v| v.as_i64()) {
                        tch::manual_seed(seed);
                        let top_p = kw
                            .and_then(|v| v.get("top_p"))
                            .and_then(|v| v.as_f64())
                            .unwrap_or(self.cfg.top_p);
                        let mut c = self.cfg.clone();
                        c.max_length = opts.max_length;
                        c.min_length = opts.min_length;
                        let ids = self.sample_with(&image, &prompt, top_p, &c, eos, None)?;
                        out.insert("generated_ids".into(), ids);
                    }
                } else {
                    out.insert(
                        "generated_ids".into(),
                        self.generate(&image, &prompt, &opts)?,
                    );
                }
            }
            Ok(())
        })?;
        Ok(out)
    }
}
