//! A client's session as it moves between processes: who it is, its cancel
//! key, its settings, its prepared statements and any bytes it sent that
//! sluice had read. Pure: encoded and decoded here, sent by `give`.

/// One statement the client prepared by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub name: Vec<u8>,
    /// Its name on servers (without a schema generation).
    pub global: String,
    /// The Parse body after the name.
    pub rest: Vec<u8>,
    /// Its row shape as the client was told it, if known.
    pub shape: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Moved {
    pub database: String,
    pub user: String,
    pub application_name: String,
    pub pid: i32,
    pub secret: i32,
    /// Parameters the client was told (ParameterStatus).
    pub reported: Vec<(String, String)>,
    /// Other settings it made: name, whether SQL text (`SET`) or a plain
    /// value (startup), value.
    pub extra: Vec<(String, bool, String)>,
    pub statements: Vec<Statement>,
    /// Its unnamed statement's Parse body.
    pub unnamed: Option<Vec<u8>>,
    /// What it sent that sluice had read and not yet acted on.
    pub buffered: Vec<u8>,
}

fn put(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = u32::from_be_bytes(self.0.get(..4)?.try_into().ok()?) as usize;
        let b = self.0.get(4..4 + n)?;
        self.0 = &self.0[4 + n..];
        Some(b)
    }

    fn text(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }

    fn u8(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }

    fn i32(&mut self) -> Option<i32> {
        let v = i32::from_be_bytes(self.0.get(..4)?.try_into().ok()?);
        self.0 = &self.0[4..];
        Some(v)
    }

    fn u64(&mut self) -> Option<u64> {
        let v = u64::from_be_bytes(self.0.get(..8)?.try_into().ok()?);
        self.0 = &self.0[8..];
        Some(v)
    }

    fn count(&mut self) -> Option<usize> {
        self.i32().and_then(|n| usize::try_from(n).ok())
    }
}

impl Moved {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.buffered.len());
        for s in [&self.database, &self.user, &self.application_name] {
            put(&mut out, s.as_bytes());
        }
        out.extend_from_slice(&self.pid.to_be_bytes());
        out.extend_from_slice(&self.secret.to_be_bytes());
        out.extend_from_slice(&(self.reported.len() as i32).to_be_bytes());
        for (k, v) in &self.reported {
            put(&mut out, k.as_bytes());
            put(&mut out, v.as_bytes());
        }
        out.extend_from_slice(&(self.extra.len() as i32).to_be_bytes());
        for (k, sql, v) in &self.extra {
            put(&mut out, k.as_bytes());
            out.push(u8::from(*sql));
            put(&mut out, v.as_bytes());
        }
        out.extend_from_slice(&(self.statements.len() as i32).to_be_bytes());
        for s in &self.statements {
            put(&mut out, &s.name);
            put(&mut out, s.global.as_bytes());
            put(&mut out, &s.rest);
            match s.shape {
                Some(v) => {
                    out.push(1);
                    out.extend_from_slice(&v.to_be_bytes());
                }
                None => out.push(0),
            }
        }
        match &self.unnamed {
            Some(u) => {
                out.push(1);
                put(&mut out, u);
            }
            None => out.push(0),
        }
        put(&mut out, &self.buffered);
        out
    }

    /// None when `b` is not a whole encoding.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let mut r = Reader(b);
        let mut m = Moved {
            database: r.text()?,
            user: r.text()?,
            application_name: r.text()?,
            pid: r.i32()?,
            secret: r.i32()?,
            ..Moved::default()
        };
        for _ in 0..r.count()? {
            m.reported.push((r.text()?, r.text()?));
        }
        for _ in 0..r.count()? {
            let k = r.text()?;
            let sql = r.u8()? == 1;
            m.extra.push((k, sql, r.text()?));
        }
        for _ in 0..r.count()? {
            m.statements.push(Statement {
                name: r.bytes()?.to_vec(),
                global: r.text()?,
                rest: r.bytes()?.to_vec(),
                shape: match r.u8()? {
                    0 => None,
                    _ => Some(r.u64()?),
                },
            });
        }
        m.unnamed = match r.u8()? {
            0 => None,
            _ => Some(r.bytes()?.to_vec()),
        };
        m.buffered = r.bytes()?.to_vec();
        r.0.is_empty().then_some(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_survives_its_encoding_and_damage_is_refused() {
        let m = Moved {
            database: "app".into(),
            user: "alice".into(),
            application_name: "psql".into(),
            pid: 0x4000_0001,
            secret: -5,
            reported: vec![("TimeZone".into(), "UTC".into())],
            extra: vec![("search_path".into(), true, "'a', b".into())],
            statements: vec![Statement {
                name: b"s1".to_vec(),
                global: "sluice_00".into(),
                rest: b"SELECT $1\0\0\0".to_vec(),
                shape: Some(7),
            }],
            unnamed: Some(b"SELECT 1\0\0\0".to_vec()),
            buffered: b"Q\0\0\0\x0dSELECT 1\0".to_vec(),
        };
        let b = m.encode();
        assert_eq!(Moved::decode(&b), Some(m.clone()));
        for cut in 0..b.len() {
            assert_eq!(Moved::decode(&b[..cut]), None, "cut at {cut}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert_eq!(Moved::decode(&longer), None);
        assert_eq!(
            Moved::decode(&Moved::default().encode()),
            Some(Moved::default())
        );
    }
}
