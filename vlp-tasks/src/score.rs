//! `vlp score`: metrics of saved predictions, as the official evaluation code computes them.
//!
//! - `vlp score vqa --questions Q --annotations A --results R`: official VQA v2 files, results
//!   `[{"question_id": …, "answer": "…"}]`; prints `overall`, `perAnswerType`, `perQuestionType`
//!   (percent, 2 decimals, as `vqaEval.accuracy`).
//! - `vlp score caption --references REF --results R`: a COCO captions annotation file
//!   (`{"annotations": [{"image_id", "caption"}], …}`) and a COCO result list
//!   `[{"image_id", "caption"}]`; prints `Bleu_1` … `Bleu_4`, `ROUGE_L`, `CIDEr`.
//! - `vlp score retrieval --scores S --gt G`: `S` a JSON matrix images × texts of image-to-text
//!   scores (text-to-image scores are its transpose), or `{"i2t": [[…]], "t2i": [[…]]}`; `G`
//!   `{"img2txt": [[text indices] per image], "txt2img": [image index per text]}`; prints
//!   `txt_r1` … `img_r10`, the means and `r_mean`.
//! - `vlp score nlvr2|ve --annotations A --results R`: annotations as the data readers accept them;
//!   results a JSON list `[{"identifier"|"index": …, "prediction": …}]` (`pairID` also names a
//!   SNLI-VE example) or the official NLVR2 CSV `identifier,prediction`; prints `accuracy` (and
//!   NLVR2 `consistency`, per-class accuracy).
//!
//! `--json` prints one JSON object of the metrics on stdout instead of the table.
use crate::data::json::{kind, show, Source};
use crate::data::{nlvr2, snli_ve, vqa, ReadOptions};
use crate::metrics::caption::caption_metrics;
use crate::metrics::classification::{accuracy, nlvr2_consistency, Accuracy};
use crate::metrics::retrieval::{itm_eval, ScoreMatrix};
use crate::metrics::vqa::evaluate as vqa_evaluate;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use vlp_core::{Result, VlpError};

/// Arguments of `vlp score`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScoreArgs {
    /// Print one JSON object of the metrics on stdout instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// The task.
    #[command(subcommand)]
    pub task: ScoreTask,
}

/// The tasks `vlp score` evaluates.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ScoreTask {
    /// VQA v2 accuracy (official evaluation).
    Vqa {
        /// Official questions file (v2_OpenEnded_mscoco_*_questions.json).
        #[arg(long)]
        questions: PathBuf,
        /// Official annotations file (v2_mscoco_*_annotations.json).
        #[arg(long)]
        annotations: PathBuf,
        /// Results: [{"question_id": …, "answer": "…"}].
        #[arg(long)]
        results: PathBuf,
    },
    /// Captioning BLEU-1..4, ROUGE-L and CIDEr (pycocoevalcap).
    Caption {
        /// COCO captions annotation file.
        #[arg(long)]
        references: PathBuf,
        /// COCO result list: [{"image_id": …, "caption": "…"}].
        #[arg(long)]
        results: PathBuf,
    },
    /// Image-text retrieval recall (ALBEF/BLIP itm_eval).
    Retrieval {
        /// JSON matrix images × texts of image-to-text scores, or {"i2t": …, "t2i": …}.
        #[arg(long)]
        scores: PathBuf,
        /// {"img2txt": [[…]], "txt2img": […]}.
        #[arg(long)]
        gt: PathBuf,
    },
    /// NLVR2 accuracy and consistency.
    Nlvr2 {
        /// NLVR2 annotations (ALBEF JSON or official JSON lines).
        #[arg(long)]
        annotations: PathBuf,
        /// Predictions (JSON list or official CSV).
        #[arg(long)]
        results: PathBuf,
    },
    /// SNLI-VE accuracy.
    Ve {
        /// SNLI-VE annotations (ALBEF JSON or official JSON lines).
        #[arg(long)]
        annotations: PathBuf,
        /// Predictions (JSON list or CSV).
        #[arg(long)]
        results: PathBuf,
    },
}

/// Computed metrics: the JSON object and the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// The metrics as one JSON object.
    pub json: Value,
    /// A human-readable table.
    pub table: String,
}

/// Computes the metrics of a task.
pub fn compute(task: &ScoreTask) -> Result<Scores> {
    match task {
        ScoreTask::Vqa {
            questions,
            annotations,
            results,
        } => score_vqa(questions, annotations, results),
        ScoreTask::Caption {
            references,
            results,
        } => score_caption(references, results),
        ScoreTask::Retrieval { scores, gt } => score_retrieval(scores, gt),
        ScoreTask::Nlvr2 {
            annotations,
            results,
        } => score_nlvr2(annotations, results),
        ScoreTask::Ve {
            annotations,
            results,
        } => score_ve(annotations, results),
    }
}

/// Computes and writes the table (or the JSON object with `--json`) to `out`.
pub fn run_to(args: &ScoreArgs, out: &mut dyn Write) -> Result<()> {
    let s = compute(&args.task)?;
    let text = if args.json {
        format!("{}\n", s.json)
    } else {
        s.table
    };
    out.write_all(text.as_bytes())
        .map_err(|e| VlpError::io("<stdout>", e))
}

/// `vlp score`: computes and prints to stdout.
pub fn run(args: ScoreArgs) -> Result<()> {
    run_to(&args, &mut std::io::stdout().lock())
}

fn table(rows: &[(String, String)]) -> String {
    let w = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<w$}  {v}\n"))
        .collect()
}

fn pct(v: f64) -> String {
    format!("{v:.2}")
}

fn score_vqa(questions: &Path, annotations: &Path, results: &Path) -> Result<Scores> {
    let strict = ReadOptions::default();
    let anns = vqa::read_official_annotations(annotations, &strict)?.items;
    // The questions file must hold the annotated questions (VQA.loadRes reads both).
    let qsrc = Source::read(questions)?;
    let (qitems, _) = qsrc.array_under("questions")?;
    let mut qids = HashSet::new();
    for r in qitems {
        qids.insert(r?.uint("question_id")?);
    }
    let annotated: HashSet<u64> = anns.iter().map(|a| a.question_id).collect();
    if let Some(q) = annotated.iter().find(|q| !qids.contains(q)) {
        return Err(VlpError::Msg(format!(
            "{}: annotated question {q} is not in {}",
            annotations.display(),
            questions.display()
        )));
    }
    let rsrc = Source::read(results)?;
    let mut res: HashMap<u64, String> = HashMap::new();
    let mut dups = 0;
    for r in rsrc.top_array()? {
        let r = r?;
        let qid = r.uint("question_id")?;
        let answer = match r.req("answer")? {
            Value::String(s) => s.clone(),
            v => return Err(r.err("answer", format!("expected a string, found {}", kind(v)))),
        };
        if !annotated.contains(&qid) {
            return Err(r.err(
                "question_id",
                format!("question {qid} is not in {}", annotations.display()),
            ));
        }
        if res.insert(qid, answer).is_some() {
            dups += 1;
        }
    }
    if dups > 0 {
        eprintln!("warning: {}: {dups} duplicate question ids; the last answer of each is used (as the official VQA.loadRes)", results.display());
    }
    let gts: Vec<_> = anns.iter().map(|a| a.ground_truth()).collect();
    let r = vqa_evaluate(&gts, &res)?;
    let mut rows = vec![
        ("overall".to_string(), pct(r.overall)),
        ("questions".to_string(), r.questions.to_string()),
    ];
    rows.extend(
        r.per_answer_type
            .iter()
            .map(|(k, v)| (format!("answer type: {k}"), pct(*v))),
    );
    rows.extend(
        r.per_question_type
            .iter()
            .map(|(k, v)| (format!("question type: {k}"), pct(*v))),
    );
    Ok(Scores {
        json: json!({"overall": r.overall, "perAnswerType": r.per_answer_type, "perQuestionType": r.per_question_type}),
        table: table(&rows),
    })
}

fn image_key(r: &crate::data::json::Record<'_>) -> Result<String> {
    match r.req("image_id")? {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Ok(n.to_string()),
        v => Err(r.err(
            "image_id",
            format!("expected an integer or a string, found {}", show(v)),
        )),
    }
}

fn score_caption(references: &Path, results: &Path) -> Result<Scores> {
    let src = Source::read(references)?;
    let (anns, _) = src.array_under("annotations")?;
    let mut refs: HashMap<String, Vec<String>> = HashMap::new();
    for r in anns {
        let r = r?;
        let key = image_key(&r)?;
        let caption = match r.req("caption")? {
            Value::String(s) => s.clone(),
            v => return Err(r.err("caption", format!("expected a string, found {}", kind(v)))),
        };
        refs.entry(key).or_default().push(caption);
    }
    let rsrc = Source::read(results)?;
    let mut pairs = Vec::new();
    let mut seen = HashSet::new();
    for r in rsrc.top_array()? {
        let r = r?;
        let key = image_key(&r)?;
        let caption = match r.req("caption")? {
            Value::String(s) => s.clone(),
            v => return Err(r.err("caption", format!("expected a string, found {}", kind(v)))),
        };
        let rs = refs.get(&key).ok_or_else(|| {
            r.err(
                "image_id",
                format!("image {key} has no reference in {}", references.display()),
            )
        })?;
        if !seen.insert(key.clone()) {
            return Err(r.err(
                "image_id",
                format!("a second caption for image {key} (one per image)"),
            ));
        }
        pairs.push((caption, rs.clone()));
    }
    if pairs.is_empty() {
        return Err(VlpError::Msg(format!("{}: no results", results.display())));
    }
    let m = caption_metrics(&pairs);
    let json = serde_json::to_value(m).map_err(|e| VlpError::Msg(e.to_string()))?;
    let mut rows: Vec<(String, String)> =
        ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"]
            .iter()
            .map(|k| {
                (
                    k.to_string(),
                    format!("{:.4}", json[k].as_f64().unwrap_or(f64::NAN)),
                )
            })
            .collect();
    rows.push(("images".into(), pairs.len().to_string()));
    Ok(Scores {
        json,
        table: table(&rows),
    })
}

fn matrix(v: &Value, src: &Source, field: &str) -> Result<ScoreMatrix> {
    let rows = v.as_array().ok_or_else(|| {
        src.error(
            0,
            field,
            format!("expected a matrix (list of rows), found {}", kind(v)),
        )
    })?;
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let row = row
            .as_array()
            .ok_or_else(|| src.error(0, format!("{field}[{i}]"), "expected a list of numbers"))?;
        out.push(
            row.iter()
                .enumerate()
                .map(|(j, x)| {
                    x.as_f64().ok_or_else(|| {
                        src.error(
                            0,
                            format!("{field}[{i}][{j}]"),
                            format!("expected a number, found {}", show(x)),
                        )
                    })
                })
                .collect::<Result<Vec<f64>>>()?,
        );
    }
    ScoreMatrix::from_rows(&out).map_err(|e| src.error(0, field, e.to_string()))
}

fn score_retrieval(scores: &Path, gt: &Path) -> Result<Scores> {
    let ssrc = Source::read(scores)?;
    ssrc.validate_json()?;
    let sv: Value =
        serde_json::from_str(&ssrc.text).map_err(|e| ssrc.error(0, "<json>", e.to_string()))?;
    let (i2t, t2i) = match &sv {
        Value::Object(o) => {
            let i2t = matrix(
                o.get("i2t")
                    .ok_or_else(|| ssrc.error(0, "i2t", "missing"))?,
                &ssrc,
                "i2t",
            )?;
            let t2i = match o.get("t2i") {
                Some(v) => matrix(v, &ssrc, "t2i")?,
                None => i2t.transpose(),
            };
            (i2t, t2i)
        }
        v => {
            let m = matrix(v, &ssrc, "<scores>")?;
            let t = m.transpose();
            (m, t)
        }
    };
    let gsrc = Source::read(gt)?;
    gsrc.validate_json()?;
    let gv: Value =
        serde_json::from_str(&gsrc.text).map_err(|e| gsrc.error(0, "<json>", e.to_string()))?;
    let idx = |v: &Value, f: String| -> Result<usize> {
        v.as_u64()
            .map(|x| x as usize)
            .ok_or_else(|| gsrc.error(0, f, format!("expected an index, found {}", show(v))))
    };
    let img2txt: Vec<Vec<usize>> = gv
        .get("img2txt")
        .and_then(Value::as_array)
        .ok_or_else(|| gsrc.error(0, "img2txt", "missing or not a list"))?
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(j, x)| idx(x, format!("img2txt[{i}][{j}]")))
                .collect(),
            x => Ok(vec![idx(x, format!("img2txt[{i}]"))?]),
        })
        .collect::<Result<_>>()?;
    let txt2img: Vec<usize> = gv
        .get("txt2img")
        .and_then(Value::as_array)
        .ok_or_else(|| gsrc.error(0, "txt2img", "missing or not a list"))?
        .iter()
        .enumerate()
        .map(|(t, x)| idx(x, format!("txt2img[{t}]")))
        .collect::<Result<_>>()?;
    let m = itm_eval(&i2t, &t2i, &img2txt, &txt2img)?;
    let json = serde_json::to_value(m).map_err(|e| VlpError::Msg(e.to_string()))?;
    let keys = [
        "txt_r1",
        "txt_r5",
        "txt_r10",
        "txt_r_mean",
        "img_r1",
        "img_r5",
        "img_r10",
        "img_r_mean",
        "r_mean",
    ];
    let rows: Vec<(String, String)> = keys
        .iter()
        .map(|k| (k.to_string(), pct(json[k].as_f64().unwrap_or(f64::NAN))))
        .collect();
    Ok(Scores {
        json,
        table: table(&rows),
    })
}

/// A prediction's key: an identifier, or the position of the example in the annotations.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Id(String),
    Index(usize),
}

/// Predictions: key → (value, where it was read).
fn read_predictions(path: &Path, id_keys: &[&str]) -> Result<Vec<(Key, Value, VlpError)>> {
    let src = Source::read(path)?;
    let first = src.text.trim_start().chars().next();
    let mut out = Vec::new();
    if first == Some('[') {
        for r in src.top_array()? {
            let r = r?;
            let mut key = None;
            for k in id_keys {
                if let Some(v) = r.opt_string(k)? {
                    key = Some(Key::Id(v));
                    break;
                }
            }
            let key = match key {
                Some(k) => k,
                None => Key::Index(r.uint("index").map_err(|_| {
                    r.err(
                        "index",
                        format!("each prediction needs one of {id_keys:?} or `index`"),
                    )
                })? as usize),
            };
            let pred = r.req("prediction")?.clone();
            out.push((key, pred, r.err("prediction", "")));
        }
    } else {
        // CSV: identifier,prediction (the official NLVR2 format).
        for (i, line) in src.text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let err = |f: &str, m: &str| VlpError::Data {
                path: path.to_path_buf(),
                line: i + 1,
                column: 1,
                field: f.into(),
                msg: m.into(),
            };
            let (id, pred) = line
                .trim()
                .split_once(',')
                .ok_or_else(|| err("<csv>", "expected `identifier,prediction`"))?;
            out.push((
                Key::Id(id.trim().to_string()),
                Value::String(pred.trim().to_string()),
                err("prediction", ""),
            ));
        }
    }
    Ok(out)
}

/// Matches predictions to examples; every example needs exactly one prediction.
fn match_predictions<T: Clone>(
    path: &Path,
    ids: &[Option<String>],
    preds: Vec<(Key, Value, VlpError)>,
    parse: impl Fn(&Value) -> Option<T>,
    expected: &str,
) -> Result<Vec<T>> {
    let by_id: HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .filter_map(|(i, id)| id.as_deref().map(|s| (s, i)))
        .collect();
    let mut got: Vec<Option<T>> = vec![None; ids.len()];
    for (key, v, at) in preds {
        let reloc = |msg: String| match &at {
            VlpError::Data {
                path,
                line,
                column,
                field,
                ..
            } => VlpError::Data {
                path: path.clone(),
                line: *line,
                column: *column,
                field: field.clone(),
                msg,
            },
            _ => VlpError::Msg(msg),
        };
        let i = match &key {
            Key::Id(s) => *by_id
                .get(s.as_str())
                .ok_or_else(|| reloc(format!("no annotated example has identifier `{s}`")))?,
            Key::Index(i) if *i < ids.len() => *i,
            Key::Index(i) => {
                return Err(reloc(format!(
                    "index {i} out of range ({} examples)",
                    ids.len()
                )))
            }
        };
        let p =
            parse(&v).ok_or_else(|| reloc(format!("expected {expected}, found {}", show(&v))))?;
        if got[i].replace(p).is_some() {
            return Err(reloc(format!("a second prediction for example {key:?}")));
        }
    }
    let missing = got.iter().filter(|g| g.is_none()).count();
    if missing > 0 {
        let first = got.iter().position(Option::is_none).unwrap_or(0);
        let name = ids[first]
            .clone()
            .unwrap_or_else(|| format!("index {first}"));
        return Err(VlpError::Msg(format!(
            "{}: {missing} examples have no prediction (first: {name})",
            path.display()
        )));
    }
    Ok(got.into_iter().flatten().collect())
}

fn accuracy_scores(a: &Accuracy) -> Result<Scores> {
    let json = serde_json::to_value(a).map_err(|e| VlpError::Msg(e.to_string()))?;
    let mut rows = vec![
        ("accuracy".to_string(), pct(a.accuracy)),
        ("examples".into(), format!("{} / {}", a.correct, a.total)),
    ];
    if let Some(c) = a.consistency {
        rows.push(("consistency".into(), pct(c)));
    }
    rows.extend(
        a.per_class
            .iter()
            .map(|(k, v)| (format!("class {k}"), pct(*v))),
    );
    Ok(Scores {
        json,
        table: table(&rows),
    })
}

fn score_nlvr2(annotations: &Path, results: &Path) -> Result<Scores> {
    let ex = nlvr2::read(annotations, &ReadOptions::default())?.items;
    let ids: Vec<Option<String>> = ex.iter().map(|e| e.identifier.clone()).collect();
    let preds = match_predictions(
        results,
        &ids,
        read_predictions(results, &["identifier"])?,
        nlvr2::parse_label,
        "True or False",
    )?;
    let pairs: Vec<(bool, bool)> = ex.iter().zip(&preds).map(|(e, p)| (e.label, *p)).collect();
    let mut a = accuracy(&pairs, |b| if *b { "True".into() } else { "False".into() });
    if ex.iter().all(|e| e.identifier.is_some()) {
        a.consistency = nlvr2_consistency(
            ex.iter()
                .zip(&pairs)
                .map(|(e, (t, p))| (e.identifier.as_deref().unwrap_or(""), t == p)),
        );
    }
    accuracy_scores(&a)
}

fn score_ve(annotations: &Path, results: &Path) -> Result<Scores> {
    let ex = snli_ve::read(annotations, &ReadOptions::default())?.items;
    let ids: Vec<Option<String>> = ex.iter().map(|e| e.identifier.clone()).collect();
    let preds = match_predictions(
        results,
        &ids,
        read_predictions(results, &["identifier", "pairID"])?,
        snli_ve::VeLabel::parse,
        "entailment, neutral or contradiction",
    )?;
    let pairs: Vec<_> = ex.iter().zip(&preds).map(|(e, p)| (e.label, *p)).collect();
    accuracy_scores(&accuracy(&pairs, |l| l.name().to_string()))
}
