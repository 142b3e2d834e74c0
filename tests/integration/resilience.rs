//! Nothing lost, nothing twice: poison jobs, duplicate delivery, shutdown,
//! Redis and PostgreSQL going away, transient errors, least privilege,
//! workers killed at random.

use std::time::{Duration, Instant};

use apalis_core::backend::TaskSink;
use provision_queue::RedisQueue;
use provision_shared::jobs::JobKind;

use crate::helpers::{TestEnv, guide_tenant_args, request_tenant, strs};
use crate::servers::{PrivatePostgres, PrivateRedis};

const WAIT: Duration = Duration::from_secs(90);

/// A tenant migration that takes `seconds`, so steps are in flight long
/// enough to interfere with (see [`SLOW`]).
fn slow_migrations(env: &mut TestEnv, seconds: f64) {
    let slow = format!(
        "SELECT pg_sleep({seconds});\nALTER TABLE \"buildings_building\" ADD COLUMN \"notes\" text NULL;"
    );
    env.add_tenant_migrations(&[("buildings", "0002_slow", &slow)]);
}

/// What a session waits on while the slow migration runs.
const SLOW: &str = "PgSleep";

async fn state_of(env: &TestEnv, schema: &str) -> Option<String> {
    sqlx::query_scalar("SELECT state FROM provision_tenant WHERE schema_name = $1")
        .bind(schema)
        .fetch_optional(&env.pool)
        .await
        .unwrap()
}

async fn wait_all_ready(env: &TestEnv, names: &[String], timeout: Duration) {
    for name in names {
        env.wait_for_state(name, "ready", timeout).await;
    }
}

/// Each tenant has one client row, one domain, one schema, one admin.
async fn assert_made_once(env: &TestEnv, names: &[String]) {
    for schema in names {
        assert_eq!(env.tenant_counts(schema).await, (1, 1, 1, 1), "{schema}");
        let steps: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM provision_event
             WHERE schema_name = $1 AND to_state <> 'failed' AND from_state IS DISTINCT FROM to_state",
        )
        .bind(schema)
        .fetch_one(&env.pool)
        .await
        .unwrap();
        assert_eq!(steps, 6, "{schema}: a step ran twice with effect");
    }
}

#[tokio::test]
async fn poison_jobs_are_set_aside_and_never_stop_the_worker() {
    let env = TestEnv::new("poison").await;
    let worker = env.start_worker(&[]).await;
    let queue = RedisQueue::connect(&env.redis_url, &env.namespace).await.unwrap();
    // A payload of another shape, pushed through the library (an older version, say).
    let mut create = queue.storage(JobKind::CreateTenant);
    create
        .push(serde_json::json!({"schema": "theo", "version": 0}))
        .await
        .unwrap();
    // A job pushed by hand, which the library itself cannot read.
    let mut conn = queue.connection();
    let config = provision_queue::layout::queue_config(&env.namespace, JobKind::CreateTenant);
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg(config.job_data_hash())
        .arg("01M8JZZZZZZZZZZZZZZZZZZZZZ")
        .arg("not json {")
        .cmd("RPUSH")
        .arg(config.active_jobs_list())
        .arg("01M8JZZZZZZZZZZZZZZZZZZZZZ")
        .query_async(&mut conn)
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let rejected: Vec<(String, String)> =
            sqlx::query_as("SELECT job_id, error FROM provision_rejected_job ORDER BY id")
                .fetch_all(&env.pool)
                .await
                .unwrap();
        if rejected.len() == 2 {
            assert!(
                rejected
                    .iter()
                    .any(|(_, e)| e.contains("unknown field") || e.contains("missing field"))
            );
            assert!(
                rejected
                    .iter()
                    .any(|(id, e)| id == "01M8JZZZZZZZZZZZZZZZZZZZZZ" && e.contains("unreadable"))
            );
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "poison jobs not set aside: {rejected:?}\n{}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The worker still takes jobs.
    request_tenant(&env, "after_poison");
    env.wait_for_state("after_poison", "ready", WAIT).await;
    let mut worker = worker;
    assert!(worker.child_alive(), "the worker stopped:\n{}", worker.log_text());
}

#[tokio::test]
async fn a_job_delivered_to_two_workers_at_once_has_the_effect_of_one() {
    let env = TestEnv::new("dupdeliver").await;
    let names: Vec<String> = (0..5).map(|i| format!("dup_{i}")).collect();
    let queue = RedisQueue::connect(&env.redis_url, &env.namespace).await.unwrap();
    let config = provision_queue::layout::queue_config(&env.namespace, JobKind::CreateTenant);
    let mut conn = queue.connection();
    for name in &names {
        request_tenant(&env, name);
        // The same job id twice in the list: two workers take it at once.
        let job_id: String = sqlx::query_scalar("SELECT job_id FROM provision_tenant WHERE schema_name = $1")
            .bind(name)
            .fetch_one(&env.pool)
            .await
            .unwrap();
        let _: () = redis::cmd("RPUSH")
            .arg(config.active_jobs_list())
            .arg(&job_id)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let _a = env.start_worker(&[]).await;
    let _b = env.start_worker(&[]).await;
    wait_all_ready(&env, &names, WAIT).await;
    env.wait_queue_drained(JobKind::CreateTenant, WAIT).await;
    assert_made_once(&env, &names).await;
}

#[tokio::test]
async fn sigterm_lets_the_running_step_finish_and_exits_0() {
    let mut env = TestEnv::new("graceful").await;
    env.use_gated_migration();
    let gate = env.close_gate().await;
    let mut worker = env.start_worker(&[]).await;
    request_tenant(&env, "graceful");
    env.wait_at_gate(1, WAIT).await;
    worker.signal("TERM");
    // Stopping, the worker waits for its running step.
    worker.wait_for_log("SIGTERM: stopping", WAIT).await;
    assert!(
        worker.child_alive(),
        "the worker exited with a step running:\n{}",
        worker.log_text()
    );
    gate.open().await;
    assert_eq!(
        worker.wait_exit(Duration::from_secs(30)).await,
        Some(0),
        "{}",
        worker.log_text()
    );
    let state = state_of(&env, "graceful").await.unwrap();
    assert_eq!(
        state,
        "ready",
        "the running steps were cut short\n{}",
        worker.log_text()
    );
}

#[tokio::test]
async fn past_its_grace_period_a_stopping_worker_abandons_the_job_to_another() {
    let mut env = TestEnv::new("grace").await;
    env.use_gated_migration();
    let gate = env.close_gate().await;
    let mut first = env.start_worker(&[("PROVISION_SHUTDOWN_GRACE", "1s")]).await;
    request_tenant(&env, "abandoned");
    env.wait_at_gate(1, WAIT).await;
    let stop_started = Instant::now();
    first.signal("TERM");
    assert_eq!(first.wait_exit(Duration::from_secs(20)).await, Some(0));
    assert!(
        stop_started.elapsed() < Duration::from_secs(5),
        "the grace period was not kept"
    );
    assert!(
        first.log_text().contains("grace period over")
            && first.log_text().contains("abandoned jobs returned to the queue"),
        "{}",
        first.log_text()
    );
    // The abandoned steps' session, still held at the gate, ends as soon as
    // the server sees its worker gone (client_connection_check_interval):
    // their one transaction rolled back, nothing of them kept.
    env.wait_gate_clear(Duration::from_secs(10)).await;
    assert_eq!(state_of(&env, "abandoned").await.as_deref(), Some("requested"));
    assert_eq!(env.tenant_counts("abandoned").await, (0, 0, 0, 0));
    // Another worker takes the returned job over (no reconciler: 120 s).
    gate.open().await;
    let second = env.start_worker(&[]).await;
    let taken_over = Instant::now();
    // On a timeout this shows both workers' logs and the Redis keys.
    env.wait_for_state("abandoned", "ready", WAIT).await;
    println!("taken over and finished in {:?}", taken_over.elapsed());
    assert_made_once(&env, &["abandoned".to_owned()]).await;
    // Every step was recorded by the second worker.
    let actors: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT actor FROM provision_event WHERE schema_name = 'abandoned' AND from_state IS NOT NULL",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(actors, [second.name()], "first worker: {}", first.name());
}

#[tokio::test]
async fn redis_emptied_while_tenants_are_in_flight_still_gets_every_tenant_ready() {
    let mut redis = PrivateRedis::start();
    let mut env = TestEnv::new_on_servers("redisloss", &crate::helpers::admin_url(), &redis.url()).await;
    env.use_gated_migration();
    let gate = env.close_gate().await;
    let worker = env
        .start_worker(&[("PROVISION_RECONCILE_AFTER", "3"), ("PROVISION_CONCURRENCY", "2")])
        .await;
    let names: Vec<String> = (0..6).map(|i| format!("lost_{i}")).collect();
    for name in &names {
        request_tenant(&env, name);
    }
    // Two tenants in flight, four queued.
    env.wait_at_gate(2, WAIT).await;
    // Redis restarts with nothing: queued jobs, registrations, all gone.
    redis.restart_empty();
    gate.open().await;
    wait_all_ready(&env, &names, WAIT).await;
    assert_made_once(&env, &names).await;
    let log = worker.log_text();
    assert!(
        log.contains("pushed an owed CreateTenant job"),
        "the reconciler did not act:\n{log}"
    );
}

#[tokio::test]
async fn postgres_restarted_mid_run_all_tenants_reach_ready() {
    let pg = PrivatePostgres::start("pgrestart");
    let mut env =
        TestEnv::new_on_servers("pgrestart", &pg.url("postgres"), &crate::helpers::redis_url()).await;
    env.use_gated_migration();
    let gate = env.close_gate().await;
    let worker = env.start_worker(&[("PROVISION_CONCURRENCY", "2")]).await;
    let names: Vec<String> = (0..6).map(|i| format!("pgr_{i}")).collect();
    for name in &names {
        request_tenant(&env, name);
    }
    // Two tenants in flight, four queued.
    env.wait_at_gate(2, WAIT).await;
    // The restart ends the gate's session too: the steps tried again pass.
    pg.restart();
    gate.open().await;
    wait_all_ready(&env, &names, WAIT).await;
    assert_made_once(&env, &names).await;
    let mut worker = worker;
    assert!(
        worker.child_alive(),
        "the worker died with PostgreSQL:\n{}",
        worker.log_text()
    );
}

#[tokio::test]
async fn transient_errors_retry_with_backoff_then_fail_with_step_attempts_and_error() {
    let env = TestEnv::new("transient").await;
    // Every lock wait of the worker gives up after 200 ms: a transient error.
    // SHARE mode lets the client read the table but no one write to it.
    let url = format!("{}?options=-c%20lock_timeout%3D200", env.database_url);
    let _worker = env
        .start_worker(&[("DATABASE_URL", &url), ("PROVISION_MAX_ATTEMPTS", "3")])
        .await;
    let mut blocker = env.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE tenants_client IN SHARE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    request_tenant(&env, "blocked");
    env.wait_for_state("blocked", "failed", WAIT).await;
    let status = env
        .provision(&["status", "--schema-name", "blocked", "--json"])
        .json();
    assert_eq!(status["failed_step"], "register");
    assert_eq!(status["attempt"], 3);
    let error = status["last_error"].as_str().unwrap();
    assert!(
        error.contains("gave up after 3 attempts") && error.contains("lock timeout"),
        "{error}"
    );
    let history = status["history"].as_array().unwrap();
    let retries: Vec<&serde_json::Value> = history
        .iter()
        .filter(|h| h["step"] == "register" && h["state"] == "requested")
        .collect();
    assert_eq!(retries.len(), 2, "two retries before giving up: {history:?}");
    let at = |h: &serde_json::Value| chrono::DateTime::parse_from_rfc3339(h["at"].as_str().unwrap()).unwrap();
    let attempts: Vec<i64> = retries.iter().map(|h| h["attempt"].as_i64().unwrap()).collect();
    assert_eq!(attempts, [1, 2], "{history:?}");
    assert!(
        at(retries[1]) - at(retries[0]) >= chrono::Duration::milliseconds(400),
        "no backoff between retries: {history:?}"
    );

    blocker.commit().await.unwrap();
    env.provision(&["retry", "--schema-name", "blocked"])
        .expect_code(0);
    env.wait_for_state("blocked", "ready", WAIT).await;
}

#[tokio::test]
async fn a_least_privilege_role_provisions_a_tenant() {
    let mut env = TestEnv::new("leastpriv").await;
    let (_role, url) = env.limited_role(true).await;
    env.set_env("DATABASE_URL", &url);
    let _worker = env.start_worker(&[]).await;
    let mut args = guide_tenant_args("least");
    args.extend([
        "--admin-password".into(),
        "a-long-password".into(),
        "--wait".into(),
    ]);
    env.provision(&strs(&args)).expect_code(0);
    assert_made_once(&env, &["least".to_owned()]).await;
    let superuser: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT rolsuper FROM pg_roles WHERE rolname = '{}'",
        url.split('@').next().unwrap().trim_start_matches("postgres://")
    )))
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(!superuser);
}

#[tokio::test]
async fn chaos_every_tenant_is_provisioned_once_while_workers_are_killed_at_random() {
    let tenants: usize = std::env::var("CHAOS_TENANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let mut env = TestEnv::new("chaos").await;
    slow_migrations(&mut env, 0.2);
    let started = Instant::now();
    let names: Vec<String> = (0..tenants).map(|i| format!("chaos_{i:04}")).collect();
    for name in &names {
        request_tenant(&env, name);
    }
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(
            env.start_worker(&[
                ("PROVISION_CONCURRENCY", "2"),
                ("PROVISION_RECONCILE_AFTER", "10"),
            ])
            .await,
        );
    }
    let mut kills = 0;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ u64::from(std::process::id());
    loop {
        let ready: i64 = sqlx::query_scalar("SELECT count(*) FROM provision_tenant WHERE state = 'ready'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
        if ready as usize == tenants {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60 + 3 * tenants as u64),
            "only {ready} of {tenants} ready"
        );
        // Every 2 to 4 seconds, SIGKILL one worker at random and start a new one.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(2000 + seed % 2000)).await;
        let victim = (seed % workers.len() as u64) as usize;
        workers[victim].signal("KILL");
        workers[victim].wait_exit(Duration::from_secs(10)).await;
        kills += 1;
        workers[victim] = env
            .start_worker(&[
                ("PROVISION_CONCURRENCY", "2"),
                ("PROVISION_RECONCILE_AFTER", "10"),
            ])
            .await;
    }
    assert_made_once(&env, &names).await;
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM provision_tenant WHERE state <> 'ready'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(failed, 0);
    println!(
        "chaos: {tenants} tenants ready, each with one schema, one primary domain and one admin; \
         {kills} workers killed; {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn a_job_that_crashes_its_worker_counts_as_an_attempt_and_ends_failed() {
    let mut env = TestEnv::new("crashloop").await;
    // Long enough to kill the worker in the middle, short enough that the
    // killed worker's statement ends before another worker takes over.
    slow_migrations(&mut env, 4.0);
    let settings = [("PROVISION_MAX_ATTEMPTS", "2")];
    request_tenant(&env, "crashy");
    // Each time the migration is running, the worker dies (SIGKILL): the
    // first time in the steps sent as one transaction, which roll back;
    // then twice in the migrate step, as a job that runs again goes step by
    // step (its earlier steps commit, each resetting the count).
    let kills = [(1, "requested"), (1, "schema_created"), (2, "schema_created")];
    for (kill, (execution, state_then)) in kills.into_iter().enumerate() {
        let mut worker = env.start_worker(&settings).await;
        let start = Instant::now();
        loop {
            let attempt: i32 =
                sqlx::query_scalar("SELECT attempt FROM provision_tenant WHERE schema_name = 'crashy'")
                    .fetch_one(&env.pool)
                    .await
                    .unwrap();
            let state = state_of(&env, "crashy").await.unwrap();
            if env.waits_on(SLOW).await && state == state_then && attempt == execution {
                break;
            }
            assert!(
                start.elapsed() < WAIT,
                "kill {} never came (waiting for {state_then} at attempt {execution}): {state} {attempt}",
                kill + 1
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        worker.signal("KILL");
        worker.wait_exit(Duration::from_secs(10)).await;
    }
    // The next execution finds the migrate step crashed twice and gives up.
    let _worker = env.start_worker(&settings).await;
    env.wait_for_state("crashy", "failed", WAIT).await;
    let status = env
        .provision(&["status", "--schema-name", "crashy", "--json"])
        .json();
    assert_eq!(status["failed_step"], "migrate");
    let error = status["last_error"].as_str().unwrap();
    assert!(error.contains("gave up after 2 attempts"), "{error}");
}
