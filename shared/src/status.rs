//! What operators read: one tenant's status and the list of tenants. The
//! answers to the guide's monitoring snippets (trial days left, buildings and
//! users per tenant) in one query each.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::error::ProvisionError;
use crate::ledger::{Ledger, read_ledger};
use crate::lifecycle::{LifecycleDetail, lifecycle_detail};
use crate::migration_set::MigrationSet;
use crate::sql::{Ident, Marker, Script};
use crate::tenant_search::TenantFilter;

/// The state shown for a tenant that exists in `tenants_client` but was not
/// provisioned by this project (the public tenant, or one made by hand).
pub const EXTERNAL_STATE: &str = "external";

/// A domain of a tenant.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, sqlx::FromRow)]
pub struct DomainInfo {
    /// The host name.
    pub domain: String,
    /// Whether it is the tenant's primary domain.
    pub is_primary: bool,
}

/// A tenant's migrations against the set in force, read from its own
/// `django_migrations`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MigrationInfo {
    /// The set's migrations its ledger records.
    pub applied: i32,
    /// The set's migrations.
    pub latest: i32,
    /// The set in force (its version).
    pub set_version: i32,
    /// The set's migrations it lacks, `app.name`, in plan order.
    pub pending: Vec<String>,
    /// Whether the schema exists and has a `django_migrations` table.
    pub has_ledger: bool,
}

/// One entry of a tenant's history.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, sqlx::FromRow)]
pub struct HistoryEntry {
    /// Its order among all events.
    pub id: i64,
    /// The state after the event.
    pub state: String,
    /// The state before it (`None` for the request itself).
    pub from_state: Option<String>,
    /// The step or action.
    pub step: String,
    /// When.
    pub at: DateTime<Utc>,
    /// Which execution of the step.
    pub attempt: i32,
    /// The error, for a failure or a retry.
    pub error: Option<String>,
    /// What an operator's action changed.
    pub detail: Option<String>,
    /// Who: a worker's name or an operator.
    pub actor: String,
    /// For a lifecycle event: the lifecycle row's state after it.
    pub lifecycle_state: Option<String>,
}

/// Everything `provision status` shows.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TenantStatus {
    /// The schema.
    pub schema_name: String,
    /// The display name.
    pub name: String,
    /// The provisioning state (or `external`).
    pub state: String,
    /// How the tenant was made: `provision` (by this project) or
    /// `platform` (by hand, the Django admin, `Client.save()`); `public`
    /// for the public tenant.
    pub made_by: String,
    /// Whether its `tenants_client` row is gone (the platform deleted the
    /// tenant, or this project did); its history is kept.
    pub gone: bool,
    /// Where it stands: see [`crate::lifecycle::Lifecycle`].
    pub lifecycle: String,
    /// Its lifecycle row: why and by whom it was suspended, when its
    /// deletion is due, its backup (`None`: never suspended or deleted).
    pub lifecycle_detail: Option<LifecycleDetail>,
    /// Whether its schema exists.
    pub schema_exists: bool,
    /// The step that failed, while failed.
    pub failed_step: Option<String>,
    /// The last error seen.
    pub last_error: Option<String>,
    /// Executions of the current step.
    pub attempt: i32,
    /// The domains, primary first.
    pub domains: Vec<DomainInfo>,
    /// `tenants_client.is_active` (false until ready).
    pub is_active: Option<bool>,
    /// `tenants_client.on_trial`.
    pub on_trial: Option<bool>,
    /// `tenants_client.paid_until`.
    pub paid_until: Option<NaiveDate>,
    /// Days from today (UTC) to `paid_until`; negative once expired.
    pub days_remaining: Option<i64>,
    /// `tenants_client.created_on`.
    pub created_on: Option<NaiveDate>,
    /// Buildings in the schema (None before its tables exist).
    pub buildings: Option<i64>,
    /// Users in the schema (None before its tables exist).
    pub users: Option<i64>,
    /// Demo data: skipped, pending, seeded or failed.
    pub demo_data: Option<String>,
    /// Its migrations against the set in force (none for the public
    /// tenant, whose schema holds the shared apps' tables: `migrate --shared`
    /// applies this project's public migrations).
    pub migration: Option<MigrationInfo>,
    /// The id of the latest job pushed for it.
    pub job_id: Option<String>,
    /// Every transition and event, oldest first.
    pub history: Vec<HistoryEntry>,
}

#[derive(sqlx::FromRow)]
struct StatusRow {
    schema_name: String,
    name: String,
    state: Option<String>,
    failed_step: Option<String>,
    last_error: Option<String>,
    attempt: Option<i32>,
    is_active: Option<bool>,
    on_trial: Option<bool>,
    paid_until: Option<NaiveDate>,
    created_on: Option<NaiveDate>,
    demo_data: Option<String>,
    job_id: Option<String>,
    in_client: bool,
    lifecycle: String,
    has_tables: bool,
}

/// The status of one tenant against the migration set `set` (none before
/// the first import: its migrations are then not shown); `today` is the
/// date days remaining count from (UTC today, for operators).
pub async fn tenant_status(
    pool: &PgPool,
    schema_name: &str,
    set: Option<&MigrationSet>,
    today: NaiveDate,
) -> Result<TenantStatus, ProvisionError> {
    let row: Option<StatusRow> = sqlx::query_as(
        "SELECT k.schema_name,
                coalesce(c.name, p.tenant_name, l.tenant_name) AS name,
                p.state, p.failed_step, p.last_error, p.attempt,
                c.is_active, c.on_trial, c.paid_until,
                c.created_on, p.demo_data_state AS demo_data, p.job_id,
                c.schema_name IS NOT NULL AS in_client,
                public.provision_lifecycle_of(p.state, l.state, l.failed_step,
                                              c.schema_name IS NOT NULL, c.is_active) AS lifecycle,
                to_regclass(quote_ident($1) || '.users_customuser') IS NOT NULL
                    AND to_regclass(quote_ident($1) || '.buildings_building') IS NOT NULL AS has_tables
         FROM (SELECT $1::text AS schema_name) AS k
         LEFT JOIN public.provision_tenant p ON p.schema_name = k.schema_name
         LEFT JOIN public.tenants_client c ON c.schema_name = k.schema_name
         LEFT JOIN public.provision_lifecycle l ON l.schema_name = k.schema_name
         WHERE p.schema_name IS NOT NULL OR c.schema_name IS NOT NULL OR l.schema_name IS NOT NULL",
    )
    .bind(schema_name)
    .fetch_optional(pool)
    .await?;
    let row = row.ok_or_else(|| ProvisionError::UnknownTenant(schema_name.to_owned()))?;
    let domains: Vec<DomainInfo> = sqlx::query_as(
        "SELECT d.domain, d.is_primary FROM public.tenants_domain d
         JOIN public.tenants_client c ON c.id = d.tenant_id
         WHERE c.schema_name = $1 ORDER BY d.is_primary DESC, d.domain",
    )
    .bind(schema_name)
    .fetch_all(pool)
    .await?;
    let public = schema_name == "public";
    let (buildings, users) = if row.has_tables && !public {
        let schema = Ident::existing_schema(schema_name)?;
        let mut script = Script::new();
        let buildings: Marker<i64> = script.marker(|s| {
            s.sql("(SELECT count(*) FROM ")
                .ident(&schema)
                .sql(".buildings_building)");
        });
        let users: Marker<i64> = script.marker(|s| {
            s.sql("(SELECT count(*) FROM ")
                .ident(&schema)
                .sql(".users_customuser)");
        });
        let mut conn = pool.acquire().await?;
        let output = script.finish()?.run(&mut conn).await.map_err(|f| f.error)?;
        (output.get(buildings).transpose()?, output.get(users).transpose()?)
    } else {
        (None, None)
    };
    let history = tenant_history(pool, schema_name, 0).await?;
    let ledger = match set {
        Some(set) if !public => Some((set, read_ledger(pool, set, schema_name).await?)),
        _ => None,
    };
    let made_by = match (public, row.state.is_some()) {
        (true, _) => "public",
        (false, true) => "provision",
        (false, false) => "platform",
    };
    Ok(TenantStatus {
        schema_name: row.schema_name,
        name: row.name,
        state: row.state.unwrap_or_else(|| EXTERNAL_STATE.to_owned()),
        made_by: made_by.to_owned(),
        gone: !row.in_client,
        lifecycle: row.lifecycle,
        lifecycle_detail: lifecycle_detail(pool, schema_name).await?,
        schema_exists: public || schema_exists(pool, schema_name).await?,
        failed_step: row.failed_step,
        last_error: row.last_error,
        attempt: row.attempt.unwrap_or(0),
        domains,
        is_active: row.is_active,
        on_trial: row.on_trial,
        paid_until: row.paid_until,
        days_remaining: row.paid_until.map(|paid| (paid - today).num_days()),
        created_on: row.created_on,
        buildings,
        users,
        demo_data: row.demo_data,
        migration: ledger.map(|(set, ledger)| MigrationInfo {
            applied: i32::try_from(ledger.applied_count()).unwrap_or(i32::MAX),
            latest: i32::try_from(set.len()).unwrap_or(i32::MAX),
            set_version: set.version(),
            pending: ledger
                .pending(set)
                .into_iter()
                .filter_map(|p| set.member(p).map(|m| m.key()))
                .collect(),
            has_ledger: matches!(ledger, Ledger::Applied(_)),
        }),
        job_id: row.job_id,
        history,
    })
}

async fn schema_exists(pool: &PgPool, schema_name: &str) -> Result<bool, ProvisionError> {
    Ok(
        sqlx::query_scalar("SELECT to_regnamespace(quote_ident($1)) IS NOT NULL")
            .bind(schema_name)
            .fetch_one(pool)
            .await?,
    )
}

/// The tenant's history entries after the one numbered `after_id` (0: all),
/// oldest first.
pub async fn tenant_history(
    pool: &PgPool,
    schema_name: &str,
    after_id: i64,
) -> Result<Vec<HistoryEntry>, ProvisionError> {
    let entries = sqlx::query_as(
        "SELECT id, to_state AS state, from_state, step, at, attempt, error, detail, actor, lifecycle_state
         FROM public.provision_event WHERE schema_name = $1 AND id > $2 ORDER BY id",
    )
    .bind(schema_name)
    .bind(after_id)
    .fetch_all(pool)
    .await?;
    Ok(entries)
}

/// One line of `provision list`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, sqlx::FromRow)]
pub struct TenantListEntry {
    /// The schema.
    pub schema_name: String,
    /// The display name.
    pub name: String,
    /// The provisioning state (or `external`).
    pub state: String,
    /// Where it stands: see [`crate::lifecycle::Lifecycle`].
    pub lifecycle: String,
    /// The primary domain, if any.
    pub primary_domain: Option<String>,
    /// When its provisioning or lifecycle last changed (or its creation day).
    pub updated_at: DateTime<Utc>,
}

/// Every tenant that passes `filter`, newest first.
pub async fn list_tenants(
    pool: &PgPool,
    filter: &TenantFilter,
) -> Result<Vec<TenantListEntry>, ProvisionError> {
    crate::tenant_search::list_matching(pool, filter).await
}
