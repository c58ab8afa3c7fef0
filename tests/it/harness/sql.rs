//! Reading results of simple queries in tests.

use tokio_postgres::{Client, Error, SimpleQueryMessage};

/// The first column of the first row, if any.
pub fn first_value(msgs: &[SimpleQueryMessage]) -> Option<String> {
    msgs.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    })
}

/// Runs `sql` (simple protocol) and returns its first value ("" with no row).
pub async fn value(c: &Client, sql: &str) -> Result<String, Error> {
    Ok(first_value(&c.simple_query(sql).await?).unwrap_or_default())
}
