//! The inbound seam: each source turns its callers' requests into a
//! [`SendRequest`](crate::domain::request::SendRequest), submits it to the
//! [`SendService`](crate::core::SendService) and turns the
//! [`Receipt`](crate::core::Receipt) into its own answer ([`Source`]). The ESB/CMSI
//! components are the first source (the command line's `send` reuses its argument parser and
//! the same service).
//!
//! To add one: a module here with its routes, implementing [`Source`]
//! for its payload and answer, and its routes added in [`configure`].

pub mod alertmanager;
pub mod esb;
pub mod grafana;
pub mod tokens;

use crate::core::Receipt;
use crate::domain::request::SendRequest;

/// Every source's routes.
pub fn configure(cfg: &mut actix_web::web::ServiceConfig) {
    esb::routes::configure(cfg);
    alertmanager::routes::configure(cfg);
    grafana::configure(cfg);
}

pub trait Source {
    /// What the caller sent, as the source reads it.
    type Input<'a>;
    /// Why an input is refused (it names the field and the fix).
    type Error;
    /// What the caller gets back.
    type Answer;

    fn request(&self, input: Self::Input<'_>) -> Result<SendRequest, Self::Error>;
    fn answer(&self, receipt: &Receipt) -> Self::Answer;
}
