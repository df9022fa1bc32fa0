//! Robot pools: a robot user may list more custom robots of the same group in `extras.robots`
//! (`[{"token": …, "secret": …, "keyword": …}, …]`, `secret` and `keyword` optional), beside
//! its own robot, so its sends are spread over more 20-per-minute budgets. Entry k (1-based)
//! is the pool member `USERNAME#k`; errors name it by that position, never by its token.

use super::classify::check_keyword;
use super::profile::Profile;
use crate::domain::secrets::{RobotToken, SignSecret};
use serde_json::Value;

/// The `extras` key that holds the pool.
pub const POOL_KEY: &str = "robots";

/// One more robot of the group, valid by construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub token: RobotToken,
    /// `None` for a keyword/IP-secured robot, whose token is then 64 hex characters.
    pub secret: Option<SignSecret>,
    pub keyword: Option<String>,
}

/// The profile's pool entries in order (empty without `extras.robots`), each valid or what is
/// wrong with it; `Err` when `extras.robots` is not a list at all.
pub fn entries(p: &Profile) -> Result<Vec<Result<Entry, String>>, String> {
    p.extras.get(POOL_KEY).map_or(Ok(vec![]), read)
}

/// What is wrong with a pool as imported, naming every bad entry, if anything.
pub fn problems(pool: &Value) -> Vec<String> {
    match read(pool) {
        Err(e) => vec![e],
        Ok(entries) => entries.into_iter().filter_map(Result::err).collect(),
    }
}

fn read(pool: &Value) -> Result<Vec<Result<Entry, String>>, String> {
    let Value::Array(list) = pool else {
        return Err(format!(
            "{POOL_KEY} is not a list: set it to [{{\"token\": …, \"secret\": …, \"keyword\": …}}, …]"
        ));
    };
    let mut read: Vec<Result<Entry, String>> = vec![];
    for (i, v) in list.iter().enumerate() {
        let entry = entry(v).and_then(|e| {
            // Two entries of one robot would pace it twice: DingTalk counts it once.
            match read
                .iter()
                .position(|r| r.as_ref().is_ok_and(|o| o.token == e.token))
            {
                Some(first) => Err(format!("the same robot (token) as entry {}", first + 1)),
                None => Ok(e),
            }
        });
        read.push(entry.map_err(|why| format!("{POOL_KEY} entry {}: {why}", i + 1)));
    }
    Ok(read)
}

fn entry(v: &Value) -> Result<Entry, String> {
    let Value::Object(fields) = v else {
        return Err("is not an object with token, secret and keyword".into());
    };
    if let Some(unknown) = fields
        .keys()
        .find(|k| !matches!(k.as_str(), "token" | "secret" | "keyword"))
    {
        return Err(format!(
            "unknown key '{unknown}' (expected token, secret, keyword)"
        ));
    }
    let text = |key: &str| -> Result<Option<&str>, String> {
        match fields.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str()).filter(|s| !s.trim().is_empty())),
            Some(_) => Err(format!("{key} is not text")),
        }
    };
    let token =
        text("token")?.ok_or("token is required (the access_token= value of the webhook URL)")?;
    let token = RobotToken::parse(token.trim())
        .map_err(|expected| format!("malformed token ({expected})"))?;
    let secret = text("secret")?
        .map(|s| SignSecret::parse(s.trim()))
        .transpose()
        .map_err(|expected| format!("malformed secret ({expected})"))?;
    if secret.is_none() && !RobotToken::is_bare_hex(token.expose()) {
        return Err("secret is required unless the token is the 64 hex characters of a keyword- or IP-secured robot".into());
    }
    let keyword = text("keyword")?
        .map(|k| check_keyword(k, "keyword"))
        .transpose()?
        .flatten()
        .map(str::to_owned);
    Ok(Entry {
        token,
        secret,
        keyword,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entries_are_checked_one_by_one_and_named_by_position() {
        let hex = "b".repeat(64);
        let pool = json!([
            {"token": "tok0123456789abcdef", "secret": "SEC0123456789abcdef", "keyword": "告警"},
            {"token": hex},
            {"token": "tok en", "secret": "SEC0123456789abcdef"},
            {"token": "tok0123456789abcdef"},
            "nope",
            {"token": hex, "sign": "x"},
            {"token": hex, "keyword": "again"},
        ]);
        let read = read(&pool).unwrap();
        assert_eq!(read[0].as_ref().unwrap().keyword.as_deref(), Some("告警"));
        assert_eq!(read[1].as_ref().unwrap().secret, None);
        assert_eq!(
            problems(&pool),
            [
                "robots entry 3: malformed token (expected the access_token= value of the webhook URL)",
                "robots entry 4: secret is required unless the token is the 64 hex characters of a keyword- or IP-secured robot",
                "robots entry 5: is not an object with token, secret and keyword",
                "robots entry 6: unknown key 'sign' (expected token, secret, keyword)",
                "robots entry 7: the same robot (token) as entry 2",
            ]
        );
        assert!(
            !problems(&pool).join(" ").contains("tok en"),
            "never the token"
        );
        assert_eq!(
            problems(&json!({"token": hex})),
            ["robots is not a list: set it to [{\"token\": …, \"secret\": …, \"keyword\": …}, …]"]
        );
    }
}
