//! Bad input is refused with exit 2, a message naming the field, and
//! nothing written; secrets never leave `provision` in plain text.

use std::time::Duration;

use crate::helpers::{TestEnv, guide_tenant_args, strs};

const PASSWORD: &str = "Pl41n-Text-S3cret!";

#[tokio::test]
async fn bad_input_is_rejected_with_exit_2_naming_the_field_and_nothing_written() {
    let env = TestEnv::new("badinput").await;
    env.provision(&["init", "--public-domain", "newconcierge.app"])
        .expect_code(0);
    let pg_before = env.pg_snapshot().await;
    let redis_before = env.redis_dump().await;
    let long = "a".repeat(64);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--schema-name", "Theo"], "schema_name"),
        (vec!["--schema-name", "public"], "schema_name"),
        (vec!["--schema-name", "pg_x"], "schema_name"),
        (vec!["--schema-name", "1abc"], "schema_name"),
        (vec!["--schema-name", &long], "schema_name"),
        (vec!["--schema-name", "theo; DROP SCHEMA public"], "schema_name"),
        (vec!["--schema-name", ""], "schema_name"),
        (vec!["--domain", "Not A Domain"], "domain"),
        (vec!["--domain", "theo..newconcierge.app"], "domain"),
        // Owned by the public tenant made by `init` above.
        (vec!["--domain", "newconcierge.app"], "domain"),
        (vec!["--admin-email", "not-an-email"], "admin_email"),
        (vec!["--admin-email", "theo@"], "admin_email"),
        (vec!["--tenant-name", ""], "tenant_name"),
        (vec!["--trial-days", "-1"], "trial_days"),
        (vec!["--admin-password", "short"], "admin_password"),
    ];
    for (overrides, field) in cases {
        let mut args = guide_tenant_args("theo");
        args.extend(["--admin-password".into(), PASSWORD.into()]);
        for pair in overrides.chunks(2) {
            let at = args.iter().position(|a| a == pair[0]).expect("flag");
            args[at + 1] = pair[1].into();
        }
        let text = env.provision(&strs(&args));
        text.expect_code(2);
        assert!(
            text.stderr.contains(field),
            "{overrides:?}: the message does not name {field}:\n{}",
            text.stderr
        );
        args.push("--json".into());
        let json = env.provision(&strs(&args));
        json.expect_code(2);
        assert_eq!(json.json()["error"]["field"], field, "{overrides:?}");
    }
    assert_eq!(
        env.pg_snapshot().await,
        pg_before,
        "bad input wrote to PostgreSQL"
    );
    assert_eq!(env.redis_dump().await, redis_before, "bad input wrote to Redis");
    let missing = env.provision(&["create-tenant", "--tenant-name", "x", "--json"]);
    missing.expect_code(2);
    assert_eq!(missing.json()["error"]["code"], "usage");
}

#[tokio::test]
async fn the_admin_password_never_reaches_redis_logs_or_postgres_in_plain_text() {
    let env = TestEnv::new("secret").await;
    let worker = env
        .start_worker(&[
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "debug,sqlx=debug,apalis=debug"),
        ])
        .await;
    let password_file = env.dir().join("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let mut args = guide_tenant_args("theo");
    args.extend([
        "--admin-password-file".into(),
        password_file.display().to_string(),
        "--wait".into(),
    ]);
    let run = env.provision(&strs(&args));
    run.expect_code(0);
    assert!(!run.stdout.contains(PASSWORD) && !run.stderr.contains(PASSWORD));
    // Let the demo data job finish too, so every key it writes is there.
    env.wait_for_state("theo", "ready", Duration::from_secs(30)).await;

    for (key, value) in env.redis_dump().await {
        assert!(
            !value.contains(PASSWORD) && !key.contains(PASSWORD),
            "Redis key {key} holds the password"
        );
    }
    let log = worker.log_text();
    assert!(
        log.contains("transition"),
        "the worker logged nothing useful:\n{log}"
    );
    assert!(!log.contains(PASSWORD), "the worker's log holds the password");
    // Every row this project wrote, in every table of the database.
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables
         WHERE table_schema IN ('public', 'theo') AND table_type = 'BASE TABLE'",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert!(tables.len() >= 8);
    for (schema, table) in tables {
        let hits: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM \"{schema}\".\"{table}\" t WHERE strpos(t::text, $1) > 0"
        )))
        .bind(PASSWORD)
        .fetch_one(&env.pool)
        .await
        .unwrap();
        assert_eq!(hits, 0, "{schema}.{table} holds the password in plain text");
    }
}
