//! The demo command (`scripts/demo --once`) runs start to finish and its story really happens:
//! routing into SETs, federation to dc2, failover of a dead SET and its return.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_demo_command_tells_the_whole_story_and_leaves_nothing_behind() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_setgate-demo"))
        .parent()
        .unwrap()
        .to_path_buf();
    assert!(
        bin_dir.join("setgate").exists(),
        "the setgate binary must be built next to setgate-demo (cargo test --workspace builds it)"
    );
    let out = Command::new(root.join("scripts/demo"))
        .arg("--once")
        .env("SETGATE_DEMO_BIN_DIR", &bin_dir)
        .output()
        .expect("run scripts/demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "scripts/demo --once failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "connected to dc1-set-a",
        "connected to dc1-set-b",
        "(override) → connected to dc2-center",
        "dc2 received all 24",
        "marked SET set-a down",
        "is served by set-a's failover SET, set-b",
        "orders still reach dc2, now through set-b",
        "go home to set-a",
        "the federation link from set-a is back too",
        "http://127.0.0.1:16101/",
        "stopped; nothing left running",
    ] {
        assert!(
            stdout.contains(expected),
            "the demo's output lacks {expected:?}:\n{stdout}"
        );
    }
}
