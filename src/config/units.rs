//! Durations and sizes written as strings with units ("30s", "250ms", "256MB").

use std::time::Duration;

/// Parses "250ms", "30s", "5m", "1h", "1d" or "0".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    // A bare number is seconds, as in pgbouncer.ini.
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| format!("invalid duration \"{s}\": too large"));
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid duration \"{s}\": expected a number with a unit, e.g. \"30s\"")
    })?;
    let ms = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        u => {
            return Err(format!(
                "invalid duration \"{s}\": unknown unit \"{u}\" (use ms, s, m, h, d)"
            ));
        }
    };
    n.checked_mul(ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("invalid duration \"{s}\": too large"))
}

/// Parses "256MB", "64kB", "1GB", "512B" or a plain byte count.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num.parse().map_err(|_| {
        format!("invalid size \"{s}\": expected a number with a unit, e.g. \"256MB\"")
    })?;
    let mult: usize = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        u => {
            return Err(format!(
                "invalid size \"{s}\": unknown unit \"{u}\" (use B, kB, MB, GB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid size \"{s}\": too large"))
}

/// A duration key's value as the validator reads it: a string (`"30s"`)
/// as it is, or a bare TOML number of seconds (`30`, as PgBouncer's
/// config takes them) as its text.
pub fn seconds_or_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Value {
        Text(String),
        Seconds(u64),
        Float(f64),
    }
    Ok(match <Value as serde::Deserialize>::deserialize(d)? {
        Value::Text(t) => t,
        Value::Seconds(n) => n.to_string(),
        // 0.5: half a second.
        Value::Float(f) if f >= 0.0 && f.is_finite() => {
            format!("{}ms", (f * 1000.0).round() as u64)
        }
        Value::Float(f) => f.to_string(),
    })
}

/// `seconds_or_text` for an optional key.
pub fn opt_seconds_or_text<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    seconds_or_text(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)), "seconds");
        assert!(parse_duration("1.5").is_err());
        assert!(parse_duration("3x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn duration_keys_take_bare_seconds_as_pgbouncer_ini_does() {
        let g: super::super::raw::RawGeneral = toml::from_str(
            "query_wait_timeout = 30\nshutdown_timeout = 0.5\nserver_lifetime = \"1h\"",
        )
        .unwrap();
        assert_eq!(
            parse_duration(&g.query_wait_timeout),
            Ok(Duration::from_secs(30))
        );
        assert_eq!(
            parse_duration(&g.shutdown_timeout),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(
            parse_duration(&g.server_lifetime),
            Ok(Duration::from_secs(3600))
        );
        let bad: Result<super::super::raw::RawGeneral, _> = toml::from_str("query_timeout = -1");
        let e = bad.map(|g| parse_duration(&g.query_timeout));
        assert!(!matches!(e, Ok(Ok(_))), "a negative number is no duration");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256MB"), Ok(256 << 20));
        assert_eq!(parse_size("64kB"), Ok(64 << 10));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("1TB").is_err());
        assert!(parse_size("MB").is_err());
    }
}
