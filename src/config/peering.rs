//! `peer_id`, `[peers]`, `peers_dns`, `peer_listen_addr` and `so_reuseport`:
//! how this instance finds the others behind the same load balancer (for
//! cancel requests) and shares its listening port with them.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::HostPort;
use super::raw::RawGeneral;

/// The largest peer id: it takes 14 bits of the cancel key's secret.
pub const MAX_PEER_ID: u16 = 16383;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peering {
    /// This instance's id, written into its cancel keys (0: none; then only
    /// `dns` finds the others). Read at start only.
    pub id: u16,
    /// The other instances by id (this one may be listed too).
    pub peers: BTreeMap<u16, HostPort>,
    /// `name:port` resolving to every instance (a Kubernetes headless
    /// Service): a cancel request for a key this instance does not know is
    /// passed to each of them.
    pub dns: Option<HostPort>,
    /// A second listener of this instance alone, for peers to reach it
    /// when `so_reuseport` shares `listen_addr` between processes.
    pub listen_addr: Option<SocketAddr>,
    /// Bind `listen_addr` with SO_REUSEPORT. Read at start only.
    pub so_reuseport: bool,
    /// The Unix socket a new process (`sluice --takeover`) asks on for this
    /// one's listener and clients. Read at start only.
    pub takeover_socket: Option<std::path::PathBuf>,
}

impl Peering {
    pub fn enabled(&self) -> bool {
        !self.peers.is_empty() || self.dns.is_some()
    }
}

pub fn peering(
    g: &RawGeneral,
    raw: &BTreeMap<String, String>,
    add: &mut impl FnMut(String, String),
) -> Option<Peering> {
    let mut ok = true;
    let id = match u16::try_from(g.peer_id) {
        Ok(id) if id <= MAX_PEER_ID => id,
        _ => {
            add(
                "general.peer_id".into(),
                format!("must be between 0 (no peering) and {MAX_PEER_ID}"),
            );
            ok = false;
            0
        }
    };
    let mut peers = BTreeMap::new();
    for (k, v) in raw {
        let key = format!("peers.{k}");
        let n = match k.parse::<u16>() {
            Ok(n) if (1..=MAX_PEER_ID).contains(&n) => n,
            _ => {
                add(
                    key,
                    format!("a peer id must be between 1 and {MAX_PEER_ID}"),
                );
                ok = false;
                continue;
            }
        };
        match super::validate::host_port(v) {
            Ok(hp) => {
                peers.insert(n, hp);
            }
            Err(e) => {
                add(key, e);
                ok = false;
            }
        }
    }
    let dns = g.peers_dns.as_deref().and_then(|d| {
        super::validate::host_port(d)
            .map_err(|e| {
                add("general.peers_dns".into(), e);
                ok = false;
            })
            .ok()
    });
    let listen_addr = g.peer_listen_addr.as_deref().and_then(|a| {
        a.parse::<SocketAddr>()
            .map_err(|e| {
                add(
                    "general.peer_listen_addr".into(),
                    format!("\"{a}\" is not an address:port ({e})"),
                );
                ok = false;
            })
            .ok()
    });
    if !peers.is_empty() && id == 0 {
        add(
            "general.peer_id".into(),
            "[peers] needs a peer_id (1 to 16383) unique to this instance".into(),
        );
        ok = false;
    }
    ok.then_some(Peering {
        id,
        peers,
        dns,
        listen_addr,
        so_reuseport: g.so_reuseport,
        takeover_socket: g.takeover_socket.as_ref().map(std::path::PathBuf::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(general: &str, peers: &[(&str, &str)]) -> Result<Peering, Vec<String>> {
        let g: RawGeneral = toml::from_str(general).unwrap();
        let raw = peers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut problems = Vec::new();
        let p = peering(&g, &raw, &mut |k, m| problems.push(format!("{k}: {m}")));
        p.ok_or(problems)
    }

    #[test]
    fn peers_need_an_id_and_addresses() {
        let p = parse(
            "peer_id = 2\npeers_dns = \"sluice-peers:6432\"",
            &[("1", "10.0.0.1:6432"), ("2", "10.0.0.2:6432")],
        )
        .unwrap();
        assert_eq!(p.id, 2);
        assert_eq!(p.peers[&1].to_string(), "10.0.0.1:6432");
        assert_eq!(p.dns.unwrap().host, "sluice-peers");
        assert!(parse("", &[]).is_ok_and(|p| !p.enabled()));
        let errs = parse(
            "peer_id = 20000\npeer_listen_addr = \"nowhere\"",
            &[("0", "a:1"), ("x", "a:1"), ("3", "no-port")],
        )
        .unwrap_err();
        assert_eq!(errs.len(), 5, "{errs:?}");
        let errs = parse("", &[("1", "a:1")]).unwrap_err();
        assert!(errs[0].contains("needs a peer_id"), "{errs:?}");
    }
}
