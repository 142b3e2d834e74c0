//! Migrations at scale: one schema, migrate-all runs over hundreds of
//! schemas with several worker processes, failures, killed workers, the
//! nightly schedule.

use std::time::Duration;

use provision_shared::create_tenant::{JobEnv, JobOutcome, run_create_tenant};
use provision_shared::migration_set::MigrationSet;
use provision_shared::password::django_argon2_hash;
use provision_shared::request::{TenantRequest, record_request};
use provision_shared::state::TenantState;

use crate::helpers::{TestEnv, built_in_export};
use crate::provisioning::NoQueue;

const WAIT: Duration = Duration::from_secs(120);
/// The next migration of the platform model, as `sqlmigrate` prints an
/// `AddField` with `db_index=True` for a tenant.
const ADD_NOTES: &str = "--\n-- Add field notes to building\n--\n\
                         ALTER TABLE \"buildings_building\" ADD COLUMN \"notes\" text NULL;\n\
                         CREATE INDEX \"buildings_building_notes_idx\" ON \"buildings_building\" (\"notes\");";
const NOTES: &str = "buildings.0002_notes";

/// `n` ready tenants `<prefix>_<i>` at the built-in migrations, made by
/// stepping the handlers directly, four at a time.
pub async fn ready_tenants(env: &TestEnv, prefix: &str, n: usize) -> Vec<String> {
    let hash = django_argon2_hash("a-long-password");
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}_{i:04}")).collect();
    let migrations = MigrationSet::in_force(&env.pool).await.unwrap();
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

/// The built-in set's migrations, `app.name`, in plan order, then `extra`.
pub fn built_in_keys_and(extra: &[&str]) -> Vec<String> {
    built_in_export()["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("{}.{}", m["app"].as_str().unwrap(), m["name"].as_str().unwrap()))
        .chain(extra.iter().map(|e| (*e).to_owned()))
        .collect()
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

fn add_notes(env: &TestEnv, sql: &str) {
    env.add_tenant_migrations(&[("buildings", "0002_notes", sql)]);
}

#[tokio::test]
async fn migrate_one_schema_applies_the_new_migration_and_records_it() {
    let env = TestEnv::new("migone").await;
    let names = ready_tenants(&env, "one", 2).await;
    add_notes(&env, ADD_NOTES);
    let total = built_in_keys_and(&[NOTES]).len();
    let _worker = env.start_worker(&[]).await;
    // The platform's spelling, `--schema`, works as `--schema-name`.
    let run = env.provision(&["migrate", "--schema", &names[0], "--wait", "--json"]);
    run.expect_code(0);
    assert_eq!(run.json()["applied"], total);
    assert_eq!(env.ledger_of(&names[0]).await, built_in_keys_and(&[NOTES]));
    assert!(has_notes_column(&env, &names[0]).await);
    assert_eq!(
        env.ledger_of(&names[1]).await,
        built_in_keys_and(&[]),
        "only the one asked for"
    );
    let status = env
        .provision(&["status", "--schema-name", &names[0], "--json"])
        .json();
    assert_eq!(status["migration"]["applied"], total);
    assert_eq!(status["migration"]["latest"], total);
    assert_eq!(status["migration"]["pending"], serde_json::json!([]));
    let events = status["history"].as_array().unwrap();
    assert!(events.iter().any(|e| e["step"] == "migrate_schema"), "{status}");
}

#[tokio::test]
async fn migrate_all_over_hundreds_of_schemas_with_two_workers_migrates_each_exactly_once() {
    let env = TestEnv::new("migall").await;
    let names = ready_tenants(&env, "many", 200).await;
    add_notes(&env, ADD_NOTES);
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
            .starts_with("200 tenant schema(s) lack migrations"),
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
        (Some(200), Some(200)),
        "{summary}"
    );
    assert_eq!(
        (summary["failed"].as_i64(), summary["already_current"].as_i64()),
        (Some(0), Some(0))
    );
    let expected = built_in_keys_and(&[NOTES]);
    for schema in &names {
        assert_eq!(env.ledger_of(schema).await, expected, "{schema}");
    }
    let applied: Vec<(String, Vec<i32>)> = sqlx::query_as(
        "SELECT schema_name, applied FROM provision_migration_run_schema ORDER BY schema_name",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(applied.len(), 200);
    let position = i32::try_from(expected.len()).unwrap();
    assert!(
        applied.iter().all(|(_, a)| a == &[position]),
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
        (Some(0), Some(200))
    );
    // As an operator sees it: the counts, and no empty progress bar.
    let plain = env.provision(&["migrate", "--all", "--wait"]);
    plain.expect_code(0);
    assert!(
        plain.stdout.contains("migrated 0, already current 200, failed 0"),
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
    let env = TestEnv::new("migfail").await;
    let names = ready_tenants(&env, "part", 20).await;
    let broken = &names[7];
    // Sabotage one schema: the migration's column is already there.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE \"{broken}\".buildings_building ADD COLUMN notes text"
    )))
    .execute(&env.pool)
    .await
    .unwrap();
    add_notes(&env, ADD_NOTES);
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
        error.contains(&format!("migration {NOTES}")) && error.contains("already exists"),
        "{error}"
    );
    assert_eq!(
        env.ledger_of(broken).await,
        built_in_keys_and(&[]),
        "the failed migration left nothing behind"
    );
    let status = env
        .provision(&["status", "--schema-name", broken, "--json"])
        .json();
    assert_eq!(status["migration"]["applied"], built_in_keys_and(&[]).len());
    assert_eq!(status["migration"]["pending"], serde_json::json!([NOTES]));

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
    assert_eq!(env.ledger_of(broken).await, built_in_keys_and(&[NOTES]));
    assert!(has_notes_column(&env, broken).await);
}

#[tokio::test]
async fn killing_a_worker_mid_run_still_completes_with_no_schema_half_migrated() {
    let env = TestEnv::new("migkill").await;
    let names = ready_tenants(&env, "kill", 150).await;
    // Slow enough that the run is still going when the worker dies.
    let slow = format!("SELECT pg_sleep(0.03);\n{ADD_NOTES}");
    add_notes(&env, &slow);
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
    let expected = built_in_keys_and(&[NOTES]);
    for schema in &names {
        assert_eq!(env.ledger_of(schema).await, expected, "{schema}");
        assert!(has_notes_column(&env, schema).await, "{schema} is half-migrated");
    }
}

#[tokio::test]
async fn a_rewritten_migration_is_refused_at_import_and_nothing_changes() {
    let env = TestEnv::new("migsum").await;
    let names = ready_tenants(&env, "sum", 1).await;
    add_notes(&env, ADD_NOTES);
    let _worker = env.start_worker(&[]).await;
    env.provision(&["migrate", "--schema-name", &names[0], "--wait"])
        .expect_code(0);
    let sets_before: Vec<(i32, String)> =
        sqlx::query_as("SELECT version, checksum FROM provision_migration_set ORDER BY version")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    // The same migration with other SQL, and one more after it.
    let mut document = built_in_export();
    for (name, sql) in [
        (
            "0002_notes",
            "ALTER TABLE \"buildings_building\" ADD COLUMN \"notes\" varchar(10) NULL;",
        ),
        (
            "0003_more",
            "ALTER TABLE \"buildings_building\" ADD COLUMN \"more\" text NULL;",
        ),
    ] {
        document["plan"].as_array_mut().unwrap().push(serde_json::json!({
            "app": "buildings", "name": name, "sql": sql, "python": [], "changes_models": false,
        }));
        document["ledger"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!(["buildings", name]));
    }
    let run = env.import_document(&document);
    run.expect_code(2);
    let error = run.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        error.contains(NOTES) && error.contains("changed after it was imported"),
        "{error}"
    );
    let sets_after: Vec<(i32, String)> =
        sqlx::query_as("SELECT version, checksum FROM provision_migration_set ORDER BY version")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(sets_after, sets_before, "the stored set changed");
    assert_eq!(
        env.ledger_of(&names[0]).await,
        built_in_keys_and(&[NOTES]),
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
/// their outcome recorded in the same transaction; one whose table the
/// migration cannot alter stops its group, which rolls back, and is then
/// failed by the one-transaction-per-migration runner with the exact error,
/// while the rest of its group is migrated that way; one that is no longer
/// queued in the run is left alone; the groups after them are migrated.
/// Starts a run of every schema to `set` with no queue: nothing is pushed,
/// every schema behind is left pending for the test to hand out.
async fn start_run_unpushed(env: &TestEnv, set: &MigrationSet) -> i64 {
    use provision_shared::migrate_all::{RunScope, RunStart, RunTrigger, start_run};
    match start_run(
        &env.pool,
        set,
        RunTrigger::Operator,
        RunScope::All,
        "test",
        None::<&NoQueue>,
    )
    .await
    {
        Ok(RunStart::Started(run_id)) => run_id,
        other => panic!("no run started: {other:?}"),
    }
}

/// Runs run `run_id`'s `MigrateSchema` job for `names`, as a worker would.
async fn run_job(
    env: &TestEnv,
    set: &MigrationSet,
    run_id: i64,
    names: &[String],
) -> Vec<(String, provision_shared::migrate_all::SchemaOutcome)> {
    provision_shared::migrate_all::migrate_run_schemas(
        &env.pool,
        set,
        run_id,
        names,
        provision_shared::retry::RetryPolicy { max_attempts: 8 },
        "test",
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_batch_job_migrates_each_schema_and_reports_a_broken_or_stale_one_exactly() {
    use provision_shared::migrate_all::{SCHEMAS_PER_TRANSACTION, SchemaOutcome};
    let env = TestEnv::new("migbatch").await;
    // The broken schema inside the first group, the stale one after the
    // second group, then two groups' worth more.
    let count = 3 * SCHEMAS_PER_TRANSACTION;
    let names = ready_tenants(&env, "batch", count).await;
    let (broken, stale) = (&names[2], &names[SCHEMAS_PER_TRANSACTION + 2]);
    let fine: Vec<&String> = names.iter().filter(|n| *n != broken && *n != stale).collect();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE \"{broken}\".buildings_building ADD COLUMN notes integer"
    )))
    .execute(&env.pool)
    .await
    .unwrap();
    add_notes(&env, ADD_NOTES);
    let set = MigrationSet::in_force(&env.pool).await.unwrap();
    let run_id = start_run_unpushed(&env, &set).await;
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

    let outcomes = run_job(&env, &set, run_id, &names).await;

    let notes = i32::try_from(set.len()).unwrap();
    assert_eq!(outcomes.len(), count);
    for (name, (schema, outcome)) in names.iter().zip(&outcomes) {
        assert_eq!(name, schema, "outcomes in the job's order");
        match outcome {
            SchemaOutcome::Failed(error) if schema == broken => assert!(
                error.contains(&format!("migration {NOTES}")) && error.contains("already exists"),
                "{error}"
            ),
            SchemaOutcome::NotQueued if schema == stale => {}
            SchemaOutcome::Migrated(applied) if fine.contains(&schema) => assert_eq!(applied, &[notes]),
            other => panic!("{schema} ended {other:?}"),
        }
    }
    let rows: Vec<(String, String, Vec<i32>)> = sqlx::query_as(
        "SELECT schema_name, state, applied FROM provision_migration_run_schema
         WHERE run_id = $1 ORDER BY schema_name",
    )
    .bind(run_id)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let expected: Vec<(String, String, Vec<i32>)> = names
        .iter()
        .map(|n| match n {
            n if n == broken => (n.clone(), "failed".into(), vec![]),
            n if n == stale => (n.clone(), "pending".into(), vec![]),
            n => (n.clone(), "migrated".into(), vec![notes]),
        })
        .collect();
    assert_eq!(rows, expected);
    for schema in &fine {
        assert_eq!(
            env.ledger_of(schema).await,
            built_in_keys_and(&[NOTES]),
            "{schema}"
        );
        assert!(has_notes_column(&env, schema).await, "{schema}");
    }
    for untouched in [broken, stale] {
        assert_eq!(
            env.ledger_of(untouched).await,
            built_in_keys_and(&[]),
            "{untouched}"
        );
    }
    assert!(!has_notes_column(&env, stale).await);
}

/// A sink that keeps what is pushed to it, for a test to look at.
#[derive(Default)]
struct KeptJobs(std::sync::Mutex<Vec<provision_shared::jobs::JobRequest>>);

impl provision_shared::jobs::JobSink for KeptJobs {
    async fn push(
        &self,
        job: provision_shared::jobs::JobRequest,
    ) -> Result<String, provision_shared::ProvisionError> {
        self.0.lock().unwrap().push(job);
        Ok("kept".into())
    }
}

#[tokio::test]
async fn a_run_started_with_the_queue_at_hand_pushes_its_first_schemas_as_it_records_them() {
    use provision_shared::jobs::JobKind;
    use provision_shared::migrate_all::{RunScope, RunStart, RunTrigger, start_run};
    let env = TestEnv::new("migclaim").await;
    let names = ready_tenants(&env, "claim", 12).await;
    // A tenant row without its schema: failed at the start, never pushed.
    sqlx::query(
        "INSERT INTO public.tenants_client (schema_name, name, paid_until, on_trial, is_active, trial_days, created_on)
         VALUES ('claim_gone', 'Gone', current_date, true, true, 30, current_date)",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    add_notes(&env, ADD_NOTES);
    let set = MigrationSet::in_force(&env.pool).await.unwrap();
    let kept = KeptJobs::default();
    let RunStart::Started(run_id) = start_run(
        &env.pool,
        &set,
        RunTrigger::Operator,
        RunScope::All,
        "test",
        Some(&kept),
    )
    .await
    .unwrap() else {
        panic!("no run started");
    };
    let rows: Vec<(String, String, i32, bool)> = sqlx::query_as(
        "SELECT schema_name, state, attempt, queued_at IS NOT NULL FROM provision_migration_run_schema
         WHERE run_id = $1 ORDER BY schema_name",
    )
    .bind(run_id)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let expected: Vec<(String, String, i32, bool)> = names
        .iter()
        .map(|n| (n.clone(), "queued".to_owned(), 1, true))
        .chain([("claim_gone".to_owned(), "failed".to_owned(), 0, false)])
        .collect();
    assert_eq!(rows, expected, "every schema behind is recorded already queued");
    let jobs = kept.0.lock().unwrap();
    let mut pushed: Vec<String> = jobs
        .iter()
        .inspect(|j| assert_eq!((j.kind, j.run_id), (JobKind::MigrateSchema, run_id)))
        .flat_map(|j| std::iter::once(j.schema_name.clone()).chain(j.more_schema_names.iter().cloned()))
        .collect();
    pushed.sort();
    assert_eq!(pushed, names, "each queued schema pushed exactly once");
}

#[tokio::test]
async fn a_ledger_changed_after_the_run_read_it_is_read_again_and_nothing_is_applied_twice() {
    use provision_shared::migrate_all::{SCHEMAS_PER_TRANSACTION, SchemaOutcome};
    let env = TestEnv::new("migguard").await;
    let names = ready_tenants(&env, "guard", 2 * SCHEMAS_PER_TRANSACTION).await;
    add_notes(&env, ADD_NOTES);
    let set = MigrationSet::in_force(&env.pool).await.unwrap();
    let run_id = start_run_unpushed(&env, &set).await;
    // After the run read the ledgers: the platform marked the new migration
    // applied in one schema without running it (`migrate --fake`), and
    // recorded a migration this set does not know in another.
    let (faked, ahead) = (&names[1], &names[SCHEMAS_PER_TRANSACTION + 1]);
    for (schema, migration) in [(faked, "0002_notes"), (ahead, "9999_from_a_later_release")] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "INSERT INTO \"{schema}\".django_migrations (app, name, applied) VALUES ('buildings', '{migration}', now())"
        )))
        .execute(&env.pool)
        .await
        .unwrap();
    }
    queue_all(&env, run_id).await;

    let outcomes = run_job(&env, &set, run_id, &names).await;

    let notes = i32::try_from(set.len()).unwrap();
    for (schema, outcome) in &outcomes {
        match outcome {
            SchemaOutcome::Current if schema == faked => {}
            SchemaOutcome::Migrated(applied) if schema != faked => assert_eq!(applied, &[notes], "{schema}"),
            other => panic!("{schema} ended {other:?}"),
        }
    }
    assert_eq!(outcomes.len(), names.len());
    assert_eq!(
        env.ledger_of(faked).await,
        built_in_keys_and(&[NOTES]),
        "recorded once, as the platform left it"
    );
    assert!(
        !has_notes_column(&env, faked).await,
        "its DDL was not run behind the platform's back"
    );
    let mut ahead_ledger = env.ledger_of(ahead).await;
    ahead_ledger.sort();
    let mut expected = built_in_keys_and(&[NOTES, "buildings.9999_from_a_later_release"]);
    expected.sort();
    assert_eq!(ahead_ledger, expected);
    assert!(has_notes_column(&env, ahead).await);
}

/// Sends every pending row of run `run_id` to `queued`, as a dispatch would
/// (without pushing jobs: the tests run them).
async fn queue_all(env: &TestEnv, run_id: i64) {
    sqlx::query(
        "UPDATE provision_migration_run_schema SET state = 'queued', queued_at = now(), attempt = 1
         WHERE run_id = $1 AND state = 'pending'",
    )
    .bind(run_id)
    .execute(&env.pool)
    .await
    .unwrap();
}

/// The set `schema`'s ledger hint names, if it has one.
async fn hint_of(env: &TestEnv, schema: &str) -> Option<i32> {
    sqlx::query_scalar("SELECT set_version FROM provision_ledger_hint WHERE schema_name = $1")
        .bind(schema)
        .fetch_optional(&env.pool)
        .await
        .unwrap()
}

/// What the platform's own `migrate_schemas --schema=<schema>` does for the
/// notes migration: its DDL and its ledger row, without this project.
async fn platform_applies_notes(env: &TestEnv, schema: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "BEGIN; SET LOCAL search_path TO \"{schema}\", public; {ADD_NOTES}
         INSERT INTO django_migrations (app, name, applied) VALUES ('buildings', '0002_notes', now()); COMMIT;"
    )))
    .execute(&env.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_schema_the_platform_migrated_behind_its_hint_is_found_current_and_nothing_is_applied_twice() {
    use provision_shared::migrate_all::SchemaOutcome;
    let env = TestEnv::new("mighint").await;
    let names = ready_tenants(&env, "hint", 2).await;
    let built_in = MigrationSet::in_force(&env.pool).await.unwrap().version();
    for name in &names {
        assert_eq!(
            hint_of(&env, name).await,
            Some(built_in),
            "provisioning leaves a hint"
        );
    }
    add_notes(&env, ADD_NOTES);
    let set = MigrationSet::in_force(&env.pool).await.unwrap();
    // The platform migrates one schema itself: its hint is now stale.
    let (migrated_by_platform, ours) = (&names[0], &names[1]);
    platform_applies_notes(&env, migrated_by_platform).await;

    let run_id = start_run_unpushed(&env, &set).await;
    let rows: Vec<(String, Vec<i32>)> = sqlx::query_as(
        "SELECT schema_name, pending FROM provision_migration_run_schema WHERE run_id = $1 ORDER BY schema_name",
    )
    .bind(run_id)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let notes = i32::try_from(set.len()).unwrap();
    assert_eq!(
        rows,
        vec![
            (migrated_by_platform.clone(), vec![notes]),
            (ours.clone(), vec![notes])
        ],
        "both taken at their hints, their ledgers unread"
    );
    queue_all(&env, run_id).await;
    let outcomes = run_job(&env, &set, run_id, &names).await;

    assert_eq!(
        outcomes,
        vec![
            (migrated_by_platform.clone(), SchemaOutcome::Current),
            (ours.clone(), SchemaOutcome::Migrated(vec![notes])),
        ]
    );
    for name in &names {
        assert_eq!(
            env.ledger_of(name).await,
            built_in_keys_and(&[NOTES]),
            "{name}: once"
        );
        assert!(has_notes_column(&env, name).await);
        assert_eq!(
            hint_of(&env, name).await,
            Some(set.version()),
            "{name}: hint brought up to date"
        );
    }
    let summary = provision_shared::migrate_all::run_summary(&env.pool, run_id)
        .await
        .unwrap();
    assert_eq!(
        (summary.state.as_str(), summary.migrated, summary.failed),
        ("finished", 1, 0)
    );
}

#[tokio::test]
async fn a_schema_whose_hint_names_the_target_is_read_so_a_migration_the_platform_undid_is_applied_again() {
    use provision_shared::migrate_all::SchemaOutcome;
    let env = TestEnv::new("migundo").await;
    let names = ready_tenants(&env, "undo", 2).await;
    add_notes(&env, ADD_NOTES);
    let set = MigrationSet::in_force(&env.pool).await.unwrap();
    let first = start_run_unpushed(&env, &set).await;
    queue_all(&env, first).await;
    run_job(&env, &set, first, &names).await;
    assert_eq!(hint_of(&env, &names[0]).await, Some(set.version()));
    // The platform unapplies the notes migration in one schema
    // (`migrate buildings 0001`): its hint still names the set.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "BEGIN; ALTER TABLE \"{0}\".buildings_building DROP COLUMN notes;
         DELETE FROM \"{0}\".django_migrations WHERE app = 'buildings' AND name = '0002_notes'; COMMIT;",
        names[0]
    )))
    .execute(&env.pool)
    .await
    .unwrap();

    let second = start_run_unpushed(&env, &set).await;
    queue_all(&env, second).await;
    let outcomes = run_job(&env, &set, second, &names[..1]).await;

    let notes = i32::try_from(set.len()).unwrap();
    assert_eq!(
        outcomes,
        vec![(names[0].clone(), SchemaOutcome::Migrated(vec![notes]))],
        "read, found behind, migrated"
    );
    let summary = provision_shared::migrate_all::run_summary(&env.pool, second)
        .await
        .unwrap();
    assert_eq!(
        (summary.total, summary.already_current),
        (1, 1),
        "the other was read and is current"
    );
    assert!(has_notes_column(&env, &names[0]).await);
    assert_eq!(env.ledger_of(&names[0]).await, built_in_keys_and(&[NOTES]));
}
