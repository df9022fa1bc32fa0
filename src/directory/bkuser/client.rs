//! bk-user's list_users through the ESB: every page of a sync, or a few usernames at once.
//! The app's secret goes in `X-Bkapi-Authorization`, never in the URL, so neither an access log
//! nor an error here can show it.

use super::FIELDS;
use crate::config::{BkUserSettings, Url};
use crate::domain::secrets::AppSecret;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::time::Instant;

const LIST_USERS: &str = "api/c/compapi/v2/usermanage/list_users/";
/// Asked for; bk-user lowers it to its `MAX_PAGE_SIZE`, so paging follows `count`, not this.
const PAGE_SIZE: usize = 500;
/// The usernames one lookup request names at most: bk-user caps its pages (at 100 in some
/// deployments), and the names travel in the URL.
pub const FIND_CHUNK: usize = 100;
/// One bk-user call at most; a sync is many.
const TIMEOUT: Duration = Duration::from_secs(10);
/// More pages than any directory has: a bk-user that keeps answering is stopped here.
const MAX_PAGES: u64 = 10_000;
/// bk-user's list view orders by any profile field it is asked to (DRF's `OrderingFilter`);
/// without it the database's order may differ from one page to the next, so offset pages
/// would skip some profiles and repeat others. By `id`, a profile added during a sync lands
/// on the last page and cannot shift the earlier ones.
const ORDERING: &str = "id";

#[derive(Debug, thiserror::Error)]
pub enum BkUserError {
    #[error("bk-user list_users page {page}: {error}")]
    Http { page: u64, error: String },
    #[error("bk-user list_users page {page} refused (code {code}): {message}")]
    Refused {
        page: u64,
        code: String,
        message: String,
    },
    #[error("bk-user list_users page {page}: {problem}")]
    Shape { page: u64, problem: String },
    /// A profile removed between two pages shifts the later ones by one: one profile would be
    /// missed and marked gone.
    #[error("bk-user's list changed during the sync (count {before} on page 1, {after} on page {page}); run it again")]
    Changed {
        page: u64,
        before: usize,
        after: usize,
    },
}

#[derive(Clone)]
pub struct BkUserClient {
    http: reqwest::Client,
    list_users: Url,
    app_code: String,
    app_secret: AppSecret,
}

impl BkUserClient {
    pub fn new(settings: &BkUserSettings) -> Result<Self, reqwest::Error> {
        let mut base = settings.url.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Ok(Self {
            http: reqwest::Client::builder().timeout(TIMEOUT).build()?,
            list_users: base.join(LIST_USERS).expect("a relative path joins"),
            app_code: settings.app_code.clone(),
            app_secret: settings.app_secret.clone(),
        })
    }

    /// Every profile bk-user lists, by `id`, page after page until `count` are in hand; any
    /// page that fails, or a `count` that changes between pages, fails the whole list.
    pub async fn list_all(&self) -> Result<Vec<Value>, BkUserError> {
        let mut records = vec![];
        let mut page = 1;
        let mut first_count = None;
        loop {
            let query = [
                ("page_size", PAGE_SIZE.to_string()),
                ("ordering", ORDERING.to_owned()),
            ];
            let (count, results) = self.page(page, &query, TIMEOUT).await?;
            let before = *first_count.get_or_insert(count);
            if count != before {
                return Err(BkUserError::Changed {
                    page,
                    before,
                    after: count,
                });
            }
            if results.is_empty() && records.len() < count {
                return Err(BkUserError::Shape {
                    page,
                    problem: format!(
                        "no profiles, but count says {count} and {} came before",
                        records.len()
                    ),
                });
            }
            records.extend(results);
            if records.len() >= count {
                return Ok(records);
            }
            if page >= MAX_PAGES {
                return Err(BkUserError::Shape {
                    page,
                    problem: format!("still short of count ({count}) after {MAX_PAGES} pages"),
                });
            }
            page += 1;
        }
    }

    /// The profiles of `usernames` (at most [`FIND_CHUNK`]) that bk-user lists, as CMSI asks,
    /// answered within `timeout` (at most the client's own). bk-user may cap the page below
    /// the names asked, so the pages follow `count`.
    pub async fn find(
        &self,
        usernames: &[String],
        timeout: Duration,
    ) -> Result<Vec<Value>, BkUserError> {
        let until = Instant::now() + timeout.min(TIMEOUT);
        let query = [
            ("lookup_field", "username".to_owned()),
            ("exact_lookups", usernames.join(",")),
            ("page_size", usernames.len().max(1).to_string()),
        ];
        let mut records = vec![];
        for page in 1..=usernames.len().max(1) as u64 {
            let left = until.saturating_duration_since(Instant::now());
            let (count, results) = self.page(page, &query, left).await?;
            let empty = results.is_empty();
            records.extend(results);
            if records.len() >= count || empty {
                break;
            }
        }
        Ok(records)
    }

    async fn page(
        &self,
        page: u64,
        query: &[(&str, String)],
        timeout: Duration,
    ) -> Result<(usize, Vec<Value>), BkUserError> {
        let http = |error: String| BkUserError::Http { page, error };
        let shape = |problem: &str| BkUserError::Shape {
            page,
            problem: problem.to_owned(),
        };
        let auth = json!({"bk_app_code": self.app_code, "bk_app_secret": self.app_secret.expose()});
        let response = self
            .http
            .get(self.list_users.clone())
            .header("X-Bkapi-Authorization", auth.to_string())
            .query(&[("fields", FIELDS), ("page", &page.to_string())])
            .query(query)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| match e.is_timeout() {
                true => http(format!("no answer within {} ms", timeout.as_millis())),
                false => http(e.without_url().to_string()),
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(http(format!("HTTP {status}")));
        }
        let mut body: Value = response.json().await.map_err(|e| match e.is_timeout() {
            true => http(format!("no answer within {} ms", timeout.as_millis())),
            false => shape("the answer is not JSON"),
        })?;
        if body["result"] != Value::Bool(true) {
            return Err(BkUserError::Refused {
                page,
                code: body["code"].to_string(),
                message: body["message"].as_str().unwrap_or("no message").to_owned(),
            });
        }
        let count = body["data"]["count"]
            .as_u64()
            .ok_or_else(|| shape("data.count is not a whole number"))?;
        let Value::Array(results) = body["data"]["results"].take() else {
            return Err(shape("data.results is not a list"));
        };
        Ok((count as usize, results))
    }
}
