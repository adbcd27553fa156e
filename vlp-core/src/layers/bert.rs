//! BERT embeddings and layers (post-LN), with optional cross-attention: the text side of ALBEF,
//! BLIP's MED (encoder and causal decoder), UNITER's single stream, and plain BERT.
//!
//! Parameter paths follow HF / the official forks: `embeddings.{word_embeddings,
//! position_embeddings,token_type_embeddings,LayerNorm}`, `encoder.layer.N.attention.self.{query,
//! key,value}`, `…attention.output.{dense,LayerNorm}`, `…crossattention.{self,output}.*`,
//! `…intermediate.dense`, `…output.{dense,LayerNorm}`.
use super::{layer_norm, linear_std, Activation};
use crate::attention::{AttentionConfig, KvCache, MultiHeadAttention, QkvLayout};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

/// A BERT configuration with the official (HF `config.json`) field names, plus ALBEF's
/// `fusion_layer` and BLIP's `add_cross_attention`/`encoder_width`. Unknown fields are an error;
/// HF's bookkeeping fields are accepted and ignored. `Default` = bert-base-uncased.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BertConfig {
    /// Vocabulary size (30522 for bert-base-uncased; BLIP 30524).
    pub vocab_size: i64,
    /// Hidden width.
    pub hidden_size: i64,
    /// Number of layers.
    pub num_hidden_layers: i64,
    /// Number of attention heads.
    pub num_attention_heads: i64,
    /// FFN width.
    pub intermediate_size: i64,
    /// FFN activation.
    pub hidden_act: Activation,
    /// Dropout on hidden states (training only).
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities (training only).
    pub attention_probs_dropout_prob: f64,
    /// Rows of the absolute position table.
    pub max_position_embeddings: i64,
    /// Rows of the token-type table (0 = no token-type embeddings).
    pub type_vocab_size: i64,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Padding token id.
    pub pad_token_id: i64,
    /// Init std (used when training from scratch).
    pub initializer_range: f64,
    /// ALBEF: layers `>= fusion_layer` have cross-attention (`None` = no split).
    pub fusion_layer: Option<i64>,
    /// Width of the cross-attended states (ALBEF/BLIP `encoder_width`; `None` = hidden size).
    pub encoder_width: Option<i64>,
    /// BLIP: every layer has cross-attention.
    pub add_cross_attention: bool,
    /// LAVIS: `false` drops the token-type embeddings.
    pub add_type_embeddings: Option<bool>,
    /// Must be `absolute` (the only kind the zoo's BERTs use).
    pub position_embedding_type: Option<String>,
    /// Ignored (HF bookkeeping).
    pub architectures: Option<serde_json::Value>,
    /// Ignored (HF bookkeeping).
    pub model_type: Option<String>,
    /// Ignored (HF bookkeeping).
    #[serde(rename = "_name_or_path")]
    pub name_or_path: Option<String>,
    /// Ignored (HF bookkeeping).
    pub transformers_version: Option<String>,
    /// Ignored (HF bookkeeping).
    pub gradient_checkpointing: Option<bool>,
    /// Ignored (HF bookkeeping).
    pub use_cache: Option<bool>,
    /// Ignored (HF bookkeeping).
    pub torch_dtype: Option<String>,
    /// Ignored (HF bookkeeping).
    pub classifier_dropout: Option<f64>,
    /// Ignored here: decoders are chosen by the model, not the config.
    pub is_decoder: Option<bool>,
}

impl Default for BertConfig {
    fn default() -> Self {
        BertConfig {
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: Activation::Gelu,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            initializer_range: 0.02,
            fusion_layer: None,
            encoder_width: None,
            add_cross_attention: false,
            add_type_embeddings: None,
            position_embedding_type: None,
            architectures: None,
            model_type: None,
            name_or_path: None,
            transformers_version: None,
            gradient_checkpointing: None,
            use_cache: None,
            torch_dtype: None,
            classifier_dropout: None,
            is_decoder: None,
        }
    }
}

impl BertConfig {
    /// A tiny config for tests (2 layers, width 32, 4 heads, vocab 64).
    pub fn tiny() -> Self {
        BertConfig {
            vocab_size: 64,
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 64,
            max_position_embeddings: 40,
            ..Default::default()
        }
    }

    /// Checks values the port relies on; errors name the field.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |f: &str, m: String| {
            Err(crate::VlpError::Msg(format!(
                "bert config field `{f}`: {m}"
            )))
        };
        if self.hidden_size % self.num_attention_heads != 0 {
            return bad(
                "num_attention_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            );
        }
        if let Some(t) = &self.position_embedding_type {
            if t != "absolute" {
                return bad(
                    "position_embedding_type",
                    format!("`{t}` is not supported (absolute only)"),
                );
            }
        }
        if !(self.initializer_range.is_finite() && self.initializer_range > 0.0) {
            return bad(
                "initializer_range",
                format!("{} is not a positive std", self.initializer_range),
            );
        }
        if let Some(f) = self.fusion_layer {
            if f < 0 || f > self.num_hidden_layers {
                return bad(
                    "fusion_layer",
                    format!("{f} is outside 0..={}", self.num_hidden_layers),
                );
            }
        }
        Ok(())
    }

    /// Whether token-type embeddings exist.
    pub fn has_token_type(&self) -> bool {
        self.type_vocab_size > 0 && self.add_type_embeddings != Some(false)
    }

    /// Whether layer `i` has cross-attention (ALBEF: `i >= fusion_layer`; BLIP: all).
    pub fn layer_has_cross(&self, i: i64) -> bool {
        match self.fusion_layer {
            Some(f) => i >= f,
            None => self.add_cross_attention,
        }
    }

    /// The config of one layer.
    pub fn layer_config(&self, cross: bool) -> BertLayerConfig {
        BertLayerConfig {
            hidden_size: self.hidden_size,
            num_attention_heads: self.num_attention_heads,
            intermediate_size: self.intermediate_size,
            hidden_act: self.hidden_act,
            layer_norm_eps: self.layer_norm_eps,
            hidden_dropout_prob: self.hidden_dropout_prob,
            attention_probs_dropout_prob: self.attention_probs_dropout_prob,
            cross_attention_width: cross.then(|| self.encoder_width.unwrap_or(self.hidden_size)),
            initializer_range: self.initializer_range,
        }
    }
}

/// BERT embeddings: word + absolute position (+ token type) → LayerNorm → dropout.
#[derive(Debug)]
pub struct BertEmbeddings {
    /// `word_embeddings.weight` `[V, D]` (tied to MLM/LM decoders in ALBEF/BLIP).
    pub word_embeddings: nn::Embedding,
    position_embeddings: nn::Embedding,
    token_type_embeddings: Option<nn::Embedding>,
    layer_norm: nn::LayerNorm,
    dropout: f64,
}

impl BertEmbeddings {
    /// Builds the embeddings under `p` (`…/embeddings`). `position_ids_buffer`: register the
    /// `position_ids` buffer that older checkpoints carry (as a non-trainable variable).
    pub fn new(p: &nn::Path, cfg: &BertConfig, position_ids_buffer: bool) -> Self {
        let ec = nn::EmbeddingConfig {
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: cfg.initializer_range,
            },
            ..Default::default()
        };
        let d = cfg.hidden_size;
        if position_ids_buffer {
            let ids =
                Tensor::arange(cfg.max_position_embeddings, (Kind::Int64, p.device())).unsqueeze(0);
            let _ = p.add("position_ids", ids, false);
        }
        BertEmbeddings {
            word_embeddings: nn::embedding(p / "word_embeddings", cfg.vocab_size, d, ec),
            position_embeddings: nn::embedding(
                p / "position_embeddings",
                cfg.max_position_embeddings,
                d,
                ec,
            ),
            token_type_embeddings: cfg
                .has_token_type()
                .then(|| nn::embedding(p / "token_type_embeddings", cfg.type_vocab_size, d, ec)),
            layer_norm: layer_norm(p / "LayerNorm", d, cfg.layer_norm_eps),
            dropout: cfg.hidden_dropout_prob,
        }
    }

    /// Embeds `input_ids` `[B, L]`; positions start at `past_length` (incremental decoding);
    /// `token_type_ids` default to 0 when the table exists.
    pub fn forward_t(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        past_length: i64,
        train: bool,
    ) -> Tensor {
        let l = input_ids.size()[1];
        let pos = Tensor::arange_start(
            past_length,
            past_length + l,
            (Kind::Int64, input_ids.device()),
        );
        let mut x = input_ids.apply(&self.word_embeddings)
            + pos.apply(&self.position_embeddings).unsqueeze(0);
        if let Some(tt) = &self.token_type_embeddings {
            x = match token_type_ids {
                Some(ids) => x + ids.apply(tt),
                None => x + tt.ws.get(0),
            };
        }
        x.apply(&self.layer_norm).dropout(self.dropout, train)
    }
}

/// Hyper-parameters of one [`BertLayer`].
#[derive(Debug, Clone, PartialEq)]
pub struct BertLayerConfig {
    /// Hidden width.
    pub hidden_size: i64,
    /// Heads.
    pub num_attention_heads: i64,
    /// FFN width.
    pub intermediate_size: i64,
    /// FFN activation.
    pub hidden_act: Activation,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Hidden dropout.
    pub hidden_dropout_prob: f64,
    /// Attention-probability dropout.
    pub attention_probs_dropout_prob: f64,
    /// Width of the cross-attended states, if the layer has cross-attention.
    pub cross_attention_width: Option<i64>,
    /// Std of the initial Linear weights (HF `_init_weights`: N(0, `initializer_range`²)).
    pub initializer_range: f64,
}

/// BERT's attention block: `LayerNorm(x + dropout(dense(MHA(x[, ctx]))))` with `self` and
/// `output.{dense,LayerNorm}` children.
#[derive(Debug)]
pub struct BertAttention {
    /// The heads (`self.{query,key,value}`).
    pub attn: MultiHeadAttention,
    dense: nn::Linear,
    layer_norm: nn::LayerNorm,
    dropout: f64,
}

impl BertAttention {
    fn new(
        p: &nn::Path,
        cfg: &BertLayerConfig,
        kv_dim: Option<i64>,
        share_kv: Option<&MultiHeadAttention>,
    ) -> Self {
        let mut ac =
            AttentionConfig::new(cfg.hidden_size, cfg.num_attention_heads, QkvLayout::bert());
        ac.kv_dim = kv_dim;
        ac.attn_dropout = cfg.attention_probs_dropout_prob;
        ac.init_std = cfg.initializer_range;
        BertAttention {
            attn: match share_kv {
                None => MultiHeadAttention::new(&(p / "self"), &ac),
                Some(other) => MultiHeadAttention::new_sharing_kv(&(p / "self"), &ac, other),
            },
            dense: linear_std(
                p / "output" / "dense",
                cfg.hidden_size,
                cfg.hidden_size,
                cfg.initializer_range,
            ),
            layer_norm: layer_norm(
                p / "output" / "LayerNorm",
                cfg.hidden_size,
                cfg.layer_norm_eps,
            ),
            dropout: cfg.hidden_dropout_prob,
        }
    }

    fn output(&self, h: &Tensor, x: &Tensor, train: bool) -> Tensor {
        (h.apply(&self.dense).dropout(self.dropout, train) + x).apply(&self.layer_norm)
    }

    /// Applies the block (cross-attention when `context` is given).
    pub fn forward_t(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        self.forward_rows(x, context, None, mask, train)
    }

    /// [`forward_t`](Self::forward_t) with a `context` shared between query rows (see
    /// [`MultiHeadAttention::forward_rows`]).
    pub fn forward_rows(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        rows: Option<&Tensor>,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let h = self.attn.forward_rows(x, context, rows, mask, train);
        self.output(&h, x, train)
    }

    /// Applies the block with a key/value cache (inference).
    pub fn forward_cached(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
    ) -> Tensor {
        let h = self.attn.forward_cached(x, context, mask, cache);
        self.output(&h, x, false)
    }
}

/// The states a layer cross-attends to, with their additive mask (`[B,1,1,Lk]`).
#[derive(Debug, Clone, Copy)]
pub struct CrossInput<'a> {
    /// `[B, Lk, encoder_width]`.
    pub states: &'a Tensor,
    /// Additive mask, broadcastable to `[B, H, Lq, Lk]` (per query row, also with `rows`).
    pub mask: Option<&'a Tensor>,
    /// `[B]` Int64: query row `b` attends to `states[rows[b]]`, so that `states` holds each
    /// image once (`[P, Lk, W]`, `P ≤ B`) and its keys/values are projected once. `None`: one
    /// `states` row per query row.
    pub rows: Option<&'a Tensor>,
}

impl<'a> CrossInput<'a> {
    /// One `states` row per query row, with an optional additive mask.
    pub fn new(states: &'a Tensor, mask: Option<&'a Tensor>) -> Self {
        CrossInput {
            states,
            mask,
            rows: None,
        }
    }

    /// `states` shared between query rows: query row `b` attends to `states[rows[b]]`.
    pub fn gathered(states: &'a Tensor, rows: Option<&'a Tensor>) -> Self {
        CrossInput {
            states,
            mask: None,
            rows,
        }
    }
}

/// Caches of one layer for incremental decoding.
#[derive(Debug, Default)]
pub struct BertLayerCache {
    /// Self-attention keys/values so far.
    pub self_kv: KvCache,
    /// Cross-attention keys/values of the fixed context.
    pub cross_kv: KvCache,
}

/// One BERT layer: self-attention → optional cross-attention → FFN, each post-LN.
#[derive(Debug)]
pub struct BertLayer {
    /// `attention.*`.
    pub attention: BertAttention,
    /// `crossattention.*`, when the layer has it.
    pub crossattention: Option<BertAttention>,
    intermediate: nn::Linear,
    output: nn::Linear,
    output_norm: nn::LayerNorm,
    act: Activation,
    dropout: f64,
}

impl BertLayer {
    /// Builds a layer under `p` (`…/layer/N`).
    pub fn new(p: &nn::Path, cfg: &BertLayerConfig) -> Self {
        Self::build(p, cfg, None)
    }

    /// Like [`new`](Self::new), but the cross-attention key/value Linears are `partner`'s (ALBEF
    /// NLVR2 ties them between layers (6,7), (8,9), …); both layers must have cross-attention.
    pub fn new_sharing_cross_kv(p: &nn::Path, cfg: &BertLayerConfig, partner: &BertLayer) -> Self {
        let other = &partner
            .crossattention
            .as_ref()
            .expect("partner layer has no cross-attention")
            .attn;
        assert!(
            cfg.cross_attention_width.is_some(),
            "a layer sharing cross-attention key/value needs cross-attention"
        );
        Self::build(p, cfg, Some(other))
    }

    fn build(p: &nn::Path, cfg: &BertLayerConfig, share_kv: Option<&MultiHeadAttention>) -> Self {
        BertLayer {
            attention: BertAttention::new(&(p / "attention"), cfg, None, None),
            crossattention: cfg
                .cross_attention_width
                .map(|w| BertAttention::new(&(p / "crossattention"), cfg, Some(w), share_kv)),
            intermediate: linear_std(
                p / "intermediate" / "dense",
                cfg.hidden_size,
                cfg.intermediate_size,
                cfg.initializer_range,
            ),
            output: linear_std(
                p / "output" / "dense",
                cfg.intermediate_size,
                cfg.hidden_size,
                cfg.initializer_range,
            ),
            output_norm: layer_norm(
                p / "output" / "LayerNorm",
                cfg.hidden_size,
                cfg.layer_norm_eps,
            ),
            act: cfg.hidden_act,
            dropout: cfg.hidden_dropout_prob,
        }
    }

    fn ffn(&self, x: &Tensor, train: bool) -> Tensor {
        let h = self.act.apply(&x.apply(&self.intermediate));
        (h.apply(&self.output).dropout(self.dropout, train) + x).apply(&self.output_norm)
    }

    /// Applies the layer. `cross` is used only if the layer has cross-attention; a layer with
    /// cross-attention given no `cross` skips it (BLIP's `mode='text'`).
    pub fn forward_t(
        &self,
        x: &Tensor,
        self_mask: Option<&Tensor>,
        cross: Option<CrossInput>,
        train: bool,
    ) -> Tensor {
        let mut h = self.attention.forward_t(x, None, self_mask, train);
        if let (Some(ca), Some(c)) = (&self.crossattention, cross) {
            h = ca.forward_rows(&h, Some(c.states), c.rows, c.mask, train);
        }
        self.ffn(&h, train)
    }

    /// Incremental (cached) version of [`forward_t`](Self::forward_t), inference only.
    pub fn forward_cached(
        &self,
        x: &Tensor,
        self_mask: Option<&Tensor>,
        cross: Option<CrossInput>,
        cache: &mut BertLayerCache,
    ) -> Tensor {
        let mut h = self
            .attention
            .forward_cached(x, None, self_mask, &mut cache.self_kv);
        if let (Some(ca), Some(c)) = (&self.crossattention, cross) {
            let gathered = c.rows.map(|r| c.states.index_select(0, r));
            let states = gathered.as_ref().unwrap_or(c.states);
            h = ca.forward_cached(&h, Some(states), c.mask, &mut cache.cross_kv);
        }
        self.ffn(&h, false)
    }
}

/// A stack of [`BertLayer`]s under `…/layer/N`, runnable over a sub-range of layers (ALBEF's
/// text-only layers `[0, fusion)` and fusion layers `[fusion, L)`).
#[derive(Debug)]
pub struct BertEncoder {
    /// The layers.
    pub layers: Vec<BertLayer>,
}

impl BertEncoder {
    /// Builds `cfg.num_hidden_layers` layers under `p` (`…/encoder`), cross-attention per
    /// [`BertConfig::layer_has_cross`].
    pub fn new(p: &nn::Path, cfg: &BertConfig) -> Self {
        let pl = p / "layer";
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| BertLayer::new(&(&pl / i), &cfg.layer_config(cfg.layer_has_cross(i))))
            .collect();
        BertEncoder { layers }
    }

    /// Runs layers `range` over `x`. `cross` maps a layer index to its cross input (ALBEF NLVR2
    /// alternates two images); return `None` to skip cross-attention.
    pub fn forward_range<'a>(
        &self,
        x: &Tensor,
        range: std::ops::Range<usize>,
        self_mask: Option<&Tensor>,
        cross: &dyn Fn(usize) -> Option<CrossInput<'a>>,
        train: bool,
    ) -> Tensor {
        let mut h = x.shallow_clone();
        for i in range {
            h = self.layers[i].forward_t(&h, self_mask, cross(i), train);
        }
        h
    }

    /// Runs all layers with one cross input (or none).
    pub fn forward_t(
        &self,
        x: &Tensor,
        self_mask: Option<&Tensor>,
        cross: Option<CrossInput>,
        train: bool,
    ) -> Tensor {
        let mut h = x.shallow_clone();
        for l in &self.layers {
            h = l.forward_t(&h, self_mask, cross, train);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::{causal_mask, padding_mask, BERT_MASK_VALUE};
    use tch::{nn::VarStore, Device};

    #[test]
    fn key_names_mirror_the_official_layout() {
        let vs = VarStore::new(Device::Cpu);
        let mut cfg = BertConfig::tiny();
        cfg.fusion_layer = Some(1);
        let _e = BertEmbeddings::new(&(vs.root() / "embeddings"), &cfg, true);
        let _enc = BertEncoder::new(&(vs.root() / "encoder"), &cfg);
        let keys = vs.variables();
        for k in [
            "embeddings.word_embeddings.weight",
            "embeddings.token_type_embeddings.weight",
            "embeddings.LayerNorm.bias",
            "embeddings.position_ids",
            "encoder.layer.0.attention.self.query.weight",
            "encoder.layer.0.attention.output.LayerNorm.weight",
            "encoder.layer.1.crossattention.self.key.weight",
            "encoder.layer.1.intermediate.dense.weight",
            "encoder.layer.1.output.dense.bias",
        ] {
            assert!(keys.contains_key(k), "missing {k}");
        }
        assert!(!keys.contains_key("encoder.layer.0.crossattention.self.key.weight"));
    }

    #[test]
    fn config_rejects_unknown_fields_and_accepts_hf_bookkeeping() {
        let ok = r#"{"hidden_size": 32, "num_attention_heads": 4, "model_type": "bert", "architectures": ["BertModel"], "transformers_version": "4.8.2"}"#;
        let c: BertConfig = serde_json::from_str(ok).unwrap();
        assert_eq!(c.hidden_size, 32);
        assert_eq!(c.num_hidden_layers, 12);
        let err = serde_json::from_str::<BertConfig>(r#"{"hiden_size": 3}"#).unwrap_err();
        assert!(err.to_string().contains("hiden_size"), "{err}");
        let mut c = BertConfig::tiny();
        c.num_attention_heads = 5;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("num_attention_heads"));
    }

    /// Tiny embeddings + 2 layers cross-attending to width-24 states.
    fn cross_stack(seed: i64) -> (VarStore, BertEmbeddings, BertEncoder) {
        tch::manual_seed(seed);
        let vs = VarStore::new(Device::Cpu);
        let mut cfg = BertConfig::tiny();
        cfg.add_cross_attention = true;
        cfg.encoder_width = Some(24);
        let emb = BertEmbeddings::new(&(vs.root() / "embeddings"), &cfg, false);
        let enc = BertEncoder::new(&(vs.root() / "encoder"), &cfg);
        (vs, emb, enc)
    }

    #[test]
    fn cached_decoder_equals_full_pass() {
        let (_vs, emb, enc) = cross_stack(3);
        let ids = Tensor::from_slice(&[1i64, 5, 9, 3, 2, 7, 8, 4]).view([2, 4]);
        let ctx = Tensor::randn([2, 3, 24], (Kind::Float, Device::Cpu));
        let keep = Tensor::from_slice(&[1i64, 1, 0, 1, 1, 1]).view([2, 3]);
        let cmask = padding_mask(&keep, BERT_MASK_VALUE, Kind::Float);
        let cross = CrossInput {
            states: &ctx,
            mask: Some(&cmask),
            rows: None,
        };
        let causal = causal_mask(4, 4, BERT_MASK_VALUE, Kind::Float, Device::Cpu);
        let full = enc.forward_t(
            &emb.forward_t(&ids, None, 0, false),
            Some(&causal),
            Some(cross),
            false,
        );
        let mut caches: Vec<BertLayerCache> = (0..2).map(|_| BertLayerCache::default()).collect();
        let mut outs = vec![];
        for t in 0..4 {
            let mut h = emb.forward_t(&ids.narrow(1, t, 1), None, t, false);
            for (l, c) in enc.layers.iter().zip(caches.iter_mut()) {
                h = l.forward_cached(&h, None, Some(cross), c);
            }
            outs.push(h);
        }
        assert!(Tensor::cat(&outs, 1).allclose(&full, 1e-5, 1e-5, false));
        // cross-attention is used: masking the context changes the output
        let other = enc.forward_t(
            &emb.forward_t(&ids, None, 0, false),
            Some(&causal),
            None,
            false,
        );
        assert!(!other.allclose(&full, 1e-3, 1e-3, false));
    }

    #[test]
    fn shared_cross_states_equal_gathered_ones_with_gradients() {
        let (_vs, emb, enc) = cross_stack(5);
        // 5 texts about 2 images: text b attends to image rows[b]
        let ids = Tensor::from_slice(&[1i64, 5, 9, 3, 2, 7, 8, 4, 6, 1]).view([5, 2]);
        let rows = Tensor::from_slice(&[1i64, 0, 1, 1, 0]);
        let states = Tensor::randn([2, 3, 24], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let x = emb.forward_t(&ids, None, 0, false);
        let run = |cross: CrossInput| enc.forward_t(&x, None, Some(cross), false);
        let shared = run(CrossInput::gathered(&states, Some(&rows)));
        let gathered = states.index_select(0, &rows);
        let plain = run(CrossInput::new(&gathered, None));
        assert_eq!(shared.size(), [5, 2, 32]);
        assert!(shared.allclose(&plain, 1e-6, 1e-6, false));
        // the image-side gradient sums over the texts about each image in both forms
        let g = |y: &Tensor| {
            let g = Tensor::run_backward(&[(y * y).sum(Kind::Float)], &[&states], true, false);
            g[0].shallow_clone()
        };
        assert!(g(&shared).allclose(&g(&plain), 1e-5, 1e-5, false));
        // the rows are used: another assignment changes the output
        let other = Tensor::from_slice(&[0i64, 0, 1, 1, 0]);
        let moved = run(CrossInput::gathered(&states, Some(&other)));
        assert!(!moved
            .narrow(0, 0, 1)
            .allclose(&shared.narrow(0, 0, 1), 1e-4, 1e-4, false));
        assert!(moved
            .narrow(0, 1, 4)
            .allclose(&shared.narrow(0, 1, 4), 1e-6, 1e-6, false));
    }
}
