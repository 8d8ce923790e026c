//! Data written by an earlier format version is read by this build (checked-in fixture).

use crate::harness::*;
use std::process::Command;

#[test]
fn cluster_written_by_format_v1_starts_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cluster-format-v1.tar.gz");
    let st = Command::new("tar").arg("xzf").arg(fixture).arg("-C").arg(dir.path()).status().unwrap();
    assert!(st.success());
    for sub in ["client.toml", "meta-1/meta.toml", "meta-2/meta.toml", "meta-3/meta.toml", "store-1/store.toml", "store-2/store.toml", "store-3/store.toml", "store-4/store.toml"] {
        let p = dir.path().join(sub);
        let text = std::fs::read_to_string(&p).unwrap().replace("@DIR@", dir.path().to_str().unwrap());
        std::fs::write(&p, text).unwrap();
    }
    let c = TestCluster { dir };
    c.must_shoal(&["up", "--detach"]);
    let data = c.file("data.back");
    c.must_shoal(&["get", "/docs/deep/data.bin", data.to_str().unwrap()]);
    assert!(std::fs::read(&data).unwrap() == bytes(42, 3_000_000)[..300_000], "v1 blob data reads back");
    assert_eq!(c.must_shoal(&["cat", "/docs/small.txt"]), "hello from format v1");
    assert!(c.must_shoal(&["stat", "/docs/small.txt"]).contains("Access: 0640"));
    assert!(c.must_shoal(&["ls", "-l", "/"]).contains("link"));
    // And it takes new writes.
    c.must_shoal(&["mkdir", "/new"]);
}
