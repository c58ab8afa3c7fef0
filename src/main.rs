//! The sluice binary: command line, logging, config, then `app::run`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use sluice::config::{Config, ConfigError};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "PostgreSQL connection pooler and read/write router"
)]
struct Cli {
    /// Configuration file.
    #[arg(short, long, global = true, default_value = "pooler.toml")]
    config: PathBuf,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log level or filter (trace, debug, info, warn, error; or a RUST_LOG-style filter).
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    /// Take over the running sluice at takeover_socket: its listening
    /// socket and, as they come to rest, its clients.
    #[arg(long)]
    takeover: bool,
    /// Write the process id here once listening (removed at exit, unless
    /// a process that took over wrote its own).
    #[arg(long, value_name = "FILE")]
    pidfile: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration file and print every problem.
    CheckConfig,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The levels `--log-level` takes by name; anything else must be a filter
/// (`target=level`, comma-separated), or it is a mistake to report.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

fn log_filter(level: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    let filter_syntax = level.contains('=') || level.contains(',');
    if !filter_syntax && !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "unknown --log-level \"{level}\" (expected {}, or a filter such as sluice=debug,info)",
            LEVELS.join(", ")
        ));
    }
    tracing_subscriber::EnvFilter::try_new(level)
        .map_err(|e| format!("invalid --log-level \"{level}\": {e}"))
}

fn init_tracing(format: LogFormat, filter: tracing_subscriber::EnvFilter) {
    use std::io::IsTerminal;
    // Colours only for a person at a terminal, not in files or journald.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
    Config::load(path)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::CheckConfig) = cli.command {
        return match load(&cli.config) {
            Ok(c) => {
                println!(
                    "{}: OK ({} database(s), {} user(s))",
                    cli.config.display(),
                    c.databases.len(),
                    c.users.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", cli.config.display());
                ExitCode::FAILURE
            }
        };
    }
    let filter = match log_filter(&cli.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::FAILURE;
        }
    };
    init_tracing(cli.log_format, filter);
    let config = match load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{}: {e}", cli.config.display());
            return ExitCode::FAILURE;
        }
    };
    match run(
        config,
        cli.config.clone(),
        cli.takeover,
        cli.pidfile.as_deref(),
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    config: Config,
    path: PathBuf,
    takeover: bool,
    pidfile: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    // One thread (the default) is tokio's current-thread scheduler rather
    // than a work-stealing pool of one: no cross-thread queues or wake-ups,
    // the cheapest shape per transaction (see README, Performance). More
    // threads are for traffic beyond one core.
    let mut builder = match config.general.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 0 {
                b.worker_threads(n);
            }
            b
        }
    };
    let rt = builder.enable_all().build()?;
    rt.block_on(async {
        let socket = config.peering.takeover_socket.clone();
        let (listener, from_old) = match (&socket, takeover) {
            (Some(path), true) => {
                let (l, conn) = sluice::takeover::take::connect(path)?;
                l.set_nonblocking(true)?;
                (tokio::net::TcpListener::from_std(l)?, Some(conn))
            }
            (None, true) => anyhow::bail!("--takeover needs takeover_socket in [general]"),
            _ => (
                bind(config.general.listen_addr, config.peering.so_reuseport)?,
                None,
            ),
        };
        let peer_listener = match config.peering.listen_addr {
            Some(addr) => Some(bind_named("peer_listen_addr", addr).await?),
            None => None,
        };
        let metrics = match config.general.metrics_addr {
            Some(addr) => Some(bind_named("metrics_addr", addr).await?),
            None => None,
        };
        let own_pid = format!("{}\n", std::process::id());
        if let Some(p) = pidfile {
            std::fs::write(p, &own_pid)
                .map_err(|e| anyhow::anyhow!("--pidfile {}: {e}", p.display()))?;
        }
        let shared = std::sync::Arc::new(sluice::app::Shared::new(config));
        *shared.config_path.lock().unwrap_or_else(|p| p.into_inner()) = Some(path.clone());
        if let Some(l) = metrics {
            tokio::spawn(sluice::metrics_http::serve(l, shared.clone()));
        }
        tokio::spawn(reload_on_sighup(shared.clone(), path));
        if let Some(l) = peer_listener {
            tokio::spawn(sluice::session::peer_cancel::serve(l, shared.clone()));
        }
        if let Some(conn) = from_old {
            let runtime = tokio::runtime::Handle::current();
            sluice::takeover::take::receive(conn, shared.clone(), runtime);
        }
        if let Some(path) = &socket {
            use std::os::fd::AsFd;
            let mine = listener.as_fd().try_clone_to_owned()?;
            sluice::takeover::give::listen(path, mine, shared.clone())?;
        }
        // The accept loop runs on a worker, not on this thread: a session
        // spawned from a worker starts in that worker's own queue, where one
        // spawned from here would wake a worker (and this thread would be
        // woken per connection) through futexes.
        tokio::spawn(sluice::app::serve(listener, shared, shutdown_signal())).await??;
        if let Some(p) = pidfile
            && std::fs::read_to_string(p).is_ok_and(|s| s == own_pid)
        {
            let _ = std::fs::remove_file(p);
        }
        Ok(())
    })
}

/// Binds `addr`, naming the key and the address when it cannot.
async fn bind_named(
    key: &str,
    addr: std::net::SocketAddr,
) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("{key} {addr}: {e}")))
}

/// The client listener; with `so_reuseport`, several sluice processes
/// bind the same address and the kernel spreads connections among them.
fn bind(addr: std::net::SocketAddr, reuseport: bool) -> std::io::Result<tokio::net::TcpListener> {
    let what =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("listen_addr {addr}: {e}"));
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if reuseport {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr).map_err(what)?;
    // tokio's own default backlog.
    socket.listen(1024)
}

/// SIGHUP re-reads the config file; a bad file is rejected whole and the
/// running config kept.
async fn reload_on_sighup(shared: std::sync::Arc<sluice::app::Shared>, path: PathBuf) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        // Off the runtime's threads, like the console's RELOAD.
        let p = path.clone();
        match tokio::task::spawn_blocking(move || load(&p)).await {
            Ok(Ok(c)) => shared.reload(c),
            Ok(Err(e)) => tracing::error!(
                "reload of {} failed, keeping the running config: {e}",
                path.display()
            ),
            Err(e) => tracing::error!("reload of {} failed: {e}", path.display()),
        }
    }
}

/// SIGTERM drains (clients finish their transactions); SIGINT stops now.
async fn shutdown_signal() -> sluice::app::Drain {
    use sluice::app::Drain;
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => Drain::Graceful,
        _ = tokio::signal::ctrl_c() => Drain::Immediate,
    }
}

// jemalloc: its per-thread caches serve the few allocations left per
// transaction and per login (a transaction's future is past glibc's 1 KiB
// tcache limit), and it leaves less per idle client. Measured: -2% user
// instructions per select-only transaction, -12% per md5 login, 2,730 ->
// 2,535 B per idle client (README, Performance). mimalloc was worse.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
