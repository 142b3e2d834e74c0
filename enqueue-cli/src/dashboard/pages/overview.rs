//! The overview: tenants by state and lifecycle, the queues and their
//! workers, the last day's failures, the migrate-all run in progress
//! (redrawn live) and two small charts.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use provision_shared::migrate_all::RunSummary;
use provision_shared::tenant_search::{Lifecycle, listed_states};

use crate::dashboard::auth::Visitor;
use crate::dashboard::pages::{
    PageError, Section, badge, charts, count, csrf_field, html_response, layout, live_region, live_response,
    query, when, when_short,
};
use crate::dashboard::queries::{self, LiveOverview};
use crate::dashboard::server::AppState;

/// How often the overview's live region is redrawn.
const LIVE_EVERY_MS: u32 = 2000;

pub(crate) async fn page(
    State(state): State<Arc<AppState>>,
    visitor: Visitor,
) -> Result<Response, PageError> {
    let overview = queries::overview(&state.pool, &state.queue).await?;
    let body = html! {
        h1 { "Overview" }
        (live_region("live-overview", "/live/overview", LIVE_EVERY_MS, live_content(&overview.live, &visitor)))
        div.grid.charts {
            section.card {
                h2 { "Tenants ready per hour" span.muted { " · last 24 hours, UTC" } }
                (charts::ready_per_hour(&overview.ready_per_hour))
            }
            section.card {
                h2 { "Step durations" span.muted { " · last " (count(queries::STEP_EVENTS)) " events" } }
                (charts::step_durations(&overview.step_durations))
            }
        }
    };
    Ok(html_response(
        StatusCode::OK,
        layout(
            &visitor,
            Section::Overview,
            "Overview",
            visitor.take_flash(),
            body,
        ),
    ))
}

/// The live region alone, for the script's redraw.
pub(crate) async fn live(
    State(state): State<Arc<AppState>>,
    visitor: Visitor,
) -> Result<Response, PageError> {
    let live = queries::overview_live(&state.pool, &state.queue).await?;
    Ok(live_response(live_content(&live, &visitor)))
}

fn live_content(live: &LiveOverview, visitor: &Visitor) -> Markup {
    let counts = &live.counts;
    html! {
        div.grid {
            section.card {
                h2 { "Tenants by state" }
                div.figures {
                    a.figure href="/tenants" data-count-total=(counts.total()) {
                        span.n { (count(counts.total())) } span.label { "all" }
                    }
                    @for state in listed_states() {
                        @let n = counts.in_state(state);
                        a.figure href={ "/tenants" (query(&[("state", Some(state.to_owned()))])) }
                            data-count-state=(state) data-count=(n) {
                            span.n { (count(n)) } span.label { (state.replace('_', " ")) }
                        }
                    }
                }
            }
            section.card {
                h2 { "Tenants by lifecycle" }
                div.figures {
                    @for lifecycle in Lifecycle::ALL {
                        @let n = counts.in_lifecycle(lifecycle);
                        a.figure href={ "/tenants" (query(&[("lifecycle", Some(lifecycle.to_string()))])) }
                            data-count-lifecycle=(lifecycle.as_str()) data-count=(n) {
                            span.n { (count(n)) } span.label { (lifecycle.as_str()) }
                        }
                    }
                }
            }
            section.card {
                h2 { "Migrate-all" }
                (run_panel(live.run.as_ref(), visitor))
            }
            section.card.wide {
                h2 { "Workers and queues" }
                @match &live.queues {
                    Err(e) => p.error-text { "Redis could not be read: " (e) },
                    Ok(queues) => table {
                        thead { tr {
                            th { "queue" } th.num { "workers alive" } th.num { "waiting" }
                            th.num { "scheduled" } th.num { "in flight" } th.num { "dead" }
                        } }
                        tbody {
                            @for q in queues {
                                tr data-queue=(q.kind.name()) {
                                    td { (q.kind.name()) }
                                    td.num data-workers=(q.workers_alive) { (q.workers_alive) }
                                    @for (status, n) in &q.depth {
                                        td.num data-depth=(status) { (n) }
                                    }
                                }
                            }
                        }
                    },
                }
            }
            section.card.wide {
                h2 {
                    "Failed in the last 24 hours "
                    span.muted data-failures-total=(live.failures_total) { "· " (count(live.failures_total)) " still failed" }
                }
                @if live.failures.is_empty() {
                    p.muted { "Nothing failed." }
                } @else {
                    table {
                        thead { tr { th { "tenant" } th { "what" } th { "error" } th { "when (UTC)" } } }
                        tbody {
                            @for f in &live.failures {
                                tr data-failed=(f.schema_name) {
                                    td { a href={ "/tenants/" (f.schema_name) } { (f.schema_name) } }
                                    td { (f.kind) ": " (f.at_step) }
                                    td { span.one-line.error-text title=(f.error) { (f.error) } }
                                    td.muted.nowrap { (when_short(f.at)) }
                                }
                            }
                        }
                    }
                    @if live.failures_total > 0 {
                        p { a href="/tenants?state=failed" { "Every failed tenant" } }
                    }
                }
            }
        }
    }
}

/// A run's progress, with the button that starts a new one.
pub(crate) fn run_panel(run: Option<&RunSummary>, visitor: &Visitor) -> Markup {
    let running = run.is_some_and(|r| r.state == "running");
    html! {
        @match run {
            None => p.muted { "No migrate-all run yet." },
            Some(run) => {
                (run_progress(run))
                p { a href={ "/runs/" (run.run_id) } { "Run " (run.run_id) " in full" } }
            }
        }
        @if visitor.may_act() && !running {
            form.actions method="post" action="/migrate-all" {
                (csrf_field(visitor))
                button type="submit" data-action="migrate-all" { "Start a migrate-all run" }
                span.muted { "every tenant schema behind the latest tenant migration" }
            }
        }
    }
}

/// A run's figures and progress bar.
pub(crate) fn run_progress(run: &RunSummary) -> Markup {
    let percent = if run.total > 0 {
        run.done * 100 / run.total
    } else {
        100
    };
    html! {
        div data-run=(run.run_id) data-run-state=(run.state) data-run-done=(run.done) data-run-total=(run.total) {
            p {
                "Run " (run.run_id) " " (badge(&run.state))
                span.muted { " · started " (when(run.started_at)) " by " (run.started_by) " (" (run.trigger) ")" }
            }
            progress value=(run.done) max=(run.total.max(1)) { (percent) "%" }
            p {
                (count(run.done)) " of " (count(run.total)) " schemas done (" (percent) "%): "
                (count(run.migrated)) " migrated, " (count(run.already_current)) " already current, "
                span class=[(run.failed > 0).then_some("error-text")] { (count(run.failed)) " failed" }
                @if let Some(finished) = run.finished_at { span.muted { " · finished " (when(finished)) } }
            }
        }
    }
}
