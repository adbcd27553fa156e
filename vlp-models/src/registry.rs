//! The model registry: names (`bert`, later `albef`, `blip`, …) and variants mapped to builders.
//! The CLI and the parity runner build models only through [`build`].
use crate::VlpModel;
use tch::Device;
use vlp_core::{Result, VlpError};

/// Builds a model of one variant from its official configuration (JSON object).
pub type BuildFn =
    fn(variant: &str, config: &serde_json::Value, device: Device) -> Result<Box<dyn VlpModel>>;

/// One registered model family.
#[derive(Debug, Clone, Copy)]
pub struct ModelSpec {
    /// Registry name (as fixture MANIFESTs name it).
    pub name: &'static str,
    /// The paper, one line.
    pub paper: &'static str,
    /// Supported variants.
    pub variants: &'static [&'static str],
    /// Builder.
    pub build: BuildFn,
}

fn build_bert(
    variant: &str,
    config: &serde_json::Value,
    device: Device,
) -> Result<Box<dyn VlpModel>> {
    debug_assert_eq!(variant, "encoder");
    let cfg: vlp_core::layers::bert::BertConfig = serde_json::from_value(config.clone())
        .map_err(|e| VlpError::Msg(format!("bert config: {e}")))?;
    Ok(Box::new(crate::bert::BertEncoderModel::new(&cfg, device)?))
}

static MODELS: &[ModelSpec] = &[
    ModelSpec {
        name: "bert",
        paper: "BERT (Devlin et al., NAACL 2019) — HF BertModel layout",
        variants: &["encoder"],
        build: build_bert,
    },
    ModelSpec {
        name: "albef",
        paper: "ALBEF (Li et al., NeurIPS 2021) — salesforce/ALBEF layout",
        variants: crate::albef::VARIANTS,
        build: crate::albef::build,
    },
    ModelSpec {
        name: "blip",
        paper: "BLIP (Li et al., ICML 2022) — salesforce/BLIP layout",
        variants: crate::blip::VARIANTS,
        build: crate::blip::build,
    },
];

/// Every registered model family.
pub fn models() -> &'static [ModelSpec] {
    MODELS
}

/// The model families of the zoo that are planned but not registered yet.
pub const PLANNED: &[&str] = &["vlmo", "beit3", "uniter", "vilbert", "ofa"];

/// Looks a model family up by name.
pub fn find(name: &str) -> Option<&'static ModelSpec> {
    MODELS.iter().find(|m| m.name == name)
}

/// Builds `name`/`variant` from `config`. An unknown or not-yet-implemented model or variant gives
/// [`VlpError::Unsupported`] naming it (the parity runner counts that as skipped).
pub fn build(
    name: &str,
    variant: &str,
    config: &serde_json::Value,
    device: Device,
) -> Result<Box<dyn VlpModel>> {
    let spec = find(name).ok_or_else(|| VlpError::Unsupported {
        what: if PLANNED.contains(&name) {
            format!("model `{name}` (planned)")
        } else {
            format!(
                "model `{name}` (known: {})",
                MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
            )
        },
    })?;
    if !spec.variants.contains(&variant) {
        return Err(VlpError::Unsupported {
            what: format!(
                "variant `{variant}` of `{name}` (available: {})",
                spec.variants.join(", ")
            ),
        });
    }
    (spec.build)(variant, config, device)
}
