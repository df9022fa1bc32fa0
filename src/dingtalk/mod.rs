//! The DingTalk client: token cache, getbymobile, batch_send, signed webhooks, and the error
//! classification every caller relies on.

pub mod client;
pub mod error;
pub mod message;
pub mod sign;

pub use client::{
    App, ClientConfig, DingTalk, MobileLookup, ReadInfo, RecallAnswer, Robot, UserOutcome,
};
pub use error::{Class, DingTalkError};
pub use message::{At, Message};
