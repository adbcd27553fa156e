//! `vlp`: the command line of vlp-rs.
//!
//! - `vlp smoke`: loads the real all-MiniLM-L6-v2 checkpoint (installed by the set-up) strictly,
//!   encodes a few sentences and prints their similarities.
//! - `vlp parity DIR…`: runs every fixture case under the directories and compares each probe.
//! - `vlp forward`: builds a named model, loads a checkpoint, runs named inputs, writes outputs.
//! - `vlp convert IN OUT`: any supported checkpoint → safetensors, with a report.
//! - `vlp models`: the registered models and variants.
//! - `vlp shapes generate --out DIR`: writes the built-in Shapes benchmark (docs/shapes.md).
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Instant;
use tch::Kind;
use vlp_core::checkpoint::{self, LoadMode, ReadOptions, StateDict, Wrapper};
use vlp_models::{parity, registry};

mod cli;

#[derive(Parser)]
#[command(
    name = "vlp",
    version,
    about = "vlp-rs: vision-language pretraining on libtorch"
)]
struct Cli {
    /// Device: auto (CUDA if available), cpu, cuda, cuda:N.
    #[arg(long, global = true, default_value = "auto")]
    device: String,
    /// CPU threads of libtorch's intra-op pool (default: libtorch's choice, the number of
    /// cores). On a machine shared with other work, 1 avoids stalls at the pool's barriers.
    #[arg(long, global = true)]
    threads: Option<i32>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Smoke run on a real checkpoint: all-MiniLM-L6-v2 (BERT) from the project's virtualenv.
    Smoke {
        /// Sentences to embed (default: a built-in set).
        sentences: Vec<String>,
    },
    /// Run every parity fixture case under the given directories.
    Parity {
        /// Directories holding fixture cases (searched recursively for MANIFEST.json).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Ignore KNOWN_DISCREPANCIES.json (every mismatch fails).
        #[arg(long)]
        strict: bool,
    },
    /// Build a model, load a checkpoint, run named inputs, write named outputs.
    Forward {
        /// Registered model name (see `vlp models`).
        #[arg(long)]
        model: String,
        /// Variant of the model.
        #[arg(long)]
        variant: String,
        /// Official configuration (JSON).
        #[arg(long)]
        config: PathBuf,
        /// Checkpoint (.pth/.bin/.pt/.safetensors).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Named input tensors (.safetensors).
        #[arg(long)]
        inputs: PathBuf,
        /// Where to write the named outputs (.safetensors).
        #[arg(long)]
        out: PathBuf,
        /// Key the state dict sits under (default: auto-detect model/state_dict/module).
        #[arg(long)]
        wrapper: Option<String>,
        /// Load what matches and report the rest instead of failing.
        #[arg(long)]
        partial: bool,
    },
    /// Convert a checkpoint to safetensors and print what it holds.
    Convert {
        /// Input checkpoint (.pth/.bin/.pt/.safetensors).
        input: PathBuf,
        /// Output .safetensors file (written atomically).
        output: PathBuf,
        /// Key the state dict sits under (default: auto-detect model/state_dict/module).
        #[arg(long)]
        wrapper: Option<String>,
        /// Cast floating tensors: f32, f16, bf16.
        #[arg(long)]
        cast: Option<String>,
        /// Strip DeepSpeed's `module.` key prefix.
        #[arg(long)]
        strip_module_prefix: bool,
    },
    /// List the registered models and their variants.
    Models,
    /// Metrics of saved predictions (VQA, captioning, retrieval, NLVR2, SNLI-VE), as the official
    /// evaluation code computes them.
    Score(vlp_tasks::score::ScoreArgs),
    /// BLIP CapFilt: caption every image with a captioner, keep the original and synthetic
    /// captions the ITM filter scores above a threshold, write a new annotation file
    /// (docs/capfilt.md).
    Capfilt(vlp_tasks::capfilt::CapfiltArgs),
    /// Shapes: the built-in synthetic vision-language benchmark (`vlp shapes generate --out DIR`).
    Shapes {
        #[command(subcommand)]
        cmd: vlp_tasks::shapes::cli::ShapesCommand,
    },
    /// Pre-train a small ALBEF on Shapes, fine-tune retrieval / VQA / NLVR2 / SNLI-VE from it and
    /// from scratch, VQA on easy-VQA, and print the table (docs/quickstart.md).
    Quickstart(vlp_tasks::quickstart::QuickstartArgs),
    /// Pre-train a model from an experiment config (docs/experiments.md).
    Pretrain(cli::ExperimentArgs),
    /// Fine-tune a model from an experiment config (usually `model.init`: a pretraining run).
    Finetune(cli::ExperimentArgs),
    /// Evaluate `model.init` (or `--resume RUN_DIR`'s latest checkpoint); writes eval.json.
    Eval(cli::ExperimentArgs),
    /// Variants, presets and accepted checkpoints of a model.
    Info {
        /// Registered model name (albef, blip, bert).
        model: String,
    },
    /// Benchmarks (`vlp bench step`: median training-step time, samples/s, peak memory).
    Bench {
        #[command(subcommand)]
        cmd: cli::BenchCmd,
    },
    /// Objective ablation: one pre-training per mix, fine-tuned and tabulated (Markdown, CSV, PNG).
    Ablate(cli::AblateArgs),
}

fn wrapper_of(w: &Option<String>) -> Wrapper {
    match w.as_deref() {
        None => Wrapper::Auto,
        Some("") | Some("none") => Wrapper::None,
        Some(k) => Wrapper::Key(k.to_string()),
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        if n < 1 {
            bail!("--threads: expected at least 1, got {n}");
        }
        tch::set_num_threads(n);
    }
    let device = vlp_core::device::parse_device(&cli.device)?;
    match cli.cmd {
        Cmd::Smoke { sentences } => smoke(sentences, device),
        Cmd::Parity { dirs, strict } => {
            let start = Instant::now();
            let opts = parity::ParityOptions { device, strict };
            let s = parity::run_all(&dirs, &opts, |l| println!("{l}"))?;
            println!("{s}");
            eprintln!("parity: {:.1} s", start.elapsed().as_secs_f64());
            if s.failed > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Forward {
            model,
            variant,
            config,
            checkpoint,
            inputs,
            out,
            wrapper,
            partial,
        } => {
            let cfg: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(&config)
                    .with_context(|| format!("reading {}", config.display()))?,
            )
            .with_context(|| format!("parsing {}", config.display()))?;
            let mut m = registry::build(&model, &variant, &cfg, device)
                .with_context(|| format!("building {model}/{variant} from {}", config.display()))?;
            let sd = checkpoint::read_state_dict(
                &checkpoint,
                &ReadOptions {
                    wrapper: wrapper_of(&wrapper),
                    ..Default::default()
                },
            )?;
            let sd = m.adapt_state_dict(sd)?;
            let mode = if partial {
                LoadMode::Partial
            } else {
                LoadMode::Strict
            };
            let report = checkpoint::load_state_dict(
                m.var_store_mut(),
                &sd,
                mode,
                &checkpoint.display().to_string(),
            )?;
            if !report.is_clean() {
                eprintln!("{report}");
            }
            let ins = checkpoint::read_state_dict(
                &inputs,
                &ReadOptions {
                    wrapper: Wrapper::None,
                    ..Default::default()
                },
            )?;
            let ins: vlp_models::Tensors = ins
                .iter()
                .map(|(k, v)| (k.clone(), v.shallow_clone()))
                .collect();
            let outs = m.forward_named(&ins, &serde_json::Value::Null)?;
            let mut sd = StateDict::new();
            for (k, v) in outs {
                sd.insert(k, v.to_device(tch::Device::Cpu));
            }
            checkpoint::write_safetensors(&sd, &out)?;
            println!("wrote {} outputs to {}", sd.len(), out.display());
            for (k, v) in sd.iter() {
                println!("  {k}: {:?} {:?}", v.size(), v.kind());
            }
            Ok(())
        }
        Cmd::Convert {
            input,
            output,
            wrapper,
            cast,
            strip_module_prefix,
        } => {
            let cast = match cast.as_deref() {
                None => None,
                Some("f32") | Some("fp32") => Some(Kind::Float),
                Some("f16") | Some("fp16") => Some(Kind::Half),
                Some("bf16") => Some(Kind::BFloat16),
                Some(o) => bail!("--cast {o}: expected f32, f16 or bf16"),
            };
            let opts = ReadOptions {
                wrapper: wrapper_of(&wrapper),
                cast,
                strip_module_prefix,
            };
            let sd = checkpoint::read_state_dict(&input, &opts)?;
            checkpoint::write_safetensors(&sd, &output)?;
            let mut params = 0i64;
            for (k, v) in sd.iter() {
                params += v.numel() as i64;
                println!("{k}: {:?} {:?}", v.size(), v.kind());
            }
            println!(
                "wrote {} tensors ({} values) to {}",
                sd.len(),
                params,
                output.display()
            );
            Ok(())
        }
        Cmd::Shapes { cmd } => Ok(vlp_tasks::shapes::cli::run(&cmd)?),
        Cmd::Pretrain(a) => cli::experiment(vlp_tasks::pipeline::Command::Pretrain, a, device),
        Cmd::Finetune(a) => cli::experiment(vlp_tasks::pipeline::Command::Finetune, a, device),
        Cmd::Eval(a) => cli::experiment(vlp_tasks::pipeline::Command::Eval, a, device),
        Cmd::Info { model } => cli::info(&model),
        Cmd::Bench { cmd } => cli::bench(cmd, device),
        Cmd::Ablate(a) => cli::ablate(a, device),
        Cmd::Quickstart(args) => vlp_tasks::quickstart::run(&args, device)
            .map(|_| ())
            .map_err(Into::into),
        Cmd::Score(args) => Ok(vlp_tasks::score::run(args)?),
        Cmd::Capfilt(args) => vlp_tasks::capfilt::run(&args, device)
            .map(|_| ())
            .map_err(Into::into),
        Cmd::Models => {
            for m in registry::models() {
                println!(
                    "{:<8} variants: {:<20} {}",
                    m.name,
                    m.variants.join(","),
                    m.paper
                );
            }
            println!("planned: {}", registry::PLANNED.join(", "));
            Ok(())
        }
    }
}

const SMOKE_SENTENCES: &[&str] = &[
    "A man is riding a horse.",
    "A person rides an animal.",
    "Two dogs play in the snow.",
    "The stock market fell sharply today.",
];

fn smoke(sentences: Vec<String>, device: tch::Device) -> Result<()> {
    use vlp_core::text::{EncodeOptions, Padding, SpecialStyle, Tokenizer};
    let start = Instant::now();
    let dir = vlp_core::assets::minilm_dir()?;
    let sentences: Vec<String> = if sentences.is_empty() {
        SMOKE_SENTENCES.iter().map(|s| s.to_string()).collect()
    } else {
        sentences
    };
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let mut model = registry::build("bert", "encoder", &cfg, device)?;
    let ckpt = dir.join("model.safetensors");
    let sd = checkpoint::read_state_dict(&ckpt, &ReadOptions::default())?;
    let sd = model.adapt_state_dict(sd)?;
    let report = checkpoint::load_state_dict(
        model.var_store_mut(),
        &sd,
        LoadMode::Strict,
        &ckpt.display().to_string(),
    )?;
    println!(
        "loaded {} tensors strictly from {} on {:?}",
        report.loaded.len(),
        ckpt.display(),
        device
    );
    let tok = Tokenizer::from_file(dir.join("tokenizer.json"))?;
    let refs: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let batch = tok.encode_batch(
        &refs,
        &EncodeOptions {
            padding: Padding::Longest,
            max_length: Some(128),
            style: SpecialStyle::ClsSep,
        },
    )?;
    let mut inputs = vlp_models::Tensors::new();
    inputs.insert("input_ids".into(), batch.input_ids.shallow_clone());
    inputs.insert(
        "attention_mask".into(),
        batch.attention_mask.shallow_clone(),
    );
    let out = model.forward_named(&inputs, &serde_json::Value::Null)?;
    let h = out
        .get("last_hidden_state")
        .context("no last_hidden_state")?;
    let emb = vlp_models::bert::mean_pool(h, &batch.attention_mask.to_device(h.device()));
    let emb = &emb / emb.norm_scalaropt_dim(2.0, [1i64].as_slice(), true);
    let sim = emb.matmul(&emb.tr()).to_device(tch::Device::Cpu);
    println!("cosine similarity of mean-pooled sentence embeddings:");
    for (i, s) in sentences.iter().enumerate() {
        let row: Vec<String> = (0..sentences.len())
            .map(|j| format!("{:6.3}", sim.double_value(&[i as i64, j as i64])))
            .collect();
        println!("  {}  {}", row.join(" "), s);
    }
    println!("smoke run done in {:.2} s", start.elapsed().as_secs_f64());
    Ok(())
}
