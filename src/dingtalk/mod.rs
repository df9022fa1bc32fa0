//! The DingTalk client: token cache, getbymobile, batch_send, signed webhooks, the directory's
//! department and member listing, the app's call budget, the holds on the whole egress
//! (DingTalk's anti-abuse pause, the monthly quota) and the calls counted per month, and the
//! error classification every caller relies on.

pub mod budget;
pub mod client;
pub mod egress;
pub mod error;
pub mod message;
pub mod sign;

pub use client::{
    App, ClientConfig, Dated, Department, DingTalk, Member, MemberPage, MobileLookup, ReadInfo,
    RecallAnswer, Robot, UserOutcome,
};
pub use error::{Class, DingTalkError};
pub use message::{At, Message};
