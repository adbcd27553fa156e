//! ALBEF for NLVR2, `models/model_nlvr.py:ALBEF`: one text, two images.
//!
//! The text encoder is forced to 18 layers (`bert_config.num_hidden_layers = 18`): layers below
//! `fusion_layer` (6) are text-only, and layer `i >= fusion_layer` cross-attends to image
//! `(i - fusion_layer) % 2` (xbert's list of `encoder_hidden_states`), so the fusion layers
//! alternate between the two images. `share_cross_attention` ties the cross-attention **key and
//! value** Linears (weight and bias) of layers (6,7), (8,9), …, (16,17) — the official loop
//! hard-codes these six pairs; queries and output projections stay separate. The head is
//! `cls_head = Linear(D, D) → ReLU → Linear(D, 2)` on the fused `[CLS]`; with `distill` the
//! training loss is distilled from the momentum model (momentum 0.995, hard-coded).
//!
//! The images come as one batch `[image0 (B) ; image1 (B)]`.
//!
//! Keys: `visual_encoder.*`, `text_encoder.*` (18 layers), `cls_head.*`, and the `*_m` copies.
//! The official state dict lists the tied tensors under both layers' names
//! (`…layer.6.crossattention.self.key.weight` and `…layer.7.…`, same storage); the `VarStore`
//! does too (the even layer's entries share the odd layer's tensors), so checkpoints load
//! strictly; [`crate::VlpModel::adapt_state_dict`] checks that both entries are equal and fills
//! one from the other if a de-duplicated checkpoint lacks it.
use super::ve::{ClassifierMomentum, ClassifierOutput};
use super::{
    check_image, check_text, classifier_train_loss, cls_token, complete_tied, drop_prefixes,
    has_pretrain_layout, init_momentum, input_on, interpolate_pos_embeds, resize_patch_embeds,
    scalar_input, AlbefBert, AlbefConfig, ClsHead, MomentumPairs, PRETRAIN_ONLY_PREFIXES,
};
use crate::common::{var_store_accessors, POS_EMBED_KEYS};
use crate::{Tensors, VlpModel};
use tch::{nn, nn::VarStore, Device, Tensor};
use vlp_core::checkpoint::StateDict;
use vlp_core::layers::bert::{BertConfig, BertLayer, CrossInput};
use vlp_core::layers::vit::VisionTransformer;
use vlp_core::{Result, VlpError};

/// The online/momentum module pairs of `model_nlvr.py`.
pub const NLVR_PAIRS: MomentumPairs = &[
    ("visual_encoder.", "visual_encoder_m."),
    ("text_encoder.", "text_encoder_m."),
    ("cls_head.", "cls_head_m."),
];

/// What a text-assignment checkpoint ([`super::AlbefNlvrPretrain`]) holds that this class
/// lacks.
pub const TA_ONLY_PREFIXES: &[&str] = &["ta_head.", "vision_proj.", "text_proj.", "temp"];

/// Number of text layers of the NLVR2 model (forced by the official class).
pub const NLVR_LAYERS: i64 = 18;

/// The text-encoder layout of the NLVR2 model: its layer count and the first layer of the tied
/// pairs (official: 18 and 6; see [`AlbefConfig::nlvr_layers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NlvrLayout {
    /// Text-encoder layers.
    pub layers: usize,
    /// First layer of the first tied pair (and of the replicated fusion layers).
    pub first: usize,
}

impl NlvrLayout {
    /// The official layout (18 layers, pairs from 6).
    pub const OFFICIAL: NlvrLayout = NlvrLayout {
        layers: NLVR_LAYERS as usize,
        first: 6,
    };

    /// The layout of a config: official unless `nlvr_layers` is set.
    pub fn of(cfg: &AlbefConfig) -> Result<NlvrLayout> {
        match cfg.nlvr_layers {
            None => Ok(Self::OFFICIAL),
            Some(n) => {
                let f = cfg.bert.fusion_layer.unwrap_or(n);
                if n < f || (n - f) % 2 != 0 {
                    return Err(VlpError::Msg(format!(
                        "albef nlvr2: nlvr_layers {n} must be fusion_layer {f} plus an even number"
                    )));
                }
                Ok(NlvrLayout {
                    layers: n as usize,
                    first: f as usize,
                })
            }
        }
    }

    /// The layer pairs whose cross-attention key/value are tied, `(first + 2k, first + 2k + 1)`
    /// (`share_cross_attention`; official `(6,7)…(16,17)`); the first layer of each pair uses
    /// the second one's Linears.
    pub fn tied_layer_pairs(self) -> impl Iterator<Item = (usize, usize)> {
        let n = self.layers.saturating_sub(self.first) / 2;
        (0..n).map(move |k| (self.first + 2 * k, self.first + 2 * k + 1))
    }
}

/// The official tied layer pairs `(6 + 2k, 7 + 2k)`, `k < 6`.
pub fn tied_layer_pairs() -> impl Iterator<Item = (usize, usize)> {
    NlvrLayout::OFFICIAL.tied_layer_pairs()
}

/// The state-dict key pairs `(layer 7+2k, layer 6+2k)` of the official tied tensors under
/// `prefix` (`text_encoder.`, `text_encoder_m.`).
pub fn tied_keys(prefix: &str) -> Vec<(String, String)> {
    tied_keys_of(NlvrLayout::OFFICIAL, prefix)
}

/// [`tied_keys`] of a layout.
pub fn tied_keys_of(layout: NlvrLayout, prefix: &str) -> Vec<(String, String)> {
    let mut v = vec![];
    for (a, b) in layout.tied_layer_pairs() {
        for proj in ["key", "value"] {
            for t in ["weight", "bias"] {
                let k =
                    |l: usize| format!("{prefix}encoder.layer.{l}.crossattention.self.{proj}.{t}");
                v.push((k(b), k(a)));
            }
        }
    }
    v
}

/// The NLVR2 BERT config: `cfg` with the layout's layer count (official: 18).
pub fn nlvr_bert_config(cfg: &BertConfig, layout: NlvrLayout) -> Result<BertConfig> {
    let mut c = cfg.clone();
    c.num_hidden_layers = layout.layers as i64;
    c.validate()?;
    let f = c.fusion_layer.unwrap_or(c.num_hidden_layers);
    if f > layout.first as i64 {
        return Err(VlpError::Msg(format!(
            "albef nlvr2: bert.fusion_layer {f} > {} leaves the tied layers {}.. without cross-attention",
            layout.first, layout.first
        )));
    }
    Ok(c)
}

/// Builds the text encoder under `p` (official: 18 layers) with the tied cross-attention
/// key/value.
pub fn nlvr_text_encoder(p: &nn::Path, cfg: &BertConfig, layout: NlvrLayout) -> Result<AlbefBert> {
    let cfg = nlvr_bert_config(cfg, layout)?;
    let pl = p / "encoder" / "layer";
    let n = layout.layers;
    let sharing: Vec<usize> = layout.tied_layer_pairs().map(|(a, _)| a).collect();
    let mut layers: Vec<Option<BertLayer>> = (0..n).map(|_| None).collect();
    for (i, slot) in layers.iter_mut().enumerate() {
        if !sharing.contains(&i) {
            *slot = Some(BertLayer::new(
                &(&pl / i),
                &cfg.layer_config(cfg.layer_has_cross(i as i64)),
            ));
        }
    }
    for (a, b) in layout.tied_layer_pairs() {
        let partner = layers[b].as_ref().expect("built above");
        let layer = BertLayer::new_sharing_cross_kv(&(&pl / a), &cfg.layer_config(true), partner);
        layers[a] = Some(layer);
    }
    AlbefBert::with_layers(
        p,
        &cfg,
        layers
            .into_iter()
            .map(|l| l.expect("every layer built"))
            .collect(),
    )
}

/// The NLVR2 encoder's text states for text `[B, L]` against image states `image0` and
/// `image1` (`[B, 1+N, D]` each, or `[P, 1+N, D]` with sentence `b` about pair `rows[b]`;
/// fusion layers alternate between them), no image mask.
pub(crate) fn two_image_states(
    bert: &AlbefBert,
    ids: &Tensor,
    mask: &Tensor,
    (image0, image1): (&Tensor, &Tensor),
    rows: Option<&Tensor>,
    train: bool,
) -> Tensor {
    let cross = [
        CrossInput::gathered(image0, rows),
        CrossInput::gathered(image1, rows),
    ];
    bert.multimodal(ids, mask, &cross, train)
}

/// `models/model_nlvr.py:ALBEF`.
#[derive(Debug)]
pub struct AlbefNlvr {
    vs: VarStore,
    /// The configuration.
    pub cfg: AlbefConfig,
    /// `visual_encoder.*`.
    pub visual_encoder: VisionTransformer,
    /// `text_encoder.*` (18 layers, tied cross-attention key/value).
    pub text_encoder: AlbefBert,
    /// `cls_head.*` (2 classes).
    pub cls_head: ClsHead,
    /// Momentum copies (with `distill`).
    pub momentum: Option<ClassifierMomentum>,
    /// Dropout on (off by default).
    pub train: bool,
}

impl AlbefNlvr {
    /// Builds the model on `device` (momentum copies = online weights when `distill`).
    pub fn new(cfg: &AlbefConfig, device: Device) -> Result<Self> {
        cfg.validate()?;
        let layout = NlvrLayout::of(cfg)?;
        let vs = VarStore::new(device);
        let r = vs.root();
        let vit = cfg.vit();
        let d = cfg.bert.hidden_size;
        let visual_encoder = VisionTransformer::new(&(&r / "visual_encoder"), &vit);
        let text_encoder = nlvr_text_encoder(&(&r / "text_encoder"), &cfg.bert, layout)?;
        let cls_head = ClsHead::new(&(&r / "cls_head"), d, 2);
        let momentum = if cfg.distill {
            Some(ClassifierMomentum {
                visual_encoder_m: VisionTransformer::new(&(&r / "visual_encoder_m"), &vit),
                text_encoder_m: nlvr_text_encoder(&(&r / "text_encoder_m"), &cfg.bert, layout)?,
                cls_head_m: ClsHead::new(&(&r / "cls_head_m"), d, 2),
            })
        } else {
            None
        };
        if momentum.is_some() {
            init_momentum(&vs, NLVR_PAIRS)?;
        }
        Ok(AlbefNlvr {
            vs,
            cfg: cfg.clone(),
            visual_encoder,
            text_encoder,
            cls_head,
            momentum,
            train: false,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn logits_of(
        vit: &VisionTransformer,
        bert: &AlbefBert,
        head: &ClsHead,
        images: &Tensor,
        pair_index: Option<&Tensor>,
        ids: &Tensor,
        mask: &Tensor,
        train: bool,
    ) -> (Tensor, Tensor) {
        let image_embeds = vit.forward_t(images, train);
        let p = image_embeds.size()[0] / 2;
        let (i0, i1) = (image_embeds.narrow(0, 0, p), image_embeds.narrow(0, p, p));
        let h = two_image_states(bert, ids, mask, (&i0, &i1), pair_index, train);
        (image_embeds, head.forward(&cls_token(&h)))
    }

    /// [`Self::logits_of`] with this model's (not the momentum model's) modules.
    fn own_logits(
        &self,
        images: &Tensor,
        rows: Option<&Tensor>,
        ids: &Tensor,
        mask: &Tensor,
    ) -> (Tensor, Tensor) {
        Self::logits_of(
            &self.visual_encoder,
            &self.text_encoder,
            &self.cls_head,
            images,
            rows,
            ids,
            mask,
            self.train,
        )
    }

    /// Checks a `[image0 (P); image1 (P)]` batch against `B` sentences: `P = B` without
    /// `pair_index`; with it, `pair_index` is `[B]` with values in `0..P` (returned as Int64 on
    /// the images' device).
    fn check_grouped(
        images: &Tensor,
        pair_index: Option<&Tensor>,
        ids: &Tensor,
        mask: &Tensor,
    ) -> Result<Option<Tensor>> {
        let Some(ix) = pair_index else {
            Self::check(images, ids, mask)?;
            return Ok(None);
        };
        check_image(images, "image")?;
        check_text(ids, mask, "input_ids")?;
        let n = images.size()[0];
        if n % 2 != 0 {
            return Err(VlpError::input(
                "image",
                format!("expected [image0 ; image1] = 2 x P images, got {n}"),
            ));
        }
        let idx = super::check_row_index(
            ix,
            ids.size()[0],
            n / 2,
            "pair_index",
            "one image pair per sentence",
            images.device(),
        )?;
        Ok(Some(idx))
    }

    fn check(images: &Tensor, ids: &Tensor, mask: &Tensor) -> Result<()> {
        check_image(images, "image")?;
        check_text(ids, mask, "input_ids")?;
        if images.size()[0] != 2 * ids.size()[0] {
            return Err(VlpError::input(
                "image",
                format!(
                    "expected [image0 ; image1] = 2 x {} images, got {}",
                    ids.size()[0],
                    images.size()[0]
                ),
            ));
        }
        Ok(())
    }

    /// Evaluation forward (`train=False`): `images` = `[image0 (B) ; image1 (B)]`, text `[B, L]`;
    /// returns the image embeddings (`[2B, 1+N, D]`) and `[B, 2]` logits.
    pub fn forward(
        &self,
        images: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<ClassifierOutput> {
        self.forward_grouped(images, None, input_ids, attention_mask)
    }

    /// [`AlbefNlvr::forward`] for `B` sentences about `P ≤ B` image pairs, each pair encoded
    /// once: `images` = `[image0 (P) ; image1 (P)]`, sentence `b` is about pair
    /// `pair_index[b]` (`None`: `P = B`, one pair per sentence). Image embeddings `[2P, 1+N, D]`.
    pub fn forward_grouped(
        &self,
        images: &Tensor,
        pair_index: Option<&Tensor>,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<ClassifierOutput> {
        let idx = Self::check_grouped(images, pair_index, input_ids, attention_mask)?;
        let (image_embeds, logits) =
            self.own_logits(images, idx.as_ref(), input_ids, attention_mask);
        Ok(ClassifierOutput {
            image_embeds,
            logits,
        })
    }

    /// Training loss (`train=True`): CE, distilled from the momentum model (after its update)
    /// when `distill`.
    pub fn train_loss(
        &self,
        images: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        targets: &Tensor,
        alpha: f64,
    ) -> Result<Tensor> {
        self.train_loss_grouped(images, None, input_ids, attention_mask, targets, alpha)
    }

    /// [`AlbefNlvr::train_loss`] over grouped pairs (see [`AlbefNlvr::forward_grouped`]).
    pub fn train_loss_grouped(
        &self,
        images: &Tensor,
        pair_index: Option<&Tensor>,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        targets: &Tensor,
        alpha: f64,
    ) -> Result<Tensor> {
        let idx = Self::check_grouped(images, pair_index, input_ids, attention_mask)?;
        let (_, logits) = self.own_logits(images, idx.as_ref(), input_ids, attention_mask);
        let momentum_logits = self.momentum.as_ref().map(|m| {
            let idx = idx.as_ref();
            move || {
                Self::logits_of(
                    &m.visual_encoder_m,
                    &m.text_encoder_m,
                    &m.cls_head_m,
                    images,
                    idx,
                    input_ids,
                    attention_mask,
                    self.train,
                )
                .1
            }
        });
        classifier_train_loss(
            &self.vs,
            NLVR_PAIRS,
            &logits,
            targets,
            alpha,
            momentum_logits,
        )
    }
}

/// `Pretrain_nlvr.py`'s conversion of a pretraining checkpoint: `bert.` removed from the text
/// keys, and each fusion layer `n >= 6` of the 12-layer encoder replicated into layers
/// `2(n-6)+6` and `2(n-6)+7` of the 18-layer one.
pub(crate) fn replicate_pretrain_layers(sd: &mut StateDict, first: usize) -> Result<()> {
    let keys: Vec<String> = sd.keys().filter(|k| k.contains("bert.")).cloned().collect();
    for k in keys {
        let t = sd.remove(&k).expect("listed");
        let new = k.replacen("bert.", "", 1);
        let parts: Vec<&str> = new.split('.').collect();
        if parts.len() > 3 && parts[1] == "encoder" && parts[2] == "layer" {
            let n: usize = parts[3].parse().map_err(|_| {
                VlpError::Msg(format!(
                    "{k}: layer number `{}` is not an integer",
                    parts[3]
                ))
            })?;
            if n >= first {
                for l in [2 * (n - first) + first, 2 * (n - first) + first + 1] {
                    let mut p = parts.clone();
                    let ls = l.to_string();
                    p[3] = &ls;
                    sd.insert(p.join("."), t.shallow_clone());
                }
                continue;
            }
        }
        sd.insert(new, t);
    }
    Ok(())
}

impl VlpModel for AlbefNlvr {
    var_store_accessors!();
    /// `NLVR.py`: `visual_encoder(_m).pos_embed` interpolated to the model's grid. The tied
    /// cross-attention entries (layers (6,7), …, (16,17), key/value weight/bias) must be equal;
    /// one missing is filled from its partner. A pretraining checkpoint (`text_encoder.bert.*`)
    /// is converted as `Pretrain_nlvr.py` does (rename, fusion layer `n` → layers `2(n-6)+6` and
    /// `2(n-6)+7`), dropping the modules this class lacks; `cls_head(_m)` are then missing (load
    /// with `LoadMode::Partial`, as the official `strict=False`). A text-assignment checkpoint
    /// loads without its `ta_head`, projections and `temp` ([`TA_ONLY_PREFIXES`]).
    fn adapt_state_dict(&self, mut sd: StateDict) -> Result<StateDict> {
        let grid = self.cfg.vit().grid();
        interpolate_pos_embeds(&mut sd, POS_EMBED_KEYS, grid)?;
        resize_patch_embeds(&mut sd, self.cfg.vit().patch_size);
        if has_pretrain_layout(&sd) {
            replicate_pretrain_layers(&mut sd, NlvrLayout::of(&self.cfg)?.first)?;
            drop_prefixes(&mut sd, PRETRAIN_ONLY_PREFIXES);
        }
        // A text-assignment checkpoint (`pretrain_model_nlvr.pth`): what `NLVR.py`'s
        // `strict=False` load leaves out.
        drop_prefixes(&mut sd, TA_ONLY_PREFIXES);
        if self.momentum.is_none() {
            drop_prefixes(
                &mut sd,
                &["visual_encoder_m.", "text_encoder_m.", "cls_head_m."],
            );
        }
        let layout = NlvrLayout::of(&self.cfg)?;
        let mut pairs = tied_keys_of(layout, "text_encoder.");
        if self.momentum.is_some() {
            pairs.extend(tied_keys_of(layout, "text_encoder_m."));
        }
        complete_tied(&mut sd, &pairs)?;
        Ok(sd)
    }
    /// Inputs: `image` (`[image0 ; image1]`), `input_ids`, `attention_mask`, optional `targets`
    /// and `alpha`. Outputs: `image_embeds`, `logits`, and `train_loss` when `targets` are given.
    fn forward_named(&mut self, inputs: &Tensors, extra: &serde_json::Value) -> Result<Tensors> {
        let dev = self.vs.device();
        let image = input_on(inputs, "image", dev)?;
        let ids = input_on(inputs, "input_ids", dev)?;
        let mask = input_on(inputs, "attention_mask", dev)?;
        let alpha = scalar_input(inputs, extra, "alpha", self.cfg.alpha);
        tch::no_grad(|| {
            let out = self.forward(&image, &ids, &mask)?;
            let mut t = Tensors::new();
            if let Some(targets) = inputs.get("targets") {
                let loss = self.train_loss(&image, &ids, &mask, &targets.to_device(dev), alpha)?;
                t.insert("train_loss".into(), loss);
            }
            t.insert("image_embeds".into(), out.image_embeds);
            t.insert("logits".into(), out.logits);
            Ok(t)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;
    use vlp_core::checkpoint::{load_state_dict, state_dict_of, LoadMode};

    fn small(nlvr_layers: Option<i64>) -> AlbefConfig {
        AlbefConfig {
            nlvr_layers,
            ..super::super::tiny_test_config(4, 2)
        }
    }

    #[test]
    fn official_layout_by_default_and_a_scaled_one_on_request() {
        assert_eq!(NlvrLayout::of(&small(None)).unwrap(), NlvrLayout::OFFICIAL);
        let pairs: Vec<_> = NlvrLayout::OFFICIAL.tied_layer_pairs().collect();
        assert_eq!(pairs.first(), Some(&(6, 7)));
        assert_eq!(pairs.last(), Some(&(16, 17)));
        let l = NlvrLayout::of(&small(Some(6))).unwrap();
        assert_eq!(
            l,
            NlvrLayout {
                layers: 6,
                first: 2
            }
        );
        assert_eq!(
            l.tied_layer_pairs().collect::<Vec<_>>(),
            vec![(2, 3), (4, 5)]
        );
        assert!(NlvrLayout::of(&small(Some(5))).is_err());
    }

    #[test]
    fn a_small_pretraining_checkpoint_fills_every_text_layer() {
        tch::manual_seed(0);
        let cfg = small(Some(6));
        let pre = super::super::AlbefPretrain::new(&cfg, Device::Cpu).unwrap();
        let sd = state_dict_of(pre.var_store());
        let mut m = AlbefNlvr::new(&cfg, Device::Cpu).unwrap();
        let sd = m.adapt_state_dict(sd).unwrap();
        let r = load_state_dict(m.var_store_mut(), &sd, LoadMode::Partial, "pretrain").unwrap();
        assert!(r.unexpected.is_empty(), "{r}");
        assert!(
            r.missing.iter().all(|k| k.key.starts_with("cls_head.")),
            "{r}"
        );
        // Pretraining fusion layer 3 is copied to layers 4 and 5 (4's key/value tied to 5's).
        let q = |l: usize| {
            m.var_store().variables()
                [&format!("text_encoder.encoder.layer.{l}.crossattention.self.query.weight")]
                .shallow_clone()
        };
        let src = pre.var_store().variables()
            ["text_encoder.bert.encoder.layer.3.crossattention.self.query.weight"]
            .shallow_clone();
        assert!(q(4).equal(&src) && q(5).equal(&src));
    }

    #[test]
    fn grouped_pairs_equal_one_pair_per_sentence() {
        tch::manual_seed(0);
        let m = AlbefNlvr::new(&small(Some(6)), Device::Cpu).unwrap();
        let (k, opts) = (Kind::Float, (Kind::Int64, Device::Cpu));
        // Two pairs: [a0, b0 ; a1, b1]; five sentences about pairs 1, 0, 0, 1, 1.
        let img = Tensor::randn([4, 3, 32, 32], (k, Device::Cpu));
        let which = Tensor::from_slice(&[1i64, 0, 0, 1, 1]);
        let ids = Tensor::randint(50, [5, 6], opts).clamp_min(1);
        let mask = Tensor::ones([5, 6], opts);
        let a = m.forward_grouped(&img, Some(&which), &ids, &mask).unwrap();
        let left = img.narrow(0, 0, 2).index_select(0, &which);
        let right = img.narrow(0, 2, 2).index_select(0, &which);
        let b = m
            .forward(&Tensor::cat(&[left, right], 0), &ids, &mask)
            .unwrap();
        assert_eq!(a.logits.size(), [5, 2]);
        assert_eq!(a.image_embeds.size()[0], 4);
        assert!(a.logits.allclose(&b.logits, 1e-5, 1e-6, false));
        let targets = Tensor::from_slice(&[1i64, 0, 1, 1, 0]);
        let la = m
            .train_loss_grouped(&img, Some(&which), &ids, &mask, &targets, 0.0)
            .unwrap();
        let lb = m
            .train_loss(
                &Tensor::cat(
                    &[
                        img.narrow(0, 0, 2).index_select(0, &which),
                        img.narrow(0, 2, 2).index_select(0, &which),
                    ],
                    0,
                ),
                &ids,
                &mask,
                &targets,
                0.0,
            )
            .unwrap();
        assert!((la.double_value(&[]) - lb.double_value(&[])).abs() < 1e-5);
        for (bad, what) in [
            (Tensor::from_slice(&[0i64, 2, 1, 0, 1]), "0..2"),
            (
                Tensor::from_slice(&[0i64, 1]),
                "one image pair per sentence",
            ),
        ] {
            let e = m
                .forward_grouped(&img, Some(&bad), &ids, &mask)
                .unwrap_err();
            assert!(
                e.to_string().contains("pair_index") && e.to_string().contains(what),
                "{e}"
            );
        }
        let odd = Tensor::randn([3, 3, 32, 32], (k, Device::Cpu));
        let e = m
            .forward_grouped(&odd, Some(&which), &ids, &mask)
            .unwrap_err();
        assert!(e.to_string().contains("2 x P"), "{e}");
    }
}
