//! One migrate-all run: its progress (redrawn live) and the schemas that
//! failed, each with its error and a retry.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use provision_shared::migrate_all::{RunSummary, run_summary};

use crate::dashboard::auth::Visitor;
use crate::dashboard::pages::overview::run_progress;
use crate::dashboard::pages::{
    PageError, Section, count, csrf_field, html_response, layout, live_region, live_response,
};
use crate::dashboard::queries::run_exists;
use crate::dashboard::server::AppState;

/// How often a run's page redraws its live region.
const LIVE_EVERY_MS: u32 = 1000;

async fn read(state: &AppState, run_id: &str) -> Result<RunSummary, PageError> {
    let id: i64 = run_id
        .parse()
        .map_err(|_| PageError::not_found(format!("{run_id:?} is not a run number")))?;
    if !run_exists(&state.pool, id).await? {
        return Err(PageError::not_found(format!("there is no migrate-all run {id}")));
    }
    Ok(run_summary(&state.pool, id).await?)
}

pub(crate) async fn page(
    State(state): State<Arc<AppState>>,
    visitor: Visitor,
    Path(run_id): Path<String>,
) -> Result<Response, PageError> {
    let run = read(&state, &run_id).await?;
    let title = format!("Migrate-all run {}", run.run_id);
    let body = html! {
        h1 { (title) }
        (live_region("run-live", &format!("/runs/{}/live", run.run_id), LIVE_EVERY_MS, live_content(&run, &visitor)))
        p { a href="/" { "← overview" } }
    };
    Ok(html_response(
        StatusCode::OK,
        layout(&visitor, Section::Overview, &title, visitor.take_flash(), body),
    ))
}

pub(crate) async fn live(
    State(state): State<Arc<AppState>>,
    visitor: Visitor,
    Path(run_id): Path<String>,
) -> Result<Response, PageError> {
    let run = read(&state, &run_id).await?;
    Ok(live_response(live_content(&run, &visitor)))
}

fn live_content(run: &RunSummary, visitor: &Visitor) -> Markup {
    html! {
        section.card { (run_progress(run)) }
        section.card.table-card {
            @if run.failures.is_empty() {
                p.muted { "No schema failed." }
            } @else {
                table {
                    thead { tr { th { "schema" } th { "error" } th {} } }
                    tbody {
                        @for f in &run.failures {
                            tr data-failed=(f.schema_name) {
                                td.mono { a href={ "/tenants/" (f.schema_name) } { (f.schema_name) } }
                                td { pre.error-text { (f.error) } }
                                td {
                                    @if visitor.may_act() {
                                        form.inline method="post" action={ "/tenants/" (f.schema_name) "/retry" } {
                                            (csrf_field(visitor))
                                            input type="hidden" name="return_to" value={ "/runs/" (run.run_id) };
                                            button type="submit" data-action="retry" { "Retry" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                @if i64::try_from(run.failures.len()).unwrap_or(0) < run.failed {
                    p.muted { "The first " (run.failures.len()) " of " (count(run.failed)) " failures." }
                }
            }
        }
    }
}
