//! `vlp quickstart`: the whole story of the library in one command on a small CPU.
//!
//! 1. Generates the built-in Shapes benchmark into a cache directory when it is absent and finds
//!    the easy-VQA data set of the project's virtualenv.
//! 2. Pre-trains a CPU-sized ALBEF (the pipeline's `small` preset) on the Shapes captions with
//!    ITC + ITM + MLM.
//! 3. Fine-tunes and evaluates retrieval, VQA, NLVR2 and SNLI-VE on Shapes, from the pre-trained
//!    weights and from scratch with the same budget, and VQA on easy-VQA (pre-trained).
//! 4. Prints the table (task, metric, chance, text only, from scratch, pre-trained) and writes a run
//!    directory: `summary.json`, `metrics.json`, `report.md`, `plots/metrics.png` and one trainer
//!    run directory per training run (loss curves under `*/plots/loss.png`).
//!
//! The models, their [`Trainable`](crate::train::Trainable) implementation, the data sets and
//! the evaluation are the pipeline's ([`crate::pipeline::albef`]); this module only plans the
//! budget, wires the runs together and reports. `docs/quickstart.md` has the measured numbers.
pub mod probe;
pub mod report;
pub mod runner;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tch::Device;
use vlp_core::layers::vit::VitInit;
use vlp_core::{Result, VlpError};

use crate::pipeline::config::Preset;
use crate::shapes::ShapesConfig;
use report::{PretrainSummary, Summary, TaskSummary, SUMMARY_VERSION};
use runner::{Ctx, RunResult, TaskKind};

/// Arguments of `vlp quickstart` (the global `--device` flag picks the device).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct QuickstartArgs {
    /// Output directory (default: `runs/quickstart-<YYYYmmdd-HHMMSS>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A smoke version (~2 minutes on 2 CPU cores): fewer images, steps and evaluation samples.
    #[arg(long)]
    pub quick: bool,
    /// Seed of the Shapes data and of every training run.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Shapes data directory (generated there when it holds no `shapes.json`; default
    /// `runs/shapes-<seed>` or `runs/shapes-<seed>-quick`).
    #[arg(long)]
    pub shapes: Option<PathBuf>,
    /// easy-VQA data directory (default: the data of the `easy_vqa` package in `.venv`).
    #[arg(long)]
    pub easy_vqa: Option<PathBuf>,
    /// Override a field of the plan, `key.path=value` (repeatable): `pretrain.steps=600`,
    /// `easy_vqa.lr=1e-3`, `vqa.batch_size=16`, `eval_samples=1000` (see `Plan`; the resolved
    /// plan is written to `<out>/plan.json`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Only these fine-tuning tasks (comma-separated: retrieval, vqa, nlvr2, ve, easy_vqa;
    /// default all).
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Start from this pre-training run directory (e.g. an earlier quickstart's `pretrain/`)
    /// instead of pre-training.
    #[arg(long)]
    pub pretrained: Option<PathBuf>,
}

/// Budget of one training stage.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// Optimizer steps.
    pub steps: u64,
    /// Samples per step.
    pub batch_size: usize,
    /// Peak learning rate (cosine schedule with 5% warm-up).
    pub lr: f64,
    /// Linear warm-up as a fraction of `steps` (0–1; at least one step). Default: `steps / 20`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_frac: Option<f64>,
}

fn no_ta() -> Stage {
    Stage {
        steps: 0,
        batch_size: 32,
        lr: 5e-4,
        warmup_frac: None,
    }
}

fn albef_objectives() -> BTreeMap<String, f64> {
    [("itc", 1.0), ("itm", 1.0), ("mlm", 1.0)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

fn yes() -> bool {
    true
}

fn one() -> f64 {
    1.0
}

/// The fine-tuning tasks a run selects (`--tasks`; empty: all).
pub fn parse_tasks(names: &[String]) -> Result<Vec<TaskKind>> {
    let all = [
        TaskKind::Retrieval,
        TaskKind::Vqa,
        TaskKind::Nlvr2,
        TaskKind::Ve,
        TaskKind::EasyVqa,
    ];
    if names.is_empty() {
        return Ok(all.to_vec());
    }
    names
        .iter()
        .map(|n| {
            all.iter()
                .copied()
                .find(|k| k.key() == n.trim())
                .ok_or_else(|| {
                    VlpError::Msg(format!(
                        "--tasks: unknown task `{n}` (known: retrieval, vqa, nlvr2, ve, easy_vqa)"
                    ))
                })
        })
        .collect()
}

/// Everything the quickstart does, sized: data, model preset, steps and evaluation sizes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// `default`, `quick` or `test`.
    pub profile: String,
    /// The ALBEF size preset.
    pub preset: Preset,
    /// The Shapes data set to generate (regions are never needed).
    pub shapes: ShapesConfig,
    /// Pre-training.
    pub pretrain: Stage,
    /// Weights of the pre-training objectives (`itc`, `itm`, `mlm`; default 1 each). The forward
    /// computes all three as the official one does; a weight of 0 (`--set
    /// pretrain_objectives.itm=0`) keeps that loss out of the gradient (an objective ablation).
    #[serde(default = "albef_objectives")]
    pub pretrain_objectives: BTreeMap<String, f64>,
    /// Word classes of the Shapes vocabulary (`shape`, `colour`, `size`) whose words are swapped
    /// in each pre-training caption to make an extra ITM negative ("a red circle" → "a red
    /// triangle": objective `itm_swap`, weight `pretrain_objectives.itm_swap`, default 1;
    /// [`vlp_objectives::word_swap`]). Empty (default): off. Plural shape words ("circles")
    /// are a class of their own.
    #[serde(default)]
    pub pretrain_word_swap: Vec<String>,
    /// Shapes retrieval fine-tuning.
    pub retrieval: Stage,
    /// Shapes VQA fine-tuning.
    pub vqa: Stage,
    /// Shapes NLVR2 fine-tuning.
    pub nlvr2: Stage,
    /// NLVR2's text-assignment pre-training (ALBEF's `Pretrain_nlvr.py`) on the Shapes
    /// captions between pre-training and the pre-trained NLVR2 run (`steps` 0: NLVR2 starts
    /// from the pre-training checkpoint directly). Part of pre-training: the from-scratch run
    /// gets none. Off by default: 300 steps did not move NLVR2 at this budget
    /// (docs/quickstart.md); `--set nlvr2_ta.steps=300` turns it on.
    #[serde(default = "no_ta")]
    pub nlvr2_ta: Stage,
    /// Shapes SNLI-VE fine-tuning.
    pub ve: Stage,
    /// easy-VQA fine-tuning (`None`: skipped).
    pub easy_vqa: Option<Stage>,
    /// Also fine-tune easy-VQA from scratch with the same budget (for the comparison).
    #[serde(default)]
    pub easy_vqa_scratch: bool,
    /// Fine-tune the Shapes tasks from scratch too (default); `false` runs only the pre-trained
    /// arm (for experiments on fine-tuning a given pre-training: the table shows no
    /// from-scratch value and the task does not count in "pre-trained ≥ from scratch").
    #[serde(default = "yes")]
    pub shapes_scratch: bool,
    /// Also rotate easy-VQA training images by random multiples of 90° (with the flips: all
    /// eight symmetries of the square; easy-VQA asks about no position or orientation).
    #[serde(default)]
    pub easy_vqa_rotate: bool,
    /// Also train easy-VQA on contrastive yes/no shape questions: for each training image whose
    /// shape its own training questions state, "does the image contain a {shape}?" for every
    /// shape of the answer list ("yes" for its shape, "no" for the others), each also negated
    /// ("does the image not contain a {shape}?", so as many "yes" as "no") — counterfactual
    /// question augmentation (as in Chen et al. 2020, CSS), from training annotations only.
    /// The same image with different shape words and answers makes the model compare the word
    /// with the image, which plain yes/no shape questions (two in three "no") do not force. On
    /// in the default run.
    #[serde(default)]
    pub easy_vqa_shape_contrast: bool,
    /// Also train easy-VQA on contrastive yes/no colour questions: for each training image whose
    /// colour its training questions state, "is there a {colour} shape?" for its colour and two
    /// others, each also negated (as many "yes" as "no"). easy-VQA's own colour yes/no
    /// questions are seven in eight "no" (or "yes" when negated), so that a model answering
    /// from the text alone already scores 88% on them.
    #[serde(default)]
    pub easy_vqa_colour_contrast: bool,
    /// Questions drawn per easy-VQA training image and step (the stage's `batch_size` counts
    /// images; default [`runner::QUESTIONS_PER_IMAGE`]). easy-VQA has 9.6 questions per
    /// image, ~22 with both contrast generators: at 8 the added questions crowd out the others.
    #[serde(default = "questions_per_image")]
    pub easy_vqa_questions_per_image: usize,
    /// NLVR2 training sentences per image pair and step (`data.sentences_per_pair`: the
    /// stage's `batch_size` then counts pairs, each encoded once); `None` (the default of a
    /// plan file without the field, and of `--quick`): one sentence per sample, as the official
    /// code. Pairs with several sentences come from `shapes.nlvr2_train_per_pair`; the default
    /// run uses 4 of each.
    #[serde(default)]
    pub nlvr2_sentences_per_pair: Option<usize>,
    /// SNLI-VE training hypotheses per image and step (`data.hypotheses_per_image`: the stage's
    /// `batch_size` then counts images, each encoded once; Shapes writes three per training
    /// image, one of each label); `None` (default): one hypothesis per sample, as the official
    /// code.
    #[serde(default)]
    pub ve_hypotheses_per_image: Option<usize>,
    /// Also pre-train on Shapes' region descriptions (`pretrain_regions.json`: short partial
    /// texts, as the Visual Genome part of ALBEF's pre-training data). Off by default: measured
    /// worse at 600 steps (docs/quickstart.md).
    #[serde(default)]
    pub pretrain_regions: bool,
    /// Also pre-train on captions of easy-VQA's training images, made from the colour and shape
    /// their training questions state (`<out>/pretrain_easy_vqa.json`; in-domain pairs, as COCO
    /// in ALBEF's pre-training data). Off by default: it did not transfer (docs/quickstart.md).
    #[serde(default)]
    pub pretrain_easy_vqa: bool,
    /// Run the from-scratch and the pre-trained fine-tuning of a task side by side, each with
    /// half of libtorch's CPU threads (CPU only; retrieval, whose ITM negatives draw from torch's
    /// global generator, stays sequential). Small models use two cores far better as two
    /// one-thread runs than as one two-thread run: 2 × ~450 vs ~580 samples/s for easy-VQA here.
    /// Each run is seeded and builds its model under a lock, so a run's result does not depend
    /// on the other one (only, as always, on the thread count).
    #[serde(default = "yes")]
    pub parallel_arms: bool,
    /// Initialisation of the ViT's attention when it starts from random weights (pre-training
    /// and every from-scratch run; loaded weights overwrite it): `official` (timm's N(0, 0.02²),
    /// uniform attention at the start) or `mimetic` (Trockman & Kolter 2023,
    /// [`vlp_core::layers::vit::VitInit`]).
    #[serde(default)]
    pub vit_init: VitInit,
    /// Std of the text side's initial weights (BERT's `initializer_range`, official 0.02) when
    /// it starts from random weights (pre-training and every from-scratch run): the width of
    /// the text encoder's and the fusion layers' attention and FFN at the start.
    #[serde(default = "official_init_std")]
    pub text_init_std: f64,
    /// Std of the ViT blocks' initial Linear weights (timm's 0.02) when it starts from random
    /// weights; with `vit_init=mimetic` only the MLPs' (`vision.init_std` of the model config).
    #[serde(default = "official_init_std")]
    pub vit_init_std: f64,
    /// Learning-rate factor of the runs that start from the pre-trained weights (same steps and
    /// batch; the official recipes fine-tune at a fraction of the pre-training rate).
    #[serde(default = "one")]
    pub pretrained_lr_scale: f64,
    /// Learning-rate multiplier of the task head that fine-tuning adds (`vqa_head` for VQA and
    /// easy-VQA, `cls_head` for NLVR2 and SNLI-VE; retrieval adds none), in both arms: ViLT's
    /// and VLMo's `lr_mult` (10 in their VQA and NLVR2 recipes), the optimizer's
    /// `lr_mult: {vqa_head: m}`.
    #[serde(default = "one")]
    pub head_lr_mult: f64,
    /// Learning-rate multiplier of the ViT (`visual_encoder`) in the fine-tuning runs that start
    /// from the pre-trained weights (on top of `pretrained_lr_scale`): lets the image side adapt
    /// to a new domain (easy-VQA's light backgrounds) faster than the text side, which keeps
    /// what pre-training grounded.
    #[serde(default = "one")]
    pub pretrained_vit_lr_mult: f64,
    /// Fields of the ALBEF model config merged over the preset and the quickstart's own
    /// settings in every model the run builds (pre-training and fine-tuning alike), e.g.
    /// `--set +model.bert.fusion_layer=1` (three of the four text layers cross-attend) or
    /// `--set +model.vision.depth=6`; an unknown field or a wrong type is an error naming it.
    #[serde(default)]
    pub model: serde_json::Map<String, serde_json::Value>,
    /// Fields of the ALBEF model config merged over `model` in the easy-VQA runs only (both
    /// arms), e.g. `--set +easy_vqa_model.vision.patch_size=4`: easy-VQA's one large shape per
    /// image at a finer patch grid than the Shapes tasks. The pre-trained arm loads the
    /// pre-training checkpoint with its patch embedding PI-resized and its position embedding
    /// interpolated to the new grid (docs/models/albef.md). The default run sets
    /// [`easy_vqa_model_default`].
    #[serde(default)]
    pub easy_vqa_model: serde_json::Map<String, serde_json::Value>,
    /// Run the zero-shot grounding probe ([`probe`]) on the pre-trained weights before
    /// fine-tuning (when easy-VQA is found): can ITM / ITC pick "a red circle" over "a red
    /// triangle", and over "a blue circle"? A few seconds; `summary.json`'s `pretrain.probe`.
    #[serde(default = "yes")]
    pub probe: bool,
    /// Evaluation samples per Shapes task (images for retrieval are `retrieval_images`).
    pub eval_samples: usize,
    /// Images of the retrieval gallery (5 captions each).
    pub retrieval_images: usize,
    /// easy-VQA test questions evaluated (`None`: all 9,673).
    pub easy_vqa_eval: Option<usize>,
    /// Retrieval candidates re-ranked by ITM per query (ALBEF's `k_test`).
    pub k_test: usize,
    /// Data loader threads.
    pub workers: usize,
    /// The seed.
    pub seed: u64,
}

/// The default run's [`Plan::easy_vqa_model`]: the text side of the easy-VQA models at BERT
/// `initializer_range` 0.12: the from-scratch arm's initial width (the pre-trained arm loads its
/// text weights; its new `vqa_head` starts at N(0, 0.02²) either way). From the official 0.02 the
/// from-scratch arm learns the shape questions far slower (docs/quickstart.md, "Session of
/// 2026-12-07 (night)").
pub fn easy_vqa_model_default() -> serde_json::Map<String, serde_json::Value> {
    let serde_json::Value::Object(m) = serde_json::json!({"bert": {"initializer_range": 0.12}})
    else {
        unreachable!("a JSON object literal")
    };
    m
}

fn questions_per_image() -> usize {
    runner::QUESTIONS_PER_IMAGE
}

/// The word classes [`Plan::pretrain_word_swap`] accepts.
pub const WORD_SWAP_CLASSES: [&str; 3] = ["shape", "colour", "size"];

/// BERT's `initializer_range` in the official configs.
fn official_init_std() -> f64 {
    vlp_core::layers::INIT_STD
}

impl Plan {
    /// The default run (≤ 20 minutes on 2 CPU cores).
    pub fn default_run(seed: u64) -> Self {
        let s = |steps, lr| Stage {
            steps,
            batch_size: 32,
            lr,
            warmup_frac: None,
        };
        Plan {
            profile: "default".into(),
            preset: Preset::Small,
            // Four training statements per NLVR2 pair, true/false couples (see `nlvr2`).
            shapes: ShapesConfig {
                seed,
                regions: false,
                nlvr2_train_per_pair: 4,
                ..ShapesConfig::default()
            },
            // A fifth of the steps to warm up (120; 5% = 30 before): over two random draws ITC / ITM /
            // MLM 1.97 / 0.42 / 2.07 and 1.91 / 0.48 / 2.15 at step 600, retrieval 82.1 / 81.7,
            // against 2.36 / 0.52 / 2.07 and 3.03 / 0.63 / 2.24, retrieval 70.1 / 46.8, with 30
            // warm-up steps, whose gradient spikes set one draw back (docs/quickstart.md,
            // 2026-12-08).
            pretrain: Stage {
                warmup_frac: Some(0.2),
                ..s(600, 1e-3)
            },
            pretrain_objectives: albef_objectives(),
            pretrain_word_swap: Vec::new(),
            retrieval: s(100, 5e-4),
            // VQA batches count images, each with up to QUESTIONS_PER_IMAGE questions.
            vqa: Stage {
                steps: 200,
                batch_size: 16,
                lr: 5e-4,
                warmup_frac: None,
            },
            // NLVR2 on true/false couples of statements about the same pair, four per pair in
            // one step (`shapes.nlvr2_train_per_pair=4`, `nlvr2_sentences_per_pair=4`), 1,800
            // steps × 8 pairs at lr 1e-4: 61.5 / 67.5 on this plan's pre-training (text only
            // 62.2), where one statement per sample, 150 steps × 32 at 5e-4 (the default until
            // 2026-12-08) gave 54.0 / 60.1 (text only 58.3) and 53.6 / 55.9 with `--seed 1`.
            // Affordable since the cross-attention projects each pair once (docs/quickstart.md,
            // 2026-12-08).
            nlvr2: Stage {
                steps: 1800,
                batch_size: 8,
                lr: 1e-4,
                warmup_frac: None,
            },
            nlvr2_ta: no_ta(),
            // SNLI-VE at 150 steps stayed below its text-only prior (77.6) in both arms, the
            // from-scratch one answering "entailment" to nearly every contradiction (1.9%).
            // 300 steps: 71.4 / 79.3 (seed 0), 74.4 / 76.9 (seed 1); 450: 74.9 / 78.7
            // (docs/quickstart.md, 2026-12-08 (morning)).
            ve: s(300, 5e-4),
            // yes/no binds between 800 and 1,500 steps (from scratch 84.4 / 94.2 / 95.2% yes/no
            // and 87.0 / 94.65 / 95.65% overall after 800 / 1,200 / 1,500 steps, lr 5e-4). lr
            // 3e-4 over four seeds: 98.25 / 92.40 / 96.13 / 94.58 (mean 95.3); 5e-4 over five
            // runs: 95.65 / 94.25 / 94.50 / 94.79 / 94.31 (mean 94.7) — all with tch's default
            // initialisation. From the official one (2026-12-07 morning): 84.2 / 86.3
            // (scratch / pre-trained) at 3e-4, 86.1 / 85.3 pre-trained at 6e-4 / 1e-3: the
            // shape questions are what is slow (docs/quickstart.md). 2026-12-07 (night): the
            // shape contrast, 16 questions per image, 3,000 steps × 8 images and the text side
            // at initializer_range 0.12 in the easy-VQA runs: 95.1 from scratch (shape 97.9,
            // yes/no shape 97.8 / 97.2), against 83.2 for the official settings and 89.8 with
            // 8 questions per image; the colour contrast on top keeps shape unlearned (90.0).
            easy_vqa: Some(Stage {
                steps: 3000,
                batch_size: 8,
                lr: 3e-4,
                warmup_frac: None,
            }),
            easy_vqa_scratch: true,
            shapes_scratch: true,
            easy_vqa_rotate: false,
            easy_vqa_shape_contrast: true,
            easy_vqa_colour_contrast: false,
            easy_vqa_questions_per_image: 16,
            nlvr2_sentences_per_pair: Some(4),
            ve_hypotheses_per_image: None,
            pretrain_regions: false,
            pretrain_easy_vqa: false,
            pretrained_lr_scale: 1.0,
            head_lr_mult: 1.0,
            pretrained_vit_lr_mult: 1.0,
            model: Default::default(),
            easy_vqa_model: easy_vqa_model_default(),
            probe: true,
            vit_init: VitInit::Official,
            text_init_std: official_init_std(),
            vit_init_std: official_init_std(),
            parallel_arms: true,
            // The whole Shapes val splits (5,000 VQA questions, 1,000 NLVR2 pairs, 3,000 SNLI-VE
            // hypotheses): NLVR2's first 500 pairs were 53.8% "True" although the split is
            // balanced, which made a constant answer read as "below chance".
            eval_samples: 5000,
            retrieval_images: 100,
            // The whole test split: 9,673 questions cost ~4 s more than 2,000 per run.
            easy_vqa_eval: None,
            k_test: 10,
            workers: 1,
            seed,
        }
    }

    /// `--quick`: a smoke version (≤ 2 minutes on 2 CPU cores).
    pub fn quick(seed: u64) -> Self {
        let s = |steps, lr| Stage {
            steps,
            batch_size: 32,
            lr,
            warmup_frac: None,
        };
        Plan {
            profile: "quick".into(),
            shapes: ShapesConfig {
                seed,
                regions: false,
                train_images: 1000,
                val_images: 200,
                test_images: 200,
                ..ShapesConfig::default()
            },
            pretrain: s(30, 1e-3),
            retrieval: s(10, 5e-4),
            vqa: Stage {
                steps: 10,
                batch_size: 16,
                lr: 5e-4,
                warmup_frac: None,
            },
            nlvr2: s(8, 5e-4),
            nlvr2_ta: s(8, 5e-4),
            ve: s(10, 5e-4),
            easy_vqa: Some(Stage {
                steps: 30,
                batch_size: 16,
                lr: 5e-4,
                warmup_frac: None,
            }),
            easy_vqa_scratch: false,
            shapes_scratch: true,
            easy_vqa_rotate: false,
            easy_vqa_shape_contrast: true,
            easy_vqa_colour_contrast: false,
            easy_vqa_questions_per_image: 16,
            nlvr2_sentences_per_pair: None,
            ve_hypotheses_per_image: None,
            pretrain_regions: false,
            pretrain_easy_vqa: false,
            pretrained_lr_scale: 1.0,
            eval_samples: 100,
            retrieval_images: 50,
            easy_vqa_eval: Some(300),
            k_test: 8,
            ..Plan::default_run(seed)
        }
    }

    /// The test suite's version: the `tiny` preset, a few hundred images, a few dozen steps.
    pub fn test(seed: u64) -> Self {
        let s = |steps, lr| Stage {
            steps,
            batch_size: 16,
            lr,
            warmup_frac: None,
        };
        Plan {
            profile: "test".into(),
            preset: Preset::Tiny,
            shapes: ShapesConfig {
                seed,
                regions: false,
                image_size: 32,
                train_images: 300,
                val_images: 60,
                test_images: 60,
                ..ShapesConfig::default()
            },
            pretrain: s(120, 1e-3),
            pretrain_objectives: albef_objectives(),
            pretrain_word_swap: Vec::new(),
            retrieval: s(20, 5e-4),
            vqa: s(20, 1e-3),
            nlvr2: s(6, 1e-3),
            nlvr2_ta: s(6, 1e-3),
            ve: s(60, 1e-3),
            easy_vqa: Some(s(30, 1e-3)),
            easy_vqa_scratch: false,
            shapes_scratch: true,
            easy_vqa_rotate: false,
            easy_vqa_shape_contrast: false,
            easy_vqa_colour_contrast: false,
            easy_vqa_questions_per_image: questions_per_image(),
            nlvr2_sentences_per_pair: None,
            ve_hypotheses_per_image: None,
            pretrain_regions: true,
            pretrain_easy_vqa: false,
            pretrained_lr_scale: 1.0,
            head_lr_mult: 1.0,
            pretrained_vit_lr_mult: 1.0,
            model: Default::default(),
            easy_vqa_model: Default::default(),
            probe: true,
            vit_init: VitInit::Official,
            text_init_std: official_init_std(),
            vit_init_std: official_init_std(),
            parallel_arms: true,
            eval_samples: 60,
            retrieval_images: 30,
            easy_vqa_eval: Some(150),
            k_test: 6,
            workers: 1,
            seed,
        }
    }
}

impl Plan {
    /// The training stages by plan key.
    pub fn stages(&self) -> Vec<(&'static str, &Stage)> {
        let mut out = vec![
            ("pretrain", &self.pretrain),
            ("retrieval", &self.retrieval),
            ("vqa", &self.vqa),
            ("nlvr2", &self.nlvr2),
            ("nlvr2_ta", &self.nlvr2_ta),
            ("ve", &self.ve),
        ];
        if let Some(e) = &self.easy_vqa {
            out.push(("easy_vqa", e));
        }
        out
    }

    /// Checks what serde cannot: the Shapes configuration, each stage's `warmup_frac` in [0, 1],
    /// the pre-training objectives are ALBEF's (`itc`, `itm`, `mlm`, `itm_swap`) with finite
    /// weights ≥ 0, at least one of them positive.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| VlpError::Config {
            path: PathBuf::from("--set"),
            msg: format!("quickstart plan: {msg}"),
        };
        self.shapes
            .validate()
            .map_err(|e| bad(format!("shapes: {e}")))?;
        for (name, stage) in self.stages() {
            if let Some(f) = stage.warmup_frac {
                if !(0.0..=1.0).contains(&f) {
                    return Err(bad(format!(
                        "{name}.warmup_frac: expected a fraction of the steps in [0, 1], got {f}"
                    )));
                }
            }
        }
        for (k, w) in &self.pretrain_objectives {
            if !["itc", "itm", "mlm", "itm_swap"].contains(&k.as_str()) {
                return Err(bad(format!(
                    "pretrain_objectives.{k}: unknown objective (ALBEF pre-training has itc, itm, mlm, and itm_swap with pretrain_word_swap)"
                )));
            }
            if !(w.is_finite() && *w >= 0.0) {
                return Err(bad(format!(
                    "pretrain_objectives.{k}: weight {w} must be >= 0"
                )));
            }
        }
        if self.easy_vqa_questions_per_image == 0 {
            return Err(bad(
                "easy_vqa_questions_per_image: expected at least 1".into()
            ));
        }
        if self.ve_hypotheses_per_image == Some(0) {
            return Err(bad(
                "ve_hypotheses_per_image: expected at least 1 (or null: one hypothesis per sample)"
                    .into(),
            ));
        }
        if self.nlvr2_sentences_per_pair == Some(0) {
            return Err(bad(
                "nlvr2_sentences_per_pair: expected at least 1 (or null: one sentence per sample)"
                    .into(),
            ));
        }
        for c in &self.pretrain_word_swap {
            if !WORD_SWAP_CLASSES.contains(&c.as_str()) {
                return Err(bad(format!(
                    "pretrain_word_swap: unknown word class `{c}` (expected one of {WORD_SWAP_CLASSES:?})"
                )));
            }
        }
        if self.pretrain_word_swap.is_empty()
            && self
                .pretrain_objectives
                .get("itm_swap")
                .is_some_and(|w| *w > 0.0)
        {
            return Err(bad(
                "pretrain_objectives.itm_swap: needs pretrain_word_swap (the word classes to swap)"
                    .into(),
            ));
        }
        if !self.pretrain_objectives.values().any(|w| *w > 0.0) {
            return Err(bad("pretrain_objectives: every weight is 0".into()));
        }
        for (k, v) in [
            ("text_init_std", self.text_init_std),
            ("vit_init_std", self.vit_init_std),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(bad(format!("{k}: {v} must be a positive std")));
            }
        }
        if !self.model.is_empty() || !self.easy_vqa_model.is_empty() {
            let mut v = serde_json::to_value(crate::pipeline::albef::albef_preset(self.preset))
                .map_err(|e| VlpError::Msg(format!("albef preset: {e}")))?;
            crate::pipeline::config::merge_json(&mut v, self.model_overrides());
            vlp_models::albef::AlbefConfig::from_json(&v)
                .map_err(|e| bad(format!("model: {e}")))?;
            crate::pipeline::config::merge_json(
                &mut v,
                serde_json::Value::Object(self.easy_vqa_model.clone()),
            );
            vlp_models::albef::AlbefConfig::from_json(&v)
                .map_err(|e| bad(format!("easy_vqa_model: {e}")))?;
        }
        for (key, v) in [
            ("head_lr_mult", self.head_lr_mult),
            ("pretrained_vit_lr_mult", self.pretrained_vit_lr_mult),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(bad(format!("{key}: {v} must be a positive factor")));
            }
        }
        Ok(())
    }

    /// The `model` fields as merged into every model config; a preset's NLVR2 layer count
    /// (each fusion layer twice) follows a changed `bert.num_hidden_layers` /
    /// `bert.fusion_layer` unless `nlvr_layers` is given too.
    pub fn model_overrides(&self) -> serde_json::Value {
        let mut m = self.model.clone();
        let base = crate::pipeline::albef::albef_preset(self.preset);
        if base.nlvr_layers.is_some() && !m.contains_key("nlvr_layers") {
            let bert = m.get("bert");
            let field = |k: &str| {
                bert.and_then(|b| b.get(k))
                    .and_then(serde_json::Value::as_i64)
            };
            let layers = field("num_hidden_layers").unwrap_or(base.bert.num_hidden_layers);
            let fusion = field("fusion_layer").or(base.bert.fusion_layer);
            if let Some(f) = fusion {
                if (layers, Some(f)) != (base.bert.num_hidden_layers, base.bert.fusion_layer) {
                    m.insert("nlvr_layers".into(), (f + 2 * (layers - f)).into());
                }
            }
        }
        serde_json::Value::Object(m)
    }

    /// The plan with `--set key.path=value` overrides applied (unknown keys and wrong types are
    /// errors naming the key).
    pub fn with_overrides(&self, sets: &[String]) -> Result<Plan> {
        if sets.is_empty() {
            return Ok(self.clone());
        }
        let mut v = serde_json::to_value(self).map_err(|e| VlpError::Msg(e.to_string()))?;
        let refs: Vec<&str> = sets.iter().map(String::as_str).collect();
        vlp_core::config::apply_overrides(&mut v, &refs)?;
        let plan: Plan = serde_json::from_value(v).map_err(|e| VlpError::Config {
            path: PathBuf::from("--set"),
            msg: format!("quickstart plan: {e}"),
        })?;
        plan.validate()?;
        Ok(plan)
    }
}

/// The default Shapes cache directory of a plan.
pub fn default_shapes_dir(plan: &Plan) -> PathBuf {
    let suffix = match plan.profile.as_str() {
        "default" => String::new(),
        p => format!("-{p}"),
    };
    PathBuf::from("runs").join(format!("shapes-{}{suffix}", plan.seed))
}

/// Generates Shapes into `dir` unless it already holds the same configuration (`shapes.json`).
pub fn ensure_shapes(cfg: &ShapesConfig, dir: &Path) -> Result<bool> {
    let meta = dir.join("shapes.json");
    if meta.is_file() {
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&meta).map_err(|e| VlpError::io(&meta, e))?,
        )
        .map_err(|e| VlpError::Msg(format!("{}: {e}", meta.display())))?;
        let want = serde_json::to_value(cfg).map_err(|e| VlpError::Msg(e.to_string()))?;
        let version = v.get("version").and_then(serde_json::Value::as_u64);
        if v.get("config") == Some(&want)
            && version == Some(u64::from(crate::shapes::SHAPES_VERSION))
        {
            return Ok(false);
        }
    }
    crate::shapes::generate(cfg, dir)?;
    Ok(true)
}

/// Runs `vlp quickstart` with its arguments on `device`.
pub fn run(args: &QuickstartArgs, device: Device) -> Result<Summary> {
    let plan = if args.quick {
        Plan::quick(args.seed)
    } else {
        Plan::default_run(args.seed)
    }
    .with_overrides(&args.set)?;
    let tasks = parse_tasks(&args.tasks)?;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!(
            "quickstart-{}",
            crate::train::run_dir::utc_stamp(std::time::SystemTime::now())
        ))
    });
    let shapes = args
        .shapes
        .clone()
        .unwrap_or_else(|| default_shapes_dir(&plan));
    let opts = RunOptions {
        tasks,
        pretrained: args.pretrained.clone(),
    };
    let summary = run_plan_with(
        &plan,
        &out,
        &shapes,
        args.easy_vqa.as_deref(),
        device,
        &opts,
    )?;
    println!("\n{}", report::table(&summary));
    println!(
        "pre-trained >= from scratch on {} of 4 Shapes tasks; elapsed {:.0} s ({:.1} min); \
         report: {}",
        summary.pretrained_wins,
        summary.elapsed_s,
        summary.elapsed_s / 60.0,
        out.join("report.md").display()
    );
    Ok(summary)
}

/// Whether a task's two runs go side by side ([`Plan::parallel_arms`]): on the CPU, except
/// retrieval (its ITM negatives draw from torch's global generator, which every training step
/// reseeds).
fn side_by_side(plan: &Plan, device: Device, kind: TaskKind) -> bool {
    plan.parallel_arms && device == Device::Cpu && kind != TaskKind::Retrieval
}

/// The from-scratch and the pre-trained run of `kind` side by side, each with half of
/// libtorch's CPU threads (at least one; restored afterwards); only the pre-trained run shows
/// its progress bar.
fn both_arms(
    ctx: &Ctx<'_>,
    kind: TaskKind,
    pretrained: Option<&Path>,
) -> Result<(RunResult, RunResult)> {
    let threads = tch::get_num_threads();
    tch::set_num_threads((threads / 2).max(1));
    let out = std::thread::scope(|sc| {
        let scratch = sc.spawn(|| ctx.finetune_with(kind, None, false));
        let p = ctx.finetune_with(kind, pretrained, true);
        let s = scratch.join().map_err(|_| {
            VlpError::Msg(format!("{}: the from-scratch run panicked", kind.title()))
        })?;
        Ok((s?, p?))
    });
    tch::set_num_threads(threads);
    out
}

fn log(step: &mut usize, total: usize, start: &Instant, msg: &str) {
    *step += 1;
    println!(
        "[{}/{}] {:>6.1}s  {msg}",
        step,
        total,
        start.elapsed().as_secs_f64()
    );
}

/// What to run of a plan besides its sizes.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The fine-tuning tasks (empty: all).
    pub tasks: Vec<TaskKind>,
    /// An existing pre-training run directory to start from instead of pre-training.
    pub pretrained: Option<PathBuf>,
}

/// Runs a plan: Shapes in `shapes_dir` (generated when absent), easy-VQA from `easy_vqa_dir`
/// (default: the package's data), everything written under `out`.
pub fn run_plan(
    plan: &Plan,
    out: &Path,
    shapes_dir: &Path,
    easy_vqa_dir: Option<&Path>,
    device: Device,
) -> Result<Summary> {
    run_plan_with(
        plan,
        out,
        shapes_dir,
        easy_vqa_dir,
        device,
        &RunOptions::default(),
    )
}

/// [`run_plan`] with a task selection and an optional existing pre-training run.
pub fn run_plan_with(
    plan: &Plan,
    out: &Path,
    shapes_dir: &Path,
    easy_vqa_dir: Option<&Path>,
    device: Device,
    opts: &RunOptions,
) -> Result<Summary> {
    plan.validate()?;
    let start = Instant::now();
    // Relative directories would be resolved against the data roots by the experiment configs.
    let abs = |p: &Path| std::path::absolute(p).map_err(|e| VlpError::io(p, e));
    let (out, shapes_dir) = (abs(out)?, abs(shapes_dir)?);
    let (out, shapes_dir) = (out.as_path(), shapes_dir.as_path());
    let selected = if opts.tasks.is_empty() {
        parse_tasks(&[])?
    } else {
        opts.tasks.clone()
    };
    if out.join("summary.json").exists() || out.join("pretrain").exists() {
        return Err(VlpError::Msg(format!(
            "{} already holds a quickstart run: choose another --out",
            out.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| VlpError::io(out, e))?;
    crate::train::checkpoint::write_atomic(
        &out.join("plan.json"),
        serde_json::to_string_pretty(plan)
            .map_err(|e| VlpError::Msg(e.to_string()))?
            .as_bytes(),
    )?;
    let run_easy = plan.easy_vqa.is_some() && selected.contains(&TaskKind::EasyVqa);
    let run_ta = plan.nlvr2_ta.steps > 0 && selected.contains(&TaskKind::Nlvr2);
    let arm_steps = |kind: TaskKind| {
        if side_by_side(plan, device, kind) || (!plan.shapes_scratch && kind != TaskKind::EasyVqa) {
            1
        } else {
            2
        }
    };
    let total = 3
        + selected
            .iter()
            .filter(|k| **k != TaskKind::EasyVqa)
            .map(|k| arm_steps(*k))
            .sum::<usize>()
        + usize::from(run_ta)
        + usize::from(run_easy)
            * if plan.easy_vqa_scratch {
                arm_steps(TaskKind::EasyVqa)
            } else {
                1
            };
    let mut step = 0;
    log(
        &mut step,
        total,
        &start,
        &format!("Shapes data: {}", shapes_dir.display()),
    );
    if ensure_shapes(&plan.shapes, shapes_dir)? {
        println!("        generated in {:.1}s", start.elapsed().as_secs_f64());
    } else {
        println!("        cached");
    }
    let easy_dir = match easy_vqa_dir {
        Some(p) => Some(abs(p)?),
        None => vlp_core::assets::package_path("easy_vqa", "data").ok(),
    };
    let easy_dir = easy_dir.filter(|p| p.join("answers.txt").is_file());
    if plan.easy_vqa.is_some() && easy_dir.is_none() {
        println!("        easy-VQA not found (install the `easy-vqa` package): skipped");
    }
    let mut ctx = Ctx::new(plan, out, shapes_dir, easy_dir.as_deref(), device)?;
    if let Some(dir) = &opts.pretrained {
        if let Some(lacking) = ctx.adopt_vocab(dir)? {
            println!(
                "        vocabulary: the pre-training's ({lacking} word(s) of these data are not in it \
                 and read as [UNK])"
            );
        }
    }

    log(
        &mut step,
        total,
        &start,
        &format!(
            "pre-training ALBEF-{} on Shapes captions ({}), {} steps × {}",
            plan.preset.name(),
            plan.pretrain_objectives
                .iter()
                .filter(|(_, w)| **w > 0.0)
                .map(|(k, w)| if *w == 1.0 {
                    k.to_uppercase()
                } else {
                    format!("{w} × {}", k.to_uppercase())
                })
                .collect::<Vec<_>>()
                .join(" + "),
            plan.pretrain.steps,
            plan.pretrain.batch_size
        ),
    );
    let t0 = Instant::now();
    let (pretrain, init) = match &opts.pretrained {
        Some(dir) => {
            println!("        skipped: starting from {}", dir.display());
            (
                PretrainSummary {
                    steps: 0,
                    samples: 0,
                    first_terms: BTreeMap::new(),
                    last_terms: BTreeMap::new(),
                    seconds: 0.0,
                    run_dir: dir.display().to_string(),
                    probe: None,
                },
                dir.clone(),
            )
        }
        None => {
            let pre = ctx.pretrain()?;
            println!(
                "        losses {} -> {}",
                fmt_terms(&pre.first_terms),
                fmt_terms(&pre.last_terms)
            );
            (
                PretrainSummary {
                    steps: pre.steps,
                    samples: pre.samples,
                    first_terms: pre.first_terms.clone(),
                    last_terms: pre.last_terms.clone(),
                    seconds: t0.elapsed().as_secs_f64(),
                    run_dir: "pretrain".into(),
                    probe: None,
                },
                out.join("pretrain"),
            )
        }
    };

    let mut pretrain = pretrain;
    if plan.probe {
        if let Some(p) = ctx.grounding_probe(&init)? {
            println!(
                "        grounding probe (easy-VQA test, {} images, zero-shot): shape ITM {:.1} / ITC {:.1} \
                 (chance {:.1}), colour ITM {:.1} / ITC {:.1} (chance {:.1})",
                p.images,
                p.shape_itm,
                p.shape_itc,
                p.shape_chance,
                p.colour_itm,
                p.colour_itc,
                p.colour_chance
            );
            pretrain.probe = Some(p);
        }
    }

    let mut tasks = BTreeMap::new();
    let mut wins = 0;
    for kind in [
        TaskKind::Retrieval,
        TaskKind::Vqa,
        TaskKind::Nlvr2,
        TaskKind::Ve,
    ]
    .into_iter()
    .filter(|k| selected.contains(k))
    {
        let t0 = Instant::now();
        let mut from_pretrained = init.clone();
        if let (TaskKind::Nlvr2, true) = (kind, run_ta) {
            let ta = &plan.nlvr2_ta;
            log(
                &mut step,
                total,
                &start,
                &format!(
                    "NLVR2 text-assignment pre-training (ALBEF's Pretrain_nlvr), {} steps × {}",
                    ta.steps, ta.batch_size
                ),
            );
            from_pretrained = ctx.text_assignment(ta, &init)?;
        }
        let (s, p) = if !plan.shapes_scratch {
            log(
                &mut step,
                total,
                &start,
                &format!("{} from the pre-trained weights", kind.title()),
            );
            let p = ctx.finetune(kind, Some(&from_pretrained))?;
            println!("        {} = {:.2} pre-trained", kind.metric(), p.value);
            (None, p)
        } else if side_by_side(plan, device, kind) {
            log(
                &mut step,
                total,
                &start,
                &format!(
                    "{} from scratch and from the pre-trained weights, side by side",
                    kind.title()
                ),
            );
            let (s, p) = both_arms(&ctx, kind, Some(&from_pretrained))?;
            println!(
                "        {} = {:.2} from scratch, {:.2} pre-trained",
                kind.metric(),
                s.value,
                p.value
            );
            (Some(s), p)
        } else {
            let mut runs: [Option<RunResult>; 2] = [None, None];
            for (i, from) in [None, Some(from_pretrained.as_path())]
                .into_iter()
                .enumerate()
            {
                log(
                    &mut step,
                    total,
                    &start,
                    &format!(
                        "{} from {}",
                        kind.title(),
                        if from.is_some() {
                            "the pre-trained weights"
                        } else {
                            "scratch"
                        }
                    ),
                );
                let r = ctx.finetune(kind, from)?;
                println!("        {} = {:.2}", kind.metric(), r.value);
                runs[i] = Some(r);
            }
            let [s, p] = runs;
            (s, p.expect("ran"))
        };
        if s.as_ref().is_some_and(|s| p.value >= s.value) {
            wins += 1;
        }
        tasks.insert(
            kind.key().to_string(),
            TaskSummary {
                task: kind.title().into(),
                metric: kind.metric().into(),
                chance: p.chance,
                text_prior: p.text_prior,
                from_scratch: s.as_ref().map(|s| s.value),
                pretrained: Some(p.value),
                from_scratch_details: s.map(|s| s.metrics).unwrap_or_default(),
                pretrained_details: p.metrics,
                pretrained_from: Some(from_pretrained.display().to_string()),
                steps: p.steps,
                seconds: t0.elapsed().as_secs_f64(),
            },
        );
    }
    if let (true, Some(_)) = (run_easy, &easy_dir) {
        let t0 = Instant::now();
        let show = |r: &RunResult, arm: &str| {
            println!(
                "        accuracy{arm} = {:.2} (yes/no {:.1}, color {:.1}, shape {:.1})",
                r.value,
                r.metrics.get("acc_yes/no").copied().unwrap_or(f64::NAN),
                r.metrics.get("acc_color").copied().unwrap_or(f64::NAN),
                r.metrics.get("acc_shape").copied().unwrap_or(f64::NAN)
            );
        };
        let (scratch, r) = if plan.easy_vqa_scratch && side_by_side(plan, device, TaskKind::EasyVqa)
        {
            log(
                &mut step,
                total,
                &start,
                "easy-VQA from scratch and from the pre-trained weights, side by side",
            );
            let (s, p) = both_arms(&ctx, TaskKind::EasyVqa, Some(&init))?;
            show(&s, " from scratch");
            show(&p, " pre-trained");
            (Some(s), p)
        } else {
            let scratch = if plan.easy_vqa_scratch {
                log(&mut step, total, &start, "easy-VQA from scratch");
                let r = ctx.finetune(TaskKind::EasyVqa, None)?;
                show(&r, "");
                Some(r)
            } else {
                None
            };
            log(
                &mut step,
                total,
                &start,
                "easy-VQA from the pre-trained weights",
            );
            let r = ctx.finetune(TaskKind::EasyVqa, Some(init.as_path()))?;
            show(&r, "");
            (scratch, r)
        };
        tasks.insert(
            "easy_vqa".into(),
            TaskSummary {
                task: TaskKind::EasyVqa.title().into(),
                metric: TaskKind::EasyVqa.metric().into(),
                chance: r.chance,
                text_prior: r.text_prior,
                from_scratch: scratch.as_ref().map(|s| s.value),
                pretrained: Some(r.value),
                from_scratch_details: scratch.map(|s| s.metrics).unwrap_or_default(),
                pretrained_details: r.metrics,
                pretrained_from: Some(init.display().to_string()),
                steps: r.steps,
                seconds: t0.elapsed().as_secs_f64(),
            },
        );
    }
    log(&mut step, total, &start, "writing the report");
    let summary = Summary {
        version: SUMMARY_VERSION,
        profile: plan.profile.clone(),
        seed: plan.seed,
        device: format!("{device:?}").to_lowercase(),
        shapes_dir: shapes_dir.display().to_string(),
        easy_vqa_dir: easy_dir.map(|p| p.display().to_string()),
        pretrain,
        tasks,
        pretrained_wins: wins,
        elapsed_s: start.elapsed().as_secs_f64(),
    };
    report::write_all(out, &summary)?;
    Ok(summary)
}

fn fmt_terms(t: &BTreeMap<String, f64>) -> String {
    t.iter()
        .map(|(k, v)| format!("{k} {v:.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_overrides_set_fields_and_name_bad_keys() {
        let base = Plan::default_run(0);
        let p = base
            .with_overrides(&[
                "pretrain.steps=7".into(),
                "easy_vqa.lr=0.002".into(),
                "easy_vqa_scratch=true".into(),
            ])
            .unwrap();
        assert_eq!(p.pretrain.steps, 7);
        assert_eq!(p.easy_vqa.unwrap().lr, 0.002);
        assert!(p.easy_vqa_scratch);
        assert_eq!(p.vqa, base.vqa);
        let e = base
            .with_overrides(&["pretrain.stepz=7".into()])
            .unwrap_err();
        assert!(e.to_string().contains("stepz"), "{e}");
        let e = base
            .with_overrides(&["pretrain.steps=many".into()])
            .unwrap_err();
        assert!(e.to_string().contains("--set"), "{e}");
    }

    #[test]
    fn pretrain_objective_weights_are_checked() {
        let base = Plan::default_run(0);
        assert_eq!(base.pretrain_objectives.len(), 3);
        let p = base
            .with_overrides(&["pretrain_objectives.itm=0".into()])
            .unwrap();
        assert_eq!(p.pretrain_objectives["itm"], 0.0);
        assert_eq!(p.pretrain_objectives["mlm"], 1.0);
        for (set, named) in [
            ("pretrain_objectives.itx=1", "pretrain_objectives.itx"),
            ("pretrain_objectives.itc=-1", "pretrain_objectives.itc"),
        ] {
            let e = base.with_overrides(&[set.into()]).unwrap_err().to_string();
            assert!(e.contains(named), "{set}: {e}");
        }
        let all_off = [
            "pretrain_objectives.itc=0".to_string(),
            "pretrain_objectives.itm=0".into(),
            "pretrain_objectives.mlm=0".into(),
        ];
        let e = base.with_overrides(&all_off).unwrap_err().to_string();
        assert!(e.contains("every weight is 0"), "{e}");
    }

    #[test]
    fn easy_vqa_questions_per_image_is_a_checked_plan_field() {
        let base = Plan::default_run(0);
        assert_eq!(base.easy_vqa_questions_per_image, 16);
        assert_eq!(
            Plan::test(0).easy_vqa_questions_per_image,
            runner::QUESTIONS_PER_IMAGE
        );
        let p = base
            .with_overrides(&["easy_vqa_questions_per_image=4".into()])
            .unwrap();
        assert_eq!(p.easy_vqa_questions_per_image, 4);
        let e = base
            .with_overrides(&["easy_vqa_questions_per_image=0".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("easy_vqa_questions_per_image"), "{e}");
    }

    #[test]
    fn nlvr2_sentences_per_pair_is_a_checked_plan_field() {
        let base = Plan::default_run(0);
        // The default run: four statements per training pair, all in one step.
        assert_eq!(base.shapes.nlvr2_train_per_pair, 4);
        assert_eq!(base.nlvr2_sentences_per_pair, Some(4));
        assert_eq!((base.nlvr2.steps, base.nlvr2.batch_size), (1800, 8));
        // --quick and the tests: one sentence per sample, one statement per training pair.
        assert_eq!(Plan::quick(0).nlvr2_sentences_per_pair, None);
        assert_eq!(Plan::quick(0).shapes.nlvr2_train_per_pair, 1);
        assert_eq!(Plan::test(0).nlvr2_sentences_per_pair, None);
        let p = base
            .with_overrides(&[
                "nlvr2_sentences_per_pair=2".into(),
                "shapes.nlvr2_train_per_pair=2".into(),
            ])
            .unwrap();
        assert_eq!(p.nlvr2_sentences_per_pair, Some(2));
        assert_eq!(p.shapes.nlvr2_train_per_pair, 2);
        let p = base
            .with_overrides(&["nlvr2_sentences_per_pair=null".into()])
            .unwrap();
        assert_eq!(p.nlvr2_sentences_per_pair, None);
        for (kv, field) in [
            ("nlvr2_sentences_per_pair=0", "nlvr2_sentences_per_pair"),
            ("shapes.nlvr2_train_per_pair=0", "nlvr2_train_per_pair"),
        ] {
            let e = base.with_overrides(&[kv.into()]).unwrap_err().to_string();
            assert!(e.contains(field), "{kv}: {e}");
        }
    }

    #[test]
    fn ve_hypotheses_per_image_is_a_checked_plan_field() {
        let base = Plan::default_run(0);
        assert_eq!(base.ve_hypotheses_per_image, None);
        let p = base
            .with_overrides(&["ve_hypotheses_per_image=3".into()])
            .unwrap();
        assert_eq!(p.ve_hypotheses_per_image, Some(3));
        let e = base
            .with_overrides(&["ve_hypotheses_per_image=0".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("ve_hypotheses_per_image"), "{e}");
    }

    #[test]
    fn stage_warmup_is_a_checked_fraction() {
        let base = Plan::default_run(0);
        assert_eq!(base.pretrain.warmup_frac, Some(0.2));
        assert_eq!(base.vqa.warmup_frac, None);
        let p = base
            .with_overrides(&["+nlvr2.warmup_frac=0.1".into()])
            .unwrap();
        assert_eq!(p.nlvr2.warmup_frac, Some(0.1));
        let e = base
            .with_overrides(&["pretrain.warmup_frac=1.5".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("pretrain.warmup_frac"), "{e}");
    }

    #[test]
    fn word_swap_classes_are_checked() {
        let base = Plan::default_run(0);
        assert!(base.pretrain_word_swap.is_empty());
        let p = base
            .with_overrides(&[
                "pretrain_word_swap=[shape, colour]".into(),
                "+pretrain_objectives.itm_swap=0.5".into(),
            ])
            .unwrap();
        assert_eq!(p.pretrain_word_swap, ["shape", "colour"]);
        assert_eq!(p.pretrain_objectives["itm_swap"], 0.5);
        let e = base
            .with_overrides(&["pretrain_word_swap=[shapes]".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pretrain_word_swap") && e.contains("`shapes`"),
            "{e}"
        );
        let e = base
            .with_overrides(&["+pretrain_objectives.itm_swap=1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs pretrain_word_swap"), "{e}");
    }

    #[test]
    fn model_fields_merge_over_the_preset_and_are_checked() {
        let base = Plan::default_run(0);
        assert!(base.model.is_empty());
        assert_eq!(base.model_overrides(), serde_json::json!({}));
        let p = base
            .with_overrides(&[
                "+model.bert.fusion_layer=1".into(),
                "+model.vision.depth=6".into(),
            ])
            .unwrap();
        // NLVR2's layer count follows the fusion depth: 1 text layer + 2 × 3 fusion layers.
        assert_eq!(
            p.model_overrides(),
            serde_json::json!({"bert": {"fusion_layer": 1}, "vision": {"depth": 6}, "nlvr_layers": 7})
        );
        let p = base
            .with_overrides(&["+model.nlvr_layers=6".into(), "+model.embed_dim=32".into()])
            .unwrap();
        assert_eq!(p.model_overrides()["nlvr_layers"], 6);
        for (bad, named) in [
            ("+model.bert.fusin_layer=1", "fusin_layer"),
            ("+model.bert.fusion_layer=9", "fusion_layer"),
            ("+model.vision.depth=deep", "depth"),
        ] {
            let e = base.with_overrides(&[bad.into()]).unwrap_err().to_string();
            assert!(e.contains("model") && e.contains(named), "{bad}: {e}");
        }
    }

    #[test]
    fn the_vit_initialisation_is_a_plan_field() {
        let base = Plan::default_run(0);
        assert_eq!(base.vit_init, VitInit::Official);
        let p = base.with_overrides(&["vit_init=mimetic".into()]).unwrap();
        assert_eq!(p.vit_init, VitInit::Mimetic);
        let e = base
            .with_overrides(&["vit_init=mimetc".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("mimetc"), "{e}");
    }

    #[test]
    fn the_text_initialisation_is_a_plan_field() {
        let base = Plan::default_run(0);
        assert_eq!(base.text_init_std, vlp_core::layers::INIT_STD);
        let p = base.with_overrides(&["text_init_std=0.1".into()]).unwrap();
        assert_eq!(p.text_init_std, 0.1);
        let p = base.with_overrides(&["vit_init_std=0.1".into()]).unwrap();
        assert_eq!(p.vit_init_std, 0.1);
        assert_eq!(base.head_lr_mult, 1.0);
        let p = base.with_overrides(&["head_lr_mult=10".into()]).unwrap();
        assert_eq!(p.head_lr_mult, 10.0);
        let p = base
            .with_overrides(&["pretrained_vit_lr_mult=4".into()])
            .unwrap();
        assert_eq!(p.pretrained_vit_lr_mult, 4.0);
        for bad in [
            "text_init_std=0",
            "text_init_std=-0.1",
            "vit_init_std=0",
            "head_lr_mult=0",
            "head_lr_mult=-1",
            "pretrained_vit_lr_mult=0",
        ] {
            let e = base.with_overrides(&[bad.into()]).unwrap_err().to_string();
            assert!(e.contains(bad.split('=').next().unwrap()), "{e}");
        }
    }

    #[test]
    fn tasks_parse_by_key() {
        assert_eq!(parse_tasks(&[]).unwrap().len(), 5);
        assert_eq!(
            parse_tasks(&["easy_vqa".into(), "vqa".into()]).unwrap(),
            vec![TaskKind::EasyVqa, TaskKind::Vqa]
        );
        let e = parse_tasks(&["vqa2".into()]).unwrap_err();
        assert!(e.to_string().contains("vqa2"), "{e}");
    }
}
