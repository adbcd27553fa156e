//! The experiment config: every shipped config parses, ALBEF presets and inline model-config
//! overrides build valid models, errors name the field, file and line.
use std::path::{Path, PathBuf};
use vlp_core::layers::vit::VitInit;
use vlp_tasks::pipeline::albef::{albef_config, albef_preset, AlbefModel};
use vlp_tasks::pipeline::{ExperimentConfig, Preset};

fn configs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut out = Vec::new();
    for sub in ["albef", "blip", "tiny"] {
        for e in std::fs::read_dir(root.join(sub)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_shipped_config_parses_and_albef_configs_resolve() {
    let all = configs();
    assert!(all.len() >= 16, "{all:?}");
    for p in all {
        // Parse without the file checks (the data is not here).
        let mut c: ExperimentConfig =
            vlp_core::config::load_config(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        c.source = p.clone();
        c.train
            .validate()
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        if c.model.name == "albef" {
            let m = albef_config(&c).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            m.validate().unwrap();
        } else {
            assert_eq!(c.model.name, "blip", "{}", p.display());
        }
    }
}

#[test]
fn presets_build_and_inline_overrides_merge() {
    for p in [Preset::Small, Preset::Tiny] {
        let c = albef_preset(p);
        c.validate().unwrap();
        for v in ["pretrain", "vqa", "ve"] {
            AlbefModel::build(v, &c, tch::Device::Cpu).unwrap();
        }
    }
    let text = "model: {name: albef, variant: pretrain, preset: tiny, config: {queue_size: 32, bert: {num_attention_heads: 1}}}\ndata: {task: pretrain}\ntrain: {max_steps: 1}\n";
    let c = ExperimentConfig::from_yaml(text).unwrap();
    let m = albef_config(&c).unwrap();
    assert_eq!((m.queue_size, m.bert.num_attention_heads), (32, 1));
    assert_eq!(m.bert.hidden_size, 64, "the rest of the preset is kept");
    let bad = text.replace("queue_size: 32", "queue_sise: 32");
    let c = ExperimentConfig::from_yaml(&bad).unwrap();
    let e = albef_config(&c).unwrap_err().to_string();
    assert!(
        e.contains("model.config") && e.contains("queue_sise"),
        "{e}"
    );
}

#[test]
fn the_vit_initialisation_is_a_model_config_field() {
    let text = "model: {name: albef, variant: pretrain, preset: tiny, config: {vision: {init: mimetic}}}\ndata: {task: pretrain}\ntrain: {max_steps: 1}\n";
    let c = ExperimentConfig::from_yaml(text).unwrap();
    let m = albef_config(&c).unwrap();
    let v = m.vision.as_ref().unwrap();
    assert_eq!(v.init, VitInit::Mimetic);
    assert_eq!(v.embed_dim, 64, "the rest of the preset's ViT is kept");
    let plain = text.replace(", config: {vision: {init: mimetic}}", "");
    let m = albef_config(&ExperimentConfig::from_yaml(&plain).unwrap()).unwrap();
    assert_eq!(m.vision.unwrap().init, VitInit::Official);
    let bad = text.replace("init: mimetic", "init: mimetc");
    let e = albef_config(&ExperimentConfig::from_yaml(&bad).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("mimetc"), "{e}");
    // The initial widths: `vision.init_std` and BERT's `initializer_range`.
    let wide = text.replace(
        "{vision: {init: mimetic}}",
        "{vision: {init_std: 0.1}, bert: {initializer_range: 0.12}}",
    );
    let m = albef_config(&ExperimentConfig::from_yaml(&wide).unwrap()).unwrap();
    assert_eq!(m.vision.as_ref().unwrap().init_std, 0.1);
    assert_eq!(m.bert.initializer_range, 0.12);
    for (bad, field) in [
        ("{vision: {init_std: 0.0}}", "vision.init_std"),
        ("{bert: {initializer_range: -1.0}}", "initializer_range"),
    ] {
        let t = text.replace("{vision: {init: mimetic}}", bad);
        let e = albef_config(&ExperimentConfig::from_yaml(&t).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{e}");
    }
}

#[test]
fn config_errors_name_field_file_and_line() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pipeline-config");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("exp.yaml");
    std::fs::write(
        &p,
        "model: {name: albef, variant: pretrain}\ndata:\n  task: pretrain\n  image_sise: 3\ntrain: {max_steps: 1}\n",
    )
    .unwrap();
    let e = ExperimentConfig::load(&p, &[]).unwrap_err().to_string();
    assert!(
        e.contains("data.image_sise") && e.contains("exp.yaml") && e.contains("line 4"),
        "{e}"
    );
    std::fs::write(
        &p,
        "model: {name: albef, variant: pretrain}\ndata: {task: pretrain, train_file: [a.json]}\ntrain: {max_steps: 1}\n",
    )
    .unwrap();
    let e = ExperimentConfig::load(&p, &[]).unwrap_err().to_string();
    assert!(
        e.contains("data.train_file[0]") && e.contains("a.json"),
        "{e}"
    );
    std::fs::write(
        &p,
        "model: {name: albef, variant: pretrain}\ndata: {task: captions}\ntrain: {max_steps: 1}\n",
    )
    .unwrap();
    let e = ExperimentConfig::load(&p, &[]).unwrap_err().to_string();
    assert!(e.contains("data.task"), "{e}");
    let e = ExperimentConfig::load(&p, &["train.max_steps=0"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("data.task") || e.contains("max_steps"), "{e}");
}
