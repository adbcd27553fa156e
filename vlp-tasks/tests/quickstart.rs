//! `vlp quickstart` end to end at the test size (`Plan::test`: the `tiny` ALBEF preset on 32 px
//! Shapes, a few dozen steps): every stage runs, the metrics are above chance where a few steps
//! suffice, and the run directory holds the documented files with the documented schema.
use std::path::Path;

use tch::Device;
use vlp_tasks::quickstart::report::{Summary, TASK_KEYS};
use vlp_tasks::quickstart::runner::TaskKind;
use vlp_tasks::quickstart::{run_plan, Plan};

fn check_schema(dir: &Path, s: &Summary) {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert!(v["elapsed_s"].as_f64().unwrap() > 0.0);
    assert_eq!(v["version"], 1);
    for k in TASK_KEYS {
        let t = &v["tasks"][k];
        assert!(t.is_object(), "summary.json has no task `{k}`: {v}");
        assert!(t["metric"].is_string());
        assert!(t["chance"].as_f64().is_some());
        // The text-only prior: for every task with a text label, none for retrieval.
        if k == "retrieval" {
            assert!(t["text_prior"].is_null(), "{k}: {t}");
        } else {
            let p = t["text_prior"].as_f64().unwrap_or(f64::NAN);
            assert!((0.0..=100.0).contains(&p), "{k}: text prior {t}");
        }
        assert!(t["pretrained"].as_f64().is_some(), "{k}: {t}");
        if k == "easy_vqa" {
            for ty in ["acc_yes/no", "acc_color", "acc_shape"] {
                assert!(t["pretrained_details"][ty].as_f64().is_some(), "{ty}: {t}");
            }
        } else {
            assert!(t["from_scratch"].as_f64().is_some(), "{k}: {t}");
        }
        // Shapes VQA / NLVR2 / SNLI-VE: an accuracy per question / statement family, each a
        // percentage, the families those of the generator; easy-VQA per template family.
        let families: &[&str] = match k {
            "vqa" => &vlp_tasks::shapes::vqa::FAMILIES,
            "nlvr2" => &vlp_tasks::shapes::nlvr2::FAMILIES,
            "ve" => &vlp_tasks::shapes::ve::FAMILIES,
            "easy_vqa" => &vlp_tasks::data::easy_vqa::FAMILIES,
            _ => &[],
        };
        for arm in ["from_scratch_details", "pretrained_details"] {
            let details = t[arm].as_object().unwrap();
            if details.is_empty() {
                // easy-VQA's from-scratch run is off in the test profile.
                assert_eq!((k, arm), ("easy_vqa", "from_scratch_details"));
                continue;
            }
            let groups: Vec<&String> = details.keys().filter(|g| g.starts_with("group_")).collect();
            assert_eq!(groups.is_empty(), families.is_empty(), "{k} {arm}: {t}");
            for g in groups {
                assert!(families.contains(&&g["group_".len()..]), "{k}: {g}");
                let v = t[arm][g].as_f64().unwrap();
                assert!((0.0..=100.0).contains(&v), "{k} {g}: {v}");
            }
        }
    }
    assert!(v["pretrain"]["steps"].as_u64().unwrap() > 0);
    let back: Summary = serde_json::from_value(v).unwrap();
    assert_eq!(back.tasks.len(), s.tasks.len());
    assert_eq!(back.pretrained_wins, s.pretrained_wins);
    for f in [
        "metrics.json",
        "report.md",
        "plots/metrics.png",
        "pretrain/plots/loss.png",
        "pretrain/metrics.jsonl",
        "vqa-pretrained/plots/loss.png",
        "vqa-scratch/eval.json",
        "easy_vqa-pretrained/eval.json",
    ] {
        assert!(dir.join(f).is_file(), "missing {f}");
    }
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(
        md.contains("| Shapes VQA |")
            && md.contains("| easy-VQA |")
            && md.contains("text only")
            && md.contains("Shapes NLVR2 per question / statement family"),
        "{md}"
    );
}

#[test]
fn quickstart_runs_end_to_end_above_chance() {
    // One intra-op thread: on a loaded 2-core machine torch's thread barriers stall badly.
    tch::set_num_threads(1);
    let tmp = std::env::temp_dir().join(format!("vlp-quickstart-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    // Head and pre-trained-ViT learning-rate multipliers other than 1, so that their parameter
    // patterns meet the real models (the optimizer rejects a pattern that matches no
    // parameter), and easy-VQA's contrastive shape and colour questions, so that their training
    // set is built from the real data.
    let plan = Plan::test(0)
        .with_overrides(&[
            "head_lr_mult=3".into(),
            "easy_vqa_shape_contrast=true".into(),
            "easy_vqa_colour_contrast=true".into(),
            "pretrained_vit_lr_mult=2".into(),
            "pretrain_word_swap=[shape, colour]".into(),
            "easy_vqa_questions_per_image=2".into(),
            "shapes.nlvr2_train_per_pair=2".into(),
            "nlvr2_sentences_per_pair=2".into(),
            "+vqa.warmup_frac=0.15".into(),
        ])
        .unwrap();
    let out = tmp.join("run");
    let s = run_plan(&plan, &out, &tmp.join("shapes"), None, Device::Cpu).unwrap();
    check_schema(&out, &s);
    // The fine-tuning runs that add a head train it at the multiplied rate; retrieval adds none.
    for (run, head) in [
        ("vqa-scratch", Some("vqa_head")),
        ("vqa-pretrained", Some("vqa_head")),
        ("nlvr2-pretrained", Some("cls_head")),
        ("ve-scratch", Some("cls_head")),
        ("easy_vqa-pretrained", Some("vqa_head")),
        ("retrieval-pretrained", None),
    ] {
        let cfg: serde_yaml::Value = serde_yaml::from_str(
            &std::fs::read_to_string(out.join(run).join("config.yaml")).unwrap(),
        )
        .unwrap();
        let mult = &cfg["optimizer"]["lr_mult"];
        // A stage's warm-up: set for VQA (`+vqa.warmup_frac=0.15`: 3 of 20 steps), 5% of the
        // steps (at least 1) elsewhere.
        let stage = match run.split('-').next().unwrap() {
            "vqa" => plan.vqa,
            "nlvr2" => plan.nlvr2,
            "ve" => plan.ve,
            "easy_vqa" => plan.easy_vqa.unwrap(),
            _ => plan.retrieval,
        };
        let warmup = match stage.warmup_frac {
            Some(f) => (stage.steps as f64 * f).round() as u64,
            None => stage.steps / 20,
        }
        .max(1);
        assert_eq!(plan.vqa.warmup_frac, Some(0.15));
        assert_eq!(plan.vqa.steps, 20);
        assert_eq!(cfg["schedule"]["warmup"].as_u64(), Some(warmup), "{run}");
        let vit = run.ends_with("-pretrained").then_some(2.0);
        assert_eq!(mult["visual_encoder"].as_f64(), vit, "{run}: {mult:?}");
        match head {
            Some(h) => assert_eq!(mult[h].as_f64(), Some(3.0), "{run}: {mult:?}"),
            None => assert_eq!(
                mult.as_mapping().map_or(0, |m| m.len()),
                usize::from(vit.is_some()),
                "{run}: {mult:?}"
            ),
        }
    }
    let table = vlp_tasks::quickstart::report::table(&s);
    println!("{table}");
    for (k, t) in s.ordered() {
        for v in [t.from_scratch, t.pretrained].into_iter().flatten() {
            assert!(v.is_finite() && (0.0..=100.0).contains(&v), "{k}: {v}");
        }
        assert!(
            t.chance > 0.0 && t.chance < 100.0,
            "{k}: chance {}",
            t.chance
        );
    }
    // Pre-training learns: the MLM loss ends below its chance level (ln of the vocabulary size)
    // and below where it started.
    let vocab = std::fs::read_to_string(out.join("vocab.txt"))
        .unwrap()
        .lines()
        .count();
    let (first, last) = (&s.pretrain.first_terms, &s.pretrain.last_terms);
    assert!(
        last["mlm"] < first["mlm"] && last["mlm"] < (vocab as f64).ln(),
        "{first:?} -> {last:?}"
    );
    // easy-VQA drew at most 2 questions per image and step (its images have ~20 with both
    // contrasts).
    let stage = plan.easy_vqa.as_ref().unwrap();
    let rec = std::fs::read_to_string(out.join("easy_vqa-pretrained/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .rfind(|v| v["type"] == "train")
        .unwrap();
    let samples = rec["samples"].as_u64().unwrap() as usize;
    let steps = rec["step"].as_u64().unwrap() as usize;
    assert!(
        samples <= steps * stage.batch_size * 2 && samples > steps * stage.batch_size,
        "{samples} questions in {steps} steps of {} images",
        stage.batch_size
    );
    // NLVR2 trained on pairs with both of their (true / false) statements: two sentences per
    // pair and step, in both arms.
    for run in ["nlvr2-scratch", "nlvr2-pretrained"] {
        let rec = std::fs::read_to_string(out.join(run).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .rfind(|v| v["type"] == "train")
            .unwrap();
        let (samples, steps) = (
            rec["samples"].as_u64().unwrap(),
            rec["step"].as_u64().unwrap(),
        );
        assert_eq!(
            samples as usize,
            steps as usize * plan.nlvr2.batch_size * 2,
            "{run}: {samples} sentences in {steps} steps"
        );
    }
    // The word-swapped ITM negatives trained as their own term.
    for terms in [first, last] {
        let swap = terms.get("itm_swap").copied().unwrap_or(f64::NAN);
        assert!(swap > 0.0 && swap < 5.0, "{terms:?}");
    }
    // The grounding probe ran on the pre-trained weights: both probes over every easy-VQA test
    // image whose colour and shape are known, accuracies in range, chance from the answer list.
    let g = s.pretrain.probe.as_ref().expect("the grounding probe ran");
    assert!(g.images > 500, "{g:?}");
    for v in [g.shape_itm, g.shape_itc, g.colour_itm, g.colour_itc] {
        assert!((0.0..=100.0).contains(&v), "{g:?}");
    }
    assert!((g.shape_chance - 100.0 / 3.0).abs() < 1e-9, "{g:?}");
    assert!((g.colour_chance - 100.0 / 8.0).abs() < 1e-9, "{g:?}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("Grounding probe"), "{report}");
    // SNLI-VE gets the most steps at this size: its neutral hypotheses are recognisable by their
    // words, so a few dozen steps beat the majority class.
    let ve = &s.tasks["ve"];
    let best = ve.from_scratch.unwrap().max(ve.pretrained.unwrap());
    assert!(best > ve.chance + 3.0, "{table}");
    // NLVR2's text assignment ran between pre-training and the pre-trained NLVR2 run, and that
    // run started from its checkpoint.
    let ta = out.join(vlp_tasks::quickstart::runner::NLVR2_TA_RUN);
    let ta_log = std::fs::read_to_string(ta.join("metrics.jsonl")).unwrap();
    assert!(ta_log.contains("\"ta\""), "{ta_log}");
    assert_eq!(
        s.tasks["nlvr2"].pretrained_from.as_deref(),
        Some(ta.display().to_string().as_str())
    );
    assert_eq!(
        s.tasks["ve"].pretrained_from.as_deref(),
        Some(out.join("pretrain").display().to_string().as_str())
    );
    // Pre-training reads the region descriptions besides the full captions.
    fn ctx_of<'a>(p: &'a Plan, tmp: &Path, dir: &str) -> vlp_tasks::quickstart::runner::Ctx<'a> {
        std::fs::create_dir_all(tmp.join(dir)).unwrap();
        let shapes = tmp.join("shapes");
        vlp_tasks::quickstart::runner::Ctx::new(p, &tmp.join(dir), &shapes, None, Device::Cpu)
            .unwrap()
    }
    let ctx = ctx_of(&plan, &tmp, "ctx");
    let exp = ctx.experiment(None, &plan.pretrain, "p", None).unwrap();
    // The word classes of the plan, as words of the run's vocabulary, in the pre-training only.
    let groups = &exp.model.itm_word_swap;
    assert!(
        groups
            .iter()
            .any(|g| g.contains(&"circle".to_string()) && g.contains(&"triangle".to_string()))
            && groups.iter().any(|g| g.contains(&"circles".to_string()))
            && groups
                .iter()
                .any(|g| g.contains(&"red".to_string()) && g.len() >= 2),
        "{groups:?}"
    );
    assert_eq!(exp.train.objectives.get("itm_swap"), Some(&1.0));
    let vqa = ctx
        .experiment(Some(TaskKind::Vqa), &plan.vqa, "v", None)
        .unwrap();
    assert!(vqa.model.itm_word_swap.is_empty());
    let files = exp.split_files("train");
    assert!(
        files.iter().any(|f| f.ends_with("pretrain.json"))
            && files
                .iter()
                .any(|f| f.ends_with("pretrain_regions.json") && f.is_file()),
        "{files:?}"
    );
    // The initialisation fields of the plan reach every model config it builds.
    let p2 = plan
        .with_overrides(&[
            "text_init_std=0.1".into(),
            "vit_init=mimetic".into(),
            "vit_init_std=0.05".into(),
            "+model.vision.mlp_ratio=2.0".into(),
        ])
        .unwrap();
    let ctx2 = ctx_of(&p2, &tmp, "ctx2");
    for exp in [
        ctx.experiment(None, &plan.pretrain, "p", None).unwrap(),
        ctx2.experiment(None, &p2.pretrain, "p", None).unwrap(),
    ] {
        let m = vlp_tasks::pipeline::albef::albef_config(&exp).unwrap();
        let vision = m.vision.unwrap();
        let mimetic = vision.init == vlp_core::layers::vit::VitInit::Mimetic;
        let (text, vit) = if mimetic { (0.1, 0.05) } else { (0.02, 0.02) };
        assert_eq!(m.bert.initializer_range, text);
        assert_eq!(vision.init_std, vit);
        // The plan's `model` fields reach the model config too.
        assert_eq!(vision.mlp_ratio, if mimetic { 2.0 } else { 4.0 });
    }
    // A second run reuses the generated Shapes data.
    assert!(!vlp_tasks::quickstart::ensure_shapes(&plan.shapes, &tmp.join("shapes")).unwrap());
    let _ = std::fs::remove_dir_all(&tmp);
}
