//! BLIP in the Hugging Face transformers layout (`Salesforce/blip-itm-*`,
//! `Salesforce/blip-image-captioning-*` on the Hub): one key map onto the original layout, the
//! HF `config.json` read with HF's defaults, and two registry variants that load such a
//! `model.safetensors` strictly into the original-layout models:
//!
//! | variant | HF class | Rust type | probes |
//! |---|---|---|---|
//! | `hf_retrieval` | `BlipForImageTextRetrieval` | [`HfBlipRetrieval`] (a [`BlipItm`]) | `itm_score` (`use_itm_head=True`), `itc_score`, `image_embeds` |
//! | `hf_captioning` | `BlipForConditionalGeneration` | [`HfBlipCaptioning`] (a [`BlipDecoder`]) | `decoder_logits`, `loss`, `image_embeds` |
//!
//! Key map (the official conversion script's `rename_key`, reversed): `vision_model.` →
//! `visual_encoder.` with `embeddings.class_embedding` → `cls_token`,
//! `embeddings.position_embedding` → `pos_embed`, `embeddings.patch_embedding` →
//! `patch_embed.proj`, `encoder.layers.N` → `blocks.N`, `layer_norm1/2` → `norm1/2`,
//! `self_attn.qkv` → `attn.qkv`, `self_attn.projection` → `attn.proj`, `post_layernorm` → `norm`;
//! text keys (`text_encoder.*`, `text_decoder.*`, `vision_proj`, `text_proj`, `itm_head`) are
//! the same. HF saves no `embeddings.position_ids` (filled with `arange`) and de-duplicates the
//! tied LM head (`cls.predictions.decoder.*`, filled from the word embeddings / `bias`).
//!
//! HF config defaults that differ from the original BLIP, applied when a key is absent (as HF
//! does): vision `layer_norm_eps` **1e-5** (original 1e-6), text `num_attention_heads` **8**
//! (original 12), `label_smoothing` **0.0** (original 0.1), `image_size` 384. HF never puts
//! `[ENC]` at position 0 (the ITM head reads `[CLS]`, like the original `blip_itm.py`).
use super::caption::BlipDecoder;
use super::retrieval::BlipItm;
use super::{opt_input, BlipConfig, BlipTokens};
use crate::albef::input_on;
use crate::{Tensors, VlpModel};
use serde_json::Value;
use tch::{nn::VarStore, Device, Kind, Tensor};
use vlp_core::checkpoint::StateDict;
use vlp_core::layers::bert::BertConfig;
use vlp_core::layers::vit::VitConfig;
use vlp_core::layers::Activation;
use vlp_core::{Result, VlpError};

/// The original-layout name of an HF-layout key (text keys are unchanged); `None` for a
/// `vision_model.` key outside the map.
pub fn hf_key_to_original(k: &str) -> Option<String> {
    let Some(rest) = k.strip_prefix("vision_model.") else {
        return Some(k.to_string());
    };
    let v = |s: &str| Some(format!("visual_encoder.{s}"));
    if rest == "embeddings.class_embedding" {
        return v("cls_token");
    }
    if rest == "embeddings.position_embedding" {
        return v("pos_embed");
    }
    if let Some(p) = rest.strip_prefix("embeddings.patch_embedding.") {
        return v(&format!("patch_embed.proj.{p}"));
    }
    if let Some(p) = rest.strip_prefix("post_layernorm.") {
        return v(&format!("norm.{p}"));
    }
    let rest = rest.strip_prefix("encoder.layers.")?;
    let (n, sub) = rest.split_once('.')?;
    let sub = [
        ("layer_norm1.", "norm1."),
        ("layer_norm2.", "norm2."),
        ("self_attn.qkv.", "attn.qkv."),
        ("self_attn.projection.", "attn.proj."),
        ("mlp.fc1.", "mlp.fc1."),
        ("mlp.fc2.", "mlp.fc2."),
    ]
    .iter()
    .find_map(|(a, b)| sub.strip_prefix(a).map(|t| format!("{b}{t}")))?;
    v(&format!("blocks.{n}.{sub}"))
}

/// The HF-layout name of an original-layout key (inverse of [`hf_key_to_original`]); `None` for
/// keys HF does not have (momentum copies, queues, `position_ids`, ...).
pub fn original_key_to_hf(k: &str) -> Option<String> {
    if k.ends_with("embeddings.position_ids")
        || k.contains("_m.")
        || k.contains("queue")
        || k == "temp"
    {
        return None;
    }
    let Some(rest) = k.strip_prefix("visual_encoder.") else {
        return Some(k.to_string());
    };
    let v = |s: &str| Some(format!("vision_model.{s}"));
    match rest {
        "cls_token" => return v("embeddings.class_embedding"),
        "pos_embed" => return v("embeddings.position_embedding"),
        _ => {}
    }
    if let Some(p) = rest.strip_prefix("patch_embed.proj.") {
        return v(&format!("embeddings.patch_embedding.{p}"));
    }
    if let Some(p) = rest.strip_prefix("norm.") {
        return v(&format!("post_layernorm.{p}"));
    }
    let rest = rest.strip_prefix("blocks.")?;
    let (n, sub) = rest.split_once('.')?;
    let sub = [
        ("norm1.", "layer_norm1."),
        ("norm2.", "layer_norm2."),
        ("attn.qkv.", "self_attn.qkv."),
        ("attn.proj.", "self_attn.projection."),
        ("mlp.fc1.", "mlp.fc1."),
        ("mlp.fc2.", "mlp.fc2."),
    ]
    .iter()
    .find_map(|(a, b)| sub.strip_prefix(a).map(|t| format!("{b}{t}")))?;
    v(&format!("encoder.layers.{n}.{sub}"))
}

/// Renames an HF-layout state dict to the original layout (errors name an unmapped key).
pub fn hf_state_dict_to_original(sd: StateDict) -> Result<StateDict> {
    let mut out = StateDict::new();
    for (k, t) in sd.iter() {
        let nk = hf_key_to_original(k).ok_or_else(|| {
            VlpError::Msg(format!(
                "HF BLIP key `{k}` has no original-layout counterpart"
            ))
        })?;
        out.insert(nk, t.shallow_clone());
    }
    Ok(out)
}

/// Adds `{prefix}embeddings.position_ids` = `arange(n)` `[1, n]` when absent (HF does not save
/// the buffer).
pub fn fill_position_ids(sd: &mut StateDict, prefix: &str, n: i64) {
    let k = format!("{prefix}embeddings.position_ids");
    if !sd.contains_key(&k) {
        sd.insert(
            k,
            Tensor::arange(n, (Kind::Int64, Device::Cpu)).unsqueeze(0),
        );
    }
}

fn obj<'a>(v: &'a Value, k: &str) -> Result<&'a serde_json::Map<String, Value>> {
    match v.get(k) {
        None | Some(Value::Null) => Ok(EMPTY.get_or_init(serde_json::Map::new)),
        Some(Value::Object(m)) => Ok(m),
        Some(other) => Err(VlpError::Msg(format!(
            "HF BLIP config `{k}`: expected an object, got {other}"
        ))),
    }
}

static EMPTY: std::sync::OnceLock<serde_json::Map<String, Value>> = std::sync::OnceLock::new();

fn int(m: &serde_json::Map<String, Value>, sec: &str, k: &str, d: i64) -> Result<i64> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(d),
        Some(v) => v.as_i64().ok_or_else(|| {
            VlpError::Msg(format!(
                "HF BLIP config `{sec}.{k}`: expected an integer, got {v}"
            ))
        }),
    }
}

fn float(m: &serde_json::Map<String, Value>, sec: &str, k: &str, d: f64) -> Result<f64> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(d),
        Some(v) => v.as_f64().ok_or_else(|| {
            VlpError::Msg(format!(
                "HF BLIP config `{sec}.{k}`: expected a number, got {v}"
            ))
        }),
    }
}

fn act(m: &serde_json::Map<String, Value>, sec: &str) -> Result<Activation> {
    let a = m
        .get("hidden_act")
        .and_then(Value::as_str)
        .unwrap_or("gelu");
    serde_json::from_value(Value::String(a.into())).map_err(|_| VlpError::Unsupported {
        what: format!("HF BLIP `{sec}.hidden_act` `{a}`"),
    })
}

/// Reads an HF `BlipConfig` `config.json` (with HF's defaults for absent keys, see the module
/// docs) into a [`BlipConfig`] of the original layout.
pub fn blip_config_from_hf(v: &Value) -> Result<BlipConfig> {
    let (tc, vc) = (obj(v, "text_config")?, obj(v, "vision_config")?);
    let (t, s) = ("text_config", "vision_config");
    let vision_act = act(vc, s)?;
    if vision_act != Activation::Gelu {
        return Err(VlpError::Unsupported {
            what: format!("HF BLIP vision activation {vision_act:?}"),
        });
    }
    let dv = int(vc, s, "hidden_size", 768)?;
    let img = int(vc, s, "image_size", 384)?;
    let vit = VitConfig {
        img_size: img,
        patch_size: int(vc, s, "patch_size", 16)?,
        embed_dim: dv,
        depth: int(vc, s, "num_hidden_layers", 12)?,
        num_heads: int(vc, s, "num_attention_heads", 12)?,
        mlp_ratio: int(vc, s, "intermediate_size", 3072)? as f64 / dv as f64,
        qkv_bias: true,
        layer_norm_eps: float(vc, s, "layer_norm_eps", 1e-5)?,
        ..VitConfig::default()
    };
    let vocab = int(tc, t, "vocab_size", 30524)?;
    let med = BertConfig {
        vocab_size: vocab,
        hidden_size: int(tc, t, "hidden_size", 768)?,
        num_hidden_layers: int(tc, t, "num_hidden_layers", 12)?,
        num_attention_heads: int(tc, t, "num_attention_heads", 8)?,
        intermediate_size: int(tc, t, "intermediate_size", 3072)?,
        hidden_act: act(tc, t)?,
        hidden_dropout_prob: float(tc, t, "hidden_dropout_prob", 0.0)?,
        attention_probs_dropout_prob: float(tc, t, "attention_probs_dropout_prob", 0.0)?,
        max_position_embeddings: int(tc, t, "max_position_embeddings", 512)?,
        layer_norm_eps: float(tc, t, "layer_norm_eps", 1e-12)?,
        pad_token_id: int(tc, t, "pad_token_id", 0)?,
        encoder_width: Some(dv),
        add_cross_attention: true,
        add_type_embeddings: Some(false),
        ..BertConfig::default()
    };
    let guess = BlipTokens::for_vocab(vocab, med.pad_token_id);
    let tokens = BlipTokens {
        pad: med.pad_token_id,
        cls: guess.cls,
        sep: int(tc, t, "sep_token_id", 102)?,
        bos: int(tc, t, "bos_token_id", 30522)?,
        enc: guess.enc,
    };
    let top = v
        .as_object()
        .ok_or_else(|| VlpError::Msg("HF BLIP config: expected an object".into()))?;
    let cfg = BlipConfig {
        med,
        vision: Some(vit),
        image_size: Some(img),
        embed_dim: int(top, "", "image_text_hidden_size", 256)?,
        label_smoothing: float(tc, t, "label_smoothing", 0.0)?,
        special_tokens: Some(tokens),
        ..BlipConfig::default()
    };
    cfg.validate()?;
    Ok(cfg)
}

/// HF `BlipForImageTextRetrieval` (`Salesforce/blip-itm-*`) as an original-layout [`BlipItm`].
#[derive(Debug)]
pub struct HfBlipRetrieval {
    /// The model (original layout).
    pub inner: BlipItm,
}

impl HfBlipRetrieval {
    /// Builds the model from an HF `config.json`.
    pub fn from_hf_config(v: &Value, device: Device) -> Result<Self> {
        Ok(HfBlipRetrieval {
            inner: BlipItm::new(&blip_config_from_hf(v)?, device)?,
        })
    }
}

impl VlpModel for HfBlipRetrieval {
    fn var_store(&self) -> &VarStore {
        self.inner.var_store()
    }
    fn var_store_mut(&mut self) -> &mut VarStore {
        self.inner.var_store_mut()
    }
    /// [`hf_state_dict_to_original`], `position_ids` filled, then `BLIP_ITM`'s adaptation.
    fn adapt_state_dict(&self, sd: StateDict) -> Result<StateDict> {
        let mut sd = hf_state_dict_to_original(sd)?;
        fill_position_ids(
            &mut sd,
            "text_encoder.",
            self.inner.text_encoder.cfg.max_position_embeddings,
        );
        self.inner.adapt_state_dict(sd)
    }
    /// Inputs: `image` (`pixel_values`), `input_ids` (`[CLS]` first, as HF feeds them),
    /// `attention_mask`. Outputs: `image_embeds`, `itm_score` (`[B, 2]`, image b vs text b),
    /// `itc_score` (`[B_img, B_txt]` cosine similarities).
    fn forward_named(&mut self, inputs: &Tensors, _extra: &Value) -> Result<Tensors> {
        let dev = self.inner.var_store().device();
        let image = input_on(inputs, "image", dev)?;
        let ids = input_on(inputs, "input_ids", dev)?;
        let mask = input_on(inputs, "attention_mask", dev)?;
        let h = &self.inner.heads;
        tch::no_grad(|| {
            let (emb, img_feat) = h.image_features(&image)?;
            let (_, txt_feat) = h.text_features(&ids, &mask)?;
            let itm = h.itm_logits(&ids, &mask, &emb)?;
            Ok([
                ("itc_score", img_feat.matmul(&txt_feat.tr())),
                ("itm_score", itm),
                ("image_embeds", emb),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect())
        })
    }
}

/// HF `BlipForConditionalGeneration` (`Salesforce/blip-image-captioning-*`) as an
/// original-layout [`BlipDecoder`] (label smoothing from the HF config).
#[derive(Debug)]
pub struct HfBlipCaptioning {
    /// The model (original layout).
    pub inner: BlipDecoder,
}

impl HfBlipCaptioning {
    /// Builds the model from an HF `config.json`.
    pub fn from_hf_config(v: &Value, device: Device) -> Result<Self> {
        Ok(HfBlipCaptioning {
            inner: BlipDecoder::new(&blip_config_from_hf(v)?, device)?,
        })
    }
}

impl VlpModel for HfBlipCaptioning {
    fn var_store(&self) -> &VarStore {
        self.inner.var_store()
    }
    fn var_store_mut(&mut self) -> &mut VarStore {
        self.inner.var_store_mut()
    }
    /// [`hf_state_dict_to_original`], `position_ids` filled, the tied LM head completed, then
    /// `BLIP_Decoder`'s adaptation.
    fn adapt_state_dict(&self, sd: StateDict) -> Result<StateDict> {
        let mut sd = hf_state_dict_to_original(sd)?;
        fill_position_ids(
            &mut sd,
            "text_decoder.bert.",
            self.inner.text_decoder.bert.cfg.max_position_embeddings,
        );
        self.inner.adapt_state_dict(sd)
    }
    /// Inputs: `image`, `input_ids` (used as given, as HF does), `attention_mask`, optional
    /// `labels` (`-100` = ignored). Outputs: `image_embeds`, `decoder_logits`, `loss` (with
    /// labels).
    fn forward_named(&mut self, inputs: &Tensors, _extra: &Value) -> Result<Tensors> {
        let dev = self.inner.var_store().device();
        let image = input_on(inputs, "image", dev)?;
        let ids = input_on(inputs, "input_ids", dev)?;
        let mask = input_on(inputs, "attention_mask", dev)?;
        let labels = opt_input(inputs, "labels", dev);
        let o = tch::no_grad(|| self.inner.forward_ids(&image, &ids, &mask, labels.as_ref()))?;
        let mut out = Tensors::new();
        if labels.is_some() {
            out.insert("loss".into(), o.loss);
        }
        out.insert("image_embeds".into(), o.image_embeds);
        out.insert("decoder_logits".into(), o.logits);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_map_round_trips() {
        for k in [
            "visual_encoder.cls_token",
            "visual_encoder.pos_embed",
            "visual_encoder.patch_embed.proj.weight",
            "visual_encoder.blocks.11.norm1.bias",
            "visual_encoder.blocks.3.attn.qkv.weight",
            "visual_encoder.blocks.3.attn.proj.bias",
            "visual_encoder.blocks.0.mlp.fc2.weight",
            "visual_encoder.norm.weight",
            "text_encoder.encoder.layer.0.crossattention.self.key.weight",
            "itm_head.bias",
        ] {
            let hf = original_key_to_hf(k).unwrap();
            assert_eq!(hf_key_to_original(&hf).as_deref(), Some(k), "{hf}");
        }
        assert_eq!(
            original_key_to_hf("visual_encoder.blocks.3.attn.proj.bias").as_deref(),
            Some("vision_model.encoder.layers.3.self_attn.projection.bias")
        );
        assert!(hf_key_to_original("vision_model.encoder.layers.0.foo.weight").is_none());
        assert!(original_key_to_hf("visual_encoder_m.pos_embed").is_none());
    }

    #[test]
    fn hf_defaults_are_applied() {
        let c = blip_config_from_hf(&serde_json::json!({"text_config": {}, "vision_config": {}}))
            .unwrap();
        let v = c.vision.clone().unwrap();
        assert_eq!(
            (v.layer_norm_eps, v.img_size, v.embed_dim),
            (1e-5, 384, 768)
        );
        assert_eq!(c.med.num_attention_heads, 8);
        assert_eq!(c.label_smoothing, 0.0);
        assert_eq!(c.tokens(false).bos, 30522);
    }
}
