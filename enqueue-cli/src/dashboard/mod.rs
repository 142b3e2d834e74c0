//! `provision dashboard`: the operator's web dashboard over the PostgreSQL
//! state machine, centred on tenants. Server-rendered pages (readable
//! without JavaScript) with live regions, the actions of `provision retry`,
//! `fix-domain`, `migrate --all`, `suspend`, `resume`, `delete-tenant` and
//! `cancel-delete`, users with roles from a file, and every asset served by
//! the binary itself.
//!
//! The parts: `server` (routes, headers, the server's life), `auth`
//! (sessions, CSRF, who may act), `users` (the users file), `login`,
//! `actions` (the POSTs), `pages` (the templates), `queries` (what the
//! overview reads), `assets` (stylesheet, script, icon).

mod actions;
mod assets;
mod auth;
mod login;
mod pages;
mod queries;
mod server;
mod users;

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use provision_queue::RedisQueue;
use provision_shared::db;

use crate::DashboardArgs;
use crate::commands::Ctx;
use crate::dashboard::auth::{Access, Sessions};
use crate::dashboard::queries::SetCache;
use crate::dashboard::server::AppState;
use crate::dashboard::users::Users;
use crate::exit_codes::{CliError, FAILURE};

/// PostgreSQL connections the dashboard may hold: the overview's queries
/// run side by side.
const POOL_SIZE: u32 = 8;

pub(crate) async fn dashboard(ctx: &Ctx, args: DashboardArgs) -> Result<ExitCode, CliError> {
    if args.hash_password {
        return print_password_hash();
    }
    let addr: SocketAddr = args.addr.parse().map_err(|_| {
        CliError::invalid(
            "addr",
            format!("{:?} is not an address and port, like 127.0.0.1:9899", args.addr),
        )
    })?;
    let access = match &args.users {
        Some(path) => {
            let users = Users::load(path).map_err(|e| {
                CliError::invalid(
                    "users",
                    format!("PROVISION_DASHBOARD_USERS ({}): {e}", path.display()),
                )
            })?;
            Access::Users(Arc::new(users))
        }
        None if addr.ip().is_loopback() => Access::Open,
        None => {
            return Err(CliError::invalid(
                "users",
                format!(
                    "refusing to serve the dashboard on {addr}, which is not a loopback address, without users: \
                     set PROVISION_DASHBOARD_USERS to a users file (name:role:hash lines; \
                     `provision dashboard --hash-password` makes a hash)"
                ),
            ));
        }
    };
    if args.session_ttl == 0 {
        return Err(CliError::invalid(
            "session_ttl",
            "a session must last at least one second",
        ));
    }
    let pool = db::connect(&ctx.options.database_url, POOL_SIZE)
        .await
        .map_err(|e| ctx.error(e))?;
    // Fails early, with the usual message, on a database without the
    // provisioning tables.
    provision_shared::tenant_search::tenant_counts(&pool, &Default::default())
        .await
        .map_err(|e| ctx.error(e))?;
    let queue = RedisQueue::connect(&ctx.options.redis_url, &ctx.options.namespace)
        .await
        .map_err(|e| ctx.error(e))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| CliError::new(FAILURE, "listen", format!("cannot listen on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| CliError::new(FAILURE, "listen", format!("cannot listen on {addr}: {e}")))?;
    let mode = match &access {
        Access::Open => "read-only for everyone: no users file".to_owned(),
        Access::Users(users) => format!("{} user(s), sessions of {} s", users.len(), args.session_ttl),
    };
    println!("Dashboard at http://{local}/ ({mode})");
    let _ = std::io::stdout().flush();
    tracing::info!(addr = %local, "dashboard serving");
    let state = Arc::new(AppState {
        pool,
        queue,
        access,
        sessions: Sessions::new(Duration::from_secs(args.session_ttl)),
        base_domain: ctx.options.base_domain.clone(),
        sets: SetCache::default(),
    });
    server::serve(listener, state)
        .await
        .map_err(|e| CliError::new(FAILURE, "serve", format!("the dashboard stopped: {e}")))?;
    Ok(ExitCode::SUCCESS)
}

/// `--hash-password`: the first line of standard input as a users-file
/// hash, so no password is ever typed on a command line.
fn print_password_hash() -> Result<ExitCode, CliError> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::invalid("password", format!("cannot read standard input: {e}")))?;
    let password = line.trim_end_matches(['\r', '\n']);
    let length = password.chars().count();
    if !(8..=1024).contains(&length) {
        return Err(CliError::invalid(
            "password",
            "8 to 1024 characters, on the first line of standard input",
        ));
    }
    println!("{}", users::hash_password(password));
    Ok(ExitCode::SUCCESS)
}
