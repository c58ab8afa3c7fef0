//! A real PostgreSQL primary and streaming replica from the system's
//! binaries, in a temporary directory on free ports. When the tests run as
//! root, the server programs run as the `postgres` OS user.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Test roles: name, password, pg_hba method.
pub const SCRAM_USER: (&str, &str) = ("sluice_scram", "scram_pw");
pub const MD5_USER: (&str, &str) = ("sluice_md5", "md5_pw");
pub const PLAIN_USER: (&str, &str) = ("sluice_plain", "plain_pw");
pub const TRUST_USER: &str = "sluice_trust";
/// Allowed in only over TLS (hostssl), refused without.
pub const TLS_USER: (&str, &str) = ("sluice_tls", "tls_pw");
pub const DB: &str = "app";

pub fn pg_bin(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BINDIR") {
        return Path::new(&dir).join(name);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    match dirs.into_iter().rev().find(|d| d.join(name).exists()) {
        Some(d) => d.join(name),
        None => PathBuf::from(name),
    }
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A command for a PostgreSQL server program, as `postgres` when we are root.
fn pg_command(name: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(pg_bin(name));
        c
    } else {
        Command::new(pg_bin(name))
    }
}

fn run(c: &mut Command, what: &str) {
    let out = c
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn give_to_postgres(path: &Path) {
    if is_root() {
        run(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(path),
            "chown",
        );
    }
}

const HBA: &str = "\
local all all trust
host all postgres 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
host all sluice_trust 127.0.0.1/32 trust
host all sluice_md5 127.0.0.1/32 md5
host all sluice_plain 127.0.0.1/32 password
hostssl all sluice_tls 127.0.0.1/32 scram-sha-256
hostnossl all sluice_tls 127.0.0.1/32 reject
host all all 127.0.0.1/32 scram-sha-256
";

/// initdb once per test process; clusters copy this directory.
fn template() -> &'static PathBuf {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("sluice-it-{}", std::process::id()));
        std::fs::create_dir_all(&root).expect("temp dir");
        give_to_postgres(&root);
        let data = root.join("template");
        let mut c = pg_command("initdb");
        c.arg("-D").arg(&data).args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"]);
        run(&mut c, "initdb");
        std::fs::write(data.join("pg_hba.conf"), HBA).expect("write pg_hba.conf");
        let certs = super::certs::certs();
        std::fs::copy(&certs.cert, data.join("server.crt")).expect("copy server.crt");
        std::fs::copy(&certs.key, data.join("server.key")).expect("copy server.key");
        std::fs::set_permissions(data.join("server.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod server.key");
        let conf = "listen_addresses = '127.0.0.1'\nfsync = off\nfull_page_writes = off\n\
                    synchronous_commit = off\nmax_connections = 300\nshared_buffers = 32MB\n\
                    max_wal_senders = 40\nmax_replication_slots = 40\nwal_level = logical\nhot_standby = on\nlogging_collector = off\n\
                    log_min_messages = warning\nssl = on\n";
        append(&data.join("postgresql.conf"), conf);
        give_to_postgres(&root);
        spawn_reaper(&root);
        data
    })
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open config");
    f.write_all(text.as_bytes()).expect("append config");
}

/// Stops every server under `root` and removes it once this process exits,
/// whether it exits cleanly, panics or is killed.
fn spawn_reaper(root: &Path) {
    let pg_ctl = pg_bin("pg_ctl");
    let stop = if is_root() {
        format!("runuser -u postgres -- {}", pg_ctl.display())
    } else {
        pg_ctl.display().to_string()
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
         for f in $(find {root} -name postmaster.pid); do {stop} -D \"$(dirname $f)\" -m immediate stop; done; \
         rm -rf {root}",
        pid = std::process::id(),
        root = root.display(),
    );
    let _ = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

/// One running PostgreSQL server.
pub struct PgInstance {
    pub port: u16,
    pub data: PathBuf,
}

impl PgInstance {
    fn start(data: &Path, port: u16) -> Self {
        append(
            &data.join("postgresql.conf"),
            &format!(
                "port = {port}\nunix_socket_directories = '{}'\n",
                data.display()
            ),
        );
        let mut c = pg_command("pg_ctl");
        c.arg("-D")
            .arg(data)
            .arg("-l")
            .arg(data.join("server.log"))
            .args(["-w", "-t", "60", "start"]);
        run(&mut c, "pg_ctl start");
        Self {
            port,
            data: data.to_path_buf(),
        }
    }

    /// `pg_ctl stop -m fast`, waiting until it is down.
    pub fn stop(&self) {
        let mut c = pg_command("pg_ctl");
        c.arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"]);
        run(&mut c, "pg_ctl stop");
    }

    /// `pg_ctl restart -m MODE` (fast or immediate), waiting until it is up.
    pub fn restart(&self, mode: &str) {
        let mut c = pg_command("pg_ctl");
        c.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.data.join("server.log"))
            .args(["-m", mode, "-w", "-t", "60", "restart"]);
        run(&mut c, "pg_ctl restart");
    }

    /// `pg_ctl promote`: a replica becomes a primary.
    pub fn promote(&self) {
        let mut c = pg_command("pg_ctl");
        c.arg("-D").arg(&self.data).args(["-w", "promote"]);
        run(&mut c, "pg_ctl promote");
    }

    /// Stops every process of the server with SIGSTOP, as a network
    /// partition or a hung host would: connections stay open and nothing
    /// answers. Dropping the guard sends SIGCONT.
    pub fn freeze(&self) -> Frozen {
        let pids = self.pids();
        signal(&pids, "-STOP");
        Frozen(pids)
    }

    /// The postmaster and its children.
    fn pids(&self) -> Vec<String> {
        let pid_file = std::fs::read_to_string(self.data.join("postmaster.pid")).unwrap();
        let postmaster = pid_file.lines().next().unwrap().trim().to_string();
        let out = Command::new("ps")
            .args(["-o", "pid=", "--ppid", &postmaster])
            .output()
            .unwrap();
        let mut pids = vec![postmaster];
        pids.extend(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(String::from),
        );
        pids
    }

    /// Starts a stopped server again on its port.
    pub fn start_again(&self) {
        let mut c = pg_command("pg_ctl");
        c.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.data.join("server.log"))
            .args(["-w", "-t", "60", "start"]);
        run(&mut c, "pg_ctl start");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("server.log")).unwrap_or_default()
    }

    /// The password secret PostgreSQL stores for `role` (pg_authid.rolpassword).
    pub fn rolpassword(&self, role: &str) -> String {
        self.psql(
            "postgres",
            &format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'"),
        )
    }

    /// Runs SQL as the superuser with psql; returns stdout.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(pg_bin("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .args(["-p", &self.port.to_string(), "-d", db, "-c", sql])
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

pub struct Cluster {
    pub primary: PgInstance,
    pub replica: PgInstance,
    root: PathBuf,
    owned: bool,
}

impl Cluster {
    /// A new primary (with the test roles and database) and its streaming replica.
    pub fn start() -> Self {
        Self::start_with_replica_conf("")
    }

    /// `start`, with `conf` added to the replica's postgresql.conf.
    pub fn start_with_replica_conf(conf: &str) -> Self {
        let tpl = template();
        let root = tpl
            .parent()
            .expect("template parent")
            .join(format!("c{}", free_port()));
        std::fs::create_dir_all(&root).expect("cluster dir");
        let pdata = root.join("primary");
        run(
            Command::new("cp").arg("-a").arg(tpl).arg(&pdata),
            "copy template",
        );
        give_to_postgres(&root);
        let primary = PgInstance::start(&pdata, free_port());
        primary.psql(
            "postgres",
            &format!(
                "CREATE ROLE {s} LOGIN SUPERUSER PASSWORD '{sp}';\
                 SET password_encryption = 'md5'; CREATE ROLE {m} LOGIN SUPERUSER PASSWORD '{mp}';\
                 RESET password_encryption; CREATE ROLE {p} LOGIN SUPERUSER PASSWORD '{pp}';\
                 CREATE ROLE {t} LOGIN SUPERUSER; CREATE ROLE {tls} LOGIN SUPERUSER PASSWORD '{tlsp}';",
                s = SCRAM_USER.0,
                sp = SCRAM_USER.1,
                m = MD5_USER.0,
                mp = MD5_USER.1,
                p = PLAIN_USER.0,
                pp = PLAIN_USER.1,
                t = TRUST_USER,
                tls = TLS_USER.0,
                tlsp = TLS_USER.1,
            ),
        );
        primary.psql(
            "postgres",
            &format!("CREATE DATABASE {DB} OWNER {}", SCRAM_USER.0),
        );
        let rdata = root.join("replica");
        let mut c = pg_command("pg_basebackup");
        c.args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
            &primary.port.to_string(),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "-D",
        ])
        .arg(&rdata);
        run(&mut c, "pg_basebackup");
        append(&rdata.join("postgresql.conf"), &format!("{conf}\n"));
        let replica = PgInstance::start(&rdata, free_port());
        Self {
            primary,
            replica,
            root,
            owned: true,
        }
    }

    /// One cluster shared by every test in this process that does not stop
    /// or restart servers; tests isolate themselves by table names.
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(|| {
            let mut c = Cluster::start();
            c.owned = false;
            c
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        if std::thread::panicking() {
            eprintln!("--- primary log ---\n{}", self.primary.log());
        }
        for inst in [&self.replica, &self.primary] {
            let mut c = pg_command("pg_ctl");
            c.arg("-D")
                .arg(&inst.data)
                .args(["-m", "immediate", "stop"]);
            let _ = c.stdin(Stdio::null()).output();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A frozen server (`PgInstance::freeze`), thawed when dropped, also when
/// a test fails.
pub struct Frozen(Vec<String>);

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(&self.0, "-CONT");
    }
}

/// (A backend that exited in between makes kill fail for its pid only.)
fn signal(pids: &[String], sig: &str) {
    let _ = Command::new("kill").arg(sig).args(pids).status();
}
