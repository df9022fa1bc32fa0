use crate::helpers::*;

fn refused(env: &[(&str, &str)]) -> String {
    let db = TestDb::new();
    let o = cli(&db.url, &repo_manifest(), &["migrate"], env);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one line, no backtrace: {err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    err
}

#[test]
fn a_bad_bind_address_names_the_key_and_the_fix() {
    let err = refused(&[("DING_CHANNEL_BIND", "localhost")]);
    assert!(
        err.contains(
            "DING_CHANNEL_BIND (environment): 'localhost' is not a socket address (use HOST:PORT"
        ),
        "{err}"
    );
}

#[test]
fn an_unknown_database_scheme_names_the_key() {
    let err = refused(&[("DATABASE_URL", "mysql://root@localhost/x")]);
    assert!(
        err.contains(
            "DATABASE_URL (environment): unknown scheme 'mysql' (use sqlite://PATH or postgres://"
        ),
        "{err}"
    );
}

#[test]
fn a_config_file_with_a_typo_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ding-channel.toml");
    std::fs::write(&file, "ding_channel_workerz = 3\n").unwrap();
    let err = refused(&[("DING_CHANNEL_CONFIG", file.to_str().unwrap())]);
    assert!(err.contains("unknown key 'ding_channel_workerz'"), "{err}");
}

#[test]
fn file_values_apply_and_environment_wins() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "ding_channel_bind = \"bad-from-file\"\n").unwrap();
    let err = refused(&[("DING_CHANNEL_CONFIG", file.to_str().unwrap())]);
    assert!(
        err.contains(&format!("DING_CHANNEL_BIND (in {})", file.display())),
        "{err}"
    );
    let db = TestDb::new();
    let o = cli(
        &db.url,
        &repo_manifest(),
        &["migrate"],
        &[
            ("DING_CHANNEL_CONFIG", file.to_str().unwrap()),
            ("DING_CHANNEL_BIND", "127.0.0.1:0"),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

#[cfg(not(feature = "postgres"))]
#[test]
fn postgres_without_the_feature_says_how_to_get_it() {
    let db = TestDb::new();
    let o = cli(
        &db.url,
        &repo_manifest(),
        &["migrate"],
        &[("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("built without PostgreSQL support") && err.contains("--features postgres"),
        "{err}"
    );
}

#[test]
fn an_unreachable_database_is_reported_not_panicked() {
    let o = cli(
        "sqlite:///nonexistent-dir/x/y.db",
        &repo_manifest(),
        &["migrate"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.starts_with("error: cannot open the database sqlite:///nonexistent-dir/x/y.db"),
        "{err}"
    );
}
