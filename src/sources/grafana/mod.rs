//! Grafana unified alerting's webhook contact point: `POST /api/v1/grafana/{receivers}`,
//! handled as Alertmanager's webhook is (`sources::alertmanager::routes`: the same
//! authentication, receivers, dedup and answers) with Grafana's payload and layout. Grafana
//! does not retry a failed webhook, so the answer that it was stored is all the safety there is.

pub mod payload;
pub mod render;

use crate::core::SendService;
use crate::sources::alertmanager::routes::{self, handle, Origin};
use crate::sources::alertmanager::Alertmanager;
use actix_web::{web, HttpRequest, HttpResponse};

pub const GRAFANA: Origin = Origin {
    name: "Grafana",
    path: "/api/v1/grafana",
    parse: payload::parse,
    credentials: "set the contact point's HTTP Basic Authentication to the app's code and secret, or its Authorization Header - Credentials to a token of `ding-channel apps token CODE`",
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    routes::routes(cfg, &GRAFANA, webhook);
}

async fn webhook(
    req: HttpRequest,
    body: Result<web::Bytes, actix_web::Error>,
    shared: web::Data<Alertmanager>,
    service: web::Data<SendService>,
) -> HttpResponse {
    handle(&GRAFANA, &req, body, &shared, &service).await
}
