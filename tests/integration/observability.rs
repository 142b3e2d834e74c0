//! What operators see: metrics, health, structured logs.

use std::time::{Duration, Instant};

use crate::helpers::{TestEnv, guide_tenant_args, strs};
use crate::servers::{PrivateRedis, http_get, metric};

#[tokio::test]
async fn metrics_move_by_the_right_amounts_and_healthz_follows_redis() {
    let mut redis = PrivateRedis::start();
    let mut env = TestEnv::new_on_servers("metrics", &crate::helpers::admin_url(), &redis.url()).await;
    // A gated migration, to scrape while the provisioning is in flight.
    env.use_gated_migration();
    let gate = env.close_gate().await;
    let worker = env.start_worker(&[]).await;
    let addr = worker.metrics_addr();
    let (status, before) = http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        metric(&before, "provision_jobs_started_total", "job=\"create_tenant\""),
        0.0
    );

    let mut args = guide_tenant_args("metered");
    args.extend([
        "--admin-password".into(),
        "a-long-password".into(),
        "--skip-demo-data".into(),
    ]);
    env.provision(&strs(&args)).expect_code(0);
    env.wait_at_gate(1, Duration::from_secs(60)).await;
    let (_, during) = http_get(&addr, "/metrics");
    assert_eq!(
        metric(&during, "provision_jobs_started_total", "job=\"create_tenant\""),
        1.0,
        "{during}"
    );
    assert_eq!(
        metric(&during, "provision_jobs_succeeded_total", "job=\"create_tenant\""),
        0.0
    );
    assert_eq!(
        metric(&during, "provision_tenants", "state=\"requested\""),
        1.0,
        "{during}"
    );
    assert_eq!(
        metric(
            &during,
            "provision_queue_jobs",
            "queue=\"create_tenant\",status=\"inflight\""
        ),
        1.0,
        "{during}"
    );

    // Held at the gate for a second more, while the in-flight figures stay
    // as they are: the migrate step's recorded duration must cover it.
    let held = Instant::now();
    while held.elapsed() < Duration::from_secs(1) {
        let (_, still) = http_get(&addr, "/metrics");
        assert_eq!(
            metric(&still, "provision_jobs_succeeded_total", "job=\"create_tenant\""),
            0.0,
            "{still}"
        );
        assert_eq!(metric(&still, "provision_tenants", "state=\"ready\""), 0.0);
    }
    gate.open().await;
    env.wait_for_state("metered", "ready", Duration::from_secs(60))
        .await;
    // The job's counter moves once its handler returns, after the commit.
    let after = scrape_until(&addr, Duration::from_secs(30), |m| {
        metric(m, "provision_jobs_succeeded_total", "job=\"create_tenant\"") >= 1.0
    });
    assert_eq!(
        metric(&after, "provision_jobs_started_total", "job=\"create_tenant\""),
        1.0
    );
    assert_eq!(
        metric(&after, "provision_jobs_succeeded_total", "job=\"create_tenant\""),
        1.0,
        "{after}"
    );
    assert_eq!(
        metric(&after, "provision_jobs_failed_total", "job=\"create_tenant\""),
        0.0
    );
    assert_eq!(metric(&after, "provision_tenants", "state=\"ready\""), 1.0);
    for step in ["register", "create_schema", "migrate", "create_admin", "activate"] {
        assert_eq!(
            metric(
                &after,
                "provision_step_duration_seconds_count",
                &format!("step=\"{step}\"")
            ),
            1.0,
            "{step}"
        );
    }
    assert!(metric(&after, "provision_step_duration_seconds_sum", "step=\"migrate\"") >= 1.0);
    assert!(after.contains("provision_worker_heartbeat_age_seconds"));

    assert_eq!(http_get(&addr, "/healthz").0, 200);
    redis.stop();
    let start = Instant::now();
    loop {
        let (status, body) = http_get(&addr, "/healthz");
        if status == 503 {
            assert!(body.contains("Redis"), "{body}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "healthz answered {status} {body:?} without Redis:\n{}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    redis.restart_empty();
    let start = Instant::now();
    while http_get(&addr, "/healthz").0 != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "healthz stayed 503 with Redis back:\n{}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Scrapes `/metrics` until `done` says so, and returns that scrape.
fn scrape_until(addr: &str, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let (_, body) = http_get(addr, "/metrics");
        if done(&body) {
            return body;
        }
        assert!(start.elapsed() < timeout, "the metrics never got there:\n{body}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_transition_fields() {
    let env = TestEnv::new("jsonlogs").await;
    let worker = env.start_worker(&[("LOG_FORMAT", "json")]).await;
    let mut args = guide_tenant_args("logged");
    args.extend([
        "--admin-password".into(),
        "a-long-password".into(),
        "--skip-demo-data".into(),
        "--wait".into(),
    ]);
    env.provision(&strs(&args)).expect_code(0);
    // The transitions are logged as the steps' script returns, before the
    // tenant reads ready to the client or not long after: wait for the five.
    let start = Instant::now();
    while worker.log_text().matches("\"transition\"").count() < 5 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "five transitions never logged:\n{}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = worker.log_text();
    let mut transitions = Vec::new();
    for line in log.lines() {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        if event["message"] == "transition" {
            transitions.push(event);
        }
    }
    let steps: Vec<&str> = transitions.iter().map(|e| e["step"].as_str().unwrap()).collect();
    assert_eq!(
        steps,
        ["register", "create_schema", "migrate", "create_admin", "activate"]
    );
    for event in &transitions {
        assert_eq!(event["schema_name"], "logged");
        assert!(
            event["from"].is_string() && event["to"].is_string() && event["duration_ms"].is_number(),
            "{event}"
        );
        assert_eq!(event["span"]["job"], "create_tenant", "{event}");
        assert!(event["span"]["job_id"].is_string(), "{event}");
        assert!(event["attempt"].is_number(), "{event}");
    }
}
