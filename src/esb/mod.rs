//! The ESB surface: envelope and codes, app auth, argument parsing, routes.

pub mod auth;
pub mod envelope;
pub mod error;
pub mod params;
pub mod routes;
