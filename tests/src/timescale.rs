//! A private PostgreSQL 15 cluster with TimescaleDB preloaded, for the TimescaleDB tests.
//!
//! TimescaleDB is not packaged for Debian 12: `scripts/timescaledb` (run by the test command
//! through `scripts/peers`) builds 2.28.3 from `../shared/timescaledb/` and installs it into
//! PostgreSQL 15. The machine's own cluster does not preload it, so each test starts its own:
//! `initdb` in a temporary directory (as the `postgres` user when the tests run as root —
//! initdb refuses root), `pg_ctl start` on a free port with
//! `shared_preload_libraries = 'timescaledb'`, and `pg_ctl stop -m immediate` when the
//! [`TimescaleCluster`] is dropped, also when the test panics.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::peers::free_port;
use super::storage::Row;

/// PostgreSQL 15's programs (Debian's layout).
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The TimescaleDB release `scripts/timescaledb` installs.
pub const TIMESCALEDB_VERSION: &str = "2.28.3";
/// The loader library the server preloads.
pub const TIMESCALEDB_LIBRARY: &str = "/usr/lib/postgresql/15/lib/timescaledb.so";

/// A throw-away PostgreSQL cluster with TimescaleDB preloaded, listening on 127.0.0.1:`port`
/// (trust auth, user `postgres`); stopped and deleted when dropped.
pub struct TimescaleCluster {
    pub port: u16,
    dir: tempfile::TempDir,
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `program` from PostgreSQL's bin directory, run as `postgres` when we are root.
fn pg_command(program: &str) -> Command {
    let path = Path::new(PG_BIN).join(program);
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

fn run(mut command: Command, what: &str) -> Result<Output, String> {
    let out = command
        .output()
        .map_err(|e| format!("{what}: cannot run {command:?}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Starts the cluster in `dir/data` on `port` (socket in `dir`, log in `dir/postgres.log`)
/// with TimescaleDB preloaded; durability off (a throw-away cluster).
fn pg_ctl_start(dir: &Path, port: u16) -> Result<(), String> {
    let options = format!(
        "-p {port} -k {dir} -c listen_addresses=127.0.0.1 \
         -c shared_preload_libraries=timescaledb -c timescaledb.telemetry_level=off \
         -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
        dir = dir.display()
    );
    let mut start = pg_command("pg_ctl");
    start
        .arg("-D")
        .arg(dir.join("data"))
        .arg("-l")
        .arg(dir.join("postgres.log"))
        .args(["-w", "-t", "60", "-o", &options, "start"]);
    run(start, "pg_ctl start").map(|_| ())
}

impl TimescaleCluster {
    /// initdb + start on a free port. Panics with what to run when TimescaleDB is missing.
    pub fn start() -> TimescaleCluster {
        assert!(
            Path::new(TIMESCALEDB_LIBRARY).is_file(),
            "TimescaleDB is not installed ({TIMESCALEDB_LIBRARY} is missing): run \
             scripts/timescaledb (the test command does, through scripts/peers)"
        );
        let dir = tempfile::Builder::new()
            .prefix("ferrule-tsdb-")
            .tempdir()
            .unwrap();
        if running_as_root() {
            let mut chown = Command::new("chown");
            chown.arg("postgres").arg(dir.path());
            run(chown, "chown postgres").unwrap_or_else(|e| panic!("{e}"));
        }
        let mut initdb = pg_command("initdb");
        initdb
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-locale"])
            .args(["--no-sync", "--no-instructions"]);
        run(initdb, "initdb").unwrap_or_else(|e| panic!("{e}"));
        // A port taken between free_port() and the server's bind fails the start: try others.
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            match pg_ctl_start(dir.path(), port) {
                Ok(()) => return TimescaleCluster { port, dir },
                Err(e) => {
                    let log = std::fs::read_to_string(dir.path().join("postgres.log"));
                    last = format!("{e}\nserver log:\n{}", log.unwrap_or_default());
                }
            }
        }
        panic!("cannot start the TimescaleDB cluster: {last}");
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Connection string of database `dbname` on this cluster.
    pub fn connection(&self, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={dbname}",
            self.port
        )
    }

    /// A connection to `dbname` (its driver task spawned on the current runtime).
    pub async fn client(&self, dbname: &str) -> tokio_postgres::Client {
        let (client, conn) =
            tokio_postgres::connect(&self.connection(dbname), tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("TimescaleDB cluster on port {}: {e}", self.port));
        tokio::spawn(conn);
        client
    }

    /// Creates database `name`, with `CREATE EXTENSION timescaledb` in it when `timescaledb`;
    /// returns its connection string.
    pub async fn create_database(&self, name: &str, timescaledb: bool) -> String {
        self.client("postgres")
            .await
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
        if timescaledb {
            self.client(name)
                .await
                .batch_execute("CREATE EXTENSION timescaledb")
                .await
                .unwrap_or_else(|e| panic!("CREATE EXTENSION timescaledb in {name}: {e}"));
        }
        self.connection(name)
    }
}

impl Drop for TimescaleCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- TimescaleDB cluster log ({}) ---\n{}",
                self.dir.path().display(),
                self.log()
            );
        }
        let mut stop = pg_command("pg_ctl");
        stop.arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "-t", "30", "stop"]);
        if run(stop, "pg_ctl stop").is_err() {
            // Still running? Kill the postmaster by the pid it recorded.
            if let Ok(pidfile) = std::fs::read_to_string(self.data().join("postmaster.pid")) {
                if let Some(pid) = pidfile.lines().next().map(str::trim) {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
        }
        // The TempDir deletes the cluster's files.
    }
}

/// Every row of `table`, read with plain SQL (the columns as the README documents them).
pub async fn rows(client: &tokio_postgres::Client, table: &str) -> Vec<Row> {
    client
        .query(
            &format!(
                "SELECT (extract(epoch FROM time) * 1000000)::int8, tag, value_double, \
                 value_int::text, value_text, unit, quality, status, metadata::text \
                 FROM {table}"
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| Row {
            time_ns: r.get::<_, i64>(0) as u64 * 1000,
            tag: r.get(1),
            value_double: r.get(2),
            value_int: r.get::<_, Option<String>>(3).map(|v| v.parse().unwrap()),
            value_text: r.get(4),
            unit: r.get(5),
            quality: r.get(6),
            status: r.get(7),
            metadata: r
                .get::<_, Option<String>>(8)
                .map(|m| serde_json::from_str(&m).unwrap()),
        })
        .collect()
}

/// `SELECT count(*) FROM <from>` (`from` may carry a WHERE clause).
pub async fn count(client: &tokio_postgres::Client, from: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {from}"), &[])
        .await
        .unwrap_or_else(|e| panic!("count from {from}: {e}"))
        .get(0)
}
