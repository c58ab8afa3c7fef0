//! sluice under test, in-process through `app::run`, on a free port.

use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::cluster::{Cluster, DB, MD5_USER, PLAIN_USER, SCRAM_USER, TRUST_USER};

/// A config for `cluster` with every test user and the `app` database.
/// `general` lines go into [general]; `extra` is appended verbatim.
pub fn config_for(cluster: &Cluster, general: &str, extra: &str) -> String {
    format!(
        "[general]\nlisten_addr = \"127.0.0.1:0\"\n{general}\n\
         [databases.{DB}]\nprimary = \"127.0.0.1:{p}\"\nreplicas = [\"127.0.0.1:{r}\"]\n\
         [databases.missing_on_server]\nprimary = \"127.0.0.1:{p}\"\ndbname = \"no_such_db\"\n\
         [users.{su}]\npassword = \"{sp}\"\n\
         [users.{mu}]\npassword = \"{mp}\"\n\
         [users.{pu}]\npassword = \"{pp}\"\n\
         [users.{tu}]\npassword = \"any\"\n{extra}",
        p = cluster.primary.port,
        r = cluster.replica.port,
        su = SCRAM_USER.0,
        sp = SCRAM_USER.1,
        mu = MD5_USER.0,
        mp = MD5_USER.1,
        pu = PLAIN_USER.0,
        pp = PLAIN_USER.1,
        tu = TRUST_USER,
    )
}

/// Adds settings to the `app` database's section of a test config.
pub trait AppSetting {
    fn app_setting(self, setting: &str) -> String;
}

impl AppSetting for String {
    fn app_setting(self, setting: &str) -> String {
        self.replace("replicas = [", &format!("{setting}\nreplicas = ["))
    }
}

/// A sluice in `mode` whose `app` pool holds `pool` servers, with extra [general] lines.
pub async fn pooled(mode: &str, pool: usize, general: &str) -> Sluice {
    let toml = config_for(
        super::Cluster::shared(),
        &format!("pool_mode = \"{mode}\"\n{general}"),
        "",
    );
    Sluice::start(&toml.app_setting(&format!("pool_size = {pool}"))).await
}

pub struct Sluice {
    pub port: u16,
    /// The instance's state, for assertions on its stats.
    pub shared: Option<std::sync::Arc<sluice::app::Shared>>,
    stop: Option<oneshot::Sender<()>>,
    serving: Option<tokio::task::JoinHandle<()>>,
}

impl Sluice {
    pub async fn start(toml: &str) -> Self {
        Self::start_on(toml, 0).await
    }

    /// `start` on a port chosen beforehand (0: any free one), for configs
    /// that name it (peers).
    pub async fn start_on(toml: &str, port: u16) -> Self {
        let config = sluice::config::Config::parse(toml).expect("test config is valid");
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (tx, rx) = oneshot::channel::<()>();
        let shared = std::sync::Arc::new(sluice::app::Shared::new(config));
        let serving = shared.clone();
        let handle = tokio::spawn(async move {
            let _ = sluice::app::serve(listener, serving, async {
                let _ = rx.await;
                sluice::app::Drain::Graceful
            })
            .await;
        });
        Self {
            port,
            shared: Some(shared),
            stop: Some(tx),
            serving: Some(handle),
        }
    }

    /// Starts a graceful shutdown (as SIGTERM does); returns the serving
    /// task, which ends once every client has drained.
    pub fn shutdown(&mut self) -> tokio::task::JoinHandle<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.serving.take().expect("a started sluice")
    }

    /// The serving task, to await a shutdown started some other way.
    pub fn shutdown_handle(&mut self) -> tokio::task::JoinHandle<()> {
        self.serving.take().expect("a started sluice")
    }

    pub async fn with(cluster: &Cluster, general: &str) -> Self {
        Self::start(&config_for(cluster, general, "")).await
    }

    /// A libpq-style connection string for `user` through sluice.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={db}",
            self.port
        )
    }

    pub async fn connect(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) =
            tokio_postgres::connect(&self.url(user, password, db), tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Logs in and runs `sql`: the error of whichever fails. In transaction
    /// pooling a login may need no server, so errors about servers (none
    /// free, a cap reached) come at login or at the first query.
    pub async fn first_query(
        &self,
        user: &str,
        password: &str,
        db: &str,
        sql: &str,
    ) -> Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error> {
        self.connect(user, password, db)
            .await?
            .simple_query(sql)
            .await
    }

    /// The default test login: the SCRAM user on `app`.
    pub async fn app(&self) -> tokio_postgres::Client {
        self.connect(SCRAM_USER.0, SCRAM_USER.1, DB)
            .await
            .expect("connect through sluice")
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Polls `f` until it returns true or `secs` pass; panics with `what` on timeout.
pub async fn wait_until<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if f().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
