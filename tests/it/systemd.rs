//! deploy/systemd/sluice.service: systemd-analyze verifies it without a
//! word, and the command line it runs is one the binary takes.

use std::process::Command;

const UNIT: &str = include_str!("../../deploy/systemd/sluice.service");

/// `systemd-analyze verify` of `unit` (with its ExecStart pointed at the
/// built binary): its exit status and whatever it said.
fn verify(unit: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("sluice-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sluice.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/sluice", env!("CARGO_BIN_EXE_sluice")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd; scripts/prereqs.sh --tests installs it)");
    let _ = std::fs::remove_dir_all(&dir);
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), said)
}

#[test]
fn the_unit_verifies_cleanly_and_its_command_line_is_the_binarys() {
    let (ok, said) = verify(UNIT);
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
    // The check can fail: a typo in the unit is reported.
    let (_, said) = verify(&UNIT.replace("Type=exec", "Type=exce"));
    assert!(said.contains("Type") || said.contains("exce"), "{said}");
    // Its ExecStart, with the example config, is a command line sluice takes.
    let exec = UNIT
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/pooler.toml");
    let mut args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    let at = args.iter().position(|a| *a == "--config").unwrap() + 1;
    args[at] = example;
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(&args)
        .arg("check-config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(UNIT.contains("ExecReload=/bin/kill -HUP $MAINPID"));
}
