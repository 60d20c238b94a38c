//! kill -9 chaos, not run in CI: every delivery path with 100 SIGKILLs (by default) mid-stream,
//! counted by an independent reader (`ferrule_tests::crash`), then a table.
//!
//! ```sh
//! cargo build --release -p ferrule --bin ferrule
//! cargo run --release -p ferrule-tests --bin chaos -- --kills 100 --path all
//! ```
//!
//! Options: `--kills N` (100), `--path all|mqtt-file|mqtt-parquet|mqtt-kafka|kafka-postgres|
//! kafka-parquet` (all; may be repeated or comma-separated), `--messages N` (minimum fed,
//! 10 000), `--rate N` (messages/s fed, 1 000), `--seed N`, `--max-run-ms N` (a restart that
//! delivered is killed within this long, 1 000), `--ferrule PATH` (the binary; default
//! `$FERRULE_BIN`, else `target/<profile>/ferrule`), `--keep` (keep the working directories),
//! `--quiet`. Exits 1 if any path lost an acknowledged sample (or duplicated one where exactly
//! once is promised, or did not stop cleanly).

use std::process::ExitCode;

use ferrule_tests::crash::{self, secs, DeliveryPath, Options, Report};

fn usage() -> ! {
    eprintln!(
        "usage: chaos [--kills N] [--path all|{}] [--messages N] [--rate N] [--seed N] \
         [--max-run-ms N] [--ferrule PATH] [--keep] [--quiet]",
        DeliveryPath::ALL.map(|p| p.name()).join("|")
    );
    std::process::exit(2)
}

fn number(v: Option<String>) -> u64 {
    v.and_then(|v| v.parse().ok()).unwrap_or_else(|| usage())
}

fn main() -> ExitCode {
    let mut opts = Options::new(100, 10_000);
    opts.verbose = true;
    let mut paths: Vec<DeliveryPath> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--kills" => opts.kills = number(args.next()) as u32,
            "--messages" => opts.messages = number(args.next()),
            "--rate" => opts.rate = number(args.next()),
            "--seed" => opts.seed = number(args.next()),
            "--max-run-ms" => opts.max_run_ms = number(args.next()),
            "--ferrule" => opts.ferrule = Some(args.next().unwrap_or_else(|| usage()).into()),
            "--keep" => opts.keep_dir = true,
            "--quiet" => opts.verbose = false,
            "--path" => {
                for name in args.next().unwrap_or_else(|| usage()).split(',') {
                    match name {
                        "all" => paths.extend(DeliveryPath::ALL),
                        n => paths.push(DeliveryPath::from_name(n).unwrap_or_else(|| usage())),
                    }
                }
            }
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    if paths.is_empty() {
        paths.extend(DeliveryPath::ALL);
    }
    eprintln!(
        "chaos: {} kills per path, >= {} messages at {}/s, seed {:#x}, host {}",
        opts.kills,
        opts.messages,
        opts.rate,
        opts.seed,
        crash::ferrule_bin(&opts).display()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut reports: Vec<Report> = Vec::new();
    for path in paths {
        let r = runtime.block_on(crash::run(path, &opts));
        eprintln!("{r}");
        reports.push(r);
    }
    println!();
    println!(
        "| path | kills | sent | lost | duplicates | recovery p50 | recovery max | catch-up | clean stop |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    let mut failed = false;
    for r in &reports {
        println!(
            "| {} | {} ({} early) | {} | {} | {}{} | {} | {} | {} | {} |",
            r.path,
            r.kills,
            r.early_kills,
            r.sent,
            r.lost,
            r.duplicates,
            match r.path.duplicates_per_kill() {
                Some(0) => String::new(),
                Some(b) => format!(" (≤ {b}/kill)"),
                None => " (at-least-once)".into(),
            },
            secs(r.recovery_p50()),
            secs(r.recovery_max()),
            secs(r.catch_up),
            if r.exit.is_ok() { "yes" } else { "NO" },
        );
        failed |= r.lost > 0
            || r.corrupt > 0
            || r.exit.is_err()
            || r.path
                .duplicates_per_kill()
                .is_some_and(|b| r.duplicates > b * r.kills as u64);
    }
    for r in reports.iter().filter(|r| r.kept.is_some()) {
        println!("{}: kept {}", r.path, r.kept.as_ref().unwrap().display());
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
