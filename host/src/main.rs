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

/// `println!` that ends the process quietly when stdout is closed early
/// (`ferrule stages | head`), instead of panicking on the broken pipe.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            panic!("cannot write to stdout: {e}");
        }
    }};
}

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
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// List a running host's stages: plugin version, digest, state, limits, candidate,
    /// shadow run, call costs.
    Stages {
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Show a running host's latest dead-letters (at most 200).
    DeadLetters {
        #[command(flatten)]
        endpoint: Endpoint,
    },
}

/// The admin endpoint's address when none is given or configured.
const DEFAULT_ADMIN: &str = "127.0.0.1:7878";

/// Where a running host's admin endpoint is: `--admin` (or `FERRULE_ADMIN`), else the
/// `admin.listen` of the host's config file (`--host-config` or `FERRULE_CONFIG`), else
/// 127.0.0.1:7878.
#[derive(clap::Args)]
struct Endpoint {
    /// Address of the host's admin endpoint (host:port or a URL).
    #[arg(long, env = "FERRULE_ADMIN")]
    admin: Option<String>,
    /// The running host's config file: its `admin.listen` (and `admin.token`) are used when
    /// --admin (and --token) are not given.
    #[arg(long, env = "FERRULE_CONFIG", value_name = "FILE")]
    host_config: Option<PathBuf>,
}

impl Endpoint {
    /// The admin address, and the token from the host config if it names one.
    fn resolve(&self) -> anyhow::Result<(String, Option<String>)> {
        let config = match &self.host_config {
            Some(path) => Some(
                load_config(path).with_context(|| format!("--host-config {}", path.display()))?,
            ),
            None => None,
        };
        let admin = match (&self.admin, &config) {
            (Some(a), _) => a.clone(),
            (None, Some(c)) => c.admin.listen.to_string(),
            (None, None) => DEFAULT_ADMIN.to_string(),
        };
        Ok((admin, config.and_then(|c| c.admin.token)))
    }

    fn client(&self) -> anyhow::Result<AdminClient> {
        Ok(AdminClient::new(&self.resolve()?.0))
    }
}

/// Where the admin endpoint is and the token its mutating calls need.
#[derive(clap::Args)]
struct Remote {
    #[command(flatten)]
    endpoint: Endpoint,
    /// The admin endpoint's bearer token (default: the host config's `admin.token`).
    #[arg(long, env = "FERRULE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl Remote {
    fn client(self) -> anyhow::Result<AdminClient> {
        let (admin, configured) = self.endpoint.resolve()?;
        Ok(AdminClient::new(&admin).with_token(self.token.or(configured)))
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
    /// Swap a stage of a running host to the component at FILE. Without FILE: with --config,
    /// the running version re-initialised with the new config (a config-only swap); without
    /// --config, the version `load` checked.
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
        Command::Status { endpoint } => {
            let status = endpoint.client()?.status().await?;
            out!("{}", serde_json::to_string_pretty(&status)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Stages { endpoint } => {
            let stages = endpoint.client()?.stages().await?;
            out!("{}", serde_json::to_string_pretty(&stages)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::DeadLetters { endpoint } => {
            let letters = endpoint.client()?.dead_letters().await?;
            out!("{}", serde_json::to_string_pretty(&letters)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin { command } => plugin(command).await,
    }
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
        out!("{}", serde_json::to_string_pretty(v)?);
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
                .client()?
                .shadow(&stage, file, json_arg(config)?)
                .await?;
            print(&report)?;
        }
        ShadowCommand::Report { stage, remote } => {
            print(&remote.client()?.shadow_report(&stage).await?)?;
        }
        ShadowCommand::Promote { stage, remote } => {
            let r = remote.client()?.shadow_promote(&stage).await?;
            out!(
                "stage {}: promoted the shadow {} -> {} (stall {} µs, {} tags re-decided)",
                r.stage,
                r.from,
                r.to,
                r.stall_us,
                r.retagged
            );
        }
        ShadowCommand::Abandon { stage, remote } => {
            print(&remote.client()?.shadow_abandon(&stage).await?)?;
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
                Ok(_) => out!(
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
    out!("{}: ok", path.display());
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
            out!("plugin:      {}@{}", info.name, info.version);
            out!("description: {}", info.description);
            if p.adapted() {
                out!(
                    "contract:    ferrule:plugin@{} (older contract, adapted by this host: no drops, no extras written, no command plane; rebuild on ferrule:plugin@{} for those)",
                    p.contract_version(),
                    ferrule::plugin::CONTRACT_VERSION
                );
            } else {
                out!(
                    "contract:    ferrule:plugin@{} (current)",
                    p.contract_version()
                );
            }
            out!("digest:      {}", p.digest());
            out!("planes:      {:?}", info.planes);
            out!("reads:       {:?}", info.reads);
            out!("writes:      {:?}", info.writes);
            for k in &info.config_keys {
                out!(
                    "config key:  {}{} - {}",
                    k.name,
                    if k.required { " (required)" } else { "" },
                    k.description
                );
            }
            for r in &info.reasons {
                out!("reason:      {} {} - {}", r.code, r.name, r.description);
            }
            for i in p.imports() {
                out!("import:      {i}");
            }
            let t = p.timings();
            out!(
                "load:        {:?} ({:?}), link {:?}",
                t.compile_or_load,
                t.cache,
                t.link
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
            out!("{}", manifest.to_toml());
            out!("package {} written to {}", manifest.label(), out.display());
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Test { file, config } => {
            serde_json::from_str::<serde_json::Value>(&config)
                .context("--config is not valid JSON")?;
            let engine = PluginEngine::new(EngineConfig::default())?;
            let report =
                tokio::task::spawn_blocking(move || conformance::run(&engine, &file, &config))
                    .await?;
            out!("{report}");
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
                .client()?
                .load(&stage, host_path(&file)?, json_arg(config)?)
                .await?;
            out!(
                "stage {}: loaded {}@{} ({}, contract {}) from {}; not installed",
                v.stage,
                v.plugin,
                v.version,
                v.digest,
                v.contract,
                v.path
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
                .client()?
                .swap(&stage, file, json_arg(config)?)
                .await?;
            out!(
                "stage {}: {} -> {} (stall {} µs, {} tags re-decided)",
                r.stage,
                r.from,
                r.to,
                r.stall_us,
                r.retagged
            );
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Rollback { stage, remote } => {
            let r = remote.client()?.rollback(&stage).await?;
            out!(
                "stage {}: rolled back {} -> {} (stall {} µs)",
                r.stage,
                r.from,
                r.to,
                r.stall_us
            );
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Quarantine {
            stage,
            reason,
            remote,
        } => {
            remote.client()?.quarantine(&stage, reason).await?;
            out!("stage {stage}: quarantined");
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Release { stage, remote } => {
            remote.client()?.release(&stage).await?;
            out!("stage {stage}: released");
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
            out!("checks:      refused: {e}");
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
    out!("package:     {} ({})", m.label(), dir.display());
    out!("  contract:     {}", m.contract);
    out!("  component:    {}", m.component);
    out!("  digest:       {}", m.digest);
    out!(
        "  capabilities: {}",
        list(m.capabilities.iter().map(|c| c.to_string()).collect())
    );
    out!("  needs:        {}", list(needs));
    if let Some(v) = &m.vendor {
        out!("  vendor:       {v}");
    }
    if let Some(d) = &m.description {
        out!("  description:  {d}");
    }
    match package::load_unstaged(engine, dir) {
        Ok(p) => {
            out!("checks:      ok (manifest, contract spoken and exported, digest, name and version)");
            if !m.capabilities.is_empty() {
                out!(
                    "             a stage must grant {} (its `grants`)",
                    list(m.capabilities.iter().map(|c| format!("\"{c}\"")).collect())
                );
            }
            Some(p)
        }
        Err(e) => {
            out!("checks:      refused: {e}");
            None
        }
    }
}
