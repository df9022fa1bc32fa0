//! The one error type of the ESB layer; each variant maps to an envelope code, and every
//! message tells the caller which field is wrong and how to fix it. No secret is ever put in
//! a message.

use super::envelope::{Code, Envelope};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;

/// Where an error is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// An ESB component path: the envelope is the answer.
    Esb,
    /// A REST path of ours (`/api/v1/…`).
    Rest,
}

#[derive(Debug, thiserror::Error)]
pub enum EsbError {
    #[error("{field}: {problem}")]
    BadArgument { field: String, problem: String },
    #[error("app authentication failed: {0}")]
    AppAuth(&'static str),
    /// Why the API gateway's token is refused (never the token itself).
    #[error("app authentication failed: X-Bkapi-JWT {0}")]
    GatewayJwt(String),
    #[error("{0}")]
    Inactive(String),
    #[error("{0}")]
    NotAvailable(String),
    #[error("{0}")]
    Throttled(String),
    #[error("no channel is served at {0}")]
    NoChannel(String),
    #[error("{0}")]
    NotFound(&'static str),
    /// The cause is logged; the caller gets the request id to quote.
    #[error("internal error; the server log has the details under this request_id")]
    Internal(String),
    /// The storage could not serve the request now (see [`crate::db::Outage`]): the caller
    /// is told whether anything may have been stored and retries; the cause is logged.
    #[error("{answer}")]
    Storage { answer: String, cause: String },
}

impl EsbError {
    /// No channel at `path`: the caller's path is shown escaped and cut short, as it goes into
    /// the answer and a log line.
    pub fn no_channel(path: &str) -> Self {
        let mut shown: String = path.escape_debug().take(200).collect();
        if shown.len() < path.escape_debug().count() {
            shown.push('…');
        }
        Self::NoChannel(shown)
    }

    pub fn bad(field: impl Into<String>, problem: impl Into<String>) -> Self {
        let field = field.into();
        Self::BadArgument {
            // An argument may be named "" (`=x`, `{"": …}`); the answer still names it.
            field: if field.is_empty() {
                "(the argument with an empty name)".to_owned()
            } else {
                field
            },
            problem: problem.into(),
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Self::BadArgument { .. } => Code::BadArgument,
            Self::AppAuth(_) | Self::GatewayJwt(_) => Code::AppAuth,
            Self::Inactive(_) | Self::NoChannel(_) => Code::Inactive,
            Self::Throttled(_) => Code::Throttled,
            Self::NotAvailable(_)
            | Self::NotFound(_)
            | Self::Internal(_)
            | Self::Storage { .. } => Code::Generic,
        }
    }

    /// The HTTP status on `surface`: ESB callers read the envelope, so an ESB path answers
    /// 200 (but for no channel at all); REST paths answer with the status that fits.
    pub fn status(&self, surface: Surface) -> StatusCode {
        match (surface, self) {
            (_, Self::NoChannel(_)) => StatusCode::NOT_FOUND,
            (Surface::Esb, _) => StatusCode::OK,
            (Surface::Rest, Self::AppAuth(_) | Self::GatewayJwt(_)) => StatusCode::UNAUTHORIZED,
            (Surface::Rest, Self::NotFound(_)) => StatusCode::NOT_FOUND,
            (Surface::Rest, Self::Internal(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            (Surface::Rest, Self::Storage { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            (Surface::Rest, _) => StatusCode::BAD_REQUEST,
        }
    }

    /// The answer to the caller, in the envelope; the error is logged (an internal one with
    /// its cause, which the caller does not see).
    pub fn respond(self, request_id: &str, surface: Surface) -> HttpResponse {
        match &self {
            Self::Internal(cause) => tracing::error!(cause = %cause, "request failed"),
            Self::Storage { cause, .. } => {
                tracing::info!(cause = %cause, "request refused: storage unavailable")
            }
            other => tracing::info!(code = other.code().value(), error = %other, "request refused"),
        }
        HttpResponse::build(self.status(surface)).json(Envelope::err(
            self.code(),
            self.to_string(),
            serde_json::Value::Null,
            request_id,
        ))
    }
}

impl From<crate::db::DbError> for EsbError {
    fn from(e: crate::db::DbError) -> Self {
        match e.for_caller() {
            Some(answer) => Self::Storage {
                answer,
                cause: e.to_string(),
            },
            None => Self::Internal(e.to_string()),
        }
    }
}

impl From<diesel::result::Error> for EsbError {
    fn from(e: diesel::result::Error) -> Self {
        crate::db::DbError::from(e).into()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_path_is_escaped_and_cut_short() {
        let e = super::EsbError::no_channel("/cmsi/x\ninjected/");
        assert_eq!(e.to_string(), "no channel is served at /cmsi/x\\ninjected/");
        let long = super::EsbError::no_channel(&"a".repeat(500)).to_string();
        assert!(long.ends_with('…') && long.len() < 260, "{long}");
    }
}
