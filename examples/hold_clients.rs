//! Holds COUNT logged-in, idle client connections open until stdin closes.
//! Used by `benches/load/run.sh` to measure a pooler's memory per idle client.
//!
//! Usage: hold_clients HOST PORT USER PASSWORD DBNAME COUNT [CONCURRENCY]
//! Prints `ready N` once N connections are up (N < COUNT if some failed,
//! with the first error on stderr), then waits for EOF on stdin. With
//! HOLD_QUERY set, each client runs that query once before going idle.

use futures_util::{StreamExt, stream};
use std::io::Read;
use tokio_postgres::{Client, Config, NoTls};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 6 {
        anyhow::bail!("usage: hold_clients HOST PORT USER PASSWORD DBNAME COUNT [CONCURRENCY]");
    }
    let count: usize = args[5].parse()?;
    let concurrency: usize = args.get(6).map_or(Ok(100), |c| c.parse())?;
    let mut config = Config::new();
    config
        .host(&args[0])
        .port(args[1].parse()?)
        .user(&args[2])
        .password(&args[3])
        .dbname(&args[4]);

    let query = std::env::var("HOLD_QUERY").ok();
    let results: Vec<Result<Client, tokio_postgres::Error>> = stream::iter(0..count)
        .map(|_| {
            let config = config.clone();
            let query = query.clone();
            async move {
                let (client, conn) = config.connect(NoTls).await?;
                tokio::spawn(conn);
                if let Some(q) = query {
                    client.simple_query(&q).await?;
                }
                Ok(client)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut clients = Vec::with_capacity(count);
    let mut first_error = None;
    for r in results {
        match r {
            Ok(c) => clients.push(c),
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    if let Some(e) = first_error {
        eprintln!(
            "hold_clients: {} of {count} failed, first: {e}",
            count - clients.len()
        );
    }
    println!("ready {}", clients.len());
    // Block this thread until stdin closes; the connection tasks stay idle.
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await?;
    drop(clients);
    Ok(())
}
