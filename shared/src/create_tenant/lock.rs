//! The per-tenant advisory lock a `CreateTenant` job holds while it runs the
//! tenant's steps, so two workers never interleave them; taken in the same
//! message that counts the job's execution.

use sqlx::pool::PoolConnection;
use sqlx::{FromRow, PgConnection, PgPool, Postgres, Row};

use crate::error::ProvisionError;
use crate::locks::advisory_key;
use crate::sql::{Ident, Marker, Script};

/// Holds the per-tenant advisory lock on its own connection. If dropped
/// without [`TenantLock::release`] (a cancelled job), the connection is
/// closed rather than returned to the pool, so the lock cannot leak.
pub(super) struct TenantLock {
    conn: Option<PoolConnection<Postgres>>,
    key: i64,
    /// A script that ended with [`TenantLock::write_unlock`] got that far.
    pub(super) unlocked_by_script: bool,
}

/// What a job found when it took the tenant's lock.
pub(super) enum Begun {
    /// The tenant is not final: its row, with this execution counted.
    Row(TenantRow),
    /// The tenant is final (its state), or unknown (`None`).
    Final(Option<String>),
}

/// The tenant's row, as a job sees it when it starts.
#[derive(Debug, Clone, FromRow)]
pub(super) struct TenantRow {
    pub(super) state: String,
    /// Executions of the current step, this one counted.
    pub(super) attempt: i32,
    pub(super) tenant_name: String,
    pub(super) domain: String,
    pub(super) admin_email: String,
    pub(super) admin_password_hash: Option<String>,
    pub(super) trial_days: i32,
    pub(super) last_error: Option<String>,
}

impl TenantLock {
    /// Takes the tenant's lock and, if it got it, counts this execution, in
    /// one message. The count commits without waiting for the disk: only a
    /// server crash could lose it, and with it one attempt's count. `None`
    /// when another job holds the lock.
    pub(super) async fn try_begin(
        pool: &PgPool,
        schema: &Ident,
    ) -> Result<Option<(Self, Begun)>, ProvisionError> {
        let mut conn = pool.acquire().await?;
        let key = advisory_key("tenant", schema.name());
        let mut script = Script::new();
        script
            .sql("BEGIN;\nSET LOCAL synchronous_commit TO off;\nWITH lock AS (SELECT pg_try_advisory_lock(");
        script.int(key).sql(
            ") AS held),
             started AS (
                 UPDATE public.provision_tenant SET attempt = attempt + 1, updated_at = now()
                 WHERE schema_name = ",
        );
        script.text(schema.name()).sql(
            " AND state NOT IN ('ready', 'failed') AND (SELECT held FROM lock)
                 RETURNING state, attempt, tenant_name, domain, admin_email, admin_password_hash,
                           trial_days, last_error)\n",
        );
        let begun: Marker<bool> = script.marker_with_columns(
            |s| {
                s.sql("(SELECT held FROM lock)");
            },
            |s| {
                s.sql("(SELECT state FROM public.provision_tenant WHERE schema_name = ")
                    .text(schema.name())
                    .sql(") AS found_state, started.* FROM lock LEFT JOIN started ON true");
            },
        );
        script.sql("COMMIT;\n");
        let output = script.finish()?.run(&mut conn).await.map_err(|f| f.error)?;
        let row = output
            .row(begun)
            .ok_or_else(|| ProvisionError::Contended("taking the tenant's lock returned nothing".into()))?;
        if !row.try_get::<bool, _>(0)? {
            return Ok(None);
        }
        let begun = if row.try_get::<Option<String>, _>("state")?.is_some() {
            Begun::Row(TenantRow::from_row(row)?)
        } else {
            Begun::Final(row.try_get("found_state")?)
        };
        let lock = Self {
            conn: Some(conn),
            key,
            unlocked_by_script: false,
        };
        Ok(Some((lock, begun)))
    }

    /// The connection the lock is held on, which runs the steps.
    pub(super) fn conn(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("lock is held")
    }

    /// The statement that releases the lock, for the end of a script; its
    /// marker says the script got that far.
    pub(super) fn write_unlock(&self, script: &mut Script) -> Marker<bool> {
        script.marker(|s| {
            s.sql("pg_advisory_unlock(").int(self.key).sql(")");
        })
    }

    pub(super) async fn release(mut self) -> Result<(), ProvisionError> {
        if !self.unlocked_by_script {
            let key = self.key;
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(key)
                .execute(self.conn())
                .await?;
        }
        self.conn.take();
        Ok(())
    }
}

impl Drop for TenantLock {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            conn.close_on_drop();
        }
    }
}
