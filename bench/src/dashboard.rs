//! The dashboard's pages with many tenants: their server time (the
//! `Server-Timing` header the dashboard sets, from request to rendered
//! page) and the time a client on loopback waits, against the one query no
//! overview can do without (tenants counted by state). The tenants, their
//! history and a migrate-all run in progress over all of them are written
//! straight into the tables: what is measured is reading them.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::env::BenchEnv;
use crate::report::{Goal, Report, Samples, Unit, millis};

/// The server time the overview must stay under (issue 12).
const OVERVIEW_GOAL_MS: f64 = 100.0;

#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Tenants in the database.
    pub(crate) tenants: usize,
    /// Requests of each page.
    pub(crate) repeat: usize,
}

pub(crate) async fn run(env: &BenchEnv, options: &Options, report: &mut Report) -> anyhow::Result<()> {
    let n = options.tenants;
    eprintln!("dashboard: writing {n} tenants, their history and a migrate-all run");
    seed(env, n).await?;
    let mut dashboard = env
        .client_command(&env.binary("provision"))
        .args(["dashboard", "--addr", "127.0.0.1:0"])
        .env_remove("PROVISION_DASHBOARD_USERS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting provision dashboard")?;
    let mut first = String::new();
    let stdout = dashboard.stdout.take().context("the dashboard's stdout")?;
    tokio::time::timeout(
        Duration::from_secs(60),
        BufReader::new(stdout).read_line(&mut first),
    )
    .await
    .context("the dashboard did not start in 60 s")??;
    let addr = first
        .split_once("http://")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(addr, _)| addr.to_owned())
        .with_context(|| format!("the dashboard did not start: {first:?}"))?;

    let some_tenant = "dash_000002";
    let pages = [
        ("overview", "/".to_owned()),
        ("overview, its live region", "/live/overview".to_owned()),
        ("tenant list, first page", "/tenants".to_owned()),
        (
            "tenant list, failed, last page",
            format!("/tenants?state=failed&page={}", (n / 50 / 50).max(1)),
        ),
        (
            "tenant list, search by name",
            "/tenants?q=%CE%9D%CE%AF%CE%BA%CE%BF%CF%82%2012".to_owned(),
        ),
        ("one tenant", format!("/tenants/{some_tenant}")),
    ];
    // A first request of each warms the connection pool and the caches.
    for (_, path) in &pages {
        get(&addr, path).await?;
    }
    let mut floor = Samples::default();
    for _ in 0..options.repeat {
        let started = Instant::now();
        let _: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM public.provision_tenant GROUP BY state")
                .fetch_all(&env.pool)
                .await?;
        floor.push(millis(started.elapsed()));
    }
    for (label, path) in &pages {
        let mut server = Samples::default();
        let mut waited = Samples::default();
        for _ in 0..options.repeat {
            let started = Instant::now();
            let timing = get(&addr, path).await?;
            waited.push(millis(started.elapsed()));
            server.push(timing);
        }
        let overview = *label == "overview";
        report.row(
            format!("dashboard {label}, {n} tenants: server time"),
            Unit::Ms,
            server,
            overview.then(|| floor.clone()),
            if overview {
                Goal::AtMost {
                    scale: 1.0,
                    limit: OVERVIEW_GOAL_MS,
                    text: "< 100 ms",
                }
            } else {
                Goal::None
            },
        );
        report.row(
            format!("dashboard {label}, {n} tenants: client wait"),
            Unit::Ms,
            waited,
            None,
            Goal::None,
        );
    }
    report.note(
        "dashboard: server time is the page's Server-Timing (request in to page rendered); \
         the overview's lower bound is one query counting tenants by state",
    );
    dashboard.kill().await.ok();
    Ok(())
}

/// GETs `path` on a connection of its own; the server time it reports.
async fn get(addr: &str, path: &str) -> anyhow::Result<f64> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .context("no answer in 30 s")??;
    let text = String::from_utf8_lossy(&raw);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        bail!("GET {path}: status {status}:\n{text}");
    }
    let timing = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("server-timing").then(|| value.trim())
        })
        .and_then(|v| v.strip_prefix("app;dur="))
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| format!("GET {path}: no Server-Timing header"))?;
    Ok(timing)
}

/// `n` tenants `dash_<i>`: 96% ready with a history of six events, 2%
/// failed at register, 2% requested; every seventh named in Greek; and a
/// migrate-all run in progress over the ready ones, 60% done.
async fn seed(env: &BenchEnv, n: usize) -> anyhow::Result<()> {
    let n = i64::try_from(n)?;
    sqlx::query(
        "WITH t AS (
             SELECT i, format('dash_%s', lpad(i::text, 6, '0')) AS schema_name,
                    CASE i % 7 WHEN 0 THEN 'Νίκος ' || i WHEN 1 THEN 'Κτίριο Demo ' || i ELSE 'Bench ' || i END AS name,
                    CASE i % 50 WHEN 0 THEN 'failed' WHEN 1 THEN 'requested' ELSE 'ready' END AS state,
                    format('dash-%s.bench.example.org', i) AS domain,
                    now() - i * interval '7 seconds' AS created_at
             FROM generate_series(1, $1) AS i),
         clients AS (
             INSERT INTO public.tenants_client
                 (schema_name, name, paid_until, on_trial, is_active, trial_days, created_on)
             SELECT schema_name, name, (now() + interval '30 days')::date, true, true, 30, created_at::date
             FROM t WHERE state = 'ready'
             RETURNING id, schema_name),
         domains AS (
             INSERT INTO public.tenants_domain (domain, tenant_id, is_primary)
             SELECT t.domain, c.id, true FROM t JOIN clients c USING (schema_name))
         INSERT INTO public.provision_tenant
             (schema_name, tenant_name, domain, admin_email, trial_days, seed_demo_data, request_fingerprint,
              state, failed_step, failed_from_state, last_error, demo_data_state, requested_by, job_id,
              created_at, updated_at, ready_at)
         SELECT schema_name, name, domain, 'admin@' || domain, 30, false, 'bench-' || schema_name, state,
                CASE WHEN state = 'failed' THEN 'register' END,
                CASE WHEN state = 'failed' THEN 'requested' END,
                CASE WHEN state = 'failed' THEN 'domain ' || domain || ' is taken' END,
                'skipped', 'provision-bench', 'bench-job-' || i, created_at, created_at + interval '1 second',
                CASE WHEN state = 'ready' THEN created_at + interval '1 second' END
         FROM t",
    )
    .bind(n)
    .execute(&env.pool)
    .await
    .context("writing the tenants")?;
    sqlx::query(
        "INSERT INTO public.provision_event (schema_name, from_state, to_state, step, attempt, actor, at)
         SELECT p.schema_name, s.from_state, s.to_state, s.step, 1, 'provision-bench',
                p.created_at + s.offset_ms * interval '1 millisecond'
         FROM public.provision_tenant p
         CROSS JOIN (VALUES (NULL, 'requested', 'request', 0),
                            ('requested', 'registered', 'register', 100),
                            ('registered', 'schema_created', 'create_schema', 130),
                            ('schema_created', 'migrated', 'migrate', 600),
                            ('migrated', 'admin_created', 'create_admin', 640),
                            ('admin_created', 'ready', 'activate', 650))
             AS s(from_state, to_state, step, offset_ms)
         WHERE p.state = 'ready'
         ORDER BY p.created_at, s.offset_ms",
    )
    .execute(&env.pool)
    .await
    .context("writing the history")?;
    let ready: i64 = sqlx::query_scalar("SELECT count(*) FROM public.tenants_client")
        .fetch_one(&env.pool)
        .await?;
    let run_id: i64 = sqlx::query_scalar(
        "INSERT INTO public.provision_migration_run
             (trigger, scope, started_by, target_version, state, total, already_current)
         VALUES ('operator', 'all', 'provision-bench', 1, 'running', $1, 0) RETURNING id",
    )
    .bind(i32::try_from(ready)?)
    .fetch_one(&env.pool)
    .await?;
    sqlx::query(
        "INSERT INTO public.provision_migration_run_schema (run_id, schema_name, state, pending, has_ledger, error)
         SELECT $1, schema_name, state, '{1}', true,
                CASE WHEN state = 'failed' THEN 'bench: a failed migration' END
         FROM (SELECT schema_name,
                      CASE WHEN i % 10 < 6 THEN 'migrated' WHEN i % 100 = 99 THEN 'failed' ELSE 'pending' END AS state
               FROM (SELECT schema_name, row_number() OVER (ORDER BY schema_name) AS i
                     FROM public.tenants_client) AS numbered) AS planned",
    )
    .bind(run_id)
    .execute(&env.pool)
    .await
    .context("writing the migrate-all run")?;
    sqlx::query("ANALYZE").execute(&env.pool).await?;
    let tenants: i64 = sqlx::query_scalar("SELECT count(*) FROM public.provision_tenant")
        .fetch_one(&env.pool)
        .await?;
    ensure!(tenants == n, "wrote {tenants} tenants, not {n}");
    Ok(())
}
