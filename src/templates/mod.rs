//! Templates that override the title and the body of a message: an Alertmanager or Grafana
//! notification (`?template=NAME` on the webhook URL) or a `send_msg`/`send_ding` message (a
//! channel's comp_conf `template`). They are Jinja (minijinja, no includes, no macros), with
//! the helpers of `helpers.rs`, checked when stored (`store::set` refuses a syntax error with
//! its line and column) and bounded when rendered (fuel, recursion, output size), so a template
//! can make a send fall back to the built-in layout but never stall or crash it.
//!
//! A template file is what ops people write: its first line is the title, the rest the body.

pub mod helpers;
pub mod message;
pub mod sample;
pub mod store;

use crate::clock::Zone;
use minijinja::{Environment, UndefinedBehavior};
use std::fmt;

/// A stored template: its name and the Jinja source of the title and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub name: String,
    pub title: String,
    pub body: String,
}

/// The longest template source taken (title and body each).
pub const MAX_SOURCE_BYTES: usize = 64 * 1024;
/// The longest rendered body: a robot message past 20000 bytes is sent in numbered parts, so
/// this bounds the parts one render makes to a handful, not the message.
pub const MAX_BODY_BYTES: usize = 128 * 1024;
/// The longest rendered title, as a send's `title` argument.
pub const MAX_TITLE_CHARS: usize = 256;
/// Instructions (and memory, about 64 bytes each) one render may use: a 300-alert group with
/// a few lines each takes well under a tenth of it.
const FUEL: u64 = 2_000_000;
/// Nesting depth of loops and conditions.
const RECURSION_LIMIT: usize = 64;

/// Which source a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Title,
    Body,
}

impl Part {
    fn as_str(self) -> &'static str {
        match self {
            Self::Title => "title",
            Self::Body => "body",
        }
    }
}

/// What is wrong with a template, with the place in the template file when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub part: Part,
    /// 1-based line and column in the template file (the title is line 1).
    pub at: Option<(usize, usize)>,
    pub problem: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, col)) => write!(
                f,
                "line {line}, column {col} ({}): {}",
                self.part.as_str(),
                self.problem
            ),
            None => write!(f, "{}: {}", self.part.as_str(), self.problem),
        }
    }
}

impl std::error::Error for TemplateError {}

impl Template {
    /// A template file: the first line is the title, everything after it the body.
    pub fn from_file(name: &str, text: &str) -> Result<Self, TemplateError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let (title, body) = text.split_once('\n').unwrap_or((text, ""));
        let title = title.trim_end_matches('\r').trim();
        let refuse = |part, problem: &str| TemplateError {
            part,
            at: None,
            problem: problem.to_owned(),
        };
        if title.is_empty() {
            return Err(refuse(
                Part::Title,
                "the first line is empty; it is the title, e.g. [{{ status | upper }}] {{ commonLabels.alertname }}",
            ));
        }
        if body.trim().is_empty() {
            return Err(refuse(
                Part::Body,
                "is empty; the lines after the title are the message's body",
            ));
        }
        let t = Self {
            name: name.to_owned(),
            title: title.to_owned(),
            body: body.to_owned(),
        };
        t.compile()?;
        Ok(t)
    }

    /// The file `from_file` reads back.
    pub fn to_file(&self) -> String {
        format!("{}\n{}", self.title, self.body)
    }

    /// Checks both sources for syntax errors (an unknown filter shows only when rendered, so
    /// `store::set` renders the samples too).
    pub fn compile(&self) -> Result<(), TemplateError> {
        for (part, source) in [(Part::Title, &self.title), (Part::Body, &self.body)] {
            if source.len() > MAX_SOURCE_BYTES {
                return Err(TemplateError {
                    part,
                    at: None,
                    problem: format!("is larger than {MAX_SOURCE_BYTES} bytes"),
                });
            }
            let env = environment(Zone::utc());
            env.template_from_str(source)
                .map_err(|e| located(part, source, &e))?;
        }
        Ok(())
    }

    /// The title (one line) and the body for `ctx`, times shown in `zone`.
    pub fn render(
        &self,
        ctx: &serde_json::Value,
        zone: &Zone,
    ) -> Result<(String, String), TemplateError> {
        let env = environment(zone.clone());
        let ctx = minijinja::Value::from(minijinja::value::Serde(ctx));
        let run = |part: Part, source: &str| {
            env.template_from_str(source)
                .and_then(|t| t.render(&ctx))
                .map_err(|e| located(part, source, &e))
        };
        let title = run(Part::Title, &self.title)?;
        let title = title.split_whitespace().collect::<Vec<_>>().join(" ");
        if title.is_empty() {
            return Err(TemplateError {
                part: Part::Title,
                at: None,
                problem: "renders empty".into(),
            });
        }
        if title.chars().count() > MAX_TITLE_CHARS {
            return Err(TemplateError {
                part: Part::Title,
                at: None,
                problem: format!("renders longer than {MAX_TITLE_CHARS} characters"),
            });
        }
        let body = run(Part::Body, &self.body)?.trim().to_owned();
        if body.is_empty() {
            return Err(TemplateError {
                part: Part::Body,
                at: None,
                problem: "renders empty".into(),
            });
        }
        if body.len() > MAX_BODY_BYTES {
            return Err(TemplateError {
                part: Part::Body,
                at: None,
                problem: format!("renders {} bytes, more than {MAX_BODY_BYTES}", body.len()),
            });
        }
        Ok((title, body))
    }
}

/// A template name as URLs and comp_conf carry it.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not a template name (1 to 64 of a-z, A-Z, 0-9, '-', '_', '.'; e.g. ops-alerts)"
        ))
    }
}

/// Sources are compiled for each render: a template is a few lines, and an environment holds
/// no state between sends (the zone is the only setting).
fn environment(zone: Zone) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(RECURSION_LIMIT);
    // Keeps the spans of errors: a refusal gives the column, not only the line.
    env.set_debug(true);
    // A field one sender has and another lacks (Grafana's dashboardURL) renders empty.
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    helpers::register(&mut env, zone);
    env
}

/// The error with its line and column in the template file.
fn located(part: Part, source: &str, e: &minijinja::Error) -> TemplateError {
    let mut problem = e.kind().to_string();
    if let Some(detail) = e.detail() {
        problem.push_str(": ");
        problem.push_str(detail);
    }
    let at = e.line().map(|line| {
        let column = e
            .range()
            .and_then(|r| source.get(..r.start))
            .map_or(1, |before| {
                before.rsplit('\n').next().unwrap_or("").chars().count() + 1
            });
        // The body starts on the file's second line.
        let line = match part {
            Part::Title => line,
            Part::Body => line + 1,
        };
        (line, column)
    });
    TemplateError { part, at, problem }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(file: &str) -> Result<Template, TemplateError> {
        Template::from_file("t", file)
    }

    #[test]
    fn a_file_is_a_title_line_then_the_body() {
        let tpl = t("[{{ status }}] {{ title }}\r\n**{{ content }}**\n").unwrap();
        assert_eq!(tpl.title, "[{{ status }}] {{ title }}");
        let (title, body) = tpl
            .render(
                &json!({"status": "ok", "title": "Disk", "content": "full"}),
                &Zone::utc(),
            )
            .unwrap();
        assert_eq!((title.as_str(), body.as_str()), ("[ok] Disk", "**full**"));
        assert_eq!(Template::from_file("t", &tpl.to_file()).unwrap(), tpl);
    }

    #[test]
    fn syntax_errors_name_the_line_and_column_of_the_file() {
        let e = t("title\nline two\n  {{ content | upper }\n").unwrap_err();
        assert_eq!((e.part, e.at), (Part::Body, Some((3, 22))), "{e}");
        assert!(
            e.to_string()
                .starts_with("line 3, column 22 (body): syntax error"),
            "{e}"
        );
        let e = t("{% if x %}title\nbody").unwrap_err();
        assert_eq!((e.part, e.at.map(|a| a.0)), (Part::Title, Some(1)), "{e}");
        let e = t("title\n{{ x | no_such_filter }}")
            .unwrap()
            .render(&sample::message(), &Zone::utc())
            .unwrap_err();
        assert!(e.to_string().contains("no_such_filter"), "{e}");
        assert!(e.to_string().starts_with("line 2"), "{e}");
    }

    #[test]
    fn an_empty_title_or_body_is_refused_with_the_fix() {
        assert!(t("\nbody").unwrap_err().problem.contains("first line"));
        assert!(t("title\n  \n")
            .unwrap_err()
            .problem
            .contains("after the title"));
        let tpl = t("{{ missing }}\nbody").unwrap();
        let e = tpl.render(&json!({}), &Zone::utc()).unwrap_err();
        assert_eq!(e.to_string(), "title: renders empty");
    }

    #[test]
    fn renders_are_bounded_and_never_panic() {
        let forever = t(
            "t\n{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        )
        .unwrap();
        let e = forever.render(&json!({}), &Zone::utc()).unwrap_err();
        assert!(e.problem.contains("fuel"), "{e}");
        let big = t("t\n{{ 'x' * 200000 }}").unwrap();
        assert!(big.render(&json!({}), &Zone::utc()).is_err());
        let long = t("{{ 'y' * 300 }}\nbody").unwrap();
        let e = long.render(&json!({}), &Zone::utc()).unwrap_err();
        assert!(e.problem.contains("256"), "{e}");
        let bad_types = t("t\n{{ 1 + 'a' }}").unwrap();
        let e = bad_types.render(&json!({}), &Zone::utc()).unwrap_err();
        assert_eq!(e.at.map(|a| a.0), Some(2), "{e}");
    }

    #[test]
    fn names_are_url_and_conf_safe() {
        assert!(check_name("ops-alerts_v2.1").is_ok());
        for bad in ["", "a b", "a/b", "x?y", &"n".repeat(65)] {
            assert!(
                check_name(bad).unwrap_err().contains("e.g. ops-alerts"),
                "{bad}"
            );
        }
    }
}
