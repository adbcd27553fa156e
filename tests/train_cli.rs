//! End-to-end tests of `vlp pretrain|finetune|eval|info` on a tiny Shapes set (seconds each):
//! pretrain → checkpoint → fine-tune (VQA, SNLI-VE) → eval; kill-and-resume reproduces the
//! uninterrupted run's losses exactly on CPU; bad configs fail with one line naming the field.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn vlp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vlp"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["--device", "cpu"])
        .args(args)
        .output()
        .expect("run vlp")
}

fn ok(args: &[&str]) -> String {
    let o = vlp(args);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "vlp {args:?} failed:\n{out}\n{err}");
    out
}

fn fail(args: &[&str]) -> String {
    let o = vlp(args);
    assert!(!o.status.success(), "vlp {args:?} should fail");
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

/// `vlp CMD --config CONFIG --set S… --out OUT`, which must succeed; returns stdout.
fn run(cmd: &str, config: &str, sets: &[&str], out: &Path) -> String {
    ok(&config_args(cmd, config, sets, out))
}

/// The same command, which must fail; returns its stderr.
fn run_fail(cmd: &str, config: &str, sets: &[&str], out: &Path) -> String {
    fail(&config_args(cmd, config, sets, out))
}

fn config_args<'a>(cmd: &'a str, config: &'a str, sets: &[&'a str], out: &'a Path) -> Vec<&'a str> {
    let mut a = vec![cmd, "--config", config];
    for s in sets {
        a.extend(["--set", s]);
    }
    a.extend(["--out", out.to_str().unwrap()]);
    a
}

fn tmp(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("train_cli-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A tiny Shapes set: 64 train, 16 val, 16 test images.
fn shapes(dir: &Path) -> PathBuf {
    shapes_with(dir, &[])
}

/// [`shapes`] with more `vlp shapes generate` arguments.
fn shapes_with(dir: &Path, extra: &[&str]) -> PathBuf {
    let out = dir.join("shapes");
    let mut args = vec![
        "shapes",
        "generate",
        "--out",
        out.to_str().unwrap(),
        "--images",
        "64",
        "--val-images",
        "16",
        "--test-images",
        "16",
        "--no-regions",
    ];
    args.extend_from_slice(extra);
    ok(&args);
    out
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{p:?}: {e}")))
        .unwrap()
}

fn metrics_of(run: &Path) -> serde_json::Map<String, serde_json::Value> {
    let v = read_json(&run.join("eval.json"));
    let m = v["metrics"].as_object().expect("metrics").clone();
    assert!(!m.is_empty(), "no metrics in {run:?}");
    for (k, x) in &m {
        let x = x.as_f64().unwrap_or(f64::NAN);
        assert!(x.is_finite() && (0.0..=100.0).contains(&x), "{k} = {x}");
    }
    m
}

fn train_losses(run: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "train")
        .map(|v| {
            (
                v["step"].as_u64().unwrap(),
                format!("{} {}", v["loss"], v["terms"]),
            )
        })
        .collect()
}

#[test]
fn pretrain_finetune_eval_end_to_end() {
    let d = tmp("e2e");
    let data = shapes(&d);
    let root = format!("data.root={}", data.display());
    let pt = d.join("pretrain");
    run(
        "pretrain",
        "configs/tiny/albef_pretrain.yaml",
        &[&root],
        &pt,
    );
    for f in [
        "config.yaml",
        "experiment.yaml",
        "metrics.jsonl",
        "train.log",
        "eval.json",
        "plots/loss.png",
        "checkpoints/latest",
        "checkpoints/step-00000006/model.safetensors",
    ] {
        assert!(pt.join(f).is_file(), "missing {f}");
    }
    let m = metrics_of(&pt);
    assert!(
        m.contains_key("r_mean") && m.contains_key("txt_r1"),
        "{m:?}"
    );
    assert_eq!(train_losses(&pt).len(), 6);

    let init = format!("model.init={}", pt.display());
    let vqa = d.join("vqa");
    run(
        "finetune",
        "configs/tiny/albef_vqa.yaml",
        &[&root, &init],
        &vqa,
    );
    assert!(metrics_of(&vqa).contains_key("vqa_acc"));
    let log = std::fs::read_to_string(vqa.join("train.log")).unwrap();
    assert!(log.contains("init: loaded"), "{log}");

    let ve = d.join("ve");
    run(
        "finetune",
        "configs/tiny/albef_ve.yaml",
        &[&root, &init],
        &ve,
    );
    assert!(metrics_of(&ve).contains_key("acc"));

    // Evaluate the fine-tuned VQA run's checkpoint on the test-free val split, strictly.
    let ev = d.join("vqa-eval");
    let out = ok(&[
        "eval",
        "--config",
        "configs/tiny/albef_vqa.yaml",
        "--set",
        &root,
        "--set",
        &format!("model.init={}", vqa.display()),
        "--set",
        "model.init_mode=strict",
        "--out",
        ev.to_str().unwrap(),
    ]);
    assert!(out.contains("vqa_acc"), "{out}");
    let a = metrics_of(&ev);
    let b = metrics_of(&vqa);
    assert_eq!(
        a["vqa_acc"], b["vqa_acc"],
        "eval of the final checkpoint = final eval"
    );
}

#[test]
fn text_assignment_pretrains_from_albef_and_nlvr2_starts_from_it() {
    let d = tmp("ta");
    let data = shapes(&d);
    let root = format!("data.root={}", data.display());
    let pt = d.join("pretrain");
    run(
        "pretrain",
        "configs/tiny/albef_pretrain.yaml",
        &[&root],
        &pt,
    );
    let ta = d.join("ta");
    ok(&[
        "pretrain",
        "--config",
        "configs/tiny/albef_pretrain_nlvr.yaml",
        "--set",
        &root,
        "--set",
        &format!("model.init={}", pt.display()),
        "--out",
        ta.to_str().unwrap(),
    ]);
    let losses = train_losses(&ta);
    assert_eq!(losses.len(), 4, "{losses:?}");
    assert!(
        losses.iter().all(|(_, l)| l.contains("\"ta\"")),
        "{losses:?}"
    );
    let log = std::fs::read_to_string(ta.join("train.log")).unwrap();
    assert!(log.contains("init: loaded"), "{log}");
    assert!(ta.join("checkpoints/latest").is_file());

    let nl = d.join("nlvr2");
    ok(&[
        "finetune",
        "--config",
        "configs/tiny/albef_nlvr2.yaml",
        "--set",
        &root,
        "--set",
        &format!("model.init={}", ta.display()),
        "--out",
        nl.to_str().unwrap(),
    ]);
    assert!(metrics_of(&nl).contains_key("acc"));
    let log = std::fs::read_to_string(nl.join("train.log")).unwrap();
    // Only the fresh classifier head is missing; the TA head and projections are left out.
    assert!(
        log.contains("init: loaded") && log.contains("unexpected 0 (ignored)"),
        "{log}"
    );

    // Text assignment has no evaluation, and `vlp finetune` does not run it.
    let err = run_fail(
        "pretrain",
        "configs/tiny/albef_pretrain_nlvr.yaml",
        &[&root, "data.val_file=pretrain.json"],
        &d.join("bad"),
    );
    assert!(
        err.contains("data.val_file") && err.contains("pretrain_nlvr"),
        "{err}"
    );
    let err = run_fail(
        "finetune",
        "configs/tiny/albef_pretrain_nlvr.yaml",
        &[&root],
        &d.join("bad2"),
    );
    assert!(err.contains("vlp pretrain"), "{err}");
}

#[test]
fn kill_and_resume_reproduces_the_uninterrupted_run() {
    let d = tmp("resume");
    let data = shapes(&d);
    let root = format!("data.root={}", data.display());
    let full = d.join("full");
    run(
        "pretrain",
        "configs/tiny/albef_pretrain.yaml",
        &[&root],
        &full,
    );
    let part = d.join("part");
    run(
        "pretrain",
        "configs/tiny/albef_pretrain.yaml",
        &[&root, "train.max_steps=3"],
        &part,
    );
    assert_eq!(train_losses(&part).len(), 3);
    ok(&[
        "pretrain",
        "--resume",
        part.to_str().unwrap(),
        "--set",
        "train.max_steps=6",
    ]);
    let (a, b) = (train_losses(&full), train_losses(&part));
    assert_eq!(a.len(), 6);
    assert_eq!(a, b, "resumed run differs from the uninterrupted one");
}

#[test]
fn bad_configs_fail_with_one_line_naming_the_field_and_file() {
    let d = tmp("bad");
    let base = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny/albef_pretrain.yaml"),
    )
    .unwrap();
    let data = d.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let base = base.replace("root: data/shapes", &format!("root: {}", data.display()));
    let cases = [
        (
            "unknown.yaml",
            base.replace("preset: tiny", "preset: tiny, variantt: x"),
            "model.variantt",
        ),
        (
            "type.yaml",
            base.replace("batch_size: 8", "batch_size: eight"),
            "train.batch_size",
        ),
        ("missing.yaml", base.clone(), "data.train_file"),
    ];
    for (name, text, field) in cases {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        let err = fail(&["pretrain", "--config", p.to_str().unwrap()]);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(field), "{name}: {err}");
        assert!(err.contains(name), "{name}: {err}");
    }
    let err = fail(&["pretrain", "--config", "configs/tiny/nope.yaml"]);
    assert!(
        err.contains("nope.yaml") && err.contains("not found"),
        "{err}"
    );
    let err = fail(&[
        "pretrain",
        "--config",
        "configs/tiny/albef_pretrain.yaml",
        "--set",
        "train.max_stepz=3",
    ]);
    assert!(err.contains("max_stepz"), "{err}");
}

#[test]
fn info_lists_variants_presets_and_checkpoints() {
    let out = ok(&["info", "albef"]);
    for w in [
        "pretrain",
        "retrieval",
        "vqa",
        "nlvr2",
        "ve",
        "small",
        "tiny",
        "ALBEF_4M.pth",
    ] {
        assert!(out.contains(w), "{w} missing:\n{out}");
    }
    let err = fail(&["info", "nosuchmodel"]);
    assert!(err.contains("unknown model"), "{err}");
}

#[test]
fn ablate_runs_each_mix_and_is_resumable() {
    let d = tmp("ablate");
    let data = shapes(&d);
    let root = format!("data.root={}", data.display());
    let out = d.join("abl");
    let args = [
        "ablate",
        "--config",
        "configs/tiny/albef_pretrain.yaml",
        "--mixes",
        "itc+itm+mlm,itc",
        "--set",
        &root,
        "--set",
        "train.max_steps=2",
        "--out",
        out.to_str().unwrap(),
    ];
    let table = ok(&args);
    assert!(
        table.contains("| itc |") && table.contains("pretrain/r_mean"),
        "{table}"
    );
    for f in ["ablation.md", "ablation.csv", "ablation.png"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let csv = std::fs::read_to_string(out.join("ablation.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    let line = std::fs::read_to_string(out.join("itc/pretrain/metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    let terms: Vec<&String> = first["terms"].as_object().unwrap().keys().collect();
    assert_eq!(terms, ["itc"], "only the mix's objectives are trained");
    let o = vlp(&args);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("done, skipped").count(), 2, "{err}");
}

#[test]
fn word_swapped_itm_negatives_train_as_their_own_term() {
    let d = tmp("swap");
    let data = shapes(&d);
    let root = format!("data.root={}", data.display());
    let groups = "+model.itm_word_swap=[[circle, square, triangle], [red, green, blue]]";
    let pt = d.join("pretrain");
    run(
        "pretrain",
        "configs/tiny/albef_pretrain.yaml",
        &[&root, groups, "+train.objectives.itm_swap=0.5"],
        &pt,
    );
    let losses = train_losses(&pt);
    assert_eq!(losses.len(), 6);
    for (step, terms) in &losses {
        let v: serde_json::Value = serde_json::from_str(terms.split_once(' ').unwrap().1).unwrap();
        let swap = v["itm_swap"].as_f64().unwrap_or(f64::NAN);
        // The ranking of an untrained model: near ln 2 (captions and their swaps scored alike),
        // never 0 (the tiny Shapes captions all name a shape or a colour).
        assert!((swap - 2f64.ln()).abs() < 0.2, "step {step}: {terms}");
    }

    // Classes without an objective weight, a word that is not one token of the vocabulary, and
    // a variant without ITM pairs: errors naming the field and what is wrong.
    let unknown = [
        root.as_str(),
        "+model.itm_word_swap=[[circle, zzzqx]]",
        "+train.objectives.itm_swap=1",
    ];
    let cases: [(&str, &str, &[&str], [&str; 2]); 3] = [
        (
            "pretrain",
            "configs/tiny/albef_pretrain.yaml",
            &[&root, groups],
            ["model.itm_word_swap", "no `itm_swap` weight"],
        ),
        (
            "pretrain",
            "configs/tiny/albef_pretrain.yaml",
            &unknown,
            ["model.itm_word_swap[0]", "zzzqx"],
        ),
        (
            "finetune",
            "configs/tiny/albef_vqa.yaml",
            &[&root, groups],
            ["model.itm_word_swap", "variant `vqa"],
        ),
    ];
    for (i, (cmd, config, sets, needles)) in cases.into_iter().enumerate() {
        let err = run_fail(cmd, config, sets, &d.join(format!("bad-{i}")));
        for n in needles {
            assert!(err.contains(n), "case {i}: {n:?} not in {err}");
        }
    }
}

/// The last `"type": "train"` record of a run's `metrics.jsonl`.
fn last_train_record(out: &Path) -> serde_json::Value {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .rfind(|v| v["type"] == "train")
        .unwrap()
}

#[test]
fn nlvr2_trains_on_grouped_image_pairs() {
    let d = tmp("nlvr2-grouped");
    let data = shapes_with(&d, &["--nlvr2-train-per-pair", "4"]);
    let root = format!("data.root={}", data.display());
    let out = d.join("nl");
    run(
        "finetune",
        "configs/tiny/albef_nlvr2.yaml",
        &[&root, "+data.sentences_per_pair=4"],
        &out,
    );
    assert!(metrics_of(&out).contains_key("acc"));
    // Every step: 8 pairs, each with its 4 statements (the `samples` count is of sentences).
    let last = last_train_record(&out);
    assert_eq!(last["step"], 3, "{last}");
    assert_eq!(last["samples"], 3 * 8 * 4, "{last}");
    let err = run_fail(
        "finetune",
        "configs/tiny/albef_nlvr2.yaml",
        &[&root, "+data.sentences_per_pair=0"],
        &d.join("bad"),
    );
    assert!(err.contains("data.sentences_per_pair"), "{err}");
    // Only NLVR2 has sentences to group by pair.
    let err = run_fail(
        "pretrain",
        "configs/tiny/albef_pretrain.yaml",
        &[&root, "+data.sentences_per_pair=2"],
        &d.join("bad2"),
    );
    assert!(
        err.contains("data.sentences_per_pair") && err.contains("pretrain"),
        "{err}"
    );
}

#[test]
fn ve_trains_on_grouped_images() {
    let d = tmp("ve-grouped");
    let data = shapes(&d);
    let root = format!("data.root={}", data.display());
    let out = d.join("ve");
    run(
        "finetune",
        "configs/tiny/albef_ve.yaml",
        &[&root, "+data.hypotheses_per_image=3"],
        &out,
    );
    assert!(metrics_of(&out).contains_key("acc"));
    // Every step: 8 images, each with its 3 hypotheses (Shapes writes one of each label).
    let last = last_train_record(&out);
    assert_eq!(last["step"], 3, "{last}");
    assert_eq!(last["samples"], 3 * 8 * 3, "{last}");
    let err = run_fail(
        "finetune",
        "configs/tiny/albef_ve.yaml",
        &[&root, "+data.hypotheses_per_image=0"],
        &d.join("bad"),
    );
    assert!(err.contains("data.hypotheses_per_image"), "{err}");
    // Only SNLI-VE has hypotheses to group by image.
    let err = run_fail(
        "finetune",
        "configs/tiny/albef_nlvr2.yaml",
        &[&root, "+data.hypotheses_per_image=3"],
        &d.join("bad2"),
    );
    assert!(
        err.contains("data.hypotheses_per_image") && err.contains("nlvr2"),
        "{err}"
    );
}
