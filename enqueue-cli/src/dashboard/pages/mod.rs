//! The pages: each a complete server-rendered document (reading needs no
//! script), with live regions the dashboard's script redraws from their
//! fragment URLs. maud escapes every value it is given, so a tenant's name,
//! an error or a domain is shown exactly as stored, never as markup.

pub(crate) mod charts;
pub(crate) mod overview;
pub(crate) mod run;
pub(crate) mod tenant;
pub(crate) mod tenants;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use provision_shared::ProvisionError;

use crate::dashboard::assets::VERSION;
use crate::dashboard::auth::{Flash, Visitor};

/// Which part of the site a page belongs to, for the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    Overview,
    Tenants,
}

/// A page as a response.
pub(crate) fn html_response(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

/// The header a live fragment's version travels in.
pub(crate) const LIVE_VERSION_HEADER: &str = "x-live-version";

/// A version of a fragment: equal for equal content, so the script
/// replaces a live region only when something in it changed (a redraw of
/// the same content would still cost the visitor their text selection, or
/// a click on a button just replaced).
fn live_version(html: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    html.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// A region of a page that the script redraws from `url` every `every_ms`.
pub(crate) fn live_region(id: &str, url: &str, every_ms: u32, content: Markup) -> Markup {
    let html = content.into_string();
    html! {
        div id=(id) data-live=(url) data-live-every=(every_ms) data-live-version=(live_version(&html)) {
            (PreEscaped(html))
        }
    }
}

/// A live region's content alone, for the script's redraw.
pub(crate) fn live_response(content: Markup) -> Response {
    let html = content.into_string();
    let version = live_version(&html);
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8".to_owned()),
            (header::HeaderName::from_static(LIVE_VERSION_HEADER), version),
        ],
        html,
    )
        .into_response()
}

/// A complete page around `body`.
pub(crate) fn layout(
    visitor: &Visitor,
    section: Section,
    title: &str,
    flash: Option<Flash>,
    body: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Provisioning" }
                link rel="stylesheet" href={ "/assets/dashboard.css?v=" (VERSION) };
                link rel="icon" href={ "/assets/favicon.svg?v=" (VERSION) } type="image/svg+xml";
                script src={ "/assets/dashboard.js?v=" (VERSION) } defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "Provisioning" }
                    nav {
                        a class=[(section == Section::Overview).then_some("current")] href="/" { "Overview" }
                        a class=[(section == Section::Tenants).then_some("current")] href="/tenants" { "Tenants" }
                    }
                    div.who data-user=(visitor.name) data-role=(visitor.role.as_str()) {
                        span { (visitor.name) " · " (visitor.role.as_str()) }
                        @if visitor.signed_in() {
                            form.inline method="post" action="/logout" {
                                (csrf_field(visitor))
                                button.secondary type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main {
                    @if !visitor.signed_in() {
                        p.banner.note {
                            "Read-only: no users file is configured, so nobody can act here. "
                            "Set PROVISION_DASHBOARD_USERS to sign in as an operator."
                        }
                    }
                    @if let Some(flash) = flash {
                        p class={ "banner " (if flash.ok { "ok" } else { "bad" }) } role="status" { (flash.text) }
                    }
                    (body)
                }
                p.banner.bad #live-status hidden {}
            }
        }
    }
}

/// The hidden CSRF field every form that acts carries.
pub(crate) fn csrf_field(visitor: &Visitor) -> Markup {
    html! {
        @if let Some(token) = &visitor.csrf {
            input type="hidden" name="csrf" value=(token);
        }
    }
}

/// A state or lifecycle as a coloured label.
pub(crate) fn badge(value: &str) -> Markup {
    html! { span class={ "badge " (value) } data-badge=(value) { (value.replace('_', " ")) } }
}

/// A time as operators read it in logs: UTC, to the second.
pub(crate) fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A time in a table whose header says UTC.
pub(crate) fn when_short(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// A count with thousands separated, as the eye reads it.
pub(crate) fn count(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A query string of the given, non-empty parameters.
pub(crate) fn query(params: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = params
        .iter()
        .filter_map(|(k, v)| v.as_ref().filter(|v| !v.is_empty()).map(|v| (k, v)))
        .map(|(k, v)| format!("{k}={}", crate::dashboard::auth::percent_encode(v)))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// A page that could not be shown, as a response with its reason.
#[derive(Debug)]
pub(crate) struct PageError {
    status: StatusCode,
    title: String,
    message: String,
}

impl PageError {
    pub(crate) fn new(status: StatusCode, title: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            title: title.into(),
            message: message.into(),
        }
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "Not found", message)
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Bad request", message)
    }
}

impl From<ProvisionError> for PageError {
    fn from(e: ProvisionError) -> Self {
        let status = if e.is_unreachable() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            match e {
                ProvisionError::UnknownTenant(_) => StatusCode::NOT_FOUND,
                ProvisionError::Invalid(_) | ProvisionError::Conflict { .. } => StatusCode::BAD_REQUEST,
                ProvisionError::WrongState(_) => StatusCode::CONFLICT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            }
        };
        if status.is_server_error() {
            tracing::warn!(error = %e, status = status.as_u16(), "dashboard request failed");
        }
        Self::new(
            status,
            status.canonical_reason().unwrap_or("Error"),
            e.to_string(),
        )
    }
}

impl From<provision_shared::InvalidInput> for PageError {
    fn from(e: provision_shared::InvalidInput) -> Self {
        Self::bad_request(e.to_string())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let page = html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    title { (self.title) " · Provisioning" }
                    link rel="stylesheet" href={ "/assets/dashboard.css?v=" (VERSION) };
                }
                body {
                    main {
                        h1 { (self.title) }
                        p.banner.bad data-error-status=(self.status.as_u16()) { (self.message) }
                        p { a href="/" { "Overview" } " · " a href="/login" { "Sign in" } }
                    }
                }
            }
        };
        html_response(self.status, page)
    }
}

pub(crate) async fn not_found() -> PageError {
    PageError::not_found("There is no such page.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_query_strings_read_well() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(10_000), "10,000");
        assert_eq!(count(-1234567), "-1,234,567");
        assert_eq!(
            query(&[
                ("q", Some("Νίκος 1".into())),
                ("state", None),
                ("page", Some("2".into()))
            ]),
            "?q=%CE%9D%CE%AF%CE%BA%CE%BF%CF%82%201&page=2"
        );
        assert_eq!(query(&[("q", Some(String::new()))]), "");
    }
}
