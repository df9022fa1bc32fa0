//! The ESB/CMSI source: the BlueKing component API (`send_msg`, `get_msg_type`, `send_ding`,
//! `send_dingtalk`, `send_dingbot`): envelope and codes, app authentication, argument parsing,
//! routes, and the components behind each channel path.

pub mod args;
pub mod auth;
pub mod components;
pub mod envelope;
pub mod error;
pub mod gateway;
pub mod params;
pub mod routes;
pub mod upstream;

use crate::channels::manifest::Manifest;
use crate::clock::{SharedClock, Zone};
use crate::db::Db;
use crate::domain::request::{Route, SendRequest};
use std::sync::Arc;

/// What the ESB routes share (the send service is injected beside it).
pub struct Esb {
    pub db: Db,
    pub manifest: Arc<Manifest>,
    /// Largest request body accepted (`DING_CHANNEL_MAX_BODY`).
    pub max_body: usize,
    pub clock: SharedClock,
    /// Whose `X-Bkapi-JWT` is accepted (`DING_CHANNEL_APIGW_*`).
    pub gateway: crate::config::GatewaySettings,
    /// Where a channel template shows times (`DING_CHANNEL_UTC_OFFSET`).
    pub zone: Zone,
}

/// The CMSI component arguments of a send, and its CMSI answer.
pub struct Cmsi;

impl super::Source for Cmsi {
    type Input<'a> = (Route, &'a params::Params, Option<&'a str>);
    type Error = error::EsbError;
    type Answer = envelope::Reply;

    fn request(
        &self,
        (route, params, idempotency_header): Self::Input<'_>,
    ) -> Result<SendRequest, Self::Error> {
        args::parse(route, params, idempotency_header)
    }

    fn answer(&self, receipt: &crate::core::Receipt) -> Self::Answer {
        components::answer(receipt)
    }
}
