//! One tenant: everything `provision status` shows, its history as a
//! timeline with every error in full, the migrations its schema has, its
//! lifecycle row, and the actions that apply to it. The page redraws itself
//! live, so a retry is seen through to `ready` without a reload.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use provision_shared::lifecycle::LifecycleDetail;
use provision_shared::lifecycle::schedule::{DEFAULT_GRACE_DAYS, MAX_GRACE_DAYS};
use provision_shared::migration_set::MigrationSet;
use provision_shared::status::{TenantStatus, tenant_status};
use provision_shared::tenant_search::Lifecycle;
use provision_shared::validate;

use crate::dashboard::auth::Visitor;
use crate::dashboard::pages::{
    PageError, Section, badge, count, csrf_field, html_response, layout, live_region, live_response, when,
};
use crate::dashboard::queries::failed_migration;
use crate::dashboard::server::AppState;

/// How often a tenant's page redraws its live region.
const LIVE_EVERY_MS: u32 = 1000;

/// What the page shows of a tenant.
struct TenantView {
    status: TenantStatus,
    /// Its schema's failed migration in its latest run, if any.
    failed_migration: Option<(i64, String)>,
    set: Option<MigrationSet>,
    base_domain: String,
}

async fn read(state: &AppState, schema: &str) -> Result<TenantView, PageError> {
    validate::existing_schema_name(schema).map_err(|e| PageError::not_found(e.to_string()))?;
    let set = state.sets.latest(&state.pool).await?;
    let status = tenant_status(&state.pool, schema, set.as_ref(), chrono::Utc::now().date_naive()).await?;
    let failed_migration = failed_migration(&state.pool, schema).await?;
    Ok(TenantView {
        status,
        failed_migration,
        set,
        base_domain: state.base_domain.clone(),
    })
}

pub(crate) async fn page(
    State(state): State<Arc<AppState>>,
    visitor: Visitor,
    Path(schema): Path<String>,
) -> Result<Response, PageError> {
    let view = read(&state, &schema).await?;
    let title = format!("{} ({})", view.status.name, view.status.schema_name);
    let body = html! {
        h1 { (view.status.name) " " span.sub.mono { (view.status.schema_name) } }
        (live_region("tenant-live", &format!("/tenants/{schema}/live"), LIVE_EVERY_MS, live_content(&view, &visitor)))
        (lifecycle_actions(&view, &visitor))
        p { a href="/tenants" { "← every tenant" } }
    };
    Ok(html_response(
        StatusCode::OK,
        layout(&visitor, Section::Tenants, &title, visitor.take_flash(), body),
    ))
}

/// The live region alone, for the script's redraw.
pub(crate) async fn live(
    State(state): State<Arc<AppState>>,
    visitor: Visitor,
    Path(schema): Path<String>,
) -> Result<Response, PageError> {
    let view = read(&state, &schema).await?;
    Ok(live_response(live_content(&view, &visitor)))
}

/// The lifecycle actions that apply to the tenant, for an operator: an
/// active tenant is suspended or its deletion scheduled, a suspended one
/// resumed or its deletion scheduled, one whose deletion is scheduled has
/// it cancelled; any other lifecycle (provisioning, failed, being deleted
/// or restored, deleted, gone) has none here. Outside the live region: a
/// redraw never takes what is being typed, and each action reloads the
/// page with its outcome.
fn lifecycle_actions(view: &TenantView, visitor: &Visitor) -> Markup {
    let s = &view.status;
    if !visitor.may_act() || s.made_by == "public" {
        return html! {};
    }
    let action = |name: &str| format!("/tenants/{}/{name}", s.schema_name);
    match s.lifecycle.parse::<Lifecycle>() {
        Ok(lifecycle @ (Lifecycle::Active | Lifecycle::Suspended)) => html! {
            section.card #lifecycle-actions data-lifecycle=(s.lifecycle) {
                h2 { "Lifecycle" }
                @if lifecycle == Lifecycle::Active {
                    form.actions method="post" action=(action("suspend")) data-form="suspend" {
                        (csrf_field(visitor))
                        input type="text" name="reason" maxlength="500" aria-label="Why it is suspended"
                            placeholder="reason (optional)";
                        button.secondary type="submit" data-action="suspend" { "Suspend" }
                    }
                    p.muted { "Its domains stop being served (tenants_client.is_active off) until it is resumed." }
                } @else {
                    form.actions method="post" action=(action("resume")) data-form="resume" {
                        (csrf_field(visitor))
                        button type="submit" data-action="resume" { "Resume" }
                    }
                    p.muted { "Its domains are served again." }
                }
                h2 { "Delete" }
                form.stacked method="post" action=(action("delete")) data-form="delete" {
                    (csrf_field(visitor))
                    label {
                        span { "Type " code { (s.schema_name) } " to confirm" }
                        input type="text" name="confirm" autocomplete="off" spellcheck="false" required;
                    }
                    label {
                        span { "Grace period, days (0: now)" }
                        input type="number" name="grace" min="0" max=(MAX_GRACE_DAYS)
                            value=(DEFAULT_GRACE_DAYS) required;
                    }
                    label.check {
                        input type="checkbox" name="no_backup" value="1";
                        " No backup: drop the schema without one"
                    }
                    label {
                        span { "Reason (optional)" }
                        input type="text" name="reason" maxlength="500";
                    }
                    div.actions {
                        button.danger type="submit" data-action="schedule-delete" { "Schedule deletion" }
                    }
                }
                p.muted {
                    "Suspends it now; after the grace period its schema is backed up (and the backup verified), "
                    "then dropped and its rows deleted. Until then the deletion can be cancelled."
                }
            }
        },
        Ok(Lifecycle::DeletionScheduled) => {
            let detail = s.lifecycle_detail.as_ref();
            html! {
                section.card #lifecycle-actions data-lifecycle=(s.lifecycle) {
                    h2 { "Deletion scheduled" }
                    p {
                        "Due "
                        @match detail.and_then(|d| d.delete_after) {
                            Some(due) => strong data-delete-due=(due.to_rfc3339()) { (when(due)) },
                            None => "—",
                        }
                        @match detail.and_then(|d| d.with_backup) {
                            Some(false) => ", without a backup.",
                            _ => ", with a backup.",
                        }
                    }
                    form.actions method="post" action=(action("cancel-delete")) data-form="cancel-delete" {
                        (csrf_field(visitor))
                        button type="submit" data-action="cancel-delete" { "Cancel deletion" }
                    }
                    p.muted { "Nothing is dropped yet: cancelled, it is active again and served as before." }
                }
            }
        }
        _ => html! {},
    }
}

/// What the tenant's lifecycle row says: why and by whom it was last
/// changed, when its deletion is due, its backup.
fn lifecycle_detail(lifecycle: &str, d: &LifecycleDetail) -> Markup {
    html! {
        section.card #lifecycle-detail data-lifecycle=(lifecycle) data-lifecycle-state=(d.state) {
            h2 { "Lifecycle " (badge(lifecycle)) }
            dl.facts {
                @if d.state != lifecycle {
                    dt { "step state" } dd { (d.state) }
                }
                dt { "reason" }
                dd data-lifecycle-reason { (d.reason.as_deref().unwrap_or("—")) }
                dt { "changed by" }
                dd data-lifecycle-by=(d.changed_by) { (d.changed_by) span.when { " · " (when(d.changed_at)) } }
                @if let Some(due) = d.delete_after {
                    dt { "deletion due" } dd data-delete-after=(due.to_rfc3339()) { (when(due)) }
                }
                @if let Some(with_backup) = d.with_backup {
                    dt { "with a backup" } dd data-with-backup=(with_backup) { @if with_backup { "yes" } @else { "no" } }
                }
                @if let Some(path) = &d.backup_path {
                    dt { "backup" }
                    dd.mono data-backup-path { (path) }
                    @if let Some(bytes) = d.backup_bytes {
                        dt { "backup size" } dd { (count(bytes)) " bytes" }
                    }
                    dt { "SHA-256" }
                    dd.mono.break data-backup-sha256 { (d.backup_sha256.as_deref().unwrap_or("not verified yet")) }
                }
                @if let Some(at) = d.deleted_at {
                    dt { "deleted at" } dd { (when(at)) }
                }
                @if let Some(step) = &d.failed_step {
                    dt { "failed at" } dd { (step) }
                }
            }
            @if let Some(error) = &d.last_error {
                h2 { @if d.failed_step.is_some() { "Error" } @else { "Last error" } }
                pre.error-text data-lifecycle-error { (error) }
            }
        }
    }
}

fn yes_no(value: Option<bool>) -> &'static str {
    match value {
        Some(true) => "yes",
        Some(false) => "no",
        None => "—",
    }
}

fn live_content(view: &TenantView, visitor: &Visitor) -> Markup {
    let s = &view.status;
    html! {
        div.grid {
            section.card data-tenant=(s.schema_name) data-state=(s.state) {
                h2 { "Provisioning" }
                dl.facts {
                    dt { "state" } dd #tenant-state data-state=(s.state) { (badge(&s.state)) }
                    dt { "lifecycle" } dd { (badge(&s.lifecycle)) }
                    dt { "made by" } dd { (s.made_by) }
                    @if let Some(step) = &s.failed_step {
                        dt { "failed at" } dd { (step) }
                    }
                    dt { "attempt" } dd { (s.attempt) }
                    @if let Some(job) = &s.job_id { dt { "job" } dd.mono { (job) } }
                    @if let Some(d) = &s.demo_data { dt { "demo data" } dd { (badge(d)) } }
                }
                @if let Some(error) = &s.last_error {
                    h2 { @if s.state == "failed" { "Error" } @else { "Last error" } }
                    pre.error-text data-last-error { (error) }
                }
                @if let Some((run_id, error)) = &view.failed_migration {
                    h2 { "Migration failed in " a href={ "/runs/" (run_id) } { "run " (run_id) } }
                    pre.error-text data-migration-error { (error) }
                }
                (retry_action(view, visitor))
            }
            section.card {
                h2 { "Tenant" }
                dl.facts {
                    dt { "active" } dd data-active { (yes_no(s.is_active)) }
                    dt { "on trial" } dd { (yes_no(s.on_trial)) }
                    dt { "paid until" } dd { (s.paid_until.map_or_else(|| "—".to_owned(), |d| d.to_string())) }
                    dt { "days remaining" } dd { (s.days_remaining.map_or_else(|| "—".to_owned(), |d| d.to_string())) }
                    dt { "created on" } dd { (s.created_on.map_or_else(|| "—".to_owned(), |d| d.to_string())) }
                    dt { "buildings" } dd { (s.buildings.map_or_else(|| "—".to_owned(), |n| n.to_string())) }
                    dt { "users" } dd { (s.users.map_or_else(|| "—".to_owned(), |n| n.to_string())) }
                    dt { "schema" } dd { @if s.schema_exists { "exists" } @else { "missing" } }
                    @if s.gone {
                        dt { "tenants_client" }
                        dd {
                            @if s.lifecycle == Lifecycle::Gone.as_str() { "row deleted by the platform; history kept" }
                            @else { "no row yet: not registered" }
                        }
                    }
                }
                h2 { "Domains" }
                @if s.domains.is_empty() {
                    p.muted { "None registered yet." }
                } @else {
                    ul {
                        @for d in &s.domains {
                            li data-domain=(d.domain) data-primary=(d.is_primary) {
                                (d.domain) @if d.is_primary { " " span.badge.active { "primary" } }
                            }
                        }
                    }
                }
                (domain_action(view, visitor))
            }
            @if let Some(d) = &s.lifecycle_detail { (lifecycle_detail(&s.lifecycle, d)) }
            (migrations(view))
            section.card.wide {
                h2 { "History" span.muted { " · oldest first" } }
                ol.timeline {
                    @for h in &s.history {
                        li class=(h.state) data-event=(h.step) {
                            div {
                                strong { (h.step) } " "
                                @match &h.from_state {
                                    Some(from) if *from != h.state => { (badge(from)) " → " (badge(&h.state)) },
                                    _ => { (badge(&h.state)) },
                                }
                                " " span.when { (when(h.at)) " · attempt " (h.attempt) " · " (h.actor) }
                            }
                            @if let Some(detail) = &h.detail { div.muted { (detail) } }
                            @if let Some(error) = &h.error { pre.error-text { (error) } }
                        }
                    }
                }
            }
        }
    }
}

/// The form that makes a domain the primary one (the guide's
/// fix_tenant_domain), for an operator.
fn domain_action(view: &TenantView, visitor: &Visitor) -> Markup {
    let s = &view.status;
    html! {
        @if visitor.may_act() && s.made_by != "public" {
            form.actions method="post" action={ "/tenants/" (s.schema_name) "/domain" } {
                (csrf_field(visitor))
                input type="text" name="domain" aria-label="Domain to make primary"
                    placeholder={ (s.schema_name) "." (view.base_domain) };
                button.secondary type="submit" data-action="fix-domain" { "Make primary" }
            }
            p.muted {
                "Adds the domain if missing and demotes any other primary; empty: "
                (s.schema_name) "." (view.base_domain) "."
            }
        }
    }
}

fn retry_action(view: &TenantView, visitor: &Visitor) -> Markup {
    let s = &view.status;
    let label = match (&s.failed_step, &view.failed_migration) {
        (Some(step), _) if s.state == "failed" => Some(format!("Retry from {step}")),
        (_, Some((run_id, _))) => Some(format!("Retry its migration (run {run_id})")),
        _ => None,
    };
    html! {
        @if let (Some(label), true) = (label, visitor.may_act()) {
            form.actions method="post" action={ "/tenants/" (s.schema_name) "/retry" } {
                (csrf_field(visitor))
                button type="submit" data-action="retry" { (label) }
            }
        }
    }
}

fn migrations(view: &TenantView) -> Markup {
    let s = &view.status;
    html! {
        section.card {
            h2 { "Migrations" }
            @match (&s.migration, &view.set) {
                (Some(m), Some(set)) => {
                    p data-migrations-applied=(m.applied) data-migrations-latest=(m.latest) {
                        (m.applied) " of " (m.latest) " applied (tenant migration set " (m.set_version) ")"
                        @if !s.schema_exists { span.muted { " · the schema is not made yet" } }
                        @else if !m.has_ledger { span.muted { " · no django_migrations table yet" } }
                    }
                    @if !m.pending.is_empty() {
                        p { "Pending:" }
                        ul.mono { @for p in &m.pending { li { (p) } } }
                    }
                    details {
                        summary { "Applied (" (m.applied) ")" }
                        ul.mono {
                            @for member in set.members() {
                                @let key = member.key();
                                @if m.has_ledger && !m.pending.contains(&key) { li { (key) } }
                            }
                        }
                    }
                },
                _ if s.made_by == "public" => {
                    p.muted { "The public schema holds the shared apps' tables: `provision migrate --shared` applies its migrations." }
                },
                _ => { p.muted { "No tenant migration set is stored yet (`provision import-migrations`)." } },
            }
        }
    }
}
