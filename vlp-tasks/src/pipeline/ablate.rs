//! `vlp ablate`: pre-train one model per objective mix (same config, seed, data and steps; only
//! `train.objectives` differs), fine-tune and evaluate each on the given task configs, and write
//! a Markdown + CSV table and a bar chart. Each run lives in `OUT/<mix>/<stage>`; finished runs
//! (with `eval.json`) are skipped and interrupted ones resumed, so the command is resumable.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;
use tch::Device;
use vlp_core::{Result, VlpError};

use super::config::ExperimentConfig;
use super::run::{resolved, run, Command, RunOptions, EVAL_FILE, EXPERIMENT_FILE};

/// Options of `vlp ablate`.
#[derive(Debug, Clone)]
pub struct AblateOptions {
    /// The base pre-training experiment.
    pub config: PathBuf,
    /// Objective mixes, e.g. `itc+itm+mlm`, `itc+itm`, `itc`, `mlm`.
    pub mixes: Vec<String>,
    /// Fine-tuning experiments run from each pre-trained model.
    pub finetune: Vec<PathBuf>,
    /// `--set` overrides applied to every run (e.g. `data.root=...`).
    pub sets: Vec<String>,
    /// Output directory.
    pub out: PathBuf,
    /// Device.
    pub device: Device,
}

/// One row of the table: a mix and its metrics (`pretrain/r_mean`, `vqa/vqa_acc`, ...).
#[derive(Debug, Clone)]
pub struct AblationRow {
    /// The mix (`itc+itm`).
    pub mix: String,
    /// Column → value.
    pub metrics: BTreeMap<String, f64>,
}

fn main_metric(m: &BTreeMap<String, f64>) -> Option<(&'static str, f64)> {
    for k in ["r_mean", "vqa_acc", "acc", "cider"] {
        if let Some(v) = m.get(k) {
            return Some((k, *v));
        }
    }
    None
}

fn read_metrics(dir: &Path) -> Result<BTreeMap<String, f64>> {
    let p = dir.join(EVAL_FILE);
    let text = std::fs::read_to_string(&p).map_err(|e| VlpError::io(&p, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| VlpError::Msg(format!("{}: {e}", p.display())))?;
    Ok(v["metrics"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| v.as_f64().map(|x| (k.clone(), x)))
                .collect()
        })
        .unwrap_or_default())
}

/// Runs (or resumes) one stage: skipped when `dir/eval.json` exists.
fn stage(cmd: Command, config: &Path, sets: Vec<String>, dir: &Path, device: Device) -> Result<()> {
    if dir.join(EVAL_FILE).is_file() {
        eprintln!("ablate: {} done, skipped", dir.display());
        return Ok(());
    }
    let resume = dir.join(EXPERIMENT_FILE).is_file() && dir.join("checkpoints/latest").is_file();
    if dir.exists() && !resume {
        std::fs::remove_dir_all(dir).map_err(|e| VlpError::io(dir, e))?;
    }
    let opts = RunOptions {
        config: if resume {
            None
        } else {
            Some(config.to_path_buf())
        },
        sets: if resume { Vec::new() } else { sets },
        out: if resume {
            None
        } else {
            Some(dir.to_path_buf())
        },
        resume: resume.then(|| dir.to_path_buf()),
        device,
    };
    eprintln!("ablate: {} {}", cmd.name(), dir.display());
    run(cmd, &opts).map(|_| ())
}

/// Runs the ablation and writes `ablation.md`, `ablation.csv` and `ablation.png` into `out`.
pub fn ablate(opts: &AblateOptions) -> Result<Vec<AblationRow>> {
    std::fs::create_dir_all(&opts.out).map_err(|e| VlpError::io(&opts.out, e))?;
    let sets: Vec<&str> = opts.sets.iter().map(String::as_str).collect();
    let base = ExperimentConfig::load(&opts.config, &sets)?;
    let mut rows = Vec::new();
    let (model, known): (&str, &[&str]) = match base.model.name.as_str() {
        "blip" => ("BLIP", &["itc", "itm", "lm"]),
        _ => ("ALBEF", &["itc", "itm", "mlm"]),
    };
    for mix in &opts.mixes {
        let objs: Vec<String> = mix.split('+').map(|s| s.trim().to_string()).collect();
        if objs.iter().any(|o| !known.contains(&o.as_str())) {
            return Err(VlpError::Msg(format!(
                "--mixes: `{mix}`: {model}'s objectives are {}",
                known.join(", ")
            )));
        }
        let name = objs.join("_");
        let mdir = opts.out.join(&name);
        std::fs::create_dir_all(&mdir).map_err(|e| VlpError::io(&mdir, e))?;
        let mut exp = resolved(&base)?;
        exp.train.objectives = objs.iter().map(|o| (o.clone(), 1.0)).collect();
        exp.train.mix.clear();
        exp.train.name = format!("{}-{name}", base.train.name);
        let cfg_path = mdir.join("pretrain.yaml");
        super::super::train::checkpoint::write_atomic(&cfg_path, exp.to_yaml()?.as_bytes())?;
        let pdir = mdir.join("pretrain");
        stage(Command::Pretrain, &cfg_path, Vec::new(), &pdir, opts.device)?;
        let mut metrics = BTreeMap::new();
        if let Some((k, v)) = main_metric(&read_metrics(&pdir)?) {
            metrics.insert(format!("pretrain/{k}"), v);
        }
        for f in &opts.finetune {
            let stem = f
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| "finetune".into());
            let fdir = mdir.join(&stem);
            let mut s = opts.sets.clone();
            s.push(format!("model.init={}", pdir.display()));
            stage(Command::Finetune, f, s, &fdir, opts.device)?;
            if let Some((k, v)) = main_metric(&read_metrics(&fdir)?) {
                metrics.insert(format!("{stem}/{k}"), v);
            }
        }
        rows.push(AblationRow {
            mix: mix.clone(),
            metrics,
        });
    }
    write_tables(&opts.out, &rows)?;
    Ok(rows)
}

fn columns(rows: &[AblationRow]) -> Vec<String> {
    let mut cols: Vec<String> = Vec::new();
    for r in rows {
        for k in r.metrics.keys() {
            if !cols.contains(k) {
                cols.push(k.clone());
            }
        }
    }
    cols
}

/// Writes `ablation.md`, `ablation.csv` and `ablation.png`.
pub fn write_tables(out: &Path, rows: &[AblationRow]) -> Result<()> {
    let cols = columns(rows);
    let cell = |r: &AblationRow, c: &String| {
        r.metrics
            .get(c)
            .map(|v| format!("{v:.2}"))
            .unwrap_or_else(|| "-".into())
    };
    let mut md = format!(
        "| objectives | {} |\n|---|{}\n",
        cols.join(" | "),
        "---|".repeat(cols.len())
    );
    let mut csv = format!("objectives,{}\n", cols.join(","));
    for r in rows {
        let cells: Vec<String> = cols.iter().map(|c| cell(r, c)).collect();
        md += &format!("| {} | {} |\n", r.mix, cells.join(" | "));
        csv += &format!("{},{}\n", r.mix, cells.join(","));
    }
    let w = super::super::train::checkpoint::write_atomic;
    w(&out.join("ablation.md"), md.as_bytes())?;
    w(&out.join("ablation.csv"), csv.as_bytes())?;
    bar_chart(&out.join("ablation.png"), rows, &cols)
}

fn font() -> std::result::Result<(), String> {
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| "the bundled DejaVu Sans font failed to load".to_string())
    })
    .clone()
}

fn bar_chart(path: &Path, rows: &[AblationRow], cols: &[String]) -> Result<()> {
    let perr = |e: &dyn std::fmt::Display| VlpError::Msg(format!("{}: {e}", path.display()));
    font().map_err(|e| perr(&e))?;
    let n = cols.len().max(1);
    let groups = rows.len().max(1);
    let ymax = rows
        .iter()
        .flat_map(|r| r.metrics.values().copied())
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::max)
        * 1.15;
    let (w, h) = (220 * groups as u32 + 200, 480u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| perr(&e))?;
        let width = (groups * (n + 1)) as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption("objective ablation", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..width, 0f64..ymax)
            .map_err(|e| perr(&e))?;
        let labels: Vec<String> = rows.iter().map(|r| r.mix.clone()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc("metric (%)")
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| perr(&e))?;
        chart
            .draw_series(labels.iter().enumerate().map(|(g, l)| {
                let x = (g * (n + 1)) as f64 + 0.5;
                Text::new(l.clone(), (x, ymax * 0.97), ("sans-serif", 15))
            }))
            .map_err(|e| perr(&e))?;
        for (j, c) in cols.iter().enumerate() {
            let colour = Palette99::pick(j).to_rgba();
            let bars: Vec<Rectangle<(f64, f64)>> = rows
                .iter()
                .enumerate()
                .filter_map(|(g, r)| {
                    let v = *r.metrics.get(c)?;
                    let x0 = (g * (n + 1) + j) as f64 + 0.5;
                    Some(Rectangle::new([(x0, 0.0), (x0 + 0.9, v)], colour.filled()))
                })
                .collect();
            chart
                .draw_series(bars)
                .map_err(|e| perr(&e))?
                .label(c.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled())
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(|e| perr(&e))?;
        root.present().map_err(|e| perr(&e))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| perr(&"buffer size"))?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| perr(&e))?;
    super::super::train::checkpoint::write_atomic(path, &png)
}
