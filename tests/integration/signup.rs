//! The platform's signup asks for its tenant inside its own transaction,
//! through the platform model's signup view (provision_client, in
//! `transaction.atomic()`) and Django's test client: never waiting on Redis.

use std::time::{Duration, Instant};

use crate::helpers::{TestEnv, redis_url};
use crate::servers::{PrivatePostgres, PrivateRedis};

const WAIT: Duration = Duration::from_secs(120);
const PASSWORD: &str = "a-long-password";

/// A signup posted to the platform's view: the response's status and body.
fn signup(env: &TestEnv, body: serde_json::Value) -> (u16, serde_json::Value) {
    let run = env.django_in(
        &crate::platform::platform_dir(),
        &["platform_signup"],
        Some(&body.to_string()),
    );
    run.expect_code(0);
    let answer = run.json();
    (
        u16::try_from(answer["status"].as_u64().expect("a status")).unwrap(),
        answer["body"].clone(),
    )
}

fn details(schema: &str) -> serde_json::Value {
    serde_json::json!({
        "schema_name": schema,
        "tenant_name": "Σίσυφος Παπαδόπουλος",
        "domain": format!("{}.newconcierge.app", schema.replace('_', "-")),
        "email": format!("{schema}@example.com"),
        "password": PASSWORD,
    })
}

async fn requested_rows(env: &TestEnv, schema: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM provision_tenant WHERE schema_name = $1")
        .bind(schema)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// A committed signup gets its tenant, and the platform serves it with the
/// password the signup hashed.
#[tokio::test]
async fn a_committed_signup_gets_its_tenant_and_the_platform_serves_it() {
    let env = TestEnv::new_platform("signupok").await;
    let _worker = env.start_worker(&[]).await;
    let mut body = details("signed");
    body["wait"] = serde_json::json!(60);
    let (status, answer) = signup(&env, body);
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["recorded"], "new");
    assert_eq!(answer["state"], "ready", "{answer}");
    let check = env.django_in(
        &crate::platform::platform_dir(),
        &[
            "platform_check",
            "--domain",
            "signed.newconcierge.app",
            "--email",
            "signed@example.com",
            "--password-stdin",
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    let served = check.json();
    assert_eq!(
        served["tenant"]["body"]["name"], "Σίσυφος Παπαδόπουλος",
        "{served}"
    );
    assert_eq!(served["login"]["status"], 200, "{served}");
    let hash: String = sqlx::query_scalar("SELECT password FROM signed.users_customuser")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(hash.starts_with("argon2$argon2id$"), "{hash}");
    assert!(!hash.contains(PASSWORD));
}

/// A signup whose transaction rolls back after the request leaves nothing:
/// not a row, not a job, not a schema, even once a worker has gone through
/// the signups that came after it.
#[tokio::test]
async fn a_rolled_back_signup_leaves_nothing_in_postgres_redis_or_the_catalog() {
    let env = TestEnv::new_platform("signuprb").await;
    let _worker = env.start_worker(&[]).await;
    let before = env.pg_snapshot().await;
    let mut body = details("undone");
    body["fail_after_request"] = serde_json::json!(true);
    let (status, answer) = signup(&env, body);
    assert_eq!(status, 402, "{answer}");
    assert_eq!(
        env.pg_snapshot().await,
        before,
        "the rolled-back signup left rows"
    );
    // A signup after it, carried through by the worker.
    let mut next = details("after");
    next["wait"] = serde_json::json!(60);
    assert_eq!(signup(&env, next).1["state"], "ready");
    env.wait_queue_drained(provision_shared::jobs::JobKind::CreateTenant, WAIT)
        .await;
    assert_eq!(requested_rows(&env, "undone").await, 0);
    let schema: bool = sqlx::query_scalar("SELECT to_regnamespace('undone') IS NOT NULL")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(!schema, "the rolled-back signup has a schema");
    for (key, value) in env.redis_dump().await {
        assert!(
            !value.contains("\"undone\""),
            "Redis key {key} holds the rolled-back signup"
        );
    }
}

/// The same signup twice (a double submit) is one tenant; other details for
/// the same schema name are a conflict the view can show.
#[tokio::test]
async fn the_same_signup_twice_is_one_tenant_and_other_details_a_conflict() {
    let env = TestEnv::new_platform("signuptwice").await;
    let _worker = env.start_worker(&[]).await;
    let (first, a) = signup(&env, details("twice"));
    let mut again = details("twice");
    again["password"] = serde_json::json!("another-long-password");
    again["wait"] = serde_json::json!(60);
    let (second, b) = signup(&env, again);
    assert_eq!((first, second), (201, 200), "{a} {b}");
    assert_eq!(
        (a["recorded"].as_str(), b["recorded"].as_str()),
        (Some("new"), Some("existing"))
    );
    assert_eq!(b["state"], "ready", "{b}");
    assert_eq!(env.tenant_counts("twice").await, (1, 1, 1, 1));
    let mut other = details("twice");
    other["tenant_name"] = serde_json::json!("Someone else");
    let (status, conflict) = signup(&env, other);
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(conflict["error"]["field"], "schema_name", "{conflict}");
    assert!(
        conflict["error"]["rule"]
            .as_str()
            .unwrap()
            .contains("other details"),
        "{conflict}"
    );
}

/// Each bad field reaches the view as an error naming it, with nothing
/// written; a plain password given as the hash is refused.
#[tokio::test]
async fn each_bad_field_reaches_the_view_naming_it_and_nothing_is_written() {
    let env = TestEnv::new_platform("signupbad").await;
    let cases: [(&str, serde_json::Value, u16, &str); 8] = [
        ("schema_name", serde_json::json!("Bad Name"), 400, "a-z"),
        ("schema_name", serde_json::json!("pg_theo"), 400, "pg_"),
        ("tenant_name", serde_json::json!("  "), 400, "empty"),
        ("domain", serde_json::json!("nodots"), 400, "two labels"),
        ("domain", serde_json::json!("newconcierge.app"), 409, "public"),
        ("email", serde_json::json!("no-at-sign"), 400, "name@example.com"),
        ("trial_days", serde_json::json!(5000), 400, "between 0 and 3650"),
        (
            "password_hash",
            serde_json::json!("secure_password_123"),
            400,
            "make_password",
        ),
    ];
    for (field, value, code, says) in cases {
        let mut body = details("badfield");
        body[field] = value.clone();
        if field == "password_hash" {
            body.as_object_mut().unwrap().remove("password");
        }
        let (status, answer) = signup(&env, body);
        let expected_field = match field {
            "email" => "admin_email",
            "password_hash" => "admin_password_hash",
            other => other,
        };
        assert_eq!(status, code, "{field} = {value}: {answer}");
        assert_eq!(
            answer["error"]["field"], expected_field,
            "{field} = {value}: {answer}"
        );
        assert!(
            answer["error"]["rule"].as_str().unwrap().contains(says),
            "{field} = {value}: {answer}"
        );
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM provision_tenant")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0, "a refused signup wrote a row");
}

/// With Redis stopped, a signup still commits (it never touches Redis); its
/// tenant is made once Redis is back, and made once.
#[tokio::test]
async fn a_signup_while_redis_is_down_gets_its_tenant_once_redis_is_back() {
    let mut redis = PrivateRedis::start();
    let env = TestEnv::new_platform_on("signupredis", &crate::helpers::admin_url(), &redis.url()).await;
    let worker = env.start_worker(&[]).await;
    redis.stop();
    let (status, answer) = signup(&env, details("patient"));
    assert_eq!(status, 201, "{answer}");
    assert_eq!(requested_rows(&env, "patient").await, 1);
    redis.restart_empty();
    env.wait_for_state("patient", "ready", WAIT).await;
    assert_eq!(env.tenant_counts("patient").await, (1, 1, 1, 1));
    drop(worker);
}

/// After a PostgreSQL restart, the worker listens again: the next signup's
/// job is pushed within a second of its commit, well before the reconciler
/// would.
#[tokio::test]
async fn after_a_postgres_restart_the_next_signup_is_picked_up_within_a_second() {
    let pg = PrivatePostgres::start("signuppg");
    let env = TestEnv::new_platform_on("signuppg", &pg.url("postgres"), &redis_url()).await;
    let worker = env.start_worker(&[("PROVISION_RECONCILE_AFTER", "600")]).await;
    let mut first = details("before_restart");
    first["wait"] = serde_json::json!(60);
    assert_eq!(signup(&env, first).1["state"], "ready");
    pg.restart();
    // The worker's listening connection finds the server back.
    worker
        .wait_for_log_count(
            "listening to PostgreSQL's announcements",
            2,
            Duration::from_secs(60),
        )
        .await;
    let (status, answer) = signup(&env, details("after_restart"));
    let committed = Instant::now();
    assert_eq!(status, 201, "{answer}");
    loop {
        let pushed: Option<String> =
            sqlx::query_scalar("SELECT job_id FROM provision_tenant WHERE schema_name = 'after_restart'")
                .fetch_one(&env.pool)
                .await
                .unwrap_or(None);
        if pushed.is_some() {
            break;
        }
        assert!(
            committed.elapsed() < Duration::from_secs(1),
            "the signup after the restart was not pushed within a second:\n{}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    env.wait_for_state("after_restart", "ready", WAIT).await;
}

/// Two transactions asking for the same tenant at once, the second while
/// the first has not committed: the second waits, then finds the first's
/// request (`existing`), never a conflict with itself.
#[tokio::test]
async fn the_same_request_racing_an_uncommitted_one_is_existing_not_a_conflict() {
    let env = TestEnv::new("signuprace").await;
    env.provision(&["init"]).expect_code(0);
    const REQUEST: &str = "SELECT recorded FROM provision_request_tenant(
        schema_name => 'racer', tenant_name => 'Racer', domain => 'racer.newconcierge.app',
        admin_email => 'racer@example.com', seed_demo_data => false)";
    let mut first = env.pool.begin().await.unwrap();
    let recorded: String = sqlx::query_scalar(REQUEST).fetch_one(&mut *first).await.unwrap();
    assert_eq!(recorded, "new");
    let second = tokio::spawn({
        let pool = env.pool.clone();
        async move { sqlx::query_scalar::<_, String>(REQUEST).fetch_one(&pool).await }
    });
    // The second is blocked on the first's row before the first commits.
    let started = Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'
               AND query LIKE '%provision_request_tenant%'",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
        if waiting == 1 {
            break;
        }
        assert!(
            !second.is_finished(),
            "the second request did not wait: {:?}",
            second.await
        );
        assert!(started.elapsed() < WAIT, "the second request never waited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.commit().await.unwrap();
    assert_eq!(second.await.unwrap().unwrap(), "existing");
    assert_eq!(requested_rows(&env, "racer").await, 1);
}
