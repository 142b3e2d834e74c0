//! The SQL of a tenant's steps: one generator, [`write_steps`], for any run
//! of consecutive steps as one transaction. A job's first try sends every
//! step left this way; a step that runs again is sent alone, the same
//! generator with one step.

use chrono::{DateTime, Utc};

use crate::error::ProvisionError;
use crate::ledger::Ledger;
use crate::migration_set::MigrationSet;
use crate::sql::{Ident, Marker, Script};
use crate::state::{Step, TenantState};
use crate::tenant_migration::{Target, write_migrations};

use super::lock::TenantRow;

/// One step to run: from which state to which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Planned {
    pub(super) step: Step,
    pub(super) from: TenantState,
    pub(super) to: TenantState,
}

/// The steps from `state` on, at most `max_steps`.
pub(super) fn plan(mut state: TenantState, max_steps: usize) -> Vec<Planned> {
    let mut planned = Vec::new();
    while let Some((step, next)) = state.next_step() {
        if planned.len() == max_steps {
            break;
        }
        planned.push(Planned {
            step,
            from: state,
            to: next,
        });
        state = next;
    }
    planned
}

/// What the steps are written from.
pub(super) struct Tenant<'a> {
    pub(super) schema: &'a Ident,
    pub(super) row: &'a TenantRow,
    pub(super) migrations: &'a MigrationSet,
    pub(super) actor: &'a str,
}

/// What a script of steps reports.
pub(super) struct StepMarkers {
    /// The server's clock before the transaction began.
    pub(super) started_at: Marker<DateTime<Utc>>,
    /// The server's clock after each step's effect, in order.
    pub(super) done_at: Vec<Marker<DateTime<Utc>>>,
    /// The guarded state change: the tenant's demo data state as it saw it.
    pub(super) moved: Marker<Option<String>>,
}

/// The name of the transaction-local setting that keeps when `step` was
/// done, for its history row.
fn done_setting(step: Step) -> &'static str {
    match step {
        Step::Register => "'provision.done_register'",
        Step::CreateSchema => "'provision.done_create_schema'",
        Step::Migrate => "'provision.done_migrate'",
        Step::CreateAdmin => "'provision.done_create_admin'",
        Step::Activate => "'provision.done_activate'",
    }
}

/// Writes `planned` as one transaction: each step's effect followed by the
/// time it was done, then one guarded state change from the first state to
/// the last that records a history row per step. `ledger` is what the
/// schema's `django_migrations` holds before the `migrate` step, which
/// applies what it lacks (`None`: the migrations were sent before, one
/// transaction each); `attempt` is the execution of the first step (the others run for
/// the first time). One transaction rather than one per step: a crash
/// leaves the tenant as it was, and the state changes and history of five
/// steps cost one statement instead of five, which PostgreSQL must parse
/// and plan anew in a script (bench/README.md).
pub(super) fn write_steps(
    script: &mut Script,
    tenant: &Tenant<'_>,
    planned: &[Planned],
    attempt: i32,
    ledger: Option<&Ledger>,
) -> Result<StepMarkers, ProvisionError> {
    let (first, last) = match (planned.first(), planned.last()) {
        (Some(first), Some(last)) => (*first, *last),
        _ => {
            return Err(ProvisionError::Contended("no step is left to run".into()));
        }
    };
    let started_at = script.marker(|s| {
        s.sql("clock_timestamp()");
    });
    script.sql("BEGIN;\n");
    // Only `ready` must be on disk before anyone hears of it. A server
    // crash may lose an earlier state's commit, but always together with
    // its effect, and the step runs again; the `ready` commit flushes every
    // earlier one.
    if last.to != TenantState::Ready {
        script.sql("SET LOCAL synchronous_commit TO off;\n");
    }
    let mut done_at = Vec::with_capacity(planned.len());
    for p in planned {
        write_effect(script, tenant, p.step, ledger)?;
        done_at.push(script.marker(|s| {
            s.sql("set_config(")
                .sql(done_setting(p.step))
                .sql(", clock_timestamp()::text, true)::timestamptz");
        }));
    }
    let moved = write_transition(script, tenant, first.from, last.to, planned, attempt);
    script.sql("COMMIT;\n");
    Ok(StepMarkers {
        started_at,
        done_at,
        moved,
    })
}

/// What one step does to the database.
fn write_effect(
    script: &mut Script,
    tenant: &Tenant<'_>,
    step: Step,
    ledger: Option<&Ledger>,
) -> Result<(), ProvisionError> {
    let row = tenant.row;
    let name = tenant.schema.name();
    match step {
        Step::Register => {
            let days = i64::from(row.trial_days);
            script.sql(
                "WITH client AS (
                     INSERT INTO public.tenants_client
                         (schema_name, name, paid_until, on_trial, is_active, trial_days, created_on)
                     VALUES (",
            );
            script.text(name).sql(", ").text(&row.tenant_name);
            script
                .sql(", (now() AT TIME ZONE 'UTC')::date + ")
                .int(days)
                .sql(", ");
            script.bool(days > 0).sql(", false, ").int(days);
            script.sql(
                ", (now() AT TIME ZONE 'UTC')::date)
                     RETURNING id),
                 primary_domain AS (
                     INSERT INTO public.tenants_domain (domain, tenant_id, is_primary)
                     SELECT ",
            );
            script
                .text(&row.domain)
                .sql(", id, true FROM client)\n SELECT 1;\n");
        }
        Step::CreateSchema => {
            script.sql("CREATE SCHEMA ").ident(tenant.schema).sql(";\n");
        }
        Step::Migrate => {
            if let Some(ledger) = ledger {
                let target = [Target {
                    ident: tenant.schema,
                    ledger,
                }];
                write_migrations(script, tenant.migrations, &target, None, None)?;
            }
        }
        Step::CreateAdmin => {
            let Some(hash) = row.admin_password_hash.as_deref() else {
                return Err(ProvisionError::WrongState(
                    "the admin password hash is gone before the admin was created".into(),
                ));
            };
            // Every column Django's model declares NOT NULL, given, as the
            // table has no defaults; the email as Django's `create_user`
            // normalizes it.
            script.sql("INSERT INTO ").ident(tenant.schema).sql(
                ".users_customuser
                     (password, last_login, is_superuser, email, first_name, last_name, role,
                      is_staff, is_active, email_verified, date_joined)
                 VALUES (",
            );
            script
                .text(hash)
                .sql(", NULL, true, ")
                .text(&normalize_email(&row.admin_email));
            script.sql(", '', '', 'admin', true, true, true, now())\n ON CONFLICT (email) DO NOTHING;\n");
        }
        Step::Activate => {
            script
                .sql("UPDATE public.tenants_client SET is_active = true WHERE schema_name = ")
                .text(name)
                .sql(";\n");
        }
    }
    Ok(())
}

/// `email` as Django's `BaseUserManager.normalize_email` writes it: the
/// domain part in lower case.
fn normalize_email(email: &str) -> String {
    match email.rsplit_once('@') {
        Some((local, domain)) => format!("{local}@{}", domain.to_lowercase()),
        None => email.to_owned(),
    }
}

/// Moves the tenant from `from` to `to` and records a history row for each
/// of `planned`: one guarded statement, which stops the script
/// ([`crate::names::sqlstate::GUARD_FAILED`]) if someone else moved the
/// tenant meanwhile.
fn write_transition(
    script: &mut Script,
    tenant: &Tenant<'_>,
    from: TenantState,
    to: TenantState,
    planned: &[Planned],
    attempt: i32,
) -> Marker<Option<String>> {
    let ready = to == TenantState::Ready;
    let drops_hash = matches!(to, TenantState::AdminCreated | TenantState::Ready);
    let name = tenant.schema.name();
    script.sql("WITH moved AS (\n UPDATE public.provision_tenant\n SET state = ");
    script.text(to.as_str());
    script.sql(if ready {
        ", attempt = attempt, ready_at = clock_timestamp()"
    } else {
        ", attempt = 1"
    });
    script.sql(if drops_hash {
        ", admin_password_hash = NULL"
    } else {
        ""
    });
    script.sql(", last_error = NULL, updated_at = now()\n WHERE schema_name = ");
    script.text(name).sql(" AND state = ").text(from.as_str());
    script.sql(
        "\n RETURNING schema_name, demo_data_state),
         recorded AS (
             INSERT INTO public.provision_event (schema_name, from_state, to_state, step, attempt, actor, at)
             SELECT moved.schema_name, e.from_state, e.to_state, e.step, e.attempt, ",
    );
    script.text(tenant.actor).sql(", e.at\n FROM moved, (VALUES ");
    script.join(planned.iter().enumerate(), ", ", |s, (i, p)| {
        s.sql("(")
            .text(p.from.as_str())
            .sql(", ")
            .text(p.to.as_str())
            .sql(", ")
            .text(p.step.as_str())
            .sql(", ")
            .int(i64::from(if i == 0 { attempt } else { 1 }))
            .sql(", current_setting(")
            .sql(done_setting(p.step))
            .sql(")::timestamptz)");
    });
    script.sql(") AS e(from_state, to_state, step, attempt, at))\n");
    let steps: Vec<&str> = planned.iter().map(|p| p.step.as_str()).collect();
    let message = format!(
        "tenant {name:?} left state {from} while step {} ran",
        steps.join(", ")
    );
    script.marker_with_columns(
        |s| {
            s.sql("(SELECT demo_data_state FROM moved)");
        },
        |s| {
            s.sql("public.provision_assert(EXISTS (SELECT 1 FROM moved), ")
                .text(&message)
                .sql(") AS guarded");
        },
    )
}
