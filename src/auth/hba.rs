//! `auth_hba_file`: a pg_hba.conf subset deciding, per connection type,
//! database, user and client address, how a client must authenticate.
//! First matching line wins; no match refuses, as in PostgreSQL.
//!
//! ```text
//! # type      database  user          address        method
//! hostssl     app       all           10.0.0.0/8     scram-sha-256
//! host        all       reporting     127.0.0.1/32   md5
//! host        all       all           0.0.0.0/0      reject
//! ```

use std::net::IpAddr;

use crate::net::cidr::Cidr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnType {
    Host,
    HostSsl,
    HostNoSsl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HbaMethod {
    ScramSha256,
    Md5,
    Trust,
    Cert,
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    conn: ConnType,
    databases: Option<Vec<String>>,
    users: Option<Vec<String>>,
    address: Option<Cidr>,
    method: HbaMethod,
}

/// Parsed rules, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hba {
    rules: Vec<Rule>,
}

fn names(field: &str) -> Option<Vec<String>> {
    (field != "all").then(|| field.split(',').map(str::to_string).collect())
}

impl Hba {
    /// Parses the file's text; problems name their line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            let bad = |m: &str| format!("line {}: {m}: {raw}", i + 1);
            let [conn, db, user, addr, method] = f[..] else {
                return Err(bad("expected: type database user address method"));
            };
            let conn = match conn {
                "host" => ConnType::Host,
                "hostssl" => ConnType::HostSsl,
                "hostnossl" => ConnType::HostNoSsl,
                _ => return Err(bad("type must be host, hostssl or hostnossl")),
            };
            let address = match addr {
                "all" => None,
                a => Some(
                    Cidr::parse(a)
                        .ok_or_else(|| bad("address must be all or a CIDR like 10.0.0.0/8"))?,
                ),
            };
            let method = match method {
                "scram-sha-256" => HbaMethod::ScramSha256,
                "md5" => HbaMethod::Md5,
                "trust" => HbaMethod::Trust,
                "reject" => HbaMethod::Reject,
                "cert" => HbaMethod::Cert,
                _ => {
                    return Err(bad(
                        "method must be scram-sha-256, md5, cert, trust or reject",
                    ));
                }
            };
            rules.push(Rule {
                conn,
                databases: names(db),
                users: names(user),
                address,
                method,
            });
        }
        Ok(Self { rules })
    }

    /// The method for a connection, or None when no line matches.
    pub fn method(
        &self,
        tls: bool,
        database: &str,
        user: &str,
        ip: Option<IpAddr>,
    ) -> Option<HbaMethod> {
        let listed =
            |l: &Option<Vec<String>>, v: &str| l.as_ref().is_none_or(|l| l.iter().any(|x| x == v));
        self.rules
            .iter()
            .find(|r| {
                let conn_ok = match r.conn {
                    ConnType::Host => true,
                    ConnType::HostSsl => tls,
                    ConnType::HostNoSsl => !tls,
                };
                let addr_ok = match (&r.address, ip) {
                    (None, _) => true,
                    (Some(c), Some(ip)) => c.contains(ip),
                    (Some(_), None) => false,
                };
                conn_ok && addr_ok && listed(&r.databases, database) && listed(&r.users, user)
            })
            .map(|r| r.method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "
        # comment
        hostssl   app        all      127.0.0.1/32  scram-sha-256
        host      app,other  trusted  127.0.0.0/8   trust
        hostnossl all        bad      all           reject
        host      all        all      ::1/128       md5
        host      app        all      10.0.0.0/8    md5
    ";

    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    #[test]
    fn first_match_wins() {
        let h = Hba::parse(FILE).unwrap();
        assert_eq!(
            h.method(true, "app", "x", ip("127.0.0.1")),
            Some(HbaMethod::ScramSha256)
        );
        assert_eq!(
            h.method(false, "app", "trusted", ip("127.0.0.9")),
            Some(HbaMethod::Trust)
        );
        assert_eq!(
            h.method(false, "other", "trusted", ip("127.0.0.9")),
            Some(HbaMethod::Trust)
        );
        assert_eq!(
            h.method(false, "app", "bad", ip("10.1.2.3")),
            Some(HbaMethod::Reject)
        );
        assert_eq!(
            h.method(true, "app", "bad", ip("10.1.2.3")),
            Some(HbaMethod::Md5)
        );
        assert_eq!(h.method(false, "app", "x", ip("::1")), Some(HbaMethod::Md5));
        assert_eq!(h.method(false, "zzz", "x", ip("10.1.2.3")), None);
        assert_eq!(h.method(false, "app", "x", ip("11.0.0.1")), None);
    }

    #[test]
    fn cidr_edges() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.255.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nope/8").is_none());
    }

    #[test]
    fn problems_name_the_line() {
        let e = Hba::parse("host all all 1.2.3.4/32 md5\nhost all all bogus md5").unwrap_err();
        assert!(e.starts_with("line 2"), "{e}");
        assert!(Hba::parse("local all all trust").is_err());
        assert!(Hba::parse("host all all all cert").is_ok());
        assert!(
            Hba::parse("host all all all ident")
                .unwrap_err()
                .contains("method")
        );
    }
}
