//! Just enough SQL reading for session state: a quoting-aware statement
//! splitter and tokenizer, and the session effects of a statement.

pub mod database_cmd;
pub mod fingerprint;
pub mod functions;
pub mod lex;
pub mod session_cmd;
