//! The OPC UA source end to end through the pipeline against an independent server (Python
//! asyncua): every node id form and data type, status codes kept, a bad node that leaves the
//! others running, polled reads (also a source whose 1 000 nodes are all polled, with no
//! subscription at all), and a server killed and restarted (with its namespaces renumbered) or
//! gone silent mid-stream.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ferrule::config::HostConfig;
use ferrule::runtime::{self, RunningPipeline};
use ferrule_tests::peers::{free_port, python, Peer};
use ferrule_tests::{read_jsonl, repo_root};
use serde_json::Value;

const BAD_NODE_ID_UNKNOWN: u64 = 0x8034_0000;
const BAD_NO_COMMUNICATION: u64 = 0x8031_0000;
const UNCERTAIN_LAST_USABLE_VALUE: u64 = 0x4090_0000;

fn asyncua(port: u16, args: &[&str]) -> Peer {
    let mut cmd = Command::new(python());
    cmd.arg(repo_root().join("tests/peers/opcua_server.py"))
        .arg(port.to_string())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Peer::start(cmd, port)
}

async fn start(dir: &Path, source: &str) -> RunningPipeline {
    let text = format!(
        r#"
[pipeline]
watch_plugins = false
progress_interval_s = 0

[admin]
enabled = false

{source}

[sinks.samples]
type = "file"
path = "samples.jsonl"
"#
    );
    let cfg = HostConfig::from_text(&text, dir).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    runtime::start(&cfg).await.unwrap()
}

async fn stop(running: RunningPipeline, dir: &Path) -> Vec<Value> {
    running.handle.stop();
    running.wait().await.unwrap();
    read_jsonl(&dir.join("samples.jsonl"))
}

/// Waits (up to 30 s; key generation and session set-up are slow on a loaded machine) until
/// `enough` holds for the samples written so far.
async fn wait_for_samples(dir: &Path, enough: impl Fn(&HashMap<String, Vec<Value>>) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if enough(&by_tag(&read_jsonl(&dir.join("samples.jsonl")))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn by_tag(samples: &[Value]) -> HashMap<String, Vec<Value>> {
    let mut m: HashMap<String, Vec<Value>> = HashMap::new();
    for s in samples {
        m.entry(s["vendor_path"].as_str().unwrap().to_string())
            .or_default()
            .push(s.clone());
    }
    m
}

fn status(s: &Value) -> u64 {
    s["status"].as_u64().unwrap()
}

fn node(tag: &str, id: &str, extra: &str) -> String {
    format!("[[sources.dcs.nodes]]\ntag = \"{tag}\"\nnode_id = \"{id}\"\n{extra}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncua_every_node_id_form_and_type_with_status_codes_kept() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = asyncua(port, &[]);
    let mut source = format!(
        "[sources.dcs]\ntype = \"opcua\"\nendpoint = \"opc.tcp://127.0.0.1:{port}/ferrule/\"\npki_dir = \"pki\"\npublishing_interval_ms = 100\n"
    );
    let nodes = [
        ("string", "ns=2;s=Line1.Press1.Bar", ""),
        ("numeric", "ns=2;i=1001", ""),
        ("guid", "ns=2;g=72962b91-fa75-4ae6-8d28-b404dc7daf63", ""),
        ("opaque", "ns=2;b=b3BhcXVlLWlk", ""),
        ("by-uri", "nsu=urn:ferrule:test;s=Line1.Press1.Bar", ""),
        ("text", "nsu=urn:ferrule:test;s=Line1.Name", ""),
        ("bool", "ns=2;s=Line1.Running", ""),
        ("int16", "ns=2;s=Line1.Int16", ""),
        ("byte", "ns=2;s=Line1.Byte", ""),
        ("uint32", "ns=2;s=Line1.UInt32", ""),
        ("int64", "ns=2;s=Line1.Int64", ""),
        ("uncertain", "ns=2;s=Line1.Uncertain", ""),
        ("counter", "ns=2;s=Counter", "deadband = 0.0"),
        ("polled", "ns=2;s=Counter", "poll_interval_ms = 200"),
        ("server-state", "i=2259", ""),
        ("unknown", "ns=2;s=No.Such.Node", ""),
        ("unknown-uri", "nsu=urn:not:there;i=1", ""),
    ];
    for (tag, id, extra) in nodes {
        source += &node(tag, id, extra);
    }
    let running = start(dir.path(), &source).await;
    wait_for_samples(dir.path(), |t| {
        t.len() == nodes.len()
            && ["counter", "polled"]
                .iter()
                .all(|tag| t.get(*tag).is_some_and(|v| v.len() >= 6))
    })
    .await;
    let samples = stop(running, dir.path()).await;
    let tags = by_tag(&samples);

    let expect = [
        ("string", 5.5),
        ("numeric", -42.0),
        ("guid", 2.5),
        ("opaque", (1u64 << 60) as f64 + 3.0),
        ("by-uri", 5.5),
        ("bool", 1.0),
        ("int16", -300.0),
        ("byte", 200.0),
        ("uint32", 4_000_000_000.0),
        ("int64", -(2f64.powi(62))),
        ("server-state", 0.0), // ServerState.Running
    ];
    for (tag, want) in expect {
        let got = tags
            .get(tag)
            .unwrap_or_else(|| panic!("no sample of {tag}"));
        let s = &got[0];
        assert_eq!(status(s), 0, "{tag}: {s}");
        assert_eq!(s["value"].as_f64().unwrap(), want, "{tag}: {s}");
    }
    assert_eq!(tags["opaque"][0]["int"], ((1u64 << 60) + 3).to_string());
    assert_eq!(tags["int64"][0]["int"], (-(1i64 << 62)).to_string());
    assert_eq!(tags["text"][0]["text"], "Press 1");
    let u = &tags["uncertain"][0];
    assert_eq!(status(u), UNCERTAIN_LAST_USABLE_VALUE, "{u}");
    assert_eq!(u["quality"], "uncertain");
    assert_eq!(u["value"].as_f64().unwrap(), 7.25);
    for tag in ["unknown", "unknown-uri"] {
        let got = &tags[tag];
        assert!(
            got.iter().all(|s| status(s) == BAD_NODE_ID_UNKNOWN),
            "{tag}: {got:?}"
        );
    }
    // The counter moves: subscription and polled reads both deliver fresh values.
    for tag in ["counter", "polled"] {
        let got = &tags[tag];
        assert!(got.len() >= 5, "{tag}: {} samples", got.len());
        let values: Vec<f64> = got.iter().map(|s| s["value"].as_f64().unwrap()).collect();
        assert!(values.windows(2).all(|w| w[1] >= w[0]), "{tag}: {values:?}");
        assert!(values.last() > values.first(), "{tag}: {values:?}");
    }
    // Source timestamps, not arrival times: the counter's are 100 ms apart on the server.
    assert!(dir.path().join("pki").is_dir(), "client PKI not created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_with_renumbered_namespaces_is_resubscribed_and_the_gap_is_bad() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = asyncua(port, &[]);
    // `dcs` subscribes; `polled` only polls (no subscription at all): both must notice the
    // loss, show the gap as bad and deliver again after the restart.
    let mut source = format!(
        "[sources.dcs]\ntype = \"opcua\"\nendpoint = \"opc.tcp://127.0.0.1:{port}/ferrule/\"\npki_dir = \"pki\"\npublishing_interval_ms = 100\nreconnect_min_ms = 200\nreconnect_max_ms = 500\n"
    );
    source += &node("counter", "nsu=urn:ferrule:test;s=Counter", "");
    source += &format!(
        "[sources.polled]\ntype = \"opcua\"\nendpoint = \"opc.tcp://127.0.0.1:{port}/ferrule/\"\npki_dir = \"pki-polled\"\npublishing_interval_ms = 100\nreconnect_min_ms = 200\nreconnect_max_ms = 500\n"
    );
    source += &node(
        "polled.counter",
        "nsu=urn:ferrule:test;s=Counter",
        "poll_interval_ms = 100",
    )
    .replace("sources.dcs", "sources.polled");
    let tags = ["counter", "polled.counter"];
    let good_after = |t: &HashMap<String, Vec<Value>>, after: u64| {
        tags.iter().all(|tag| {
            t.get(*tag).is_some_and(|v| {
                v.iter()
                    .filter(|s| status(s) == 0 && s["ts_ns"].as_u64().unwrap() > after)
                    .count()
                    >= 6
            })
        })
    };
    let running = start(dir.path(), &source).await;
    wait_for_samples(dir.path(), |t| good_after(t, 0)).await;
    let killed_at = now_ns();
    server.kill();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let restarted_at = now_ns();
    // The restarted server numbers the test namespace 3 instead of 2.
    let _server = asyncua(port, &["--shift"]);
    wait_for_samples(dir.path(), |t| good_after(t, restarted_at)).await;
    let samples = stop(running, dir.path()).await;
    let mut by = by_tag(&samples);
    for tag in tags {
        let mut got = by.remove(tag).unwrap();
        got.sort_by_key(|s| s["ts_ns"].as_u64().unwrap());

        let before = got
            .iter()
            .filter(|s| s["ts_ns"].as_u64().unwrap() < killed_at && status(s) == 0)
            .count();
        assert!(before >= 5, "{tag}: {before} good samples before the kill");
        let gap: Vec<&Value> = got
            .iter()
            .filter(|s| {
                let t = s["ts_ns"].as_u64().unwrap();
                t > killed_at + 300_000_000 && t < restarted_at
            })
            .collect();
        assert!(
            gap.len() >= 3,
            "{tag}: gap not visible: {} samples",
            gap.len()
        );
        assert!(
            gap.iter()
                .all(|s| status(s) == BAD_NO_COMMUNICATION && s["value"].is_null()),
            "{tag}: {gap:?}"
        );
        let after: Vec<&Value> = got
            .iter()
            .filter(|s| s["ts_ns"].as_u64().unwrap() > restarted_at && status(s) == 0)
            .collect();
        assert!(
            after.len() >= 5,
            "{tag}: no values after the restart: {} good samples; last {:?}",
            after.len(),
            got.last()
        );
        // The restarted counter starts again near 0: these are new values, not replays.
        assert!(
            after[0]["value"].as_f64().unwrap() < 60.0,
            "{tag}: {}",
            after[0]
        );
    }
}

/// Issue 15 item 4: a source whose nodes are all polled has no subscription at all; it must
/// stay connected and deliver the values the server serves, not tear its session down at once
/// and reconnect forever with every sample bad. 1 000 Double variables, each polled every
/// 10 ms, plus the server's count of sessions created (polled too): it stays 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_polled_at_10_ms_delivers_the_servers_values_on_one_session() {
    const N: u64 = 1000;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = asyncua(port, &["--many", &N.to_string()]);
    let mut source = format!(
        "[sources.dcs]\ntype = \"opcua\"\nendpoint = \"opc.tcp://127.0.0.1:{port}/ferrule/\"\npki_dir = \"pki\"\npublishing_interval_ms = 100\nreconnect_min_ms = 200\nreconnect_max_ms = 500\n"
    );
    for k in 0..N {
        source += &node(
            &format!("many.{k}"),
            &format!("nsu=urn:ferrule:test;s=Many.{k}"),
            "poll_interval_ms = 10",
        );
    }
    source += &node(
        "sessions",
        "nsu=urn:ferrule:test;s=Sessions",
        "poll_interval_ms = 10",
    );
    let running = start(dir.path(), &source).await;
    // Connected: a good sample of every tag. Then some seconds of steady polling.
    wait_for_samples(dir.path(), |t| {
        t.len() as u64 == N + 1 && t.values().all(|v| v.iter().any(|s| status(s) == 0))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let samples = stop(running, dir.path()).await;
    let tags = by_tag(&samples);

    let bad: Vec<&Value> = samples.iter().filter(|s| status(s) != 0).collect();
    assert!(
        bad.is_empty(),
        "{} of {} samples not good while the server was up, e.g. {:?}",
        bad.len(),
        samples.len(),
        &bad[..bad.len().min(3)]
    );
    assert_eq!(tags.len() as u64, N + 1, "tags seen");
    // One session all along: the server counted one CreateSession.
    let sessions: Vec<f64> = tags["sessions"]
        .iter()
        .map(|s| s["value"].as_f64().unwrap())
        .collect();
    assert!(
        sessions.iter().all(|v| *v == 1.0),
        "the source reconnected: sessions the server saw {:?}",
        sessions.iter().fold(Vec::new(), |mut d: Vec<f64>, v| {
            if d.last() != Some(v) {
                d.push(*v);
            }
            d
        })
    );
    // Every value is the one the server serves: Many.k = k + 10000 * generation, one source
    // timestamp per generation (the same for all variables), generations only move forward.
    let mut generation_ts: HashMap<u64, u64> = HashMap::new();
    let mut fewest = usize::MAX;
    for k in 0..N {
        let tag = format!("many.{k}");
        let got = &tags[&tag];
        fewest = fewest.min(got.len());
        let mut last = 0;
        let mut generations = 0;
        for s in got {
            let v = s["value"].as_f64().unwrap();
            let rest = v - k as f64;
            assert!(
                rest >= 0.0 && rest % 10000.0 == 0.0,
                "{tag} = {v} is not a value the server serves"
            );
            let g = (rest / 10000.0) as u64;
            assert!(g >= last, "{tag}: generation {g} after {last}");
            if g != last || generations == 0 {
                generations += 1;
            }
            last = g;
            let ts = s["ts_ns"].as_u64().unwrap();
            let first = *generation_ts.entry(g).or_insert(ts);
            assert_eq!(ts, first, "{tag}: generation {g} with another source time");
        }
        // Polled every 10 ms for 5 s of generations changing every second: fresh values, and
        // many reads of each (the server's read time, not 10 ms, sets the rate).
        assert!(
            generations >= 4,
            "{tag}: only {generations} generations seen"
        );
        assert!(got.len() >= 20, "{tag}: only {} samples", got.len());
    }
    let mut by_generation: Vec<(u64, u64)> = generation_ts.into_iter().collect();
    by_generation.sort_unstable();
    assert!(
        by_generation.windows(2).all(|w| w[1].1 > w[0].1),
        "source times do not follow the generations: {by_generation:?}"
    );
    println!(
        "all {N} nodes polled: {} good samples, {fewest} or more per node",
        samples.len()
    );
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[test]
fn bad_opcua_configs_are_refused_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
[sources.dcs]
type = "opcua"
endpoint = "opc.tcp://127.0.0.1:4840/"
security_policy = "Basic256Sha256"
[[sources.dcs.nodes]]
tag = "t"
node_id = "ns=2;s=A"

[sinks.samples]
type = "file"
path = "samples.jsonl"
"#;
    let e = HostConfig::from_text(text, dir.path()).unwrap_err();
    assert_eq!(e[0].key, "sources.dcs.security_mode", "{e:?}");
    let text = text
        .replace("security_policy = \"Basic256Sha256\"\n", "")
        .replace("ns=2;s=A", "ns=2;q=A");
    let e = HostConfig::from_text(&text, dir.path()).unwrap_err();
    assert_eq!(e[0].key, "sources.dcs.nodes[0].node_id", "{e:?}");
}

/// Files in `dir` (none when it does not exist).
fn files_in(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic256sha256_sign_and_encrypt_with_a_user_after_the_operator_trusts_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server_pki = dir.path().join("server-pki");
    let _server = asyncua(port, &["--pki", server_pki.to_str().unwrap()]);
    let secure = |name: &str, mode: &str, password: &str| {
        format!(
            "[sources.{name}]\ntype = \"opcua\"\nendpoint = \"opc.tcp://127.0.0.1:{port}/ferrule/\"\n\
             security_policy = \"Basic256Sha256\"\nsecurity_mode = \"{mode}\"\n\
             username = \"operator\"\npassword = \"{password}\"\npki_dir = \"pki-{name}\"\n\
             publishing_interval_ms = 100\nreconnect_min_ms = 200\nreconnect_max_ms = 400\n\
             [[sources.{name}.nodes]]\ntag = \"{name}.counter\"\nnode_id = \"nsu=urn:ferrule:test;s=Counter\"\n"
        )
    };
    let config = [
        secure("enc", "SignAndEncrypt", "secret"),
        secure("sign", "Sign", "secret"),
        secure("wrongpw", "SignAndEncrypt", "guess"),
    ]
    .join("\n");
    let running = start(dir.path(), &config).await;
    // Unknown server certificate: refused, and put in `rejected/` for the operator.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for name in ["enc", "sign", "wrongpw"] {
        let rejected = dir.path().join(format!("pki-{name}/rejected"));
        while files_in(&rejected).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: server certificate never rejected"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let trusted_at = now_ns();
    // The operator trusts it: moves it to `trusted/`. The source picks it up on its own.
    for name in ["enc", "sign", "wrongpw"] {
        let pki = dir.path().join(format!("pki-{name}"));
        std::fs::create_dir_all(pki.join("trusted")).unwrap();
        for f in files_in(&pki.join("rejected")) {
            std::fs::rename(&f, pki.join("trusted").join(f.file_name().unwrap())).unwrap();
        }
    }
    wait_for_samples(dir.path(), |t| {
        ["enc.counter", "sign.counter"].iter().all(|tag| {
            t.get(*tag).is_some_and(|v| {
                v.iter()
                    .filter(|s| status(s) == 0 && s["ts_ns"].as_u64().unwrap() > trusted_at)
                    .count()
                    >= 6
            })
        })
    })
    .await;
    let samples = stop(running, dir.path()).await;
    let tags = by_tag(&samples);
    for name in ["enc", "sign"] {
        let got = &tags[&format!("{name}.counter")];
        let (before, after): (Vec<&Value>, Vec<&Value>) = got
            .iter()
            // (The first value once connected carries the source time the server wrote it,
            // which may be up to 100 ms before the move: the window stops short of it.)
            .partition(|s| s["ts_ns"].as_u64().unwrap() < trusted_at - 300_000_000);
        assert!(
            before.iter().all(|s| status(s) == BAD_NO_COMMUNICATION),
            "{name}: good before the server was trusted"
        );
        let good = after.iter().filter(|s| status(s) == 0).count();
        assert!(good >= 5, "{name}: {good} good samples once trusted");
    }
    let wrong = &tags["wrongpw.counter"];
    assert!(!wrong.is_empty());
    assert!(
        wrong.iter().all(|s| s["quality"] == "bad"),
        "a wrong password must not give data"
    );
}

/// A TCP relay to `upstream` that can be frozen: it then holds every byte (a server that is
/// silent without closing the connection, as behind a dead network link).
async fn freezable_relay(upstream: u16) -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let frozen = std::sync::Arc::new(AtomicBool::new(false));
    let f = frozen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            for (mut r, mut w) in [
                (
                    Box::new(cr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                    Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                ),
                (Box::new(sr) as _, Box::new(cw) as _),
            ] {
                let f = f.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        let n = match r.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        while f.load(Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        if w.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        }
    });
    (port, frozen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_is_noticed_by_the_keep_alive_and_the_session_recreated() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = asyncua(port, &[]);
    let (relay, frozen) = freezable_relay(port).await;
    // `dcs` subscribes; `polled` only polls (no subscription: its reads are what go unanswered).
    let source = format!(
        "[sources.dcs]\ntype = \"opcua\"\nendpoint = \"opc.tcp://127.0.0.1:{relay}/ferrule/\"\npki_dir = \"pki\"\n\
         publishing_interval_ms = 100\nkeep_alive_ms = 500\nreconnect_min_ms = 200\nreconnect_max_ms = 400\n{}\
         [sources.polled]\ntype = \"opcua\"\nendpoint = \"opc.tcp://127.0.0.1:{relay}/ferrule/\"\npki_dir = \"pki-polled\"\n\
         publishing_interval_ms = 100\nkeep_alive_ms = 500\nreconnect_min_ms = 200\nreconnect_max_ms = 400\n{}",
        node("counter", "ns=2;s=Counter", ""),
        node("polled.counter", "ns=2;s=Counter", "poll_interval_ms = 100")
            .replace("sources.dcs", "sources.polled"),
    );
    let tags = ["counter", "polled.counter"];
    let good_after = |t: &HashMap<String, Vec<Value>>, after: u64| {
        tags.iter().all(|tag| {
            t.get(*tag).is_some_and(|v| {
                v.iter()
                    .filter(|s| status(s) == 0 && s["ts_ns"].as_u64().unwrap() > after)
                    .count()
                    >= 6
            })
        })
    };
    let running = start(dir.path(), &source).await;
    wait_for_samples(dir.path(), |t| good_after(t, 0)).await;
    let frozen_at = now_ns();
    frozen.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(5000)).await;
    let thawed_at = now_ns();
    frozen.store(false, Ordering::Relaxed);
    wait_for_samples(dir.path(), |t| good_after(t, thawed_at)).await;
    let samples = stop(running, dir.path()).await;
    let mut by = by_tag(&samples);
    for tag in tags {
        let mut got = by.remove(tag).unwrap();
        got.sort_by_key(|s| s["ts_ns"].as_u64().unwrap());
        let in_window = |from: u64, to: u64| -> Vec<&Value> {
            got.iter()
                .filter(|s| (from..to).contains(&s["ts_ns"].as_u64().unwrap()))
                .collect()
        };
        let before = in_window(0, frozen_at);
        assert!(
            before.iter().filter(|s| status(s) == 0).count() >= 5,
            "{tag}: too few good samples before the silence"
        );
        // Within ~2 s of going silent the gap shows as bad quality.
        // (Until shortly before the thaw: the first value of the new session carries the
        // source time the server wrote it, up to 100 ms before.)
        let gap = in_window(frozen_at + 2_500_000_000, thawed_at - 300_000_000);
        assert!(
            gap.len() >= 3,
            "{tag}: silence not noticed: {} samples in the gap",
            gap.len()
        );
        assert!(
            gap.iter().all(|s| status(s) == BAD_NO_COMMUNICATION),
            "{tag}: {gap:?}"
        );
        let after = in_window(thawed_at, u64::MAX);
        let good = after.iter().filter(|s| status(s) == 0).count();
        assert!(
            good >= 5,
            "{tag}: no new session after the link came back: {good} good samples"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_opcua_simulator_serves_the_plant_signals() {
    use ferrule::sources::simulator::{describe_tag, sample, SimulatorConfig};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let source = format!(
        "[sources.sim]\ntype = \"opcua\"\npki_dir = \"pki\"\npublishing_interval_ms = 100\n\
         [sources.sim.simulator]\nlisten = \"127.0.0.1:{port}\"\nplant_tags = 600\nfirst_tag = 100\ntags = 300\ninterval_ms = 200\n"
    );
    let running = start(dir.path(), &source).await;
    wait_for_samples(dir.path(), |t| {
        t.len() == 300 && t.values().filter(|v| v.len() >= 3).count() > 250
    })
    .await;
    let samples = stop(running, dir.path()).await;
    let tags = by_tag(&samples);
    let plant = SimulatorConfig {
        tags: 600,
        ..SimulatorConfig::default()
    };
    let mut changed = 0;
    for i in 100..400 {
        let d = describe_tag(&plant, "sim", i);
        let got = tags
            .get(&d.vendor_path)
            .unwrap_or_else(|| panic!("no sample of {}", d.vendor_path));
        assert_eq!(got[0]["unit"], d.unit.as_str());
        // Every value is one the plant produces for this tag at some scan.
        let possible: Vec<f64> = (0..100).map(|s| sample(&plant, i, s).0).collect();
        for s in got {
            assert_eq!(status(s), 0, "{s}");
            match s["value"].as_f64() {
                Some(v) => assert!(
                    possible.iter().any(|p| (p - v).abs() <= p.abs() * 1e-12),
                    "{} = {v} is not a value of the plant",
                    d.vendor_path
                ),
                None => assert!(possible.iter().any(|p| p.is_nan()), "{s}"),
            }
        }
        if got.len() > 1 {
            changed += 1;
        }
    }
    assert!(changed > 250, "data changes reached only {changed} tags");
}

/// The embedded default's OPC UA section (examples/plant.toml), on a free port, through the
/// reference chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_plant_subscribes_to_its_opcua_simulator_through_the_reference_chain() {
    let dir = tempfile::tempdir().unwrap();
    let plant = std::fs::read_to_string(repo_root().join("examples/plant.toml")).unwrap();
    let start_at = plant.find("[sources.dcs]").unwrap();
    let end_at = start_at + plant[start_at..].find("\n\n#").unwrap();
    let section = &plant[start_at..end_at];
    assert!(
        section.contains("listen = \"127.0.0.1:14840\""),
        "{section}"
    );
    let section = section
        .replace("127.0.0.1:14840", &format!("127.0.0.1:{}", free_port()))
        .replace("\"../data/opcua-pki\"", "\"pki\"");
    let source = format!(
        "[reference_data.assets]\npath = \"{}\"\n{section}\n{}",
        repo_root().join("examples/assets.csv").display(),
        ferrule_tests::reference_stages_toml()
    );
    let running = start(dir.path(), &source).await;
    wait_for_samples(dir.path(), |t| {
        t.len() == 1000 && t.values().all(|v| v.len() >= 2)
    })
    .await;
    let samples = stop(running, dir.path()).await;
    let tags = by_tag(&samples);
    assert_eq!(tags.len(), 1000, "tags seen");
    let temperature: Vec<&Value> = samples
        .iter()
        .filter(|s| s["path"].as_str().unwrap().ends_with("/temperature"))
        .collect();
    assert!(temperature.len() >= 300, "{}", temperature.len());
    for t in &temperature {
        assert!(
            t["path"].as_str().unwrap().starts_with("plant/site1/"),
            "{t}"
        );
        assert_eq!(t["unit"], "degC", "{t}");
        assert_eq!(t["quality"], "good", "{t}");
    }
}
