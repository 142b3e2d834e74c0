//! The test environment: a database and a Redis namespace of the test's
//! own, the real binaries, and worker processes that are really started and
//! really killed. Everything is removed when the environment is dropped, so
//! tests run in parallel and reruns do not collide.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgPool};

/// What a worker's start does to a database: the public schema (the
/// platform's tenant tables on an empty one, this project's tables) and the
/// built-in tenant migration set.
pub async fn prepare(pool: &PgPool) {
    provision_shared::public_schema::prepare_public_schema(pool)
        .await
        .expect("public schema");
    provision_shared::migration_set::import::store_built_in_if_none(pool)
        .await
        .expect("built-in migration set");
}

/// The export document of the built-in tenant migration set (the platform
/// model's), to which a test adds migrations.
pub fn built_in_export() -> serde_json::Value {
    serde_json::from_str(include_str!("../../migrations/tenant/platform-model.json"))
        .expect("built-in export")
}

/// The server the tests use, without a database name.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Redis for the tests.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A built binary of this workspace, next to the test executable's folder.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run the tests with scripts/test.sh (it builds the binaries first)",
        path.display()
    );
    path
}

/// The output of one `provision` run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// From a finished process's output.
    pub fn from_output(output: Output) -> Self {
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// stdout as the one JSON document it must be.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON document ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// Panics with the output unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "expected exit {code}, got {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

/// A running `provision-worker`.
pub struct Worker {
    child: Child,
    pub log: PathBuf,
}

impl Worker {
    /// The worker's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.log_text().contains(needle) {
            assert!(
                start.elapsed() < timeout,
                "worker log never showed {needle:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the log contains `needle` at least `count` times.
    pub async fn wait_for_log_count(&self, needle: &str, count: usize, timeout: Duration) {
        let start = Instant::now();
        while self.log_text().matches(needle).count() < count {
            assert!(
                start.elapsed() < timeout,
                "worker log never showed {needle:?} {count} times:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The worker's name (the actor of the transitions it records), from
    /// its start-up line.
    pub fn name(&self) -> String {
        self.logged_field("worker starting", "worker")
    }

    /// Whether the process is still running.
    pub fn child_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The address its /metrics and /healthz are served on.
    pub fn metrics_addr(&self) -> String {
        self.logged_field("serving /metrics", "addr")
    }

    /// The value of `field` in the first log line containing `marker`.
    fn logged_field(&self, marker: &str, field: &str) -> String {
        let log = self.log_text();
        let line = log
            .lines()
            .find(|l| l.contains(marker))
            .unwrap_or_else(|| panic!("the worker never logged {marker:?}:\n{log}"));
        line.split_once(&format!(" {field}="))
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {field}= in {line:?}"))
            .trim_matches('"')
            .to_owned()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. "TERM", "KILL").
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit; its exit code (None: by a signal).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                start.elapsed() < timeout,
                "worker did not exit in {timeout:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One test's own database and Redis namespace.
pub struct TestEnv {
    pub database_url: String,
    pub namespace: String,
    pub pool: PgPool,
    /// Extra environment for every binary this test runs.
    pub env: Vec<(String, String)>,
    /// Redis this test's binaries use.
    pub redis_url: String,
    db_name: String,
    admin_url: String,
    dir: PathBuf,
    roles: Vec<String>,
}

impl TestEnv {
    /// A new database (public migrations applied) and namespace named after
    /// `label` and a unique suffix.
    pub async fn new(label: &str) -> Self {
        let env = Self::new_without_migrations(label).await;
        prepare(&env.pool).await;
        env
    }

    /// A new, empty database (nothing applied) and namespace.
    pub async fn new_without_migrations(label: &str) -> Self {
        Self::new_on(label, &admin_url(), &redis_url()).await
    }

    /// A new database with public migrations on the server of `admin_url`,
    /// and a namespace on the Redis of `redis`.
    pub async fn new_on_servers(label: &str, admin_url: &str, redis: &str) -> Self {
        let env = Self::new_on(label, admin_url, redis).await;
        prepare(&env.pool).await;
        env
    }

    pub async fn new_on(label: &str, admin_url: &str, redis: &str) -> Self {
        let suffix = ulid::Ulid::generate().to_string().to_lowercase();
        let id = format!("pt_{label}_{}", &suffix[suffix.len() - 10..]);
        let admin_url = admin_url.to_owned();
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("connect to PostgreSQL");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{id}\"")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        admin.close().await.ok();
        let base = admin_url.rsplit_once('/').expect("url with a database").0;
        let database_url = format!("{base}/{id}");
        let pool = provision_shared::db::connect(&database_url, 10)
            .await
            .expect("connect to test database");
        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self {
            namespace: id.clone(),
            db_name: id,
            database_url,
            pool,
            env: Vec::new(),
            redis_url: redis.to_owned(),
            admin_url,
            dir,
            roles: Vec::new(),
        }
    }

    /// A login role for this test with the least a worker needs: connect,
    /// read and write the public tables, and (if `may_create_schemas`)
    /// create schemas in this database. Returns a database URL for it.
    pub async fn limited_role(&mut self, may_create_schemas: bool) -> (String, String) {
        let role = format!("{}_r{}", self.db_name, self.roles.len());
        self.roles.push(role.clone());
        let db = &self.db_name;
        let mut grants = format!(
            "CREATE ROLE \"{role}\" LOGIN;
             GRANT CONNECT ON DATABASE \"{db}\" TO \"{role}\";
             GRANT USAGE ON SCHEMA public TO \"{role}\";
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO \"{role}\";
             GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO \"{role}\";"
        );
        if may_create_schemas {
            grants.push_str(&format!("GRANT CREATE ON DATABASE \"{db}\" TO \"{role}\";"));
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(grants))
            .execute(&self.pool)
            .await
            .expect("create role");
        let url = self.database_url.replacen("postgres@", &format!("{role}@"), 1);
        assert_ne!(
            url, self.database_url,
            "the test database URL must name the postgres user"
        );
        (role, url)
    }

    /// A folder of this test's own.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn env_vars(&self) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), self.database_url.clone()),
            ("REDIS_URL".into(), self.redis_url.clone()),
            ("PROVISION_NAMESPACE".into(), self.namespace.clone()),
            ("PROVISION_BASE_DOMAIN".into(), "newconcierge.app".into()),
            ("RUST_LOG".into(), "info".into()),
            // No nightly run (nor catch-up of a missed one) unless a test asks.
            ("PROVISION_MIGRATE_ALL_CRON".into(), "off".into()),
            // Any free port: tests run many workers at once.
            ("PROVISION_METRICS_ADDR".into(), "127.0.0.1:0".into()),
        ];
        vars.extend(self.env.iter().cloned());
        vars
    }

    /// Sets `key` for every binary run from now on.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
    }

    /// What a provisioned tenant must have exactly one of: `tenants_client`
    /// rows, domains, schemas, admin users.
    pub async fn tenant_counts(&self, schema: &str) -> (i64, i64, i64, i64) {
        let (clients, domains, schemas): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM tenants_client WHERE schema_name = $1),
                    (SELECT count(*) FROM tenants_domain d JOIN tenants_client c ON c.id = d.tenant_id
                      WHERE c.schema_name = $1),
                    (SELECT count(*) FROM pg_namespace WHERE nspname = $1)",
        )
        .bind(schema)
        .fetch_one(&self.pool)
        .await
        .expect("counts");
        let admins: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM \"{schema}\".users_customuser WHERE role = 'admin'"
        )))
        .fetch_one(&self.pool)
        .await
        .unwrap_or(0);
        (clients, domains, schemas, admins)
    }

    /// Imports, through `provision import-migrations`, the built-in set
    /// with `extra` migrations (app, name, SQL) after it: the next set of
    /// this test's database, which a running worker loads at once. Each
    /// extra migration changes no model, so no post-migrate rows follow it.
    pub fn add_tenant_migrations(&self, extra: &[(&str, &str, &str)]) {
        let mut document = built_in_export();
        for (app, name, sql) in extra {
            document["plan"]
                .as_array_mut()
                .expect("plan")
                .push(serde_json::json!({
                    "app": app, "name": name, "sql": sql, "python": [], "changes_models": false,
                }));
            document["ledger"]
                .as_array_mut()
                .expect("ledger")
                .push(serde_json::json!([app, name]));
        }
        self.import_document(&document).expect_code(0);
    }

    /// Runs `provision import-migrations --from-file` on `document`.
    pub fn import_document(&self, document: &serde_json::Value) -> Run {
        let file = self.dir.join(format!("export-{}.json", ulid::Ulid::generate()));
        std::fs::write(&file, document.to_string()).expect("write export");
        self.provision(&[
            "import-migrations",
            "--from-file",
            file.to_str().expect("UTF-8 path"),
            "--json",
        ])
    }

    /// The migrations recorded in `schema`'s own `django_migrations`,
    /// `app.name`, in the order they were recorded.
    pub async fn ledger_of(&self, schema: &str) -> Vec<String> {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT app || '.' || name FROM \"{schema}\".django_migrations ORDER BY id"
        )))
        .fetch_all(&self.pool)
        .await
        .unwrap_or_default()
    }

    /// Starts `provision` with `args`, its standard streams piped.
    pub fn spawn_provision(&self, args: &[&str]) -> Child {
        self.spawn_provision_with(args, &[])
    }

    /// [`TestEnv::spawn_provision`] with `extra` environment variables.
    pub fn spawn_provision_with(&self, args: &[&str], extra: &[(&str, &str)]) -> Child {
        Command::new(binary("provision"))
            .args(args)
            .envs(self.env_vars())
            .envs(extra.iter().map(|(k, v)| (*k, *v)))
            .env_remove("LOG_FORMAT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run provision")
    }

    /// Waits for a `provision` started by [`TestEnv::spawn_provision`].
    pub fn finish(child: Child) -> Run {
        Run::from_output(child.wait_with_output().expect("provision output"))
    }

    /// Runs `provision` with `args`, `stdin` fed to it.
    pub fn provision_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut child = self.spawn_provision(args);
        {
            let mut input = child.stdin.take().expect("stdin");
            if let Some(text) = stdin {
                input.write_all(text.as_bytes()).expect("write stdin");
            }
        }
        Run::from_output(child.wait_with_output().expect("provision output"))
    }

    /// Runs `provision` with `args`.
    pub fn provision(&self, args: &[&str]) -> Run {
        self.provision_with_stdin(args, None)
    }

    /// Starts a worker with `extra` environment variables; waits until it
    /// is taking jobs.
    pub async fn start_worker(&self, extra: &[(&str, &str)]) -> Worker {
        let log = self.dir.join(format!("worker-{}.log", ulid::Ulid::generate()));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(binary("provision-worker"))
            .envs(self.env_vars())
            .envs(extra.iter().map(|(k, v)| (*k, *v)))
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("start provision-worker");
        let worker = Worker { child, log };
        worker
            .wait_for_log("worker starting", Duration::from_secs(30))
            .await;
        worker
    }

    /// Every Redis key of this test's namespace with its content, as text.
    pub async fn redis_dump(&self) -> BTreeMap<String, String> {
        let client = redis::Client::open(redis_url()).expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to Redis");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.namespace))
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        let mut dump = BTreeMap::new();
        for key in keys {
            let kind: String = redis::cmd("TYPE")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .expect("TYPE");
            let content: Vec<String> = match kind.as_str() {
                "string" => vec![
                    redis::cmd("GET")
                        .arg(&key)
                        .query_async(&mut conn)
                        .await
                        .unwrap_or_default(),
                ],
                "hash" => redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default(),
                "list" => redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default(),
                "set" => redis::cmd("SMEMBERS")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default(),
                "zset" => redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default(),
                other => vec![format!("<{other}>")],
            };
            dump.insert(key, content.join("\n"));
        }
        dump
    }

    /// A snapshot of what this project writes to PostgreSQL: every row of
    /// the public tables and the list of schemas, as text.
    pub async fn pg_snapshot(&self) -> Vec<String> {
        let mut rows: Vec<String> = Vec::new();
        for table in [
            "tenants_client",
            "tenants_domain",
            "provision_tenant",
            "provision_event",
            "provision_rejected_job",
            "provision_lifecycle",
            "provision_backup",
        ] {
            let exists: bool = sqlx::query_scalar("SELECT to_regclass('public.' || $1) IS NOT NULL")
                .bind(table)
                .fetch_one(&self.pool)
                .await
                .expect("snapshot");
            if !exists {
                continue;
            }
            let text: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT '{table}: ' || t::text FROM public.{table} t ORDER BY 1"
            )))
            .fetch_all(&self.pool)
            .await
            .expect("snapshot");
            rows.extend(text);
        }
        let schemas: Vec<String> =
            sqlx::query_scalar("SELECT 'schema: ' || nspname FROM pg_namespace ORDER BY 1")
                .fetch_all(&self.pool)
                .await
                .expect("schemas");
        rows.extend(schemas);
        rows
    }

    /// Waits until the tenant's state is `state` (or panics after `timeout`).
    pub async fn wait_for_state(&self, schema: &str, state: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            let now: Option<String> =
                sqlx::query_scalar("SELECT state FROM provision_tenant WHERE schema_name = $1")
                    .bind(schema)
                    .fetch_optional(&self.pool)
                    .await
                    .expect("state");
            if now.as_deref() == Some(state) {
                return;
            }
            if start.elapsed() >= timeout {
                panic!(
                    "tenant {schema} is {now:?}, not {state}, after {timeout:?}\n{}",
                    self.diagnosis().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until no job of `kind` is waiting, scheduled or in flight in
    /// this test's namespace: every job pushed so far has ended.
    pub async fn wait_queue_drained(&self, kind: provision_shared::jobs::JobKind, timeout: Duration) {
        let queue = provision_queue::RedisQueue::connect(&self.redis_url, &self.namespace)
            .await
            .expect("connect to Redis");
        let start = Instant::now();
        loop {
            let depth = queue.depth_by_status(kind).await.expect("queue depth");
            let open: u64 = depth
                .iter()
                .filter(|(status, _)| *status != "dead")
                .map(|(_, n)| n)
                .sum();
            if open == 0 {
                return;
            }
            if start.elapsed() >= timeout {
                panic!(
                    "the {} queue still holds {depth:?} after {timeout:?}\n{}",
                    kind.name(),
                    self.diagnosis().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What a test that timed out should show: every tenant's state, the
    /// namespace's Redis keys, and the end of each worker's log.
    pub async fn diagnosis(&self) -> String {
        use std::fmt::Write as _;
        let states: Vec<(String, String, i32)> =
            sqlx::query_as("SELECT schema_name, state, attempt FROM provision_tenant ORDER BY schema_name")
                .fetch_all(&self.pool)
                .await
                .unwrap_or_default();
        let mut text = format!(
            "tenants (schema, state, attempt): {states:?}\nredis: {:?}\n",
            self.redis_dump().await
        );
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        logs.retain(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("worker-"))
        });
        logs.sort();
        for log in logs {
            let content = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = content.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            let _ = write!(
                text,
                "--- {} (last {} lines)\n{}\n",
                log.display(),
                tail.len(),
                tail.join("\n")
            );
        }
        text
    }

    /// Adds a tenant migration that waits at this test's [`Gate`] before
    /// it adds a column: a step is then in flight for as long as the test
    /// keeps the gate closed, however slow the machine.
    pub fn use_gated_migration(&mut self) {
        let sql = format!(
            "SELECT pg_advisory_xact_lock_shared({GATE_KEYS});\n\
             ALTER TABLE \"buildings_building\" ADD COLUMN \"notes\" text NULL;"
        );
        self.add_tenant_migrations(&[("buildings", "0002_gated", &sql)]);
    }

    /// Closes this test's gate: gated migrations wait until it opens.
    pub async fn close_gate(&self) -> Gate {
        let mut conn = sqlx::PgConnection::connect(&self.database_url)
            .await
            .expect("connect to test database");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "SELECT pg_advisory_lock({GATE_KEYS})"
        )))
        .execute(&mut conn)
        .await
        .expect("close the gate");
        Gate(Some(conn))
    }

    /// Waits until `sessions` sessions wait at the closed gate (steps in
    /// flight, held there), or panics after `timeout`.
    pub async fn wait_at_gate(&self, sessions: i64, timeout: Duration) {
        self.wait_for_gate_count(
            |waiting| waiting >= sessions,
            &format!("{sessions} or more"),
            timeout,
        )
        .await;
    }

    /// Waits until no session waits at the gate any more (the server has
    /// ended those of a worker that went away), or panics after `timeout`.
    pub async fn wait_gate_clear(&self, timeout: Duration) {
        self.wait_for_gate_count(|waiting| waiting == 0, "none", timeout)
            .await;
    }

    async fn wait_for_gate_count(&self, done: impl Fn(i64) -> bool, wanted: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            // The two-key advisory lock form: classid and objid are the
            // keys, objsubid is 2.
            let waiting: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                 WHERE d.datname = $1 AND l.locktype = 'advisory' AND NOT l.granted
                   AND (l.classid, l.objid, l.objsubid) = ({GATE_KEYS}, 2)"
            )))
            .bind(&self.db_name)
            .fetch_one(&self.pool)
            .await
            .expect("pg_locks");
            if done(waiting) {
                return;
            }
            if start.elapsed() >= timeout {
                panic!(
                    "{waiting} session(s) at the gate after {timeout:?}, wanted {wanted}\n{}",
                    self.diagnosis().await
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether a session of this test's database waits on `wait_event` now.
    pub async fn waits_on(&self, wait_event: &str) -> bool {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
             WHERE datname = $1 AND state = 'active' AND wait_event = $2)",
        )
        .bind(&self.db_name)
        .bind(wait_event)
        .fetch_one(&self.pool)
        .await
        .expect("pg_stat_activity")
    }

    /// Removes the database and the Redis keys of this test.
    fn cleanup(&self) {
        let (db_name, namespace, dir, roles) = (
            self.db_name.clone(),
            self.namespace.clone(),
            self.dir.clone(),
            self.roles.clone(),
        );
        let (admin_url, redis) = (self.admin_url.clone(), self.redis_url.clone());
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)"
                    )))
                    .execute(&mut admin)
                    .await;
                    for role in roles {
                        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS \"{role}\"")))
                            .execute(&mut admin)
                            .await;
                    }
                }
                if let Ok(client) = redis::Client::open(redis)
                    && let Ok(mut conn) = client.get_multiplexed_async_connection().await
                {
                    let keys: Vec<String> = redis::cmd("KEYS")
                        .arg(format!("{namespace}:*"))
                        .query_async(&mut conn)
                        .await
                        .unwrap_or_default();
                    for chunk in keys.chunks(500) {
                        let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await;
                    }
                }
            });
            let _ = std::fs::remove_dir_all(dir);
        });
        let _ = handle.join();
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// `provision create-tenant` arguments for the guide's `theo`, under `schema`.
pub fn guide_tenant_args(schema: &str) -> Vec<String> {
    vec![
        "create-tenant".into(),
        "--schema-name".into(),
        schema.into(),
        "--tenant-name".into(),
        "Theo Stam".into(),
        "--domain".into(),
        format!("{}.newconcierge.app", schema.replace('_', "-")),
        "--admin-email".into(),
        format!("{schema}@example.com"),
        "--trial-days".into(),
        "30".into(),
    ]
}

/// `args` as `&str`s.
pub fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The two keys of the gate's advisory lock (the two-key form, which no
/// lock of the worker uses).
const GATE_KEYS: &str = "7411, 2";

/// A lock the test holds on a connection of its own; gated migrations
/// (`TestEnv::use_gated_migration`) wait for it in their step's
/// transaction. Dropping it opens it too.
pub struct Gate(Option<sqlx::PgConnection>);

impl Gate {
    /// Lets the waiting migrations (and every later one) through.
    pub async fn open(mut self) {
        if let Some(conn) = self.0.take() {
            // Closing the session releases its lock; a session that died
            // with its server held nothing any more.
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.close()).await;
        }
    }
}

/// Records `schema` through `provision create-tenant` (no demo data).
pub fn request_tenant(env: &TestEnv, schema: &str) {
    let mut args = guide_tenant_args(schema);
    args.extend([
        "--admin-password".into(),
        "a-long-password".into(),
        "--skip-demo-data".into(),
    ]);
    env.provision(&strs(&args)).expect_code(0);
}
