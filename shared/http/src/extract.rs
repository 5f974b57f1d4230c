//! JSON body and query extractors whose rejections use [`AppError`]'s shape.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::AppError;

/// `axum::Json`, with malformed JSON → 400 `invalid_json`, wrong shapes or types → 422
/// `invalid_request`, too large → 413, wrong content type → 415.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> AppError {
    let detail = rejection.body_text();
    match rejection {
        JsonRejection::JsonDataError(_) => AppError::invalid(detail),
        JsonRejection::JsonSyntaxError(_) => AppError::new(StatusCode::BAD_REQUEST, "invalid_json", detail),
        JsonRejection::MissingJsonContentType(_) => AppError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with `content-type: application/json`",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            AppError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body is larger than the server's limit")
        }
        other => AppError::new(StatusCode::BAD_REQUEST, "invalid_json", other.body_text()),
    }
}

/// `axum::extract::Query`, with bad parameters → 422 `invalid_request`.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> AppError {
    AppError::invalid(rejection.body_text())
}

/// `axum::extract::Path`, with a segment that does not decode (`%FF`) or parse → 422
/// `invalid_request`.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(PathRejection::MissingPathParams(e)) => Err(AppError::internal(e.body_text())),
            Err(rejection) => Err(AppError::invalid(rejection.body_text())),
        }
    }
}

/// Parses an optional JSON body: empty means `T::default()`. Errors as [`ApiJson`]'s.
pub fn optional_json<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, AppError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            AppError::invalid(format!("failed to deserialize the JSON body: {e}"))
        } else {
            AppError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("the body is not valid JSON: {e}"))
        }
    })
}

/// `#[serde(default, deserialize_with = "integer")]` for an optional whole number in a JSON
/// body: JSON Schema's `integer` includes `12.0`, so a number with no fraction is accepted as
/// well as `12`; `null` is absent; a string is refused.
pub fn integer<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    deserializer.deserialize_any(Whole::<T, false>(std::marker::PhantomData))
}

/// [`integer`] for a query parameter, whose value is text: `12` or `12.0`.
pub fn integer_in_query<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    deserializer.deserialize_any(Whole::<T, true>(std::marker::PhantomData))
}

/// A whole number; `TEXT`: given as text (a query string).
struct Whole<T, const TEXT: bool>(std::marker::PhantomData<T>);

impl<T: TryFrom<u64>, const TEXT: bool> Whole<T, TEXT> {
    fn from_f64<E: serde::de::Error>(value: f64) -> Result<Option<T>, E> {
        // Up to 2^53 a whole float is exact; past it, a rounded float must not pass as a number.
        if value.fract() != 0.0 || !(0.0..=9_007_199_254_740_992.0).contains(&value) {
            return Err(E::custom(format!("expected a whole number of at least 0, got {value}")));
        }
        Self::from_u64(value as u64)
    }

    fn from_u64<E: serde::de::Error>(value: u64) -> Result<Option<T>, E> {
        T::try_from(value).map(Some).map_err(|_| E::custom(format!("{value} is out of range")))
    }
}

impl<T: TryFrom<u64>, const TEXT: bool> serde::de::Visitor<'_> for Whole<T, TEXT> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a whole number")
    }

    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Self::Value, E> {
        Self::from_u64(value)
    }

    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Self::Value, E> {
        u64::try_from(value)
            .map_err(|_| E::custom(format!("expected a whole number of at least 0, got {value}")))
            .and_then(Self::from_u64)
    }

    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Self::Value, E> {
        Self::from_f64(value)
    }

    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Self::Value, E> {
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        match value.split_once('.') {
            _ if !TEXT => Err(E::invalid_type(serde::de::Unexpected::Str(value), &self)),
            None if digits(value) => value.parse::<u64>().map_err(E::custom).and_then(Self::from_u64),
            Some((whole, fraction)) if digits(whole) && digits(fraction) => {
                value.parse::<f64>().map_err(E::custom).and_then(Self::from_f64)
            }
            _ => Err(E::custom(format!("expected a whole number, got {value:?}"))),
        }
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde::de::value::{Error, StrDeserializer};

    #[derive(Deserialize, Debug, PartialEq)]
    struct Body {
        #[serde(default, deserialize_with = "super::integer")]
        n: Option<u32>,
    }

    #[test]
    fn whole_numbers_in_json_and_in_query_strings() {
        let json = |text: &str| serde_json::from_str::<Body>(text).map(|b| b.n);
        assert_eq!(json(r#"{"n": 12}"#).unwrap(), Some(12));
        assert_eq!(json(r#"{"n": 12.0}"#).unwrap(), Some(12));
        assert_eq!(json(r#"{"n": null}"#).unwrap(), None);
        assert_eq!(json(r#"{}"#).unwrap(), None);
        for bad in [r#"{"n": 12.5}"#, r#"{"n": -1}"#, r#"{"n": 5000000000}"#, r#"{"n": "12"}"#, r#"{"n": true}"#] {
            assert!(json(bad).is_err(), "{bad}");
        }
        let query = |text: &str| super::integer_in_query::<_, u32>(StrDeserializer::<Error>::new(text));
        assert_eq!(query("7").unwrap(), Some(7));
        assert_eq!(query("7.0").unwrap(), Some(7));
        for bad in ["7.5", "-7", "abc", "1e3", "", "inf", "7.", ".5", "+7"] {
            assert!(query(bad).is_err(), "{bad:?}");
        }
    }
}
