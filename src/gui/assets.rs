//! The page's files, embedded at build time (see `build.rs`): no Node and
//! no files on disk at run time.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// `(path, content type, bytes)` for every file under `gui/`.
pub static FILES: &[(&str, &str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/gui_assets.rs"));

/// The file at `path` (`/` is the page).
pub fn get(path: &str) -> Option<(&'static str, &'static [u8])> {
    let path = if path == "/" { "/index.html" } else { path };
    FILES
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|(_, kind, bytes)| (*kind, *bytes))
}

/// A file as an answer; HTML is never cached (it names the rest), the rest
/// is revalidated.
pub fn serve(path: &str) -> Option<Response> {
    let (kind, bytes) = get(path)?;
    let cache = if kind.starts_with("text/html") {
        "no-store"
    } else {
        "no-cache"
    };
    Some(
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, cache)],
            bytes,
        )
            .into_response(),
    )
}
