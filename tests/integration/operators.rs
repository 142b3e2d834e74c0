//! The operator's commands through the real binary: retry, fix-domain,
//! check, status and list.

use std::time::Duration;

use crate::helpers::{Run, TestEnv, binary, guide_tenant_args, request_tenant, strs};

const WAIT: Duration = Duration::from_secs(60);

fn status(env: &TestEnv, schema: &str) -> serde_json::Value {
    let run = env.provision(&["status", "--schema-name", schema, "--json"]);
    run.expect_code(0);
    run.json()
}

/// The steps recorded as transitions, in order.
fn transitions(status: &serde_json::Value) -> Vec<String> {
    status["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["from_state"] != h["state"])
        .map(|h| format!("{}→{}", h["step"].as_str().unwrap(), h["state"].as_str().unwrap()))
        .collect()
}

fn assert_failed_at(status: &serde_json::Value, step: &str, error_part: &str) {
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(status["failed_step"], step, "{status}");
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(error.contains(error_part), "error {error:?} lacks {error_part:?}");
}

#[tokio::test]
async fn a_tenant_failed_at_register_is_retried_to_ready_once_its_domain_is_fixed() {
    let env = TestEnv::new("failreg").await;
    request_tenant(&env, "t_reg");
    // Another tenant takes the domain between the request and the job.
    sqlx::raw_sql(
        "INSERT INTO tenants_client (schema_name, name, paid_until, on_trial, is_active, trial_days, created_on)
         VALUES ('squatter', 'S', '2030-01-01', false, true, 0, '2026-01-01');
         INSERT INTO tenants_domain (domain, tenant_id, is_primary)
         SELECT 't-reg.newconcierge.app', id, true FROM tenants_client WHERE schema_name = 'squatter';",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let _worker = env.start_worker(&[]).await;
    env.wait_for_state("t_reg", "failed", WAIT).await;
    let failed = status(&env, "t_reg");
    assert_failed_at(&failed, "register", "squatter");
    // Nothing half-made: no tenants_client row, no schema.
    let schemas: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname = 't_reg'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(schemas, 0);
    assert_eq!(failed["domains"].as_array().unwrap().len(), 0);

    env.provision(&[
        "fix-domain",
        "--schema-name",
        "t_reg",
        "--domain",
        "t-reg2.newconcierge.app",
    ])
    .expect_code(0);
    env.provision(&["retry", "--schema-name", "t_reg"]).expect_code(0);
    env.wait_for_state("t_reg", "ready", WAIT).await;
    let ready = status(&env, "t_reg");
    assert_eq!(ready["domains"][0]["domain"], "t-reg2.newconcierge.app");
    assert_eq!(
        transitions(&ready),
        [
            "request→requested",
            "register→failed",
            "retry→requested",
            "register→registered",
            "create_schema→schema_created",
            "migrate→migrated",
            "create_admin→admin_created",
            "activate→ready"
        ]
    );
}

#[tokio::test]
async fn a_tenant_failed_at_create_schema_for_want_of_permission_resumes_after_the_grant() {
    let mut env = TestEnv::new("failperm").await;
    let (role, url) = env.limited_role(false).await;
    request_tenant(&env, "t_perm");
    let _worker = env.start_worker(&[("DATABASE_URL", &url)]).await;
    env.wait_for_state("t_perm", "failed", WAIT).await;
    assert_failed_at(&status(&env, "t_perm"), "create_schema", "permission denied");

    let db: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "GRANT CREATE ON DATABASE \"{db}\" TO \"{role}\""
    )))
    .execute(&env.pool)
    .await
    .unwrap();
    env.provision(&["retry", "--schema-name", "t_perm"])
        .expect_code(0);
    env.wait_for_state("t_perm", "ready", WAIT).await;
    let ready = status(&env, "t_perm");
    let steps = transitions(&ready);
    assert_eq!(
        steps.iter().filter(|s| s.starts_with("register→")).count(),
        1,
        "register ran again: {steps:?}"
    );
    assert_eq!(steps.last().unwrap(), "activate→ready");
    // The schema belongs to the limited role: provisioning ran without a superuser.
    let owner: String = sqlx::query_scalar(
        "SELECT pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname = 't_perm'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(owner, role);
}

/// A tenant migration that needs a public table a shared migration has not
/// made yet: the tenant fails at `migrate`, naming it, with the migrations
/// before it applied; once the public table exists, `retry` finishes it.
#[tokio::test]
async fn a_tenant_failed_at_a_broken_migration_resumes_after_the_fix() {
    let env = TestEnv::new("failmig").await;
    let needs_country = "ALTER TABLE \"buildings_building\" ADD COLUMN \"country_id\" integer NULL \
                         REFERENCES public.concierge_country (id) DEFERRABLE INITIALLY DEFERRED;";
    env.add_tenant_migrations(&[("buildings", "0002_country", needs_country)]);
    request_tenant(&env, "t_mig");
    let worker = env.start_worker(&[]).await;
    env.wait_for_state("t_mig", "failed", WAIT).await;
    let failed = status(&env, "t_mig");
    assert_failed_at(&failed, "migrate", "migration buildings.0002_country");
    let initial = crate::migrations::built_in_keys_and(&[]).len();
    assert_eq!(
        failed["migration"]["applied"], initial,
        "the migrations before it stay applied, each in its own transaction"
    );
    assert_eq!(failed["migration"]["latest"], initial + 1);
    drop(worker);

    sqlx::query("CREATE TABLE public.concierge_country (id integer PRIMARY KEY)")
        .execute(&env.pool)
        .await
        .unwrap();
    let _worker = env.start_worker(&[]).await;
    env.provision(&["retry", "--schema-name", "t_mig"]).expect_code(0);
    env.wait_for_state("t_mig", "ready", WAIT).await;
    let ready = status(&env, "t_mig");
    assert_eq!(ready["migration"]["applied"], initial + 1);
    let steps = transitions(&ready);
    for step in ["register→registered", "create_schema→schema_created"] {
        assert_eq!(
            steps.iter().filter(|s| *s == step).count(),
            1,
            "{step} ran again: {steps:?}"
        );
    }
    let column: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns
         WHERE table_schema = 't_mig' AND table_name = 'buildings_building' AND column_name = 'country_id'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(column, 1);
}

#[tokio::test]
async fn retry_refuses_a_tenant_that_has_not_failed_and_names_its_state() {
    let env = TestEnv::new("retryno").await;
    request_tenant(&env, "t_ok");
    let run = env.provision(&["retry", "--schema-name", "t_ok"]);
    run.expect_code(1);
    assert!(run.stderr.contains("requested"), "{}", run.stderr);
    let unknown = env.provision(&["retry", "--schema-name", "nobody", "--json"]);
    unknown.expect_code(2);
    assert!(
        unknown.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("provision list")
    );
    let none = env.provision(&["retry", "--all-failed", "--json"]);
    none.expect_code(0);
    assert_eq!(none.json()["requeued"], 0);
}

#[tokio::test]
async fn fix_domain_adds_switches_refuses_and_then_changes_nothing() {
    let env = TestEnv::new("fixdomain").await;
    env.provision(&["init", "--public-domain", "newconcierge.app"])
        .expect_code(0);
    request_tenant(&env, "theo");
    let _worker = env.start_worker(&[]).await;
    env.wait_for_state("theo", "ready", WAIT).await;

    // Missing domain: the guide's "domain not found" case.
    sqlx::query("DELETE FROM tenants_domain WHERE domain = 'theo.newconcierge.app'")
        .execute(&env.pool)
        .await
        .unwrap();
    let added = env.provision(&["fix-domain", "--schema-name", "theo", "--json"]);
    added.expect_code(0);
    assert_eq!(added.json()["result"], "added");
    assert_eq!(
        status(&env, "theo")["domains"],
        serde_json::json!([{"domain": "theo.newconcierge.app", "is_primary": true}])
    );

    // Wrong primary switched.
    env.provision(&[
        "fix-domain",
        "--schema-name",
        "theo",
        "--domain",
        "theo.example.org",
    ])
    .expect_code(0);
    let doc = status(&env, "theo");
    assert_eq!(
        doc["domains"],
        serde_json::json!([
            {"domain": "theo.example.org", "is_primary": true},
            {"domain": "theo.newconcierge.app", "is_primary": false}
        ])
    );
    let switched = env.provision(&[
        "fix-domain",
        "--schema-name",
        "theo",
        "--domain",
        "theo.newconcierge.app",
    ]);
    switched.expect_code(0);
    assert!(
        switched.stdout.contains("Made theo.newconcierge.app the primary"),
        "{}",
        switched.stdout
    );

    // Another tenant's domain is refused and nothing changes.
    let before = env.pg_snapshot().await;
    let refused = env.provision(&[
        "fix-domain",
        "--schema-name",
        "theo",
        "--domain",
        "newconcierge.app",
        "--json",
    ]);
    refused.expect_code(2);
    assert_eq!(refused.json()["error"]["field"], "domain");
    assert!(
        refused.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("public")
    );
    assert_eq!(env.pg_snapshot().await, before);

    // A second run changes nothing.
    let again = env.provision(&["fix-domain", "--schema-name", "theo", "--json"]);
    again.expect_code(0);
    assert_eq!(again.json()["result"], "unchanged");
    assert_eq!(env.pg_snapshot().await, before);
    let history = status(&env, "theo")["history"].clone();
    let fixes = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["step"] == "fix_domain")
        .count();
    assert_eq!(fixes, 3, "each change is in the history, the no-op is not");
}

fn check(env: &TestEnv, extra: &[(&str, &str)]) -> (Run, serde_json::Value) {
    let mut args = vec!["check", "--json"];
    let mut owned = Vec::new();
    for (k, v) in extra {
        owned.push(format!("--{k}={v}"));
    }
    args.extend(owned.iter().map(String::as_str));
    let run = env.provision(&args);
    let doc = run.json();
    (run, doc)
}

fn item<'a>(doc: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {doc}"))
}

#[tokio::test]
async fn check_fails_the_right_item_for_each_broken_condition_and_passes_once_fixed() {
    let env = TestEnv::new_without_migrations("check").await;
    // A fresh database: public migrations pending, no public tenant, no worker.
    let (run, doc) = check(&env, &[]);
    run.expect_code(1);
    assert_eq!(doc["ok"], false);
    assert_eq!(item(&doc, "database")["ok"], true);
    assert_eq!(item(&doc, "redis")["ok"], true);
    assert_eq!(item(&doc, "public_migrations")["ok"], false);
    assert_eq!(item(&doc, "public_tenant")["ok"], false);
    assert_eq!(item(&doc, "workers")["ok"], false);
    assert!(
        item(&doc, "public_migrations")["hint"]
            .as_str()
            .unwrap()
            .contains("provision")
    );

    env.provision(&["init", "--public-domain", "newconcierge.app"])
        .expect_code(0);
    let (_, doc) = check(&env, &[]);
    assert_eq!(item(&doc, "public_migrations")["ok"], true);
    assert_eq!(item(&doc, "public_tenant")["ok"], true);
    assert_eq!(item(&doc, "workers")["ok"], false);

    // A tenant stuck in a non-final state.
    request_tenant(&env, "stuck");
    sqlx::query(
        "UPDATE provision_tenant SET updated_at = now() - interval '1 hour' WHERE schema_name = 'stuck'",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let (_, doc) = check(&env, &[]);
    assert_eq!(item(&doc, "tenants")["ok"], false);
    assert!(
        item(&doc, "tenants")["detail"]
            .as_str()
            .unwrap()
            .contains("stuck (requested)")
    );

    // A worker starts: alive, and it carries the stuck tenant to ready.
    let _worker = env.start_worker(&[]).await;
    env.wait_for_state("stuck", "ready", WAIT).await;
    let (run, doc) = check(&env, &[]);
    assert_eq!(doc["ok"], true, "{doc}");
    run.expect_code(0);
    assert!(
        item(&doc, "tenants")["detail"]
            .as_str()
            .unwrap()
            .contains("ready 1")
    );
}

#[tokio::test]
async fn check_reports_unreachable_servers_and_a_role_that_cannot_create_schemas() {
    let mut env = TestEnv::new("checkdown").await;
    let (_, doc) = check(
        &env,
        &[("database-url", "postgres://postgres:secret@127.0.0.1:1/nowhere")],
    );
    assert_eq!(item(&doc, "database")["ok"], false);
    let detail = item(&doc, "database")["detail"].as_str().unwrap();
    assert!(
        detail.contains("127.0.0.1:1") && !detail.contains("secret"),
        "{detail}"
    );
    assert_eq!(item(&doc, "redis")["ok"], true);

    let (run, doc) = check(&env, &[("redis-url", "redis://127.0.0.1:1")]);
    run.expect_code(1);
    assert_eq!(item(&doc, "redis")["ok"], false);
    assert_eq!(item(&doc, "database")["ok"], true);

    let (role, url) = env.limited_role(false).await;
    let (_, doc) = check(&env, &[("database-url", &url)]);
    assert_eq!(item(&doc, "schema_permission")["ok"], false);
    assert!(
        item(&doc, "schema_permission")["hint"]
            .as_str()
            .unwrap()
            .contains("GRANT CREATE")
    );
    let db: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "GRANT CREATE ON DATABASE \"{db}\" TO \"{role}\""
    )))
    .execute(&env.pool)
    .await
    .unwrap();
    let (_, doc) = check(&env, &[("database-url", &url)]);
    assert_eq!(item(&doc, "schema_permission")["ok"], true);

    // The other commands say which server could not be reached (exit 3).
    let down = env.provision(&[
        "list",
        "--json",
        "--database-url",
        "postgres://postgres:pw@127.0.0.1:1/x",
    ]);
    down.expect_code(3);
    let message = down.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("PostgreSQL") && message.contains("127.0.0.1:1") && !message.contains("pw"),
        "{message}"
    );
    let mut args = guide_tenant_args("theo");
    args.extend([
        "--redis-url".into(),
        "redis://127.0.0.1:1".into(),
        "--json".into(),
    ]);
    let down = env.provision(&strs(&args));
    down.expect_code(3);
    assert!(
        down.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Redis")
    );
}

#[tokio::test]
async fn status_and_list_answer_the_guides_questions() {
    let env = TestEnv::new("statuslist").await;
    request_tenant(&env, "alpha");
    request_tenant(&env, "beta");
    // Days remaining, counted across month (and year) boundaries.
    let migrations = provision_shared::migration_set::MigrationSet::in_force(&env.pool)
        .await
        .unwrap();
    let job = provision_shared::create_tenant::JobEnv {
        pool: &env.pool,
        sink: &crate::provisioning::NoQueue,
        migrations: &migrations,
        actor: "test",
        policy: provision_shared::retry::RetryPolicy { max_attempts: 8 },
    };
    provision_shared::create_tenant::run_create_tenant_steps(&job, "alpha", 1)
        .await
        .unwrap();
    let date = |s: &str| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
    for (paid_until, today, days) in [
        ("2026-12-03", "2026-11-28", 5),
        ("2027-03-01", "2027-01-30", 30),
        ("2027-01-02", "2026-12-30", 3),
        ("2026-11-27", "2026-11-28", -1),
    ] {
        sqlx::query("UPDATE tenants_client SET paid_until = $1 WHERE schema_name = 'alpha'")
            .bind(date(paid_until))
            .execute(&env.pool)
            .await
            .unwrap();
        let status =
            provision_shared::status::tenant_status(&env.pool, "alpha", Some(&migrations), date(today))
                .await
                .unwrap();
        assert_eq!(
            status.days_remaining,
            Some(days),
            "paid until {paid_until}, today {today}"
        );
    }
    let json = status(&env, "alpha");
    assert!(
        json["days_remaining"].is_i64() && json["paid_until"].is_string(),
        "{json}"
    );
    let unknown = env.provision(&["status", "--schema-name", "nobody"]);
    unknown.expect_code(2);
    assert!(unknown.stderr.contains("provision list"), "{}", unknown.stderr);

    let list = env.provision(&["list", "--json"]);
    list.expect_code(0);
    let rows = list.json();
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["schema_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["beta", "alpha"], "newest first");
    assert_eq!(rows[1]["state"], "registered");
    for field in ["schema_name", "name", "state", "primary_domain", "updated_at"] {
        assert!(rows[0].get(field).is_some(), "list --json lacks {field}");
    }
    let text = env.provision(&["list"]);
    text.expect_code(0);
    let lines: Vec<&str> = text.stdout.lines().collect();
    let state_column = lines[0].find("STATE").unwrap();
    assert!(
        lines[1].get(state_column..).unwrap().starts_with("requested"),
        "{}",
        text.stdout
    );
    assert!(
        lines[2].get(state_column..).unwrap().starts_with("registered"),
        "{}",
        text.stdout
    );
    let bad = env.provision(&["list", "--state", "done"]);
    bad.expect_code(2);
    assert!(
        bad.stderr.contains("requested") && bad.stderr.contains("failed"),
        "{}",
        bad.stderr
    );
    let filtered = env.provision(&["list", "--state", "ready", "--json"]);
    assert_eq!(filtered.json(), serde_json::json!([]));
}

/// `provision list | head`: the reader is gone before anything is printed.
/// The command exits as a Unix tool stopped by a closed pipe does (141),
/// with no panic on stderr.
#[tokio::test]
async fn a_closed_stdout_ends_the_command_quietly() {
    let env = TestEnv::new("opspipe").await;
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let output = std::process::Command::new(binary("provision"))
        .envs(env.env_vars())
        .args(["list"])
        .stdin(std::process::Stdio::null())
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run provision");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(141), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
