//! `provision check`: the platform's pre-deployment check, each item pass or
//! fail with a hint that names the command to run.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use provision_queue::RedisQueue;
use provision_queue::options::ConnectionOptions;
use provision_shared::ProvisionError;
use provision_shared::jobs::JobKind;
use provision_shared::ledger::{Ledger, read_ledgers};
use provision_shared::lifecycle::schedule::stuck_lifecycle_jobs;
use provision_shared::migration_set::MigrationSet;
use provision_shared::public_schema::public_pending;
use provision_shared::{db, validate};
use serde::Serialize;
use sqlx::PgPool;

/// One item of the check.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CheckItem {
    pub(crate) name: &'static str,
    pub(crate) ok: bool,
    pub(crate) detail: String,
    /// What to do about a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) hint: Option<String>,
}

impl CheckItem {
    fn pass(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            ok: true,
            detail: detail.into(),
            hint: None,
        }
    }

    fn fail(name: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            name,
            ok: false,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }
}

/// A worker whose heartbeat is older than this is not counted as alive.
const WORKER_HEARTBEAT_FRESH: Duration = Duration::from_secs(15);

/// Runs every check. `stuck_after`: how long a tenant may sit in a non-final
/// state before it counts as stuck.
pub(crate) async fn run_checks(options: &ConnectionOptions, stuck_after: Duration) -> Vec<CheckItem> {
    let mut items = Vec::new();
    let db_url = db::redact_url(&options.database_url);
    let redis_url = db::redact_url(&options.redis_url);

    let pool =
        match tokio::time::timeout(Duration::from_secs(10), db::connect(&options.database_url, 2)).await {
            Ok(Ok(pool)) => match sqlx::query_scalar::<_, String>("SHOW server_version")
                .fetch_one(&pool)
                .await
            {
                Ok(version) => {
                    items.push(CheckItem::pass(
                        "database",
                        format!("PostgreSQL {version} at {db_url} answers"),
                    ));
                    Some(pool)
                }
                Err(e) => {
                    items.push(CheckItem::fail(
                        "database",
                        format!("{db_url}: {e}"),
                        "check DATABASE_URL",
                    ));
                    None
                }
            },
            Ok(Err(e)) => {
                items.push(CheckItem::fail(
                    "database",
                    format!("PostgreSQL at {db_url} could not be reached: {e}"),
                    "start PostgreSQL, or set DATABASE_URL / --database-url; \
                 a missing database is created by `provision init`",
                ));
                None
            }
            Err(_) => {
                items.push(CheckItem::fail(
                    "database",
                    format!("PostgreSQL at {db_url} did not answer in 10 s"),
                    "check the host and port in DATABASE_URL",
                ));
                None
            }
        };

    let queue = match RedisQueue::connect(&options.redis_url, &options.namespace).await {
        Ok(queue) => match queue.ping().await {
            Ok(()) => {
                items.push(CheckItem::pass("redis", format!("Redis at {redis_url} answers")));
                Some(queue)
            }
            Err(e) => {
                items.push(CheckItem::fail(
                    "redis",
                    format!("Redis at {redis_url}: {e}"),
                    "check REDIS_URL",
                ));
                None
            }
        },
        Err(e) => {
            items.push(CheckItem::fail(
                "redis",
                format!("Redis at {redis_url} could not be reached: {e}"),
                "start Redis, or set REDIS_URL / --redis-url",
            ));
            None
        }
    };

    items.push(configuration(options));

    match &pool {
        Some(pool) => {
            items.push(public_migrations(pool).await);
            items.push(public_tenant(pool).await);
            items.push(tenants(pool, stuck_after).await);
            items.push(deletions(pool, stuck_after).await);
            items.push(schema_permission(pool).await);
        }
        None => {
            for name in [
                "public_migrations",
                "public_tenant",
                "tenants",
                "schema_permission",
            ] {
                items.push(CheckItem::fail(
                    name,
                    "not checked: PostgreSQL could not be reached",
                    "fix `database` first",
                ));
            }
        }
    }
    items.push(match &queue {
        Some(queue) => workers(queue).await,
        None => CheckItem::fail(
            "workers",
            "not checked: Redis could not be reached",
            "fix `redis` first",
        ),
    });
    match &pool {
        Some(pool) => {
            let (behind, orphans) = schemas(pool).await;
            items.push(behind);
            items.push(orphans);
        }
        None => {
            for name in ["schemas_behind", "orphans"] {
                items.push(CheckItem::fail(
                    name,
                    "not checked: PostgreSQL could not be reached",
                    "fix `database` first",
                ));
            }
        }
    }
    items
}

fn configuration(options: &ConnectionOptions) -> CheckItem {
    let mut problems = Vec::new();
    if options
        .database_url
        .parse::<sqlx::postgres::PgConnectOptions>()
        .is_err()
    {
        problems.push("DATABASE_URL is not a PostgreSQL URL".to_owned());
    }
    if !options.redis_url.starts_with("redis://") && !options.redis_url.starts_with("rediss://") {
        problems.push("REDIS_URL must start with redis:// or rediss://".to_owned());
    }
    if options.namespace.is_empty()
        || !options
            .namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c))
    {
        problems.push("PROVISION_NAMESPACE must be letters, digits, _ - . or :".to_owned());
    }
    if let Err(e) = validate::domain(&options.base_domain) {
        problems.push(format!("PROVISION_BASE_DOMAIN: {}", e.rule));
    }
    let explicit: Vec<&str> = [
        "DATABASE_URL",
        "REDIS_URL",
        "PROVISION_NAMESPACE",
        "PROVISION_BASE_DOMAIN",
    ]
    .into_iter()
    .filter(|v| std::env::var_os(v).is_some())
    .collect();
    if problems.is_empty() {
        CheckItem::pass(
            "configuration",
            format!(
                "namespace {}, base domain {}; set in the environment: {}",
                options.namespace,
                options.base_domain,
                if explicit.is_empty() {
                    "none (defaults)".to_owned()
                } else {
                    explicit.join(", ")
                }
            ),
        )
    } else {
        CheckItem::fail(
            "configuration",
            problems.join("; "),
            "fix the variables named (README: Configuration)",
        )
    }
}

async fn public_migrations(pool: &PgPool) -> CheckItem {
    match public_pending(pool).await {
        Ok(pending) if pending.is_empty() => {
            CheckItem::pass("public_migrations", "all public migrations applied")
        }
        Ok(pending) => CheckItem::fail(
            "public_migrations",
            format!("public migrations not applied: {pending:?}"),
            "run `provision migrate --shared` (workers also apply them at start)",
        ),
        Err(e) => CheckItem::fail(
            "public_migrations",
            e.to_string(),
            "run `provision migrate --shared`",
        ),
    }
}

async fn public_tenant(pool: &PgPool) -> CheckItem {
    let found: Result<Option<Option<String>>, sqlx::Error> = sqlx::query_scalar(
        "SELECT (SELECT string_agg(d.domain, ', ' ORDER BY d.is_primary DESC, d.domain)
                 FROM public.tenants_domain d WHERE d.tenant_id = c.id)
         FROM public.tenants_client c WHERE c.schema_name = 'public'",
    )
    .fetch_optional(pool)
    .await;
    let hint = "run `provision init --public-domain <your main domain>`";
    match found {
        Ok(Some(Some(domains))) => {
            CheckItem::pass("public_tenant", format!("public tenant with domain {domains}"))
        }
        Ok(Some(None)) => CheckItem::fail("public_tenant", "the public tenant has no domain", hint),
        Ok(None) => CheckItem::fail(
            "public_tenant",
            "no public tenant (schema public) in tenants_client",
            hint,
        ),
        Err(e) => CheckItem::fail("public_tenant", e.to_string(), hint),
    }
}

async fn tenants(pool: &PgPool, stuck_after: Duration) -> CheckItem {
    // Every tenant of tenants_client (those made by the platform are
    // `external`), and those provisioned here whose row the platform deleted
    // (`gone`).
    let by_state: Result<Vec<(String, i64)>, sqlx::Error> = sqlx::query_as(
        "SELECT CASE WHEN c.schema_name IS NULL THEN 'gone' ELSE coalesce(p.state, 'external') END AS state,
                count(*)
         FROM public.provision_tenant p
         FULL JOIN public.tenants_client c ON c.schema_name = p.schema_name
         WHERE coalesce(c.schema_name, p.schema_name) <> 'public'
         GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(pool)
    .await;
    let stuck: Result<Vec<(String, String)>, sqlx::Error> = sqlx::query_as(
        "SELECT schema_name, state FROM public.provision_tenant
         WHERE state NOT IN ('ready', 'failed') AND updated_at < now() - make_interval(secs => $1)
         ORDER BY updated_at LIMIT 20",
    )
    .bind(stuck_after.as_secs_f64())
    .fetch_all(pool)
    .await;
    let (by_state, stuck) = match (by_state, stuck) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            return CheckItem::fail("tenants", e.to_string(), "run `provision init`");
        }
    };
    let counts = if by_state.is_empty() {
        "no tenants yet".to_owned()
    } else {
        by_state
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if stuck.is_empty() {
        let failed = by_state
            .iter()
            .find(|(s, _)| s == "failed")
            .map_or(0, |(_, n)| *n);
        let mut detail = format!("tenants by state: {counts}");
        if failed > 0 {
            detail.push_str(
                "; `provision list --state failed` shows the failed ones, `provision retry` resumes them",
            );
        }
        return CheckItem::pass("tenants", detail);
    }
    let names: Vec<String> = stuck.iter().map(|(s, st)| format!("{s} ({st})")).collect();
    CheckItem::fail(
        "tenants",
        format!(
            "tenants by state: {counts}; stuck for more than {} s: {}",
            stuck_after.as_secs(),
            names.join(", ")
        ),
        format!(
            "check that workers run (`workers` below), then `provision status --schema-name {}`",
            stuck[0].0
        ),
    )
}

/// Deletions due for longer than `stuck_after` that no worker carried on,
/// lifecycle jobs that stopped moving, and failed ones.
async fn deletions(pool: &PgPool, stuck_after: Duration) -> CheckItem {
    const NAME: &str = "deletions";
    match stuck_lifecycle_jobs(pool, stuck_after).await {
        Ok(stuck) if stuck.is_empty() => CheckItem::pass(NAME, "no deletion or restore is due but stuck"),
        Ok(stuck) => {
            let listed: Vec<String> = stuck
                .iter()
                .take(5)
                .map(|s| match (&s.failed_step, &s.last_error) {
                    (Some(step), error) => format!(
                        "{} failed at {step}: {}",
                        s.schema_name,
                        error.as_deref().unwrap_or("no error recorded")
                    ),
                    (None, _) => format!("{} {} since {}", s.schema_name, s.state, s.since.to_rfc3339()),
                })
                .collect();
            CheckItem::fail(
                NAME,
                format!("{} stuck: {}", stuck.len(), listed.join("; ")),
                "a failed one: fix what its error says, then `provision retry --schema-name S`; \
                 one due but not started: is a worker running, with PROVISION_BACKUP_DIR set?",
            )
        }
        Err(e) => CheckItem::fail(
            NAME,
            format!("cannot read deletions: {e}"),
            "see the database check",
        ),
    }
}

async fn schema_permission(pool: &PgPool) -> CheckItem {
    let row: Result<(String, String, bool), sqlx::Error> = sqlx::query_as(
        "SELECT current_user::text, current_database()::text,
                has_database_privilege(current_user, current_database(), 'CREATE')",
    )
    .fetch_one(pool)
    .await;
    match row {
        Ok((user, database, true)) => CheckItem::pass(
            "schema_permission",
            format!("role {user} may create schemas in {database}"),
        ),
        Ok((user, database, false)) => CheckItem::fail(
            "schema_permission",
            format!("role {user} may not create schemas in {database}"),
            format!("as a superuser: GRANT CREATE ON DATABASE \"{database}\" TO \"{user}\";"),
        ),
        Err(e) => CheckItem::fail(
            "schema_permission",
            e.to_string(),
            "check the role in DATABASE_URL",
        ),
    }
}

async fn workers(queue: &RedisQueue) -> CheckItem {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let since = now.saturating_sub(WORKER_HEARTBEAT_FRESH.as_secs());
    match queue.workers_alive(JobKind::CreateTenant, since).await {
        Ok(0) => CheckItem::fail(
            "workers",
            format!(
                "no worker heartbeat in the last {} s under namespace {}",
                WORKER_HEARTBEAT_FRESH.as_secs(),
                queue.namespace()
            ),
            "start provision-worker (same REDIS_URL and PROVISION_NAMESPACE)",
        ),
        Ok(n) => CheckItem::pass(
            "workers",
            format!(
                "{n} worker(s) alive (heartbeat in the last {} s)",
                WORKER_HEARTBEAT_FRESH.as_secs()
            ),
        ),
        Err(e) => CheckItem::fail("workers", e.to_string(), "check Redis"),
    }
}

/// Every tenant's ledger against the set in force: the schemas behind, and
/// the orphans (a tenant row without its schema, a tenant's schema without
/// its row).
async fn schemas(pool: &PgPool) -> (CheckItem, CheckItem) {
    let read = async {
        let set = MigrationSet::in_force(pool).await?;
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT schema_name FROM public.tenants_client WHERE schema_name <> 'public' ORDER BY schema_name",
        )
        .fetch_all(pool)
        .await?;
        let ledgers = read_ledgers(pool, &set, &names).await?;
        // Schemas that look like a tenant's (a django_migrations table) and
        // that no tenant row names.
        let unregistered: Vec<String> = sqlx::query_scalar(
            "SELECT n.nspname::text FROM pg_namespace n
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = 'django_migrations' AND c.relkind = 'r'
             WHERE n.nspname <> 'public'
               AND NOT EXISTS (SELECT 1 FROM public.tenants_client t WHERE t.schema_name = n.nspname)
             ORDER BY 1",
        )
        .fetch_all(pool)
        .await?;
        Ok::<_, ProvisionError>((set, names, ledgers, unregistered))
    };
    let (set, names, ledgers, unregistered) = match read.await {
        Ok(found) => found,
        Err(e @ ProvisionError::NoMigrationSet) => {
            let hint = "run `provision import-migrations --manage-py <the platform's manage.py>`";
            let fail = |name| CheckItem::fail(name, e.to_string(), hint);
            return (fail("schemas_behind"), fail("orphans"));
        }
        Err(e) => {
            let fail = |name| CheckItem::fail(name, e.to_string(), "run `provision init`");
            return (fail("schemas_behind"), fail("orphans"));
        }
    };
    let mut behind = Vec::new();
    let mut missing = Vec::new();
    for name in &names {
        match ledgers.get(name) {
            Some(Ledger::NoSchema) | None => missing.push(name.clone()),
            Some(ledger) if !ledger.pending(&set).is_empty() => behind.push(name.clone()),
            Some(_) => {}
        }
    }
    let some = |list: &[String]| {
        let mut text = list.iter().take(10).cloned().collect::<Vec<_>>().join(", ");
        if list.len() > 10 {
            text.push_str(&format!(" and {} more", list.len() - 10));
        }
        text
    };
    let behind_item = if behind.is_empty() {
        CheckItem::pass(
            "schemas_behind",
            format!(
                "all {} tenant schema(s) have the {} migrations of tenant migration set {}",
                names.len() - missing.len(),
                set.len(),
                set.version()
            ),
        )
    } else {
        CheckItem::fail(
            "schemas_behind",
            format!(
                "{} tenant schema(s) lack migrations of tenant migration set {}: {}",
                behind.len(),
                set.version(),
                some(&behind)
            ),
            "run `provision migrate --all --wait`",
        )
    };
    let orphans_item = match (missing.first(), unregistered.first()) {
        (None, None) => CheckItem::pass(
            "orphans",
            "every tenant row has its schema, and every tenant schema its row",
        ),
        (Some(row), _) => CheckItem::fail(
            "orphans",
            orphan_detail(&missing, &unregistered, &some),
            format!(
                "for a tenant row without its schema: `python manage.py create_missing_schemas` \
                 (django-tenants) makes its schema as Django does, or \
                 `python manage.py delete_tenant --schema={row} --noinput` removes the row"
            ),
        ),
        (None, Some(schema)) => CheckItem::fail(
            "orphans",
            orphan_detail(&missing, &unregistered, &some),
            format!(
                "for a schema without its tenant row: register it (Django admin, Clients → Add, \
                 schema name {schema}), or back it up and drop it: \
                 `pg_dump -n {schema} -Fc -f {schema}.dump` then `DROP SCHEMA \"{schema}\" CASCADE`"
            ),
        ),
    };
    (behind_item, orphans_item)
}

fn orphan_detail(missing: &[String], unregistered: &[String], some: &dyn Fn(&[String]) -> String) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!(
            "{} tenant row(s) without a schema: {}",
            missing.len(),
            some(missing)
        ));
    }
    if !unregistered.is_empty() {
        parts.push(format!(
            "{} schema(s) with a django_migrations table and no tenant row: {}",
            unregistered.len(),
            some(unregistered)
        ));
    }
    parts.join("; ")
}
