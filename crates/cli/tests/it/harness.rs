//! Starts a real local cluster (the `shoal` binary: 3 metadata processes, 4 storage servers,
//! mutual TLS on loopback) in a temporary directory, and stops it when dropped.

use shoal_client::Client;
use shoal_types::config::ClientConfig;
use shoal_types::Credentials;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

pub struct TestCluster {
    pub dir: tempfile::TempDir,
}

impl TestCluster {
    pub fn start() -> TestCluster {
        Self::start_with(&[])
    }

    /// `init_args` go to `shoal init` (e.g. `--store-capacity`).
    pub fn start_with(init_args: &[&str]) -> TestCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = TestCluster { dir };
        c.must_shoal(&[&["init"], init_args].concat());
        c.must_shoal(&["up", "--detach"]);
        c
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn shoal(&self, args: &[&str]) -> Output {
        Command::new(SHOAL).arg("--dir").arg(self.path()).args(args).output().expect("run shoal")
    }

    #[track_caller]
    pub fn must_shoal(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.must_shoal_bytes(args)).into_owned()
    }

    #[track_caller]
    pub fn must_shoal_bytes(&self, args: &[&str]) -> Vec<u8> {
        let out = self.shoal(args);
        assert!(
            out.status.success(),
            "shoal {args:?} failed ({}): {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.logs_tail()
        );
        out.stdout
    }

    pub fn logs_tail(&self) -> String {
        let mut s = String::new();
        if let Ok(rd) = std::fs::read_dir(self.path().join("logs")) {
            for e in rd.flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                s += &format!("--- {} (last lines)\n{}\n", e.path().display(), lines[lines.len().saturating_sub(15)..].join("\n"));
            }
        }
        s
    }

    pub fn client_config(&self) -> ClientConfig {
        let text = std::fs::read_to_string(self.path().join("client.toml")).expect("client.toml");
        toml::from_str(&text).expect("parse client.toml")
    }

    pub async fn client(&self) -> Arc<Client> {
        Client::connect(&self.client_config(), Credentials::ROOT, "test").await.expect("connect")
    }

    pub fn pid(&self, name: &str) -> i32 {
        std::fs::read_to_string(self.path().join("pids").join(format!("{name}.pid"))).expect("pid file").trim().parse().expect("pid")
    }

    pub fn kill9(&self, name: &str) {
        let pid = self.pid(name);
        unsafe { libc::kill(pid, libc::SIGKILL) };
        wait_dead(pid);
    }

    /// Restart whatever is not running (`shoal up` starts only missing processes).
    pub fn up(&self) {
        self.must_shoal(&["up", "--detach"]);
    }

    pub fn status_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.must_shoal(&["status", "--json"])).expect("status json")
    }

    pub fn leader(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.shoal(&["status", "--json"]);
            if out.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
                if let Some(l) = v["leader"].as_u64() {
                    return l;
                }
            }
            assert!(Instant::now() < deadline, "no leader: {}", self.logs_tail());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = Command::new(SHOAL).arg("--dir").arg(self.path()).arg("down").output();
    }
}

/// Wait until `pid` has exited. A signal is delivered asynchronously and a killed process takes
/// a while to release its memory; until then `shoal up` would take it for a running one. (It is
/// not our child, so `waitpid` cannot wait for it.)
pub fn wait_dead(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()));
        if matches!(state, None | Some('Z' | 'X' | 'x')) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("process {pid} still running 20 s after SIGKILL");
}

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
