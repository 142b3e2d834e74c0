//! Migrations at scale: one schema, migrate-all runs over hundreds of
//! schemas with several worker processes, failures, killed workers, the
//! nightly schedule.

use std::time::Duration;

use provision_shared::create_tenant::{JobEnv, JobOutcome, run_create_tenant};
use provision_shared::migrate::TenantMigrations;
use provision_shared::password::django_argon2_hash;
use provision_shared::request::{TenantRequest, record_request};
use provision_shared::state::TenantState;

use crate::helpers::TestEnv;
use crate::provisioning::NoQueue;

const WAIT: Duration = Duration::from_secs(120);
const ADD_NOTES: &str = "ALTER TABLE buildings_building ADD COLUMN notes text;\n\
                         CREATE INDEX buildings_building_notes_idx ON buildings_building (notes);";

/// `n` ready tenants `<prefix>_<i>` at the built-in migrations, made by
/// stepping the handlers directly, four at a time.
async fn ready_tenants(env: &TestEnv, prefix: &str, n: usize) -> Vec<String> {
    let hash = django_argon2_hash("a-long-password");
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}_{i:04}")).collect();
    let migrations = TenantMigrations::embedded();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in names.chunks(n.div_ceil(4)) {
        let (pool, hash, migrations, chunk) =
            (env.pool.clone(), hash.clone(), migrations.clone(), chunk.to_vec());
        tasks.spawn(async move {
            let job = JobEnv {
                pool: &pool,
                sink: &NoQueue,
                migrations: &migrations,
                actor: "test",
                policy: provision_shared::retry::RetryPolicy { max_attempts: 8 },
            };
            for schema in chunk {
                let request = TenantRequest {
                    schema_name: schema.clone(),
                    tenant_name: format!("Tenant {schema}"),
                    domain: format!("{}.newconcierge.app", schema.replace('_', "-")),
                    admin_email: format!("admin@{}.example.com", schema.replace('_', "-")),
                    admin_password_hash: hash.clone(),
                    trial_days: 30,
                    seed_demo_data: false,
                };
                record_request(&pool, &request, "test").await.unwrap();
                let outcome = run_create_tenant(&job, &schema).await.unwrap();
                assert_eq!(outcome, JobOutcome::Finished(TenantState::Ready));
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    names
}

/// Per schema, the versions its bookkeeping records.
async fn recorded_versions(env: &TestEnv, schema: &str) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT version FROM provision_tenant_migration WHERE schema_name = $1 ORDER BY version",
    )
    .bind(schema)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

async fn has_notes_column(env: &TestEnv, schema: &str) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns
         WHERE table_schema = $1 AND table_name = 'buildings_building' AND column_name = 'notes')",
    )
    .bind(schema)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn migrate_one_schema_applies_the_new_migration_and_records_it() {
    let mut env = TestEnv::new("migone").await;
    let names = ready_tenants(&env, "one", 2).await;
    env.use_tenant_migrations(&[("0002_notes.sql", ADD_NOTES)]);
    let _worker = env.start_worker(&[]).await;
    let run = env.provision(&["migrate", "--schema-name", &names[0], "--wait", "--json"]);
    run.expect_code(0);
    assert_eq!(run.json()["applied"], 2);
    assert_eq!(recorded_versions(&env, &names[0]).await, [1, 2]);
    assert!(has_notes_column(&env, &names[0]).await);
    assert_eq!(
        recorded_versions(&env, &names[1]).await,
        [1],
        "only the one asked for"
    );
    let status = env
        .provision(&["status", "--schema-name", &names[0], "--json"])
        .json();
    assert_eq!(
        status["migration"],
        serde_json::json!({"applied": 2, "latest": 2})
    );
    let events = status["history"].as_array().unwrap();
    assert!(events.iter().any(|e| e["step"] == "migrate_schema"), "{status}");
}

#[tokio::test]
async fn migrate_all_over_hundreds_of_schemas_with_two_workers_migrates_each_exactly_once() {
    let mut env = TestEnv::new("migall").await;
    let names = ready_tenants(&env, "many", 300).await;
    env.use_tenant_migrations(&[("0002_notes.sql", ADD_NOTES)]);
    let check = env.provision(&["check", "--json"]).json();
    let behind = check["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "schemas_behind")
        .unwrap();
    assert_eq!(behind["ok"], false);
    assert!(
        behind["detail"]
            .as_str()
            .unwrap()
            .starts_with("300 tenant schema(s) behind"),
        "{behind}"
    );

    let first = env.start_worker(&[("PROVISION_CONCURRENCY", "4")]).await;
    let second = env.start_worker(&[("PROVISION_CONCURRENCY", "4")]).await;
    let run = env.provision(&["migrate", "--all", "--wait", "--json"]);
    run.expect_code(0);
    let summary = run.json();
    assert_eq!(summary["state"], "finished");
    assert_eq!(
        (summary["total"].as_i64(), summary["migrated"].as_i64()),
        (Some(300), Some(300)),
        "{summary}"
    );
    assert_eq!(
        (summary["failed"].as_i64(), summary["already_current"].as_i64()),
        (Some(0), Some(0))
    );
    for schema in &names {
        assert_eq!(recorded_versions(&env, schema).await, [1, 2], "{schema}");
    }
    let applied: Vec<(String, Vec<i32>)> = sqlx::query_as(
        "SELECT schema_name, applied FROM provision_migration_run_schema ORDER BY schema_name",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(applied.len(), 300);
    assert!(
        applied.iter().all(|(_, a)| a == &[2]),
        "a schema's migration was applied twice or not at all"
    );
    for worker in [&first, &second] {
        assert!(
            worker.log_text().contains("schema migrated"),
            "a worker did no migrate-all work"
        );
    }
    // Run again: nothing to do, one cheap statement, finished at once.
    let again = env.provision(&["migrate", "--all", "--wait", "--json"]);
    again.expect_code(0);
    let again = again.json();
    assert_eq!(
        (again["total"].as_i64(), again["already_current"].as_i64()),
        (Some(0), Some(300))
    );
    // As an operator sees it: the counts, and no empty progress bar.
    let plain = env.provision(&["migrate", "--all", "--wait"]);
    plain.expect_code(0);
    assert!(
        plain.stdout.contains("migrated 0, already current 300, failed 0"),
        "{plain:?}"
    );
    assert!(
        !plain.stderr.contains("0/0"),
        "an empty run drew a bar: {plain:?}"
    );
    let check = env.provision(&["check", "--json"]).json();
    let behind = check["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "schemas_behind")
        .unwrap();
    assert_eq!(behind["ok"], true, "{behind}");
}

#[tokio::test]
async fn a_failing_schema_does_not_stop_the_others_and_retry_brings_it_to_the_latest() {
    let mut env = TestEnv::new("migfail").await;
    let names = ready_tenants(&env, "part", 20).await;
    let broken = &names[7];
    // Sabotage one schema: the migration's column is already there.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE \"{broken}\".buildings_building ADD COLUMN notes text"
    )))
    .execute(&env.pool)
    .await
    .unwrap();
    env.use_tenant_migrations(&[("0002_notes.sql", ADD_NOTES)]);
    let _worker = env.start_worker(&[]).await;
    let run = env.provision(&["migrate", "--all", "--wait", "--json"]);
    run.expect_code(1);
    let summary = run.json();
    assert_eq!(
        (summary["migrated"].as_i64(), summary["failed"].as_i64()),
        (Some(19), Some(1)),
        "{summary}"
    );
    assert_eq!(summary["failures"][0]["schema_name"], broken.as_str());
    let error = summary["failures"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("migration 2 (notes)") && error.contains("already exists"),
        "{error}"
    );
    assert_eq!(
        recorded_versions(&env, broken).await,
        [1],
        "the failed migration left nothing behind"
    );
    let status = env
        .provision(&["status", "--schema-name", broken, "--json"])
        .json();
    assert_eq!(status["migration"]["applied"], 1);

    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE \"{broken}\".buildings_building DROP COLUMN notes"
    )))
    .execute(&env.pool)
    .await
    .unwrap();
    let retry = env.provision(&["retry", "--schema-name", broken]);
    retry.expect_code(0);
    assert!(retry.stdout.contains("failed migration"), "{}", retry.stdout);
    // Follows the reopened run to its end.
    let run = env.provision(&["migrate", "--all", "--wait", "--json"]);
    run.expect_code(0);
    assert_eq!(run.json()["failed"], 0, "{}", run.stdout);
    assert_eq!(recorded_versions(&env, broken).await, [1, 2]);
    assert!(has_notes_column(&env, broken).await);
}

#[tokio::test]
async fn killing_a_worker_mid_run_still_completes_with_no_schema_half_migrated() {
    let mut env = TestEnv::new("migkill").await;
    let names = ready_tenants(&env, "kill", 150).await;
    // Slow enough that the run is still going when the worker dies.
    let slow = format!("SELECT pg_sleep(0.03);\n{ADD_NOTES}");
    env.use_tenant_migrations(&[("0002_notes.sql", &slow)]);
    let mut doomed = env.start_worker(&[("PROVISION_CONCURRENCY", "4")]).await;
    let _survivor = env.start_worker(&[("PROVISION_CONCURRENCY", "4")]).await;
    env.provision(&["migrate", "--all"]).expect_code(0);
    let start = std::time::Instant::now();
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM provision_migration_run_schema WHERE state = 'migrated'",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
        if done >= 30 {
            break;
        }
        assert!(start.elapsed() < WAIT, "the run never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    doomed.signal("KILL");
    doomed.wait_exit(Duration::from_secs(10)).await;
    let run = env.provision(&["migrate", "--all", "--wait", "--json"]);
    run.expect_code(0);
    let summary = run.json();
    assert_eq!(summary["state"], "finished");
    assert_eq!(summary["failed"], 0, "{summary}");
    for schema in &names {
        assert_eq!(recorded_versions(&env, schema).await, [1, 2], "{schema}");
        assert!(has_notes_column(&env, schema).await, "{schema} is half-migrated");
    }
}

#[tokio::test]
async fn a_changed_applied_migration_is_refused_with_a_clear_error() {
    let mut env = TestEnv::new("migsum").await;
    let names = ready_tenants(&env, "sum", 1).await;
    let dir = env.use_tenant_migrations(&[("0002_notes.sql", ADD_NOTES)]);
    let _worker = env.start_worker(&[]).await;
    env.provision(&["migrate", "--schema-name", &names[0], "--wait"])
        .expect_code(0);
    drop(_worker);
    std::fs::write(
        dir.join("0002_notes.sql"),
        "ALTER TABLE buildings_building ADD COLUMN notes varchar(10);",
    )
    .unwrap();
    std::fs::write(
        dir.join("0003_more.sql"),
        "ALTER TABLE buildings_building ADD COLUMN more text;",
    )
    .unwrap();
    let _worker = env.start_worker(&[]).await;
    let run = env.provision(&["migrate", "--schema-name", &names[0], "--wait", "--json"]);
    run.expect_code(1);
    let error = run.json()["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("migration 2 (notes)") && error.contains("was changed after it was applied"),
        "{error}"
    );
    assert_eq!(
        recorded_versions(&env, &names[0]).await,
        [1, 2],
        "nothing further was applied"
    );
}

#[tokio::test]
async fn two_workers_with_a_fast_schedule_start_one_run_per_tick() {
    let env = TestEnv::new("cron").await;
    let every_two_seconds = [("PROVISION_MIGRATE_ALL_CRON", "*/2 * * * * *")];
    let _a = env.start_worker(&every_two_seconds).await;
    let _b = env.start_worker(&every_two_seconds).await;
    let start = std::time::Instant::now();
    let ticks = loop {
        let ticks: Vec<(chrono::DateTime<chrono::Utc>, String)> = sqlx::query_as(
            "SELECT tick, started_by FROM provision_migration_run WHERE trigger = 'cron' ORDER BY tick",
        )
        .fetch_all(&env.pool)
        .await
        .unwrap();
        if ticks.len() >= 3 {
            break ticks;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "too few ticks: {ticks:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for pair in ticks.windows(2) {
        assert_eq!(
            (pair[1].0 - pair[0].0).num_seconds(),
            2,
            "a tick is missing or doubled: {ticks:?}"
        );
    }
}

#[tokio::test]
async fn a_tick_missed_while_no_worker_ran_is_run_at_the_next_start() {
    let env = TestEnv::new("catchup").await;
    let worker = env
        .start_worker(&[("PROVISION_MIGRATE_ALL_CRON", "0 0 * * * *")])
        .await;
    let this_hour = {
        let now = chrono::Utc::now();
        now - chrono::Duration::seconds(i64::from(
            chrono::Timelike::num_seconds_from_midnight(&now) % 3600,
        ))
    };
    let runs: Vec<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT tick FROM provision_migration_run WHERE trigger = 'cron'")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}\n{}", worker.log_text());
    assert_eq!(
        runs[0].timestamp(),
        this_hour.timestamp() - this_hour.timestamp() % 3600
    );
    drop(worker);
    // A second start within the hour finds the tick covered.
    let _again = env
        .start_worker(&[("PROVISION_MIGRATE_ALL_CRON", "0 0 * * * *")])
        .await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM provision_migration_run")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

/// One job for several schemas of a run, which go in groups of
/// `SCHEMAS_PER_TRANSACTION` per transaction: schemas behind are migrated,
/// their outcome recorded in the same transaction; one whose recorded
/// migrations were tampered with is stopped by the guard, which rolls its
/// group back, then failed by the one-transaction-per-migration runner with
/// the exact error, while the rest of its group is migrated that way; one
/// that is no longer queued in the run is left alone; the groups after them
/// are migrated.
#[tokio::test]
async fn a_batch_job_migrates_each_schema_and_reports_a_tampered_or_stale_one_exactly() {
    use provision_shared::migrate_all::{
        RunScope, RunStart, RunTrigger, SCHEMAS_PER_TRANSACTION, SchemaOutcome, migrate_run_schemas,
        start_run,
    };
    let mut env = TestEnv::new("migbatch").await;
    // The tampered schema inside the first group, the stale one after the
    // second group, then two groups' worth more.
    let count = 3 * SCHEMAS_PER_TRANSACTION;
    let names = ready_tenants(&env, "batch", count).await;
    let (tampered, stale) = (&names[2], &names[SCHEMAS_PER_TRANSACTION + 2]);
    let fine: Vec<&String> = names.iter().filter(|n| *n != tampered && *n != stale).collect();
    sqlx::query(
        "UPDATE provision_tenant_migration SET checksum = 'edited' WHERE schema_name = $1 AND version = 1",
    )
    .bind(tampered)
    .execute(&env.pool)
    .await
    .unwrap();
    let set =
        TenantMigrations::from_dir(&env.use_tenant_migrations(&[("0002_notes.sql", ADD_NOTES)])).unwrap();
    let RunStart::Started(run_id) = start_run(&env.pool, RunTrigger::Operator, RunScope::All, "test", 2)
        .await
        .unwrap()
    else {
        panic!("no run started");
    };
    // Queued as the dispatcher queues them, all but the stale one.
    sqlx::query(
        "UPDATE provision_migration_run_schema SET state = 'queued', queued_at = now(), attempt = 1
         WHERE run_id = $1 AND schema_name <> $2",
    )
    .bind(run_id)
    .bind(stale)
    .execute(&env.pool)
    .await
    .unwrap();

    let outcomes = migrate_run_schemas(
        &env.pool,
        &set,
        run_id,
        &names,
        provision_shared::retry::RetryPolicy { max_attempts: 8 },
        "test",
    )
    .await
    .unwrap();

    assert_eq!(outcomes.len(), count);
    for (name, (schema, outcome)) in names.iter().zip(&outcomes) {
        assert_eq!(name, schema, "outcomes in the job's order");
        match outcome {
            SchemaOutcome::Failed(error) if schema == tampered => assert!(
                error.contains("migration 1") && error.contains("was changed after it was applied"),
                "{error}"
            ),
            SchemaOutcome::NotQueued if schema == stale => {}
            SchemaOutcome::Migrated(applied) if fine.contains(&schema) => assert_eq!(applied, &[2]),
            other => panic!("{schema} ended {other:?}"),
        }
    }
    let rows: Vec<(String, String, Vec<i32>, i32)> = sqlx::query_as(
        "SELECT s.schema_name, s.state, s.applied, t.schema_version
         FROM provision_migration_run_schema s JOIN provision_tenant t USING (schema_name)
         WHERE s.run_id = $1 ORDER BY s.schema_name",
    )
    .bind(run_id)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let expected: Vec<(String, String, Vec<i32>, i32)> = names
        .iter()
        .map(|n| match n {
            n if n == tampered => (n.clone(), "failed".into(), vec![], 1),
            n if n == stale => (n.clone(), "pending".into(), vec![], 1),
            n => (n.clone(), "migrated".into(), vec![2], 2),
        })
        .collect();
    assert_eq!(rows, expected);
    for schema in &fine {
        assert_eq!(recorded_versions(&env, schema).await, [1, 2], "{schema}");
        assert!(has_notes_column(&env, schema).await, "{schema}");
    }
    for untouched in [tampered, stale] {
        assert_eq!(recorded_versions(&env, untouched).await, [1], "{untouched}");
        assert!(!has_notes_column(&env, untouched).await, "{untouched}");
    }
}
