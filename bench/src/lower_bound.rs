//! The floors every figure is compared with: the same SQL effect done by
//! plain sessions in the cheapest way PostgreSQL allows, one transaction
//! per schema sent as one round trip (the simple-query protocol, several
//! statements in one message), on dedicated connections opened before the
//! clock starts. No queue, no state machine, no history, no locks, no
//! bookkeeping beyond what the result needs. Whatever the system spends
//! above this is its own overhead; below it nothing can go on this server.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use provision_shared::migration_set::{Member, MigrationSet};
use provision_shared::sql::{BuiltScript, Ident, Script};
use sqlx::{Connection, PgConnection};

use crate::fixtures;
use crate::progress::Progress;

/// Turns an item (a schema name) into the one script that does its work.
/// Values go in as literals: the floor has to send them inline, since bind
/// parameters need the extended protocol, one message per statement, which
/// is the round-trip cost the floor leaves out.
pub(crate) type MakeSql = Arc<dyn Fn(&str) -> BuiltScript + Send + Sync>;

/// The migration the migrate-all benchmark applies, number `k`, as
/// `sqlmigrate` prints the platform model's next migration for a tenant: a
/// nullable field with an index (`AddField(..., db_index=True)`), named by
/// `k` so every measurement has a new one to apply.
pub(crate) fn add_column(k: usize) -> String {
    format!(
        "--\n-- Add field bench_col_{k} to building\n--\n\
         ALTER TABLE \"buildings_building\" ADD COLUMN \"bench_col_{k}\" varchar(20) NULL;\n\
         CREATE INDEX \"buildings_building_bench_col_{k}_idx\" ON \"buildings_building\" (\"bench_col_{k}\");\n\
         CREATE INDEX \"buildings_building_bench_col_{k}_like\" ON \"buildings_building\" (\"bench_col_{k}\" varchar_pattern_ops);"
    )
}

fn schema_ident(schema: &str) -> Ident {
    Ident::tenant_schema(schema).expect("the bench names its schemas validly")
}

/// One migration and its ledger row in `schema`, as one transaction in one
/// message, with the search path django-tenants gives a migration.
pub(crate) fn in_schema(schema: &str, member: &Member) -> BuiltScript {
    let ident = schema_ident(schema);
    let mut script = Script::new();
    script
        .sql("BEGIN;\nSET LOCAL search_path TO ")
        .ident(&ident)
        .sql(", public;\n");
    script.reviewed(&member.sql);
    script
        .sql("INSERT INTO ")
        .ident(&ident)
        .sql(".django_migrations (app, name, applied) VALUES (");
    script
        .text(&member.app)
        .sql(", ")
        .text(&member.name)
        .sql(", now());\nCOMMIT;");
    script.finish().expect("the bench's values hold no NUL")
}

/// Everything a ready tenant is, as one transaction in one message: its
/// `tenants_client` row (active at once) and primary domain, the schema
/// with Django's ledger table, every migration of the set and its ledger
/// row, the content types and permissions Django leaves, and the admin
/// user. What the worker's five steps leave behind, minus the provisioning
/// state and history.
pub(crate) fn tenant(schema: &str, hash: &str, set: &MigrationSet) -> BuiltScript {
    let ident = schema_ident(schema);
    let mut script = Script::new();
    script.sql(
        "BEGIN;
WITH client AS (
    INSERT INTO public.tenants_client
        (schema_name, name, paid_until, on_trial, is_active, trial_days, created_on)
    VALUES (",
    );
    script.text(schema).sql(", ").text(&format!("Bench {schema}"));
    script.sql(
        ", (now() AT TIME ZONE 'UTC')::date + 30, true, true, 30,
            (now() AT TIME ZONE 'UTC')::date)
    RETURNING id)
INSERT INTO public.tenants_domain (domain, tenant_id, is_primary) SELECT ",
    );
    script
        .text(&fixtures::domain(schema))
        .sql(", id, true FROM client;\nCREATE SCHEMA ");
    script
        .ident(&ident)
        .sql(";\nSET LOCAL search_path TO ")
        .ident(&ident)
        .sql(", public;\n");
    script.reviewed(set.ledger_table_sql());
    for m in set.members() {
        script.reviewed(&m.sql);
    }
    script.sql("INSERT INTO django_migrations (app, name, applied) VALUES ");
    script.join(set.members(), ", ", |s, m| {
        s.sql("(").text(&m.app).sql(", ").text(&m.name).sql(", now())");
    });
    script.sql(";\nINSERT INTO django_content_type (app_label, model) VALUES ");
    script.join(set.content_types(), ", ", |s, ct| {
        s.sql("(").text(&ct.app_label).sql(", ").text(&ct.model).sql(")");
    });
    script.sql(";\nINSERT INTO auth_permission (name, content_type_id, codename)\n SELECT p.name, ct.id, p.codename FROM (VALUES ");
    script.join(set.permissions().iter().enumerate(), ", ", |s, (i, p)| {
        s.sql("(")
            .int(i64::try_from(i).unwrap_or(0))
            .sql(", ")
            .text(&p.app_label)
            .sql(", ")
            .text(&p.model)
            .sql(", ")
            .text(&p.codename)
            .sql(", ")
            .text(&p.name)
            .sql(")");
    });
    script.sql(
        ") AS p(ord, app_label, model, codename, name)
 JOIN django_content_type ct ON ct.app_label = p.app_label AND ct.model = p.model ORDER BY p.ord;
INSERT INTO users_customuser
    (password, last_login, is_superuser, email, first_name, last_name, role,
     is_staff, is_active, email_verified, date_joined)
VALUES (",
    );
    script
        .text(hash)
        .sql(", NULL, true, ")
        .text(&fixtures::admin_email(schema));
    script.sql(", '', '', 'admin', true, true, true, now());\nCOMMIT;");
    script.finish().expect("the bench's values hold no NUL")
}

/// A dedicated connection, not a pool's: nothing is checked out, reset or
/// recycled behind the floor's back.
pub(crate) async fn session(url: &str) -> anyhow::Result<PgConnection> {
    PgConnection::connect(url)
        .await
        .context("connecting a lower-bound session")
}

/// Runs `script` on `conn` and returns how long it took.
pub(crate) async fn time_one(conn: &mut PgConnection, script: BuiltScript) -> anyhow::Result<Duration> {
    let started = Instant::now();
    script
        .run(conn)
        .await
        .map_err(|f| f.error)
        .context("lower-bound statement")?;
    Ok(started.elapsed())
}

/// How a lower-bound run went: when each item finished, from the start.
#[derive(Debug)]
pub(crate) struct SessionsRun {
    /// Completion times since the start, in order.
    pub(crate) finished: Vec<Duration>,
}

impl SessionsRun {
    /// From the start until the last item finished.
    pub(crate) fn total(&self) -> Duration {
        self.finished.last().copied().unwrap_or_default()
    }
}

/// Runs `make_sql(item)` for every item on `sessions` dedicated
/// connections, each taking the next item as soon as it is free (the best
/// split there is). With `recycle_every`, a session reconnects after that
/// many items, the cure for per-connection cache growth; the reconnect is
/// timed with the rest.
pub(crate) async fn run_on_sessions(
    url: &str,
    sessions: usize,
    items: Vec<String>,
    label: &str,
    make_sql: MakeSql,
    recycle_every: Option<usize>,
) -> anyhow::Result<SessionsRun> {
    let total = items.len();
    let mut conns = Vec::with_capacity(sessions);
    for _ in 0..sessions.max(1) {
        conns.push(session(url).await?);
    }
    let items = Arc::new(items);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in conns {
        let (items, next, done, make_sql, url) = (
            items.clone(),
            next.clone(),
            done.clone(),
            make_sql.clone(),
            url.to_owned(),
        );
        tasks.spawn(async move {
            let mut finished = Vec::new();
            let mut since_connect = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else {
                    conn.close().await.ok();
                    return Ok::<_, anyhow::Error>(finished);
                };
                if recycle_every.is_some_and(|every| since_connect >= every) {
                    conn.close().await.ok();
                    conn = session(&url).await?;
                    since_connect = 0;
                }
                make_sql(item)
                    .run(&mut conn)
                    .await
                    .map_err(|f| f.error)
                    .with_context(|| format!("lower bound for {item}"))?;
                since_connect += 1;
                finished.push(started.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let mut progress = Progress::new(label, total);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut finished = Vec::with_capacity(total);
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => break,
                Some(result) => finished.extend(result.context("a session panicked")??),
            },
            _ = tick.tick() => progress.show(done.load(Ordering::Relaxed)),
        }
    }
    progress.finish(done.load(Ordering::Relaxed));
    finished.sort();
    Ok(SessionsRun { finished })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_is_one_transaction_with_every_migration() {
        let set = MigrationSet::built_in();
        let script = tenant("b_00001", "argon2$argon2id$x", &set);
        let sql = script.text();
        assert!(sql.starts_with("BEGIN;") && sql.ends_with("COMMIT;"));
        assert!(sql.contains("CREATE SCHEMA \"b_00001\""));
        assert!(sql.contains("b-00001.bench.newconcierge.app"));
        for m in set.members() {
            assert!(sql.contains(m.sql.as_str().trim_end()));
        }
    }
}
