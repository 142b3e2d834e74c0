//! A tenant's life after signup, with the real binaries, the real
//! `pg_dump` and `pg_restore`, and the platform model's own Django serving
//! (or refusing) the tenant: suspend and resume, deletion behind a verified
//! backup (a worker killed at each of its steps), cancel, restore.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sqlx::Connection;

use crate::helpers::{TestEnv, Worker, request_tenant};
use crate::platform::{
    assert_migrate_schemas_applies_nothing, assert_same_catalog, platform_dir, provision_tenant,
};

const WAIT: Duration = Duration::from_secs(120);
const PASSWORD: &str = "a-long-password";

/// The worker's environment for these tests: backups under `dir`.
fn backup_env(dir: &Path) -> [(&'static str, String); 1] {
    [("PROVISION_BACKUP_DIR", dir.to_string_lossy().into_owned())]
}

async fn start_worker(env: &TestEnv, backups: &Path) -> Worker {
    let vars = backup_env(backups);
    let extra: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.start_worker(&extra).await
}

/// The lifecycle row's state, if any.
async fn lifecycle_state(env: &TestEnv, schema: &str) -> Option<String> {
    sqlx::query_scalar("SELECT state FROM provision_lifecycle WHERE schema_name = $1")
        .bind(schema)
        .fetch_optional(&env.pool)
        .await
        .expect("lifecycle state")
}

async fn wait_for_lifecycle(env: &TestEnv, schema: &str, state: &str) {
    let start = Instant::now();
    loop {
        let now = lifecycle_state(env, schema).await;
        if now.as_deref() == Some(state) {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "lifecycle of {schema} is {now:?}, not {state}\n{}",
            env.diagnosis().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn status(env: &TestEnv, schema: &str) -> serde_json::Value {
    let run = env.provision(&["status", "--schema-name", schema, "--json"]);
    run.expect_code(0);
    run.json()
}

/// What the platform does for a visitor of `domain`: the HTTP status of
/// the tenant's page and of its admin's login.
fn served(env: &TestEnv, domain: &str) -> (i64, i64) {
    let run = env.django_in(
        &platform_dir(),
        &[
            "platform_check",
            "--domain",
            domain,
            "--email",
            "theo@example.com",
            "--password-stdin",
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    run.expect_code(0);
    let out = run.json();
    (
        out["tenant"]["status"].as_i64().expect("status"),
        out["login"]["status"].as_i64().expect("status"),
    )
}

async fn schema_exists(env: &TestEnv, schema: &str) -> bool {
    sqlx::query_scalar("SELECT to_regnamespace($1) IS NOT NULL")
        .bind(schema)
        .fetch_one(&env.pool)
        .await
        .expect("schema")
}

/// The tenant's rows: its `tenants_client` and `tenants_domain` rows and
/// every row of its buildings, apartments and users, as text.
async fn tenant_rows(env: &TestEnv, schema: &str) -> Vec<String> {
    let mut rows: Vec<String> = sqlx::query_scalar(
        "SELECT 'client: ' || c::text FROM tenants_client c WHERE schema_name = $1
         UNION ALL
         SELECT 'domain: ' || d::text FROM tenants_domain d
         JOIN tenants_client c ON c.id = d.tenant_id WHERE c.schema_name = $1",
    )
    .bind(schema)
    .fetch_all(&env.pool)
    .await
    .expect("public rows");
    for table in ["buildings_building", "buildings_apartment", "users_customuser"] {
        let found: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT '{table}: ' || t::text FROM \"{schema}\".{table} t ORDER BY 1"
        )))
        .fetch_all(&env.pool)
        .await
        .unwrap_or_default();
        rows.extend(found);
    }
    rows.sort();
    rows
}

async fn sha256_of(path: &Path) -> String {
    provision_shared::lifecycle::archive::fingerprint(path)
        .await
        .expect("read the backup")
        .0
}

/// Deletes `schema` now with a backup and waits until it is deleted;
/// returns the backup file.
fn delete_now(env: &TestEnv, schema: &str) -> PathBuf {
    let run = env.provision(&[
        "delete-tenant",
        "--schema-name",
        schema,
        "--confirm",
        schema,
        "--now",
        "--wait",
        "--json",
    ]);
    run.expect_code(0);
    let done = run.json();
    assert_eq!(done["lifecycle_state"], "deleted", "{done}");
    PathBuf::from(done["backup"]["path"].as_str().expect("backup path"))
}

/// Deleted with its backup, `theo` is gone (schema, rows, domain, not
/// served); the backup's checksum is the file's; restored from it, theo
/// has the same catalog, the same rows and the same domain, the platform
/// serves it and its admin logs in, and the platform's `migrate_schemas`
/// finds nothing to apply.
#[tokio::test]
async fn a_deleted_tenant_comes_back_from_its_backup_identical_and_served() {
    let env = TestEnv::new_platform("lcrestore").await;
    let backups = env.dir().join("backups");
    let _worker = start_worker(&env, &backups).await;
    provision_tenant(&env, "theo", true);
    // Served (and logged in: Django then rehashes the password with its
    // own parameters) before the rows are taken.
    assert_eq!(served(&env, "theo.newconcierge.app"), (200, 200));
    let catalog = env.catalog("theo").await;
    let rows = tenant_rows(&env, "theo").await;
    assert!(
        rows.iter().any(|r| r.starts_with("buildings_apartment")),
        "{rows:?}"
    );

    let file = delete_now(&env, "theo");
    assert!(!schema_exists(&env, "theo").await, "the schema is still there");
    assert!(tenant_rows(&env, "theo").await.is_empty(), "rows left behind");
    let hint: Option<i32> =
        sqlx::query_scalar("SELECT set_version FROM provision_ledger_hint WHERE schema_name = 'theo'")
            .fetch_optional(&env.pool)
            .await
            .unwrap();
    assert_eq!(hint, None, "the dropped schema's ledger hint is left behind");
    assert_eq!(served(&env, "theo.newconcierge.app").0, 404);
    let shown = status(&env, "theo");
    assert_eq!(shown["lifecycle"], "deleted", "{shown}");
    assert_eq!(
        shown["lifecycle_detail"]["backup_sha256"],
        sha256_of(&file).await,
        "{shown}"
    );
    assert!(shown["lifecycle_detail"]["deleted_at"].is_string(), "{shown}");
    let listed = env.provision(&["list", "--state", "deleted", "--json"]);
    listed.expect_code(0);
    assert_eq!(
        listed.json().as_array().map(Vec::len),
        Some(1),
        "{}",
        listed.stdout
    );
    let toc = std::process::Command::new("pg_restore")
        .arg("--list")
        .arg(&file)
        .output()
        .expect("pg_restore");
    assert!(toc.status.success(), "pg_restore cannot read the backup");

    let run = env.provision(&[
        "restore-tenant",
        "--backup",
        file.to_str().expect("path"),
        "--wait",
        "--json",
    ]);
    run.expect_code(0);
    assert_eq!(run.json()["lifecycle_state"], "active", "{}", run.stdout);
    assert_same_catalog(
        &env.catalog("theo").await,
        &catalog,
        "theo restored against theo before",
    );
    assert_eq!(
        tenant_rows(&env, "theo").await,
        rows,
        "the rows came back different"
    );
    assert_eq!(served(&env, "theo.newconcierge.app"), (200, 200));
    assert_eq!(status(&env, "theo")["lifecycle"], "active");
    let leftovers: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'provision\\_rows\\_%'")
            .fetch_one(&env.pool)
            .await
            .expect("staging schemas");
    assert_eq!(leftovers, 0, "a staging schema was left");
    assert_migrate_schemas_applies_nothing(&env, &platform_dir());
}

/// The statement that opens a lifecycle step's last transaction.
const STEP_LOCK: &str = "SELECT state FROM public.provision_lifecycle WHERE schema_name = $1 FOR UPDATE";

/// A lock on the tenant's lifecycle row, held by the test: every step of a
/// deletion ends with a transaction that takes it first, so the worker
/// waits there, mid-step, until the test lets go.
struct RowLock {
    conn: sqlx::PgConnection,
    schema: String,
}

impl RowLock {
    async fn take(env: &TestEnv, schema: &str) -> Self {
        let mut conn = sqlx::PgConnection::connect(&env.database_url)
            .await
            .expect("connect");
        sqlx::query("BEGIN").execute(&mut conn).await.expect("begin");
        sqlx::query("SELECT 1 FROM provision_lifecycle WHERE schema_name = $1 FOR UPDATE")
            .bind(schema)
            .execute(&mut conn)
            .await
            .expect("lock the row");
        Self {
            conn,
            schema: schema.to_owned(),
        }
    }

    /// The queries of the sessions that wait for this lock.
    async fn waiting_queries(&mut self, env: &TestEnv) -> Vec<String> {
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut self.conn)
            .await
            .expect("pid");
        sqlx::query_scalar("SELECT query FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))")
            .bind(pid)
            .fetch_all(&env.pool)
            .await
            .expect("waiters")
    }

    /// Waits until a step waits for this lock at the start of its last
    /// transaction, letting through whatever else touches the row first
    /// (a job counting its attempt, a job id being claimed).
    async fn hold_at_step(&mut self, env: &TestEnv) {
        let start = Instant::now();
        loop {
            let waiting = self.waiting_queries(env).await;
            if waiting.iter().any(|q| q.contains(STEP_LOCK)) {
                return;
            }
            if !waiting.is_empty() {
                self.pass_one().await;
                continue;
            }
            assert!(
                start.elapsed() < WAIT,
                "no step waited for the row\n{}",
                env.diagnosis().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until nothing waits for this lock (a killed worker's session
    /// has noticed its client is gone).
    async fn wait_for_no_waiter(&mut self, env: &TestEnv) {
        let start = Instant::now();
        while !self.waiting_queries(env).await.is_empty() {
            assert!(start.elapsed() < WAIT, "a session still waits for the row");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Lets the waiting step go on, and takes the lock again at once: the
    /// step commits first (it was waiting first), and the next one waits
    /// for the test again.
    async fn pass_one(&mut self) {
        sqlx::query("COMMIT")
            .execute(&mut self.conn)
            .await
            .expect("commit");
        sqlx::query("BEGIN").execute(&mut self.conn).await.expect("begin");
        sqlx::query("SELECT 1 FROM provision_lifecycle WHERE schema_name = $1 FOR UPDATE")
            .bind(&self.schema)
            .execute(&mut self.conn)
            .await
            .expect("lock the row again");
    }

    async fn release(mut self) {
        sqlx::query("COMMIT")
            .execute(&mut self.conn)
            .await
            .expect("commit");
    }
}

/// The worker is SIGKILLed in the middle of each step of a deletion (while
/// its step waits to commit), one tenant per step: a new worker runs the
/// step again and carries the deletion to its end. At every stop nothing
/// is dropped before the backup is verified, and the backup restores the
/// tenant whole.
#[tokio::test]
async fn a_worker_killed_at_each_step_of_a_deletion_resumes_and_drops_nothing_before_the_backup_is_verified()
{
    let env = TestEnv::new_platform("lckill").await;
    let backups = env.dir().join("backups");
    let vars = backup_env(&backups);
    let mut extra: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // A job lost with its worker is pushed again by the next one's
    // reconciler too, not only by the queue library's orphan recovery.
    extra.push(("PROVISION_RECONCILE_AFTER", "2"));
    let mut worker = env.start_worker(&extra).await;
    let steps = [
        "deletion_scheduled",
        "backed_up",
        "backup_verified",
        "schema_dropped",
    ];
    let mut catalog = Vec::new();
    for (k, at) in steps.iter().enumerate() {
        let schema = format!("kill_{k}");
        provision_tenant(&env, &schema, true);
        catalog = env.catalog(&schema).await;
        env.provision(&["suspend", "--schema-name", &schema])
            .expect_code(0);
        // The deletion is scheduled under the test's lock too: the lock is
        // passed on until the step to kill in waits for it.
        let mut lock = RowLock::take(&env, &schema).await;
        let scheduling = env.spawn_provision(&[
            "delete-tenant",
            "--schema-name",
            &schema,
            "--confirm",
            &schema,
            "--now",
        ]);
        lock.hold_at_step(&env).await;
        TestEnv::finish(scheduling).expect_code(0);
        for _ in 0..k {
            // Let the step through (and whatever else waits before it,
            // a reconciler's claim), until the state moves on.
            let from = lifecycle_state(&env, &schema).await;
            while lifecycle_state(&env, &schema).await == from {
                lock.pass_one().await;
                lock.hold_at_step(&env).await;
            }
        }
        assert_eq!(lifecycle_state(&env, &schema).await.as_deref(), Some(*at));
        let verified: Option<String> =
            sqlx::query_scalar("SELECT backup_sha256 FROM provision_lifecycle WHERE schema_name = $1")
                .bind(&schema)
                .fetch_one(&env.pool)
                .await
                .expect("checksum");
        assert!(
            schema_exists(&env, &schema).await || verified.is_some(),
            "dropped at {at} unverified"
        );
        assert_eq!(schema_exists(&env, &schema).await, k < 3, "the schema at {at}");
        worker.signal("KILL");
        worker.wait_exit(WAIT).await;
        lock.wait_for_no_waiter(&env).await;
        lock.release().await;
        worker = env.start_worker(&extra).await;
        wait_for_lifecycle(&env, &schema, "deleted").await;
        assert!(!schema_exists(&env, &schema).await);
        assert!(tenant_rows(&env, &schema).await.is_empty());
        let shown = status(&env, &schema);
        let file = shown["lifecycle_detail"]["backup_path"]
            .as_str()
            .expect("backup")
            .to_owned();
        assert_eq!(
            shown["lifecycle_detail"]["backup_sha256"],
            sha256_of(Path::new(&file)).await
        );
    }
    let names: Vec<String> = std::fs::read_dir(&backups)
        .expect("backups")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.len(),
        steps.len(),
        "partial dumps were left in the backup folder: {names:?}"
    );
    let last = format!("kill_{}", steps.len() - 1);
    let file = status(&env, &last)["lifecycle_detail"]["backup_path"]
        .as_str()
        .expect("backup")
        .to_owned();
    env.provision(&["restore-tenant", "--backup", &file, "--wait"])
        .expect_code(0);
    assert_same_catalog(
        &env.catalog(&last).await,
        &catalog,
        "a tenant after a deletion killed at its last step",
    );
    drop(worker);
}

/// A backup folder the worker cannot write: the deletion fails at its
/// backup step with the error; the tenant is untouched and stays suspended;
/// once the folder is fixed, `retry` carries the deletion through.
#[tokio::test]
async fn an_unwritable_backup_folder_fails_the_deletion_at_its_backup_step_and_retry_goes_on() {
    let env = TestEnv::new_platform("lcunwritable").await;
    // Under a regular file: no process, root included, can make it.
    let blocker = env.dir().join("not-a-folder");
    std::fs::write(&blocker, b"").expect("write");
    let backups = blocker.join("backups");
    let _worker = start_worker(&env, &backups).await;
    provision_tenant(&env, "theo", true);
    let rows = tenant_rows(&env, "theo").await;
    let catalog = env.catalog("theo").await;

    let run = env.provision(&[
        "delete-tenant",
        "--schema-name",
        "theo",
        "--confirm",
        "theo",
        "--now",
        "--wait",
    ]);
    run.expect_code(1);
    let shown = status(&env, "theo");
    assert_eq!(shown["lifecycle"], "deletion_failed", "{shown}");
    assert_eq!(shown["lifecycle_detail"]["failed_step"], "backup", "{shown}");
    let error = shown["lifecycle_detail"]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains("backup folder") && error.contains("not-a-folder"),
        "{error}"
    );
    assert_eq!(shown["is_active"], false, "{shown}");
    assert_same_catalog(&env.catalog("theo").await, &catalog, "theo after a failed backup");
    let mut now = tenant_rows(&env, "theo").await;
    now.retain(|r| !r.starts_with("client: "));
    let mut before = rows.clone();
    before.retain(|r| !r.starts_with("client: "));
    assert_eq!(now, before, "the tenant's rows changed");
    assert_eq!(
        served(&env, "theo.newconcierge.app").0,
        403,
        "a suspended tenant was served"
    );
    let check = env.provision(&["check", "--json"]);
    let doc = check.json();
    let item = doc["checks"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["name"] == "deletions"))
        .expect("the deletions check");
    assert_eq!(item["ok"], false, "{item}");

    std::fs::remove_file(&blocker).expect("remove");
    env.provision(&["retry", "--schema-name", "theo"]).expect_code(0);
    wait_for_lifecycle(&env, "theo", "deleted").await;
    assert!(!schema_exists(&env, "theo").await);
    assert!(std::fs::read_dir(&backups).expect("backups").count() == 1);
}

/// Without `--confirm`, or with another name, nothing happens (exit 2).
/// Scheduled with a grace period, the tenant is suspended at once (the
/// platform refuses it) and listed as such; `cancel-delete` makes it
/// active and served again, and a second cancel is refused. Once due, a
/// running worker carries the deletion out by itself; confirmed with
/// `--no-backup`, none is written.
#[tokio::test]
async fn delete_tenant_needs_its_confirmation_and_cancel_delete_takes_it_back() {
    let env = TestEnv::new_platform("lcconfirm").await;
    let backups = env.dir().join("backups");
    let _worker = start_worker(&env, &backups).await;
    provision_tenant(&env, "theo", true);
    let before = env.pg_snapshot().await;
    for confirm in [&[][..], &["--confirm", "theo2"], &["--confirm", "Theo"]] {
        let mut args = vec!["delete-tenant", "--schema-name", "theo", "--now", "--json"];
        args.extend(confirm);
        let run = env.provision(&args);
        run.expect_code(2);
        assert_eq!(run.json()["error"]["field"], "confirm", "{}", run.stdout);
    }
    assert_eq!(
        env.pg_snapshot().await,
        before,
        "a refused deletion wrote something"
    );
    assert_eq!(served(&env, "theo.newconcierge.app"), (200, 200));

    let run = env.provision(&[
        "delete-tenant",
        "--schema-name",
        "theo",
        "--confirm",
        "theo",
        "--json",
    ]);
    run.expect_code(0);
    let planned = run.json();
    assert_eq!(planned["with_backup"], true);
    let due =
        chrono::DateTime::parse_from_rfc3339(planned["delete_after"].as_str().expect("due")).expect("date");
    let days = (due.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_hours();
    assert!(
        (167..=168).contains(&days),
        "the default grace is 7 days, got {days} hours"
    );
    assert_eq!(status(&env, "theo")["lifecycle"], "deletion_scheduled");
    assert_eq!(served(&env, "theo.newconcierge.app").0, 403);
    let listed = env.provision(&["list", "--state", "deletion_scheduled", "--json"]);
    assert_eq!(listed.json()[0]["schema_name"], "theo", "{}", listed.stdout);
    let resumed = env.provision(&["resume", "--schema-name", "theo"]);
    resumed.expect_code(1);
    assert!(
        resumed.stderr.contains("deletion_scheduled"),
        "{}",
        resumed.stderr
    );

    env.provision(&["cancel-delete", "--schema-name", "theo"])
        .expect_code(0);
    let shown = status(&env, "theo");
    assert_eq!(shown["lifecycle"], "active", "{shown}");
    assert_eq!(served(&env, "theo.newconcierge.app"), (200, 200));
    assert!(schema_exists(&env, "theo").await);
    let again = env.provision(&["cancel-delete", "--schema-name", "theo"]);
    again.expect_code(1);
    assert!(again.stderr.contains("active"), "{}", again.stderr);

    // Scheduled again, then come due (its date moved to the past, as
    // seven days would): the running worker starts the deletion by itself.
    env.provision(&[
        "delete-tenant",
        "--schema-name",
        "theo",
        "--confirm",
        "theo",
        "--grace",
        "7",
    ])
    .expect_code(0);
    sqlx::query("UPDATE provision_lifecycle SET delete_after = now() - interval '1 second' WHERE schema_name = 'theo'")
        .execute(&env.pool)
        .await
        .expect("come due");
    wait_for_lifecycle(&env, "theo", "deleted").await;
    assert!(!schema_exists(&env, "theo").await);
    assert_eq!(std::fs::read_dir(&backups).expect("backups").count(), 1);

    // Confirmed without a backup: dropped with none written.
    provision_tenant(&env, "nobackup", false);
    let run = env.provision(&[
        "delete-tenant",
        "--schema-name",
        "nobackup",
        "--confirm",
        "nobackup",
        "--now",
        "--no-backup",
        "--wait",
        "--json",
    ]);
    run.expect_code(0);
    let done = run.json();
    assert_eq!(done["lifecycle_state"], "deleted", "{done}");
    assert!(done["backup"].is_null(), "{done}");
    assert!(!schema_exists(&env, "nobackup").await);
    assert_eq!(
        std::fs::read_dir(&backups).expect("backups").count(),
        1,
        "a backup was written"
    );
}

/// A restore onto a schema name or a domain that is taken now is refused,
/// and so is a backup whose checksum differs from the one recorded; in
/// each case nothing is written.
#[tokio::test]
async fn restore_is_refused_onto_a_taken_name_or_domain_and_from_a_corrupted_backup() {
    let env = TestEnv::new_platform("lcrefuse").await;
    let backups = env.dir().join("backups");
    let _worker = start_worker(&env, &backups).await;
    provision_tenant(&env, "theo", false);
    provision_tenant(&env, "ana", false);
    let theo_file = delete_now(&env, "theo");
    let ana_file = delete_now(&env, "ana");

    // Damaged where it lies.
    let original = std::fs::read(&theo_file).expect("read");
    let mut damaged = original.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    std::fs::write(&theo_file, &damaged).expect("damage");
    let error = refused_restore(&env, &theo_file).await;
    assert_eq!(error["field"], "backup", "{error}");
    assert!(
        error["message"].as_str().unwrap_or_default().contains("damaged"),
        "{error}"
    );
    std::fs::write(&theo_file, &original).expect("mend");

    // The name taken, by the platform's own Client.save().
    env.django_tenant("theo", "theo-again.newconcierge.app");
    let error = refused_restore(&env, &theo_file).await;
    assert_eq!(error["field"], "schema_name", "{error}");

    // The domain taken by another tenant.
    env.django_tenant("anna", "ana.newconcierge.app");
    let error = refused_restore(&env, &ana_file).await;
    assert_eq!(error["field"], "domain", "{error}");
    assert!(
        error["message"].as_str().unwrap_or_default().contains("anna"),
        "{error}"
    );
    assert_eq!(status(&env, "ana")["lifecycle"], "deleted");
}

/// `restore-tenant --backup file`, which must be refused (exit 2) with
/// nothing written; its error.
async fn refused_restore(env: &TestEnv, file: &Path) -> serde_json::Value {
    let before = env.pg_snapshot().await;
    let run = env.provision(&[
        "restore-tenant",
        "--backup",
        file.to_str().expect("path"),
        "--json",
    ]);
    run.expect_code(2);
    assert_eq!(
        env.pg_snapshot().await,
        before,
        "a refused restore wrote something"
    );
    run.json()["error"].clone()
}

/// Suspended, the tenant's domain is refused by the platform's middleware
/// and `status` says why and by whom; resumed, it is served again. A
/// tenant being provisioned is not suspended, and the refusal names its
/// state.
#[tokio::test]
async fn a_suspended_tenant_is_refused_by_the_platform_and_served_again_once_resumed() {
    let env = TestEnv::new_platform("lcsuspend").await;
    let backups = env.dir().join("backups");
    let worker = start_worker(&env, &backups).await;
    provision_tenant(&env, "theo", false);
    assert_eq!(served(&env, "theo.newconcierge.app"), (200, 200));

    env.provision(&[
        "suspend",
        "--schema-name",
        "theo",
        "--reason",
        "invoice 2026-11 unpaid",
    ])
    .expect_code(0);
    assert_eq!(served(&env, "theo.newconcierge.app").0, 403);
    let shown = status(&env, "theo");
    assert_eq!(shown["lifecycle"], "suspended", "{shown}");
    assert_eq!(shown["is_active"], false);
    assert_eq!(shown["lifecycle_detail"]["reason"], "invoice 2026-11 unpaid");
    assert!(
        shown["lifecycle_detail"]["changed_by"]
            .as_str()
            .unwrap_or_default()
            .starts_with("provision")
    );
    let history = shown["history"].as_array().expect("history");
    assert!(
        history
            .iter()
            .any(|h| h["step"] == "suspend" && h["lifecycle_state"] == "suspended"),
        "{shown}"
    );
    let view: String =
        sqlx::query_scalar("SELECT lifecycle FROM provision_tenant_status WHERE schema_name = 'theo'")
            .fetch_one(&env.pool)
            .await
            .expect("view");
    assert_eq!(view, "suspended");
    let listed = env.provision(&["list", "--state", "suspended", "--json"]);
    assert_eq!(
        listed.json().as_array().map(Vec::len),
        Some(1),
        "{}",
        listed.stdout
    );

    env.provision(&["resume", "--schema-name", "theo"]).expect_code(0);
    assert_eq!(served(&env, "theo.newconcierge.app"), (200, 200));
    assert_eq!(status(&env, "theo")["lifecycle"], "active");

    drop(worker);
    request_tenant(&env, "nina");
    let run = env.provision(&["suspend", "--schema-name", "nina"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("provisioning") && run.stderr.contains("requested"),
        "{}",
        run.stderr
    );
}

/// With `PROVISION_SUSPEND_EXPIRED_AFTER=3`, the nightly pass suspends a
/// tenant whose `paid_until` passed ten days ago, as by the system, and
/// leaves one that expired yesterday.
#[tokio::test]
async fn the_nightly_pass_suspends_tenants_long_expired_when_asked() {
    let env = TestEnv::new_platform("lcexpired").await;
    let worker = env.start_worker(&[]).await;
    provision_tenant(&env, "theo", false);
    env.django_tenant("late", "late.newconcierge.app");
    drop(worker);
    sqlx::query(
        "UPDATE tenants_client SET paid_until = CASE schema_name
             WHEN 'theo' THEN current_date - 10 ELSE current_date - 1 END
         WHERE schema_name IN ('theo', 'late')",
    )
    .execute(&env.pool)
    .await
    .expect("expire");
    let _nightly = env
        .start_worker(&[
            ("PROVISION_SUSPEND_EXPIRED_AFTER", "3"),
            ("PROVISION_MIGRATE_ALL_CRON", "* * * * * *"),
        ])
        .await;
    wait_for_lifecycle(&env, "theo", "suspended").await;
    let shown = status(&env, "theo");
    assert_eq!(shown["lifecycle_detail"]["changed_by"], "system", "{shown}");
    assert!(
        shown["lifecycle_detail"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("paid_until")
    );
    assert_eq!(status(&env, "late")["lifecycle"], "active");
}

/// The lifecycle rule in SQL (`provision_lifecycle_of`, which every query
/// and the view use) and in Rust agree on every combination.
#[tokio::test]
async fn the_lifecycle_rule_is_the_same_in_sql_and_in_rust() {
    use provision_shared::lifecycle::Lifecycle;
    let env = TestEnv::new("lcrule").await;
    let provisioning = [None, Some("ready"), Some("failed"), Some("migrated")];
    let rows = [
        None,
        Some(("active", None)),
        Some(("suspended", None)),
        Some(("deletion_scheduled", None)),
        Some(("backed_up", None)),
        Some(("backup_verified", None)),
        Some(("schema_dropped", None)),
        Some(("deleted", None)),
        Some(("restore_requested", None)),
        Some(("schema_restored", None)),
        Some(("failed", Some("backup"))),
        Some(("failed", Some("restore_rows"))),
    ];
    for p in provisioning {
        for row in rows {
            for active in [None, Some(true), Some(false)] {
                let sql: String = sqlx::query_scalar("SELECT provision_lifecycle_of($1, $2, $3, $4, $5)")
                    .bind(p)
                    .bind(row.map(|r| r.0))
                    .bind(row.and_then(|r| r.1))
                    .bind(active.is_some())
                    .bind(active)
                    .fetch_one(&env.pool)
                    .await
                    .expect("rule");
                assert_eq!(
                    sql,
                    Lifecycle::of(p, row, active).as_str(),
                    "{p:?} {row:?} {active:?}"
                );
            }
        }
    }
}
