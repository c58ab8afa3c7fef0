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

/// The query that reads a server's session-level settings after a
/// transaction that may have changed them in ways sluice could not follow
/// (`SettingsWatch`): pg_settings' session rows, the role (which
/// pg_settings does not list), and the custom settings `custom` names
/// (nor those). One round trip, and only after such a transaction.
pub fn learn_sql<'a>(custom: impl Iterator<Item = &'a str>) -> String {
    let mut sql = String::from(
        "SELECT name, setting FROM pg_catalog.pg_settings WHERE source = 'session' \
         UNION ALL SELECT 'role', r FROM pg_catalog.current_setting('role') AS r WHERE r <> 'none'",
    );
    for name in custom {
        let n = literal(name);
        sql.push_str(&format!(
            " UNION ALL SELECT {n}, v FROM pg_catalog.current_setting({n}, true) AS v WHERE v <> ''"
        ));
    }
    sql
}

/// Custom settings whose value `learn_sql` must ask for by name: the
/// client's own and the server's, and those set_config calls named.
/// sluice's own (`sluice.route`) never reach the server as such.
pub fn custom_names<'a>(
    client: &'a BTreeMap<String, Setting>,
    server: &'a BTreeMap<String, Setting>,
    named: &'a [String],
) -> Vec<&'a str> {
    let mut names: Vec<&str> = client
        .keys()
        .chain(server.keys())
        .chain(named)
        .map(String::as_str)
        .filter(|n| n.contains('.') && !n.starts_with("sluice."))
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// The client's settings beyond the reported parameters as the server
/// holds them (`rows` from `learn_sql`): what transaction pooling applies
/// for it on other servers, and what the server must be brought back from.
/// Reported parameters are left out (ParameterStatus follows them), and
/// sluice's own settings are kept from `before`.
pub fn learned(
    rows: Vec<(String, String)>,
    reported: &crate::server::Params,
    before: &BTreeMap<String, Setting>,
) -> BTreeMap<String, Setting> {
    let mut out: BTreeMap<String, Setting> = before
        .iter()
        .filter(|(k, _)| k.starts_with("sluice."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (name, value) in rows {
        let name = name.to_ascii_lowercase();
        if reported.keys().any(|k| k.eq_ignore_ascii_case(&name)) || !safe_name(&name) {
            continue;
        }
        out.insert(name, Setting::Text(value));
    }
    out
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
    fn learnt_settings_leave_reported_ones_and_keep_sluices_own() {
        let reported = crate::server::params_of(&[("TimeZone", "UTC")]);
        let mut before = BTreeMap::new();
        before.insert("sluice.route".to_string(), Setting::Sql("'replica'".into()));
        before.insert("work_mem".to_string(), Setting::Sql("'8MB'".into()));
        let rows = vec![
            ("search_path".to_string(), "s1".to_string()),
            ("timezone".to_string(), "Asia/Tokyo".to_string()),
            ("role".to_string(), "app".to_string()),
            ("MyApp.Id".to_string(), "42".to_string()),
        ];
        let got = learned(rows, &reported, &before);
        let want: BTreeMap<String, Setting> = [
            ("myapp.id", Setting::Text("42".into())),
            ("role", Setting::Text("app".into())),
            ("search_path", Setting::Text("s1".into())),
            ("sluice.route", Setting::Sql("'replica'".into())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(got, want, "work_mem was reset on the server: it is gone");
        assert_eq!(
            custom_names(&got, &before, &["a.b".to_string(), "plain".to_string()]),
            vec!["a.b", "myapp.id"]
        );
        assert!(learn_sql(["a.b"].into_iter()).contains("current_setting(E'a.b', true)"));
    }

    #[test]
    fn literals_escape_quotes_and_backslashes() {
        assert_eq!(literal(r"it's a \ test"), r"E'it''s a \\ test'");
    }
}
