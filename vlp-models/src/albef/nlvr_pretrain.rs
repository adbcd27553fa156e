//! ALBEF's NLVR2 **text-assignment** (TA) pre-training, `models/model_pretrain_nlvr.py:ALBEF`
//! (run by `Pretrain_nlvr.py`; its output is the released `pretrain_model_nlvr.pth` that
//! `NLVR.py` fine-tunes).
//!
//! The NLVR2 architecture (an 18-layer text encoder whose fusion layers alternate between two
//! images, cross-attention key/value tied per pair: [`super::nlvr`]) trained on plain
//! image–text pairs: each text is shown with two images and a 3-way head says whether it
//! describes image 0, image 1 or neither. Per sample `b` of the batch (`Pretrain_nlvr`'s loop):
//! - the image similarities `softmax(v_i · v_j / 0.07)` of the normalised `vision_proj([CLS])`
//!   (no gradient), diagonal zeroed, are the sampling weights of row `b`;
//! - with probability 2/3 one other image `j` is drawn from them and `(b, j)` (label 0) or
//!   `(j, b)` (label 1) is shown, each with probability 1/2;
//! - otherwise two other images are drawn (without replacement): label 2.
//!
//! The loss is the cross-entropy of `ta_head([CLS])`.
//!
//! Keys: `visual_encoder.*`, `text_encoder.*` (the NLVR2 layout), `vision_proj.*`,
//! `text_proj.*`, `temp`, `ta_head.*` (a single `Linear(D, 3)`). `text_proj` and `temp` are
//! unused by the loss; they exist (and load) as in the official class. A pretraining checkpoint
//! (`ALBEF.pth`, `text_encoder.bert.*`) is converted as `Pretrain_nlvr.py` does (fusion layer `n`
//! → layers `2(n-6)+6` and `2(n-6)+7`); [`super::AlbefNlvr`] then loads this model's checkpoint,
//! dropping `ta_head`, the projections and `temp` as `NLVR.py`'s `strict=False` load does.
use super::nlvr::{
    nlvr_text_encoder, replicate_pretrain_layers, tied_keys_of, two_image_states, NlvrLayout,
};
use super::{
    check_image, check_text, cls_token, complete_tied, drop_prefixes, has_pretrain_layout,
    input_on, interpolate_pos_embeds, normalize, resize_patch_embeds, AlbefBert, AlbefConfig,
};
use crate::common::{var_store_accessors, POS_EMBED_KEYS};
use crate::{Tensors, VlpModel};
use tch::{nn, nn::VarStore, Device, Kind, Tensor};
use vlp_core::checkpoint::StateDict;
use vlp_core::layers::linear_torch;
use vlp_core::layers::vit::VisionTransformer;
use vlp_core::{Result, VlpError};

/// The temperature of the TA image-similarity sampling weights (hard-coded, `/ 0.07`).
pub const TA_SAMPLING_TEMP: f64 = 0.07;

/// What a pretraining checkpoint holds that the TA model lacks (everything else loads).
const NOT_IN_TA: &[&str] = &[
    "text_encoder.cls.",
    "text_encoder_m.",
    "visual_encoder_m.",
    "vision_proj_m.",
    "text_proj_m.",
    "itm_head.",
    "image_queue",
    "text_queue",
    "idx_queue",
    "queue_ptr",
];

/// The image pairs of one TA batch: row `b` shows text `b` with images `image0[b]` and
/// `image1[b]` (indices into the batch), `labels[b]` 0 (text `b` describes image 0), 1 (image 1)
/// or 2 (neither).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaPairs {
    /// Index of the first image of each row.
    pub image0: Vec<i64>,
    /// Index of the second image of each row.
    pub image1: Vec<i64>,
    /// The 3-way target of each row.
    pub labels: Vec<i64>,
}

impl TaPairs {
    /// Draws the pairs of `Pretrain_nlvr`'s loop from `[B, B]` sampling `weights` (zero
    /// diagonal, rows summing to 1), on the current `tch` RNG. Needs `B >= 3` (a "neither" row
    /// draws two other images).
    pub fn sample(weights: &Tensor) -> Result<TaPairs> {
        let b = weights.size()[0];
        if b < 3 {
            return Err(VlpError::input(
                "image",
                format!("text assignment needs at least 3 images per batch, got {b}"),
            ));
        }
        let w = weights.to_device(Device::Cpu).to_kind(Kind::Float);
        let coins =
            Vec::<f32>::try_from(Tensor::rand([b, 2], (Kind::Float, Device::Cpu)).view(-1))?;
        let mut p = TaPairs {
            image0: Vec::with_capacity(b as usize),
            image1: Vec::with_capacity(b as usize),
            labels: Vec::with_capacity(b as usize),
        };
        for i in 0..b {
            let row = w.get(i);
            let (c0, c1) = (coins[2 * i as usize], coins[2 * i as usize + 1]);
            if c0 > 1.0 / 3.0 {
                let j = row.multinomial(1, false).int64_value(&[0]);
                if c1 > 0.5 {
                    p.push(i, j, 0);
                } else {
                    p.push(j, i, 1);
                }
            } else {
                let jj = row.multinomial(2, false);
                p.push(jj.int64_value(&[0]), jj.int64_value(&[1]), 2);
            }
        }
        Ok(p)
    }

    fn push(&mut self, a: i64, b: i64, label: i64) {
        self.image0.push(a);
        self.image1.push(b);
        self.labels.push(label);
    }
}

/// `models/model_pretrain_nlvr.py:ALBEF`.
#[derive(Debug)]
pub struct AlbefNlvrPretrain {
    vs: VarStore,
    /// The configuration.
    pub cfg: AlbefConfig,
    /// `visual_encoder.*`.
    pub visual_encoder: VisionTransformer,
    /// `text_encoder.*` (the NLVR2 layout, tied cross-attention key/value).
    pub text_encoder: AlbefBert,
    /// `vision_proj.*` (the sampling similarities).
    pub vision_proj: nn::Linear,
    /// `text_proj.*` (unused by the loss, kept as in the official class).
    pub text_proj: nn::Linear,
    /// `temp` (unused by the loss).
    pub temp: Tensor,
    /// `ta_head.*`: `Linear(D, 3)`.
    pub ta_head: nn::Linear,
    /// Dropout on (off by default).
    pub train: bool,
}

/// The TA loss of one batch and the pairs it was computed on.
#[derive(Debug)]
pub struct TaOutput {
    /// Cross-entropy of the 3-way head.
    pub loss: Tensor,
    /// `[B, 3]` logits.
    pub logits: Tensor,
    /// The pairs drawn.
    pub pairs: TaPairs,
}

impl AlbefNlvrPretrain {
    /// Builds the model on `device`.
    pub fn new(cfg: &AlbefConfig, device: Device) -> Result<Self> {
        cfg.validate()?;
        let layout = NlvrLayout::of(cfg)?;
        let vs = VarStore::new(device);
        let r = vs.root();
        let d = cfg.bert.hidden_size;
        let visual_encoder = VisionTransformer::new(&(&r / "visual_encoder"), &cfg.vit());
        let text_encoder = nlvr_text_encoder(&(&r / "text_encoder"), &cfg.bert, layout)?;
        let vision_proj = linear_torch(&r / "vision_proj", cfg.vision_width, cfg.embed_dim);
        let text_proj = linear_torch(&r / "text_proj", d, cfg.embed_dim);
        let temp = r.var("temp", &[], nn::Init::Const(cfg.temp));
        let ta_head = linear_torch(&r / "ta_head", d, 3);
        Ok(AlbefNlvrPretrain {
            vs,
            cfg: cfg.clone(),
            visual_encoder,
            text_encoder,
            vision_proj,
            text_proj,
            temp,
            ta_head,
            train: false,
        })
    }

    /// `[B, 3]` logits of text `b` against images `image_embeds[pairs.image0[b]]` and
    /// `image_embeds[pairs.image1[b]]`.
    pub fn logits(
        &self,
        image_embeds: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        pairs: &TaPairs,
    ) -> Result<Tensor> {
        let n = image_embeds.size()[0];
        let b = input_ids.size()[0];
        if pairs.labels.len() as i64 != b
            || pairs
                .image0
                .iter()
                .chain(&pairs.image1)
                .any(|&i| i < 0 || i >= n)
        {
            return Err(VlpError::input(
                "pairs",
                format!("{b} texts need {b} pairs of image indices below {n}"),
            ));
        }
        let dev = image_embeds.device();
        let pick =
            |ix: &[i64]| image_embeds.index_select(0, &Tensor::from_slice(ix).to_device(dev));
        let (i0, i1) = (pick(&pairs.image0), pick(&pairs.image1));
        let h = two_image_states(
            &self.text_encoder,
            input_ids,
            attention_mask,
            (&i0, &i1),
            None,
            self.train,
        );
        Ok(cls_token(&h).apply(&self.ta_head))
    }

    /// The TA sampling weights of `[B, 1+N, D]` image embeddings: `softmax(sim / 0.07)` of the
    /// normalised `vision_proj([CLS])`, diagonal zeroed (no gradient).
    pub fn sampling_weights(&self, image_embeds: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let f = normalize(&cls_token(image_embeds).apply(&self.vision_proj));
            let sim = f.matmul(&f.tr()) / TA_SAMPLING_TEMP;
            let w = sim.softmax(1, Kind::Float);
            let _ = w.shallow_clone().fill_diagonal_(0.0, false);
            w
        })
    }

    /// One TA step on image–text pairs (`image[b]` described by text `b`): draws the pairs
    /// ([`TaPairs::sample`]) and returns the cross-entropy of the head.
    pub fn forward(
        &self,
        image: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<TaOutput> {
        check_image(image, "image")?;
        check_text(input_ids, attention_mask, "input_ids")?;
        if image.size()[0] != input_ids.size()[0] {
            return Err(VlpError::input(
                "image",
                format!(
                    "{} images for {} texts (one image per text)",
                    image.size()[0],
                    input_ids.size()[0]
                ),
            ));
        }
        let image_embeds = self.visual_encoder.forward_t(image, self.train);
        let pairs = TaPairs::sample(&self.sampling_weights(&image_embeds))?;
        let logits = self.logits(&image_embeds, input_ids, attention_mask, &pairs)?;
        let labels = Tensor::from_slice(&pairs.labels).to_device(image.device());
        let loss = logits.cross_entropy_for_logits(&labels);
        Ok(TaOutput {
            loss,
            logits,
            pairs,
        })
    }
}

impl VlpModel for AlbefNlvrPretrain {
    var_store_accessors!();
    /// `visual_encoder.pos_embed` interpolated to the model's grid; a pretraining checkpoint
    /// (`text_encoder.bert.*`) converted as `Pretrain_nlvr.py` does, dropping what this class
    /// lacks (the MLM head, ITM head, momentum copies and queues; `ta_head` is then missing:
    /// load with `LoadMode::Partial`, as the official `strict=False`). Tied key/value entries
    /// are checked and completed.
    fn adapt_state_dict(&self, mut sd: StateDict) -> Result<StateDict> {
        let grid = self.cfg.vit().grid();
        interpolate_pos_embeds(&mut sd, POS_EMBED_KEYS, grid)?;
        resize_patch_embeds(&mut sd, self.cfg.vit().patch_size);
        let layout = NlvrLayout::of(&self.cfg)?;
        if has_pretrain_layout(&sd) {
            drop_prefixes(&mut sd, NOT_IN_TA);
            replicate_pretrain_layers(&mut sd, layout.first)?;
        }
        complete_tied(&mut sd, &tied_keys_of(layout, "text_encoder."))?;
        Ok(sd)
    }
    /// Inputs: `image`, `input_ids`, `attention_mask` (one image per text). Outputs: `loss`,
    /// `logits`, `labels` (the pairs are drawn on the `tch` RNG).
    fn forward_named(&mut self, inputs: &Tensors, _extra: &serde_json::Value) -> Result<Tensors> {
        let dev = self.vs.device();
        let image = input_on(inputs, "image", dev)?;
        let ids = input_on(inputs, "input_ids", dev)?;
        let mask = input_on(inputs, "attention_mask", dev)?;
        tch::no_grad(|| {
            let out = self.forward(&image, &ids, &mask)?;
            let mut t = Tensors::new();
            t.insert("loss".into(), out.loss);
            t.insert("logits".into(), out.logits);
            t.insert("labels".into(), Tensor::from_slice(&out.pairs.labels));
            Ok(t)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::OptimizerConfig;
    use vlp_core::checkpoint::{load_state_dict, state_dict_of, LoadMode};

    fn cfg() -> AlbefConfig {
        AlbefConfig {
            nlvr_layers: Some(6),
            ..super::super::tiny_test_config(4, 2)
        }
    }

    #[test]
    fn pairs_follow_the_official_labels() {
        tch::manual_seed(3);
        let b = 64;
        let w = Tensor::rand([b, b], (Kind::Float, Device::Cpu)) + 0.01;
        let _ = w.shallow_clone().fill_diagonal_(0.0, false);
        let w = &w / w.sum_dim_intlist(1, true, Kind::Float);
        let p = TaPairs::sample(&w).unwrap();
        let mut counts = [0; 3];
        for i in 0..b as usize {
            let (a, c, l) = (p.image0[i], p.image1[i], p.labels[i]);
            counts[l as usize] += 1;
            match l {
                0 => assert!(a == i as i64 && c != i as i64),
                1 => assert!(c == i as i64 && a != i as i64),
                _ => assert!(a != i as i64 && c != i as i64 && a != c),
            }
        }
        assert!(counts.iter().all(|&n| n > 5), "{counts:?}");
        assert!(TaPairs::sample(&Tensor::ones([2, 2], (Kind::Float, Device::Cpu))).is_err());
    }

    #[test]
    fn a_pretraining_checkpoint_loads_and_the_checkpoint_feeds_nlvr2() {
        tch::manual_seed(0);
        let cfg = cfg();
        let pre = super::super::AlbefPretrain::new(&cfg, Device::Cpu).unwrap();
        let mut ta = AlbefNlvrPretrain::new(&cfg, Device::Cpu).unwrap();
        let sd = ta.adapt_state_dict(state_dict_of(pre.var_store())).unwrap();
        let r = load_state_dict(ta.var_store_mut(), &sd, LoadMode::Partial, "pretrain").unwrap();
        assert!(r.unexpected.is_empty(), "{r}");
        assert!(
            r.missing.iter().all(|k| k.key.starts_with("ta_head.")),
            "{r}"
        );
        let src = pre.var_store().variables()["vision_proj.weight"].shallow_clone();
        assert!(ta.var_store().variables()["vision_proj.weight"].equal(&src));

        let mut nl = super::super::AlbefNlvr::new(&cfg, Device::Cpu).unwrap();
        let sd = nl.adapt_state_dict(state_dict_of(ta.var_store())).unwrap();
        let r = load_state_dict(nl.var_store_mut(), &sd, LoadMode::Partial, "ta").unwrap();
        assert!(r.unexpected.is_empty(), "{r}");
        assert!(
            r.missing.iter().all(|k| k.key.starts_with("cls_head.")),
            "{r}"
        );
        let k = "text_encoder.encoder.layer.5.crossattention.self.query.weight";
        assert!(nl.var_store().variables()[k].equal(&ta.var_store().variables()[k]));
    }

    #[test]
    fn the_loss_learns_which_image_a_text_describes() {
        tch::manual_seed(1);
        let cfg = cfg();
        let m = AlbefNlvrPretrain::new(&cfg, Device::Cpu).unwrap();
        let b = 6;
        let s = cfg.image_res;
        let image = Tensor::randn([b, 3, s, s], (Kind::Float, Device::Cpu));
        let ids = Tensor::randint(cfg.bert.vocab_size, [b, 5], (Kind::Int64, Device::Cpu));
        let mask = Tensor::ones([b, 5], (Kind::Int64, Device::Cpu));
        let out = m.forward(&image, &ids, &mask).unwrap();
        assert_eq!(out.logits.size(), [b, 3]);
        let first = out.loss.double_value(&[]);
        assert!(first.is_finite() && first > 0.0, "{first}");
        let mut opt = nn::Adam::default().build(m.var_store(), 1e-3).unwrap();
        // Fixed pairs: the head must learn them (the text says which image it came from).
        let emb = m.visual_encoder.forward_t(&image, false);
        let pairs = TaPairs::sample(&m.sampling_weights(&emb)).unwrap();
        let labels = Tensor::from_slice(&pairs.labels);
        let mut last = f64::MAX;
        for _ in 0..60 {
            let emb = m.visual_encoder.forward_t(&image, false);
            let loss = m
                .logits(&emb, &ids, &mask, &pairs)
                .unwrap()
                .cross_entropy_for_logits(&labels);
            opt.backward_step(&loss);
            last = loss.double_value(&[]);
        }
        assert!(last < 0.1, "{last}");
        assert!(m.forward(&image.narrow(0, 0, 3), &ids, &mask).is_err());
    }
}
