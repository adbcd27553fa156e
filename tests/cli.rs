//! The `vlp` command line as a user types it: convert, forward, models, and one-line errors.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn vlp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vlp"))
        .arg("--device")
        .arg("cpu")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running vlp")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vlp-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn minilm() -> PathBuf {
    vlp_core::assets::minilm_dir().expect("run scripts/setup.sh")
}

#[test]
fn forward_reproduces_the_recorded_minilm_outputs() {
    let dir = tmp("fwd");
    let out = dir.join("out.safetensors");
    let case = Path::new("tests/fixtures/bert/minilm_1");
    let ck = minilm().join("model.safetensors");
    let o = vlp(&[
        "forward",
        "--model",
        "bert",
        "--variant",
        "encoder",
        "--config",
        case.join("config.json").to_str().unwrap(),
        "--checkpoint",
        ck.to_str().unwrap(),
        "--inputs",
        case.join("inputs.safetensors").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = tch::Tensor::read_safetensors(&out).unwrap();
    let want = tch::Tensor::read_safetensors(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(case)
            .join("outputs.safetensors"),
    )
    .unwrap();
    for (k, w) in &want {
        let g = &got.iter().find(|(n, _)| n == k).unwrap().1;
        let d = (g - w).abs().max().double_value(&[]);
        assert!(d < 1e-4, "{k}: max abs diff {d}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn convert_writes_safetensors_that_read_back_equal() {
    let dir = tmp("conv");
    let out = dir.join("minilm.safetensors");
    let ck = minilm().join("model.safetensors");
    let o = vlp(&[
        "convert",
        ck.to_str().unwrap(),
        out.to_str().unwrap(),
        "--cast",
        "f16",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("embeddings.word_embeddings.weight: [30522, 384] Half"),
        "{stdout}"
    );
    let back = tch::Tensor::read_safetensors(&out).unwrap();
    assert_eq!(back.len(), 104);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn errors_are_one_readable_line_naming_what_is_wrong() {
    let o = vlp(&["convert", "/nonexistent/x.pth", "/tmp/y.safetensors"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("/nonexistent/x.pth"),
        "{err}"
    );

    let o = vlp(&[
        "forward",
        "--model",
        "nosuchmodel",
        "--variant",
        "x",
        "--config",
        "tests/fixtures/bert/minilm_1/config.json",
        "--checkpoint",
        "a",
        "--inputs",
        "b",
        "--out",
        "c",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("nosuchmodel"), "{err}");

    let o = vlp(&["models"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("bert"));
}

#[test]
fn a_mistyped_config_field_is_named_with_its_file() {
    let dir = tmp("badcfg");
    let cfg = dir.join("config.json");
    std::fs::write(&cfg, r#"{"hidden_size": 384, "num_atention_heads": 12}"#).unwrap();
    let o = vlp(&[
        "forward",
        "--model",
        "bert",
        "--variant",
        "encoder",
        "--config",
        cfg.to_str().unwrap(),
        "--checkpoint",
        "a",
        "--inputs",
        "b",
        "--out",
        "c",
    ]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    std::fs::remove_dir_all(dir).ok();
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("num_atention_heads") && err.contains("config.json"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one readable line: {err}");
}
