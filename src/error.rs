//! The crate error and its one classification: what the client is told.

use std::io;

use crate::protocol::frame::FrameError;
use crate::protocol::inspect::ErrorFields;
use crate::protocol::sqlstate;
use crate::protocol::startup::StartupError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("connection closed by peer")]
    Eof,
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Startup(#[from] StartupError),
    /// sluice refuses the client with this SQLSTATE and message (FATAL, then close).
    #[error("{message}")]
    Refuse { code: String, message: String },
    /// A server could not be reached or logged in to.
    #[error("{0}")]
    Server(#[from] ServerError),
    /// The client was handed over to the process that took over: its
    /// session ends here without a word or a close.
    #[error("handed over to another sluice process")]
    Moved,
}

impl Error {
    pub fn refuse(code: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Refuse {
            code: code.into(),
            message: message.into(),
        }
    }

    /// An unexpected EOF inside read_exact is a closed peer, not an I/O fault.
    pub fn from_read(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Error::Eof
        } else {
            Error::Io(e)
        }
    }

    /// The SQLSTATE and message to send the client before closing, if any.
    /// `None` means the client is gone or not worth answering.
    pub fn client_message(&self) -> Option<(String, String)> {
        match self {
            Error::Io(_) | Error::Eof | Error::Moved => None,
            Error::Frame(e @ FrameError::UnknownType(_)) => {
                Some((sqlstate::PROTOCOL_VIOLATION.into(), e.to_string()))
            }
            Error::Frame(e) => Some((
                sqlstate::PROTOCOL_VIOLATION.into(),
                format!("invalid message: {e}"),
            )),
            Error::Startup(e) => Some((sqlstate::PROTOCOL_VIOLATION.into(), e.to_string())),
            Error::Refuse { code, message } => Some((code.clone(), message.clone())),
            Error::Server(e) => Some(e.client_message()),
        }
    }
}

/// Why a server connection could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("could not connect to server {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("timed out connecting to server {addr}")]
    ConnectTimeout { addr: String },
    /// The server answered with an ErrorResponse.
    #[error("server {addr} refused: {}", .fields.message_or_default())]
    Refused { addr: String, fields: ErrorFields },
    #[error("server {addr} violated the protocol: {detail}")]
    Protocol { addr: String, detail: String },
    #[error("cannot log in to server {addr}: {detail}")]
    Auth { addr: String, detail: String },
    #[error("server {addr} closed the connection")]
    Closed { addr: String },
    #[error("i/o error talking to server {addr}: {source}")]
    Io { addr: String, source: io::Error },
    #[error("{what} reached: no server connection could be opened in time")]
    Limit { what: String },
}

impl ServerError {
    pub fn client_message(&self) -> (String, String) {
        match self {
            ServerError::Refused { fields, .. } => (
                fields.code_or_internal().to_string(),
                fields.message_or_default().to_string(),
            ),
            ServerError::Connect { .. } | ServerError::ConnectTimeout { .. } => {
                (sqlstate::UNABLE_TO_CONNECT.into(), self.to_string())
            }
            ServerError::Auth { .. } => (sqlstate::INVALID_AUTHORIZATION.into(), self.to_string()),
            ServerError::Limit { .. } => (sqlstate::TOO_MANY_CONNECTIONS.into(), self.to_string()),
            ServerError::Protocol { .. } | ServerError::Closed { .. } | ServerError::Io { .. } => {
                (sqlstate::CONNECTION_FAILURE.into(), self.to_string())
            }
        }
    }

    /// Wraps an error from server I/O, naming the server.
    pub fn from_io(addr: &str, e: Error) -> Self {
        match e {
            Error::Server(s) => s,
            Error::Eof => ServerError::Closed {
                addr: addr.to_string(),
            },
            Error::Io(source) => ServerError::Io {
                addr: addr.to_string(),
                source,
            },
            other => ServerError::Protocol {
                addr: addr.to_string(),
                detail: other.to_string(),
            },
        }
    }
}
