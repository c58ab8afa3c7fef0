//! Message tags as enums, converted once at the edge.

/// Messages a client (frontend) sends after startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontendTag {
    Query,
    Parse,
    Bind,
    Execute,
    Describe,
    Close,
    Sync,
    Flush,
    Terminate,
    CopyData,
    CopyDone,
    CopyFail,
    FunctionCall,
    Password,
    Unknown(u8),
}

impl FrontendTag {
    pub fn from_byte(b: u8) -> Self {
        match b {
            b'Q' => Self::Query,
            b'P' => Self::Parse,
            b'B' => Self::Bind,
            b'E' => Self::Execute,
            b'D' => Self::Describe,
            b'C' => Self::Close,
            b'S' => Self::Sync,
            b'H' => Self::Flush,
            b'X' => Self::Terminate,
            b'd' => Self::CopyData,
            b'c' => Self::CopyDone,
            b'f' => Self::CopyFail,
            b'F' => Self::FunctionCall,
            b'p' => Self::Password,
            other => Self::Unknown(other),
        }
    }

    /// Whether a logged-in session may send this message. PostgreSQL's
    /// list (SocketBackend in postgres.c); a password message is
    /// login-only. Anything else ends the session with FATAL 08P01.
    pub fn valid_in_session(self) -> bool {
        !matches!(self, Self::Unknown(_) | Self::Password)
    }
}

/// Messages a server (backend) sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendTag {
    Authentication,
    BackendKeyData,
    ParameterStatus,
    ReadyForQuery,
    ErrorResponse,
    NoticeResponse,
    NotificationResponse,
    CopyInResponse,
    CopyOutResponse,
    CopyBothResponse,
    CopyData,
    CopyDone,
    NegotiateProtocolVersion,
    /// Everything sluice forwards without looking inside (DataRow, RowDescription, ...).
    Other(u8),
}

impl BackendTag {
    pub fn from_byte(b: u8) -> Self {
        match b {
            b'R' => Self::Authentication,
            b'K' => Self::BackendKeyData,
            b'S' => Self::ParameterStatus,
            b'Z' => Self::ReadyForQuery,
            b'E' => Self::ErrorResponse,
            b'N' => Self::NoticeResponse,
            b'A' => Self::NotificationResponse,
            b'G' => Self::CopyInResponse,
            b'H' => Self::CopyOutResponse,
            b'W' => Self::CopyBothResponse,
            b'd' => Self::CopyData,
            b'c' => Self::CopyDone,
            b'v' => Self::NegotiateProtocolVersion,
            other => Self::Other(other),
        }
    }
}

/// Transaction status carried by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TxnStatus {
    #[default]
    Idle,
    InTransaction,
    Failed,
}

impl TxnStatus {
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'I' => Some(Self::Idle),
            b'T' => Some(Self::InTransaction),
            b'E' => Some(Self::Failed),
            _ => None,
        }
    }

    pub fn byte(self) -> u8 {
        match self {
            Self::Idle => b'I',
            Self::InTransaction => b'T',
            Self::Failed => b'E',
        }
    }
}

/// Codes of the untyped packets a client may open a connection with.
pub mod codes {
    pub const PROTOCOL_3_0: u32 = 196_608;
    pub const SSL_REQUEST: u32 = 80_877_103;
    pub const GSSENC_REQUEST: u32 = 80_877_104;
    pub const CANCEL_REQUEST: u32 = 80_877_102;
    /// sluice's own (1234.5690): a CancelRequest one sluice passes to a
    /// peer, which never passes it on.
    pub const PEER_CANCEL_REQUEST: u32 = 80_877_112;
}
