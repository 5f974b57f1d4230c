//! What the source and the blob store share on `object_store`: the error mapping, a paginated
//! listing as a stream, and a read bounded by size.

use std::sync::Arc;

use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use imgfleet_core::ports::ObjectError;
use object_store::aws::AmazonS3;
use object_store::client::{HttpError, HttpErrorKind};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};

/// Keys per listing request (S3's own maximum, and its default).
pub const DEFAULT_PAGE_SIZE: usize = 1000;

/// `object_store`'s error as the ports' ([`ObjectError`]); `what` names the object or bucket.
pub fn map_error(error: object_store::Error, what: &str) -> ObjectError {
    match &error {
        object_store::Error::NotFound { .. } => ObjectError::NotFound(what.to_owned()),
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
            ObjectError::Denied(format!("{what}: {}", innermost(&error)))
        }
        object_store::Error::InvalidPath { .. } => ObjectError::NotFound(format!("{what} (not a valid object key: {error})")),
        _ => classify(&error, what),
    }
}

/// A generic error by what its causes say: a connection that failed is `Unavailable` (the
/// caller retries), an HTTP status is read from the request error's text (its type is private
/// to `object_store`; S3 error codes are stable).
fn classify(error: &object_store::Error, what: &str) -> ObjectError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut text = String::new();
    while let Some(cause) = source {
        if let Some(http) = cause.downcast_ref::<HttpError>()
            && matches!(http.kind(), HttpErrorKind::Connect | HttpErrorKind::Request | HttpErrorKind::Timeout | HttpErrorKind::Interrupted)
        {
            return ObjectError::Unavailable(format!("{what}: {}", innermost(error)));
        }
        text.push_str(&cause.to_string());
        text.push('\n');
        source = cause.source();
    }
    let has = |needle: &str| text.contains(needle);
    if has("NoSuchBucket") || has("NoSuchKey") || has("status code: 404") {
        ObjectError::NotFound(what.to_owned())
    } else if has("status code: 403") || has("status code: 401") || has("AccessDenied") || has("SignatureDoesNotMatch") || has("InvalidAccessKeyId") {
        ObjectError::Denied(format!("{what}: {}", innermost(error)))
    } else if has("status code: 5") || has("error response") {
        // 5xx and throttling answers (S3 sends a body with both).
        ObjectError::Unavailable(format!("{what}: {}", innermost(error)))
    } else {
        ObjectError::Internal(format!("{what}: {error}"))
    }
}

/// The last cause of an error chain (the server's answer, not the layers that wrapped it).
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut last = error;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// A path of a raw S3 key (`Path::from` would percent-encode some characters: a key is used as
/// it is).
pub fn key_path(key: &str, what: &str) -> Result<Path, ObjectError> {
    Path::parse(key).map_err(|e| ObjectError::NotFound(format!("{what} (not a valid object key: {e})")))
}

/// Every object whose key starts with `prefix` (raw, no delimiter added), page by page: one
/// page of metadata in memory at a time.
pub fn list_pages(store: Arc<AmazonS3>, prefix: String, page_size: usize, what: String) -> BoxStream<'static, Result<ObjectMeta, ObjectError>> {
    enum Page {
        First,
        Next(String),
        Done,
    }
    futures::stream::try_unfold(Page::First, move |page| {
        let (store, prefix, what) = (store.clone(), prefix.clone(), what.clone());
        async move {
            let page_token = match page {
                Page::Done => return Ok(None),
                Page::First => None,
                Page::Next(token) => Some(token),
            };
            let options = PaginatedListOptions { max_keys: Some(page_size), page_token, ..PaginatedListOptions::default() };
            let page = store
                .list_paginated((!prefix.is_empty()).then_some(prefix.as_str()), options)
                .await
                .map_err(|e| map_error(e, &what))?;
            let next = match page.page_token {
                Some(token) => Page::Next(token),
                None => Page::Done,
            };
            let objects = page.result.objects.into_iter().map(Ok::<_, ObjectError>);
            Ok(Some((futures::stream::iter(objects), next)))
        }
    })
    .try_flatten()
    .boxed()
}

/// The object whole, with its metadata; `TooLarge` beyond `max_bytes`, known from its size
/// before anything is downloaded (and checked again while reading, in case it grew).
pub async fn read_bounded(store: &AmazonS3, path: &Path, max_bytes: u64, what: &str) -> Result<(Vec<u8>, ObjectMeta), ObjectError> {
    let head = store.head(path).await.map_err(|e| map_error(e, what))?;
    if head.size > max_bytes {
        return Err(ObjectError::TooLarge { what: what.to_owned(), bytes: head.size, limit: max_bytes });
    }
    let result = store.get(path).await.map_err(|e| map_error(e, what))?;
    let meta = result.meta.clone();
    if meta.size > max_bytes {
        return Err(ObjectError::TooLarge { what: what.to_owned(), bytes: meta.size, limit: max_bytes });
    }
    let mut bytes = Vec::with_capacity(meta.size as usize);
    let mut body = result.into_stream();
    while let Some(chunk) = body.try_next().await.map_err(|e| map_error(e, what))? {
        if bytes.len() as u64 + chunk.len() as u64 > max_bytes {
            return Err(ObjectError::TooLarge { what: what.to_owned(), bytes: bytes.len() as u64 + chunk.len() as u64, limit: max_bytes });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok((bytes, meta))
}

/// Deletes every object whose key starts with `prefix` (bulk requests of up to 1,000 keys);
/// returns how many.
pub async fn delete_prefix(store: Arc<AmazonS3>, prefix: String, what: String) -> Result<u64, ObjectError> {
    let locations = list_pages(store.clone(), prefix, DEFAULT_PAGE_SIZE, what.clone())
        .map(|meta| meta.map(|m| m.location).map_err(|e| object_store::Error::Generic { store: "imgfleet", source: Box::new(e) }))
        .boxed();
    let mut deleted = store.delete_stream(locations);
    let mut count = 0;
    while let Some(result) = deleted.next().await {
        match result {
            Ok(_) => count += 1,
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(unwrap_listing_error(e, &what)),
        }
    }
    Ok(count)
}

/// A listing error handed through `delete_stream` comes back as it was.
fn unwrap_listing_error(error: object_store::Error, what: &str) -> ObjectError {
    if let object_store::Error::Generic { store: "imgfleet", source } = error {
        return match source.downcast::<ObjectError>() {
            Ok(error) => *error,
            Err(other) => ObjectError::Internal(format!("{what}: {other}")),
        };
    }
    map_error(error, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_the_ports_kinds() {
        let boxed = |text: &str| -> Box<dyn std::error::Error + Send + Sync> { text.to_owned().into() };
        let not_found = object_store::Error::NotFound { path: "k".into(), source: boxed("404") };
        assert!(matches!(map_error(not_found, "s3://b/k"), ObjectError::NotFound(w) if w == "s3://b/k"));
        let denied = object_store::Error::PermissionDenied { path: "k".into(), source: boxed("AccessDenied") };
        assert!(matches!(map_error(denied, "s3://b/k"), ObjectError::Denied(_)));
        let generic = |text: &str| object_store::Error::Generic { store: "S3", source: boxed(text) };
        assert!(matches!(map_error(generic("Server returned non-2xx status code: 404 Not Found: NoSuchBucket"), "b"), ObjectError::NotFound(_)));
        assert!(matches!(map_error(generic("Server returned non-2xx status code: 403 Forbidden: SignatureDoesNotMatch"), "b"), ObjectError::Denied(_)));
        assert!(matches!(map_error(generic("Server returned non-2xx status code: 503 Service Unavailable"), "b"), ObjectError::Unavailable(_)));
        assert!(matches!(map_error(generic("something else"), "b"), ObjectError::Internal(_)));
    }
}
