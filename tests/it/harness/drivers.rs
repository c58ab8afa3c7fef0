//! Real drivers (psycopg, asyncpg, node-postgres) running the scripts in
//! tests/clients, installed once per test process when missing.

use std::process::Command;
use std::sync::OnceLock;

/// Installs a driver (and the Python tools of tests/clients) once per test
/// process if it is missing: "python" or "node".
pub fn ensure(kind: &'static str) {
    static PY: OnceLock<()> = OnceLock::new();
    static NODE: OnceLock<()> = OnceLock::new();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    match kind {
        "python" => PY.get_or_init(|| {
            let have = Command::new("python3")
                // psycopg 3.3 bundles libpq 17 or later (TLS cancel requests).
                .args([
                    "-c",
                    "import psycopg, asyncpg, kubernetes_validate; assert tuple(map(int, psycopg.__version__.split('.')[:2])) >= (3, 3)",
                ])
                .output()
                .is_ok_and(|o| o.status.success());
            if !have {
                run(Command::new("python3")
                    .args(["-m", "pip", "install", "-q", "-U", "-r"])
                    .arg(format!("{dir}/requirements.txt")));
            }
        }),
        _ => NODE.get_or_init(|| {
            if !std::path::Path::new(&format!("{dir}/node_modules/pg")).exists() {
                run(Command::new("npm").args([
                    "install",
                    "--silent",
                    "--no-audit",
                    "--no-fund",
                    "--prefix",
                    dir,
                ]));
            }
        }),
    };
}

/// Runs `script` of tests/clients (installing its driver first) with
/// `args`; it must print a last line ending in "ok".
pub async fn driver(kind: &'static str, program: &str, script: &str, args: &[String]) {
    tokio::task::spawn_blocking(move || ensure(kind))
        .await
        .unwrap();
    let mut cmd = Command::new(program);
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/").to_string() + script)
        .args(args);
    let (stdout, stderr) = crate::harness::run::run_ok(cmd).await;
    assert!(
        stdout.trim_end().ends_with("ok"),
        "{script}:\n{stdout}{stderr}"
    );
}
