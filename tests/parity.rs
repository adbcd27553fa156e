//! `vlp parity tests/fixtures`, run as a user runs it: every fixture case the project keeps must
//! pass (cases of models not implemented yet are reported as skipped).
use std::process::Command;

#[test]
fn vlp_parity_passes_on_the_project_fixtures() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(env!("CARGO_BIN_EXE_vlp"))
        .args(["--device", "cpu", "parity", "tests/fixtures"])
        .current_dir(root)
        .output()
        .expect("running vlp parity");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    let nums: Vec<usize> = last
        .split(',')
        .filter_map(|p| p.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(nums.len(), 3, "closing line `{last}`");
    assert!(out.status.success(), "vlp parity failed: {last}");
    assert_eq!(nums[1], 0, "failed probes");
    assert!(nums[0] >= 2, "too few probes ran: {last}");
    // the real-checkpoint case is always there
    assert!(stdout.contains("minilm_1  last_hidden_state") && stdout.contains("OK"));
}

#[test]
fn vlp_parity_fails_on_a_wrong_reference() {
    // a copy of the MiniLM case whose expected output is perturbed must FAIL with exit status 1
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("tests/fixtures/bert/minilm_1");
    let tmp = std::env::temp_dir().join(format!("vlp-parity-neg-{}", std::process::id()));
    let case = tmp.join("bert/minilm_bad");
    std::fs::create_dir_all(&case).unwrap();
    for f in ["MANIFEST.json", "config.json", "inputs.safetensors"] {
        std::fs::copy(src.join(f), case.join(f)).unwrap();
    }
    let outs = tch::Tensor::read_safetensors(src.join("outputs.safetensors")).unwrap();
    let bad: Vec<(String, tch::Tensor)> = outs
        .into_iter()
        .map(|(k, v)| {
            if k == "pooler_output" {
                (k, v + 1e-3)
            } else {
                (k, v)
            }
        })
        .collect();
    tch::Tensor::write_safetensors(&bad, case.join("outputs.safetensors")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vlp"))
        .args(["--device", "cpu", "parity"])
        .arg(&tmp)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    std::fs::remove_dir_all(&tmp).ok();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("pooler_output") && stdout.contains("FAIL"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .last()
            .unwrap()
            .ends_with("1 failed, 0 skipped"),
        "{stdout}"
    );
}

#[test]
fn a_listed_known_discrepancy_that_passes_is_a_failure() {
    // XPASS keeps KNOWN_DISCREPANCIES.json honest: a listed probe that matches fails the run
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("tests/fixtures/bert/minilm_1");
    let tmp = std::env::temp_dir().join(format!("vlp-parity-xpass-{}", std::process::id()));
    let case = tmp.join("bert/minilm_1");
    std::fs::create_dir_all(&case).unwrap();
    for f in [
        "MANIFEST.json",
        "config.json",
        "inputs.safetensors",
        "outputs.safetensors",
    ] {
        std::fs::copy(src.join(f), case.join(f)).unwrap();
    }
    std::fs::write(
        tmp.join("KNOWN_DISCREPANCIES.json"),
        r#"[{"case": "bert/minilm_1", "probe": "pooler_output", "reason": "test"}]"#,
    )
    .unwrap();
    let run = |strict: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vlp"));
        c.args(["--device", "cpu", "parity"]).arg(&tmp);
        if strict {
            c.arg("--strict");
        }
        c.output().unwrap()
    };
    let out = run(false);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("pooler_output") && stdout.contains("XPASS"),
        "{stdout}"
    );
    let out = run(true);
    std::fs::remove_dir_all(&tmp).ok();
    assert!(out.status.success(), "--strict ignores the list");
}
