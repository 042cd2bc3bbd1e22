//! The console's static files, compiled into the binary: its style sheet, htmx and htmx's SSE extension
//! (vendored in `static/`, see its README). Nothing is fetched at run time.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Changes with every file's content, so a browser never keeps a stale copy past an upgrade.
const VERSION: &str = env!("CARGO_PKG_VERSION");

const FILES: [(&str, &str, &str); 3] = [
    ("console.css", "text/css; charset=utf-8", include_str!("static/console.css")),
    ("htmx.min.js", "text/javascript; charset=utf-8", include_str!("static/htmx.min.js")),
    ("sse.min.js", "text/javascript; charset=utf-8", include_str!("static/sse.min.js")),
];

/// The URL of a static file, with the version that busts caches.
pub(super) fn url(file: &str) -> String {
    format!("/ui/static/{file}?v={VERSION}-{:x}", content_hash(file))
}

fn content_hash(file: &str) -> u32 {
    // FNV-1a: stable across builds, enough to tell two versions of a file apart.
    FILES.iter().find(|(name, _, _)| *name == file).map_or(0, |(_, _, body)| {
        body.bytes().fold(0x811c_9dc5_u32, |hash, byte| (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193))
    })
}

pub(super) async fn serve(Path(file): Path<String>) -> Response {
    match FILES.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => {
            ([(header::CONTENT_TYPE, *content_type), (header::CACHE_CONTROL, "public, max-age=86400")], *body)
                .into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}
