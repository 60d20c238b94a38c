//! kill -9 of the host mid-stream, per delivery path, counted by an independent reader
//! (`ferrule_tests::crash`): a feed sends QoS 1 MQTT messages or Kafka records while the
//! `ferrule` binary is SIGKILLed a few times at pseudo-random moments and restarted, then
//! stopped with SIGINT. Every sample the upstream acknowledged must be at the destination;
//! PostgreSQL rows exactly once; Parquet without the host's own replays, so its duplicates are
//! only what the upstream redelivered, bounded by its unacknowledged window per kill; the file
//! sink and Kafka at least once (their duplicates are printed). `cargo run -p ferrule-tests --bin chaos` runs the same with 100
//! kills per path.

use ferrule_tests::crash::{self, Options, Report};

/// One path at a time: five hosts, brokers and readers at once would crowd two cores and
/// stretch the recovery times they measure.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// 3 kills (2 for the Kafka source, whose group rejoin makes each restart slower) over a
/// feed of at least 3 000 messages at 1 000/s.
fn options(kills: u32) -> Options {
    let mut o = Options::new(kills, 3_000);
    o.verbose = true;
    o
}

fn check(r: &Report) {
    eprintln!("{r}");
    assert!(r.sent > 0, "nothing was fed");
    assert_eq!(
        r.lost, 0,
        "{} of {} acknowledged samples lost: {r}",
        r.lost, r.sent
    );
    assert_eq!(r.corrupt, 0, "unreadable lines: {r}");
    assert_eq!(r.dead_letters, 0, "dead-letters: {r}");
    assert_eq!(r.exit, Ok(()), "the clean stop: {r}");
    assert_eq!(r.unrecovered, 0, "a restart delivered nothing: {r}");
    match r.path.duplicates_per_kill() {
        Some(0) => assert_eq!(r.duplicates, 0, "exactly once promised: {r}"),
        Some(bound) => assert!(
            r.duplicates <= bound * r.kills as u64,
            "more duplicates than the upstream's unacknowledged window per kill ({bound}): {r}"
        ),
        None => eprintln!("{}: {} duplicates (at-least-once)", r.path, r.duplicates),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_to_file_loses_no_acknowledged_sample_across_kill_9() {
    let _one = ONE_AT_A_TIME.lock().await;
    check(&crash::mqtt_file(&options(3)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_to_parquet_holds_every_acknowledged_sample_across_kill_9() {
    let _one = ONE_AT_A_TIME.lock().await;
    check(&crash::mqtt_parquet(&options(3)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_to_kafka_loses_no_acknowledged_sample_across_kill_9() {
    let _one = ONE_AT_A_TIME.lock().await;
    check(&crash::mqtt_kafka(&options(3)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_to_postgres_holds_every_acknowledged_record_once_across_kill_9() {
    let _one = ONE_AT_A_TIME.lock().await;
    check(&crash::kafka_postgres(&options(2)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_to_parquet_holds_every_acknowledged_record_across_kill_9() {
    let _one = ONE_AT_A_TIME.lock().await;
    check(&crash::kafka_parquet(&options(2)).await);
}
