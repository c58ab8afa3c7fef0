//! Session settings that must follow a client from server to server in
//! transaction pooling: the parameters PostgreSQL reports (kept as the client
//! was last told them) and the others the client set (startup settings and
//! SET statements), and the SQL that brings a server in line.

use std::collections::BTreeMap;

/// How a setting's value is re-applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    /// A plain string, applied with set_config (startup parameters).
    Text(String),
    /// SQL text from the client's own `SET name TO <value>`.
    Sql(String),
}

/// Reported parameters no client can change; never synced.
const READ_ONLY: &[&str] = &[
    "server_version",
    "server_encoding",
    "integer_datetimes",
    "is_superuser",
    "session_authorization",
    "in_hot_standby",
    "scram_iterations",
];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionVars {
    /// Reported parameters, as the client was last told them.
    pub reported: crate::server::Params,
    /// Other settings, keyed by lowercase name.
    pub extra: BTreeMap<String, Setting>,
}

impl SessionVars {
    pub fn is_reported(&self, name: &str) -> bool {
        self.reported.keys().any(|k| k.eq_ignore_ascii_case(name))
    }
}

/// `s` as an escape-string literal, valid whatever standard_conforming_strings says.
pub fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 3);
    out.push_str("E'");
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

fn safe_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

fn apply_sql(out: &mut Vec<String>, name: &str, s: &Setting) {
    match s {
        Setting::Text(v) => out.push(format!(
            "SELECT pg_catalog.set_config({}, {}, false)",
            literal(name),
            literal(v)
        )),
        Setting::Sql(v) if safe_name(name) => out.push(format!("SET {name} TO {v}")),
        Setting::Sql(_) => {}
    }
}

/// The statements that make a server whose state is (`params`, `extra`)
/// match `client`, or None when it already does.
pub fn sync_sql(
    client: &SessionVars,
    params: &BTreeMap<String, String>,
    extra: &BTreeMap<String, Setting>,
) -> Option<String> {
    // The usual case, a server last used by a client with the same settings:
    // often one shared map (a pointer check), else one ordered walk of each.
    let same_params = std::ptr::eq(&*client.reported, params) || *client.reported == *params;
    if same_params && client.extra == *extra {
        return None;
    }
    let mut out = Vec::new();
    for (k, v) in client.reported.iter() {
        if params.get(k) == Some(v) || READ_ONLY.contains(&k.as_str()) {
            continue;
        }
        apply_sql(&mut out, k, &Setting::Text(v.clone()));
    }
    for (k, s) in &client.extra {
        if extra.get(k) != Some(s) {
            apply_sql(&mut out, k, s);
        }
    }
    for k in extra.keys() {
        if !client.extra.contains_key(k) && safe_name(k) {
            out.push(format!("RESET {k}"));
        }
    }
    (!out.is_empty()).then(|| out.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn nothing_to_do_when_equal() {
        let c = SessionVars {
            reported: map(&[("TimeZone", "UTC")]).into(),
            extra: BTreeMap::new(),
        };
        assert_eq!(
            sync_sql(&c, &map(&[("TimeZone", "UTC")]), &BTreeMap::new()),
            None
        );
    }

    #[test]
    fn differences_are_set_and_strays_reset() {
        let mut c = SessionVars {
            reported: map(&[("TimeZone", "Asia/Tokyo"), ("server_version", "15")]).into(),
            ..Default::default()
        };
        c.extra
            .insert("search_path".into(), Setting::Sql("a, public".into()));
        c.extra
            .insert("statement_timeout".into(), Setting::Text("5s".into()));
        let mut server_extra = BTreeMap::new();
        server_extra.insert("work_mem".to_string(), Setting::Sql("'8MB'".into()));
        let sql = sync_sql(
            &c,
            &map(&[("TimeZone", "UTC"), ("server_version", "14")]),
            &server_extra,
        )
        .unwrap();
        assert_eq!(
            sql,
            "SELECT pg_catalog.set_config(E'TimeZone', E'Asia/Tokyo', false); SET search_path TO a, public; \
             SELECT pg_catalog.set_config(E'statement_timeout', E'5s', false); RESET work_mem"
        );
    }

    #[test]
    fn literals_escape_quotes_and_backslashes() {
        assert_eq!(literal(r"it's a \ test"), r"E'it''s a \\ test'");
    }
}
