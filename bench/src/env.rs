//! The bench's own world: a fresh database and Redis namespace, removed at
//! the end whatever happened, and real `provision-worker` processes started
//! from the binaries built next to this one. Nothing is shared with a
//! deployment or another run, so the bench can run beside both.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use provision_queue::RedisQueue;
use provision_shared::db;
use provision_shared::migration_set::import::store_built_in_if_none;
use provision_shared::public_schema::prepare_public_schema;
use provision_shared::sql::{Ident, Script};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::process::{Child, Command};

/// Where the bench's database is made, and its Redis.
#[derive(Debug, Clone)]
pub(crate) struct Servers {
    /// A URL of the PostgreSQL server whose user may create databases.
    pub(crate) admin_url: String,
    /// Redis.
    pub(crate) redis_url: String,
    /// Where `provision-worker` and `provision` are (see [`binaries_dir`]).
    pub(crate) bin_dir: PathBuf,
}

/// One fresh database (public migrations applied) and Redis namespace,
/// both named `provision_bench_<id>`.
#[derive(Debug)]
pub(crate) struct BenchEnv {
    /// The database and namespace name.
    pub(crate) name: String,
    /// The database's URL.
    pub(crate) database_url: String,
    /// Redis.
    pub(crate) redis_url: String,
    /// A pool on the database, for the bench's own queries.
    pub(crate) pool: PgPool,
    /// A scratch folder (migrations, worker logs).
    pub(crate) dir: PathBuf,
    admin_url: String,
    bin_dir: PathBuf,
    /// `CHECKPOINT` was refused once (see [`BenchEnv::settle`]).
    settle_refused: std::sync::atomic::AtomicBool,
}

impl BenchEnv {
    /// Creates the database and applies the public migrations (what
    /// `provision init` or a worker's start-up does); the namespace needs no
    /// creating.
    pub(crate) async fn create(servers: &Servers) -> anyhow::Result<Self> {
        let id = ulid::Ulid::generate().to_string().to_lowercase();
        let name = format!("provision_bench_{id}");
        let mut admin = PgConnection::connect(&servers.admin_url)
            .await
            .with_context(|| format!("PostgreSQL at {}", db::redact_url(&servers.admin_url)))?;
        let mut create = Script::new();
        create.sql("CREATE DATABASE ").ident(&Ident::database(&name)?);
        create
            .finish()?
            .run(&mut admin)
            .await
            .map_err(|f| f.error)
            .context("creating the bench database")?;
        admin.close().await.ok();
        let database_url = database_url_for(&servers.admin_url, &name);
        let opened = async {
            let pool = db::connect(&database_url, 16).await?;
            prepare_public_schema(&pool).await?;
            store_built_in_if_none(&pool).await?;
            Ok::<_, provision_shared::ProvisionError>(pool)
        };
        let pool = match opened.await {
            Ok(pool) => pool,
            Err(e) => {
                drop_database(&servers.admin_url, &name).await;
                return Err(e).context("preparing the bench database");
            }
        };
        Ok(Self {
            dir: std::env::temp_dir().join(&name),
            name,
            database_url,
            redis_url: servers.redis_url.clone(),
            pool,
            admin_url: servers.admin_url.clone(),
            bin_dir: servers.bin_dir.clone(),
            settle_refused: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// A `provision-worker` or `provision` binary of the same build profile
    /// as this bench.
    pub(crate) fn binary(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// A client of the bench's queues, as `provision` pushes with it.
    pub(crate) async fn queue(&self) -> anyhow::Result<RedisQueue> {
        Ok(RedisQueue::connect(&self.redis_url, &self.name).await?)
    }

    /// The environment every binary the bench runs gets: the bench's
    /// database and namespace, and nothing inherited that would change what
    /// is measured.
    fn configure(&self, cmd: &mut Command) {
        for inherited in [
            "LOG_FORMAT",
            "PROVISION_BASE_DOMAIN",
            "PROVISION_MAX_ATTEMPTS",
            "PROVISION_TENANT_MIGRATIONS_DIR",
            "PROVISION_CONCURRENCY",
        ] {
            cmd.env_remove(inherited);
        }
        cmd.env("DATABASE_URL", &self.database_url)
            .env("REDIS_URL", &self.redis_url)
            .env("PROVISION_NAMESPACE", &self.name)
            // Any free port: never collide with a worker already serving 9898.
            .env("PROVISION_METRICS_ADDR", "127.0.0.1:0");
    }

    /// Every key of the namespace with its type and size: what the queues
    /// hold, for the message when a run gets stuck.
    pub(crate) async fn redis_summary(&self) -> String {
        match redis_summary(&self.redis_url, &self.name).await {
            Ok(lines) => lines.join("\n"),
            Err(e) => format!("(Redis could not be read: {e})"),
        }
    }

    /// Transactions committed in the bench database so far. A worker's
    /// connections flush their statistics when they close, so the
    /// difference across a worker's life, once it has stopped, is about what
    /// it committed (plus the bench's own queries, which the caller counts).
    pub(crate) async fn transactions_committed(&self) -> Option<i64> {
        // A stopped worker's backends exit (and flush) a moment after its
        // sockets close: wait until only the bench's own are left.
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            let backends: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND backend_type = 'client backend'",
            )
            .fetch_one(&self.pool)
            .await
            .ok()?;
            if backends <= i64::from(self.pool.size()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
            .fetch_one(&self.pool)
            .await
            .ok()
    }

    /// Writes the server's dirty buffers out (`CHECKPOINT`) before a timed
    /// phase, so that it does not pay for the writes of the phase before,
    /// and a checkpoint due by WAL volume is less likely to fall inside it.
    /// Both the system and its lower bound start this way. Without the
    /// privilege (PostgreSQL 15: superuser or `pg_checkpoint`) it says so
    /// once and goes on.
    pub(crate) async fn settle(&self) {
        if let Err(e) = sqlx::query("CHECKPOINT").execute(&self.pool).await
            && !self
                .settle_refused
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            eprintln!("note: CHECKPOINT before timed phases refused ({e}); figures may be noisier");
        }
    }

    /// A command running the `provision` client against the bench's
    /// database and namespace.
    pub(crate) fn client_command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        self.configure(&mut cmd);
        cmd.env("RUST_LOG", "warn");
        cmd
    }

    /// Starts a worker with `concurrency` (it loads the tenant migration set
    /// in force); returns once it is taking jobs.
    pub(crate) async fn start_worker(&self, concurrency: usize) -> anyhow::Result<Worker> {
        self.start_worker_with(concurrency, &[]).await
    }

    /// [`BenchEnv::start_worker`] with more environment variables.
    pub(crate) async fn start_worker_with(
        &self,
        concurrency: usize,
        vars: &[(&str, &str)],
    ) -> anyhow::Result<Worker> {
        std::fs::create_dir_all(&self.dir)?;
        let log = self.dir.join(format!("worker-{}.log", ulid::Ulid::generate()));
        let file = std::fs::File::create(&log)?;
        let mut cmd = Command::new(self.binary("provision-worker"));
        self.configure(&mut cmd);
        cmd.env("PROVISION_CONCURRENCY", concurrency.to_string())
            .env("PROVISION_MIGRATE_ALL_CRON", "off")
            // Warnings only, as in production at scale, except the one line
            // that says the worker is taking jobs; more when diagnosing.
            .env(
                "RUST_LOG",
                std::env::var("PROVISION_BENCH_WORKER_LOG")
                    .unwrap_or_else(|_| "warn,provision_worker::run=info".into()),
            )
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.binary("provision-worker").display()))?;
        let pid = child.id().context("the worker exited at once")?;
        let mut worker = Worker { child, pid, log };
        let started = Instant::now();
        while !worker.log_text().contains("worker starting") {
            worker.ensure_alive()?;
            if started.elapsed() > Duration::from_secs(60) {
                bail!("the worker did not start in 60 s:\n{}", worker.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(worker)
    }

    /// Drops the database, deletes the namespace's keys and the scratch
    /// folder.
    /// Reports what it could not remove rather than failing: the figures
    /// are already printed.
    pub(crate) async fn remove(self) {
        self.pool.close().await;
        drop_database(&self.admin_url, &self.name).await;
        if let Err(e) = delete_namespace(&self.redis_url, &self.name).await {
            eprintln!("warning: could not delete Redis keys {}:*: {e}", self.name);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Drops database `name` (WITH (FORCE): a killed worker may still hold a
/// connection); warns when it cannot.
async fn drop_database(admin_url: &str, name: &str) {
    let dropped = async {
        let mut admin = PgConnection::connect(admin_url).await?;
        let mut drop = Script::new();
        drop.sql("DROP DATABASE IF EXISTS ")
            .ident(&Ident::database(name)?)
            .sql(" WITH (FORCE)");
        drop.finish()?.run(&mut admin).await.map_err(|f| f.error)?;
        admin.close().await?;
        Ok::<_, anyhow::Error>(())
    };
    if let Err(e) = dropped.await {
        eprintln!("warning: could not drop database {name}: {e}");
    }
}

/// The URL of database `name` on the server of `admin_url`: the admin URL
/// with its database (the path) replaced, any query kept.
fn database_url_for(admin_url: &str, name: &str) -> String {
    let (url, query) = match admin_url.split_once('?') {
        Some((url, query)) => (url, Some(query)),
        None => (admin_url, None),
    };
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let base = match url[authority_start..].find('/') {
        Some(slash) => &url[..authority_start + slash],
        None => url,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

/// Lists the keys under `namespace:` as `key type size`.
async fn redis_summary(redis_url: &str, namespace: &str) -> redis::RedisResult<Vec<String>> {
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{namespace}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    let mut lines = Vec::new();
    for key in keys.iter().take(50) {
        let kind: String = redis::cmd("TYPE").arg(key).query_async(&mut conn).await?;
        let size_command = match kind.as_str() {
            "list" => Some("LLEN"),
            "zset" => Some("ZCARD"),
            "set" => Some("SCARD"),
            "hash" => Some("HLEN"),
            _ => None,
        };
        let size: Option<i64> = match size_command {
            Some(command) => Some(redis::cmd(command).arg(key).query_async(&mut conn).await?),
            None => None,
        };
        lines.push(format!(
            "{key} {kind} {}",
            size.map_or_else(String::new, |n| n.to_string())
        ));
    }
    Ok(lines)
}

/// Deletes every key under `namespace:`, a batch at a time (SCAN and DEL of
/// our own keys only: the Redis may be shared).
async fn delete_namespace(redis_url: &str, namespace: &str) -> redis::RedisResult<()> {
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let pattern = format!("{namespace}:*");
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            redis::cmd("DEL").arg(&keys).query_async::<()>(&mut conn).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// The folder of this executable (`target/release` or `target/debug`),
/// where the workspace's other binaries of the same profile are. When run
/// by `cargo run`, they are built first, so the bench never measures a
/// stale worker.
pub(crate) fn binaries_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the bench executable")?;
    let dir = exe
        .parent()
        .context("the bench executable has no folder")?
        .to_path_buf();
    if let (Some(cargo), Some(manifest)) = (std::env::var_os("CARGO"), std::env::var_os("CARGO_MANIFEST_DIR"))
    {
        let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
        let mut cmd = std::process::Command::new(cargo);
        cmd.current_dir(&manifest)
            .args(["build", "--bins", "-p", "provision-worker", "-p", "provision-cli"]);
        match profile {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        eprintln!("building provision-worker and provision ({profile})");
        let status = cmd.status().context("running cargo build")?;
        ensure!(status.success(), "building provision-worker and provision failed");
    }
    for name in ["provision-worker", "provision"] {
        ensure!(
            dir.join(name).exists(),
            "{} is not built: run `cargo build --bins{}` first",
            dir.join(name).display(),
            if dir.ends_with("release") {
                " --release"
            } else {
                ""
            }
        );
    }
    Ok(dir)
}

/// A running `provision-worker`; killed if dropped without [`Worker::stop`].
#[derive(Debug)]
pub(crate) struct Worker {
    child: Child,
    pid: u32,
    log: PathBuf,
}

impl Worker {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the worker's log, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Warning and error lines the worker logged (retries, failures).
    pub(crate) fn complaints(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .map(str::to_owned)
            .collect()
    }

    /// Fails when the worker has exited: waiting on its work would only
    /// time out.
    pub(crate) fn ensure_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the worker exited ({status}):\n{}", self.log_tail());
        }
        Ok(())
    }

    /// The worker's peak resident memory so far (VmHWM), in KiB.
    pub(crate) fn peak_rss_kib(&self) -> Option<u64> {
        peak_rss_kib(self.pid)
    }

    /// The CPU time the worker has used so far (user and system).
    pub(crate) fn cpu_time(&self) -> Option<Duration> {
        cpu_time(self.pid)
    }

    /// Stops the worker as its supervisor would (SIGTERM) and waits for it;
    /// anything but a clean exit is an error.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .context("running kill")?;
        ensure!(sent.success(), "kill -TERM {} failed", self.pid);
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .with_context(|| format!("the worker did not stop in 30 s:\n{}", self.log_tail()))??;
        ensure!(
            status.success(),
            "the worker stopped with {status}:\n{}",
            self.log_tail()
        );
        Ok(())
    }
}

/// VmHWM of process `pid` from `/proc/<pid>/status`, in KiB.
pub(crate) fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The CPU time process `pid` has used (utime + stime of
/// `/proc/<pid>/stat`, in the kernel's clock ticks of 10 ms).
pub(crate) fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name in parentheses may hold spaces: count fields after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// The machine's busy and total CPU time so far, from `/proc/stat`: over an
/// interval, their differences say how much of every core was in use.
pub(crate) fn machine_cpu() -> Option<(Duration, Duration)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: idle and iowait are not busy.
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((
        Duration::from_millis((total - idle) * 10),
        Duration::from_millis(total * 10),
    ))
}

/// The CPU time all the machine's programs have spent in user space so far
/// (`user` + `nice` of `/proc/stat`): the work the database server's
/// planner and executor do, apart from the kernel's syncing of new files,
/// which the system and its lower bound share alike.
pub(crate) fn machine_user_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let mut ticks = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse::<u64>().ok());
    Some(Duration::from_millis((ticks.next()? + ticks.next()?) * 10))
}

/// The share of the machine's cores in use since `before` (a
/// [`machine_cpu`] reading), when both readings could be made.
pub(crate) fn busy_share_since(before: Option<(Duration, Duration)>) -> Option<f64> {
    let ((busy, total), (busy0, total0)) = machine_cpu().zip(before)?;
    Some((busy - busy0).as_secs_f64() / (total - total0).as_secs_f64().max(0.001))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_url_replaces_only_the_database() {
        assert_eq!(
            database_url_for("postgres://postgres@127.0.0.1:5432/postgres", "b"),
            "postgres://postgres@127.0.0.1:5432/b"
        );
        assert_eq!(
            database_url_for("postgres://u:p@h/postgres?sslmode=disable", "b"),
            "postgres://u:p@h/b?sslmode=disable"
        );
        assert_eq!(database_url_for("postgres://h:5432", "b"), "postgres://h:5432/b");
    }

    #[test]
    fn peak_rss_of_this_process_is_read() {
        assert!(peak_rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
    }
}
