//! The training runs of the quickstart, on the pipeline's ALBEF pieces
//! ([`crate::pipeline::albef`]): models and their `Trainable`, batches (`collate`), evaluation.
//!
//! What is specific to the quickstart: the experiment configs are built in code from a
//! [`Plan`]; Shapes is read **without augmentation** (random crops and flips would change the
//! answers to counting, position and left/right questions and the captions' positions; easy-VQA
//! gets horizontal flips only); VQA (Shapes and easy-VQA) is fine-tuned with the classifier head
//! over the answer list (`vqa_cls`, [`vlp_models::albef::AlbefVqaClassifier`]) on samples that
//! group up to [`QUESTIONS_PER_IMAGE`] questions of one image (each image encoded once): ALBEF's
//! generative answer decoder needs thousands of steps that a CPU budget does not have; the
//! easy-VQA evaluation encodes each test image once for all of its questions and reports the
//! accuracy per answer type; chance levels are computed from the evaluation data.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tch::{Device, Kind, Tensor};
use vlp_core::image::{ImageTransform, ImageTransformConfig, Normalize};
use vlp_core::layers::bert::CrossInput;
use vlp_core::text::Tokenizer;
use vlp_core::{Result, VlpError};
use vlp_models::albef::vqa_cls::VqaLoss;
use vlp_models::albef::{AlbefConfig, AlbefVqa};

use super::{Plan, Stage};
use crate::data::karpathy::{self, CaptionDataset};
use crate::data::loader::{stack_images, DataLoader, LoaderConfig};
use crate::data::nlvr2;
use crate::data::snli_ve;
use crate::data::vqa::VqaQuestion;
use crate::data::{ReadOptions, TextPrep};
use crate::metrics::vqa::question_score;
use crate::pipeline::albef::{
    albef_config, classify_questions, collate, eval_data, evaluate, load_init, vqa_train_dataset,
    AlbefBatch, AlbefModel, AlbefTrainable, AnyDataset, AnySample, EvalData, EvalSetup,
    TextEncoder,
};
use crate::pipeline::config::{
    DataSection, EvalSection, ExperimentConfig, Files, InitMode, ModelSection, Task,
};
use crate::train::{LoaderSource, ScheduleConfig, TrainConfig, Trainer};

/// Words kept per caption / question (Shapes' full descriptions name up to four objects with
/// their positions).
pub const MAX_WORDS: usize = 40;
/// Token truncation length.
pub const MAX_TEXT_LEN: usize = 48;
/// VQA fine-tuning samples an image with up to this many of its questions (each image encoded
/// once for all of them); a VQA stage's `batch_size` counts images.
pub const QUESTIONS_PER_IMAGE: usize = 8;

/// The fine-tuning tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// Shapes image–text retrieval.
    Retrieval,
    /// Shapes VQA.
    Vqa,
    /// Shapes NLVR2.
    Nlvr2,
    /// Shapes SNLI-VE.
    Ve,
    /// easy-VQA.
    EasyVqa,
}

impl TaskKind {
    /// Key in `summary.json`.
    pub fn key(self) -> &'static str {
        match self {
            TaskKind::Retrieval => "retrieval",
            TaskKind::Vqa => "vqa",
            TaskKind::Nlvr2 => "nlvr2",
            TaskKind::Ve => "ve",
            TaskKind::EasyVqa => "easy_vqa",
        }
    }

    /// Name in the table.
    pub fn title(self) -> &'static str {
        match self {
            TaskKind::Retrieval => "Shapes retrieval",
            TaskKind::Vqa => "Shapes VQA",
            TaskKind::Nlvr2 => "Shapes NLVR2",
            TaskKind::Ve => "Shapes SNLI-VE",
            TaskKind::EasyVqa => "easy-VQA",
        }
    }

    /// The headline metric.
    pub fn metric(self) -> &'static str {
        match self {
            TaskKind::Retrieval => "r_mean",
            TaskKind::Vqa => "vqa_acc",
            _ => "accuracy",
        }
    }

    /// The ALBEF variant fine-tuned (VQA: the classifier head over the answer list, see the
    /// module documentation).
    pub fn variant(self) -> &'static str {
        match self {
            TaskKind::Retrieval => "retrieval",
            TaskKind::Vqa | TaskKind::EasyVqa => "vqa_cls",
            TaskKind::Nlvr2 => "nlvr2",
            TaskKind::Ve => "ve",
        }
    }

    /// The parameter prefix of the head that fine-tuning adds on top of the pre-trained
    /// encoders (retrieval adds none).
    pub fn head(self) -> Option<&'static str> {
        match self {
            TaskKind::Retrieval => None,
            TaskKind::Vqa | TaskKind::EasyVqa => Some("vqa_head"),
            TaskKind::Nlvr2 | TaskKind::Ve => Some("cls_head"),
        }
    }

    fn task(self) -> Task {
        match self {
            TaskKind::Retrieval => Task::Retrieval,
            TaskKind::Vqa => Task::Vqa,
            TaskKind::Nlvr2 => Task::Nlvr2,
            TaskKind::Ve => Task::Ve,
            TaskKind::EasyVqa => Task::EasyVqa,
        }
    }
}

/// The outcome of one fine-tuning run.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// The headline metric (percent).
    pub value: f64,
    /// Its chance level on the same evaluation data (percent).
    pub chance: f64,
    /// The text-only prior on the same evaluation data ([`text_prior`]; `None` for retrieval).
    pub text_prior: Option<f64>,
    /// Every metric.
    pub metrics: BTreeMap<String, f64>,
    /// Optimizer steps.
    pub steps: u64,
}

/// The outcome of pre-training.
#[derive(Debug, Clone)]
pub struct PretrainResult {
    /// Optimizer steps.
    pub steps: u64,
    /// Pairs seen.
    pub samples: u64,
    /// Loss terms of the first logged window.
    pub first_terms: BTreeMap<String, f64>,
    /// Loss terms of the last logged window.
    pub last_terms: BTreeMap<String, f64>,
}

/// What every run shares: the plan, the directories, the device and the tokenizer.
#[derive(Debug)]
pub struct Ctx<'a> {
    plan: &'a Plan,
    out: PathBuf,
    shapes: PathBuf,
    easy: Option<PathBuf>,
    device: Device,
    tokenizer: Arc<Tokenizer>,
    vocab: PathBuf,
    vocab_size: usize,
}

fn yaml_map(pairs: &[(&str, serde_yaml::Value)]) -> serde_yaml::Value {
    let mut m = serde_yaml::Mapping::new();
    for (k, v) in pairs {
        m.insert(serde_yaml::Value::String((*k).into()), v.clone());
    }
    serde_yaml::Value::Mapping(m)
}

/// The quickstart's model settings with the plan's `model` fields merged over them, and for
/// easy-VQA runs (`easy_vqa`) its `easy_vqa_model` fields over those.
fn with_plan_model(
    plan: &Plan,
    config: serde_yaml::Value,
    easy_vqa: bool,
) -> Result<serde_yaml::Value> {
    let extra = easy_vqa && !plan.easy_vqa_model.is_empty();
    if plan.model.is_empty() && !extra {
        return Ok(config);
    }
    let err = |e: String| VlpError::Msg(format!("quickstart plan `model`: {e}"));
    let mut v = serde_json::to_value(&config).map_err(|e| err(e.to_string()))?;
    crate::pipeline::config::merge_json(&mut v, plan.model_overrides());
    if extra {
        crate::pipeline::config::merge_json(
            &mut v,
            serde_json::Value::Object(plan.easy_vqa_model.clone()),
        );
    }
    serde_yaml::to_value(&v).map_err(|e| err(e.to_string()))
}

fn one(p: &str) -> Files {
    Files::One(PathBuf::from(p))
}

fn none() -> Files {
    Files::Many(Vec::new())
}

impl<'a> Ctx<'a> {
    /// Writes `<out>/vocab.txt` ([`write_vocab`]) and reads it as the tokenizer.
    pub fn new(
        plan: &'a Plan,
        out: &Path,
        shapes: &Path,
        easy: Option<&Path>,
        device: Device,
    ) -> Result<Self> {
        let vocab = out.join("vocab.txt");
        let vocab_size = write_vocab(&vocab, shapes, easy)?;
        let tokenizer = Arc::new(Tokenizer::from_file(&vocab)?);
        Ok(Ctx {
            vocab,
            vocab_size,
            plan,
            out: out.to_path_buf(),
            shapes: shapes.to_path_buf(),
            easy: easy.map(Path::to_path_buf),
            device,
            tokenizer,
        })
    }

    /// Tokenizes with the vocabulary a pre-training run was trained with, when one lies beside it
    /// (`vocab.txt` in the directory `pretrained` is or lies in, or one of the three above it:
    /// a quickstart run directory holds it beside `pretrain/`, whose checkpoint files lie in
    /// `pretrain/checkpoints/step-N/`) and differs from this run's: a word embedding is only meaningful with the word ids it was
    /// trained on. Returns how many words of this run's data that vocabulary lacks (they become
    /// `[UNK]`), or `None` when there is no such vocabulary or it is the same.
    pub fn adopt_vocab(&mut self, pretrained: &Path) -> Result<Option<usize>> {
        let found = pretrained
            .ancestors()
            .filter(|d| d.is_dir())
            .take(4)
            .map(|d| d.join("vocab.txt"))
            .find(|p| p.is_file());
        let Some(theirs) = found else {
            return Ok(None);
        };
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| VlpError::io(p, e));
        let (mine, other) = (read(&self.vocab)?, read(&theirs)?);
        if mine == other {
            return Ok(None);
        }
        let known: std::collections::HashSet<&str> = other.lines().collect();
        let lacking = mine.lines().filter(|w| !known.contains(w)).count();
        crate::train::checkpoint::write_atomic(&self.vocab, other.as_bytes())?;
        self.tokenizer = Arc::new(Tokenizer::from_file(&self.vocab)?);
        self.vocab_size = other.lines().count();
        Ok(Some(lacking))
    }

    /// The word classes of [`Plan::pretrain_word_swap`] as lists of words of this run's
    /// vocabulary (words it lacks left out; classes with fewer than two words dropped). With
    /// `pretrain_easy_vqa`, "rectangle" joins the shapes (a Shapes square swapped to it is a
    /// false negative the loss tolerates, as NegCLIP's swaps do).
    pub fn word_swap_groups(&self) -> Vec<Vec<String>> {
        use crate::shapes::scene::{Colour, Shape, Size};
        let mut groups: Vec<Vec<&str>> = Vec::new();
        for class in &self.plan.pretrain_word_swap {
            match class.as_str() {
                "shape" => {
                    // easy-VQA's third shape when its captions are in the pre-training.
                    let easy = self.plan.pretrain_easy_vqa && self.easy.is_some();
                    let (one, many) = if easy {
                        (Some("rectangle"), Some("rectangles"))
                    } else {
                        (None, None)
                    };
                    groups.push(Shape::ALL.iter().map(|s| s.name()).chain(one).collect());
                    groups.push(Shape::ALL.iter().map(|s| s.plural()).chain(many).collect());
                }
                "colour" => groups.push(Colour::ALL.iter().map(|c| c.name()).collect()),
                "size" => groups.push(Size::ALL.iter().map(|s| s.name()).collect()),
                _ => {}
            }
        }
        groups
            .into_iter()
            .map(|g| {
                g.into_iter()
                    .filter(|w| self.tokenizer.token_to_id(w).is_some())
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .filter(|g| g.len() >= 2)
            .collect()
    }

    fn enc(&self) -> TextEncoder {
        TextEncoder {
            tokenizer: self.tokenizer.clone(),
            max_len: MAX_TEXT_LEN,
        }
    }

    /// The experiment config of a run (`kind` `None`: pre-training).
    pub fn experiment(
        &self,
        kind: Option<TaskKind>,
        stage: &Stage,
        name: &str,
        init: Option<&Path>,
    ) -> Result<ExperimentConfig> {
        let (task, variant) = match kind {
            None => (Task::Pretrain, "pretrain"),
            Some(k) => (k.task(), k.variant()),
        };
        let (root, train, val, answers) = match task {
            Task::Pretrain => {
                let mut files = vec![PathBuf::from("pretrain.json")];
                if self.plan.pretrain_regions {
                    files.push(PathBuf::from("pretrain_regions.json"));
                }
                if self.plan.pretrain_easy_vqa && self.easy.is_some() {
                    files.push(self.out.join(EASY_VQA_PRETRAIN_FILE));
                }
                (&self.shapes, Files::Many(files), none(), None)
            }
            Task::Retrieval => (
                &self.shapes,
                one("retrieval_train.json"),
                one("retrieval_val.json"),
                None,
            ),
            Task::Vqa => (
                &self.shapes,
                one("vqa_train.json"),
                one("vqa_val.json"),
                Some(PathBuf::from("answer_list.json")),
            ),
            Task::Nlvr2 => (
                &self.shapes,
                one("nlvr2_train.json"),
                one("nlvr2_val.json"),
                None,
            ),
            Task::Ve => (&self.shapes, one("ve_train.json"), one("ve_val.json"), None),
            Task::EasyVqa => (
                self.easy
                    .as_ref()
                    .ok_or_else(|| VlpError::Msg("easy-VQA data not found".into()))?,
                none(),
                none(),
                None,
            ),
        };
        let plan = self.plan;
        let mut t = TrainConfig {
            name: name.into(),
            max_steps: Some(stage.steps),
            batch_size: stage.batch_size,
            seed: plan.seed,
            log_every: (stage.steps / 40).clamp(1, 25),
            ckpt_every: 0,
            keep_checkpoints: Some(1),
            plot_every: stage.steps.max(1),
            progress: true,
            clip_grad_norm: Some(5.0),
            ..TrainConfig::default()
        };
        t.optimizer.lr = stage.lr;
        t.optimizer.weight_decay = 0.02;
        if let Some(head) = kind.and_then(TaskKind::head) {
            if plan.head_lr_mult != 1.0 {
                t.optimizer.lr_mult = BTreeMap::from([(head.to_string(), plan.head_lr_mult)]);
            }
        }
        if kind.is_some() && init.is_some() && plan.pretrained_vit_lr_mult != 1.0 {
            t.optimizer
                .lr_mult
                .insert("visual_encoder".to_string(), plan.pretrained_vit_lr_mult);
        }
        t.schedule = ScheduleConfig {
            warmup: match stage.warmup_frac {
                Some(f) => (stage.steps as f64 * f).round() as u64,
                None => stage.steps / 20,
            }
            .max(1),
            min_lr: stage.lr * 0.02,
            ..ScheduleConfig::default()
        };
        let itm_word_swap = if task == Task::Pretrain {
            t.objectives = plan.pretrain_objectives.clone();
            let groups = self.word_swap_groups();
            if !groups.is_empty() {
                t.objectives.entry("itm_swap".into()).or_insert(1.0);
            }
            groups
        } else {
            Vec::new()
        };
        let max_samples = match task {
            Task::Retrieval => Some(plan.retrieval_images),
            Task::EasyVqa => plan.easy_vqa_eval,
            _ => Some(plan.eval_samples),
        };
        let exp = ExperimentConfig {
            model: ModelSection {
                name: "albef".into(),
                variant: variant.into(),
                preset: plan.preset,
                // No momentum distillation when fine-tuning: half the forward passes on CPU.
                // The vocabulary of the data (a few hundred words): the MLM / answer heads over
                // bert-base's 30,522 tokens would cost more than the rest of the model.
                config: Some(with_plan_model(
                    plan,
                    yaml_map(&[
                        ("distill", serde_yaml::Value::Bool(false)),
                        // No dropout: a 128-wide model trained for hundreds of steps underfits
                        // (easy-VQA 85.45% without vs 82.5% with BERT's 0.1, docs/quickstart.md).
                        (
                            "bert",
                            yaml_map(&[
                                (
                                    "vocab_size",
                                    serde_yaml::Value::from(self.vocab_size as u64),
                                ),
                                ("hidden_dropout_prob", serde_yaml::Value::from(0.0)),
                                ("attention_probs_dropout_prob", serde_yaml::Value::from(0.0)),
                                (
                                    "initializer_range",
                                    serde_yaml::Value::from(plan.text_init_std),
                                ),
                            ]),
                        ),
                        (
                            "vision",
                            yaml_map(&[
                                (
                                    "init",
                                    serde_yaml::to_value(plan.vit_init)
                                        .expect("a unit enum serialises"),
                                ),
                                ("init_std", serde_yaml::Value::from(plan.vit_init_std)),
                            ]),
                        ),
                    ]),
                    task == Task::EasyVqa,
                )?),
                init: init.map(Path::to_path_buf),
                init_mode: InitMode::Partial,
                // Softmax CE learns the answers in hundreds of steps; BCE over 74 answers first
                // pushes every logit down (Shapes VQA stayed at chance after 150 BCE steps).
                vqa_loss: VqaLoss::SoftmaxCe,
                itm_word_swap,
            },
            data: DataSection {
                task,
                root: Some(root.clone()),
                train_file: train,
                val_file: val,
                test_file: none(),
                image_root: None,
                answer_list: answers,
                image_size: None,
                normalize: Normalize::Clip,
                max_words: MAX_WORDS,
                max_text_len: MAX_TEXT_LEN,
                tokenizer: Some(self.vocab.clone()),
                num_workers: plan.workers,
                skip_bad_samples: false,
                questions_per_image: match task {
                    Task::Vqa => Some(QUESTIONS_PER_IMAGE),
                    Task::EasyVqa => Some(plan.easy_vqa_questions_per_image),
                    _ => None,
                },
                sentences_per_pair: match task {
                    Task::Nlvr2 => plan.nlvr2_sentences_per_pair,
                    _ => None,
                },
                hypotheses_per_image: match task {
                    Task::Ve => plan.ve_hypotheses_per_image,
                    _ => None,
                },
            },
            train: t,
            eval: EvalSection {
                split: "val".into(),
                every: None,
                k_test: plan.k_test,
                batch_size: 64,
                max_samples,
            },
            source: self.out.join(format!("{name}.yaml")),
        };
        exp.validate()?;
        Ok(exp)
    }

    fn transform(&self, cfg: &AlbefConfig, task: Task) -> Result<ImageTransform> {
        let size = cfg.image_res as u32;
        let mut c = ImageTransformConfig::eval(size, Normalize::Clip);
        if task == Task::EasyVqa {
            // One shape per image and no position question: flips are safe.
            c = ImageTransformConfig {
                train: true,
                scale: (1.0, 1.0),
                ratio: (1.0, 1.0),
                rot90: self.plan.easy_vqa_rotate,
                ..ImageTransformConfig::train(size, Normalize::Clip)
            };
        }
        ImageTransform::new(c)
    }

    /// The training set, without augmentation (see the module documentation).
    fn dataset(&self, exp: &ExperimentConfig, cfg: &AlbefConfig) -> Result<AnyDataset> {
        let tf = self.transform(cfg, exp.data.task)?;
        let opts = ReadOptions::new(exp.image_root());
        let prep = TextPrep::Albef {
            max_words: MAX_WORDS,
        };
        let files = exp.split_files("train");
        Ok(match exp.data.task {
            Task::Pretrain | Task::Retrieval => AnyDataset::Caption(CaptionDataset::new(
                karpathy::read_many(&files, &opts)?.items,
                tf,
                prep,
            )),
            Task::EasyVqa
                if self.plan.easy_vqa_shape_contrast || self.plan.easy_vqa_colour_contrast =>
            {
                let ev = crate::pipeline::albef::easy_vqa(exp)?;
                let mut qs = ev
                    .read(
                        crate::data::easy_vqa::Split::Train,
                        exp.data.skip_bad_samples,
                    )?
                    .items;
                let answers = ev.answers.answers().to_vec();
                let mut extra = Vec::new();
                if self.plan.easy_vqa_shape_contrast {
                    extra.extend(easy_vqa_shape_contrast(&qs, &answers));
                }
                if self.plan.easy_vqa_colour_contrast {
                    extra.extend(easy_vqa_colour_contrast(&qs, &answers));
                }
                qs.extend(extra);
                crate::pipeline::albef::easy_vqa_train_dataset(exp, tf, qs)?
            }
            Task::Vqa | Task::EasyVqa => vqa_train_dataset(exp, tf)?,
            Task::Nlvr2 => {
                let mut ex = Vec::new();
                for f in &files {
                    ex.extend(nlvr2::read(f, &opts)?.items);
                }
                crate::pipeline::albef::nlvr2_train_dataset(exp, ex, tf)?
            }
            Task::Ve => {
                let mut ex = Vec::new();
                for f in &files {
                    ex.extend(snli_ve::read(f, &opts)?.items);
                }
                crate::pipeline::albef::ve_train_dataset(exp, ex, tf)?
            }
        })
    }

    fn train(
        &self,
        exp: &ExperimentConfig,
        name: &str,
    ) -> Result<(AlbefTrainable, crate::train::TrainOutcome)> {
        let cfg = albef_config(exp)?;
        // The initialisation draws from torch's global generator: seeded per run and built under
        // a lock, so that two runs side by side ([`super::Plan::parallel_arms`]) start from the
        // same weights as one after the other.
        let guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(exp.train.seed as i64);
        let mut model = AlbefModel::build_for(exp, &cfg, self.device)?;
        let mut mismatched = Vec::new();
        if let Some(init) = &exp.model.init {
            let report = load_init(&mut model, init, exp.model.init_mode)?;
            mismatched = report.mismatched.clone();
            let mut prefixes: Vec<String> = report
                .missing
                .iter()
                .map(|k| k.key.split('.').next().unwrap_or("").to_string())
                .collect();
            prefixes.dedup();
            println!(
                "        initialised from {}: {} tensors loaded, {} missing{}, {} unexpected, {} mis-shaped",
                init.display(),
                report.loaded.len(),
                report.missing.len(),
                if prefixes.is_empty() {
                    String::new()
                } else {
                    format!(" ({}.*)", prefixes.join(".*, "))
                },
                report.unexpected.len(),
                report.mismatched.len()
            );
        }
        drop(guard);
        if let (Some(init), Some(m)) = (&exp.model.init, mismatched.first()) {
            return Err(VlpError::Msg(format!(
                "{name}: {} does not fit the model: {} mis-shaped tensor(s), first `{}` \
                 (checkpoint {:?}, model {:?}); was it pre-trained with another vocabulary \
                 or preset?",
                init.display(),
                mismatched.len(),
                m.key,
                m.found,
                m.expected
            )));
        }
        let ds = self.dataset(exp, &cfg)?;
        let mut lc = LoaderConfig::new(exp.train.batch_size);
        lc.seed = exp.train.seed;
        lc.num_workers = exp.data.num_workers;
        lc.drop_last = ds_len(&ds) >= exp.train.batch_size;
        let enc = self.enc();
        let loader = DataLoader::new(ds, move |s: Vec<AnySample>| collate(&enc, s), lc)?;
        let mut source = LoaderSource::new(loader, |b: &AlbefBatch| b.len());
        let dir = self.out.join(name);
        let mut trainer = Trainer::new(exp.train_config(), Some(dir))?;
        let mut trainable = AlbefTrainable {
            model,
            alpha: cfg.alpha,
            word_swap: crate::pipeline::albef::word_swap(exp)?,
        };
        let outcome = trainer.fit(&mut trainable, &mut source, None)?;
        Ok((trainable, outcome))
    }

    /// Pre-trains on the Shapes captions (with `pretrain_regions` their region descriptions,
    /// with `pretrain_easy_vqa` captions of easy-VQA's training images); the run directory is
    /// `<out>/pretrain`.
    pub fn pretrain(&self) -> Result<PretrainResult> {
        if let (true, Some(easy)) = (self.plan.pretrain_easy_vqa, &self.easy) {
            let n = write_easy_vqa_pretrain(&self.out.join(EASY_VQA_PRETRAIN_FILE), easy)?;
            println!(
                "        + captions of {n} easy-VQA training images ({EASY_VQA_PRETRAIN_FILE})"
            );
        }
        let exp = self.experiment(None, &self.plan.pretrain, "pretrain", None)?;
        let (_, outcome) = self.train(&exp, "pretrain")?;
        let first = outcome.history.first();
        let last = outcome.history.last();
        Ok(PretrainResult {
            steps: outcome.step,
            samples: last.map_or(0, |r| r.samples),
            first_terms: first.map(|r| r.terms.clone()).unwrap_or_default(),
            last_terms: last.map(|r| r.terms.clone()).unwrap_or_default(),
        })
    }

    /// NLVR2's text-assignment pre-training (ALBEF's `Pretrain_nlvr.py`, variant
    /// `pretrain_nlvr`) on the Shapes captions, from the pre-training run `init`; the run
    /// directory is `<out>/nlvr2-ta`, which the pre-trained NLVR2 run then starts from.
    pub fn text_assignment(&self, stage: &Stage, init: &Path) -> Result<PathBuf> {
        let mut exp = self.experiment(None, stage, NLVR2_TA_RUN, Some(init))?;
        exp.model.variant = "pretrain_nlvr".into();
        exp.model.itm_word_swap.clear();
        exp.train.objectives.clear();
        exp.validate()?;
        let (_, outcome) = self.train(&exp, NLVR2_TA_RUN)?;
        let term = |r: Option<&crate::train::trainer::StepRecord>| {
            r.and_then(|r| r.terms.get("ta").copied())
                .unwrap_or(f64::NAN)
        };
        println!(
            "        ta {:.3} -> {:.3} (chance ln 3 = 1.099)",
            term(outcome.history.first()),
            term(outcome.history.last())
        );
        Ok(self.out.join(NLVR2_TA_RUN))
    }

    /// The zero-shot grounding probe ([`super::probe`]) of the pre-trained weights `init` on
    /// easy-VQA's test split; `None` without easy-VQA or when `init` is not a complete
    /// pre-training checkpoint (said on the console). The model is the retrieval variant (ITC
    /// and ITM heads as pre-training left them), nothing is trained.
    pub fn grounding_probe(&self, init: &Path) -> Result<Option<super::probe::GroundingProbe>> {
        let Some(easy) = &self.easy else {
            return Ok(None);
        };
        let exp = self.experiment(
            Some(TaskKind::Retrieval),
            &self.plan.retrieval,
            "probe",
            Some(init),
        )?;
        let cfg = albef_config(&exp)?;
        let mut model = AlbefModel::build_for(&exp, &cfg, self.device)?;
        let report = load_init(&mut model, init, exp.model.init_mode)?;
        let bad = (report.mismatched.iter().map(|m| &m.key))
            .chain(report.missing.iter().map(|k| &k.key))
            .next();
        if let Some(key) = bad {
            // `--pretrained` also takes partial checkpoints (one without the ITM / ITC heads,
            // say): the fine-tuning runs load what they have, the probe has nothing to measure.
            println!(
                "        grounding probe skipped: {} lacks or mis-shapes `{key}` (not a complete \
                 pre-training checkpoint)",
                init.display()
            );
            return Ok(None);
        }
        model.set_train(false);
        let AlbefModel::Retrieval(m) = &model else {
            return Err(VlpError::Msg(
                "grounding probe: the retrieval variant was not built".into(),
            ));
        };
        let transform = ImageTransform::new(ImageTransformConfig::eval(
            cfg.image_res as u32,
            Normalize::Clip,
        ))?;
        super::probe::easy_vqa_probe(m, &self.enc(), &transform, easy).map(Some)
    }

    /// Fine-tunes `kind` (from `init`, a run directory, or from scratch) and evaluates it on the
    /// validation split (easy-VQA: its test split).
    pub fn finetune(&self, kind: TaskKind, init: Option<&Path>) -> Result<RunResult> {
        self.finetune_with(kind, init, true)
    }

    /// [`Ctx::finetune`], with the trainer's progress bar shown or not (one of two runs side by
    /// side keeps its bar hidden).
    pub fn finetune_with(
        &self,
        kind: TaskKind,
        init: Option<&Path>,
        progress: bool,
    ) -> Result<RunResult> {
        let stage = match kind {
            TaskKind::Retrieval => self.plan.retrieval,
            TaskKind::Vqa => self.plan.vqa,
            TaskKind::Nlvr2 => self.plan.nlvr2,
            TaskKind::Ve => self.plan.ve,
            TaskKind::EasyVqa => self
                .plan
                .easy_vqa
                .ok_or_else(|| VlpError::Msg("easy-VQA is not planned".into()))?,
        };
        let name = format!(
            "{}-{}",
            kind.key(),
            if init.is_some() {
                "pretrained"
            } else {
                "scratch"
            }
        );
        // Fine-tuning pre-trained weights at a lower rate than training from scratch, as the
        // official recipes fine-tune at a fraction of the pre-training rate.
        let stage = match init {
            Some(_) => Stage {
                lr: stage.lr * self.plan.pretrained_lr_scale,
                ..stage
            },
            None => stage,
        };
        let mut exp = self.experiment(Some(kind), &stage, &name, init)?;
        exp.train.progress = progress;
        let (mut trainable, outcome) = self.train(&exp, &name)?;
        let cfg = albef_config(&exp)?;
        let data = eval_data(&exp)?;
        let setup = EvalSetup {
            enc: self.enc(),
            transform: ImageTransform::new(ImageTransformConfig::eval(
                cfg.image_res as u32,
                Normalize::Clip,
            ))?,
            k_test: exp.eval.k_test,
            batch_size: exp.eval.batch_size,
            num_workers: self.plan.workers,
            groups: match kind {
                TaskKind::Vqa => Some(crate::shapes::vqa::family_of_text),
                TaskKind::Nlvr2 => Some(crate::shapes::nlvr2::family_of_text),
                TaskKind::Ve => Some(crate::shapes::ve::family_of_text),
                TaskKind::EasyVqa => Some(crate::data::easy_vqa::family_of_text),
                TaskKind::Retrieval => None,
            },
        };
        let chance = chance_level(&data);
        let text_prior = if kind == TaskKind::Retrieval {
            None
        } else {
            let mut on_train = exp.clone();
            on_train.eval.split = "train".into();
            on_train.eval.max_samples = None;
            text_prior(&eval_data(&on_train)?, &data)
        };
        let (value, metrics) = match (kind, &mut trainable.model) {
            (TaskKind::EasyVqa, model) => {
                model.set_train(false);
                let metrics = tch::no_grad(|| easy_vqa_eval(model, &data, &setup));
                model.set_train(true);
                let metrics = metrics?;
                (metrics["accuracy"], metrics)
            }
            _ => {
                let metrics = evaluate(&mut trainable.model, &data, &setup)?;
                let key = match kind {
                    TaskKind::Retrieval => "r_mean",
                    TaskKind::Vqa => "vqa_acc",
                    _ => "acc",
                };
                let v = *metrics.get(key).ok_or_else(|| {
                    VlpError::Msg(format!("{name}: the evaluation returned no `{key}`"))
                })?;
                (v, metrics)
            }
        };
        let js = serde_json::json!({"metrics": metrics, "chance": chance, "steps": outcome.step});
        crate::train::checkpoint::write_atomic(
            &self.out.join(&name).join("eval.json"),
            serde_json::to_string_pretty(&js)
                .map_err(|e| VlpError::Msg(e.to_string()))?
                .as_bytes(),
        )?;
        Ok(RunResult {
            value,
            chance,
            text_prior,
            metrics,
            steps: outcome.step,
        })
    }
}

/// Held while a run builds and initialises its model (see [`Ctx::finetune_with`]).
static BUILD_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The run directory (under `--out`) of NLVR2's text-assignment pre-training.
pub const NLVR2_TA_RUN: &str = "nlvr2-ta";

/// The pre-training captions of easy-VQA's training images (in the run directory).
pub const EASY_VQA_PRETRAIN_FILE: &str = "pretrain_easy_vqa.json";

/// The colour and shape of each easy-VQA image as its questions and answers state them: the
/// answer of a "what" question, the colour or shape named by any question (those of a yes/no
/// question only when its answer says the thing is present: "yes", or "no" to a negated
/// question such as "is there not a red shape?"). Images without either are left out.
pub fn easy_vqa_attributes(
    questions: &[crate::data::easy_vqa::EasyVqaQuestion],
    answers: &[String],
) -> BTreeMap<PathBuf, (Option<String>, Option<String>)> {
    let kind = |w: &str| {
        answers
            .iter()
            .any(|a| a.as_str() == w)
            .then(|| easy_vqa_answer_type(w))
            .filter(|t| *t != "yes/no")
    };
    let mut out: BTreeMap<PathBuf, (Option<String>, Option<String>)> = BTreeMap::new();
    for q in questions {
        let words = basic_words(&q.question);
        let negated = words.iter().any(|w| w == "not" || w == "no");
        let states = match q.answer.as_str() {
            "yes" => !negated,
            "no" => negated,
            _ => true,
        };
        let mut named: Vec<&str> = Vec::new();
        if states {
            named.extend(words.iter().map(String::as_str));
        }
        if q.answer != "yes" && q.answer != "no" {
            named.push(q.answer.as_str());
        }
        let e = out.entry(q.image.clone()).or_default();
        for w in named {
            match kind(w) {
                Some("color") => e.0 = Some(w.to_string()),
                Some("shape") => e.1 = Some(w.to_string()),
                _ => {}
            }
        }
    }
    out.retain(|_, (c, s)| c.is_some() || s.is_some());
    out
}

/// The contrastive questions of [`easy_vqa_shape_contrast`] / [`easy_vqa_colour_contrast`]:
/// for each image whose attributes ([`easy_vqa_attributes`]) `ask` turns into `(attribute word,
/// present)` pairs, `question(word, negated)` and its negation, answered "yes" / "no" by whether
/// the (negated) statement holds.
fn contrast_questions(
    questions: &[crate::data::easy_vqa::EasyVqaQuestion],
    answers: &[String],
    ask: impl Fn(&(Option<String>, Option<String>), u64) -> Vec<(String, bool)>,
    question: impl Fn(&str, bool) -> String,
) -> Vec<crate::data::easy_vqa::EasyVqaQuestion> {
    let label = |a: &str| answers.iter().position(|x| x == a);
    let (Some(yes), Some(no)) = (label("yes"), label("no")) else {
        return Vec::new();
    };
    let ids: BTreeMap<&Path, u64> = questions
        .iter()
        .map(|q| (q.image.as_path(), q.image_id))
        .collect();
    let mut out = Vec::new();
    for (image, attrs) in easy_vqa_attributes(questions, answers) {
        let Some(&image_id) = ids.get(image.as_path()) else {
            continue;
        };
        for (word, present) in ask(&attrs, image_id) {
            for negated in [false, true] {
                let answer = present != negated;
                out.push(crate::data::easy_vqa::EasyVqaQuestion {
                    question: question(&word, negated),
                    answer: if answer { "yes" } else { "no" }.to_string(),
                    label: if answer { yes } else { no },
                    image_id,
                    image: image.clone(),
                });
            }
        }
    }
    out
}

/// The answers of one type (`"shape"`, `"color"`) in the answer list's order.
fn answers_of_type(answers: &[String], ty: &str) -> Vec<String> {
    answers
        .iter()
        .filter(|a| easy_vqa_answer_type(a) == ty)
        .cloned()
        .collect()
}

/// Contrastive yes/no shape questions for easy-VQA training images
/// ([`Plan::easy_vqa_shape_contrast`](super::Plan::easy_vqa_shape_contrast)): for each image
/// whose shape its questions state ([`easy_vqa_attributes`]), "does the image contain a
/// {shape}?" for every shape answer, "yes" for its own shape and "no" for the others, each
/// with its negation ("does the image not contain a {shape}?", the answer flipped): as many
/// "yes" as "no", so the text alone tells nothing.
pub fn easy_vqa_shape_contrast(
    questions: &[crate::data::easy_vqa::EasyVqaQuestion],
    answers: &[String],
) -> Vec<crate::data::easy_vqa::EasyVqaQuestion> {
    let shapes = answers_of_type(answers, "shape");
    contrast_questions(
        questions,
        answers,
        |(_, shape), _| match shape {
            Some(shape) => shapes.iter().map(|s| (s.clone(), s == shape)).collect(),
            None => Vec::new(),
        },
        |s, negated| {
            let not = if negated { " not" } else { "" };
            format!("does the image{not} contain a {s}?")
        },
    )
}

/// Contrastive yes/no colour questions for easy-VQA training images
/// ([`Plan::easy_vqa_colour_contrast`](super::Plan::easy_vqa_colour_contrast)): for each image
/// whose colour its questions state ([`easy_vqa_attributes`]), "is there a {colour} shape?" for
/// its colour ("yes") and for two other colours of the answer list ("no"), picked by the image
/// id so that every colour is asked about, each with its negation ("is there not a {colour}
/// shape?", the answer flipped) — the colour counterpart of [`easy_vqa_shape_contrast`].
pub fn easy_vqa_colour_contrast(
    questions: &[crate::data::easy_vqa::EasyVqaQuestion],
    answers: &[String],
) -> Vec<crate::data::easy_vqa::EasyVqaQuestion> {
    let colours = answers_of_type(answers, "color");
    contrast_questions(
        questions,
        answers,
        |(colour, _), image_id| {
            let Some(colour) = colour else {
                return Vec::new();
            };
            let others: Vec<&String> = colours.iter().filter(|c| *c != colour).collect();
            let m = others.len();
            let mut asked = vec![(colour.clone(), true)];
            if m > 0 {
                let first = image_id as usize % m;
                asked.push((others[first].clone(), false));
                if m > 1 {
                    asked.push((others[(first + m / 2) % m].clone(), false));
                }
            }
            asked
        },
        |c, negated| {
            let not = if negated { " not" } else { "" };
            format!("is there{not} a {c} shape?")
        },
    )
}

/// Captions of an easy-VQA image from its colour and shape ("a red circle", "there is a red
/// circle", "a circle", "a red shape"; only what is known).
pub fn easy_vqa_captions(colour: Option<&str>, shape: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    if let (Some(c), Some(s)) = (colour, shape) {
        out.push(format!("a {c} {s}"));
        out.push(format!("there is a {c} {s}"));
        out.push(format!("the image contains a {c} {s}"));
    }
    if let Some(s) = shape {
        out.push(format!("a {s}"));
    }
    if let Some(c) = colour {
        out.push(format!("a {c} shape"));
    }
    out
}

/// Writes captions of easy-VQA's training images ([`easy_vqa_attributes`],
/// [`easy_vqa_captions`]) as a pre-training caption file, image paths absolute: in-domain
/// image–text pairs of the downstream training images, as COCO's captions of the VQA training
/// images are part of ALBEF's pre-training data. Returns the number of images.
pub fn write_easy_vqa_pretrain(path: &Path, easy: &Path) -> Result<usize> {
    let ds = crate::data::easy_vqa::EasyVqa::open(easy)?;
    let questions = ds.read(crate::data::easy_vqa::Split::Train, false)?.items;
    let attrs = easy_vqa_attributes(&questions, ds.answers.answers());
    let entries: Vec<serde_json::Value> = attrs
        .iter()
        .map(|(image, (c, s))| {
            serde_json::json!({
                "image": image,
                "caption": easy_vqa_captions(c.as_deref(), s.as_deref()),
            })
        })
        .collect();
    crate::train::checkpoint::write_atomic(
        path,
        serde_json::to_string(&entries)
            .map_err(|e| VlpError::Msg(e.to_string()))?
            .as_bytes(),
    )?;
    Ok(entries.len())
}

/// Ids of bert-base-uncased's special tokens, kept in the small vocabulary so that every
/// default (`SpecialTokens::default()`, `pad_token_id`) stays right.
const SPECIALS: [(usize, &str); 5] = [
    (0, "[PAD]"),
    (100, "[UNK]"),
    (101, "[CLS]"),
    (102, "[SEP]"),
    (103, "[MASK]"),
];

fn collect_strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        // Image paths are not text.
        serde_json::Value::String(s) if !s.contains('/') && !s.ends_with(".png") => {
            out.push(s.clone());
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| collect_strings(x, out)),
        _ => {}
    }
}

/// The words of a text as BERT's basic tokenizer splits it (lower case; punctuation apart).
pub fn basic_words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for ch in text.to_lowercase().chars() {
        if ch.is_alphanumeric() {
            cur.push(ch);
        } else {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            if !ch.is_whitespace() {
                out.push(ch.to_string());
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Writes a WordPiece `vocab.txt` holding every word of the Shapes training texts and answer
/// list and of easy-VQA's training questions and answers (whole words, sorted), with the special
/// tokens at bert-base-uncased's ids (`[unusedN]` fill the gaps); returns its size. Words of the
/// evaluation texts that are not in it become `[UNK]`.
pub fn write_vocab(path: &Path, shapes: &Path, easy: Option<&Path>) -> Result<usize> {
    let mut files: Vec<PathBuf> = [
        "pretrain.json",
        "pretrain_regions.json",
        "retrieval_train.json",
        "vqa_train.json",
        "nlvr2_train.json",
        "ve_train.json",
        "answer_list.json",
    ]
    .iter()
    .map(|f| shapes.join(f))
    .collect();
    if let Some(e) = easy {
        files.push(e.join("train").join("questions.json"));
    }
    let mut words = std::collections::BTreeSet::new();
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|e| VlpError::io(f, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| VlpError::Msg(format!("{}: {e}", f.display())))?;
        let mut strings = Vec::new();
        collect_strings(&v, &mut strings);
        for s in strings {
            words.extend(basic_words(&s));
        }
    }
    if let Some(e) = easy {
        let f = e.join("answers.txt");
        let text = std::fs::read_to_string(&f).map_err(|e| VlpError::io(&f, e))?;
        words.extend(text.lines().flat_map(basic_words));
    }
    let mut lines: Vec<String> = (0..104).map(|i| format!("[unused{i}]")).collect();
    for (i, s) in SPECIALS {
        lines[i] = s.to_string();
    }
    lines.extend(words.into_iter().filter(|w| !w.is_empty()));
    let n = lines.len();
    crate::train::checkpoint::write_atomic(path, (lines.join("\n") + "\n").as_bytes())?;
    Ok(n)
}

fn ds_len(ds: &AnyDataset) -> usize {
    use crate::data::loader::Dataset;
    ds.len()
}

/// Probability that a uniformly random ranking of `t` candidates, `m` of them correct, puts one
/// in the top `k`.
fn hit_at_k(t: usize, m: usize, k: usize) -> f64 {
    let mut miss = 1.0;
    for j in 0..k.min(t) {
        if t - j == 0 || t < m + j {
            return 1.0;
        }
        miss *= (t - m - j) as f64 / (t - j) as f64;
    }
    1.0 - miss
}

/// What a model that ignores its input scores, in percent: random rankings (retrieval: the mean
/// of the six recalls), the best constant answer (VQA), the majority class (NLVR2, SNLI-VE).
pub fn chance_level(data: &EvalData) -> f64 {
    match data {
        EvalData::Retrieval { gallery } => {
            let n = gallery.images.len();
            let t = gallery.texts.len();
            if n == 0 || t == 0 {
                return 0.0;
            }
            let mut sum = 0.0;
            for k in [1, 5, 10] {
                let txt = k.min(n) as f64 / n as f64;
                let img = gallery
                    .img2txt
                    .iter()
                    .map(|v| hit_at_k(t, v.len(), k))
                    .sum::<f64>()
                    / n as f64;
                sum += txt + img;
            }
            100.0 * sum / 6.0
        }
        EvalData::Vqa {
            questions,
            answers,
            exact,
        } => {
            let n = questions.len().max(1) as f64;
            let mut best: f64 = 0.0;
            for a in answers {
                let s: f64 = questions
                    .iter()
                    .map(|q| question_score(a, &q.answers, *exact))
                    .sum();
                best = best.max(s / n);
            }
            100.0 * best
        }
        EvalData::Nlvr2(v) => majority(v.iter().map(|e| e.3)),
        EvalData::Ve(v) => majority(v.iter().map(|e| e.2)),
    }
}

/// What a model that reads only the text scores, in percent: each evaluation text gets the
/// label (NLVR2, SNLI-VE) or answer (VQA: the most frequent annotator answer) seen most often
/// with the same text (lower-cased, whitespace-normalised) in `train`, and the most frequent
/// one of all of `train` when its text never occurs there — the "question-only prior" baseline
/// of the VQA literature. A model below it has not learned to use the image. `None` for
/// retrieval (a text alone ranks no image) and when `train` and `eval` are of different kinds.
pub fn text_prior(train: &EvalData, eval: &EvalData) -> Option<f64> {
    fn key(text: &str) -> String {
        text.split_whitespace()
            .map(str::to_lowercase)
            .collect::<Vec<_>>()
            .join(" ")
    }
    // Most frequent label per text and overall; ties go to the smallest label (deterministic).
    fn fit<L: Ord + Clone>(
        pairs: impl Iterator<Item = (String, L)>,
    ) -> (BTreeMap<String, L>, Option<L>) {
        let mut per: BTreeMap<String, BTreeMap<L, usize>> = BTreeMap::new();
        let mut all: BTreeMap<L, usize> = BTreeMap::new();
        for (t, l) in pairs {
            *per.entry(t).or_default().entry(l.clone()).or_default() += 1;
            *all.entry(l).or_default() += 1;
        }
        let top = |c: &BTreeMap<L, usize>| {
            c.iter()
                .fold(None::<(&L, usize)>, |best, (l, &n)| match best {
                    Some((_, m)) if m >= n => best,
                    _ => Some((l, n)),
                })
                .map(|(l, _)| l.clone())
        };
        let rules = per
            .iter()
            .filter_map(|(t, c)| top(c).map(|l| (t.clone(), l)))
            .collect();
        (rules, top(&all))
    }
    fn score<L: PartialEq>(
        rules: &(BTreeMap<String, L>, Option<L>),
        eval: impl Iterator<Item = (String, L)>,
    ) -> f64 {
        let (mut right, mut n) = (0usize, 0usize);
        for (t, gold) in eval {
            n += 1;
            if rules.0.get(&t).or(rules.1.as_ref()) == Some(&gold) {
                right += 1;
            }
        }
        100.0 * right as f64 / n.max(1) as f64
    }
    match (train, eval) {
        (EvalData::Nlvr2(tr), EvalData::Nlvr2(ev)) => {
            let rules = fit(tr.iter().map(|e| (key(&e.2), e.3)));
            Some(score(&rules, ev.iter().map(|e| (key(&e.2), e.3))))
        }
        (EvalData::Ve(tr), EvalData::Ve(ev)) => {
            let rules = fit(tr.iter().map(|e| (key(&e.1), e.2)));
            Some(score(&rules, ev.iter().map(|e| (key(&e.1), e.2))))
        }
        (
            EvalData::Vqa { questions: tr, .. },
            EvalData::Vqa {
                questions: ev,
                exact,
                ..
            },
        ) => {
            let rules = fit(tr.iter().flat_map(|q| {
                let k = key(&q.question);
                q.answers.iter().map(move |a| (k.clone(), a.clone()))
            }));
            let n = ev.len().max(1) as f64;
            let total: f64 = ev
                .iter()
                .map(|q| {
                    let Some(pred) = rules.0.get(&key(&q.question)).or(rules.1.as_ref()) else {
                        return 0.0;
                    };
                    question_score(pred, &q.answers, *exact)
                })
                .sum();
            Some(100.0 * total / n)
        }
        _ => None,
    }
}

fn majority(labels: impl Iterator<Item = i64>) -> f64 {
    let mut c: BTreeMap<i64, usize> = BTreeMap::new();
    let mut n = 0;
    for l in labels {
        *c.entry(l).or_default() += 1;
        n += 1;
    }
    100.0 * c.values().copied().max().unwrap_or(0) as f64 / n.max(1) as f64
}

/// The answer type of an easy-VQA answer: `yes/no`, `shape` or `color`.
pub fn easy_vqa_answer_type(answer: &str) -> &'static str {
    match answer {
        "yes" | "no" => "yes/no",
        "circle" | "rectangle" | "triangle" => "shape",
        _ => "color",
    }
}

/// easy-VQA test accuracy (exact match of the predicted answer), overall, per answer type
/// (`acc_yes/no`, `acc_color`, `acc_shape`) and, with `setup.groups`, per question family
/// (`group_<family>`, [`family_of_text`](crate::data::easy_vqa::family_of_text)), in percent. The classifier head (`vqa_cls`) takes
/// the argmax of its logits, the generative head (`vqa`) the top-ranked answer of the list;
/// either way each image is encoded once for all of its questions in a chunk.
pub fn easy_vqa_eval(
    model: &AlbefModel,
    data: &EvalData,
    setup: &EvalSetup,
) -> Result<BTreeMap<String, f64>> {
    let EvalData::Vqa {
        questions, answers, ..
    } = data
    else {
        return Err(VlpError::Msg("easy-VQA evaluation needs VQA data".into()));
    };
    let preds = match model {
        AlbefModel::VqaCls(m) => classify_questions(m, questions, setup)?,
        AlbefModel::Vqa(m) => rank_questions(m, questions, answers, setup)?,
        other => {
            return Err(VlpError::Msg(format!(
                "easy-VQA evaluation needs a VQA model, not albef {}",
                other.variant()
            )))
        }
    };
    let mut correct: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (q, b) in questions.iter().zip(preds) {
        let gt = q.answers.first().map(String::as_str).unwrap_or("");
        let ok = answers.get(b).map(String::as_str) == Some(gt);
        let family = setup
            .groups
            .and_then(|f| f(&q.question))
            .map(|g| format!("group_{g}"));
        let keys = [
            "accuracy".to_string(),
            format!("acc_{}", easy_vqa_answer_type(gt)),
        ];
        for key in keys.into_iter().chain(family) {
            let e = correct.entry(key).or_default();
            e.0 += usize::from(ok);
            e.1 += 1;
        }
    }
    let mut out = BTreeMap::new();
    for (k, (c, n)) in correct {
        out.insert(k, 100.0 * c as f64 / n.max(1) as f64);
    }
    out.entry("accuracy".into()).or_insert(0.0);
    Ok(out)
}

/// The index (in `answers`) of the top-ranked answer of every question (ALBEF's `rank_answer`
/// over the whole list), each image encoded once per chunk.
fn rank_questions(
    m: &AlbefVqa,
    questions: &[VqaQuestion],
    answers: &[String],
    setup: &EvalSetup,
) -> Result<Vec<usize>> {
    let dev = m.visual_encoder_device();
    let refs: Vec<&str> = answers.iter().map(String::as_str).collect();
    let (aid, amask) = setup.enc.encode_answers(&refs)?;
    let (aid, amask) = (aid.to_device(dev), amask.to_device(dev));
    let k = answers.len() as i64;
    let mut rng = StdRng::seed_from_u64(0);
    let mut order: Vec<usize> = (0..questions.len()).collect();
    order.sort_by(|&a, &b| questions[a].image.cmp(&questions[b].image));
    let mut out = vec![0usize; questions.len()];
    for chunk in order.chunks(setup.batch_size.max(1) * 4) {
        let mut uniq: Vec<&Path> = Vec::new();
        let mut which = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let p = questions[i].image.as_path();
            if uniq.last() != Some(&p) {
                uniq.push(p);
            }
            which.push(uniq.len() as i64 - 1);
        }
        let imgs = uniq
            .iter()
            .map(|p| setup.transform.apply_path(p, &mut rng))
            .collect::<Result<Vec<_>>>()?;
        let img = stack_images(imgs)?.to_device(dev);
        let emb = m.visual_encoder.forward_t(&img, false);
        let emb = emb.index_select(0, &Tensor::from_slice(&which).to_device(dev));
        let qs: Vec<&str> = chunk
            .iter()
            .map(|&i| questions[i].question.as_str())
            .collect();
        let (qi, qm) = setup.enc.encode(&qs)?;
        let (qi, qm) = (qi.to_device(dev), qm.to_device(dev));
        let cross = [CrossInput {
            states: &emb,
            mask: None,
            rows: None,
        }];
        let states = m.text_encoder.multimodal(&qi, &qm, &cross, false);
        let (ids, _) = m.rank_answer(&states, &qm, &aid, &amask, k)?;
        let best =
            Vec::<i64>::try_from(ids.select(1, 0).to_kind(Kind::Int64).to_device(Device::Cpu))?;
        for (&i, b) in chunk.iter().zip(best) {
            out[i] = b as usize;
        }
    }
    Ok(out)
}

/// The device of a VQA model's weights.
trait DeviceOf {
    fn visual_encoder_device(&self) -> Device;
}

impl DeviceOf for AlbefVqa {
    fn visual_encoder_device(&self) -> Device {
        use vlp_models::VlpModel;
        self.var_store().device()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::easy_vqa::EasyVqaQuestion;
    use crate::metrics::vqa::{vqa_accuracy, GtAnswer};

    fn vq(question: &str, answers: &[&str]) -> VqaQuestion {
        VqaQuestion {
            question_id: None,
            image_id: None,
            image_rel: "x.png".into(),
            image: PathBuf::from("x.png"),
            question: question.into(),
            answers: answers.iter().map(|a| a.to_string()).collect(),
            multiple_choice_answer: None,
            question_type: None,
            answer_type: None,
            dataset: None,
        }
    }

    #[test]
    fn text_prior_predicts_the_most_frequent_label_of_the_same_text() {
        let ve = |t: &str, l: i64| (PathBuf::from("i.png"), t.to_string(), l);
        let train = EvalData::Ve(vec![
            ve("there is no circle", 2),
            ve("There is  no circle", 2),
            ve("there is no circle", 0),
            ve("the star is a toy", 1),
            ve("there is a red star", 0),
            ve("there is a red star", 0),
        ]);
        // "no circle" -> 2 (2 of 3, case and spaces ignored), "toy" -> 1, unseen -> overall
        // majority 0 (3 of 6 against 2 and 1).
        let eval = EvalData::Ve(vec![
            ve("there is no circle", 2),
            ve("there is no circle", 0),
            ve("the star is a toy", 1),
            ve("there is a blue star", 0),
            ve("there is a blue square", 2),
        ]);
        let p = text_prior(&train, &eval).unwrap();
        assert!((p - 60.0).abs() < 1e-9, "{p}");
        // NLVR2 the same way; a mismatch of kinds and retrieval have none.
        let nl = |t: &str, l: i64| (PathBuf::from("a"), PathBuf::from("b"), t.to_string(), l);
        let train_nl = EvalData::Nlvr2(vec![nl("both", 1), nl("both", 1), nl("neither", 0)]);
        let eval_nl = EvalData::Nlvr2(vec![nl("both", 1), nl("neither", 1), nl("other", 1)]);
        let p = text_prior(&train_nl, &eval_nl).unwrap();
        assert!((p - 200.0 / 3.0).abs() < 1e-9, "{p}");
        assert!(text_prior(&train, &eval_nl).is_none());
    }

    #[test]
    fn text_prior_of_vqa_scores_the_most_frequent_answer() {
        let train = EvalData::Vqa {
            questions: vec![
                vq("what colour?", &["red", "red", "blue"]),
                vq("what colour?", &["red"]),
                vq("how many?", &["2", "2", "3"]),
            ],
            answers: vec![],
            exact: true,
        };
        let eval = |exact| EvalData::Vqa {
            questions: vec![
                vq("what colour?", &["red"]),
                vq("how many?", &["3"]),
                vq("is it big?", &["red"]),
            ],
            answers: vec![],
            exact,
        };
        // "what colour?" -> red, "how many?" -> 2, unseen -> red (4 of 7 answers).
        let p = text_prior(&train, &eval(true)).unwrap();
        assert!((p - 200.0 / 3.0).abs() < 1e-9, "{p}");
        // Soft VQA accuracy: one annotator saying "red" scores 0.3 per question.
        let p = text_prior(&train, &eval(false)).unwrap();
        let want = 100.0 * (vqa_accuracy("red", &[GtAnswer::new("red".to_string())]) * 2.0) / 3.0;
        assert!((p - want).abs() < 1e-9, "{p} vs {want}");
    }

    /// An easy-VQA question (label and image id 0).
    pub(crate) fn q(image: &str, question: &str, answer: &str) -> EasyVqaQuestion {
        EasyVqaQuestion {
            question: question.into(),
            answer: answer.into(),
            label: 0,
            image_id: 0,
            image: PathBuf::from(image),
        }
    }

    fn strings(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn shape_contrast_asks_every_shape_of_images_with_a_known_shape() {
        let answers = strings(&["yes", "no", "red", "circle", "rectangle", "triangle"]);
        let qs = [
            q("a.png", "what shape is in the image?", "triangle"),
            // colour only: no shape known, no contrast questions
            q("b.png", "what color is the shape?", "red"),
        ];
        let extra = easy_vqa_shape_contrast(&qs, &answers);
        let got: Vec<(String, String, usize)> = extra
            .iter()
            .map(|e| {
                assert_eq!(e.image, PathBuf::from("a.png"));
                (e.question.clone(), e.answer.clone(), e.label)
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("does the image contain a circle?".into(), "no".into(), 1),
                (
                    "does the image not contain a circle?".into(),
                    "yes".into(),
                    0
                ),
                ("does the image contain a rectangle?".into(), "no".into(), 1),
                (
                    "does the image not contain a rectangle?".into(),
                    "yes".into(),
                    0
                ),
                ("does the image contain a triangle?".into(), "yes".into(), 0),
                (
                    "does the image not contain a triangle?".into(),
                    "no".into(),
                    1
                ),
            ]
        );
        // The questions are of the yes/no shape families that the evaluation reports.
        assert!(extra.iter().all(|e| {
            let negated = e.question.contains(" not ");
            crate::data::easy_vqa::family_of_text(&e.question)
                == Some(if negated {
                    "yes_no_shape_not"
                } else {
                    "yes_no_shape"
                })
        }));
    }

    #[test]
    fn colour_contrast_asks_the_colour_and_two_others() {
        let answers = strings(&["yes", "no", "red", "blue", "green", "gray", "circle"]);
        let mut a = q("a.png", "what color is the shape?", "blue");
        a.image_id = 1;
        let qs = [a, q("b.png", "what shape is in the image?", "circle")];
        let got: Vec<(String, String, usize)> = easy_vqa_colour_contrast(&qs, &answers)
            .into_iter()
            .map(|e| {
                assert_eq!((e.image.as_path(), e.image_id), (Path::new("a.png"), 1));
                (e.question, e.answer, e.label)
            })
            .collect();
        // Others of blue: red, green, gray; image id 1 picks green, then (1 + 1) % 3: gray.
        assert_eq!(
            got,
            vec![
                ("is there a blue shape?".into(), "yes".into(), 0),
                ("is there not a blue shape?".into(), "no".into(), 1),
                ("is there a green shape?".into(), "no".into(), 1),
                ("is there not a green shape?".into(), "yes".into(), 0),
                ("is there a gray shape?".into(), "no".into(), 1),
                ("is there not a gray shape?".into(), "yes".into(), 0),
            ]
        );
        assert!(got.iter().all(|(text, _, _)| {
            let negated = text.contains(" not ");
            crate::data::easy_vqa::family_of_text(text)
                == Some(if negated {
                    "yes_no_colour_not"
                } else {
                    "yes_no_colour"
                })
        }));
    }

    #[test]
    fn easy_vqa_attributes_follow_the_answers_and_negations() {
        let answers = strings(&["yes", "no", "red", "blue", "circle", "rectangle"]);
        let qs = [
            // stated by a "what" question: the answer and the attribute it names
            q("a.png", "what is the blue shape?", "rectangle"),
            // absent: says nothing about what is there
            q("b.png", "does the image contain a circle?", "no"),
            q("b.png", "is there not a red shape?", "no"),
            q("c.png", "is there a circle in the image?", "yes"),
            q("c.png", "does the image not contain a red shape?", "yes"),
            q("d.png", "is there a red shape?", "no"),
        ];
        let a = easy_vqa_attributes(&qs, &answers);
        let get = |p: &str| a.get(Path::new(p)).cloned();
        let s = |x: &str| Some(x.to_string());
        assert_eq!(get("a.png"), Some((s("blue"), s("rectangle"))));
        assert_eq!(get("b.png"), Some((s("red"), None)));
        assert_eq!(get("c.png"), Some((None, s("circle"))));
        assert_eq!(get("d.png"), None, "nothing stated: left out");
        assert_eq!(
            easy_vqa_captions(Some("red"), None),
            vec!["a red shape".to_string()]
        );
        assert_eq!(
            easy_vqa_captions(Some("red"), Some("circle"))[0],
            "a red circle"
        );
    }
}
