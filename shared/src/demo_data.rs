//! The `SeedDemoData` job: the contract's demo building with its 10
//! apartments, created once however often the job runs. Its attempts are
//! counted in `provision_tenant.demo_data_attempt` and retried by the one
//! policy of [`crate::retry`].

use sqlx::PgPool;

use crate::error::ProvisionError;
use crate::jobs::{JobKind, JobRequest, JobSink};
use crate::locks::advisory_key;
use crate::retry::{Next, RetryPolicy};
use crate::sql::{Ident, Marker, Script};
use crate::state::TenantState;
use crate::validate;

/// The contract's demo building: name, address, city, postal code.
const BUILDING: (&str, &str, &str, &str) = ("Κτίριο Demo", "Διεύθυνση 123", "Αθήνα", "10000");

/// What a `SeedDemoData` job did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedOutcome {
    /// The building and its apartments were created.
    Seeded,
    /// They had been created before (or were not asked for); nothing changed.
    AlreadySeeded,
    /// A transient error; the job was pushed again to run after this delay.
    RetryScheduled {
        /// Which attempt failed.
        attempt: i32,
        /// Milliseconds until the next.
        delay_ms: u64,
        /// The error.
        error: String,
    },
    /// Given up: recorded as `demo_data_state = 'failed'` with this error.
    Failed(String),
}

/// Runs the `SeedDemoData` job of `schema_name`.
pub async fn run_seed_demo_data<S: JobSink>(
    pool: &PgPool,
    sink: &S,
    schema_name: &str,
    actor: &str,
    policy: RetryPolicy,
) -> Result<SeedOutcome, ProvisionError> {
    let schema = Ident::tenant_schema(schema_name)?;
    // Count this attempt first, so a crash counts too.
    let counted: Option<(String, String, i32)> = sqlx::query_as(
        "UPDATE public.provision_tenant
         SET demo_data_attempt = demo_data_attempt + CASE WHEN demo_data_state = 'pending' THEN 1 ELSE 0 END
         WHERE schema_name = $1
         RETURNING state, demo_data_state, demo_data_attempt",
    )
    .bind(schema_name)
    .fetch_optional(pool)
    .await?;
    let (state, demo_state, attempt) =
        counted.ok_or_else(|| ProvisionError::UnknownTenant(schema_name.to_owned()))?;
    if demo_state != "pending" {
        return Ok(SeedOutcome::AlreadySeeded);
    }
    let state: TenantState = state.parse().map_err(ProvisionError::WrongState)?;
    if policy.exhausted(attempt) {
        let error = format!(
            "gave up after {} attempts (the worker may have crashed)",
            policy.max_attempts
        );
        mark_demo_data_failed(pool, schema_name, &error, actor).await?;
        return Ok(SeedOutcome::Failed(error));
    }
    let seeded = if matches!(
        state,
        TenantState::Migrated | TenantState::AdminCreated | TenantState::Ready
    ) {
        seed(pool, &schema, schema_name, actor).await
    } else {
        Err(ProvisionError::WrongState(format!(
            "tenant {schema_name:?} is {state}: its tables are not ready for demo data"
        )))
    };
    let error = match seeded {
        Ok(outcome) => return Ok(outcome),
        Err(e) => e,
    };
    match policy.after(attempt, &error) {
        Next::RetryAfter(delay_ms) => {
            let message = error.to_string();
            sqlx::query(
                "INSERT INTO public.provision_event (schema_name, from_state, to_state, step, attempt, error, actor)
                 SELECT schema_name, state, state, 'seed_demo_data', $2, $3, $4
                 FROM public.provision_tenant WHERE schema_name = $1",
            )
            .bind(schema_name)
            .bind(attempt)
            .bind(&message)
            .bind(actor)
            .execute(pool)
            .await?;
            let mut again = JobRequest::now(JobKind::SeedDemoData, schema_name);
            again.delay_ms = delay_ms;
            sink.push(again).await?;
            Ok(SeedOutcome::RetryScheduled {
                attempt,
                delay_ms,
                error: message,
            })
        }
        Next::GiveUp(message) => {
            mark_demo_data_failed(pool, schema_name, &message, actor).await?;
            Ok(SeedOutcome::Failed(message))
        }
    }
}

/// The seeding itself, under a lock of the schema's demo data: the
/// building unless the schema has it already, its apartments, and the
/// state change, in one transaction. Every NOT NULL column is given, as
/// Django's tables have no defaults.
async fn seed(
    pool: &PgPool,
    schema: &Ident,
    schema_name: &str,
    actor: &str,
) -> Result<SeedOutcome, ProvisionError> {
    let mut script = Script::new();
    script.sql("BEGIN;\nSELECT pg_advisory_xact_lock(");
    script.int(advisory_key("demo-data", schema_name)).sql(");\n");
    script.sql("WITH building AS (INSERT INTO ").ident(schema).sql(
        ".buildings_building (name, address, city, postal_code, apartments_count, financial_system_start_date, created_at)\n SELECT ",
    );
    script
        .text(BUILDING.0)
        .sql(", ")
        .text(BUILDING.1)
        .sql(", ")
        .text(BUILDING.2)
        .sql(", ")
        .text(BUILDING.3)
        .sql(", 10, date_trunc('month', now() AT TIME ZONE 'UTC')::date, now()\n WHERE NOT EXISTS (SELECT 1 FROM ");
    script
        .ident(schema)
        .sql(".buildings_building WHERE name = ")
        .text(BUILDING.0);
    script
        .sql(" AND address = ")
        .text(BUILDING.1)
        .sql(")\n RETURNING id),\napartments AS (INSERT INTO ");
    script.ident(schema).sql(
        ".buildings_apartment (building_id, number, floor)\n SELECT building.id, n::text, (n - 1) / 2 FROM building, generate_series(1, 10) AS n RETURNING id)\n",
    );
    let apartments: Marker<i64> = script.marker(|s| {
        s.sql("(SELECT count(*) FROM apartments)");
    });
    script.sql(
        "WITH seeded AS (
             UPDATE public.provision_tenant SET demo_data_state = 'seeded', updated_at = now()
             WHERE schema_name = ",
    );
    script.text(schema_name).sql(
        " AND demo_data_state <> 'seeded'
             RETURNING schema_name, state, demo_data_attempt)
         INSERT INTO public.provision_event (schema_name, from_state, to_state, step, attempt, actor)
         SELECT schema_name, state, state, 'seed_demo_data', demo_data_attempt, ",
    );
    script.text(actor).sql(" FROM seeded;\nCOMMIT;\n");
    let mut conn = pool.acquire().await?;
    let output = script.finish()?.run(&mut conn).await.map_err(|f| f.error)?;
    let made = output.get(apartments).transpose()?.unwrap_or(0);
    Ok(if made > 0 {
        SeedOutcome::Seeded
    } else {
        SeedOutcome::AlreadySeeded
    })
}

/// Records that seeding demo data into `schema_name` failed for good.
pub async fn mark_demo_data_failed(
    pool: &PgPool,
    schema_name: &str,
    error: &str,
    actor: &str,
) -> Result<(), ProvisionError> {
    sqlx::query(
        "WITH failed AS (
             UPDATE public.provision_tenant SET demo_data_state = 'failed', updated_at = now()
             WHERE schema_name = $1 AND demo_data_state <> 'seeded'
             RETURNING schema_name, state, demo_data_attempt)
         INSERT INTO public.provision_event (schema_name, from_state, to_state, step, attempt, error, actor)
         SELECT schema_name, state, state, 'seed_demo_data', demo_data_attempt, $2, $3 FROM failed",
    )
    .bind(schema_name)
    .bind(error)
    .bind(actor)
    .execute(pool)
    .await?;
    Ok(())
}

/// Asks for demo data on a tenant (the `seed-demo-data` command): marks it
/// pending, its attempts counted afresh, so `status` shows it is on its way;
/// a tenant still being provisioned gets it when it becomes ready.
pub async fn request_demo_data(pool: &PgPool, schema_name: &str) -> Result<TenantState, ProvisionError> {
    validate::schema_name(schema_name)?;
    let state: Option<String> = sqlx::query_scalar(
        "UPDATE public.provision_tenant
         SET demo_data_state = CASE WHEN demo_data_state = 'seeded' THEN 'seeded' ELSE 'pending' END,
             demo_data_attempt = CASE WHEN demo_data_state = 'seeded' THEN demo_data_attempt ELSE 0 END
         WHERE schema_name = $1 RETURNING state",
    )
    .bind(schema_name)
    .fetch_optional(pool)
    .await?;
    state
        .ok_or_else(|| ProvisionError::UnknownTenant(schema_name.to_owned()))?
        .parse()
        .map_err(ProvisionError::WrongState)
}
