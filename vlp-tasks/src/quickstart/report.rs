//! What `vlp quickstart` writes and prints: `summary.json`, `metrics.json`, `report.md`, the
//! terminal table and `plots/metrics.png` (from-scratch vs pre-trained bars per task).
use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use vlp_core::{Result, VlpError};

use crate::train::checkpoint::write_atomic;

/// Version of the `summary.json` schema.
pub const SUMMARY_VERSION: u32 = 1;

/// The tasks of the table, in order: `retrieval`, `vqa`, `nlvr2`, `ve` (Shapes) and `easy_vqa`.
pub const TASK_KEYS: [&str; 5] = ["retrieval", "vqa", "nlvr2", "ve", "easy_vqa"];

/// One row of the table: a task's headline metric, its chance level and the two runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSummary {
    /// Human-readable task name (`Shapes retrieval`, `easy-VQA`, ...).
    pub task: String,
    /// Name of the headline metric (`r_mean`, `accuracy`), in percent.
    pub metric: String,
    /// What a model that ignores its input scores (percent).
    pub chance: f64,
    /// What a model that reads only the text scores: the most frequent label or answer of the
    /// same text in the training data (percent; `null` for retrieval; see
    /// [`super::runner::text_prior`]).
    #[serde(default)]
    pub text_prior: Option<f64>,
    /// The metric after fine-tuning from random initialisation (`null` when not run).
    pub from_scratch: Option<f64>,
    /// The metric after fine-tuning from the pre-trained weights (`null` when not run).
    pub pretrained: Option<f64>,
    /// Every metric of the from-scratch run (percent where applicable).
    #[serde(default)]
    pub from_scratch_details: BTreeMap<String, f64>,
    /// Every metric of the pre-trained run.
    #[serde(default)]
    pub pretrained_details: BTreeMap<String, f64>,
    /// The run directory the pre-trained run started from (the pre-training run; NLVR2's
    /// text-assignment run when the plan has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrained_from: Option<String>,
    /// Optimizer steps of each fine-tuning run.
    pub steps: u64,
    /// Wall time of the task (both runs and their evaluations), seconds.
    pub seconds: f64,
}

impl TaskSummary {
    /// Pre-trained minus from scratch, when both ran.
    pub fn gain(&self) -> Option<f64> {
        Some(self.pretrained? - self.from_scratch?)
    }
}

/// The pre-training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainSummary {
    /// Optimizer steps.
    pub steps: u64,
    /// Image–caption pairs seen.
    pub samples: u64,
    /// Loss terms of the first logged window (`itc`, `itm`, `mlm`).
    pub first_terms: BTreeMap<String, f64>,
    /// Loss terms of the last logged window.
    pub last_terms: BTreeMap<String, f64>,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Its run directory (relative to the quickstart directory).
    pub run_dir: String,
    /// The zero-shot grounding probe of the pre-trained weights (`None`: not run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<super::probe::GroundingProbe>,
}

/// `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Schema version ([`SUMMARY_VERSION`]).
    pub version: u32,
    /// `default` or `quick` (or `test`).
    pub profile: String,
    /// The seed.
    pub seed: u64,
    /// The device the models ran on (`cpu`, `cuda:0`).
    pub device: String,
    /// The Shapes data directory used.
    pub shapes_dir: String,
    /// The easy-VQA data directory used (`null` when not found).
    pub easy_vqa_dir: Option<String>,
    /// The pre-training run.
    pub pretrain: PretrainSummary,
    /// Per task ([`TASK_KEYS`]: `retrieval`, `vqa`, `nlvr2`, `ve`, `easy_vqa`).
    pub tasks: BTreeMap<String, TaskSummary>,
    /// Tasks on which the pre-trained model beats the one trained from scratch (Shapes only).
    pub pretrained_wins: usize,
    /// Wall time of the whole quickstart, seconds.
    pub elapsed_s: f64,
}

impl Summary {
    /// The tasks in table order.
    pub fn ordered(&self) -> Vec<(&str, &TaskSummary)> {
        TASK_KEYS
            .iter()
            .filter_map(|k| self.tasks.get(*k).map(|t| (*k, t)))
            .collect()
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.1}"),
        Some(_) => "NaN".into(),
        None => "—".into(),
    }
}

fn fmt_gain(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:+.1}"),
        _ => "—".into(),
    }
}

/// The terminal table (plain text, aligned).
pub fn table(s: &Summary) -> String {
    let header = [
        "task",
        "metric",
        "chance",
        "text only",
        "from scratch",
        "pre-trained",
        "gain",
    ];
    let mut rows: Vec<[String; 7]> = Vec::new();
    for (_, t) in s.ordered() {
        rows.push([
            t.task.clone(),
            format!("{} (%)", t.metric),
            format!("{:.1}", t.chance),
            fmt_opt(t.text_prior),
            fmt_opt(t.from_scratch),
            fmt_opt(t.pretrained),
            fmt_gain(t.gain()),
        ]);
    }
    let mut w = header.map(|h| h.chars().count());
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = w[i] - c.chars().count();
            if i < 2 {
                out.push_str(c);
                out.push_str(&" ".repeat(pad));
            } else {
                out.push_str(&" ".repeat(pad));
                out.push_str(c);
            }
            if i + 1 < cells.len() {
                out.push_str("  ");
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(&header.map(String::from));
    out.push('\n');
    out.push_str(&"-".repeat(w.iter().sum::<usize>() + 2 * (w.len() - 1)));
    out.push('\n');
    for r in &rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out
}

/// The easy-VQA per-answer-type line(s) of the report, when present.
fn easy_vqa_types(t: &TaskSummary) -> Vec<String> {
    let mut out = Vec::new();
    for (label, d) in [
        ("from scratch", &t.from_scratch_details),
        ("pre-trained", &t.pretrained_details),
    ] {
        let parts: Vec<String> = ["yes/no", "color", "shape"]
            .iter()
            .filter_map(|k| d.get(&format!("acc_{k}")).map(|v| format!("{k} {v:.1}%")))
            .collect();
        if !parts.is_empty() {
            out.push(format!("{label}: {}", parts.join(", ")));
        }
    }
    out
}

/// The `group_<family>` metrics of a task's two runs: (family, from scratch, pre-trained).
fn family_rows(t: &TaskSummary) -> Vec<(String, Option<f64>, Option<f64>)> {
    let mut names: Vec<&str> = t
        .from_scratch_details
        .keys()
        .chain(t.pretrained_details.keys())
        .filter_map(|k| k.strip_prefix("group_"))
        .collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|n| {
            let key = format!("group_{n}");
            (
                n.to_string(),
                t.from_scratch_details.get(&key).copied(),
                t.pretrained_details.get(&key).copied(),
            )
        })
        .collect()
}

/// `report.md`: the table, the per-type easy-VQA accuracies, the pre-training losses, timings,
/// and links to the plots and run directories.
pub fn markdown(s: &Summary) -> String {
    let mut m = String::new();
    m.push_str("# vlp quickstart\n\n");
    m.push_str(&format!(
        "Profile `{}`, seed {}, device `{}`, total {:.0} s. Shapes: `{}`; easy-VQA: `{}`.\n\n",
        s.profile,
        s.seed,
        s.device,
        s.elapsed_s,
        s.shapes_dir,
        s.easy_vqa_dir.as_deref().unwrap_or("not found")
    ));
    m.push_str(
        "| task | metric | chance | text only | from scratch | pre-trained | gain | steps | time (s) |\n",
    );
    m.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (_, t) in s.ordered() {
        m.push_str(&format!(
            "| {} | {} (%) | {:.1} | {} | {} | {} | {} | {} | {:.0} |\n",
            t.task,
            t.metric,
            t.chance,
            fmt_opt(t.text_prior),
            fmt_opt(t.from_scratch),
            fmt_opt(t.pretrained),
            fmt_gain(t.gain()),
            t.steps,
            t.seconds
        ));
    }
    m.push_str(&format!(
        "\nPre-trained ≥ from scratch on {} of the 4 Shapes tasks. *Chance*: a model that ignores \
         its input (random ranking, best constant answer, majority class). *Text only*: the most \
         frequent training label or answer of the same text, a model that never looks at the \
         image; a task scored below it has not learned to use the image.\n",
        s.pretrained_wins
    ));
    if let Some(t) = s.tasks.get("easy_vqa") {
        let lines = easy_vqa_types(t);
        if !lines.is_empty() {
            m.push_str("\neasy-VQA accuracy per answer type: ");
            m.push_str(&lines.join("; "));
            m.push_str(".\n");
        }
    }
    for (_, t) in s.ordered() {
        let rows = family_rows(t);
        if rows.is_empty() {
            continue;
        }
        m.push_str(&format!(
            "\n{} per question / statement family (accuracy, %):\n\n| family | from scratch | pre-trained | gain |\n|---|---:|---:|---:|\n",
            t.task
        ));
        for (family, a, b) in rows {
            let gain = a.zip(b).map(|(a, b)| b - a);
            m.push_str(&format!(
                "| {family} | {} | {} | {} |\n",
                fmt_opt(a),
                fmt_opt(b),
                fmt_gain(gain)
            ));
        }
    }
    let p = &s.pretrain;
    let terms = |t: &BTreeMap<String, f64>| {
        t.iter()
            .map(|(k, v)| format!("{k} {v:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    m.push_str(&format!(
        "\n## Pre-training on Shapes captions (objectives and weights: `plan.json`)\n\n{} steps, {} pairs, {:.0} s. \
         Losses: first window {}; last window {}. Run directory: `{}`.\n",
        p.steps,
        p.samples,
        p.seconds,
        terms(&p.first_terms),
        terms(&p.last_terms),
        p.run_dir
    ));
    if let Some(g) = &p.probe {
        m.push_str(&format!(
            "\n### Grounding probe (zero-shot, before fine-tuning)\n\n\
             On {} easy-VQA test images the pre-trained model picks the true caption among \
             captions that differ in one word (`vlp_tasks::quickstart::probe`):\n\n\
             | probe | ITM | ITC | chance |\n|---|---:|---:|---:|\n\
             | shape (\"a red circle\" / \"a red triangle\" / …) | {:.1} | {:.1} | {:.1} |\n\
             | colour (\"a red circle\" / \"a blue circle\" / …) | {:.1} | {:.1} | {:.1} |\n",
            g.images,
            g.shape_itm,
            g.shape_itc,
            g.shape_chance,
            g.colour_itm,
            g.colour_itc,
            g.colour_chance
        ));
    }
    m.push_str("\n## Details\n\n");
    for (k, t) in s.ordered() {
        m.push_str(&format!("- **{}** (`{k}`)\n", t.task));
        for (label, d) in [
            ("from scratch", &t.from_scratch_details),
            ("pre-trained", &t.pretrained_details),
        ] {
            if d.is_empty() {
                continue;
            }
            let parts: Vec<String> = d.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
            m.push_str(&format!("  - {label}: {}\n", parts.join(", ")));
        }
    }
    m.push_str(
        "\n## Files\n\n- `summary.json`, `metrics.json`\n- `plots/metrics.png` (bars per task), \
         `pretrain/plots/loss.png` and `<task>-<init>/plots/loss.png` (loss curves)\n",
    );
    m
}

/// Writes `summary.json`, `metrics.json` (every metric of every run), `report.md` and
/// `plots/metrics.png` under `dir`.
pub fn write_all(dir: &Path, s: &Summary) -> Result<()> {
    let js = serde_json::to_string_pretty(s).map_err(|e| VlpError::Msg(e.to_string()))?;
    write_atomic(&dir.join("summary.json"), js.as_bytes())?;
    let mut metrics = serde_json::Map::new();
    for (k, t) in s.ordered() {
        metrics.insert(
            k.to_string(),
            serde_json::json!({
                "from_scratch": t.from_scratch_details,
                "pretrained": t.pretrained_details,
            }),
        );
    }
    let js = serde_json::to_string_pretty(&serde_json::Value::Object(metrics))
        .map_err(|e| VlpError::Msg(e.to_string()))?;
    write_atomic(&dir.join("metrics.json"), js.as_bytes())?;
    write_atomic(&dir.join("report.md"), markdown(s).as_bytes())?;
    std::fs::create_dir_all(dir.join("plots")).map_err(|e| VlpError::io(dir, e))?;
    metric_bars(&dir.join("plots").join("metrics.png"), s)
}

fn perr(e: impl std::fmt::Display) -> VlpError {
    VlpError::Msg(format!("plot: {e}"))
}

/// Bar chart: per task, chance (grey), text only (light grey), from scratch (orange) and
/// pre-trained (blue), in percent.
pub fn metric_bars(path: &Path, s: &Summary) -> Result<()> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| perr("the bundled DejaVu Sans font failed to load"))?;
    let tasks = s.ordered();
    let n = tasks.len().max(1);
    let (w, h) = (160 * n as u32 + 160, 460u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(perr)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "quickstart: chance / text only / from scratch / pre-trained (%)",
                ("sans-serif", 22),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..n as f64, 0f64..135f64)
            .map_err(perr)?;
        let names: Vec<String> = tasks.iter().map(|(k, _)| k.to_string()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - i as f64 - 0.5).abs() < 0.26 && i < names.len() {
                    names[i].clone()
                } else {
                    String::new()
                }
            })
            .y_desc("%")
            .y_label_formatter(&|y| {
                if *y <= 100.0 {
                    format!("{y:.0}")
                } else {
                    String::new()
                }
            })
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(perr)?;
        let bars = [
            (RGBColor(160, 160, 160), "chance"),
            (RGBColor(210, 210, 210), "text only"),
            (RGBColor(255, 127, 14), "from scratch"),
            (RGBColor(31, 119, 180), "pre-trained"),
        ];
        for (j, (color, label)) in bars.iter().enumerate() {
            let rects: Vec<Rectangle<(f64, f64)>> = tasks
                .iter()
                .enumerate()
                .filter_map(|(i, (_, t))| {
                    let v = match j {
                        0 => Some(t.chance),
                        1 => t.text_prior,
                        2 => t.from_scratch,
                        _ => t.pretrained,
                    }?;
                    let x0 = i as f64 + 0.08 + 0.21 * j as f64;
                    Some(Rectangle::new(
                        [(x0, 0.0), (x0 + 0.19, v.clamp(0.0, 105.0))],
                        color.filled(),
                    ))
                })
                .collect();
            let c = *color;
            chart
                .draw_series(rects)
                .map_err(perr)?
                .label(*label)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        }
        chart
            .configure_series_labels()
            // Above the bars (which end at 100%).
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(perr)?;
        root.present().map_err(perr)?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| perr("buffer size"))?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(perr)?;
    write_atomic(path, &png)
}
