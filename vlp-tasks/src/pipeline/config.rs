//! The experiment configuration: one YAML/JSON file per experiment with four sections, `model`,
//! `data`, `train` (the trainer's [`TrainConfig`]) and `eval`. Unknown fields are errors naming
//! the field path, the file, the line and the column; `--set a.b=value` overrides apply to the
//! whole tree (`--set train.max_steps=10`, `--set data.root=/data/shapes`).
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vlp_core::image::Normalize;
use vlp_core::{Result, VlpError};

use crate::train::TrainConfig;

/// Which preset a model starts from (its size); `model.config` overrides fields of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// The paper's model (ALBEF: ViT-B/16 at 256 px, BERT-base, fusion from layer 6).
    #[default]
    Base,
    /// A CPU-sized model: ViT patch 8 on 64×64 images, width 128, 4 heads, 4 image layers,
    /// 2 text + 2 fusion layers, ITC width 64, queue 256.
    Small,
    /// The smallest model that runs every path (tests): 32×32 images, width 64, 2 heads.
    Tiny,
}

impl Preset {
    /// The preset's name as written in a config.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Base => "base",
            Preset::Small => "small",
            Preset::Tiny => "tiny",
        }
    }
}

/// How `model.init` is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitMode {
    /// Every key must match (a fine-tuned checkpoint into its own variant).
    Strict,
    /// Load what matches after the model's `adapt_state_dict`, report the rest (a pretraining
    /// checkpoint into a fine-tuning variant: the heads stay at their initialisation, as with the
    /// official `strict=False` loaders).
    #[default]
    Partial,
}

/// The `model` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Registered model name (`albef`, `blip`).
    pub name: String,
    /// Variant: ALBEF `pretrain`, `retrieval`, `vqa`, `nlvr2`, `ve`; BLIP `pretrain`,
    /// `retrieval`, `captioning`, `vqa`, `nlvr2`.
    pub variant: String,
    /// Size preset (default `base`).
    #[serde(default)]
    pub preset: Preset,
    /// The model config: a path to a JSON/YAML file (relative to the experiment file) or an
    /// inline mapping; either is merged over the preset, key by key.
    #[serde(default)]
    pub config: Option<serde_yaml::Value>,
    /// A checkpoint to start from: a file (`.pth`, `.safetensors`, ...), a trainer checkpoint
    /// directory, or a run directory (its latest checkpoint).
    #[serde(default)]
    pub init: Option<PathBuf>,
    /// How `init` is loaded (default `partial`).
    #[serde(default)]
    pub init_mode: InitMode,
    /// The `vqa_cls` head's training loss: `bce` (default, ViLT/VLMo) or `softmax_ce`.
    #[serde(default)]
    pub vqa_loss: vlp_models::albef::vqa_cls::VqaLoss,
    /// ALBEF pre-training only: classes of interchangeable words (each a single token of the
    /// vocabulary, e.g. `[[circle, square, triangle], [red, green, blue]]`). When set, every
    /// caption also makes an ITM negative with one of its class words swapped for another of
    /// the class (objective `itm_swap`, [`vlp_objectives::word_swap`]). Empty (default): off.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub itm_word_swap: Vec<Vec<String>>,
}

/// The task a data section feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Image–caption pairs (ALBEF pre-training list or Karpathy files).
    Pretrain,
    /// Image–text retrieval (Karpathy splits).
    Retrieval,
    /// VQA (ALBEF/BLIP `vqa_*.json` and an answer list).
    Vqa,
    /// NLVR2 (ALBEF `nlvr_*.json`).
    Nlvr2,
    /// SNLI-VE (ALBEF `ve_*.json`).
    Ve,
    /// easy-VQA (`data.root` holds `answers.txt`, `train/`, `test/`).
    EasyVqa,
}

impl Task {
    /// The name as written in a config.
    pub fn name(self) -> &'static str {
        match self {
            Task::Pretrain => "pretrain",
            Task::Retrieval => "retrieval",
            Task::Vqa => "vqa",
            Task::Nlvr2 => "nlvr2",
            Task::Ve => "ve",
            Task::EasyVqa => "easy_vqa",
        }
    }
}

fn clip() -> Normalize {
    Normalize::Clip
}
fn ser_normalize<S: serde::Serializer>(
    n: &Normalize,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    match n {
        Normalize::ImageNet => s.serialize_str("imagenet"),
        Normalize::Clip => s.serialize_str("clip"),
        Normalize::Half => s.serialize_str("half"),
        Normalize::Custom { mean, std } => {
            let mut m = s.serialize_map(Some(2))?;
            m.serialize_entry("mean", mean)?;
            m.serialize_entry("std", std)?;
            m.end()
        }
    }
}
fn thirty() -> usize {
    30
}
fn two() -> usize {
    2
}

/// One file or a list of files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Files {
    /// A single file.
    One(PathBuf),
    /// Several files (read in order and concatenated).
    Many(Vec<PathBuf>),
}

impl Default for Files {
    fn default() -> Self {
        Files::Many(Vec::new())
    }
}

impl Files {
    /// The files as a list.
    pub fn list(&self) -> Vec<PathBuf> {
        match self {
            Files::One(p) => vec![p.clone()],
            Files::Many(v) => v.clone(),
        }
    }
}

/// The `data` section: where the annotation files and images are, and how samples are made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// The task (decides the readers and the batches).
    pub task: Task,
    /// Directory every relative path of this section is resolved against (default: the current
    /// directory). easy-VQA: the data directory (default: the `easy_vqa` package's data).
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// Training annotation file(s).
    #[serde(default)]
    pub train_file: Files,
    /// Validation annotation file(s).
    #[serde(default)]
    pub val_file: Files,
    /// Test annotation file(s).
    #[serde(default)]
    pub test_file: Files,
    /// Directory the image paths of the annotation files are relative to (default: `root`).
    #[serde(default)]
    pub image_root: Option<PathBuf>,
    /// VQA: the candidate answers (`answer_list.json`).
    #[serde(default)]
    pub answer_list: Option<PathBuf>,
    /// Image side in pixels (default: the model's `image_res`).
    #[serde(default)]
    pub image_size: Option<u32>,
    /// Normalisation (`clip` for ALBEF/BLIP, default).
    #[serde(default = "clip", serialize_with = "ser_normalize")]
    pub normalize: Normalize,
    /// Words kept by `pre_caption` / `pre_question` (default 30).
    #[serde(default = "thirty")]
    pub max_words: usize,
    /// Token truncation length, `[CLS]` included (default 30).
    #[serde(default = "thirty")]
    pub max_text_len: usize,
    /// Tokenizer (`tokenizer.json`, `vocab.txt` or a directory); default: the bert-base-uncased
    /// vocabulary of the bundled MiniLM.
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// Data loader threads (default 2; 0 = on the training thread).
    #[serde(default = "two")]
    pub num_workers: usize,
    /// Skip (and count) bad records and unreadable images instead of stopping.
    #[serde(default)]
    pub skip_bad_samples: bool,
    /// VQA: group the training questions by image, up to this many per image in one sample,
    /// so that each image is encoded once for all of them (`train.batch_size` then counts
    /// images). Default: one question per sample, as the official code.
    #[serde(default)]
    pub questions_per_image: Option<usize>,
    /// NLVR2: group the training sentences by image pair, up to this many per pair in one
    /// sample, so that each pair is encoded once and its true and false sentences train in the
    /// same step (`train.batch_size` then counts pairs). Default: one sentence per sample, as
    /// the official code.
    #[serde(default)]
    pub sentences_per_pair: Option<usize>,
    /// SNLI-VE: group the training hypotheses by image, up to this many per image in one sample,
    /// so that each image is encoded once and its entailed, neutral and contradicted hypotheses
    /// train in the same step (`train.batch_size` then counts images). Default: one hypothesis
    /// per sample, as the official code.
    #[serde(default)]
    pub hypotheses_per_image: Option<usize>,
}

fn val() -> String {
    "val".into()
}
fn k128() -> usize {
    128
}
fn bs32() -> usize {
    32
}

/// The `eval` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Split evaluated: `val` (default) or `test`.
    #[serde(default = "val")]
    pub split: String,
    /// Evaluate every N steps (overrides `train.eval_every`; default: per epoch).
    #[serde(default)]
    pub every: Option<u64>,
    /// Candidates reranked per query (retrieval) or answers ranked (VQA): ALBEF's `k_test`.
    #[serde(default = "k128")]
    pub k_test: usize,
    /// Samples per evaluation batch.
    #[serde(default = "bs32")]
    pub batch_size: usize,
    /// Evaluate on the first N samples (images for retrieval) only.
    #[serde(default)]
    pub max_samples: Option<usize>,
}

impl Default for EvalSection {
    fn default() -> Self {
        vlp_core::config::from_str_yaml("{}").expect("every field has a default")
    }
}

/// One experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// The model.
    pub model: ModelSection,
    /// The data.
    pub data: DataSection,
    /// The trainer (see `docs/training.md`).
    pub train: TrainConfig,
    /// Evaluation.
    #[serde(default)]
    pub eval: EvalSection,
    /// The file this config was read from (not serialised; relative `model.config` paths are
    /// resolved against its directory).
    #[serde(skip)]
    pub source: PathBuf,
}

/// Merges `over` into `base` key by key (nested mappings merged, anything else replaced).
pub fn merge_json(base: &mut serde_json::Value, over: serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge_json(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// A model's config as JSON: `preset` with the experiment's `model.config` merged over it (a
/// file path relative to the experiment file, or an inline mapping). Errors name
/// `model.config` and the experiment file.
pub fn merged_model_config(
    exp: &ExperimentConfig,
    mut preset: serde_json::Value,
) -> Result<serde_json::Value> {
    let src = &exp.source;
    let over: Option<serde_json::Value> = match &exp.model.config {
        None | Some(serde_yaml::Value::Null) => None,
        Some(serde_yaml::Value::String(p)) => {
            let p = PathBuf::from(p);
            let p = if p.is_relative() {
                src.parent().unwrap_or(Path::new("")).join(p)
            } else {
                p
            };
            if !p.is_file() {
                return Err(cfg_err(
                    src,
                    format!("field `model.config`: file not found: {}", p.display()),
                ));
            }
            Some(vlp_core::config::load_config(&p)?)
        }
        Some(m @ serde_yaml::Value::Mapping(_)) => Some(
            serde_json::to_value(m)
                .map_err(|e| cfg_err(src, format!("field `model.config`: {e}")))?,
        ),
        Some(_) => {
            return Err(cfg_err(
                src,
                "field `model.config`: expected a file path or a mapping of overrides",
            ))
        }
    };
    if let Some(o) = over {
        merge_json(&mut preset, o);
    }
    Ok(preset)
}

fn cfg_err(path: &Path, msg: impl Into<String>) -> VlpError {
    VlpError::Config {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

impl ExperimentConfig {
    /// Reads a YAML/JSON experiment file and applies `--set` overrides, then checks it
    /// ([`ExperimentConfig::validate`]).
    pub fn load(path: impl AsRef<Path>, sets: &[&str]) -> Result<Self> {
        let c = Self::parse(path, sets)?;
        c.validate()?;
        Ok(c)
    }

    /// Reads the file and applies the overrides without [`ExperimentConfig::validate`] (the
    /// data files are not checked).
    pub fn parse(path: impl AsRef<Path>, sets: &[&str]) -> Result<Self> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(cfg_err(path, "config file not found"));
        }
        let mut c: ExperimentConfig = vlp_core::config::load_config_with_overrides(path, sets)?;
        c.source = path.to_path_buf();
        Ok(c)
    }

    /// Parses YAML text (errors name `<string>`).
    pub fn from_yaml(text: &str) -> Result<Self> {
        let mut c: ExperimentConfig = vlp_core::config::from_str_yaml(text)?;
        c.source = PathBuf::from("<string>");
        c.validate()?;
        Ok(c)
    }

    /// The config as YAML (`experiment.yaml` of a run directory).
    pub fn to_yaml(&self) -> Result<String> {
        serde_yaml::to_string(self).map_err(|e| VlpError::Msg(format!("serialising config: {e}")))
    }

    /// The training config with `eval.every` applied.
    pub fn train_config(&self) -> TrainConfig {
        let mut t = self.train.clone();
        if self.eval.every.is_some() {
            t.eval_every = self.eval.every;
        }
        t
    }

    /// `p` resolved against `data.root` (absolute paths unchanged).
    pub fn data_path(&self, p: &Path) -> PathBuf {
        match &self.data.root {
            Some(r) if p.is_relative() => r.join(p),
            _ => p.to_path_buf(),
        }
    }

    /// The image root (`data.image_root`, else `data.root`, else the current directory).
    pub fn image_root(&self) -> PathBuf {
        match &self.data.image_root {
            Some(p) => self.data_path(p),
            None => self.data.root.clone().unwrap_or_default(),
        }
    }

    /// The annotation files of a split (`train`, `val`, `test`), resolved.
    pub fn split_files(&self, split: &str) -> Vec<PathBuf> {
        let f = match split {
            "train" => &self.data.train_file,
            "val" => &self.data.val_file,
            _ => &self.data.test_file,
        };
        f.list().iter().map(|p| self.data_path(p)).collect()
    }

    /// Checks what serde cannot: the train section, `eval.split`, and that the named data files
    /// exist (each error names the field and the file).
    pub fn validate(&self) -> Result<()> {
        let src = &self.source;
        self.train
            .validate()
            .map_err(|e| cfg_err(src, format!("train: {e}")))?;
        if !matches!(self.eval.split.as_str(), "val" | "test") {
            return Err(cfg_err(
                src,
                format!(
                    "field `eval.split`: expected `val` or `test`, got `{}`",
                    self.eval.split
                ),
            ));
        }
        if self.eval.k_test == 0 || self.eval.batch_size == 0 {
            return Err(cfg_err(
                src,
                "fields `eval.k_test` and `eval.batch_size` must be >= 1",
            ));
        }
        if self.data.max_text_len < 2 {
            return Err(cfg_err(src, "field `data.max_text_len` must be >= 2"));
        }
        for (field, value, task, what) in [
            (
                "data.sentences_per_pair",
                self.data.sentences_per_pair,
                Task::Nlvr2,
                "only NLVR2 groups sentences by image pair",
            ),
            (
                "data.hypotheses_per_image",
                self.data.hypotheses_per_image,
                Task::Ve,
                "only SNLI-VE groups hypotheses by image",
            ),
        ] {
            match value {
                Some(0) => {
                    return Err(cfg_err(
                        src,
                        format!("field `{field}`: expected at least 1"),
                    ))
                }
                Some(_) if self.data.task != task => {
                    return Err(cfg_err(
                        src,
                        format!("field `{field}`: {what} (task `{}`)", self.data.task.name()),
                    ))
                }
                _ => {}
            }
        }
        for (field, files) in [
            ("data.train_file", &self.data.train_file),
            ("data.val_file", &self.data.val_file),
            ("data.test_file", &self.data.test_file),
        ] {
            for (i, f) in files.list().iter().enumerate() {
                let p = self.data_path(f);
                if !p.is_file() {
                    let name = match files {
                        Files::One(_) => field.to_string(),
                        Files::Many(_) => format!("{field}[{i}]"),
                    };
                    return Err(cfg_err(
                        src,
                        format!("field `{name}`: file not found: {}", p.display()),
                    ));
                }
            }
        }
        for (field, p) in [
            ("data.answer_list", &self.data.answer_list),
            ("data.tokenizer", &self.data.tokenizer),
        ] {
            if let Some(p) = p {
                let p = self.data_path(p);
                if !p.exists() {
                    return Err(cfg_err(
                        src,
                        format!("field `{field}`: not found: {}", p.display()),
                    ));
                }
            }
        }
        if let Some(root) = &self.data.root {
            if !root.is_dir() {
                return Err(cfg_err(
                    src,
                    format!("field `data.root`: not a directory: {}", root.display()),
                ));
            }
        }
        if let Some(init) = &self.model.init {
            if !init.exists() {
                return Err(cfg_err(
                    src,
                    format!("field `model.init`: not found: {}", init.display()),
                ));
            }
        }
        Ok(())
    }
}
