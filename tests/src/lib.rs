//! Shared helpers of the cross-crate integration tests: where the built plugin components
//! are, and small builders for configs.

use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A built component from `dist/plugins/` (written by `scripts/build-plugins`).
pub fn plugin(name: &str) -> PathBuf {
    let path = repo_root()
        .join("dist/plugins")
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run scripts/build-plugins first (the test command does)",
        path.display()
    );
    path
}

/// The example plant config's stage section, with plugin paths made absolute.
pub fn reference_stages_toml() -> String {
    let text = std::fs::read_to_string(repo_root().join("examples/plant.toml")).unwrap();
    let start = text.find("[[stages]]").unwrap();
    let end = text.find("[sinks.samples]").unwrap();
    text[start..end].replace(
        "\"../dist/plugins/",
        &format!("\"{}/dist/plugins/", repo_root().display()),
    )
}

/// Reads a JSON-lines file.
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l}: {e}")))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Real peers the tests start and stop: free ports, the Python peers in `.venv-peers`
/// (installed by `scripts/peers`, which the test command runs), and child processes that are
/// killed when dropped.
pub mod peers {
    use std::net::TcpListener;
    use std::path::PathBuf;
    use std::process::{Child, Command};
    use std::time::{Duration, Instant};

    /// A TCP port nobody listens on right now.
    pub fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// The Python interpreter of `.venv-peers`.
    pub fn python() -> PathBuf {
        let p = super::repo_root().join(".venv-peers/bin/python");
        assert!(
            p.is_file(),
            "{} is missing: run scripts/peers first (the test command does)",
            p.display()
        );
        p
    }

    /// Waits until something accepts TCP connections on `port`.
    pub fn wait_for_port(port: u16, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nothing listens on 127.0.0.1:{port} after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A child process killed (SIGKILL) and reaped when dropped.
    pub struct Peer {
        pub child: Child,
        pub port: u16,
    }

    impl Peer {
        /// Starts `command` and waits until it listens on `port`.
        pub fn start(mut command: Command, port: u16) -> Peer {
            let child = command
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
            let peer = Peer { child, port };
            wait_for_port(port, Duration::from_secs(30));
            peer
        }

        pub fn pid(&self) -> u32 {
            self.child.id()
        }

        /// Kills the process now (SIGKILL) and reaps it.
        pub fn kill(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Drop for Peer {
        fn drop(&mut self) {
            self.kill();
        }
    }

    /// The `mosquitto` broker binary (Debian puts it in /usr/sbin).
    pub fn mosquitto_binary() -> PathBuf {
        for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
            if std::path::Path::new(p).is_file() {
                return p.into();
            }
        }
        "mosquitto".into()
    }

    /// A private Mosquitto on a free port (for tests that stop or break the broker).
    /// `extra_conf` lines are appended to its config (e.g. persistence).
    pub fn mosquitto(dir: &std::path::Path, extra_conf: &str) -> Peer {
        let port = free_port();
        mosquitto_on(dir, port, extra_conf)
    }

    /// A private Mosquitto on `port` (to restart one where it was).
    pub fn mosquitto_on(dir: &std::path::Path, port: u16, extra_conf: &str) -> Peer {
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\n{extra_conf}\n"),
        )
        .unwrap();
        let mut cmd = Command::new(mosquitto_binary());
        cmd.arg("-c").arg(&conf);
        Peer::start(cmd, port)
    }
}
