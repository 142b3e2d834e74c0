//! The operator's actions: each a POST that first checks the visitor is an
//! operator and the form's CSRF token is the session's
//! ([`Visitor::authorize`]), then calls the same `shared` function as the
//! `provision` command, recording the signed-in user as the actor; the
//! outcome is shown once on the page it redirects to.
//!
//! The lifecycle actions (suspend, resume, schedule and cancel a deletion)
//! are `provision suspend`, `resume`, `delete-tenant` and `cancel-delete`:
//! `shared` refuses what the tenant's lifecycle does not allow, naming it,
//! and a deletion needs the schema name typed again, as `--confirm` does.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use provision_shared::jobs::JobKind;
use provision_shared::lifecycle::schedule::{
    DEFAULT_GRACE_DAYS, DeleteWhen, cancel_deletion, push_owed_lifecycle_job, schedule_deletion,
};
use provision_shared::lifecycle::suspend::{Switched, resume, suspend};
use provision_shared::migrate_all::{RunScope, RunStart, RunTrigger, dispatch, start_run};
use provision_shared::operator::{DomainFix, fix_domain as fix_tenant_domain};
use provision_shared::requeue::{RetryTarget, retry_and_requeue};
use provision_shared::tenant_search::failed_tenants_matching;
use provision_shared::{InvalidInput, ProvisionError, validate};
use serde::Deserialize;

use crate::dashboard::auth::{Visitor, safe_next};
use crate::dashboard::pages::tenants::{ListQuery, filter_query};
use crate::dashboard::pages::{PageError, when};
use crate::dashboard::server::AppState;

/// A form that acts and carries nothing else.
#[derive(Debug, Deserialize)]
pub(crate) struct ActionForm {
    csrf: Option<String>,
    /// Where to go afterwards (a path of this site), when not the
    /// tenant's page.
    return_to: Option<String>,
}

/// The outcome is shown on the page the action returns to, an error the
/// operator can act on too (a tenant that is not failed, a domain taken);
/// PostgreSQL or Redis out of reach is an error page.
fn outcome(visitor: &Visitor, result: Result<String, ProvisionError>) -> Result<(), PageError> {
    match result {
        Ok(text) => {
            visitor.flash(true, text);
            Ok(())
        }
        Err(e) if e.is_unreachable() => Err(e.into()),
        Err(e) => {
            visitor.flash(false, e.to_string());
            Ok(())
        }
    }
}

fn tenant_path(schema: &str) -> String {
    format!("/tenants/{schema}")
}

pub(crate) async fn retry_tenant(
    State(state): State<Arc<AppState>>,
    visitor: Visitor,
    Path(schema): Path<String>,
    Form(form): Form<ActionForm>,
) -> Result<Response, PageError> {
    let actor = visitor.authorize(form.csrf.as_deref())?;
    validate::existing_schema_name(&schema)?;
    let result = retry_and_requeue(&state.pool, &state.queue, RetryTarget::Tenant(&schema), &actor).await;
    let result = match result {
        Ok(done) => {
            if !done.migrations.is_empty() {
                // Hand the schema out now rather than at a worker's next
                // dispatch; if that fails, the worker's dispatch does it.
                if let Err(e) = dispatch(&state.pool, &state.queue).await {
                    tracing::debug!(error = %e, "could not hand out the retried migration; a worker will");
                }
            }
            let mut parts: Vec<String> = done
                .tenants
                .iter()
                .map(|t| format!("Re-queued {} from {} (job {}).", t.schema_name, t.state, t.job_id))
                .collect();
            parts.extend(
                done.migrations.iter().map(|(s, run)| {
                    format!("Re-queued the failed migration of {s} in migrate-all run {run}.")
                }),
            );
            Ok(parts.join(" "))
        }
        Err(e) => Err(e),
    };
    outcome(&visitor, result)?;
    let back = form
        .return_to
        .as_deref()
        .map_or_else(|| tenant_path(&schema), |r| safe_next(Some(r)));
    Ok(Redirect::to(&back).into_response())
}

#[derive(Debug, Deserialize)]
pub(crate) struct DomainForm {
    csrf: Option<String>,
    domain: Option<String>,
}

pub(crate) async fn fix_domain(
    State(state): State<Arc<AppState>>,
    visitor: Visitor,
    Path(schema): Path<String>,
    Form(form): Form<DomainForm>,
) -> Result<Response, PageError> {
    let actor = visitor.authorize(form.csrf.as_deref())?;
    validate::existing_schema_name(&schema)?;
    let domain = form
        .domain
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map_or_else(|| format!("{schema}.{}", state.base_domain), str::to_owned);
    let result = async {
        validate::domain(&domain)?;
        let fix = fix_tenant_domain(&state.pool, &schema, &domain, &actor).await?;
        Ok(match fix {
            DomainFix::Added => format!("Added {domain} as the primary domain of {schema}."),
            DomainFix::MadePrimary => format!("Made {domain} the primary domain of {schema}."),
            DomainFix::AlreadyPrimary => {
                format!("{domain} is already the primary domain of {schema}: nothing changed.")
            }
            DomainFix::RequestUpdated => format!(
                "{schema} is not registered yet: it will be registered with {domain} (retry it if it failed)."
            ),
        })
    }
    .await;
    outcome(&visitor, result)?;
    Ok(Redirect::to(&tenant_path(&schema)).into_response())
}

pub(crate) async fn start_migrate_all(
    State(state): State<Arc<AppState>>,
    visitor: Visitor,
    Form(form): Form<ActionForm>,
) -> Result<Response, PageError> {
    let actor = visitor.authorize(form.csrf.as_deref())?;
    let result = async {
        let set = state
            .sets
            .latest(&state.pool)
            .await?
            .ok_or(ProvisionError::NoMigrationSet)?;
        let start = start_run(
            &state.pool,
            &set,
            RunTrigger::Operator,
            RunScope::All,
            &actor,
            Some(&state.queue),
        )
        .await?;
        Ok(match start {
            RunStart::Started(id) => format!(
                "Started migrate-all run {id} to tenant migration set {} ({} migrations).",
                set.version(),
                set.len()
            ),
            RunStart::AlreadyRunning(id) | RunStart::TickTaken(id) => {
                format!("Migrate-all run {id} is already in progress.")
            }
        })
    }
    .await;
    outcome(&visitor, result)?;
    Ok(Redirect::to("/").into_response())
}

/// The bulk retry's form: the list's filter, and the count the operator
/// confirmed (the tenants retried are those failed when the form arrives).
#[derive(Debug, Deserialize)]
pub(crate) struct RetryFailedForm {
    csrf: Option<String>,
    q: Option<String>,
    state: Option<String>,
    lifecycle: Option<String>,
    expected: Option<u64>,
}

pub(crate) async fn retry_failed_matching(
    State(state): State<Arc<AppState>>,
    visitor: Visitor,
    Form(form): Form<RetryFailedForm>,
) -> Result<Response, PageError> {
    let actor = visitor.authorize(form.csrf.as_deref())?;
    let list = ListQuery {
        q: form.q,
        state: form.state,
        lifecycle: form.lifecycle,
        ..ListQuery::default()
    };
    let filter = list.filter()?;
    let result = async {
        let names = failed_tenants_matching(&state.pool, &filter).await?;
        let done = retry_and_requeue(&state.pool, &state.queue, RetryTarget::Tenants(&names), &actor).await?;
        let mut text = format!("Re-queued {} failed tenant(s).", done.tenants.len());
        if let Some(expected) = form.expected.filter(|e| *e != done.tenants.len() as u64) {
            text.push_str(&format!(
                " {expected} were failed when you confirmed; the others changed meanwhile."
            ));
        }
        Ok(text)
    }
    .await;
    outcome(&visitor, result)?;
    Ok(Redirect::to(&format!("/tenants{}", filter_query(&filter, None, None))).into_response())
}

/// A reason as typed: `None` when left empty.
fn given(text: Option<&str>) -> Option<&str> {
    text.map(str::trim).filter(|t| !t.is_empty())
}

#[derive(Debug, Deserialize)]
pub(crate) struct SuspendForm {
    csrf: Option<String>,
    reason: Option<String>,
}

/// `provision suspend`: `is_active` off, with who and why.
pub(crate) async fn suspend_tenant(
    State(state): State<Arc<AppState>>,
    visitor: Visitor,
    Path(schema): Path<String>,
    Form(form): Form<SuspendForm>,
) -> Result<Response, PageError> {
    let actor = visitor.authorize(form.csrf.as_deref())?;
    validate::existing_schema_name(&schema)?;
    let reason = given(form.reason.as_deref());
    let result = suspend(&state.pool, &schema, reason, &actor)
        .await
        .map(|switched| match switched {
            Switched::Changed => format!("Suspended {schema}: its domains are no longer served."),
            Switched::AlreadyThere => format!("{schema} was suspended already: nothing changed."),
        });
    outcome(&visitor, result)?;
    Ok(Redirect::to(&tenant_path(&schema)).into_response())
}

/// `provision resume`: served again.
pub(crate) async fn resume_tenant(
    State(state): State<Arc<AppState>>,
    visitor: Visitor,
    Path(schema): Path<String>,
    Form(form): Form<ActionForm>,
) -> Result<Response, PageError> {
    let actor = visitor.authorize(form.csrf.as_deref())?;
    validate::existing_schema_name(&schema)?;
    let result = resume(&state.pool, &schema, &actor)
        .await
        .map(|switched| match switched {
            Switched::Changed => format!("{schema} is active again: its domains are served."),
            Switched::AlreadyThere => format!("{schema} was active already: nothing changed."),
        });
    outcome(&visitor, result)?;
    Ok(Redirect::to(&tenant_path(&schema)).into_response())
}

/// The deletion's form: the schema name again, the grace period in days
/// (empty: the default; 0: now), the "no backup" checkbox and a reason.
#[derive(Debug, Deserialize)]
pub(crate) struct DeleteForm {
    csrf: Option<String>,
    confirm: Option<String>,
    grace: Option<String>,
    /// Present (whatever its value) when the box is ticked.
    no_backup: Option<String>,
    reason: Option<String>,
}

/// When the form says the deletion is due.
fn delete_when(grace: Option<&str>) -> Result<DeleteWhen, InvalidInput> {
    match given(grace) {
        None => Ok(DeleteWhen::GraceDays(DEFAULT_GRACE_DAYS)),
        Some(text) => match text.parse::<u32>() {
            Ok(0) => Ok(DeleteWhen::Now),
            Ok(days) => Ok(DeleteWhen::GraceDays(days)),
            Err(_) => Err(InvalidInput {
                field: "grace",
                rule: format!("a whole number of days, 0 for now (got {text:?}); nothing was done"),
            }),
        },
    }
}

/// `provision delete-tenant --confirm S`: suspends the tenant and
/// schedules its deletion; due now, its job is pushed here, otherwise a
/// worker pushes it when it is due.
pub(crate) async fn schedule_tenant_deletion(
    State(state): State<Arc<AppState>>,
    visitor: Visitor,
    Path(schema): Path<String>,
    Form(form): Form<DeleteForm>,
) -> Result<Response, PageError> {
    let actor = visitor.authorize(form.csrf.as_deref())?;
    validate::existing_schema_name(&schema)?;
    let result = async {
        // Schema names hold no spaces: trimming what was typed (or pasted)
        // cannot make another tenant's name match.
        if form.confirm.as_deref().map(str::trim) != Some(schema.as_str()) {
            return Err(InvalidInput {
                field: "confirm",
                rule: format!(
                    "deleting a tenant needs its schema name ({schema}) typed again in the confirm field; \
                     nothing was done"
                ),
            }
            .into());
        }
        let reason = given(form.reason.as_deref());
        if let Some(r) = reason {
            validate::reason(r)?;
        }
        let due = delete_when(form.grace.as_deref())?;
        let with_backup = form.no_backup.is_none();
        let planned = schedule_deletion(&state.pool, &schema, due, with_backup, reason, &actor).await?;
        let backup = if planned.with_backup {
            "with a backup"
        } else {
            "WITHOUT a backup"
        };
        let mut text = format!(
            "{} the deletion of {schema} ({backup}): suspended now, due {}.",
            if planned.rescheduled {
                "Rescheduled"
            } else {
                "Scheduled"
            },
            when(planned.delete_after),
        );
        if due == DeleteWhen::Now {
            // Pushed here, as the CLI does; if Redis cannot take it now,
            // a worker finds the deletion owed and pushes it.
            match push_owed_lifecycle_job(&state.pool, &state.queue, &schema, JobKind::DeleteTenant, None)
                .await
            {
                Ok(Some(id)) => text.push_str(&format!(" DeleteTenant job {id}.")),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "could not push the deletion; a worker will");
                    text.push_str(&format!(
                        " Its job could not be pushed now ({e}): a worker pushes it when it finds it owed."
                    ));
                }
            }
        } else {
            text.push_str(" Cancel the deletion to take it back until then.");
        }
        Ok(text)
    }
    .await;
    outcome(&visitor, result)?;
    Ok(Redirect::to(&tenant_path(&schema)).into_response())
}

/// `provision cancel-delete`: active again, while nothing is dropped yet.
pub(crate) async fn cancel_tenant_deletion(
    State(state): State<Arc<AppState>>,
    visitor: Visitor,
    Path(schema): Path<String>,
    Form(form): Form<ActionForm>,
) -> Result<Response, PageError> {
    let actor = visitor.authorize(form.csrf.as_deref())?;
    validate::existing_schema_name(&schema)?;
    let result = cancel_deletion(&state.pool, &schema, &actor)
        .await
        .map(|()| format!("The deletion of {schema} is cancelled; it is active again."));
    outcome(&visitor, result)?;
    Ok(Redirect::to(&tenant_path(&schema)).into_response())
}
