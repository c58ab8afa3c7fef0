//! Running client programs (psql, pgbench, driver scripts) off the async runtime.

use std::process::Command;

/// Runs `cmd` to completion on a blocking thread; panics with its output
/// unless it succeeded. Returns (stdout, stderr).
pub async fn run_ok(mut cmd: Command) -> (String, String) {
    let shown = format!("{cmd:?}");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{shown} failed:\n{stdout}{stderr}");
    (stdout, stderr)
}

/// A child process (a sluice binary), killed and reaped when dropped.
pub struct Process(pub std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
