//! The ESB response envelope and its codes (DESIGN §3).

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Ok,
    Generic,
    ThirdParty,
    AppAuth,
    UnknownReceivers,
    Inactive,
    BadArgument,
    Throttled,
}

impl Code {
    pub fn value(self) -> i64 {
        match self {
            Self::Ok => 0,
            Self::Generic => 1306000,
            Self::ThirdParty => 1306201,
            Self::AppAuth => 1306401,
            Self::UnknownReceivers => 1306404,
            Self::Inactive => 1306405,
            Self::BadArgument => 1306406,
            Self::Throttled => 1306429,
        }
    }
}

/// What a component answers; `result` is `code == Ok`.
#[derive(Debug)]
pub struct Reply {
    pub code: Code,
    pub message: String,
    pub data: Value,
}

impl Reply {
    pub fn ok(data: Value, message: impl Into<String>) -> Self {
        Self {
            code: Code::Ok,
            message: message.into(),
            data,
        }
    }

    pub fn into_envelope(self, request_id: &str) -> Envelope {
        Envelope {
            result: self.code == Code::Ok,
            code: self.code.value(),
            message: self.message,
            data: self.data,
            request_id: request_id.to_owned(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Envelope {
    pub result: bool,
    pub code: i64,
    pub message: String,
    pub data: Value,
    pub request_id: String,
}

impl Envelope {
    pub fn ok(data: Value, message: impl Into<String>, request_id: &str) -> Self {
        Self {
            result: true,
            code: Code::Ok.value(),
            message: message.into(),
            data,
            request_id: request_id.to_owned(),
        }
    }

    pub fn err(code: Code, message: impl Into<String>, data: Value, request_id: &str) -> Self {
        Self {
            result: false,
            code: code.value(),
            message: message.into(),
            data,
            request_id: request_id.to_owned(),
        }
    }
}
