//! The one error type of the ESB layer; each variant maps to an envelope code, and every
//! message tells the caller which field is wrong and how to fix it. No secret is ever put in
//! a message.

use super::envelope::Code;

#[derive(Debug, thiserror::Error)]
pub enum EsbError {
    #[error("{field}: {problem}")]
    BadArgument { field: String, problem: String },
    #[error("app authentication failed: {0}")]
    AppAuth(&'static str),
    #[error("{0}")]
    Inactive(String),
    #[error("{0}")]
    NotAvailable(String),
    #[error("{0}")]
    Throttled(String),
    #[error("no channel is served at {0}")]
    NoChannel(String),
    /// The cause is logged; the caller gets the request id to quote.
    #[error("internal error; the server log has the details under this request_id")]
    Internal(String),
}

impl EsbError {
    pub fn bad(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::BadArgument {
            field: field.into(),
            problem: problem.into(),
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Self::BadArgument { .. } => Code::BadArgument,
            Self::AppAuth(_) => Code::AppAuth,
            Self::Inactive(_) | Self::NoChannel(_) => Code::Inactive,
            Self::Throttled(_) => Code::Throttled,
            Self::NotAvailable(_) | Self::Internal(_) => Code::Generic,
        }
    }
}

impl From<crate::db::DbError> for EsbError {
    fn from(e: crate::db::DbError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<diesel::result::Error> for EsbError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Internal(e.to_string())
    }
}
