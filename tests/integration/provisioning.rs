//! Provisioning a tenant end to end, through the real binaries and by
//! stepping the shared handlers.

use std::time::Duration;

use provision_queue::RedisQueue;
use provision_shared::create_tenant::{JobEnv, JobOutcome, run_create_tenant, run_create_tenant_steps};
use provision_shared::jobs::{JobKind, JobRequest, JobSink};
use provision_shared::migration_set::MigrationSet;
use provision_shared::password::{django_argon2_hash, verify_django_argon2};
use provision_shared::request::{Recorded, TenantRequest, record_request};
use provision_shared::state::TenantState;

use crate::helpers::{TestEnv, guide_tenant_args, redis_url, strs};

const PASSWORD: &str = "secure_password_123";
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn theo_is_provisioned_end_to_end_through_the_real_binaries() {
    let env = TestEnv::new("e2e").await;
    let _worker = env.start_worker(&[]).await;
    let mut args = vec![
        "create-tenant",
        "--schema-name",
        "theo",
        "--tenant-name",
        "Theo Stam",
        "--domain",
        "theo.newconcierge.app",
        "--admin-email",
        "theo@example.com",
        "--admin-password-stdin",
        "--trial-days",
        "30",
        "--wait",
    ];
    let run = env.provision_with_stdin(&args, Some(&format!("{PASSWORD}\n")));
    run.expect_code(0);
    for step in [
        "register",
        "create_schema",
        "migrate",
        "create_admin",
        "activate",
        "seed_demo_data",
    ] {
        assert!(
            run.stdout.contains(step),
            "--wait did not show step {step}:\n{}",
            run.stdout
        );
    }

    // The guide's Step 3 queries, as written.
    // The platform's ids are bigint (Django's BigAutoField).
    let (id, schema_name, name, _created_on, is_active, on_trial): (
        i64,
        String,
        String,
        chrono::NaiveDate,
        bool,
        bool,
    ) = sqlx::query_as(
        "SELECT id, schema_name, name, created_on, is_active, on_trial
             FROM tenants_client
             WHERE schema_name = 'theo'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        (schema_name.as_str(), name.as_str(), is_active, on_trial),
        ("theo", "Theo Stam", true, true)
    );
    let domains: Vec<(i64, String, bool, String)> = sqlx::query_as(
        "SELECT d.id, d.domain, d.is_primary, c.schema_name
         FROM tenants_domain d
         JOIN tenants_client c ON d.tenant_id = c.id
         WHERE c.schema_name = 'theo'",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(domains.len(), 1);
    assert_eq!(
        (domains[0].1.as_str(), domains[0].2),
        ("theo.newconcierge.app", true)
    );
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT schema_name::text
         FROM information_schema.schemata
         WHERE schema_name = 'theo'",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(schemas, ["theo"]);
    let paid_until: chrono::NaiveDate =
        sqlx::query_scalar("SELECT paid_until FROM tenants_client WHERE id = $1")
            .bind(id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        paid_until,
        chrono::Utc::now().date_naive() + chrono::Days::new(30)
    );

    // The admin: role admin, staff, superuser, verified, Django password.
    let (email, password, role, is_staff, is_superuser, verified): (
        String,
        String,
        String,
        bool,
        bool,
        bool,
    ) = sqlx::query_as(
        "SELECT email, password, role, is_staff, is_superuser, email_verified FROM theo.users_customuser",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        (email.as_str(), role.as_str(), is_staff, is_superuser, verified),
        ("theo@example.com", "admin", true, true, true)
    );
    assert!(password.starts_with("argon2$argon2id$v=19$"), "{password}");
    assert!(verify_django_argon2(PASSWORD, &password));

    // The demo building with its Greek text intact and 10 apartments.
    let (bname, address, city, postal, count, start): (
        String,
        String,
        String,
        String,
        i32,
        chrono::NaiveDate,
    ) = sqlx::query_as(
        "SELECT name, address, city, postal_code, apartments_count, financial_system_start_date
             FROM theo.buildings_building",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        (
            bname.as_str(),
            address.as_str(),
            city.as_str(),
            postal.as_str(),
            count
        ),
        ("Κτίριο Demo", "Διεύθυνση 123", "Αθήνα", "10000", 10)
    );
    let today = chrono::Utc::now().date_naive();
    assert_eq!(
        start,
        today - chrono::Days::new(u64::from(chrono::Datelike::day0(&today)))
    );
    let apartments: i64 = sqlx::query_scalar("SELECT count(*) FROM theo.buildings_apartment")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(apartments, 10);

    // status --json carries every field of the contract.
    let status = env.provision(&["status", "--schema-name", "theo", "--json"]);
    status.expect_code(0);
    let doc = status.json();
    for field in [
        "schema_name",
        "name",
        "state",
        "last_error",
        "domains",
        "is_active",
        "on_trial",
        "paid_until",
        "days_remaining",
        "buildings",
        "users",
        "migration",
        "history",
    ] {
        assert!(doc.get(field).is_some(), "status --json lacks {field}: {doc}");
    }
    assert_eq!(doc["state"], "ready");
    assert_eq!(doc["buildings"], 1);
    assert_eq!(doc["users"], 1);
    assert_eq!(doc["days_remaining"], 30);
    assert_eq!(doc["domains"][0]["domain"], "theo.newconcierge.app");
    assert_eq!(doc["domains"][0]["is_primary"], true);
    let latest = crate::migrations::built_in_keys_and(&[]).len();
    assert_eq!(doc["migration"]["applied"], latest);
    assert_eq!(doc["migration"]["latest"], latest);
    assert_eq!(doc["migration"]["pending"], serde_json::json!([]));
    assert_eq!(doc["made_by"], "provision");
    let history = doc["history"].as_array().unwrap();
    let states: Vec<&str> = history.iter().map(|h| h["state"].as_str().unwrap()).collect();
    assert_eq!(
        &states[..6],
        [
            "requested",
            "registered",
            "schema_created",
            "migrated",
            "admin_created",
            "ready"
        ]
    );
    for entry in history {
        assert!(entry.get("at").is_some() && entry.get("attempt").is_some() && entry.get("error").is_some());
    }
    // Each step has its own time, though the steps committed together.
    let times: Vec<chrono::DateTime<chrono::FixedOffset>> = history[..6]
        .iter()
        .map(|h| chrono::DateTime::parse_from_rfc3339(h["at"].as_str().unwrap()).unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{history:?}");

    // The Greek name round-trips through `list --json` too.
    args.clear();
    let list = env.provision(&["list", "--json"]);
    list.expect_code(0);
    let tenants = list.json();
    assert_eq!(tenants[0]["schema_name"], "theo");
    assert_eq!(tenants[0]["primary_domain"], "theo.newconcierge.app");
    assert_eq!(tenants[0]["state"], "ready");
}

#[tokio::test]
async fn dry_run_leaves_postgres_and_redis_exactly_as_they_were() {
    let env = TestEnv::new("dryrun").await;
    let pg_before = env.pg_snapshot().await;
    let redis_before = env.redis_dump().await;
    let mut args = guide_tenant_args("theo");
    args.extend([
        "--admin-password".into(),
        PASSWORD.into(),
        "--dry-run".into(),
        "--json".into(),
    ]);
    let run = env.provision(&strs(&args));
    run.expect_code(0);
    let plan = run.json();
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["steps"][0], "register");
    assert_eq!(env.pg_snapshot().await, pg_before);
    assert_eq!(env.redis_dump().await, redis_before);
    assert!(!run.stdout.contains(PASSWORD));

    // A dry run still checks against the live database.
    env.provision(&["init", "--public-domain", "newconcierge.app"])
        .expect_code(0);
    let taken = env.provision(&[
        "create-tenant",
        "--schema-name",
        "theo",
        "--tenant-name",
        "Theo",
        "--domain",
        "newconcierge.app",
        "--dry-run",
        "--json",
    ]);
    taken.expect_code(2);
    assert_eq!(taken.json()["error"]["field"], "domain");
}

#[tokio::test]
async fn double_enqueue_gives_one_tenant_and_the_second_job_ends_cleanly() {
    let env = TestEnv::new("double").await;
    let mut args = guide_tenant_args("theo");
    args.extend(["--admin-password".into(), PASSWORD.into(), "--json".into()]);
    // Two submissions of the same signup, at the same time.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| env.provision(&strs(&args)));
        let b = s.spawn(|| env.provision(&strs(&args)));
        (a.join().unwrap(), b.join().unwrap())
    });
    a.expect_code(0);
    b.expect_code(0);
    let mut recorded = [a.json()["recorded"].clone(), b.json()["recorded"].clone()];
    recorded.sort_by_key(|v| v.to_string());
    assert_eq!(
        recorded,
        [serde_json::json!("existing"), serde_json::json!("new")]
    );
    // And the same job pushed twice more by hand.
    let queue = RedisQueue::connect(&redis_url(), &env.namespace).await.unwrap();
    for _ in 0..2 {
        queue
            .push(JobRequest::now(JobKind::CreateTenant, "theo"))
            .await
            .unwrap();
    }
    let worker = env.start_worker(&[]).await;
    env.wait_for_state("theo", "ready", WAIT).await;
    // Every extra job has run out (one that found the tenant busy pushed
    // itself again, and ended once it found it ready).
    env.wait_queue_drained(JobKind::CreateTenant, WAIT).await;
    assert_eq!(env.tenant_counts("theo").await, (1, 1, 1, 1));
    let transitions: Vec<String> = sqlx::query_scalar(
        "SELECT step FROM provision_event WHERE schema_name = 'theo' AND from_state IS DISTINCT FROM to_state ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        transitions,
        [
            "request",
            "register",
            "create_schema",
            "migrate",
            "create_admin",
            "activate"
        ]
    );
    let log = worker.log_text();
    assert!(!log.contains("job failed"), "a duplicate job failed:\n{log}");
    assert!(
        log.contains("AlreadyFinal") || log.contains("Busy"),
        "no duplicate job ended cleanly:\n{log}"
    );
}

#[tokio::test]
async fn a_conflicting_re_create_is_reported_and_changes_nothing() {
    let env = TestEnv::new("conflict").await;
    let mut args = guide_tenant_args("theo");
    args.extend(["--admin-password".into(), PASSWORD.into()]);
    env.provision(&strs(&args)).expect_code(0);
    let pg_before = env.pg_snapshot().await;
    let redis_before = env.redis_dump().await;
    let mut other = guide_tenant_args("theo");
    other[6] = "elsewhere.newconcierge.app".into();
    other.extend(["--admin-password".into(), PASSWORD.into(), "--json".into()]);
    let run = env.provision(&strs(&other));
    run.expect_code(2);
    let error = &run.json()["error"];
    assert_eq!(error["code"], "conflict");
    assert_eq!(error["field"], "schema_name");
    assert!(
        error["message"].as_str().unwrap().contains("other details"),
        "{error}"
    );
    assert_eq!(env.pg_snapshot().await, pg_before);
    assert_eq!(env.redis_dump().await, redis_before);
}

/// A sink that pushes nothing: the stepping tests below run the handlers
/// directly, without a queue.
pub(crate) struct NoQueue;

impl JobSink for NoQueue {
    async fn push(&self, _job: JobRequest) -> Result<String, provision_shared::ProvisionError> {
        Ok("not-pushed".into())
    }
}

fn request(schema: &str) -> TenantRequest {
    TenantRequest {
        schema_name: schema.into(),
        tenant_name: "Θεόδωρος Σταμ".into(),
        domain: format!("{}.newconcierge.app", schema.replace('_', "-")),
        admin_email: format!("{schema}@example.com"),
        admin_password_hash: django_argon2_hash(PASSWORD),
        trial_days: 30,
        seed_demo_data: false,
    }
}

#[tokio::test]
async fn resuming_after_each_step_ends_in_the_same_ready_tenant() {
    let env = TestEnv::new("resume").await;
    let migrations = MigrationSet::in_force(&env.pool).await.unwrap();
    let job = JobEnv {
        pool: &env.pool,
        sink: &NoQueue,
        migrations: &migrations,
        actor: "test",
        policy: provision_shared::retry::RetryPolicy { max_attempts: 8 },
    };
    for stop_after in 0..=5usize {
        let schema = format!("resume_{stop_after}");
        assert_eq!(
            record_request(&env.pool, &request(&schema), "test")
                .await
                .unwrap(),
            Recorded::New
        );
        let first = run_create_tenant_steps(&job, &schema, stop_after).await.unwrap();
        if stop_after < 5 {
            let expected = TenantState::ALL[stop_after];
            assert_eq!(
                first,
                JobOutcome::Paused(expected),
                "stopped after {stop_after} steps"
            );
        }
        // Resume, then run the whole job twice more: nothing changes.
        let resumed = run_create_tenant(&job, &schema).await.unwrap();
        assert!(
            matches!(
                resumed,
                JobOutcome::Finished(TenantState::Ready) | JobOutcome::AlreadyFinal(TenantState::Ready)
            ),
            "{resumed:?}"
        );
        for _ in 0..2 {
            assert_eq!(
                run_create_tenant(&job, &schema).await.unwrap(),
                JobOutcome::AlreadyFinal(TenantState::Ready)
            );
        }
        assert_eq!(env.tenant_counts(&schema).await, (1, 1, 1, 1), "{schema}");
        let steps: Vec<String> = sqlx::query_scalar(
            "SELECT step FROM provision_event WHERE schema_name = $1 AND from_state IS DISTINCT FROM to_state ORDER BY id",
        )
        .bind(&schema)
        .fetch_all(&env.pool)
        .await
        .unwrap();
        assert_eq!(
            steps,
            [
                "request",
                "register",
                "create_schema",
                "migrate",
                "create_admin",
                "activate"
            ],
            "{schema}"
        );
        let (hash, active): (Option<String>, bool) = sqlx::query_as(
            "SELECT p.admin_password_hash, c.is_active
             FROM provision_tenant p JOIN tenants_client c USING (schema_name) WHERE p.schema_name = $1",
        )
        .bind(&schema)
        .fetch_one(&env.pool)
        .await
        .unwrap();
        assert_eq!((hash, active), (None, true), "{schema}");
        assert_eq!(
            env.ledger_of(&schema).await,
            crate::migrations::built_in_keys_and(&[]),
            "{schema}"
        );
    }
}

#[tokio::test]
async fn many_jobs_racing_on_one_tenant_run_each_step_once() {
    let env = TestEnv::new("race").await;
    let migrations = MigrationSet::in_force(&env.pool).await.unwrap();
    record_request(&env.pool, &request("raced"), "test")
        .await
        .unwrap();
    let mut racers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let pool = env.pool.clone();
        let migrations = migrations.clone();
        racers.spawn(async move {
            let job = JobEnv {
                pool: &pool,
                sink: &NoQueue,
                migrations: &migrations,
                actor: "racer",
                policy: provision_shared::retry::RetryPolicy { max_attempts: 8 },
            };
            run_create_tenant(&job, "raced").await
        });
    }
    let mut finished = 0;
    while let Some(result) = racers.join_next().await {
        match result.unwrap().unwrap() {
            JobOutcome::Finished(TenantState::Ready) => finished += 1,
            JobOutcome::Busy | JobOutcome::AlreadyFinal(TenantState::Ready) => {}
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(finished, 1, "exactly one job carried the tenant to ready");
    assert_eq!(env.tenant_counts("raced").await, (1, 1, 1, 1));
    let transitions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM provision_event WHERE schema_name = 'raced' AND from_state IS DISTINCT FROM to_state",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(transitions, 6);
}

#[tokio::test]
async fn the_worker_stops_on_sigterm_with_exit_0() {
    let env = TestEnv::new("sigterm").await;
    let mut worker = env.start_worker(&[]).await;
    worker.signal("TERM");
    assert_eq!(
        worker.wait_exit(Duration::from_secs(20)).await,
        Some(0),
        "{}",
        worker.log_text()
    );
    assert!(worker.log_text().contains("SIGTERM"));
}

/// A push wakes an idle worker at once: with heartbeats (its only polls
/// otherwise) a minute apart, the tenant is ready long before the first
/// heartbeat after the push could have found the job.
#[tokio::test]
async fn a_push_wakes_an_idle_worker_without_waiting_for_its_heartbeat() {
    let env = TestEnv::new("wake").await;
    let monitor = crate::servers::RedisMonitor::start(&redis_url());
    let _worker = env.start_worker(&[("PROVISION_HEARTBEAT_MS", "60000")]).await;
    // The CreateTenant loop has fetched at start and looked again after
    // the wake-up every start raises, finding nothing each time: from now
    // on it is idle until a push wakes it or its heartbeat, a minute on.
    let last_look =
        provision_worker::wake::LOOK_AGAIN_AFTER[provision_worker::wake::LOOK_AGAIN_AFTER.len() - 1];
    monitor.wait_for_span(
        &[
            "\"EVALSHA\"",
            &format!("\"{}:create_tenant:data\"", env.namespace),
        ],
        last_look,
        Duration::from_secs(30),
    );
    crate::helpers::request_tenant(&env, "wake_theo");
    env.wait_for_state("wake_theo", "ready", Duration::from_secs(30))
        .await;
}
