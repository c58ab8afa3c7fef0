//! What a pool remembers of its logins: the parameters its servers report
//! at login (one shared map for all of them), and, for transaction pooling,
//! what a client login with given startup settings led to, so that the next
//! login with the same settings is answered without a server (as PgBouncer
//! answers logins from its cached parameters).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::server::Params;
use crate::session::vars::SessionVars;

/// Distinct startup settings remembered per pool; more start the map anew.
const MAX_WELCOMES: usize = 64;

type Settings = Vec<(String, String)>;

#[derive(Debug, Default)]
pub struct LoginMemory {
    /// The parameters this pool's servers last reported at login.
    params: Mutex<Option<Params>>,
    /// By startup settings: the login parameters they were learnt on, and
    /// the session they led to.
    welcomes: Mutex<HashMap<Settings, (Params, SessionVars)>>,
}

impl LoginMemory {
    /// `params` as a server reported them at login, or the equal map the
    /// pool's servers already share. Different ones become the pool's, which
    /// makes what was learnt on the old ones stale.
    pub fn share(&self, params: Params) -> Params {
        let mut known = self.params.lock().unwrap_or_else(PoisonError::into_inner);
        match &*known {
            Some(k) if **k == *params => k.clone(),
            _ => {
                *known = Some(params.clone());
                params
            }
        }
    }

    fn current(&self) -> Option<Params> {
        let known = self.params.lock().unwrap_or_else(PoisonError::into_inner);
        known.clone()
    }

    /// The session a login with `settings` starts with, when an earlier one
    /// learnt it on servers that still log in with the same parameters.
    pub fn welcome(&self, settings: &[(String, String)]) -> Option<SessionVars> {
        let current = self.current()?;
        let welcomes = self.welcomes.lock().unwrap_or_else(PoisonError::into_inner);
        let (learnt_on, vars) = welcomes.get(settings)?;
        Arc::ptr_eq(learnt_on, &current).then(|| vars.clone())
    }

    /// Remembers that a login with `settings`, on a server that had logged
    /// in with `learnt_on`, led to `vars`.
    pub fn learn(&self, settings: Settings, learnt_on: &Params, vars: &SessionVars) {
        if self.current().is_none_or(|c| !Arc::ptr_eq(&c, learnt_on)) {
            return;
        }
        let mut welcomes = self.welcomes.lock().unwrap_or_else(PoisonError::into_inner);
        if welcomes.len() >= MAX_WELCOMES && !welcomes.contains_key(&settings) {
            welcomes.clear();
        }
        welcomes.insert(settings, (learnt_on.clone(), vars.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::params_of as params;

    fn settings(kv: &[(&str, &str)]) -> Settings {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn servers_with_equal_login_parameters_share_one_map() {
        let m = LoginMemory::default();
        let a = m.share(params(&[("TimeZone", "UTC")]));
        let b = m.share(params(&[("TimeZone", "UTC")]));
        assert!(Arc::ptr_eq(&a, &b));
        let c = m.share(params(&[("TimeZone", "Asia/Tokyo")]));
        assert!(!Arc::ptr_eq(&a, &c));
    }

    #[test]
    fn a_login_like_an_earlier_one_is_welcomed_until_the_servers_change() {
        let m = LoginMemory::default();
        let login = m.share(params(&[("TimeZone", "UTC")]));
        let app = settings(&[("application_name", "a")]);
        assert!(m.welcome(&app).is_none(), "nothing learnt yet");

        let vars = SessionVars {
            reported: params(&[("TimeZone", "UTC"), ("application_name", "a")]),
            ..Default::default()
        };
        m.learn(app.clone(), &login, &vars);
        assert_eq!(m.welcome(&app), Some(vars.clone()));
        assert!(
            m.welcome(&settings(&[("application_name", "b")])).is_none(),
            "other settings are not"
        );

        // A server logs in with other parameters (a restart with a new
        // configuration): what was learnt is stale, and so is a login
        // finished on an older server.
        m.share(params(&[("TimeZone", "Asia/Tokyo")]));
        assert!(m.welcome(&app).is_none());
        m.learn(app.clone(), &login, &vars);
        assert!(m.welcome(&app).is_none());
    }

    #[test]
    fn the_memory_is_bounded() {
        let m = LoginMemory::default();
        let login = m.share(params(&[]));
        let vars = SessionVars::default();
        for i in 0..=MAX_WELCOMES {
            m.learn(
                settings(&[("application_name", &i.to_string())]),
                &login,
                &vars,
            );
        }
        let held = m.welcomes.lock().map(|w| w.len()).unwrap_or_default();
        assert!(held <= MAX_WELCOMES, "{held} remembered");
    }
}
