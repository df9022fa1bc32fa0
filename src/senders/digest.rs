//! What goes to a group robot in one webhook call: a single message, a digest of several
//! waiting messages (newest last, mentions united), or one part of a message too large for a
//! robot, numbered. Every body built here fits DingTalk's 20000-byte limit.

use super::markdown;
use super::render::{titled_text, to_dingtalk};
use super::split::{split_markdown, split_text};
use crate::clock::Zone;
use crate::dingtalk::client::WEBHOOK_MAX_BODY;
use crate::dingtalk::{At, Message};
use crate::domain::message::{self as send, MsgKey};

/// A waiting message and when it was accepted.
pub struct Item<'a> {
    pub message: &'a send::Message,
    pub accepted_at_ms: i64,
}

/// The webhook body size of `msg` (what DingTalk limits).
pub fn body_len(msg: &Message, at: &At) -> usize {
    msg.to_webhook(at)
        .map_or(usize::MAX, |v| v.to_string().len())
}

/// Whether `msg` fits one webhook call with `room` bytes to spare (for a robot's keyword).
pub fn fits(msg: &Message, at: &At, room: usize) -> bool {
    body_len(msg, at).saturating_add(room) <= WEBHOOK_MAX_BODY
}

/// One message as a robot shows it.
pub fn single(m: &send::Message) -> (Message, At) {
    to_dingtalk(m, true)
}

/// Several waiting messages in one markdown: "12 alerts — 09:41–09:43", then each one's title,
/// time and content, oldest first; mentions of all of them.
pub fn digest(items: &[Item<'_>], zone: &Zone) -> (Message, At) {
    let (first, last) = (
        items[0].accepted_at_ms,
        items[items.len() - 1].accepted_at_ms,
    );
    let title = format!(
        "{} alerts — {}–{}",
        items.len(),
        zone.hh_mm(first, false),
        zone.hh_mm(last, false)
    );
    let mut text = format!("#### {title}\n");
    let mut at = At::default();
    for item in items {
        text.push_str(&render_item(item, zone));
        unite(&mut at.mobiles, &item.message.at_mobiles);
        unite(&mut at.user_ids, &item.message.at_user_ids);
        at.all |= item.message.at_all;
    }
    (Message::Markdown { title, text }, at)
}

fn unite(all: &mut Vec<String>, more: &[String]) {
    for who in more {
        if !all.contains(who) {
            all.push(who.clone());
        }
    }
}

/// Roughly what `item` adds to a digest's body (JSON-escaped), to size digests without
/// building each candidate: its text, and each mention twice (in `at` and as `@who` text).
pub fn item_len(item: &Item<'_>, zone: &Zone) -> usize {
    let m = item.message;
    serde_json::to_string(&render_item(item, zone)).map_or(usize::MAX, |s| s.len())
        + m.at_mobiles
            .iter()
            .chain(&m.at_user_ids)
            .map(|who| 2 * who.len() + 8)
            .sum::<usize>()
}

fn render_item(item: &Item<'_>, zone: &Zone) -> String {
    let m = item.message;
    let when = zone.hh_mm(item.accepted_at_ms, true);
    let mut text = String::from("\n---\n\n");
    match &m.title {
        Some(t) => text.push_str(&format!("**{}** · {when}\n\n", markdown::inline(t))),
        None => text.push_str(&format!("{when}\n\n")),
    }
    text.push_str(&markdown::content_of(m));
    text.push('\n');
    text
}

/// A message too large for one robot call, as numbered parts, each leaving `room` bytes to
/// spare: text stays text, everything else becomes markdown (a link or card's URL closes the
/// last part).
pub fn parts(m: &send::Message, room: usize) -> Vec<(Message, At)> {
    let (_, at) = single(m);
    parts_within(m, WEBHOOK_MAX_BODY.saturating_sub(room), |msg| {
        body_len(msg, &at)
    })
    .into_iter()
    .map(|p| (p, at.clone()))
    .collect()
}

/// DingTalk publishes no size limit for batchSend's `msgParam`; this conservative one keeps a
/// long message from being refused (a long text just goes out in more parts).
pub const BATCH_PARAM_MAX: usize = 6_000;

/// The single-chat form of a message: one `Message`, or numbered parts when its `msgParam`
/// would exceed [`BATCH_PARAM_MAX`].
pub fn batch_parts(m: &send::Message) -> Vec<Message> {
    let (one, _) = to_dingtalk(m, false);
    if param_len(&one) <= BATCH_PARAM_MAX {
        return vec![one];
    }
    parts_within(m, BATCH_PARAM_MAX, param_len)
}

/// DingTalk's limit on a work notification's content: about 2048 bytes.
pub const WORK_NOTICE_MAX: usize = 2_048;

/// The work-notification form of a message: one `Message`, or numbered parts when its `msg`
/// would exceed [`WORK_NOTICE_MAX`] less `room` (for what a retry adds to make it differ).
/// A message work notifications cannot carry stays whole, for its sender to refuse.
pub fn work_notice_parts(m: &send::Message, room: usize) -> Vec<Message> {
    let (one, _) = to_dingtalk(m, false);
    let max = WORK_NOTICE_MAX.saturating_sub(room);
    if one.to_work_notice().is_err() || notice_len(&one) <= max {
        return vec![one];
    }
    parts_within(m, max, notice_len)
}

fn notice_len(msg: &Message) -> usize {
    msg.to_work_notice()
        .map_or(usize::MAX, |v| v.to_string().len())
}

fn param_len(msg: &Message) -> usize {
    msg.to_batch().map_or(usize::MAX, |(_, p)| p.len())
}

/// Splits `m` into numbered parts each measuring at most `max` by `measure`.
fn parts_within(
    m: &send::Message,
    max: usize,
    measure: impl Fn(&Message) -> usize,
) -> Vec<Message> {
    let title = m.title.clone().unwrap_or_default();
    let is_text = m.msg_key == MsgKey::Text;
    let content = if is_text {
        titled_text(m, &m.content)
    } else {
        markdown::content_of(m)
    };
    // Escaping in JSON can grow the text (quotes, newlines, control characters): shrink the
    // budget until every part's real size fits.
    let mut budget = max.saturating_sub(600 + title.len()).max(1024);
    loop {
        let pieces = if is_text {
            split_text(&content, budget)
        } else {
            split_markdown(&content, budget)
        };
        let n = pieces.len();
        let built: Vec<Message> = pieces
            .into_iter()
            .enumerate()
            .map(|(k, text)| {
                if is_text {
                    Message::Text {
                        content: format!("({}/{n})\n{text}", k + 1),
                    }
                } else {
                    Message::Markdown {
                        title: format!("({}/{n}) {title}", k + 1),
                        text,
                    }
                }
            })
            .collect();
        if built.iter().all(|p| measure(p) <= max) || budget < 256 {
            return built;
        }
        budget = budget * 9 / 10;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn msg(key: MsgKey, title: Option<&str>, content: &str) -> send::Message {
        send::Message {
            msg_key: key,
            title: title.map(str::to_owned),
            content: content.to_owned(),
            url: None,
            pic_url: None,
            at_mobiles: vec![],
            at_user_ids: vec![],
            at_all: false,
        }
    }

    /// The text DingTalk shows for a webhook call, and how often it names `@who`.
    fn mentioned(msg: &Message, at: &At, who: &str) -> usize {
        let body = msg.to_webhook(at).unwrap();
        let text = body["markdown"]["text"]
            .as_str()
            .or(body["text"]["content"].as_str())
            .unwrap()
            .to_owned();
        text.matches(&format!("@{who}")).count()
    }

    #[test]
    fn every_single_digest_and_part_names_its_mentions_once() {
        let mut a = msg(
            MsgKey::Markdown,
            Some("Disk full"),
            "host-1 95% @13800000001",
        );
        a.at_mobiles = vec!["13800000001".into()];
        a.at_user_ids = vec!["manager4220".into()];
        let (m, at) = single(&a);
        assert_eq!(at.user_ids, ["manager4220"]);
        assert_eq!(mentioned(&m, &at, "13800000001"), 1);
        assert_eq!(mentioned(&m, &at, "manager4220"), 1);

        let mut b = msg(MsgKey::Text, None, "CPU high");
        b.at_mobiles = vec!["+852-91234567".into(), "13800000001".into()];
        b.at_user_ids = vec!["manager4220".into()];
        let items = [&a, &b].map(|m| Item {
            message: m,
            accepted_at_ms: 0,
        });
        let (m, at) = digest(&items, &Zone::utc());
        assert_eq!(at.mobiles, ["13800000001", "+852-91234567"]);
        assert_eq!(at.user_ids, ["manager4220"]);
        for who in ["13800000001", "+852-91234567", "manager4220"] {
            assert_eq!(mentioned(&m, &at, who), 1, "{who}");
        }

        for key in [MsgKey::Markdown, MsgKey::Text] {
            let mut big = msg(
                key,
                Some("Big"),
                &"- 磁盘已满 host \"/data\"\n".repeat(3000),
            );
            big.at_mobiles = (0..40).map(|i| format!("138000000{i:02}")).collect();
            big.at_user_ids = vec!["manager4220".into()];
            let parts = parts(&big, 0);
            assert!(parts.len() >= 3, "{}", parts.len());
            for (k, (p, at)) in parts.iter().enumerate() {
                assert!(body_len(p, at) <= WEBHOOK_MAX_BODY, "part {k}");
                for who in big.at_mobiles.iter().chain(&big.at_user_ids) {
                    assert_eq!(mentioned(p, at, who), 1, "part {k}: {who}");
                }
            }
        }
    }

    #[test]
    fn a_digest_lists_every_message_oldest_first_and_unites_mentions() {
        let mut a = msg(MsgKey::Markdown, Some("Disk full"), "host-1 95%");
        a.at_mobiles = vec!["13800000001".into()];
        let mut b = msg(MsgKey::Text, None, "CPU high");
        b.at_mobiles = vec!["13800000001".into(), "13800000002".into()];
        b.at_all = true;
        let t0 = 1_700_000_000_000; // 06:13:20 +08:00 is 22:13:20 UTC the day before
        let (m, at) = digest(
            &[
                Item {
                    message: &a,
                    accepted_at_ms: t0,
                },
                Item {
                    message: &b,
                    accepted_at_ms: t0 + 125_000,
                },
            ],
            &Zone::parse("+08:00").unwrap(),
        );
        let Message::Markdown { title, text } = m else {
            panic!()
        };
        assert_eq!(title, "2 alerts — 06:13–06:15");
        let disk = text.find("**Disk full** · 06:13:20").unwrap();
        let cpu = text.find("06:15:25\n\nCPU high").unwrap();
        assert!(disk < cpu, "{text}");
        assert_eq!(at.mobiles, ["13800000001", "13800000002"]);
        assert!(at.all);
    }

    #[test]
    fn text_in_a_digest_keeps_its_lines_and_the_estimate_counts_what_that_adds() {
        let alert = msg(
            MsgKey::Text,
            Some("CPU *high*"),
            "主机: host-1\n- 当前值: 97%",
        );
        let item = Item {
            message: &alert,
            accepted_at_ms: 0,
        };
        let (m, at) = digest(&[item], &Zone::utc());
        let Message::Markdown { text, .. } = &m else {
            panic!()
        };
        assert!(
            text.contains("**CPU \\*high\\*** · 00:00:00\n\n主机: host-1  \n  \\- 当前值: 97%\n"),
            "{text}"
        );
        // Short lines grow most: the estimate must see the breaks and escapes, or a digest
        // planned by it would not fit.
        let lines = msg(MsgKey::Text, None, &"- x\n".repeat(1500));
        let item = Item {
            message: &lines,
            accepted_at_ms: 0,
        };
        let (m, at2) = digest(&[item], &Zone::utc());
        let empty = msg(MsgKey::Text, None, "");
        let framing = body_len(
            &digest(
                &[Item {
                    message: &empty,
                    accepted_at_ms: 0,
                }],
                &Zone::utc(),
            )
            .0,
            &at,
        );
        let estimate = item_len(
            &Item {
                message: &lines,
                accepted_at_ms: 0,
            },
            &Zone::utc(),
        );
        assert!(
            estimate + framing >= body_len(&m, &at2),
            "{estimate} + {framing}"
        );
        assert!(estimate > 2 * lines.content.len(), "{estimate}");
    }

    #[test]
    fn a_60_kb_markdown_goes_out_in_numbered_parts_that_fit_and_reassemble() {
        let mut content = String::new();
        let mut i = 0;
        while content.len() < 60_000 {
            content.push_str(&format!(
                "- 第{i}行: 磁盘已满 host-{i} \"/data\" at 95% \\ {}\n",
                "x".repeat(i % 50)
            ));
            if i % 97 == 0 {
                content.push_str("```sh\ndf -h /data\n```\n");
            }
            i += 1;
        }
        let m = msg(MsgKey::Markdown, Some("Big report"), &content);
        assert!(!fits(&single(&m).0, &single(&m).1, 0));
        let parts = parts(&m, 0);
        assert!(parts.len() >= 3, "{}", parts.len());
        let mut texts = vec![];
        for (k, (p, at)) in parts.iter().enumerate() {
            assert!(
                body_len(p, at) <= WEBHOOK_MAX_BODY,
                "part {k}: {}",
                body_len(p, at)
            );
            let Message::Markdown { title, text } = p else {
                panic!()
            };
            assert_eq!(title, &format!("({}/{}) Big report", k + 1, parts.len()));
            texts.push(text.clone());
        }
        assert_eq!(super::super::split::join_markdown(&texts), content);
    }

    #[test]
    fn long_single_chat_messages_are_split_within_the_param_limit() {
        let short = msg(MsgKey::Markdown, Some("T"), "short");
        assert_eq!(batch_parts(&short).len(), 1);
        let long = msg(
            MsgKey::Markdown,
            Some("T"),
            &"第一行 disk \"full\"\n".repeat(1200),
        );
        let parts = batch_parts(&long);
        assert!(parts.len() >= 4, "{}", parts.len());
        let mut texts = vec![];
        for p in &parts {
            assert!(p.to_batch().unwrap().1.len() <= BATCH_PARAM_MAX);
            let Message::Markdown { text, .. } = p else {
                panic!()
            };
            texts.push(text.clone());
        }
        assert_eq!(super::super::split::join_markdown(&texts), long.content);
    }

    #[test]
    fn a_long_link_text_goes_out_in_markdown_parts_that_keep_its_lines_and_fit() {
        let mut m = msg(
            MsgKey::Link,
            Some("Report"),
            &"- 第一行 \"x\"\n".repeat(4000),
        );
        m.url = Some("https://example.com/r/1".into());
        let parts = parts(&m, 0);
        assert!(parts.len() >= 2, "{}", parts.len());
        for (k, (p, at)) in parts.iter().enumerate() {
            assert!(
                body_len(p, at) <= WEBHOOK_MAX_BODY,
                "part {k}: {}",
                body_len(p, at)
            );
            let Message::Markdown { text, .. } = p else {
                panic!()
            };
            assert!(text.contains("\\- 第一行 \"x\"  \n  "), "part {k}");
        }
        let Message::Markdown { text, .. } = &parts.last().unwrap().0 else {
            panic!()
        };
        assert!(
            text.ends_with("[查看详情](https://example.com/r/1)"),
            "{text}"
        );
    }

    #[test]
    fn long_text_parts_are_numbered_text() {
        let m = msg(MsgKey::Text, Some("T"), &"告警内容 ".repeat(6000));
        let parts = parts(&m, 0);
        assert!(parts.len() >= 2);
        let Message::Text { content } = &parts[1].0 else {
            panic!()
        };
        assert!(content.starts_with(&format!("(2/{})\n", parts.len())));
    }

    pub(crate) mod fuzz {
        use super::*;
        use crate::fuzz::{config, long_text, odd_string};
        use crate::senders::split::join_markdown;
        use proptest::prelude::*;
        use proptest::sample::select;

        /// A message as the ESB sources accept it: any key, an odd title, long odd content,
        /// distinct mentions.
        pub(crate) fn message(max: usize) -> impl Strategy<Value = send::Message> {
            (
                select(vec![
                    MsgKey::Text,
                    MsgKey::Markdown,
                    MsgKey::Link,
                    MsgKey::ActionCard,
                ]),
                proptest::option::of(odd_string(256)),
                prop_oneof![odd_string(300), long_text(max)],
                proptest::option::of("https://example\\.com/[a-z0-9/._-]{0,40}"),
                proptest::collection::btree_set("1[3-9][0-9]{9}", 0..4),
                proptest::collection::btree_set("[a-z][a-z0-9]{3,12}", 0..3),
                any::<bool>(),
            )
                .prop_map(
                    |(msg_key, title, content, url, mobiles, user_ids, at_all)| {
                        let title = title
                            .map(|t| t.trim().to_owned())
                            .filter(|t| !t.is_empty())
                            .or_else(|| msg_key.needs_title().then(|| "t".to_owned()));
                        let url = url.or_else(|| msg_key.needs_url().then(|| "https://x/1".into()));
                        send::Message {
                            msg_key,
                            title,
                            content,
                            url,
                            pic_url: None,
                            at_mobiles: mobiles.into_iter().collect(),
                            at_user_ids: user_ids.into_iter().collect(),
                            at_all,
                        }
                    },
                )
        }

        /// The text a part shows.
        pub(crate) fn shown(m: &Message) -> &str {
            match m {
                Message::Text { content } => content,
                Message::Markdown { text, .. }
                | Message::Link { text, .. }
                | Message::ActionCard { text, .. } => text,
                other => panic!("no part is {other:?}"),
            }
        }

        /// Every numbered part fits its limit, names every mention once, and the parts
        /// reassemble to the message: text by concatenation after the numbers, markdown by
        /// `join_markdown`.
        fn check_parts(
            m: &send::Message,
            parts: &[Message],
            max: usize,
            measure: fn(&Message) -> usize,
        ) {
            let n = parts.len();
            let mut texts = vec![];
            for (k, p) in parts.iter().enumerate() {
                assert!(measure(p) <= max, "part {k} of {n}: {} > {max}", measure(p));
                texts.push(shown(p).to_owned());
            }
            if n == 1 {
                return;
            }
            if m.msg_key == MsgKey::Text {
                let rest: Vec<&str> = texts
                    .iter()
                    .enumerate()
                    .map(|(k, t)| {
                        t.strip_prefix(&format!("({}/{n})\n", k + 1))
                            .expect("numbered")
                    })
                    .collect();
                assert_eq!(rest.concat(), titled_text(m, &m.content));
            } else {
                assert_eq!(join_markdown(&texts), markdown::content_of(m));
            }
        }

        proptest! {
            #![proptest_config(config(40))]

            #[test]
            fn fuzz_parts_fit_their_path_and_reassemble(m in message(60_000), room in 0..=200usize) {
                let robot = parts(&m, room);
                for (k, (p, at)) in robot.iter().enumerate() {
                    prop_assert!(body_len(p, at) + room <= WEBHOOK_MAX_BODY, "part {k}");
                    for who in m.at_mobiles.iter().chain(&m.at_user_ids) {
                        prop_assert_eq!(mentioned(p, at, who), 1, "part {}: {}", k, who);
                    }
                }
                let robot: Vec<Message> = robot.into_iter().map(|(p, _)| p).collect();
                check_parts(&m, &robot, WEBHOOK_MAX_BODY - room, |p| body_len(p, &At::default()));
                check_parts(&m, &batch_parts(&m), BATCH_PARAM_MAX, param_len);
                check_parts(&m, &work_notice_parts(&m, room), WORK_NOTICE_MAX - room, notice_len);
            }

            /// A digest of any messages lists each once, in order, and unites their mentions.
            #[test]
            fn fuzz_digest_lists_every_message_once(
                ms in proptest::collection::vec(message(2_000), 1..12),
                zone in select(vec!["+08:00", "-12:00", "+14:00", "Asia/Shanghai", "UTC"]),
                start in -62_135_596_800_000i64..253_402_300_799_000,
            ) {
                let marked: Vec<send::Message> = ms
                    .into_iter()
                    .enumerate()
                    .map(|(i, mut m)| {
                        m.content = format!("{}\nQZX{i:04}Q\n", m.content);
                        m
                    })
                    .collect();
                let items: Vec<Item<'_>> = marked
                    .iter()
                    .enumerate()
                    .map(|(i, m)| Item { message: m, accepted_at_ms: start + i as i64 * 61_000 })
                    .collect();
                let (d, at) = digest(&items, &Zone::parse(zone).unwrap());
                let text = shown(&d);
                let mut last = 0;
                for i in 0..marked.len() {
                    let marker = format!("QZX{i:04}Q");
                    prop_assert_eq!(text.matches(&marker).count(), 1, "{}", marker);
                    let pos = text.find(&marker).unwrap();
                    prop_assert!(pos > last, "{} out of order", marker);
                    last = pos;
                }
                for m in &marked {
                    for who in &m.at_mobiles {
                        prop_assert_eq!(at.mobiles.iter().filter(|w| *w == who).count(), 1);
                    }
                    prop_assert!(!m.at_all || at.all);
                }
            }

            /// Text in markdown keeps its lines and puts nothing on one line that breaks it.
            #[test]
            fn fuzz_text_in_markdown_keeps_its_lines(text in odd_string(300)) {
                let lines = text.replace("\r\n", "\n").replace('\r', "\n").matches('\n').count();
                prop_assert_eq!(markdown::from_text(&text).matches('\n').count(), lines);
                let one = markdown::inline(&text);
                prop_assert!(!one.contains(['\n', '\r']));
            }
        }
    }
}
