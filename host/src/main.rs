//! The `ferrule` command line: run and check a config, inspect and test plugins, and steer a
//! running host through its admin endpoint.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use ferrule::admin::AdminClient;
use ferrule::config::HostConfig;
use ferrule::plugin::package::{self, NeededLimits, PackageOptions};
use ferrule::plugin::{conformance, EngineConfig, Grant, HostBackends, PluginEngine, StageTerms};

#[derive(Parser)]
#[command(
    name = "ferrule",
    version,
    about = "Industrial IoT edge and bridge host with sandboxed Wasm plugins"
)]
struct Cli {
    /// Log format on stderr: `text` for people, `json` (one object per line, with every field
    /// of the event and its spans) for a log shipper. Level filter: `FERRULE_LOG`.
    #[arg(
        long,
        global = true,
        env = "FERRULE_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRULE_LOG")
        .unwrap_or_else(|_| "info,wasmtime=warn,cranelift=warn".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().with_current_span(false).init(),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline described by a config file until Ctrl-C (or the sources finish).
    Run { config: PathBuf },
    /// Check a config file: keys, values, plugin files, and each plugin's init with its config.
    Check { config: PathBuf },
    /// Plugin tools.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Show the status of a running host.
    Status {
        #[arg(long, default_value = "127.0.0.1:7878")]
        admin: String,
    },
    /// List a running host's stages: plugin version, digest, state, limits, candidate,
    /// shadow run, call costs.
    Stages {
        #[arg(long, default_value = "127.0.0.1:7878")]
        admin: String,
    },
    /// Show a running host's latest dead-letters (at most 200).
    DeadLetters {
        #[arg(long, default_value = "127.0.0.1:7878")]
        admin: String,
    },
    /// Browse a device and print a ready-to-paste source block for what it holds.
    Discover {
        #[command(subcommand)]
        command: DiscoverCommand,
    },
}

#[derive(Subcommand)]
enum DiscoverCommand {
    /// Every variable under a node of an OPC UA server (security None) as
    /// `[[sources.<name>.nodes]]`, tags named by browse path, node ids as `nsu=<uri>;…`.
    Opcua {
        /// `opc.tcp://host:port/path`
        endpoint: String,
        /// The folder or object to browse under (default: the Objects folder), e.g.
        /// `ns=2;s=Plant` or `nsu=urn:x;i=1001`.
        #[arg(long)]
        under: Option<String>,
        /// The source name in the printed block.
        #[arg(long, default_value = "opcua")]
        source: String,
        #[arg(long)]
        username: Option<String>,
        #[arg(long, env = "FERRULE_OPCUA_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// Where the client keeps its certificate (created when missing).
        #[arg(long, default_value = "pki")]
        pki_dir: PathBuf,
    },
}

/// Where the admin endpoint is and the token its mutating calls need.
#[derive(clap::Args)]
struct Remote {
    #[arg(long, default_value = "127.0.0.1:7878")]
    admin: String,
    /// The admin endpoint's bearer token (its config's `admin.token`).
    #[arg(long, env = "FERRULE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl Remote {
    fn client(self) -> AdminClient {
        AdminClient::new(&self.admin).with_token(self.token)
    }
}

#[derive(Subcommand)]
enum ShadowCommand {
    /// Run FILE (or, without it, the stage's loaded candidate) in shadow beside the live
    /// version: same batches, outputs compared, nothing delivered.
    Start {
        stage: String,
        file: Option<PathBuf>,
        /// Plugin config as JSON (default: the live version's config, or the candidate's).
        #[arg(long)]
        config: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print the shadow run's report: counts of differing samples and tags, the latest diffs.
    Report {
        stage: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Install the shadow version as the live one (with the state it built).
    Promote {
        stage: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Drop the shadow version.
    Abandon {
        stage: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Print a component's self-description, contract version, digest and imports; for a
    /// package directory also its manifest and whether it passes the package checks.
    Inspect { file: PathBuf },
    /// Write a plugin package (a directory: the component and its manifest) from a component.
    Package {
        /// The component (.wasm); name, version and contract are read from it.
        component: PathBuf,
        /// The package directory to write (new, empty, or an older package).
        #[arg(long)]
        out: PathBuf,
        /// A capability the plugin needs: clock, random or stdio (repeat for several).
        #[arg(long = "capability", value_name = "NAME")]
        capabilities: Vec<Grant>,
        /// Least `limits.memory_mib` a stage must allow.
        #[arg(long)]
        memory_mib: Option<u64>,
        /// Least `limits.cpu_ms_per_call` a stage must allow.
        #[arg(long = "cpu-ms")]
        cpu_ms: Option<u64>,
        /// Least `limits.fuel_per_call` a stage must allow (fuel mode).
        #[arg(long)]
        fuel: Option<u64>,
        #[arg(long)]
        vendor: Option<String>,
        /// Default: the component's own description.
        #[arg(long)]
        description: Option<String>,
    },
    /// Run the conformance kit against a component or package.
    Test {
        file: PathBuf,
        /// Plugin config as JSON (what `[stages.config]` would hold).
        #[arg(long, default_value = "{}")]
        config: String,
    },
    /// Load FILE for a stage of a running host and check it (digest pin, contract, init,
    /// tag plane) without installing it; `swap` or `shadow start` without FILE use it.
    Load {
        stage: String,
        file: PathBuf,
        /// Plugin config as JSON (default: keep the running config).
        #[arg(long)]
        config: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Swap a stage of a running host to the component at FILE (without FILE: to the
    /// version `load` checked).
    Swap {
        stage: String,
        file: Option<PathBuf>,
        /// New plugin config as JSON (default: keep the running config).
        #[arg(long)]
        config: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Roll a stage of a running host back to its previous version.
    Rollback {
        stage: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Quarantine a stage of a running host by hand (its quarantine policy applies).
    Quarantine {
        stage: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Lift a stage's quarantine on a running host.
    Release {
        stage: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Shadow runs: a new version beside the live one, compared, then promoted or abandoned.
    Shadow {
        #[command(subcommand)]
        command: ShadowCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config } => run(config).await,
        Command::Check { config } => check(config).await,
        Command::Status { admin } => {
            let status = AdminClient::new(&admin).status().await?;
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Stages { admin } => {
            let stages = AdminClient::new(&admin).stages().await?;
            println!("{}", serde_json::to_string_pretty(&stages)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::DeadLetters { admin } => {
            let letters = AdminClient::new(&admin).dead_letters().await?;
            println!("{}", serde_json::to_string_pretty(&letters)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin { command } => plugin(command).await,
        Command::Discover { command } => discover(command).await,
    }
}

async fn discover(command: DiscoverCommand) -> anyhow::Result<ExitCode> {
    match command {
        DiscoverCommand::Opcua {
            endpoint,
            under,
            source,
            username,
            password,
            pki_dir,
        } => {
            let options = ferrule::sources::opcua::DiscoverOptions {
                endpoint,
                under,
                source,
                username,
                password,
                pki_dir,
            };
            let block = ferrule::sources::opcua::discover(&options)
                .await
                .map_err(|e| anyhow::anyhow!("discover opcua: {e}"))?;
            print!("{block}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A path as the host will read it (the host may run in another directory).
fn host_path(file: &std::path::Path) -> anyhow::Result<PathBuf> {
    std::fs::canonicalize(file).with_context(|| format!("{}", file.display()))
}

fn json_arg(config: Option<String>) -> anyhow::Result<Option<serde_json::Value>> {
    config
        .map(|c| serde_json::from_str(&c).context("--config is not valid JSON"))
        .transpose()
}

async fn shadow(command: ShadowCommand) -> anyhow::Result<ExitCode> {
    let print = |v: &serde_json::Value| -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(v)?);
        Ok(())
    };
    match command {
        ShadowCommand::Start {
            stage,
            file,
            config,
            remote,
        } => {
            let file = file.as_deref().map(host_path).transpose()?;
            let report = remote
                .client()
                .shadow(&stage, file, json_arg(config)?)
                .await?;
            print(&report)?;
        }
        ShadowCommand::Report { stage, remote } => {
            print(&remote.client().shadow_report(&stage).await?)?;
        }
        ShadowCommand::Promote { stage, remote } => {
            let r = remote.client().shadow_promote(&stage).await?;
            println!(
                "stage {}: promoted the shadow {} -> {} (stall {} µs, {} tags re-decided)",
                r.stage, r.from, r.to, r.stall_us, r.retagged
            );
        }
        ShadowCommand::Abandon { stage, remote } => {
            print(&remote.client().shadow_abandon(&stage).await?)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn load_config(path: &std::path::Path) -> anyhow::Result<HostConfig> {
    HostConfig::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

async fn run(path: PathBuf) -> anyhow::Result<ExitCode> {
    let config = load_config(&path)?;
    let running = ferrule::runtime::start(&config).await?;
    let handle = running.handle.clone();
    let admin = if config.admin.enabled {
        let (addr, task) = ferrule::admin::serve(
            config.admin.listen,
            handle.clone(),
            config.admin.token.clone(),
        )
        .await
        .with_context(|| format!("`admin.listen`: cannot bind {}", config.admin.listen))?;
        tracing::info!(%addr, "admin endpoint listening");
        Some(task)
    } else {
        None
    };
    let progress = (config.pipeline.progress_interval_s > 0).then(|| {
        tokio::spawn(ferrule::progress::run(
            handle.clone(),
            Duration::from_secs(config.pipeline.progress_interval_s),
        ))
    });
    let stopper = handle.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("stopping: draining the pipeline");
            stopper.stop();
        }
    });
    let result = running.wait().await;
    if let Some(p) = progress {
        p.abort();
    }
    if let Some(a) = admin {
        a.abort();
    }
    let status = result?;
    eprintln!(
        "done: produced {:?}, written {:?}, dead-letters {}",
        status.produced, status.written, status.dead_letters
    );
    Ok(ExitCode::SUCCESS)
}

async fn check(path: PathBuf) -> anyhow::Result<ExitCode> {
    let config = match HostConfig::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    let engine = PluginEngine::new(config.engine.clone())?;
    let mut failed = false;
    for (i, s) in config.stages.iter().enumerate() {
        let pin = s
            .digest
            .as_deref()
            .map(ferrule::plugin::Digest::parse)
            .transpose()
            .map_err(anyhow::Error::msg)?;
        match StageTerms::new(&s.name, pin, s.sandbox()).load(&engine, &s.plugin) {
            Err(e) => {
                eprintln!("`stages[{i}].plugin`: {e}");
                failed = true;
            }
            Ok(p) => match p.instantiate(
                &s.name,
                &s.config_json(),
                &s.sandbox(),
                HostBackends::default(),
            ) {
                Err(e) => {
                    eprintln!("`stages[{i}].config`: {e}");
                    failed = true;
                }
                Ok(_) => println!(
                    "stage {} ok: {}@{} ({}), quarantine {}",
                    s.name,
                    p.name(),
                    p.version(),
                    p.digest(),
                    s.quarantine.as_str()
                ),
            },
        }
    }
    if failed {
        return Ok(ExitCode::from(2));
    }
    println!("{}: ok", path.display());
    Ok(ExitCode::SUCCESS)
}

async fn plugin(command: PluginCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginCommand::Inspect { file } => {
            let engine = PluginEngine::new(EngineConfig::default())?;
            let p = if package::is_package(&file) {
                match inspect_package(&engine, &file) {
                    Some(p) => p,
                    None => return Ok(ExitCode::FAILURE),
                }
            } else {
                engine.load_file(&file, None)?
            };
            let info = p.info();
            println!("plugin:      {}@{}", info.name, info.version);
            println!("description: {}", info.description);
            println!("contract:    ferrule:plugin@{}", p.contract_version());
            println!("digest:      {}", p.digest());
            println!("planes:      {:?}", info.planes);
            println!("reads:       {:?}", info.reads);
            println!("writes:      {:?}", info.writes);
            for k in &info.config_keys {
                println!(
                    "config key:  {}{} - {}",
                    k.name,
                    if k.required { " (required)" } else { "" },
                    k.description
                );
            }
            for r in &info.reasons {
                println!("reason:      {} {} - {}", r.code, r.name, r.description);
            }
            for i in p.imports() {
                println!("import:      {i}");
            }
            let t = p.timings();
            println!(
                "load:        {:?} ({:?}), link {:?}",
                t.compile_or_load, t.cache, t.link
            );
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Package {
            component,
            out,
            capabilities,
            memory_mib,
            cpu_ms,
            fuel,
            vendor,
            description,
        } => {
            let engine = PluginEngine::new(EngineConfig::default())?;
            let options = PackageOptions {
                capabilities,
                limits: NeededLimits {
                    memory_mib,
                    cpu_ms_per_call: cpu_ms,
                    fuel_per_call: fuel,
                },
                vendor,
                description,
            };
            let manifest = package::write_package(&engine, &component, &out, options)?;
            println!("{}", manifest.to_toml());
            println!("package {} written to {}", manifest.label(), out.display());
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Test { file, config } => {
            serde_json::from_str::<serde_json::Value>(&config)
                .context("--config is not valid JSON")?;
            let engine = PluginEngine::new(EngineConfig::default())?;
            let report =
                tokio::task::spawn_blocking(move || conformance::run(&engine, &file, &config))
                    .await?;
            println!("{report}");
            Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        PluginCommand::Load {
            stage,
            file,
            config,
            remote,
        } => {
            let v = remote
                .client()
                .load(&stage, host_path(&file)?, json_arg(config)?)
                .await?;
            println!(
                "stage {}: loaded {}@{} ({}, contract {}) from {}; not installed",
                v.stage, v.plugin, v.version, v.digest, v.contract, v.path
            );
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Swap {
            stage,
            file,
            config,
            remote,
        } => {
            let file = file.as_deref().map(host_path).transpose()?;
            let r = remote
                .client()
                .swap(&stage, file, json_arg(config)?)
                .await?;
            println!(
                "stage {}: {} -> {} (stall {} µs, {} tags re-decided)",
                r.stage, r.from, r.to, r.stall_us, r.retagged
            );
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Rollback { stage, remote } => {
            let r = remote.client().rollback(&stage).await?;
            println!(
                "stage {}: rolled back {} -> {} (stall {} µs)",
                r.stage, r.from, r.to, r.stall_us
            );
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Quarantine {
            stage,
            reason,
            remote,
        } => {
            remote.client().quarantine(&stage, reason).await?;
            println!("stage {stage}: quarantined");
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Release { stage, remote } => {
            remote.client().release(&stage).await?;
            println!("stage {stage}: released");
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Shadow { command } => shadow(command).await,
    }
}

/// Prints a package's manifest and the result of its checks; the plugin unless refused.
fn inspect_package(
    engine: &PluginEngine,
    dir: &std::path::Path,
) -> Option<ferrule::plugin::LoadedPlugin> {
    let pkg = match package::Package::read(dir) {
        Ok(p) => p,
        Err(e) => {
            println!("checks:      refused: {e}");
            return None;
        }
    };
    let m = &pkg.manifest;
    let list = |items: Vec<String>| {
        if items.is_empty() {
            "none".to_string()
        } else {
            items.join(", ")
        }
    };
    let needs = [
        ("memory_mib", m.limits.memory_mib),
        ("cpu_ms_per_call", m.limits.cpu_ms_per_call),
        ("fuel_per_call", m.limits.fuel_per_call),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| format!("{k} ≥ {v}")))
    .collect();
    println!("package:     {} ({})", m.label(), dir.display());
    println!("  contract:     {}", m.contract);
    println!("  component:    {}", m.component);
    println!("  digest:       {}", m.digest);
    println!(
        "  capabilities: {}",
        list(m.capabilities.iter().map(|c| c.to_string()).collect())
    );
    println!("  needs:        {}", list(needs));
    if let Some(v) = &m.vendor {
        println!("  vendor:       {v}");
    }
    if let Some(d) = &m.description {
        println!("  description:  {d}");
    }
    match package::load_unstaged(engine, dir) {
        Ok(p) => {
            println!("checks:      ok (manifest, contract spoken and exported, digest, name and version)");
            if !m.capabilities.is_empty() {
                println!(
                    "             a stage must grant {} (its `grants`)",
                    list(m.capabilities.iter().map(|c| format!("\"{c}\"")).collect())
                );
            }
            Some(p)
        }
        Err(e) => {
            println!("checks:      refused: {e}");
            None
        }
    }
}
