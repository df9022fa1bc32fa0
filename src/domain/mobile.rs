//! A phone number in the form DingTalk's `getbymobile` takes: parsed once, wherever a number
//! enters (an import row, a stored profile, a send request's `mobile` or `at_mobiles`).
//!
//! The rule, the union of what the import and the send parameters accepted before:
//! - `(` and `)` only group (`(+852) 9123 4567`), so they read as spaces;
//! - an optional leading `+CC`, a country code of 1 to 4 digits ended by a space or `-`
//!   (`+86 138…`, `+852-9123-4567`). Written without a separator (`+8613800000001`) the
//!   code's end is unknown (codes are 1 to 4 digits long), so it is accepted only when the
//!   record names its country code and the digits begin with it, or for `+86` and a
//!   mainland mobile (11 digits from 1);
//! - then the national number: 5 to 20 digits, spaces and `-` allowed between groups;
//! - without `+CC` the country code is the record's, else `86`, DingTalk's home;
//! - its text is what getbymobile matches: the bare national number in mainland China
//!   (`13800000001`), `+CC-NUMBER` elsewhere (`+852-91234567`).

use serde::{Deserialize, Serialize};
use std::fmt;

/// The country code a number without `+CC` belongs to: getbymobile takes these bare.
pub const DEFAULT_COUNTRY_CODE: &str = "86";

/// What is wrong with a phone number; each message quotes it and says what is accepted. The
/// caller adds the field's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MobileError {
    #[error("'{0}' is not a phone number (digits only, e.g. 13800000001)")]
    NotDigits(String),
    #[error("'{raw}' has {digits} digits; a phone number has 5 to 20")]
    Length { raw: String, digits: usize },
    #[error("'{raw}' starts with '+' but '{code}' is not a country code (1 to 4 digits)")]
    PrefixCountryCode { raw: String, code: String },
    #[error(
        "'{0}' does not show where the country code ends; write '+CC NUMBER' with a space \
         after the code"
    )]
    UnsplitCountryCode(String),
    #[error("'{raw}' has country code +{prefix} but country_code is {given}")]
    CountryCodeConflict {
        raw: String,
        prefix: String,
        given: String,
    },
    #[error("'{0}' is not a country code (1 to 4 digits, e.g. 86)")]
    CountryCode(String),
}

/// `86` and a mainland mobile (11 digits from 1): the one unsplit `+CC…` form whose code's end
/// is known, and what callers who copy a number from DingTalk often send.
fn is_mainland(digits: &str) -> bool {
    digits
        .strip_prefix(DEFAULT_COUNTRY_CODE)
        .is_some_and(|n| n.len() == 11 && n.starts_with('1'))
}

/// A country code's digits, without `+`: 1 to 4 of them.
pub fn parse_country_code(raw: &str) -> Result<String, MobileError> {
    let digits = raw.strip_prefix('+').unwrap_or(raw);
    if (1..=4).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(digits.to_owned())
    } else {
        Err(MobileError::CountryCode(raw.to_owned()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Mobile {
    country_code: String,
    national: String,
    text: String,
}

impl Mobile {
    /// A number on its own, as a send request names it: without `+CC` it is a mainland one.
    pub fn parse(raw: &str) -> Result<Self, MobileError> {
        Self::parse_in(raw, None)
    }

    /// A number in a record that may name its country code (`country_code`, with or without
    /// `+`): a bare number is in that country, and a `+CC` must agree with it.
    pub fn parse_in(raw: &str, country_code: Option<&str>) -> Result<Self, MobileError> {
        let raw = raw.trim();
        let given = country_code.map(parse_country_code).transpose()?;
        let spaced: String = raw
            .chars()
            .map(|c| if matches!(c, '(' | ')') { ' ' } else { c })
            .collect();
        let spaced = spaced.trim_start();
        let (prefix, national) = match spaced.strip_prefix('+') {
            None => (None, spaced),
            Some(after) => {
                let end = after
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(after.len());
                let (code, rest) = match (end == after.len(), &given) {
                    (true, Some(cc)) if after.starts_with(cc.as_str()) => after.split_at(cc.len()),
                    (true, None) if is_mainland(after) => {
                        after.split_at(DEFAULT_COUNTRY_CODE.len())
                    }
                    (true, _) => return Err(MobileError::UnsplitCountryCode(raw.to_owned())),
                    (false, _) => after.split_at(end),
                };
                let code =
                    parse_country_code(code).map_err(|_| MobileError::PrefixCountryCode {
                        raw: raw.to_owned(),
                        code: code.to_owned(),
                    })?;
                (Some(code), rest)
            }
        };
        let digits: String = national
            .chars()
            .filter(|&c| !(c.is_whitespace() || c == '-'))
            .collect();
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(MobileError::NotDigits(raw.to_owned()));
        }
        if !(5..=20).contains(&digits.len()) {
            return Err(MobileError::Length {
                raw: raw.to_owned(),
                digits: digits.len(),
            });
        }
        let country_code = match (prefix, given) {
            (Some(prefix), Some(given)) if prefix != given => {
                return Err(MobileError::CountryCodeConflict {
                    raw: raw.to_owned(),
                    prefix,
                    given,
                })
            }
            (Some(code), _) | (None, Some(code)) => code,
            (None, None) => DEFAULT_COUNTRY_CODE.to_owned(),
        };
        let text = if country_code == DEFAULT_COUNTRY_CODE {
            digits.clone()
        } else {
            format!("+{country_code}-{digits}")
        };
        Ok(Self {
            country_code,
            national: digits,
            text,
        })
    }

    /// As getbymobile takes it: `13800000001`, `+852-91234567`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Digits, without `+`.
    pub fn country_code(&self) -> &str {
        &self.country_code
    }

    /// The number's digits without the country code, as bk-user's `telephone` holds them.
    pub fn national(&self) -> &str {
        &self.national
    }
}

impl fmt::Display for Mobile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl TryFrom<String> for Mobile {
    type Error = MobileError;
    fn try_from(s: String) -> Result<Self, MobileError> {
        Self::parse(&s)
    }
}

impl From<Mobile> for String {
    fn from(m: Mobile) -> String {
        m.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(raw: &str, cc: Option<&str>) -> Result<String, String> {
        Mobile::parse_in(raw, cc)
            .map(|m| m.to_string())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn accepted_forms_and_their_getbymobile_text() {
        for (raw, cc, want) in [
            ("13800000001", None, "13800000001"),
            (" 138 0000 0001 ", None, "13800000001"),
            ("138-0000-0001", None, "13800000001"),
            ("+86 138 0000 0001", None, "13800000001"),
            ("+86-13800000001", None, "13800000001"),
            ("(+86) 13800000001", None, "13800000001"),
            ("+852-9123-4567", None, "+852-91234567"),
            ("(+852) 9123 4567", Some("+852"), "+852-91234567"),
            ("+1 (555) 123-4567", None, "+1-5551234567"),
            ("91234567", Some("852"), "+852-91234567"),
            ("+8613800000001", Some("86"), "13800000001"),
            ("+8613800000001", None, "13800000001"),
            ("13800000001", Some("1"), "+1-13800000001"),
        ] {
            assert_eq!(text(raw, cc), Ok(want.to_owned()), "{raw} {cc:?}");
        }
        let m = Mobile::parse("+852 9123 4567").unwrap();
        assert_eq!(
            (m.country_code(), m.national(), m.as_str()),
            ("852", "91234567", "+852-91234567")
        );
    }

    #[test]
    fn rejections_quote_the_number_and_say_what_is_accepted() {
        for (raw, cc, want) in [
            ("12ab", None, "'12ab' is not a phone number (digits only, e.g. 13800000001)"),
            ("", None, "'' is not a phone number (digits only, e.g. 13800000001)"),
            ("+86", None, "'+86' does not show where the country code ends; write '+CC NUMBER' with a space after the code"),
            ("1234", None, "'1234' has 4 digits; a phone number has 5 to 20"),
            ("+1 2345", None, "'+1 2345' has 4 digits; a phone number has 5 to 20"),
            ("1".repeat(21).as_str(), None, "'111111111111111111111' has 21 digits; a phone number has 5 to 20"),
            ("+85291234567", None, "'+85291234567' does not show where the country code ends; write '+CC NUMBER' with a space after the code"),
            ("+86138 0000 0001", None, "'+86138 0000 0001' starts with '+' but '86138' is not a country code (1 to 4 digits)"),
            ("+1 5551234567", Some("86"), "'+1 5551234567' has country code +1 but country_code is 86"),
            ("13800000001", Some("x1"), "'x1' is not a country code (1 to 4 digits, e.g. 86)"),
        ] {
            assert_eq!(text(raw, cc), Err(want.to_owned()), "{raw} {cc:?}");
        }
    }

    #[test]
    fn serde_is_the_getbymobile_text_and_parses_back() {
        let m = Mobile::parse("(+852) 9123-4567").unwrap();
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, r#""+852-91234567""#);
        assert_eq!(serde_json::from_str::<Mobile>(&json).unwrap(), m);
        assert!(serde_json::from_str::<Mobile>(r#""call-me""#).is_err());
    }

    #[test]
    fn country_codes() {
        assert_eq!(parse_country_code("+852"), Ok("852".into()));
        assert_eq!(parse_country_code("1"), Ok("1".into()));
        for bad in ["", "+", "12345", "8a"] {
            assert_eq!(
                parse_country_code(bad),
                Err(MobileError::CountryCode(bad.into()))
            );
        }
    }
}
