//! The app's page, scripts and styles, compiled into the binary (no build step, no CDN).
pub(super) struct Asset {
    pub(super) path: &'static str,
    pub(super) content_type: &'static str,
    pub(super) bytes: &'static [u8],
}
pub(super) const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        bytes: include_bytes!("assets/index.html"),
    },
    Asset {
        path: "/app.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("assets/app.css"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/app.js"),
    },
    Asset {
        path: "/key.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/key.js"),
    },
    Asset {
        path: "/api.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/api.js"),
    },
    Asset {
        path: "/dom.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/dom.js"),
    },
    Asset {
        path: "/i18n.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/i18n.js"),
    },
    Asset {
        path: "/ui.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/ui.js"),
    },
    Asset {
        path: "/live.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/live.js"),
    },
    Asset {
        path: "/money.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/money.js"),
    },
    Asset {
        path: "/format.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/format.js"),
    },
    Asset {
        path: "/today.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/today.js"),
    },
    Asset {
        path: "/search.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/search.js"),
    },
    Asset {
        path: "/customer.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/customer.js"),
    },
    Asset {
        path: "/visit.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/visit.js"),
    },
    Asset {
        path: "/quote.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/quote.js"),
    },
    Asset {
        path: "/sync.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/sync.js"),
    },
    Asset {
        path: "/attachments.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/attachments.js"),
    },
];

/// Serves an asset by its path (`/` is the page), or a 404.
pub(super) async fn serve(uri: axum::http::Uri) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    match ASSETS.iter().find(|a| a.path == uri.path()) {
        Some(a) => ([(header::CONTENT_TYPE, a.content_type)], a.bytes).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"error": format!("no such page: {}", uri.path()), "code": "not_found"})),
        )
            .into_response(),
    }
}
