//! `provision dashboard` through real HTTP and a real browser: headless
//! Chromium driven over WebDriver (chromedriver), against the real binary,
//! PostgreSQL and Redis. Screenshots of the main pages are written to the
//! test's folder, and to `DASHBOARD_SCREENSHOTS` (a folder) when it is set:
//! that is how `docs/screenshots/` is made.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use fantoccini::{Client, ClientBuilder, Locator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{TestEnv, request_tenant};

const WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// The dashboard process

/// A running `provision dashboard`, killed when dropped.
struct Dashboard {
    child: Child,
    /// `127.0.0.1:port`.
    addr: String,
    output: Arc<Mutex<String>>,
}

impl Dashboard {
    /// Starts the dashboard on a free loopback port with the users file
    /// `users`.
    async fn start_with_users(env: &TestEnv, users: &Path) -> Self {
        Self::start(
            env,
            &["--addr", "127.0.0.1:0", "--users", users.to_str().unwrap()],
            &[],
        )
        .await
    }

    /// Starts `provision dashboard` with `args` and waits for the line
    /// that says where it serves.
    async fn start(env: &TestEnv, args: &[&str], extra_env: &[(&str, &str)]) -> Self {
        let mut all = vec!["dashboard"];
        all.extend_from_slice(args);
        let mut child = env.spawn_provision_with(&all, extra_env);
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let output = Arc::new(Mutex::new(String::new()));
        drain(stderr, output.clone());
        let (first, rest) = tokio::task::spawn_blocking(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            (line, reader)
        })
        .await
        .expect("read the dashboard's first line");
        drain(rest, output.clone());
        let Some(addr) = first
            .split_once("http://")
            .and_then(|(_, rest)| rest.split_once('/'))
            .map(|(addr, _)| addr.to_owned())
        else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the dashboard did not start: {first:?}\n{}",
                output.lock().unwrap()
            );
        };
        // Whatever the bind address, the tests reach it over loopback.
        let addr = addr.replace("0.0.0.0", "127.0.0.1");
        Self { child, addr, output }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn get(&self, path: &str, cookies: &str) -> Http {
        http(&self.addr, "GET", path, cookies, None).await
    }

    async fn post(&self, path: &str, cookies: &str, form: &[(&str, &str)]) -> Http {
        http(&self.addr, "POST", path, cookies, Some(&form_body(form))).await
    }

    /// Signs `name` in through the form; returns the session cookie.
    async fn sign_in(&self, name: &str, password: &str) -> String {
        let (response, _) = self.sign_in_attempt(name, password).await;
        assert_eq!(response.status, 303, "sign-in of {name}: {}", response.body);
        let session = response
            .set_cookie("provision_dashboard_session")
            .unwrap_or_else(|| panic!("no session cookie: {:?}", response.headers));
        format!("provision_dashboard_session={session}")
    }

    /// Posts the sign-in form as a browser would (with its nonce and
    /// cookie); the answer and the form's cookie.
    async fn sign_in_attempt(&self, name: &str, password: &str) -> (Http, String) {
        let form = self.get("/login", "").await;
        assert_eq!(form.status, 200, "{}", form.body);
        let nonce = attr_values(&form.body, "name=\"nonce\" value")
            .pop()
            .expect("a nonce in the form");
        let login_cookie = format!(
            "provision_dashboard_login={}",
            form.set_cookie("provision_dashboard_login")
                .expect("login cookie")
        );
        let response = self
            .post(
                "/login",
                &login_cookie,
                &[
                    ("name", name),
                    ("password", password),
                    ("nonce", &nonce),
                    ("next", "/"),
                ],
            )
            .await;
        (response, login_cookie)
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keeps reading `from` into `into` on a thread of its own, so the
/// process never blocks on a full pipe.
fn drain(mut from: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
}

/// Writes a users file with an operator `olga` and a viewer `vera`, their
/// hashes made by `provision dashboard --hash-password`.
fn users_file(env: &TestEnv) -> PathBuf {
    let hash = |password: &str| {
        let run = env.provision_with_stdin(&["dashboard", "--hash-password"], Some(&format!("{password}\n")));
        run.expect_code(0);
        run.stdout.trim().to_owned()
    };
    let path = env.dir().join("dashboard-users");
    let text = format!(
        "# the dashboard's users\nolga:operator:{}\nvera:viewer:{}\n",
        hash("olga-password"),
        hash("vera-password")
    );
    std::fs::write(&path, text).expect("users file");
    path
}

// ---------------------------------------------------------------------------
// HTTP, as plainly as a test can speak it

#[derive(Debug)]
struct Http {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Http {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The value a `Set-Cookie` header gives cookie `name`.
    fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .filter_map(|(_, v)| v.split(';').next()?.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    }
}

/// One HTTP/1.1 request on a connection of its own.
async fn http(addr: &str, method: &str, path: &str, cookies: &str, form: Option<&str>) -> Http {
    http_with(addr, method, path, cookies, form, &[]).await
}

async fn http_with(
    addr: &str,
    method: &str,
    path: &str,
    cookies: &str,
    form: Option<&str>,
    extra_headers: &[(&str, &str)],
) -> Http {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !cookies.is_empty() {
        request.push_str(&format!("Cookie: {cookies}\r\n"));
    }
    for (k, v) in extra_headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = form.unwrap_or("");
    if form.is_some() {
        request.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).await.expect("send request");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read response");
    let text = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers and body");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked { unchunk(body) } else { body.to_owned() };
    Http {
        status,
        headers,
        body,
    }
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn form_body(form: &[(&str, &str)]) -> String {
    form.iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every value of attribute `attr` (the text before `="`) in `html`.
fn attr_values(html: &str, attr: &str) -> Vec<String> {
    let needle = format!("{attr}=\"");
    html.match_indices(&needle)
        .filter_map(|(i, _)| {
            let rest = &html[i + needle.len()..];
            rest.split_once('"').map(|(v, _)| v.to_owned())
        })
        .collect()
}

/// The number in the `data-count` attribute that follows `marker`.
fn count_after(html: &str, marker: &str) -> i64 {
    let at = html
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in the page"));
    attr_values(&html[at..], "data-count")
        .first()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no data-count after {marker}"))
}

// ---------------------------------------------------------------------------
// Many tenants, made straight in the tables

/// A tenant the fixture made, with what the list must say of it.
#[derive(Debug, Clone)]
struct Made {
    schema: String,
    name: String,
    state: &'static str,
    lifecycle: &'static str,
    /// What the list sorts by (newest first).
    created_at: DateTime<Utc>,
    /// Its primary domain, or the domain it asked for.
    domain: String,
}

/// Inserts `n` tenants named `<prefix>_<i>`, spread over every state and
/// lifecycle: ready (active, suspended, gone), failed at register,
/// requested, schema_created, and tenants made by the platform (active and
/// not). Every seventh is 'Νίκος …', every seventh but one 'Κτίριο Demo …'.
/// Ready tenants get their history (for the charts); request times are a
/// permutation with ties, so the order is not the order of insertion.
async fn insert_tenants(env: &TestEnv, prefix: &str, n: usize) -> Vec<Made> {
    let now = Utc::now();
    let made: Vec<Made> = (0..n)
        .map(|i| {
            let (state, lifecycle) = match i % 20 {
                0..=11 => ("ready", "active"),
                12 => ("ready", "suspended"),
                13 => ("ready", "gone"),
                14 | 15 => ("failed", "failed"),
                16 => ("requested", "provisioning"),
                17 => ("schema_created", "provisioning"),
                18 => ("external", "active"),
                _ => ("external", "suspended"),
            };
            let name = match i % 7 {
                0 => format!("Νίκος {i}"),
                1 => format!("Κτίριο Demo {i}"),
                _ => format!("Tenant {i}"),
            };
            let shuffled = (i * 7919) % n.max(1);
            let created_at = if state == "external" {
                // Platform tenants sort by their creation day, long before.
                "2020-01-01T00:00:00Z".parse().unwrap()
            } else {
                // Spread over the last 20 hours, three at a time.
                let step = i64::try_from((216_000 / n.max(1)).max(1)).unwrap();
                now - TimeDelta::seconds(i64::try_from(shuffled / 3).unwrap() * step) - TimeDelta::minutes(1)
            };
            Made {
                schema: format!("{prefix}_{i:05}"),
                name,
                state,
                lifecycle,
                created_at,
                domain: format!("{}-{i:05}.example.org", prefix.replace('_', "-")),
            }
        })
        .collect();
    let column = |f: &dyn Fn(&Made) -> String| made.iter().map(f).collect::<Vec<String>>();
    let schemas = column(&|m| m.schema.clone());
    let names = column(&|m| m.name.clone());
    let states = column(&|m| m.state.to_owned());
    let lifecycles = column(&|m| m.lifecycle.to_owned());
    let domains = column(&|m| m.domain.clone());
    let created: Vec<DateTime<Utc>> = made.iter().map(|m| m.created_at).collect();
    sqlx::query(
        "WITH t AS (
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[])
                 AS t(schema_name, name, state, lifecycle, domain, created_at)),
         clients AS (
             INSERT INTO tenants_client (schema_name, name, paid_until, on_trial, is_active, trial_days, created_on)
             SELECT schema_name, name, (now() + interval '30 days')::date, true, lifecycle = 'active', 30,
                    CASE WHEN state = 'external' THEN DATE '2020-01-01' ELSE created_at::date END
             FROM t WHERE state IN ('ready', 'schema_created', 'external') AND lifecycle <> 'gone'
             RETURNING id, schema_name),
         domains AS (
             INSERT INTO tenants_domain (domain, tenant_id, is_primary)
             SELECT t.domain, c.id, true FROM t JOIN clients c USING (schema_name))
         INSERT INTO provision_tenant
             (schema_name, tenant_name, domain, admin_email, trial_days, seed_demo_data, request_fingerprint,
              state, failed_step, failed_from_state, last_error, demo_data_state, requested_by,
              job_id, created_at, updated_at, ready_at)
         SELECT schema_name, name, domain, 'admin@' || domain, 30, false, 'fixture-' || schema_name,
                state,
                CASE WHEN state = 'failed' THEN 'register' END,
                CASE WHEN state = 'failed' THEN 'requested' END,
                CASE WHEN state = 'failed' THEN
                    'domain ' || domain || ' already belongs to tenant \"squatter\"' || chr(10) || 'second line of the error' END,
                'skipped', 'fixture', 'fixture-job-' || schema_name, created_at,
                -- A tenant still being provisioned was touched just now:
                -- no worker's reconciler takes it up during a test.
                CASE WHEN state IN ('ready', 'failed') THEN created_at + interval '2 seconds' ELSE now() END,
                CASE WHEN state = 'ready' THEN created_at + interval '2 seconds' END
         FROM t WHERE state <> 'external'",
    )
    .bind(&schemas)
    .bind(&names)
    .bind(&states)
    .bind(&lifecycles)
    .bind(&domains)
    .bind(&created)
    .execute(&env.pool)
    .await
    .expect("insert the fixture's tenants");
    // Each ready tenant's history: a request and the five steps, spread
    // over its two seconds as a worker would record them.
    sqlx::query(
        "INSERT INTO provision_event (schema_name, from_state, to_state, step, attempt, actor, at)
         SELECT p.schema_name, s.from_state, s.to_state, s.step, 1, 'fixture',
                p.created_at + s.offset_ms * interval '1 millisecond' * (1 + (hashtext(p.schema_name) & 3))
         FROM provision_tenant p
         CROSS JOIN (VALUES (NULL, 'requested', 'request', 0),
                            ('requested', 'registered', 'register', 120),
                            ('registered', 'schema_created', 'create_schema', 150),
                            ('schema_created', 'migrated', 'migrate', 400),
                            ('migrated', 'admin_created', 'create_admin', 430),
                            ('admin_created', 'ready', 'activate', 440))
             AS s(from_state, to_state, step, offset_ms)
         WHERE p.state = 'ready' AND p.schema_name = ANY($1)
         ORDER BY p.created_at, s.offset_ms",
    )
    .bind(&schemas)
    .execute(&env.pool)
    .await
    .expect("insert the fixture's history");
    made
}

/// The rows of `made` the list must show under a filter, in its order.
fn expected(made: &[Made], keep: impl Fn(&Made) -> bool) -> Vec<String> {
    let mut rows: Vec<&Made> = made.iter().filter(|m| keep(m)).collect();
    rows.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| a.schema.cmp(&b.schema))
    });
    rows.into_iter().map(|m| m.schema.clone()).collect()
}

/// Every row of the list under `filter` (a query string without `page`),
/// page after page, checking each page's total and that the page after
/// the last is empty.
async fn every_page(dashboard: &Dashboard, filter: &str, per_page: usize) -> (Vec<String>, i64) {
    let mut rows = Vec::new();
    let mut total = None;
    for page in 1.. {
        let path = format!("/tenants?{filter}&per_page={per_page}&page={page}");
        let response = dashboard.get(&path, "").await;
        assert_eq!(response.status, 200, "{path}: {}", response.body);
        let page_total: i64 = attr_values(&response.body, "data-total")[0].parse().unwrap();
        assert_eq!(
            *total.get_or_insert(page_total),
            page_total,
            "{path}: the total moved"
        );
        let page_rows = attr_values(&response.body, "data-schema");
        assert!(page_rows.len() <= per_page, "{path}: {} rows", page_rows.len());
        if page_rows.is_empty() {
            break;
        }
        let last = rows.len() + page_rows.len() >= usize::try_from(page_total).unwrap();
        assert!(
            last || page_rows.len() == per_page,
            "{path}: a page short of {per_page} before the end"
        );
        rows.extend(page_rows);
    }
    (rows, total.unwrap_or(0))
}

// ---------------------------------------------------------------------------
// The tests over HTTP

#[tokio::test]
async fn pages_and_filters_over_2000_tenants_add_up_and_each_page_holds_the_right_rows() {
    let env = TestEnv::new("dashlist").await;
    let made = insert_tenants(&env, "ls", 2000).await;
    let dashboard = Dashboard::start(&env, &["--addr", "127.0.0.1:0"], &[]).await;

    // The overview's counts, each state's and each lifecycle's, add up.
    let overview = dashboard.get("/", "").await;
    assert_eq!(overview.status, 200, "{}", overview.body);
    let total: i64 = attr_values(&overview.body, "data-count-total")[0]
        .parse()
        .unwrap();
    assert_eq!(total, 2000);
    let states = [
        "requested",
        "registered",
        "schema_created",
        "migrated",
        "admin_created",
        "ready",
        "failed",
        "external",
    ];
    let mut by_state = 0;
    for state in states {
        let n = count_after(&overview.body, &format!("data-count-state=\"{state}\""));
        let want = made.iter().filter(|m| m.state == state).count() as i64;
        assert_eq!(n, want, "tenants in {state}");
        by_state += n;
    }
    assert_eq!(by_state, total);
    let mut by_lifecycle = 0;
    for lifecycle in ["provisioning", "failed", "active", "suspended", "gone"] {
        let n = count_after(&overview.body, &format!("data-count-lifecycle=\"{lifecycle}\""));
        let want = made.iter().filter(|m| m.lifecycle == lifecycle).count() as i64;
        assert_eq!(n, want, "tenants {lifecycle}");
        by_lifecycle += n;
    }
    assert_eq!(by_lifecycle, total);

    // Every page of every filter holds exactly the rows it should, in order.
    let (all, all_total) = every_page(&dashboard, "", 100).await;
    assert_eq!(all_total, 2000);
    assert_eq!(all, expected(&made, |_| true), "every tenant, newest first");
    for state in ["ready", "failed", "requested", "schema_created", "external"] {
        let (rows, n) = every_page(&dashboard, &format!("state={state}"), 100).await;
        let want = expected(&made, |m| m.state == state);
        assert_eq!(n as usize, want.len(), "the total of {state}");
        assert_eq!(rows, want, "the tenants in {state}");
    }
    for lifecycle in ["active", "suspended", "gone", "provisioning"] {
        let (rows, _) = every_page(&dashboard, &format!("lifecycle={lifecycle}"), 200).await;
        assert_eq!(
            rows,
            expected(&made, |m| m.lifecycle == lifecycle),
            "lifecycle {lifecycle}"
        );
    }
    let (rows, _) = every_page(&dashboard, "state=ready&lifecycle=suspended", 50).await;
    assert_eq!(
        rows,
        expected(&made, |m| m.state == "ready" && m.lifecycle == "suspended")
    );

    // Search: a Greek name, a domain (registered or only requested), a
    // schema; `%` is a plain character.
    let (rows, _) = every_page(&dashboard, &format!("q={}", encode("Νίκος")), 200).await;
    assert_eq!(rows, expected(&made, |m| m.name.contains("Νίκος")));
    let (rows, _) = every_page(
        &dashboard,
        &format!("q={}&state=failed", encode("Κτίριο Demo")),
        50,
    )
    .await;
    assert_eq!(
        rows,
        expected(&made, |m| m.name.contains("Κτίριο Demo") && m.state == "failed")
    );
    for i in [42, 56, 76] {
        let (rows, _) = every_page(&dashboard, &format!("q=ls-{i:05}.example"), 50).await;
        assert_eq!(
            rows,
            vec![format!("ls_{i:05}")],
            "the tenant whose domain is ls-{i:05}"
        );
    }
    let (rows, _) = every_page(&dashboard, "q=LS_0012", 50).await;
    assert_eq!(rows, expected(&made, |m| m.schema.starts_with("ls_0012")));
    let (rows, _) = every_page(&dashboard, "q=%25", 50).await;
    assert!(rows.is_empty(), "% matched {} rows", rows.len());

    // The facets on the list add up to its total too.
    let list = dashboard.get("/tenants?q=Tenant", "").await;
    let listed: i64 = attr_values(&list.body, "data-total")[0].parse().unwrap();
    let faceted: i64 = states
        .iter()
        .filter(|s| list.body.contains(&format!("data-facet-state=\"{s}\"")))
        .map(|s| count_after(&list.body, &format!("data-facet-state=\"{s}\"")))
        .sum();
    assert_eq!(faceted, listed);

    // Greek names are shown exactly as stored, and reading needs no script:
    // the page's HTML holds them.
    let greek = dashboard.get("/tenants?q=ls_00007", "").await;
    assert!(greek.body.contains(">Νίκος 7<"), "{}", greek.body);
    let tenant = dashboard.get("/tenants/ls_00008", "").await;
    assert_eq!(tenant.status, 200);
    assert!(tenant.body.contains("Κτίριο Demo 8"));
    assert!(
        tenant.body.contains("data-event=\"activate\""),
        "the history is in the page"
    );

    // Bad input names its field.
    let bad = dashboard.get("/tenants?state=done", "").await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("invalid state"), "{}", bad.body);
    assert_eq!(dashboard.get("/tenants/nobody_here", "").await.status, 404);
}

#[tokio::test]
async fn sign_in_csrf_and_roles_refuse_what_they_should() {
    let env = TestEnv::new("dashauth").await;
    let users = users_file(&env);
    insert_tenants(&env, "au", 40).await;
    // au_00014 and au_00015 are failed.
    let dashboard = Dashboard::start_with_users(&env, &users).await;

    // Without a session: the sign-in page.
    let anonymous = dashboard.get("/tenants?state=failed", "").await;
    assert_eq!(anonymous.status, 303);
    assert_eq!(
        anonymous.header("location"),
        Some("/login?next=/tenants%3Fstate%3Dfailed")
    );
    let live = http_with(
        &dashboard.addr,
        "GET",
        "/live/overview",
        "",
        None,
        &[("X-Dashboard-Live", "1")],
    )
    .await;
    assert_eq!(live.status, 401, "a live fetch without a session");

    // A wrong password, an unknown user, a form without its cookie.
    let (wrong, _) = dashboard.sign_in_attempt("olga", "not-her-password").await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("Wrong user name or password"));
    assert_eq!(wrong.set_cookie("provision_dashboard_session"), None);
    let (unknown, _) = dashboard.sign_in_attempt("nobody", "olga-password").await;
    assert_eq!(unknown.status, 401);
    let forged_login = dashboard
        .post(
            "/login",
            "",
            &[("name", "olga"), ("password", "olga-password"), ("nonce", "x")],
        )
        .await;
    assert_eq!(forged_login.status, 403, "a sign-in form from elsewhere");
    assert_eq!(forged_login.set_cookie("provision_dashboard_session"), None);

    // The operator: a POST without the CSRF token, or with another one, is
    // refused and changes nothing; with it, the tenant is retried and the
    // history names her.
    let olga = dashboard.sign_in("olga", "olga-password").await;
    let page = dashboard.get("/tenants/au_00014", &olga).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("data-action=\"retry\""));
    let csrf = attr_values(&page.body, "name=\"csrf\" value")[0].clone();
    let missing = dashboard.post("/tenants/au_00014/retry", &olga, &[]).await;
    assert_eq!(missing.status, 403, "{}", missing.body);
    // The lifecycle actions are offered where the tenant's lifecycle
    // allows them: active (au_00001), suspended (au_00012), and none for a
    // failed tenant (au_00014).
    for (schema, offered) in [
        ("au_00001", &["suspend", "schedule-delete"][..]),
        ("au_00012", &["resume", "schedule-delete"][..]),
        ("au_00014", &[][..]),
    ] {
        let page = dashboard.get(&format!("/tenants/{schema}"), &olga).await;
        for action in ["suspend", "resume", "schedule-delete", "cancel-delete"] {
            assert_eq!(
                page.body.contains(&format!("data-action=\"{action}\"")),
                offered.contains(&action),
                "{schema} and {action}"
            );
        }
    }
    let no_token = dashboard.post("/tenants/au_00001/suspend", &olga, &[]).await;
    assert_eq!(no_token.status, 403, "{}", no_token.body);
    let other = "0".repeat(csrf.len());
    let wrong_token = dashboard
        .post("/tenants/au_00014/retry", &olga, &[("csrf", &other)])
        .await;
    assert_eq!(wrong_token.status, 403);
    assert_eq!(state_of(&env, "au_00014").await, "failed");
    let retried = dashboard
        .post("/tenants/au_00014/retry", &olga, &[("csrf", &csrf)])
        .await;
    assert_eq!(retried.status, 303, "{}", retried.body);
    assert_eq!(state_of(&env, "au_00014").await, "requested");
    let actor: String = sqlx::query_scalar(
        "SELECT actor FROM provision_event WHERE schema_name = 'au_00014' AND step = 'retry'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(actor, "dashboard (olga)");
    let after = dashboard.get("/tenants/au_00014", &olga).await;
    assert!(
        after.body.contains("Re-queued au_00014 from requested"),
        "the outcome is shown once"
    );

    // The viewer: no action on any page, and her POST with her own valid
    // token is refused.
    let vera = dashboard.sign_in("vera", "vera-password").await;
    for path in [
        "/",
        "/tenants?state=failed",
        "/tenants/au_00015",
        "/tenants/au_00001",
        "/tenants/au_00012",
        "/retry-failed?state=failed",
    ] {
        let page = dashboard.get(path, &vera).await;
        assert!(
            !page.body.contains("data-action="),
            "{path} offers a viewer an action:\n{}",
            page.body
        );
        let forms = attr_values(&page.body, "method=\"post\" action");
        assert!(forms.iter().all(|a| a == "/logout"), "{path}: {forms:?}");
    }
    let vera_page = dashboard.get("/tenants/au_00015", &vera).await;
    let vera_csrf = attr_values(&vera_page.body, "name=\"csrf\" value")[0].clone();
    for (path, form) in [
        ("/tenants/au_00015/retry", vec![("csrf", vera_csrf.as_str())]),
        (
            "/tenants/au_00015/domain",
            vec![("csrf", vera_csrf.as_str()), ("domain", "vera.example.org")],
        ),
        ("/migrate-all", vec![("csrf", vera_csrf.as_str())]),
        (
            "/retry-failed",
            vec![("csrf", vera_csrf.as_str()), ("state", "failed")],
        ),
        (
            "/tenants/au_00001/suspend",
            vec![("csrf", vera_csrf.as_str()), ("reason", "vera was here")],
        ),
        ("/tenants/au_00012/resume", vec![("csrf", vera_csrf.as_str())]),
        (
            "/tenants/au_00001/delete",
            vec![
                ("csrf", vera_csrf.as_str()),
                ("confirm", "au_00001"),
                ("grace", "0"),
            ],
        ),
        (
            "/tenants/au_00001/cancel-delete",
            vec![("csrf", vera_csrf.as_str())],
        ),
    ] {
        let forged = dashboard.post(path, &vera, &form).await;
        assert_eq!(forged.status, 403, "a viewer's POST to {path}: {}", forged.body);
    }
    assert_eq!(state_of(&env, "au_00015").await, "failed");
    let lifecycle_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM provision_lifecycle")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(
        lifecycle_rows, 0,
        "the viewer suspended, resumed or deleted something"
    );
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM provision_migration_run")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(runs, 0, "the viewer started no run");

    // The operator starts a migrate-all run; the fixture's schemas do not
    // exist, so they fail, and she retries one from the run's page.
    let started = dashboard.post("/migrate-all", &olga, &[("csrf", &csrf)]).await;
    assert_eq!(started.status, 303, "{}", started.body);
    let (run_id, started_by): (i64, String) =
        sqlx::query_as("SELECT id, started_by FROM provision_migration_run")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(started_by, "dashboard (olga)");
    let run_page = dashboard.get(&format!("/runs/{run_id}"), &olga).await;
    assert_eq!(run_page.status, 200, "{}", run_page.body);
    assert!(
        run_page.body.contains("tr data-failed=\"au_00000\""),
        "{}",
        run_page.body
    );
    let retried_schema = dashboard
        .post(
            "/tenants/au_00000/retry",
            &olga,
            &[("csrf", &csrf), ("return_to", &format!("/runs/{run_id}"))],
        )
        .await;
    assert_eq!(retried_schema.status, 303);
    assert_eq!(
        retried_schema.header("location"),
        Some(format!("/runs/{run_id}").as_str())
    );
    let (schema_state, actor): (String, String) = sqlx::query_as(
        "SELECT s.state, e.actor FROM provision_migration_run_schema s
         JOIN provision_event e ON e.schema_name = s.schema_name AND e.step = 'retry_migration'
         WHERE s.schema_name = 'au_00000'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_ne!(schema_state, "failed");
    assert_eq!(actor, "dashboard (olga)");

    // The bulk retry: the confirmation states how many failed tenants the
    // list's filter holds; confirmed, those (and only those) are retried.
    let confirm = dashboard.get("/retry-failed?q=au_0003", &olga).await;
    assert_eq!(confirm.status, 200, "{}", confirm.body);
    assert_eq!(attr_values(&confirm.body, "data-confirm-count"), ["2"]);
    let bulk = dashboard
        .post(
            "/retry-failed",
            &olga,
            &[("csrf", &csrf), ("q", "au_0003"), ("expected", "2")],
        )
        .await;
    assert_eq!(bulk.status, 303, "{}", bulk.body);
    assert_eq!(bulk.header("location"), Some("/tenants?q=au_0003"));
    for schema in ["au_00034", "au_00035"] {
        assert_eq!(state_of(&env, schema).await, "requested", "{schema}");
    }
    assert_eq!(state_of(&env, "au_00015").await, "failed", "outside the filter");
    let list = dashboard.get("/tenants?q=au_0003", &olga).await;
    assert!(
        list.body.contains("Re-queued 2 failed tenant(s)."),
        "{}",
        list.body
    );

    // A deletion due now (grace 0, no backup) is scheduled and its job
    // pushed at once; a grace that is not a number is refused, naming it.
    let bad_grace = dashboard
        .post(
            "/tenants/au_00002/delete",
            &olga,
            &[("csrf", &csrf), ("confirm", "au_00002"), ("grace", "soon")],
        )
        .await;
    assert_eq!(bad_grace.status, 303, "{}", bad_grace.body);
    let refused = dashboard.get("/tenants/au_00002", &olga).await;
    assert!(refused.body.contains("invalid grace"), "{}", refused.body);
    let now = dashboard
        .post(
            "/tenants/au_00002/delete",
            &olga,
            &[
                ("csrf", &csrf),
                ("confirm", "au_00002"),
                ("grace", "0"),
                ("no_backup", "1"),
            ],
        )
        .await;
    assert_eq!(now.status, 303, "{}", now.body);
    let (state, with_backup, job_id, due_now): (String, Option<bool>, Option<String>, bool) = sqlx::query_as(
        "SELECT state, with_backup, job_id, delete_after <= now() FROM provision_lifecycle WHERE schema_name = 'au_00002'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        (state.as_str(), with_backup, due_now),
        ("deletion_scheduled", Some(false), true)
    );
    let job_id = job_id.expect("the DeleteTenant job pushed");
    let after = dashboard.get("/tenants/au_00002", &olga).await;
    assert!(
        after.body.contains(&format!("DeleteTenant job {job_id}")) && after.body.contains("WITHOUT a backup"),
        "{}",
        after.body
    );

    // Signed out, the session is gone.
    let out = dashboard.post("/logout", &vera, &[("csrf", &vera_csrf)]).await;
    assert_eq!(out.status, 303);
    assert_eq!(dashboard.get("/", &vera).await.status, 303);
    assert!(
        !dashboard.output().contains("vera-password"),
        "a password in the dashboard's output"
    );
}

#[tokio::test]
async fn an_expired_session_is_refused() {
    let env = TestEnv::new("dashexpiry").await;
    let users = users_file(&env);
    insert_tenants(&env, "ex", 20).await;
    let dashboard = Dashboard::start(
        &env,
        &[
            "--addr",
            "127.0.0.1:0",
            "--users",
            users.to_str().unwrap(),
            "--session-ttl",
            "2",
        ],
        &[],
    )
    .await;
    let olga = dashboard.sign_in("olga", "olga-password").await;
    let page = dashboard.get("/tenants/ex_00014", &olga).await;
    let csrf = attr_values(&page.body, "name=\"csrf\" value")[0].clone();
    // Waits for the session to end, asking again and again.
    let started = Instant::now();
    loop {
        let response = dashboard.get("/", &olga).await;
        if response.status == 303 {
            assert!(response.header("location").unwrap().starts_with("/login"));
            break;
        }
        assert_eq!(response.status, 200);
        assert!(started.elapsed() < WAIT, "the session never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let late = dashboard
        .post("/tenants/ex_00014/retry", &olga, &[("csrf", &csrf)])
        .await;
    assert_eq!(late.status, 401, "{}", late.body);
    assert_eq!(state_of(&env, "ex_00014").await, "failed");
    let live = http_with(
        &dashboard.addr,
        "GET",
        "/tenants/ex_00014/live",
        &olga,
        None,
        &[("X-Dashboard-Live", "1")],
    )
    .await;
    assert_eq!(live.status, 401);
}

#[tokio::test]
async fn off_loopback_it_refuses_to_start_without_users_and_on_loopback_it_only_reads() {
    let env = TestEnv::new("dashaddr").await;
    insert_tenants(&env, "lo", 20).await;
    let refused = env.provision(&["dashboard", "--addr", "0.0.0.0:0"]);
    refused.expect_code(2);
    assert!(
        refused.stderr.contains("PROVISION_DASHBOARD_USERS"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("not a loopback address"),
        "{}",
        refused.stderr
    );
    let bad_file = env.dir().join("bad-users");
    std::fs::write(
        &bad_file,
        "olga:admin:$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g\n",
    )
    .unwrap();
    let bad = env.provision_with_stdin(
        &[
            "dashboard",
            "--addr",
            "0.0.0.0:0",
            "--users",
            bad_file.to_str().unwrap(),
        ],
        None,
    );
    bad.expect_code(2);
    assert!(
        bad.stderr.contains("line 1") && bad.stderr.contains("viewer or operator"),
        "{}",
        bad.stderr
    );
    let garbled = env.provision(&["dashboard", "--addr", "somewhere"]);
    garbled.expect_code(2);
    assert!(garbled.stderr.contains("addr"), "{}", garbled.stderr);

    // With users, any address: every page then asks for a session.
    let users = users_file(&env);
    let everywhere = Dashboard::start(
        &env,
        &["--addr", "0.0.0.0:0"],
        &[("PROVISION_DASHBOARD_USERS", users.to_str().unwrap())],
    )
    .await;
    assert_eq!(everywhere.get("/", "").await.status, 303);
    drop(everywhere);

    // On loopback without users: everyone reads, nobody acts.
    let open = Dashboard::start(&env, &["--addr", "127.0.0.1:0"], &[]).await;
    let overview = open.get("/", "").await;
    assert_eq!(overview.status, 200);
    assert!(overview.body.contains("Read-only"));
    assert!(!overview.body.contains("data-action="));
    assert!(
        overview
            .header("server-timing")
            .is_some_and(|t| t.starts_with("app;dur="))
    );
    assert!(overview.header("content-security-policy").is_some());
    let post = open
        .post("/tenants/lo_00014/retry", "", &[("csrf", "anything")])
        .await;
    assert_eq!(post.status, 403);
    assert_eq!(state_of(&env, "lo_00014").await, "failed");
    assert_eq!(open.get("/login", "").await.status, 303, "nobody signs in");
    let css = open.get("/assets/dashboard.css", "").await;
    assert_eq!(
        (css.status, css.header("content-type")),
        (200, Some("text/css; charset=utf-8"))
    );
}

/// Where `schema` stands, as `provision status --json` shows it.
fn status_json(env: &TestEnv, schema: &str) -> serde_json::Value {
    let run = env.provision(&["status", "--schema-name", schema, "--json"]);
    run.expect_code(0);
    run.json()
}

/// Waits until the `provision_tenant_status` view puts `schema` in
/// `lifecycle`.
async fn wait_for_lifecycle(env: &TestEnv, schema: &str, lifecycle: &str) {
    let started = Instant::now();
    loop {
        let now: Option<String> =
            sqlx::query_scalar("SELECT lifecycle FROM provision_tenant_status WHERE schema_name = $1")
                .bind(schema)
                .fetch_optional(&env.pool)
                .await
                .expect("lifecycle");
        if now.as_deref() == Some(lifecycle) {
            return;
        }
        assert!(started.elapsed() < WAIT, "{schema} is {now:?}, not {lifecycle}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The lifecycle actions the page offers, in its order.
async fn lifecycle_offered(browser: &Browser) -> Vec<String> {
    let offered = browser
        .js("return Array.from(document.querySelectorAll('#lifecycle-actions [data-action]')).map(b => b.dataset.action);")
        .await;
    serde_json::from_value(offered).expect("a list of actions")
}

/// Waits for the page's banner of class `kind` (`ok`, `bad`) to say `text`.
async fn wait_for_banner(browser: &Browser, kind: &str, text: &str) {
    let literal = serde_json::to_string(text).expect("a JSON string");
    browser
        .wait_until(
            &format!("the {kind} banner {text:?}"),
            &format!(
                "return Array.from(document.querySelectorAll('.banner.{kind}')).some(b => b.textContent.includes({literal}))"
            ),
        )
        .await;
}

#[tokio::test]
async fn in_a_browser_an_operator_suspends_resumes_schedules_and_cancels_a_deletion() {
    let env = TestEnv::new("dashlifecycle").await;
    let users = users_file(&env);
    request_tenant(&env, "theo");
    let _worker = env.start_worker(&[]).await;
    env.wait_for_state("theo", "ready", WAIT).await;
    let dashboard = Dashboard::start_with_users(&env, &users).await;
    let browser = Browser::start(&env).await;
    browser_sign_in(&browser, &dashboard, "olga", "olga-password").await;
    browser.goto(&dashboard.url("/tenants/theo")).await;
    browser
        .wait_until(
            "theo's lifecycle actions",
            "return document.querySelector('#lifecycle-actions[data-lifecycle=\"active\"]') !== null",
        )
        .await;
    assert_eq!(lifecycle_offered(&browser).await, ["suspend", "schedule-delete"]);

    // Suspended, with a reason: not served, and status says why and by whom.
    let reason = "invoice 2026-11 unpaid · Νίκος";
    browser
        .fill("form[data-form=\"suspend\"] input[name=reason]", reason)
        .await;
    browser.click("button[data-action=\"suspend\"]").await;
    wait_for_banner(&browser, "ok", "Suspended theo").await;
    wait_for_lifecycle(&env, "theo", "suspended").await;
    let shown = status_json(&env, "theo");
    assert_eq!(shown["lifecycle"], "suspended", "{shown}");
    assert_eq!(shown["is_active"], false, "{shown}");
    assert_eq!(shown["lifecycle_detail"]["reason"], reason, "{shown}");
    assert_eq!(
        shown["lifecycle_detail"]["changed_by"], "dashboard (olga)",
        "{shown}"
    );
    assert_eq!(browser.text("[data-lifecycle-reason]").await, reason);
    assert_eq!(lifecycle_offered(&browser).await, ["resume", "schedule-delete"]);

    // Resumed: served again.
    browser.click("button[data-action=\"resume\"]").await;
    wait_for_banner(&browser, "ok", "theo is active again").await;
    wait_for_lifecycle(&env, "theo", "active").await;
    let shown = status_json(&env, "theo");
    assert_eq!(shown["lifecycle"], "active", "{shown}");
    assert_eq!(shown["is_active"], true, "{shown}");
    assert_eq!(lifecycle_offered(&browser).await, ["suspend", "schedule-delete"]);

    // A deletion whose confirmation is not the schema name: refused,
    // naming the field, and nothing changed.
    assert_eq!(
        browser
            .js("return document.querySelector('form[data-form=\"delete\"] input[name=grace]').value;")
            .await,
        serde_json::json!("7"),
        "the default grace period"
    );
    browser
        .fill("form[data-form=\"delete\"] input[name=confirm]", "thoe")
        .await;
    browser.click("button[data-action=\"schedule-delete\"]").await;
    wait_for_banner(&browser, "bad", "invalid confirm").await;
    let shown = status_json(&env, "theo");
    assert_eq!(shown["lifecycle"], "active", "{shown}");
    assert_eq!(shown["is_active"], true, "{shown}");
    assert!(shown["lifecycle_detail"]["delete_after"].is_null(), "{shown}");
    let scheduled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM provision_event WHERE schema_name = 'theo' AND step = 'schedule_deletion'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(scheduled, 0, "a refused deletion was recorded");
    assert_eq!(lifecycle_offered(&browser).await, ["suspend", "schedule-delete"]);

    // The right confirmation, the default grace: scheduled a week from
    // now, with a backup, suspended meanwhile.
    let asked = Utc::now();
    browser
        .fill("form[data-form=\"delete\"] input[name=confirm]", "theo")
        .await;
    browser.click("button[data-action=\"schedule-delete\"]").await;
    wait_for_banner(&browser, "ok", "Scheduled the deletion of theo").await;
    wait_for_lifecycle(&env, "theo", "deletion_scheduled").await;
    let shown = status_json(&env, "theo");
    assert_eq!(shown["lifecycle"], "deletion_scheduled", "{shown}");
    assert_eq!(shown["is_active"], false, "{shown}");
    assert_eq!(shown["lifecycle_detail"]["with_backup"], true, "{shown}");
    let due: DateTime<Utc> = shown["lifecycle_detail"]["delete_after"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no due date: {shown}"));
    let week = TimeDelta::days(7);
    assert!(
        due >= asked + week - TimeDelta::minutes(1) && due <= Utc::now() + week,
        "due {due}, asked at {asked}"
    );
    assert_eq!(lifecycle_offered(&browser).await, ["cancel-delete"]);
    let shown_due = browser
        .js("return document.querySelector('#lifecycle-actions [data-delete-due]').dataset.deleteDue;")
        .await;
    let shown_due: DateTime<Utc> = shown_due
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no due date on the page: {shown_due}"));
    assert_eq!(shown_due, due, "the due date the page shows");

    // Cancelled: active again.
    browser.click("button[data-action=\"cancel-delete\"]").await;
    wait_for_banner(&browser, "ok", "The deletion of theo is cancelled").await;
    wait_for_lifecycle(&env, "theo", "active").await;
    let shown = status_json(&env, "theo");
    assert_eq!(shown["lifecycle"], "active", "{shown}");
    assert_eq!(shown["is_active"], true, "{shown}");
    assert!(shown["lifecycle_detail"]["delete_after"].is_null(), "{shown}");
    assert_eq!(lifecycle_offered(&browser).await, ["suspend", "schedule-delete"]);

    // Each recorded in the history as done by her.
    let actors: Vec<(String, String)> = sqlx::query_as(
        "SELECT step, actor FROM provision_event
         WHERE schema_name = 'theo' AND step IN ('suspend', 'resume', 'schedule_deletion', 'cancel_delete')
         ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let olga = "dashboard (olga)".to_owned();
    assert_eq!(
        actors,
        [
            ("suspend".to_owned(), olga.clone()),
            ("resume".to_owned(), olga.clone()),
            ("schedule_deletion".to_owned(), olga.clone()),
            ("cancel_delete".to_owned(), olga),
        ]
    );
    browser.close().await;
}

async fn state_of(env: &TestEnv, schema: &str) -> String {
    sqlx::query_scalar("SELECT state FROM provision_tenant WHERE schema_name = $1")
        .bind(schema)
        .fetch_one(&env.pool)
        .await
        .expect("state")
}

// ---------------------------------------------------------------------------
// The browser

/// Headless Chromium under chromedriver, both ended when dropped: the
/// driver by its process, the browser (which a killed driver would leave
/// behind) by the processes that use this browser's own profile folder.
struct Browser {
    client: Option<Client>,
    driver: Child,
    profile: PathBuf,
    shots: PathBuf,
}

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

impl Browser {
    async fn start(env: &TestEnv) -> Self {
        assert!(
            Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
            "the browser tests need Debian's chromium and chromium-driver \
             (scripts/browser-deps.sh installs them)"
        );
        // Port 0: chromedriver picks a free one and says which.
        let mut driver = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let stdout = driver.stdout.take().expect("chromedriver's stdout");
        let (port, rest) = tokio::task::spawn_blocking(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                if let Some((_, port)) = line.split_once("started successfully on port ") {
                    return (port.trim().trim_end_matches('.').parse::<u16>().ok(), reader);
                }
                line.clear();
            }
            (None, reader)
        })
        .await
        .expect("read chromedriver's start line");
        drain(rest, Arc::new(Mutex::new(String::new())));
        let profile = env.dir().join(format!("chromium-{}", ulid::Ulid::generate()));
        std::fs::create_dir_all(&profile).expect("profile folder");
        let shots = env.dir().join("screenshots");
        std::fs::create_dir_all(&shots).expect("screenshot folder");
        let mut browser = Self {
            client: None,
            driver,
            profile,
            shots,
        };
        let port = port.expect("chromedriver did not say on which port it listens");
        let driver_addr = format!("127.0.0.1:{port}");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
            "--lang=en-US",
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .chain([format!("--user-data-dir={}", browser.profile.display())])
        .collect::<Vec<_>>();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), "chrome".into());
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": CHROMIUM, "args": args }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://{driver_addr}"))
            .await
            .expect("a WebDriver session of headless Chromium");
        browser.client = Some(client);
        browser
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("a session")
    }

    async fn goto(&self, url: &str) {
        self.client()
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    async fn js(&self, script: &str) -> serde_json::Value {
        self.client()
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("script {script:?}: {e}"))
    }

    /// Waits until `script` returns `true`. A script that fails (the page
    /// is between two documents, an element is not there yet) counts as
    /// not yet.
    async fn wait_until(&self, what: &str, script: &str) {
        let started = Instant::now();
        loop {
            if self.client().execute(script, Vec::new()).await.ok() == Some(serde_json::Value::Bool(true)) {
                return;
            }
            if started.elapsed() > WAIT {
                let source = self.client().source().await.unwrap_or_default();
                panic!("never saw {what} ({script}); the page:\n{source}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn fill(&self, css: &str, text: &str) {
        let field = self.client().find(Locator::Css(css)).await.expect(css);
        field.clear().await.expect("clear");
        field.send_keys(text).await.expect("type");
    }

    async fn click(&self, css: &str) {
        self.client()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    async fn text(&self, css: &str) -> String {
        self.client()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"))
            .text()
            .await
            .expect("text")
    }

    /// Writes a screenshot of the page as `<name>.png` to the test's folder,
    /// and to `DASHBOARD_SCREENSHOTS` when that is set.
    async fn screenshot(&self, name: &str) {
        // The whole page, up to a height that keeps the file small: the
        // window grows to it (by what the browser's frame takes) and back.
        let height = self
            .js("return Math.min(document.documentElement.scrollHeight, 1800);")
            .await
            .as_u64()
            .unwrap_or(900);
        let (width, before) = self.client().get_window_size().await.expect("window size");
        let inner = self
            .js("return window.innerHeight;")
            .await
            .as_u64()
            .unwrap_or(before);
        let frame = before.saturating_sub(inner);
        let _ = self
            .client()
            .set_window_size(
                u32::try_from(width).unwrap_or(1280),
                u32::try_from(height + frame).unwrap_or(1000),
            )
            .await;
        let png = self.client().screenshot().await.expect("screenshot");
        let _ = self
            .client()
            .set_window_size(
                u32::try_from(width).unwrap_or(1280),
                u32::try_from(before).unwrap_or(1000),
            )
            .await;
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(self.shots.join(format!("{name}.png")), &png).expect("write screenshot");
        if let Ok(dir) = std::env::var("DASHBOARD_SCREENSHOTS") {
            std::fs::create_dir_all(&dir).expect("screenshot folder");
            std::fs::write(Path::new(&dir).join(format!("{name}.png")), &png).expect("write screenshot");
        }
    }

    /// Ends the session, which closes the browser.
    async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }

    /// The processes whose command line names this browser's profile.
    fn browser_pids(&self) -> Vec<u32> {
        let needle = self.profile.to_string_lossy().into_owned();
        std::fs::read_dir("/proc")
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                    .filter(|pid| {
                        std::fs::read(format!("/proc/{pid}/cmdline"))
                            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        for pid in self.browser_pids() {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
        }
    }
}

/// Signs in through the browser's form.
async fn browser_sign_in(browser: &Browser, dashboard: &Dashboard, name: &str, password: &str) {
    browser.goto(&dashboard.url("/")).await;
    browser
        .wait_until(
            "the sign-in form",
            "return document.querySelector('form[action=\"/login\"]') !== null",
        )
        .await;
    browser.fill("input[name=name]", name).await;
    browser.fill("input[name=password]", password).await;
    browser.screenshot("login").await;
    browser.click("form[action=\"/login\"] button[type=submit]").await;
    browser
        .wait_until(
            "the overview",
            &format!("return document.querySelector('.who[data-user=\"{name}\"]') !== null"),
        )
        .await;
}

#[tokio::test]
async fn in_a_browser_an_operator_fixes_and_retries_a_failed_tenant_and_watches_it_become_ready() {
    let env = TestEnv::new("dashbrowser").await;
    let users = users_file(&env);
    // Tenants to fill the pages, and one whose domain another tenant takes
    // between its request and its job: it fails at register.
    insert_tenants(&env, "demo", 120).await;
    request_tenant(&env, "theo");
    sqlx::raw_sql(
        "INSERT INTO tenants_client (schema_name, name, paid_until, on_trial, is_active, trial_days, created_on)
         VALUES ('squatter', 'Κτίριο Demo', '2030-01-01', false, true, 0, '2026-01-01');
         INSERT INTO tenants_domain (domain, tenant_id, is_primary)
         SELECT 'theo.newconcierge.app', id, true FROM tenants_client WHERE schema_name = 'squatter';",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let worker = env.start_worker(&[]).await;
    env.wait_for_state("theo", "failed", WAIT).await;
    // No worker while the operator looks: the retried tenant then waits,
    // visibly, until one starts.
    drop(worker);
    let dashboard = Dashboard::start_with_users(&env, &users).await;
    let browser = Browser::start(&env).await;
    browser_sign_in(&browser, &dashboard, "olga", "olga-password").await;

    // The overview lists the failure with its error.
    browser
        .wait_until(
            "theo among the failures",
            "return document.querySelector('tr[data-failed=\"theo\"]') !== null",
        )
        .await;
    let failure = browser.text("tr[data-failed=\"theo\"]").await;
    assert!(
        failure.contains("register") && failure.contains("squatter"),
        "{failure}"
    );
    browser.screenshot("overview").await;

    browser.goto(&dashboard.url("/tenants")).await;
    browser.screenshot("tenants").await;
    browser.goto(&dashboard.url("/tenants?q=theo")).await;
    browser.click("tr[data-schema=\"theo\"] a").await;
    browser
        .wait_until(
            "theo's page",
            "return document.querySelector('#tenant-state') !== null",
        )
        .await;
    let error = browser.text("[data-last-error]").await;
    assert!(
        error.contains("theo.newconcierge.app") && error.contains("squatter"),
        "{error}"
    );
    browser.screenshot("tenant-failed").await;

    // Fix the domain, then retry.
    browser.fill("input[name=domain]", "theo2.newconcierge.app").await;
    browser.click("button[data-action=\"fix-domain\"]").await;
    browser
        .wait_until(
            "the domain fixed",
            "return ((document.querySelector('.banner.ok') || {}).textContent || '').includes('theo2.newconcierge.app')",
        )
        .await;
    browser.click("button[data-action=\"retry\"]").await;
    browser
        .wait_until(
            "the retry accepted",
            "return document.querySelector('#tenant-state').dataset.state === 'requested'",
        )
        .await;
    // From here the page must not load again: a mark on this document
    // would be gone with a reload.
    browser.js("window.stillTheSamePage = true; return null;").await;
    let _worker = env.start_worker(&[]).await;
    browser
        .wait_until(
            "theo ready, live",
            "return document.querySelector('#tenant-state').dataset.state === 'ready'",
        )
        .await;
    assert_eq!(
        browser.js("return window.stillTheSamePage === true;").await,
        serde_json::Value::Bool(true),
        "the page was reloaded"
    );
    browser
        .wait_until(
            "the primary domain shown",
            "return document.querySelector('li[data-domain=\"theo2.newconcierge.app\"][data-primary=\"true\"]') !== null",
        )
        .await;
    browser.screenshot("tenant-ready").await;
    let actors: Vec<(String, String)> = sqlx::query_as(
        "SELECT step, actor FROM provision_event WHERE schema_name = 'theo' AND step IN ('retry', 'fix_domain') ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        actors,
        [
            ("fix_domain".to_owned(), "dashboard (olga)".to_owned()),
            ("retry".to_owned(), "dashboard (olga)".to_owned())
        ]
    );
    browser.close().await;
}

#[tokio::test]
async fn in_a_browser_a_viewer_finds_no_action_and_her_forged_post_is_refused() {
    let env = TestEnv::new("dashviewer").await;
    let users = users_file(&env);
    insert_tenants(&env, "vw", 40).await;
    let dashboard = Dashboard::start_with_users(&env, &users).await;
    let browser = Browser::start(&env).await;
    browser_sign_in(&browser, &dashboard, "vera", "vera-password").await;
    let no_action = "return document.querySelectorAll('[data-action], form[method=post]:not([action=\"/logout\"])').length === 0";
    for path in [
        "/",
        "/tenants?state=failed",
        // A ready, active tenant (an operator's page offers it the
        // lifecycle actions), then a failed one, whose error is read below.
        "/tenants/vw_00001",
        "/tenants/vw_00014",
    ] {
        browser.goto(&dashboard.url(path)).await;
        browser
            .wait_until("the page", "return document.readyState === 'complete'")
            .await;
        assert_eq!(
            browser.js(no_action).await,
            serde_json::Value::Bool(true),
            "{path} shows a viewer an action"
        );
    }
    assert!(browser.text("[data-last-error]").await.contains("squatter"));
    // A POST made by hand in her signed-in browser, with her own session's
    // CSRF token: refused.
    let status = browser
        .js(
            "const csrf = document.querySelector('form[action=\"/logout\"] input[name=csrf]').value; \
             return fetch('/tenants/vw_00014/retry', { method: 'POST', \
                 headers: { 'Content-Type': 'application/x-www-form-urlencoded' }, \
                 body: 'csrf=' + encodeURIComponent(csrf) }).then(r => r.status);",
        )
        .await;
    assert_eq!(status, serde_json::json!(403));
    assert_eq!(state_of(&env, "vw_00014").await, "failed");
    browser.close().await;
}
