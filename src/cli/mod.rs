//! Subcommand implementations of the `vlp` binary for the experiment pipeline:
//! `vlp pretrain|finetune|eval` ([`experiment`]) and `vlp info MODEL` ([`info`]).
use anyhow::Result;
use std::path::PathBuf;
use tch::Device;
use vlp_tasks::pipeline::{self, Command, Preset, RunOptions};

/// Flags of `vlp pretrain|finetune|eval`.
#[derive(clap::Args, Debug)]
pub struct ExperimentArgs {
    /// The experiment file (YAML or JSON; see docs/experiments.md).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a config value: `--set train.max_steps=100 --set data.root=data/shapes`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// The run directory (default: runs/<train.name>-<YYYYmmdd-HHMMSS>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in DIR from its latest checkpoint (eval: evaluate that checkpoint).
    #[arg(long)]
    pub resume: Option<PathBuf>,
}

/// Runs `vlp pretrain|finetune|eval` and prints the run directory and the final metrics.
pub fn experiment(cmd: Command, args: ExperimentArgs, device: Device) -> Result<()> {
    let opts = RunOptions {
        config: args.config,
        sets: args.sets,
        out: args.out,
        resume: args.resume,
        device,
    };
    let s = pipeline::run(cmd, &opts)?;
    println!("run directory: {}", s.run_dir.display());
    println!("steps: {}", s.step);
    for (k, v) in &s.metrics {
        println!("  {k}: {v:.4}");
    }
    println!(
        "metrics written to {}",
        s.run_dir.join(pipeline::EVAL_FILE).display()
    );
    Ok(())
}

fn count_params(cfg: &vlp_models::albef::AlbefConfig) -> Result<i64> {
    let m = vlp_models::albef::AlbefPretrain::new(cfg, Device::Cpu)?;
    use vlp_models::VlpModel;
    Ok(m.var_store()
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum())
}

/// `vlp info MODEL`: variants, presets, the checkpoints the model accepts and whether the
/// experiment pipeline can train it.
pub fn info(model: &str) -> Result<()> {
    let spec = vlp_models::registry::find(model).ok_or_else(|| {
        let names: Vec<&str> = vlp_models::registry::models()
            .iter()
            .map(|m| m.name)
            .collect();
        anyhow::anyhow!(
            "unknown model `{model}` (registered: {}; planned: {})",
            names.join(", "),
            vlp_models::registry::PLANNED.join(", ")
        )
    })?;
    println!("{}: {}", spec.name, spec.paper);
    println!("variants: {}", spec.variants.join(", "));
    let doc = PathBuf::from(format!("docs/models/{}.md", spec.name));
    match spec.name {
        "albef" => {
            println!("pipeline: vlp pretrain (variant pretrain), vlp finetune (retrieval, vqa, nlvr2, ve), vlp eval");
            println!("presets (model.preset):");
            for p in [Preset::Base, Preset::Small, Preset::Tiny] {
                let c = pipeline::albef::albef_preset(p);
                let v = c.vit();
                let params = count_params(&c)
                    .map(|n| format!("{:.1}M trainable parameters (pretrain)", n as f64 / 1e6))
                    .unwrap_or_else(|e| format!("(parameter count failed: {e})"));
                println!(
                    "  {:<5} image {}px patch {} ViT {}x{} ({} heads), BERT {} text + {} fusion layers of {}, embed_dim {}, queue {}: {}",
                    p.name(),
                    c.image_res,
                    v.patch_size,
                    v.depth,
                    v.embed_dim,
                    v.num_heads,
                    c.fusion_layer(),
                    c.bert.num_hidden_layers as usize - c.fusion_layer(),
                    c.bert.hidden_size,
                    c.embed_dim,
                    c.queue_size,
                    params
                );
            }
            println!("checkpoints (model.init; .pth, .safetensors, a trainer checkpoint or a run directory):");
            println!("  pretrain : ALBEF.pth (14M), ALBEF_4M.pth, or a `vlp pretrain` run");
            println!("  retrieval: mscoco.pth, flickr30k.pth; a pretraining checkpoint (init_mode: partial)");
            println!("  vqa      : vqa.pth; a pretraining checkpoint (decoder from fusion layers 6-11, as VQA.py)");
            println!("  nlvr2    : the official NLVR2 checkpoint; a pretraining checkpoint (fusion layers replicated, as Pretrain_nlvr.py)");
            println!("  ve       : the official SNLI-VE checkpoint; a pretraining checkpoint (cls_head left at init)");
        }
        "blip" => {
            println!("pipeline: vlp pretrain (variant pretrain: itc + itm + lm), vlp finetune (retrieval, captioning, vqa, nlvr2), vlp eval; itm and hf_* are inference-only");
            println!("presets (model.preset):");
            for p in [Preset::Base, Preset::Small, Preset::Tiny] {
                let c = pipeline::blip::blip_preset(p);
                let v = c.vit_for("pretrain", false);
                let size = c
                    .image_size
                    .map(|s| format!("{s}px"))
                    .unwrap_or_else(|| "224/384/480px (class defaults)".into());
                println!(
                    "  {:<5} image {} patch {} ViT {}x{} ({} heads), MED {} layers of {}, embed_dim {}, queue {}",
                    p.name(),
                    size,
                    v.patch_size,
                    v.depth,
                    v.embed_dim,
                    v.num_heads,
                    c.med.num_hidden_layers,
                    c.med.hidden_size,
                    c.embed_dim,
                    c.queue_size
                );
            }
            println!("checkpoints (model.init; .pth, .safetensors, a trainer checkpoint or a run directory):");
            println!("  pretrain  : model_base.pth, model_base_14M.pth, model_base_capfilt_large.pth, model_large.pth, or a `vlp pretrain` run");
            println!("  retrieval : model_{{base,large}}_retrieval_{{coco,flickr}}.pth; a pretraining checkpoint (init_mode: partial)");
            println!("  captioning: model_base_caption_capfilt_large.pth, model_large_caption.pth; a pretraining checkpoint (its decoder)");
            println!("  vqa       : model_base_vqa_capfilt_large.pth, model_vqa.pth; a pretraining checkpoint (encoder and decoder)");
            println!("  nlvr2     : model_base_nlvr.pth; a pretraining checkpoint (cross-attention duplicated, as blip_nlvr.py)");
            println!("  the HF layout (Salesforce/blip-*) loads through the registry's hf_* variants; see {}", doc.display());
        }
        _ => println!("pipeline: not available for this model"),
    }
    if doc.is_file() {
        println!("docs: {}", doc.display());
    }
    Ok(())
}

/// `vlp bench ...` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum BenchCmd {
    /// Median time of one training step (forward, backward, AdamW) on synthetic batches.
    Step {
        /// Model name (albef, blip; must match the config).
        #[arg(long)]
        model: Option<String>,
        /// Variant (overrides the config's `model.variant`).
        #[arg(long)]
        variant: Option<String>,
        /// Experiment file giving the preset/model config and the optimizer.
        #[arg(long)]
        config: PathBuf,
        /// Samples per step.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Steps timed (after one warm-up step).
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Tokens per synthetic text.
        #[arg(long, default_value_t = 30)]
        text_len: i64,
        /// Config overrides.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
}

/// Runs `vlp bench step` and prints the result (one line and JSON).
pub fn bench(cmd: BenchCmd, device: Device) -> Result<()> {
    let BenchCmd::Step {
        model,
        variant,
        config,
        batch,
        steps,
        text_len,
        sets,
    } = cmd;
    let r = pipeline::bench::bench_step(&pipeline::bench::BenchOptions {
        config,
        sets,
        model,
        variant,
        batch,
        steps,
        text_len,
        device,
    })?;
    println!(
        "{} {} ({}) batch {} on {}: median step {:.1} ms, {:.1} samples/s, peak RSS {}",
        r.model,
        r.variant,
        r.preset,
        r.batch,
        r.device,
        r.median_step_s * 1e3,
        r.samples_per_s,
        r.peak_rss_mib
            .map(|m| format!("{m:.0} MiB"))
            .unwrap_or_else(|| "n/a".into())
    );
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

/// Flags of `vlp ablate`.
#[derive(clap::Args, Debug)]
pub struct AblateArgs {
    /// The base pre-training experiment.
    #[arg(long)]
    pub config: PathBuf,
    /// Comma-separated objective mixes, e.g. "itc+itm+mlm,itc+itm,itc,mlm".
    #[arg(long, default_value = "itc+itm+mlm,itc+itm,itc,mlm")]
    pub mixes: String,
    /// Fine-tuning experiment run from each pre-trained model (repeatable).
    #[arg(long)]
    pub finetune: Vec<PathBuf>,
    /// Override applied to every run (e.g. data.root=...).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Output directory (resumable: finished runs are skipped, interrupted ones resumed).
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `vlp ablate` and prints the table.
pub fn ablate(args: AblateArgs, device: Device) -> Result<()> {
    let opts = pipeline::ablate::AblateOptions {
        config: args.config,
        mixes: args
            .mixes
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        finetune: args.finetune,
        sets: args.sets,
        out: args.out.clone(),
        device,
    };
    pipeline::ablate::ablate(&opts)?;
    print!(
        "{}",
        std::fs::read_to_string(args.out.join("ablation.md")).unwrap_or_default()
    );
    println!("written: {}/ablation.{{md,csv,png}}", args.out.display());
    Ok(())
}
