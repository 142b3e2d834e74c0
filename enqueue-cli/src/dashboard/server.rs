//! The routes, the headers every response gets, and the server's life
//! from bind to a graceful stop on SIGTERM or Ctrl-C.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use provision_queue::RedisQueue;
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::dashboard::auth::{Access, Sessions};
use crate::dashboard::queries::SetCache;
use crate::dashboard::{actions, assets, login, pages};

/// What every request handler reads.
#[derive(Debug)]
pub(crate) struct AppState {
    pub(crate) pool: PgPool,
    pub(crate) queue: RedisQueue,
    pub(crate) access: Access,
    pub(crate) sessions: Sessions,
    /// For a domain fix without a domain: `<schema>.<base domain>`.
    pub(crate) base_domain: String,
    pub(crate) sets: SetCache,
}

/// Every route. Pages are GETs and read only; every change is a POST that
/// checks the visitor's role and CSRF token first (`actions.rs`).
pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(pages::overview::page))
        .route("/live/overview", get(pages::overview::live))
        .route("/tenants", get(pages::tenants::page))
        .route("/tenants/{schema}", get(pages::tenant::page))
        .route("/tenants/{schema}/live", get(pages::tenant::live))
        .route("/runs/{run_id}", get(pages::run::page))
        .route("/runs/{run_id}/live", get(pages::run::live))
        .route("/retry-failed", get(pages::tenants::confirm_retry_failed))
        .route("/retry-failed", post(actions::retry_failed_matching))
        .route("/tenants/{schema}/retry", post(actions::retry_tenant))
        .route("/tenants/{schema}/domain", post(actions::fix_domain))
        .route("/migrate-all", post(actions::start_migrate_all))
        .route("/tenants/{schema}/suspend", post(actions::suspend_tenant))
        .route("/tenants/{schema}/resume", post(actions::resume_tenant))
        .route(
            "/tenants/{schema}/delete",
            post(actions::schedule_tenant_deletion),
        )
        .route(
            "/tenants/{schema}/cancel-delete",
            post(actions::cancel_tenant_deletion),
        )
        .route("/login", get(login::form).post(login::sign_in))
        .route("/logout", post(login::sign_out))
        .route("/assets/{name}", get(assets::serve))
        .route("/favicon.ico", get(assets::favicon))
        .fallback(pages::not_found)
        .layer(middleware::from_fn(common_headers))
        .with_state(state)
}

/// Headers for every response: how long the server took (`Server-Timing`,
/// which the bench reads), no caching of pages that hold tenants' data,
/// and a content policy that lets a page load only this server's own
/// assets.
async fn common_headers(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let mut response = next.run(request).await;
    let took_ms = started.elapsed().as_secs_f64() * 1000.0;
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&format!("app;dur={took_ms:.2}")) {
        headers.insert("server-timing", value);
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// Serves until SIGTERM or Ctrl-C, then lets requests in flight finish.
pub(crate) async fn serve(listener: TcpListener, state: Arc<AppState>) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(stop_signal())
        .await
}

async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
