//! What the fuzz targets share (tests only). Each target is a property test (proptest) named
//! `fuzz_*` in the unit tests of the code it fuzzes, so it reaches private functions; all of
//! them run with `cargo test --lib fuzz_`. Each runs the case count it gives [`config`] (the
//! whole set well under a minute in debug) from a fixed seed, or `PROPTEST_CASES` cases
//! from `PROPTEST_RNG_SEED` when those are set: see docs/reliability.md, "Fuzzing". Nothing
//! here names another module of the crate, so the layering check has nothing to say about it.

use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{Config, RngSeed};
use serde_json::Value;

/// `cases` per run unless `PROPTEST_CASES` says otherwise, from a fixed seed unless
/// `PROPTEST_RNG_SEED` gives another: a plain `cargo test` runs the same cases every time, and
/// a longer run explores by naming a seed. A failure prints its shrunk input; no regression
/// file is written into `src/` (the fix comes with a unit test instead).
pub fn config(cases: u32) -> Config {
    let mut config = Config {
        failure_persistence: None,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(SEED);
    }
    config
}

const SEED: u64 = 20_260_415;

/// Characters that break naive code: UTF-8 of every width, NUL and other controls, the BOM,
/// U+FFFD, bidi overrides, line ends, and what markdown, JSON, forms and CSV read specially.
pub fn odd_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::char::range('a', 'z'),
        2 => select(vec![
            'é', '磁', '盘', '😀', '\u{10ffff}', '\0', '\u{1}', '\u{1b}', '\u{7f}', '\u{85}',
            '\u{a0}', '\u{200b}', '\u{202e}', '\u{2028}', '\u{feff}', '\u{fffd}', '\n', '\r',
            '\t', ' ',
        ]),
        2 => select(vec![
            '`', '~', '#', '*', '_', '[', ']', '(', ')', '<', '>', '\\', '"', '\'', '{', '}',
            ',', ';', '=', '&', '%', '+', '@', ':', '/', '-', '|', '!', '0', '9', '.',
        ]),
        1 => any::<char>(),
    ]
}

/// Up to `max` [`odd_char`]s.
pub fn odd_string(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(odd_char(), 0..=max).prop_map(String::from_iter)
}

/// Long text: pieces of [`odd_string`], markdown fence lines and line ends, some repeated
/// many times, up to roughly `max` bytes.
pub fn long_text(max: usize) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => odd_string(12),
        1 => select(vec![
            "\n", "\n\n", "\r\n", "```", "```sh\n", "~~~\n", "   ~~~~ info\n", "````\n",
            "\n```\n", "    ```\n", "- ", "# ", "1. ",
        ])
        .prop_map(str::to_owned),
    ];
    let times = prop_oneof![3 => 1..4usize, 1 => 1..=max / 8];
    let run = (piece, times).prop_map(move |(s, n)| s.repeat(n.min(1 + max / s.len().max(1))));
    proptest::collection::vec(run, 0..40).prop_map(move |runs| {
        let mut text = String::new();
        for r in runs {
            if text.len() + r.len() > max {
                break;
            }
            text.push_str(&r);
        }
        text
    })
}

/// JSON values with huge and odd numbers, [`odd_string`]s (keys too), nested a few levels.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::from),
        1 => prop_oneof![Just(i64::MIN), Just(-1), Just(0), Just(1), any::<i64>()].prop_map(Value::from),
        1 => prop_oneof![Just(u64::MAX), any::<u64>()].prop_map(Value::from),
        // NaN and the infinities become null, as serde_json writes them.
        1 => prop_oneof![Just(f64::MAX), Just(-0.0), Just(1e-320), Just(0.5), any::<f64>()]
            .prop_map(Value::from),
        3 => odd_string(24).prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            proptest::collection::vec((odd_string(10), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// JSON text, mostly well-formed, and what a parser must survive: nesting past any sane
/// depth, numbers beyond every type, lone surrogates, duplicate keys, a BOM, truncation.
pub fn json_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => json_value().prop_map(|v| v.to_string()),
        1 => (1..5_000usize, any::<bool>()).prop_map(|(depth, object)| if object {
            format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
        } else {
            format!("{}{}", "[".repeat(depth), "]".repeat(depth))
        }),
        1 => select(vec![
            "1e999999", "-1e-999999", "123456789012345678901234567890", "-0", "0.0e0",
            r#""\ud800""#, r#"{"a":"\udc00\ud800"}"#, r#"{"a":1,"a":{}}"#, "[1,]", "{",
            "\u{feff}{}", "NaN", "-Infinity", r#"{"a":"\u0000"}"#, "{}", "[]", "null", "\"\"",
        ])
        .prop_map(str::to_owned),
        1 => (json_value(), any::<Index>()).prop_map(|(v, at)| {
            let s = v.to_string();
            let mut cut = at.index(s.len() + 1);
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s[..cut].to_owned()
        }),
    ]
}

/// Arbitrary bytes, some of them the start of a JSON object or a form.
pub fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    (
        select(vec![&b""[..], b"{", b"{\"", b"a=", b"[", b"\xef\xbb\xbf"]),
        proptest::collection::vec(any::<u8>(), 0..=max),
    )
        .prop_map(|(head, tail)| [head, &tail].concat())
}

/// `doc` with a few values replaced by [`json_value`]s or removed: each edit walks down from
/// the root, a child picked at each step by an `Index`, for as many steps as it has.
pub fn mutated(doc: Value) -> impl Strategy<Value = Value> {
    let edit = (
        proptest::collection::vec(any::<Index>(), 1..6),
        proptest::option::weighted(0.8, json_value()),
    );
    proptest::collection::vec(edit, 1..4).prop_map(move |edits| {
        let mut doc = doc.clone();
        for (path, new) in edits {
            edit_at(&mut doc, &path, new);
        }
        doc
    })
}

fn edit_at(v: &mut Value, path: &[Index], new: Option<Value>) {
    let Some((step, rest)) = path.split_first() else {
        return;
    };
    let is_container = |v: &Value| match v {
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => false,
    };
    match v {
        Value::Array(a) if !a.is_empty() => {
            let k = step.index(a.len());
            match new {
                _ if !rest.is_empty() && is_container(&a[k]) => edit_at(&mut a[k], rest, new),
                Some(new) => a[k] = new,
                None => drop(a.remove(k)),
            }
        }
        Value::Object(o) if !o.is_empty() => {
            let key = o
                .keys()
                .nth(step.index(o.len()))
                .cloned()
                .unwrap_or_default();
            match new {
                _ if !rest.is_empty() && is_container(&o[&key]) => edit_at(&mut o[&key], rest, new),
                Some(new) => drop(o.insert(key, new)),
                None => drop(o.remove(&key)),
            }
        }
        _ => {
            if let Some(new) = new {
                *v = new;
            }
        }
    }
}

/// Whether any string in `v`, key or value, contains `needle`.
pub fn contains_str(v: &Value, needle: &str) -> bool {
    match v {
        Value::String(s) => s.contains(needle),
        Value::Array(a) => a.iter().any(|v| contains_str(v, needle)),
        Value::Object(o) => o
            .iter()
            .any(|(k, v)| k.contains(needle) || contains_str(v, needle)),
        _ => false,
    }
}
