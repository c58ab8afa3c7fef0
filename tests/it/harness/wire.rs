//! A raw wire client for exact protocol assertions and malformed input.

use bytes::{BufMut, BytesMut};
use pgwire::api::auth::sasl::scram::ScramClientAuth;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Wire {
    pub stream: TcpStream,
    buf: BytesMut,
}

/// One backend message: tag and body.
#[derive(Debug, Clone)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    /// A field of an ErrorResponse/NoticeResponse ('C' for the SQLSTATE, 'M' message).
    pub fn field(&self, code: u8) -> Option<String> {
        let mut rest = &self.body[..];
        while let [f, tail @ ..] = rest {
            if *f == 0 {
                return None;
            }
            let end = tail.iter().position(|&b| b == 0)?;
            if *f == code {
                return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
            }
            rest = &tail[end + 1..];
        }
        None
    }
}

pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u32(0);
    b.put_u32(196_608);
    for (k, v) in params {
        b.put_slice(k.as_bytes());
        b.put_u8(0);
        b.put_slice(v.as_bytes());
        b.put_u8(0);
    }
    b.put_u8(0);
    let len = b.len() as u32;
    b[..4].copy_from_slice(&len.to_be_bytes());
    b.to_vec()
}

pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

pub fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', &body)
}

impl Wire {
    pub async fn connect(port: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to sluice");
        Self {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Connects with a small receive buffer, so that a test of a client that
    /// never reads does not depend on the machine's TCP autotuning limits.
    pub async fn connect_small(port: u16) -> Self {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.set_recv_buffer_size(64 * 1024).expect("SO_RCVBUF");
        Self::connect_socket(sock, port).await
    }

    /// Connects from another loopback address (127.0.0.2, say): another client host.
    pub async fn connect_from(source: &str, port: u16) -> Self {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind(format!("{source}:0").parse().expect("source address"))
            .expect("bind source");
        Self::connect_socket(sock, port).await
    }

    async fn connect_socket(sock: tokio::net::TcpSocket, port: u16) -> Self {
        let stream = sock
            .connect(([127, 0, 0, 1], port).into())
            .await
            .expect("connect to sluice");
        Self {
            stream,
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// Next message, or None when the connection closed.
    pub async fn recv(&mut self) -> Option<Msg> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() > len {
                    let m = self.buf.split_to(len + 1);
                    return Some(Msg {
                        tag: m[0],
                        body: m[5..].to_vec(),
                    });
                }
            }
            let n = tokio::time::timeout(
                std::time::Duration::from_secs(30),
                self.stream.read_buf(&mut self.buf),
            )
            .await
            .expect("no reply from sluice within 30s")
            .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    /// Messages up to and including the next one tagged `tag`.
    pub async fn recv_until(&mut self, tag: u8) -> Vec<Msg> {
        let mut v = Vec::new();
        loop {
            let m = self
                .recv()
                .await
                .unwrap_or_else(|| panic!("closed before '{}': got {v:?}", tag as char));
            let done = m.tag == tag;
            v.push(m);
            if done {
                return v;
            }
        }
    }

    /// Logs in with SCRAM (or whatever the server asks) and reads up to ReadyForQuery.
    pub async fn login(
        port: u16,
        user: &str,
        password: &str,
        db: &str,
        extra: &[(&str, &str)],
    ) -> (Self, Vec<Msg>) {
        Self::connect(port)
            .await
            .login_as(user, password, db, extra)
            .await
    }

    /// Sends a StartupMessage on this connection and logs in.
    pub async fn login_as(
        mut self,
        user: &str,
        password: &str,
        db: &str,
        extra: &[(&str, &str)],
    ) -> (Self, Vec<Msg>) {
        let mut params = vec![("user", user), ("database", db)];
        params.extend_from_slice(extra);
        self.send(&startup_packet(&params)).await;
        let msgs = self.authenticate(user, password).await;
        (self, msgs)
    }

    /// Answers authentication requests; returns everything after AuthenticationOk.
    pub async fn authenticate(&mut self, user: &str, password: &str) -> Vec<Msg> {
        let mut scram1 = None;
        let mut scram2 = None;
        loop {
            let m = self.recv().await.expect("closed during login");
            if m.tag != b'R' {
                assert_eq!(m.tag, b'E', "unexpected {m:?}");
                return vec![m];
            }
            let code = i32::from_be_bytes([m.body[0], m.body[1], m.body[2], m.body[3]]);
            let data = &m.body[4..];
            match code {
                0 => return self.recv_until(b'Z').await,
                10 => {
                    let (first, w) = ScramClientAuth::new(user.into(), password.into())
                        .build_client_first()
                        .expect("scram");
                    let mut body = b"SCRAM-SHA-256\0".to_vec();
                    body.extend_from_slice(&(first.len() as i32).to_be_bytes());
                    body.extend_from_slice(first.as_bytes());
                    self.send(&message(b'p', &body)).await;
                    scram1 = Some(w);
                }
                11 => {
                    let (fin, w) = scram1
                        .take()
                        .expect("continue")
                        .build_client_final(data)
                        .expect("final");
                    self.send(&message(b'p', fin.as_bytes())).await;
                    scram2 = Some(w);
                }
                12 => scram2
                    .take()
                    .expect("final")
                    .verify_server_final(data)
                    .expect("server signature"),
                3 => {
                    let mut body = password.as_bytes().to_vec();
                    body.push(0);
                    self.send(&message(b'p', &body)).await;
                }
                5 => {
                    let salt: [u8; 4] = data[..4].try_into().expect("salt");
                    let stored = sluice::auth::md5::stored_hash(user, password);
                    let mut body =
                        sluice::auth::md5::response_from_hash(&stored, &salt).into_bytes();
                    body.push(0);
                    self.send(&message(b'p', &body)).await;
                }
                other => panic!("auth code {other} not handled by the test client"),
            }
        }
    }
}
