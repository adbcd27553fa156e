//! `vlp quickstart` as a user types it: the flags are documented, and an output directory that
//! already holds a run is refused before any work starts. (The run itself is tested at a
//! smaller size in `vlp-tasks/tests/quickstart.rs`.)
use std::process::Command;

#[test]
fn quickstart_help_lists_its_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_vlp"))
        .args(["quickstart", "--help"])
        .output()
        .expect("running vlp");
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--out",
        "--quick",
        "--seed",
        "--device",
        "--shapes",
        "--easy-vqa",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[test]
fn quickstart_refuses_an_output_directory_that_holds_a_run() {
    let dir = std::env::temp_dir().join(format!("vlp-qs-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("summary.json"), "{}").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vlp"))
        .args(["--device", "cpu", "quickstart", "--quick", "--out"])
        .arg(&dir)
        .output()
        .expect("running vlp");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already holds a quickstart run"), "{err}");
}
