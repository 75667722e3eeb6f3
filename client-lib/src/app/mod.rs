//! The rep's app: a web app on `127.0.0.1`, served by the `fieldsync` binary (`fieldsync
//! app`) over one replica and its background sync, usable with no network at all.
//!
//! [`App::start`] binds the port and serves until [`App::stop`]. Every request passes
//! `guard` first (the launch key, the `Host` and `Origin` checks, the security headers);
//! then `assets` serves the page, `read` the views (Today, Customer 360, search, one
//! document), `write` creates and edits documents, `sync_centre` shows the sync state,
//! the refused changes and the conflicts and acts on them, `files` lists, uploads and serves
//! attachments, and `live` streams document and
//! sync events to the page (server-sent events). `reply` turns errors into JSON answers.
//! `docs/APP.md` is the JSON API's reference.

mod assets;
mod files;
mod guard;
mod live;
mod read;
mod reply;
mod sync_centre;
mod write;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::{get, post};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Client;
use crate::sync::{SyncHandle, SyncStatus};

/// How long [`App::stop`] lets running requests finish.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// How to serve the app.
#[derive(Clone, Debug, Default)]
pub struct AppOptions {
    /// The port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// The page's language when the browser's is not wanted (`en` or `zh-CN`).
    pub lang: Option<String>,
    /// The relay the background sync talks to, shown in the sync centre (`None`: this
    /// replica has no relay configured and works offline only).
    pub relay: Option<String>,
}

/// A running app server. Dropping it stops serving (without waiting).
pub struct App {
    addr: SocketAddr,
    key: String,
    state: Arc<AppState>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("addr", &self.addr).finish()
    }
}

/// What every handler sees.
pub(crate) struct AppState {
    client: Client,
    sync: Mutex<Option<SyncHandle>>,
    key: String,
    port: u16,
    lang: Option<String>,
    relay: Option<String>,
    live: live::Hub,
}

impl AppState {
    /// The background sync's state, if there is a relay.
    fn sync_status(&self) -> Option<SyncStatus> {
        match self.sync.lock() {
            Ok(g) => g.as_ref().map(SyncHandle::status),
            Err(p) => p.into_inner().as_ref().map(SyncHandle::status),
        }
    }

    fn with_sync(&self, f: impl FnOnce(&SyncHandle)) {
        let g = match self.sync.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(h) = g.as_ref() {
            f(h);
        }
    }
}

impl App {
    /// Serves the app for `client` on `127.0.0.1:opts.port`, with `sync` (the replica's
    /// background sync, if it has a relay) feeding the sync centre and the live events. The
    /// app owns `sync` from now on and stops it in [`App::stop`].
    ///
    /// Must be called within a tokio runtime.
    pub async fn start(
        client: Client,
        sync: Option<SyncHandle>,
        opts: AppOptions,
    ) -> std::io::Result<Self> {
        let listener =
            tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, opts.port)))
                .await?;
        let addr = listener.local_addr()?;
        let key = guard::new_key()?;
        let live = live::Hub::start(&client);
        let sync_events = sync.as_ref().map(SyncHandle::subscribe);
        let state = Arc::new(AppState {
            client,
            sync: Mutex::new(sync),
            key: key.clone(),
            port: addr.port(),
            lang: opts.lang,
            relay: opts.relay,
            live,
        });
        if let Some(rx) = sync_events {
            let weak = Arc::downgrade(&state);
            state.live.forward_sync(rx, move || {
                weak.upgrade()
                    .and_then(|s| s.sync_status())
                    .map(|s| s.state)
            });
        }
        let router = routes(state.clone());
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "the app server stopped");
            }
        });
        Ok(Self {
            addr,
            key,
            state,
            stop,
            task: Some(task),
        })
    }

    /// The address it listens on (always on 127.0.0.1).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address to open in a browser. It carries this launch's key in its fragment,
    /// which a browser never sends to a server; the page moves it into the tab's session
    /// storage and out of the address bar.
    pub fn url(&self) -> String {
        format!("http://{}/#key={}", self.addr, self.key)
    }

    /// This launch's key (for `Authorization: Bearer KEY` from scripts).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Stops serving (open event streams end) and stops the background sync cleanly.
    /// Requests still running get [`STOP_GRACE`]; a client that keeps a request open longer
    /// (one that never finishes sending it, say) is cut off.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        self.state.live.stop();
        if let Some(mut t) = self.task.take()
            && tokio::time::timeout(STOP_GRACE, &mut t).await.is_err()
        {
            tracing::warn!("requests still open after the grace period are cut off");
            t.abort();
            let _ = t.await;
        }
        let sync = match self.state.sync.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some(s) = sync {
            s.stop().await;
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.state.live.stop();
    }
}

fn routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/session", get(read::session))
        .route("/api/today", get(read::today))
        .route(
            "/api/customers",
            get(read::customers).post(write::new_customer),
        )
        .route("/api/customers/{id}", get(read::customer_360))
        .route("/api/customers/{id}/edits", post(write::edit_customer))
        .route("/api/visits", post(write::new_visit))
        .route("/api/visits/{id}", get(read::visit))
        .route("/api/visits/{id}/edits", post(write::edit_visit))
        .route("/api/quotes", post(write::new_quote))
        .route("/api/quotes/{id}", get(read::quote))
        .route("/api/quotes/{id}/edits", post(write::edit_quote))
        .route("/api/sync", get(sync_centre::overview))
        .route("/api/sync/now", post(sync_centre::sync_now))
        .route("/api/refused/retry", post(sync_centre::retry))
        .route("/api/conflicts/resolve", post(sync_centre::resolve))
        .route(
            "/api/docs/{id}/attachments",
            get(files::list)
                .post(files::upload)
                .layer(axum::extract::DefaultBodyLimit::max(files::MAX_UPLOAD)),
        )
        .route("/api/docs/{id}/attachments/{entry}", get(files::open))
        .route(
            "/api/docs/{id}/attachments/{entry}/preview",
            get(files::preview),
        )
        .route(
            "/api/docs/{id}/attachments/{entry}/fetch",
            post(files::fetch),
        )
        .route("/api/events", get(live::events))
        .fallback(get(assets::serve))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::guard,
        ))
        .with_state(state)
}

#[cfg(test)]
mod tests;
