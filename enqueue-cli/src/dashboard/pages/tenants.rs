//! The tenant list: search by schema, name or domain, filters by state and
//! lifecycle, a page at a time, and the bulk retry of the failed tenants a
//! filter leaves (confirmed on a page that states how many).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use provision_shared::tenant_search::{Lifecycle, TenantFilter, TenantPage, listed_states, search_tenants};
use serde::Deserialize;

use crate::dashboard::auth::Visitor;
use crate::dashboard::pages::{
    PageError, Section, badge, count, csrf_field, html_response, layout, query, when_short,
};
use crate::dashboard::server::AppState;

/// Rows a page shows unless `per_page` says otherwise.
pub(crate) const DEFAULT_PER_PAGE: u32 = 50;

/// The list's query string, as typed or linked.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    pub(crate) q: Option<String>,
    pub(crate) state: Option<String>,
    pub(crate) lifecycle: Option<String>,
    pub(crate) page: Option<String>,
    pub(crate) per_page: Option<String>,
}

impl ListQuery {
    pub(crate) fn filter(&self) -> Result<TenantFilter, PageError> {
        Ok(TenantFilter::parse(
            self.q.as_deref(),
            self.state.as_deref(),
            self.lifecycle.as_deref(),
        )?)
    }

    fn number(value: Option<&str>, field: &str, default: u32) -> Result<u32, PageError> {
        match value.map(str::trim).filter(|v| !v.is_empty()) {
            None => Ok(default),
            Some(v) => v.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                PageError::bad_request(format!("invalid {field}: {v:?} is not a positive whole number"))
            }),
        }
    }
}

/// The query string of `filter` (and a page and page size, if given).
pub(crate) fn filter_query(filter: &TenantFilter, page: Option<u32>, per_page: Option<u32>) -> String {
    query(&[
        ("q", filter.search().map(str::to_owned)),
        ("state", filter.state().map(str::to_owned)),
        ("lifecycle", filter.lifecycle().map(|l| l.to_string())),
        ("page", page.filter(|p| *p > 1).map(|p| p.to_string())),
        ("per_page", per_page.map(|p| p.to_string())),
    ])
}

/// Hidden fields carrying `filter` in a form.
fn filter_fields(filter: &TenantFilter) -> Markup {
    html! {
        @if let Some(q) = filter.search() { input type="hidden" name="q" value=(q); }
        @if let Some(s) = filter.state() { input type="hidden" name="state" value=(s); }
        @if let Some(l) = filter.lifecycle() { input type="hidden" name="lifecycle" value=(l.as_str()); }
    }
}

pub(crate) async fn page(
    State(state): State<Arc<AppState>>,
    visitor: Visitor,
    Query(list): Query<ListQuery>,
) -> Result<Response, PageError> {
    let filter = list.filter()?;
    let page = ListQuery::number(list.page.as_deref(), "page", 1)?;
    let per_page = ListQuery::number(list.per_page.as_deref(), "per_page", DEFAULT_PER_PAGE)?;
    // A page size other than the default stays in the links.
    let kept_per_page = (per_page != DEFAULT_PER_PAGE).then_some(per_page);
    let found = search_tenants(&state.pool, &filter, page, per_page).await?;
    let body = html! {
        h1 { "Tenants" }
        (search_form(&filter, kept_per_page))
        (facets(&filter, &found, kept_per_page))
        (summary(&filter, &found, &visitor))
        (table(&found))
        (pager(&filter, &found, kept_per_page))
    };
    Ok(html_response(
        StatusCode::OK,
        layout(&visitor, Section::Tenants, "Tenants", visitor.take_flash(), body),
    ))
}

fn search_form(filter: &TenantFilter, per_page: Option<u32>) -> Markup {
    html! {
        form.search method="get" action="/tenants" role="search" {
            input type="search" name="q" value=[filter.search()] placeholder="schema, name or domain"
                aria-label="Search by schema, name or domain";
            select name="state" aria-label="State" {
                option value="" selected[filter.state().is_none()] { "any state" }
                @for s in listed_states() {
                    option value=(s) selected[filter.state() == Some(s)] { (s.replace('_', " ")) }
                }
            }
            select name="lifecycle" aria-label="Lifecycle" {
                option value="" selected[filter.lifecycle().is_none()] { "any lifecycle" }
                @for l in Lifecycle::ALL {
                    option value=(l.as_str()) selected[filter.lifecycle() == Some(l)] { (l.as_str()) }
                }
            }
            @if let Some(n) = per_page { input type="hidden" name="per_page" value=(n); }
            button type="submit" { "Search" }
            @if *filter != TenantFilter::default() { a href="/tenants" { "clear" } }
        }
    }
}

/// The counts of the search by state and lifecycle, each a link that
/// narrows the list to it.
fn facets(filter: &TenantFilter, found: &TenantPage, per_page: Option<u32>) -> Markup {
    html! {
        div.facets {
            div.group {
                span.label { "state" }
                @for s in listed_states() {
                    @let n = found.counts.matching(&filter.with_state(Some(s)));
                    @if n > 0 || filter.state() == Some(s) {
                        a.figure href={ "/tenants" (filter_query(&filter.with_state(Some(s)), None, per_page)) }
                            data-facet-state=(s) data-count=(n) {
                            span.n { (count(n)) } span.label { (s.replace('_', " ")) }
                        }
                    }
                }
            }
            div.group {
                span.label { "lifecycle" }
                @for l in Lifecycle::ALL {
                    @let n = found.counts.matching(&filter.with_lifecycle(Some(l)));
                    @if n > 0 || filter.lifecycle() == Some(l) {
                        a.figure href={ "/tenants" (filter_query(&filter.with_lifecycle(Some(l)), None, per_page)) }
                            data-facet-lifecycle=(l.as_str()) data-count=(n) {
                            span.n { (count(n)) } span.label { (l.as_str()) }
                        }
                    }
                }
            }
        }
    }
}

fn summary(filter: &TenantFilter, found: &TenantPage, visitor: &Visitor) -> Markup {
    let failed = found.counts.matching(&filter.with_state(Some("failed")));
    let failed = if filter.state().is_some_and(|s| s != "failed") {
        0
    } else {
        failed
    };
    html! {
        p.actions {
            span data-total=(found.total) { (count(found.total)) " tenant" @if found.total != 1 { "s" } " match" }
            @if visitor.may_act() && failed > 0 {
                a href={ "/retry-failed" (filter_query(filter, None, None)) } data-action="retry-failed" {
                    "Retry the " (count(failed)) " failed…"
                }
            }
        }
    }
}

fn table(found: &TenantPage) -> Markup {
    html! {
        div.card.table-card {
            table {
                thead { tr {
                    th { "schema" } th { "name" } th { "state" } th { "lifecycle" }
                    th { "primary domain" } th { "updated (UTC)" }
                } }
                tbody {
                    @for t in &found.rows {
                        tr data-schema=(t.schema_name) {
                            td.mono { a href={ "/tenants/" (t.schema_name) } { (t.schema_name) } }
                            td.nowrap data-name { (t.name) }
                            td {
                                (badge(&t.state))
                                @if let Some(step) = &t.failed_step { " " span.muted { "at " (step) } }
                                @if t.state == "failed" {
                                    @if let Some(e) = &t.last_error { span.one-line.error-text title=(e) { (e) } }
                                }
                            }
                            td { (badge(&t.lifecycle)) }
                            td {
                                @match (&t.primary_domain, &t.requested_domain) {
                                    (Some(d), _) => { (d) },
                                    (None, Some(d)) if t.lifecycle == "gone" => { (d) " " span.muted { "(deleted)" } },
                                    (None, Some(d)) => { (d) " " span.muted { "(requested)" } },
                                    (None, None) => span.muted { "none" },
                                }
                            }
                            td.muted.nowrap { (when_short(t.updated_at)) }
                        }
                    }
                    @if found.rows.is_empty() {
                        tr { td.muted colspan="6" { "No tenant matches." } }
                    }
                }
            }
        }
    }
}

fn pager(filter: &TenantFilter, found: &TenantPage, per_page: Option<u32>) -> Markup {
    let pages = found.pages();
    html! {
        nav.pager aria-label="Pages" data-page=(found.page) data-pages=(pages) {
            @if found.page > 1 {
                a rel="prev" href={ "/tenants" (filter_query(filter, Some(found.page - 1), per_page)) } { "← previous" }
            } @else {
                span.disabled { "← previous" }
            }
            span { "page " (found.page) " of " (pages) }
            @if found.page < pages {
                a rel="next" href={ "/tenants" (filter_query(filter, Some(found.page + 1), per_page)) } { "next →" }
            } @else {
                span.disabled { "next →" }
            }
        }
    }
}

/// Asks to confirm the retry of every failed tenant the filter leaves,
/// saying how many that is.
pub(crate) async fn confirm_retry_failed(
    State(state): State<Arc<AppState>>,
    visitor: Visitor,
    Query(list): Query<ListQuery>,
) -> Result<Response, PageError> {
    if !visitor.may_act() {
        // The same answer as the action itself would give.
        visitor.authorize(None)?;
    }
    let filter = list.filter()?;
    let names = provision_shared::tenant_search::failed_tenants_matching(&state.pool, &filter).await?;
    let back = format!("/tenants{}", filter_query(&filter, None, None));
    let body = html! {
        h1 { "Retry failed tenants" }
        section.card {
            @if names.is_empty() {
                p { "No failed tenant matches this list." }
                p { a href=(back) { "Back to the list" } }
            } @else {
                p data-confirm-count=(names.len()) {
                    "Retry " strong { (count(names.len() as i64)) " failed tenant" @if names.len() != 1 { "s" } }
                    @if let Some(q) = filter.search() { " matching “" (q) "”" }
                    @if let Some(l) = filter.lifecycle() { " of lifecycle " (l.as_str()) }
                    "? Each resumes from the step it failed at, with a new job."
                }
                p.muted {
                    @for (i, name) in names.iter().take(20).enumerate() {
                        @if i > 0 { ", " }
                        (name)
                    }
                    @if names.len() > 20 { ", and " (names.len() - 20) " more" }
                }
                form.actions method="post" action="/retry-failed" {
                    (csrf_field(&visitor))
                    (filter_fields(&filter))
                    input type="hidden" name="expected" value=(names.len());
                    button type="submit" data-action="confirm-retry-failed" {
                        "Retry " (count(names.len() as i64))
                    }
                    a href=(back) { "Cancel" }
                }
            }
        }
    };
    Ok(html_response(
        StatusCode::OK,
        layout(&visitor, Section::Tenants, "Retry failed tenants", None, body),
    ))
}
