//! Mentions from alerts: `DING_CHANNEL_MENTION_KEYS`, the labels and annotations whose values
//! name who an Alertmanager notification mentions. A server key, not a channel's comp_conf:
//! it describes the alert rules of the Prometheus setups posting here, not a DingTalk channel.

use super::{ConfigError, Parse};

/// At most this many names: each is looked up in every alert of a notification.
const MAX_KEYS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MentionSettings {
    /// Label (then annotation) names, in the order they are read; empty: no mentions.
    pub keys: Vec<String>,
}

pub(super) fn read(parse: &Parse<'_>) -> Result<MentionSettings, ConfigError> {
    let raw = parse("DING_CHANNEL_MENTION_KEYS", "at,owner,oncall", &|v| {
        keys(v).map(drop)
    })?;
    Ok(MentionSettings {
        keys: keys(&raw).expect("validated above"),
    })
}

/// `at, owner oncall`: label names as Prometheus writes them (`[a-zA-Z_][a-zA-Z0-9_]*`).
fn keys(v: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = vec![];
    for key in v.split([',', ' ']).filter(|k| !k.is_empty()) {
        let mut chars = key.chars();
        let valid = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "'{key}' is not a label name (letters, digits and _, not starting with a digit), e.g. at,owner,oncall"
            ));
        }
        if !out.iter().any(|k| k == key) {
            out.push(key.to_owned());
        }
    }
    if out.len() > MAX_KEYS {
        return Err(format!("names {} labels; at most {MAX_KEYS}", out.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::config::Settings;

    fn load(pairs: &[(&str, &str)]) -> Result<Vec<String>, String> {
        Settings::from_env_map(crate::config::tests::env(pairs))
            .map(|s| s.mentions.keys)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_lists_and_refusals() {
        assert_eq!(load(&[]).unwrap(), ["at", "owner", "oncall"]);
        assert_eq!(
            load(&[(
                "DING_CHANNEL_MENTION_KEYS",
                "team_owner, on_call,team_owner"
            )])
            .unwrap(),
            ["team_owner", "on_call"]
        );
        assert!(load(&[("DING_CHANNEL_MENTION_KEYS", "")])
            .unwrap()
            .is_empty());
        assert_eq!(
            load(&[("DING_CHANNEL_MENTION_KEYS", "owner,1st")]).unwrap_err(),
            "DING_CHANNEL_MENTION_KEYS (environment): '1st' is not a label name (letters, digits and _, not starting with a digit), e.g. at,owner,oncall"
        );
        let many: Vec<String> = (0..17).map(|i| format!("k{i}")).collect();
        assert_eq!(
            load(&[("DING_CHANNEL_MENTION_KEYS", &many.join(","))]).unwrap_err(),
            "DING_CHANNEL_MENTION_KEYS (environment): names 17 labels; at most 16"
        );
    }
}
