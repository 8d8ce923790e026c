//! POSIX conformance on the mount: pjdfstest (the Rust suite from crates.io, 398 cases).

use crate::harness::*;
use std::process::Command;

/// Passes required of pjdfstest on the mount (issue 3 asks 375; ext4 here passes 385, with 13
/// cases skipped that need a remount or a second file system).
const PJDFSTEST_PASS_MIN: usize = 375;

#[test]
fn pjdfstest_on_the_mount() {
    let Ok(out) = Command::new("pjdfstest").arg("--version").output() else {
        // scripts/test.sh installs it; a bare `cargo test` without it says so and fails.
        panic!("pjdfstest is not installed: run `cargo install pjdfstest` (scripts/test.sh does)");
    };
    assert!(out.status.success());
    let c = TestCluster::start();
    let mnt = c.file("mnt");
    c.must_shoal(&["mount", mnt.to_str().unwrap()]);
    let work = mnt.join("pjd");
    std::fs::create_dir_all(&work).unwrap();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/posix/pjdfstest.toml");
    let out = Command::new("pjdfstest").arg("-c").arg(config).arg("-p").arg(&work).current_dir(&work).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let passed = text.lines().filter(|l| l.trim_end().ends_with(" ok")).count();
    let failed: Vec<&str> = text.lines().filter(|l| l.trim_end().ends_with("FAILED")).collect();
    println!("pjdfstest: {passed} passed, {} failed", failed.len());
    assert!(failed.is_empty(), "pjdfstest failures:\n{}", failed.join("\n"));
    assert!(passed >= PJDFSTEST_PASS_MIN, "only {passed} pjdfstest cases passed");
}

/// fsx (the Rust port from crates.io): random reads, writes, truncations and mapped reads of one
/// file, checked against a model after every step. 100,000 operations with a fixed seed
/// (SHOAL_SMALL=1: 10,000).
#[test]
fn fsx_on_the_mount() {
    assert!(
        Command::new("fsx").arg("--version").output().is_ok_and(|o| o.status.success()),
        "fsx is not installed: run `cargo install fsx` (scripts/test.sh does)"
    );
    let ops = if std::env::var("SHOAL_SMALL").is_ok() { "10000" } else { "100000" };
    let c = TestCluster::start();
    let mnt = c.file("mnt");
    c.must_shoal(&["mount", mnt.to_str().unwrap()]);
    let artifacts = c.file("fsx-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let out = Command::new("fsx").args(["-N", ops, "-S", "42", "-P"]).arg(&artifacts).arg(mnt.join("fsx.bin")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = text.lines().rev().take(30).collect();
    assert!(out.status.success() && text.contains("All operations completed A-OK"), "fsx failed:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
}
