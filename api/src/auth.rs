//! Which scope each `/api/v1` operation needs, and the middleware that checks it. The
//! OpenAPI document is annotated from the same table.

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use imgfleet_http::Scope;

use crate::state::AppState;

/// The scope an operation needs: `read` to look, `write` to add or change, `admin` to
/// delete. An operation missing here needs `admin` (closed by default).
pub fn required_scope(method: &Method, route: &str) -> Scope {
    match (method.as_str(), route) {
        ("DELETE", "/api/v1/collections/{name}") | ("POST", "/api/v1/collections/cache/clear") => Scope::Admin,
        ("POST", "/api/v1/collections" | "/api/v1/collections/select" | "/api/v1/ingest" | "/api/v1/ingest/" | "/api/v1/ingest/upload")
        | ("POST", "/api/v1/watches")
        | ("DELETE", "/api/v1/ingest/{job_id}" | "/api/v1/images/{id}" | "/api/v1/watches/{watch_id}") => Scope::Write,
        ("GET" | "HEAD", _) | ("POST", "/api/v1/search" | "/api/v1/duplicates" | "/api/v1/images/exists") => Scope::Read,
        _ => Scope::Admin,
    }
}

/// Middleware on `/api/v1`: 401 without a known key, 403 when its scope is too low.
pub async fn require_scope(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or_else(|| request.uri().path().to_owned(), |p| p.as_str().to_owned());
    let needed = required_scope(request.method(), &route);
    let what = format!("{} {route}", request.method());
    match app.api_keys.authorize(request.headers(), needed, &what) {
        Ok(_) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_follow_what_an_operation_does() {
        let get = Method::GET;
        let post = Method::POST;
        let delete = Method::DELETE;
        for (method, route, scope) in [
            (&get, "/api/v1/images/{id}/file", Scope::Read),
            (&get, "/api/v1/jobs", Scope::Read),
            (&get, "/api/v1/workers", Scope::Read),
            (&post, "/api/v1/search", Scope::Read),
            (&post, "/api/v1/duplicates", Scope::Read),
            (&post, "/api/v1/ingest/", Scope::Write),
            (&post, "/api/v1/ingest/upload", Scope::Write),
            (&post, "/api/v1/images/exists", Scope::Read),
            (&delete, "/api/v1/images/{id}", Scope::Write),
            (&delete, "/api/v1/ingest/{job_id}", Scope::Write),
            (&post, "/api/v1/collections", Scope::Write),
            (&post, "/api/v1/collections/select", Scope::Write),
            (&delete, "/api/v1/collections/{name}", Scope::Admin),
            (&post, "/api/v1/collections/cache/clear", Scope::Admin),
            (&Method::PUT, "/api/v1/anything", Scope::Admin),
        ] {
            assert_eq!(required_scope(method, route), scope, "{method} {route}");
        }
    }
}
