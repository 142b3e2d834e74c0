//! Signing in and out. The sign-in form carries a nonce that must match
//! its own cookie (a page elsewhere cannot post it), a wrong name or
//! password is answered alike and as slowly, and a session is opened only
//! for a user of the file.

use std::sync::Arc;
use std::time::Duration;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, html};
use serde::Deserialize;

use crate::dashboard::assets::VERSION;
use crate::dashboard::auth::{
    Access, LOGIN_COOKIE, SESSION_COOKIE, Visitor, cookie, random_token, safe_next, same_secret, set_cookie,
};
use crate::dashboard::pages::{PageError, html_response};
use crate::dashboard::server::AppState;

/// How long a sign-in form may be left open before it is refused.
const LOGIN_FORM_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, Deserialize)]
pub(crate) struct NextQuery {
    next: Option<String>,
}

/// The sign-in form, with a new nonce in the form and in its cookie.
fn form_page(status: StatusCode, next: &str, message: Option<&str>) -> Response {
    let nonce = random_token();
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Sign in · Provisioning" }
                link rel="stylesheet" href={ "/assets/dashboard.css?v=" (VERSION) };
                link rel="icon" href={ "/assets/favicon.svg?v=" (VERSION) } type="image/svg+xml";
            }
            body {
                main.login {
                    h1 { "Provisioning dashboard" }
                    @if let Some(message) = message {
                        p.banner.bad role="alert" data-login-error { (message) }
                    }
                    form.card method="post" action="/login" {
                        input type="hidden" name="nonce" value=(nonce);
                        input type="hidden" name="next" value=(next);
                        label for="name" { "User" }
                        input #name type="text" name="name" autocomplete="username" required autofocus;
                        label for="password" { "Password" }
                        input #password type="password" name="password" autocomplete="current-password" required;
                        button type="submit" { "Sign in" }
                    }
                }
            }
        }
    };
    let mut response = html_response(status, page);
    if let Ok(value) = HeaderValue::from_str(&set_cookie(LOGIN_COOKIE, &nonce, "/login", LOGIN_FORM_TTL)) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

pub(crate) async fn form(State(state): State<Arc<AppState>>, Query(query): Query<NextQuery>) -> Response {
    if matches!(state.access, Access::Open) {
        return Redirect::to("/").into_response();
    }
    form_page(StatusCode::OK, &safe_next(query.next.as_deref()), None)
}

#[derive(Debug, Deserialize)]
pub(crate) struct SignIn {
    name: String,
    password: String,
    nonce: Option<String>,
    next: Option<String>,
}

pub(crate) async fn sign_in(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(form): Form<SignIn>,
) -> Result<Response, PageError> {
    let Access::Users(users) = &state.access else {
        return Err(PageError::new(
            StatusCode::FORBIDDEN,
            "No users",
            "This dashboard has no users file: it is read-only and nobody signs in.",
        ));
    };
    let next = safe_next(form.next.as_deref());
    let nonce_ok = match (form.nonce.as_deref(), cookie(&headers, LOGIN_COOKIE)) {
        (Some(given), Some(expected)) => same_secret(given, expected),
        _ => false,
    };
    if !nonce_ok {
        return Ok(form_page(
            StatusCode::FORBIDDEN,
            &next,
            Some("The sign-in form had expired or did not come from this dashboard: sign in again."),
        ));
    }
    // The argon2 verification takes tens of milliseconds of CPU: off the
    // threads that serve requests.
    let (users, name, password) = (users.clone(), form.name.clone(), form.password);
    let role = tokio::task::spawn_blocking(move || users.verify(&name, &password))
        .await
        .unwrap_or(None);
    let Some(role) = role else {
        tracing::info!(user = %form.name, "dashboard sign-in refused");
        return Ok(form_page(
            StatusCode::UNAUTHORIZED,
            &next,
            Some("Wrong user name or password."),
        ));
    };
    tracing::info!(user = %form.name, role = %role, "dashboard sign-in");
    let token = state.sessions.open(&form.name, role);
    let mut response = Redirect::to(&next).into_response();
    let cookies = [
        set_cookie(SESSION_COOKIE, &token, "/", state.sessions.ttl()),
        set_cookie(LOGIN_COOKIE, "", "/login", Duration::ZERO),
    ];
    for value in cookies {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    Ok(response)
}

#[derive(Debug, Deserialize)]
pub(crate) struct SignOut {
    csrf: Option<String>,
}

pub(crate) async fn sign_out(
    State(state): State<Arc<AppState>>,
    visitor: Visitor,
    Form(form): Form<SignOut>,
) -> Result<Response, PageError> {
    let valid = match (form.csrf.as_deref(), visitor.csrf.as_deref()) {
        (Some(given), Some(expected)) => same_secret(given, expected),
        _ => false,
    };
    if !valid {
        return Err(PageError::new(
            StatusCode::FORBIDDEN,
            "Refused",
            "The form's CSRF token is missing or is not this session's: reload the page and try again.",
        ));
    }
    if let Some(token) = visitor.token() {
        state.sessions.close(token);
    }
    let mut response = Redirect::to("/login").into_response();
    if let Ok(value) = HeaderValue::from_str(&set_cookie(SESSION_COOKIE, "", "/", Duration::ZERO)) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    Ok(response)
}
