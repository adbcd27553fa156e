//! Checkpoint I/O against files written by PyTorch (`scripts/fixtures/make_checkpoint_cases.py`)
//! and the official ALBEF fixtures under `<repo root>/../shared/fixtures/albef` when present.
use std::path::{Path, PathBuf};

use tch::{nn::VarStore, Device, Kind, Tensor};
use vlp_core::checkpoint::{
    load_state_dict, read_state_dict, state_dict_of, write_safetensors, LoadMode, ReadOptions,
    StateDict, Wrapper,
};
use vlp_core::VlpError;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/checkpoints")
        .join(name)
}

fn opts(wrapper: Wrapper) -> ReadOptions {
    ReadOptions {
        wrapper,
        ..ReadOptions::default()
    }
}

fn read(name: &str) -> StateDict {
    read_state_dict(&data(name), &ReadOptions::default())
        .unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

/// The tensors torch read back, made contiguous, under `<case>/<key>`.
fn expected(case: &str) -> Vec<(String, Tensor)> {
    let all = read("expected.safetensors");
    let prefix = format!("{case}/");
    let v: Vec<(String, Tensor)> = all
        .into_iter()
        .filter_map(|(k, t)| k.strip_prefix(&prefix).map(|k| (k.to_string(), t)))
        .collect();
    assert!(!v.is_empty(), "no expected tensors for case {case}");
    v
}

fn assert_same(got: &Tensor, want: &Tensor, what: &str) {
    assert_eq!(got.size(), want.size(), "{what}: shape");
    assert_eq!(got.kind(), want.kind(), "{what}: dtype");
    assert!(got.equal(want), "{what}: values differ:\n{got}\nvs\n{want}");
}

/// Every expected key is there with the same dtype and values, and nothing else is.
fn assert_matches_case(sd: &StateDict, case: &str, what: &str) {
    let want = expected(case);
    let mut keys: Vec<&String> = sd.keys().collect();
    keys.sort();
    let mut want_keys: Vec<&String> = want.iter().map(|(k, _)| k).collect();
    want_keys.sort();
    assert_eq!(keys, want_keys, "{what}: keys");
    for (k, w) in &want {
        assert_same(sd.get(k).unwrap(), w, &format!("{what}: {k}"));
    }
}

fn ptr(t: &Tensor) -> usize {
    t.data_ptr() as usize
}

#[test]
fn plain_state_dict() {
    let sd = read("plain.pth");
    assert_matches_case(&sd, "plain", "plain.pth");
    assert_eq!(
        sd.get("encoder.layer.0.weight").unwrap().kind(),
        Kind::Float
    );
    assert_eq!(sd.get("position_ids").unwrap().kind(), Kind::Int64);
    let flat = read_state_dict(&data("plain.pth"), &opts(Wrapper::None)).unwrap();
    assert_matches_case(&flat, "plain", "plain.pth, Wrapper::None");
}

#[test]
fn shared_storages_and_views() {
    for file in ["shared.pth", "protocol4.pth", "legacy.pth"] {
        let sd = read(file);
        assert_matches_case(&sd, "shared", file);
        let w = sd.get("embeddings.word_embeddings.weight").unwrap();
        let tied = sd.get("cls.predictions.decoder.weight").unwrap();
        assert_eq!(ptr(w), ptr(tied), "{file}: tied weights share memory");
        // w is [6, 4] fp32: w[2:5] starts 8 elements in, w[1] 4 elements in.
        assert_eq!(
            ptr(sd.get("slice").unwrap()),
            ptr(w) + 8 * 4,
            "{file}: slice offset"
        );
        assert_eq!(
            ptr(sd.get("row").unwrap()),
            ptr(w) + 4 * 4,
            "{file}: row offset"
        );
        let tr = sd.get("transposed").unwrap();
        assert!(!tr.is_contiguous(), "{file}: transposed view stays a view");
        assert_eq!(tr.stride(), vec![1, 4]);
        assert_eq!(sd.get("strided").unwrap().stride(), vec![4, 2]);
        assert_eq!(ptr(sd.get("reshaped").unwrap()), ptr(w));
        // Writing through one entry is seen through every view of the storage.
        let _ = w.shallow_clone().fill_(7.0);
        for k in [
            "cls.predictions.decoder.weight",
            "slice",
            "row",
            "transposed",
            "strided",
        ] {
            let t = sd.get(k).unwrap();
            assert!(
                t.eq(7.0).all().int64_value(&[]) == 1,
                "{file}: {k} shares the storage"
            );
        }
    }
}

#[test]
fn dtypes_are_kept() {
    let sd = read("dtypes.pth");
    let want = expected("dtypes");
    assert_eq!(sd.len(), want.len());
    for (k, w) in &want {
        let got = sd.get(k).unwrap_or_else(|| panic!("missing {k}"));
        if k == "f8" {
            assert_eq!(got.kind(), Kind::Float8e4m3fn);
            assert_same(&got.to_kind(Kind::Float), w, k);
        } else {
            assert_same(got, w, k);
        }
    }
    let kinds = [
        ("f16", Kind::Half),
        ("bf16", Kind::BFloat16),
        ("f64", Kind::Double),
        ("i64", Kind::Int64),
        ("i32", Kind::Int),
        ("i16", Kind::Int16),
        ("i8", Kind::Int8),
        ("u8", Kind::Uint8),
        ("bool", Kind::Bool),
        ("param", Kind::Float),
    ];
    for (k, kind) in kinds {
        assert_eq!(sd.get(k).unwrap().kind(), kind, "{k}");
    }
    assert_eq!(sd.get("scalar").unwrap().size(), Vec::<i64>::new());
    assert_eq!(sd.get("empty").unwrap().size(), vec![0, 3]);
    assert_eq!(sd.get("i64").unwrap().int64_value(&[1, 0]), 1i64 << 40);
}

#[test]
fn cast_converts_floating_tensors_only() {
    let o = ReadOptions {
        cast: Some(Kind::Float),
        ..ReadOptions::default()
    };
    let sd = read_state_dict(&data("dtypes.pth"), &o).unwrap();
    for (k, w) in expected("dtypes") {
        let got = sd.get(&k).unwrap();
        if w.is_floating_point() {
            assert_eq!(got.kind(), Kind::Float, "{k}");
            assert!(got.equal(&w.to_kind(Kind::Float)), "{k}: values after cast");
        } else {
            assert_eq!(got.kind(), w.kind(), "{k} keeps its dtype");
        }
    }
    assert_eq!(sd.get("f8").unwrap().kind(), Kind::Float);

    let o = ReadOptions {
        cast: Some(Kind::Half),
        ..ReadOptions::default()
    };
    for file in ["shared.pth", "plain.safetensors"] {
        let sd = read_state_dict(&data(file), &o).unwrap();
        for (k, t) in sd.iter() {
            let want = if k == "position_ids" {
                Kind::Int64
            } else {
                Kind::Half
            };
            assert_eq!(t.kind(), want, "{file}: {k}");
        }
    }
    // Cast tied weights still share memory (the storage is cast once).
    let sd = read_state_dict(&data("shared.pth"), &o).unwrap();
    assert_eq!(
        ptr(sd.get("embeddings.word_embeddings.weight").unwrap()),
        ptr(sd.get("cls.predictions.decoder.weight").unwrap())
    );
}

#[test]
fn wrappers() {
    // {"model": sd, "args": Namespace, "epoch": 3, "optimizer": {...}}: extras are skipped.
    for w in [Wrapper::Auto, Wrapper::Key("model".into())] {
        let sd = read_state_dict(&data("wrapped_model.pth"), &opts(w.clone())).unwrap();
        assert_matches_case(&sd, "plain", &format!("wrapped_model.pth {w:?}"));
    }
    let sd = read("wrapped_state_dict.pth");
    assert_matches_case(&sd, "plain", "wrapped_state_dict.pth");

    let sd = read("wrapped_module.pth");
    assert!(sd.contains_key("module.encoder.layer.0.weight"));
    assert_eq!(sd.len(), 4);
    let o = ReadOptions {
        strip_module_prefix: true,
        ..ReadOptions::default()
    };
    let sd = read_state_dict(&data("wrapped_module.pth"), &o).unwrap();
    assert_matches_case(&sd, "plain", "wrapped_module.pth, stripped");

    // A key Auto does not know: falls back to the (tensor-less) top level, which is an error.
    let err = read_state_dict(&data("custom_key.pth"), &ReadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no tensors") && err.contains("`net`"), "{err}");
    let sd = read_state_dict(&data("custom_key.pth"), &opts(Wrapper::Key("net".into()))).unwrap();
    assert_matches_case(&sd, "plain", "custom_key.pth, Key(net)");

    // A demanded key that is absent: named, with the keys present.
    let err = read_state_dict(
        &data("wrapped_model.pth"),
        &opts(Wrapper::Key("state_dict".into())),
    )
    .unwrap_err();
    assert!(matches!(err, VlpError::Checkpoint { .. }));
    let msg = err.to_string();
    for needle in [
        "`state_dict`",
        "`model`",
        "`args`",
        "`epoch`",
        "wrapped_model.pth",
    ] {
        assert!(msg.contains(needle), "{needle} not in: {msg}");
    }
    // A key that is not a dict.
    let msg = read_state_dict(
        &data("wrapped_model.pth"),
        &opts(Wrapper::Key("epoch".into())),
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("`epoch`") && msg.contains("int"), "{msg}");
    // A tensor of a dtype the bindings lack, outside the state dict, does not stop reading it...
    let sd = read("unsupported_extra.pth");
    assert_matches_case(&sd, "plain", "unsupported_extra.pth");
    // ...but is an error naming the key and the dtype when it is asked for.
    let msg = read_state_dict(
        &data("unsupported_extra.pth"),
        &opts(Wrapper::Key("stats".into())),
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("`counts`") && msg.contains("uint16"), "{msg}");
    // Wrapper::None on a wrapped checkpoint: the top level holds no tensors.
    let msg = read_state_dict(&data("wrapped_model.pth"), &opts(Wrapper::None))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("no tensors") && msg.contains("`model`"),
        "{msg}"
    );
}

#[test]
fn safetensors_read_and_round_trip() {
    let sd = read("plain.safetensors");
    assert_matches_case(&sd, "plain", "plain.safetensors");

    let dir = tempdir("roundtrip");
    // Shared and non-contiguous tensors, every dtype.
    for file in ["shared.pth", "dtypes.pth"] {
        let sd = read(file);
        let out = dir.join("out.safetensors");
        write_safetensors(&sd, &out).unwrap();
        let back = read_state_dict(&out, &ReadOptions::default()).unwrap();
        assert_eq!(back.len(), sd.len());
        for (k, t) in sd.iter() {
            let b = back.get(k).unwrap();
            assert!(b.is_contiguous());
            assert_same(b, &t.contiguous(), &format!("{file} round trip: {k}"));
        }
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec!["out.safetensors".to_string()],
            "temp file left behind"
        );
    }
    // Writing into a directory that does not exist fails and leaves nothing.
    let bad = dir.join("no/such/dir/x.safetensors");
    assert!(write_safetensors(&read("plain.pth"), &bad).is_err());
    assert!(!dir.join("no").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vlp-ckpt-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn format_is_sniffed_not_taken_from_the_extension() {
    let dir = tempdir("sniff");
    let a = dir.join("weights.safetensors");
    std::fs::copy(data("plain.pth"), &a).unwrap();
    assert_matches_case(
        &read_state_dict(&a, &ReadOptions::default()).unwrap(),
        "plain",
        "zip named .safetensors",
    );
    let b = dir.join("weights.bin");
    std::fs::copy(data("plain.safetensors"), &b).unwrap();
    assert_matches_case(
        &read_state_dict(&b, &ReadOptions::default()).unwrap(),
        "plain",
        "safetensors named .bin",
    );

    let junk = dir.join("junk.pth");
    std::fs::write(&junk, b"this is not a checkpoint at all").unwrap();
    let msg = read_state_dict(&junk, &ReadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("junk.pth") && msg.contains("unrecognised"),
        "{msg}"
    );

    // A truncated zip (cut in the middle) is an error naming the file, not a panic.
    let bytes = std::fs::read(data("plain.pth")).unwrap();
    let cut = dir.join("cut.pth");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let msg = read_state_dict(&cut, &ReadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("cut.pth"), "{msg}");

    // A truncated legacy file too.
    let bytes = std::fs::read(data("legacy.pth")).unwrap();
    let cut = dir.join("cut_legacy.pth");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let msg = read_state_dict(&cut, &ReadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("cut_legacy.pth") && msg.contains("truncated"),
        "{msg}"
    );

    let missing = dir.join("absent.pth");
    assert!(matches!(
        read_state_dict(&missing, &ReadOptions::default()),
        Err(VlpError::Io { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn state_dict_helpers() {
    let mut sd = read("plain.pth");
    assert_eq!(
        sd.rename_prefix("encoder.", "text_encoder.bert.encoder."),
        2
    );
    assert!(sd.contains_key("text_encoder.bert.encoder.layer.0.bias"));
    assert!(!sd.contains_key("encoder.layer.0.bias"));
    assert_eq!(sd.rename_prefix("nothing.", "x."), 0);
    sd.retain(|k, t| k != "position_ids" && t.kind() == Kind::Float);
    assert_eq!(sd.len(), 3);
    let moved = sd.to_device(Device::Cpu);
    assert_eq!(moved.len(), 3);
    assert!(sd.remove("head.weight").is_some());
    assert!(sd.get("head.weight").is_none());
    assert!(sd
        .insert("a", Tensor::zeros([1], (Kind::Float, Device::Cpu)))
        .is_none());
    assert!(sd
        .insert("a", Tensor::ones([1], (Kind::Float, Device::Cpu)))
        .is_some());
    assert!(!sd.is_empty() && StateDict::new().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Loading into a VarStore.

/// A model whose variables are exactly the keys of plain.pth; `head` shaped as given.
fn tiny_model(head: &[i64], extra: bool) -> VarStore {
    let vs = VarStore::new(Device::Cpu);
    let root = vs.root();
    let layer = &root / "encoder" / "layer" / "0";
    let _ = layer.zeros("weight", &[4, 3]);
    let _ = layer.zeros("bias", &[4]);
    let _ = (&root / "head").zeros("weight", head);
    let _ = root.add(
        "position_ids",
        Tensor::zeros([1, 5], (Kind::Int64, Device::Cpu)),
        false,
    );
    if extra {
        let _ = (&root / "extra").zeros_no_train("weight", &[3]);
    }
    vs
}

fn var(vs: &VarStore, name: &str) -> Tensor {
    vs.variables().remove(name).unwrap()
}

fn all_zero(vs: &VarStore) -> bool {
    vs.variables().values().all(|t| {
        t.to_kind(Kind::Double)
            .abs()
            .sum(Kind::Double)
            .double_value(&[])
            == 0.0
    })
}

#[test]
fn strict_load_clean() {
    let sd = read("plain.pth");
    let mut vs = tiny_model(&[2, 2, 3], false);
    let report = load_state_dict(&mut vs, &sd, LoadMode::Strict, "plain.pth").unwrap();
    assert!(report.is_clean());
    assert_eq!(report.loaded.len(), 4);
    for (k, t) in sd.iter() {
        assert_same(&var(&vs, k), t, k);
    }
    // Still trainable after the copy.
    assert!(var(&vs, "head.weight").requires_grad());
    // state_dict_of: every variable, buffers included, sharing memory.
    let own = state_dict_of(&vs);
    assert_eq!(own.len(), 4);
    assert_eq!(
        ptr(own.get("position_ids").unwrap()),
        ptr(&var(&vs, "position_ids"))
    );
}

#[test]
fn strict_load_failures_name_the_key_and_modify_nothing() {
    let sd = read("plain.pth");

    let mut vs = tiny_model(&[2, 2, 3], true);
    let err = load_state_dict(&mut vs, &sd, LoadMode::Strict, "plain.pth").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, VlpError::Load { .. }));
    assert!(
        msg.contains("plain.pth") && msg.contains("missing") && msg.contains("extra.weight [3]"),
        "{msg}"
    );
    assert!(all_zero(&vs), "strict failure must not copy anything");

    let mut vs = tiny_model(&[2, 2, 3], false);
    let mut sd2 = read("plain.pth");
    sd2.insert("stray.bias", Tensor::zeros([7], (Kind::Float, Device::Cpu)));
    let msg = load_state_dict(&mut vs, &sd2, LoadMode::Strict, "ckpt")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("unexpected") && msg.contains("stray.bias [7]"),
        "{msg}"
    );
    assert!(all_zero(&vs));

    let mut vs = tiny_model(&[2, 3, 2], false);
    let msg = load_state_dict(&mut vs, &sd, LoadMode::Strict, "ckpt")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("head.weight model [2, 3, 2] checkpoint [2, 2, 3]"),
        "{msg}"
    );
    assert!(all_zero(&vs));
}

#[test]
fn partial_load_reports_the_same_and_copies_the_rest() {
    let mut sd = read("plain.pth");
    sd.insert("stray.bias", Tensor::zeros([7], (Kind::Float, Device::Cpu)));
    let mut vs = tiny_model(&[2, 3, 2], true);
    let strict_msg = load_state_dict(&mut vs, &sd, LoadMode::Strict, "ckpt")
        .unwrap_err()
        .to_string();
    let report = load_state_dict(&mut vs, &sd, LoadMode::Partial, "ckpt").unwrap();
    assert!(!report.is_clean());
    assert!(
        strict_msg.ends_with(&report.to_string()),
        "{strict_msg}\n---\n{report}"
    );
    assert_eq!(
        report.loaded,
        vec![
            "encoder.layer.0.bias",
            "encoder.layer.0.weight",
            "position_ids"
        ]
    );
    assert_eq!(report.missing.len(), 1);
    assert_eq!(report.missing[0].key, "extra.weight");
    assert_eq!(report.missing[0].shape, vec![3]);
    assert_eq!(report.unexpected.len(), 1);
    assert_eq!(report.unexpected[0].key, "stray.bias");
    assert_eq!(report.mismatched.len(), 1);
    assert_eq!(report.mismatched[0].key, "head.weight");
    assert_eq!(report.mismatched[0].expected, vec![2, 3, 2]);
    assert_eq!(report.mismatched[0].found, vec![2, 2, 3]);
    let text = report.to_string();
    assert!(
        text.lines()
            .last()
            .unwrap()
            .contains("3 loaded, 1 missing, 1 unexpected, 1 mis-shaped"),
        "{text}"
    );
    for k in report.loaded.iter() {
        assert_same(&var(&vs, k), sd.get(k).unwrap(), k);
    }
    assert_eq!(
        var(&vs, "head.weight")
            .abs()
            .sum(Kind::Float)
            .double_value(&[]),
        0.0
    );
}

#[test]
fn load_converts_dtype() {
    let o = ReadOptions {
        cast: Some(Kind::Half),
        ..ReadOptions::default()
    };
    let sd = read_state_dict(&data("plain.safetensors"), &o).unwrap();
    let mut vs = tiny_model(&[2, 2, 3], false);
    load_state_dict(&mut vs, &sd, LoadMode::Strict, "half").unwrap();
    let w = var(&vs, "encoder.layer.0.weight");
    assert_eq!(w.kind(), Kind::Float);
    let want = sd
        .get("encoder.layer.0.weight")
        .unwrap()
        .to_kind(Kind::Float);
    assert!(w.equal(&want));
}

// ---------------------------------------------------------------------------------------------
// Official ALBEF checkpoints (parity fixtures), when present.

fn albef_dir() -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/albef");
    d.is_dir().then_some(d)
}

#[test]
fn albef_official_checkpoints() {
    let Some(dir) = albef_dir() else {
        eprintln!("note: ../shared/fixtures/albef not found; skipping the ALBEF checkpoint test");
        return;
    };
    let mut n = 0;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path().join("checkpoint.pth"))
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    for path in entries {
        let sd = read_state_dict(&path, &opts(Wrapper::Key("model".into())))
            .unwrap_or_else(|e| panic!("{e}"));
        let auto = read_state_dict(&path, &ReadOptions::default()).unwrap();
        assert_eq!(auto.len(), sd.len(), "{}", path.display());
        let what = path.display().to_string();
        let pos = sd
            .get("visual_encoder.pos_embed")
            .unwrap_or_else(|| panic!("{what}: pos_embed"));
        assert_eq!(pos.dim(), 3, "{what}");
        assert!(
            sd.contains_key("text_encoder.bert.embeddings.word_embeddings.weight")
                || sd.contains_key("text_encoder.embeddings.word_embeddings.weight"),
            "{what}: word embeddings"
        );
        for (k, t) in sd.iter() {
            assert!(
                matches!(t.kind(), Kind::Float | Kind::Int64),
                "{what}: {k} is {:?}",
                t.kind()
            );
            if t.kind() == Kind::Float && t.numel() > 0 {
                assert!(
                    t.isfinite().all().int64_value(&[]) == 1,
                    "{what}: {k} not finite"
                );
            }
        }
        // MLM heads are tied to the word embeddings in the official model.
        let decoders: Vec<String> = sd
            .keys()
            .filter(|k| k.ends_with("cls.predictions.decoder.weight"))
            .cloned()
            .collect();
        for d in decoders {
            let prefix = &d[..d.len() - "cls.predictions.decoder.weight".len()];
            let emb = sd
                .get(&format!("{prefix}bert.embeddings.word_embeddings.weight"))
                .unwrap_or_else(|| panic!("{what}: word embeddings for {d}"));
            let dec = sd.get(&d).unwrap();
            assert!(
                dec.equal(emb),
                "{what}: {d} differs from the word embeddings"
            );
            assert_eq!(ptr(dec), ptr(emb), "{what}: {d} does not share memory");
            let bias = sd.get(&format!("{prefix}cls.predictions.bias")).unwrap();
            assert!(sd
                .get(&format!("{prefix}cls.predictions.decoder.bias"))
                .unwrap()
                .equal(bias));
        }
        n += 1;
    }
    assert!(n > 0, "no checkpoint.pth under {}", dir.display());
}

/// Every parity fixture's checkpoint reads with the wrapper its MANIFEST names, and `Auto` finds
/// the same state dict.
#[test]
fn all_fixture_checkpoints_read() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures");
    if !root.is_dir() {
        eprintln!("note: ../shared/fixtures not found; skipping the fixture checkpoint test");
        return;
    }
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .flat_map(|m| std::fs::read_dir(m.unwrap().path()).into_iter().flatten())
        .map(|c| c.unwrap().path().join("MANIFEST.json"))
        .filter(|p| p.is_file() && p.with_file_name("checkpoint.pth").is_file())
        .collect();
    manifests.sort();
    assert!(
        !manifests.is_empty(),
        "no fixtures under {}",
        root.display()
    );
    for m in manifests {
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&m).unwrap()).unwrap();
        let wrapper = match manifest["checkpoint_wrapper"].as_str().unwrap_or("") {
            "" => Wrapper::None,
            k => Wrapper::Key(k.to_string()),
        };
        let path = m.with_file_name("checkpoint.pth");
        let sd = read_state_dict(&path, &opts(wrapper.clone()))
            .unwrap_or_else(|e| panic!("{wrapper:?}: {e}"));
        let auto = read_state_dict(&path, &ReadOptions::default()).unwrap();
        println!("{} {:?}: {} tensors", path.display(), wrapper, sd.len());
        assert!(!sd.is_empty(), "{}", path.display());
        assert_eq!(
            auto.keys().collect::<Vec<_>>(),
            sd.keys().collect::<Vec<_>>(),
            "{}: Auto",
            path.display()
        );
    }
}
