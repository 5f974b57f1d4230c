//! API keys with scopes, shared by the REST API and the ML API.
//!
//! A key is given as `SCOPE:KEY` (`read:…`, `write:…`, `admin:…`) or bare (`KEY`: admin, as
//! before scopes existed). Scopes nest: `write` grants what `read` does, `admin` everything.
//! Only the keys' SHA-256 digests are kept, and a presented key is compared with every one of
//! them in constant time.

use std::net::IpAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::AppError;

/// The header a client sends its key in.
pub const API_KEY_HEADER: &str = "x-api-key";

/// What a key may do. Ordered: each scope grants everything the ones before it grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Search, list, get, originals and thumbnails, jobs' status.
    Read,
    /// Read, plus ingest, cancel, create and select collections.
    Write,
    /// Write, plus delete collections and clear the dedup cache.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A configuration of keys that cannot be used. Each message names the flag to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyConfigError {
    #[error(
        "{flag}: key {position} is empty or blank (a trailing comma, or a variable that is not set?); every key must have characters"
    )]
    Empty { flag: &'static str, position: usize },
    #[error("{flag}: key {position} has scope {scope:?}; use read:KEY, write:KEY or admin:KEY (a key without `:` is admin)")]
    UnknownScope { flag: &'static str, position: usize, scope: String },
    #[error("{flag}: key {position} holds spaces, control or non-ASCII characters, which an x-api-key header cannot carry")]
    BadCharacters { flag: &'static str, position: usize },
    #[error(
        "refusing to listen on {host} without an API key: that address is reachable from other machines. \
         Give a key with {flag} (e.g. admin:$(openssl rand -hex 32)), listen on 127.0.0.1, \
         or pass --allow-unauthenticated when something in front of this server checks who calls it"
    )]
    Exposed { flag: &'static str, host: IpAddr },
}

/// One accepted key: its scope and the SHA-256 of its text.
struct KeyEntry {
    scope: Scope,
    digest: [u8; 32],
}

/// The keys a server accepts. Empty: the server asks for none.
#[derive(Clone, Default)]
pub struct ApiKeys {
    entries: Arc<[KeyEntry]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys(<{} hidden>)", self.entries.len())
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Equality of two digests without an early exit.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

impl ApiKeys {
    /// Parses the values of `flag` (`SCOPE:KEY` or `KEY`); surrounding spaces are dropped.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>, flag: &'static str) -> Result<Self, KeyConfigError> {
        let mut entries = Vec::new();
        for (i, value) in values.into_iter().enumerate() {
            let position = i + 1;
            let value = value.trim();
            let (scope, key) = match value.split_once(':') {
                Some((scope, key)) => match Scope::parse(scope) {
                    Some(scope) => (scope, key),
                    None => return Err(KeyConfigError::UnknownScope { flag, position, scope: scope.to_owned() }),
                },
                None => (Scope::Admin, value),
            };
            if key.trim().is_empty() {
                return Err(KeyConfigError::Empty { flag, position });
            }
            if !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(KeyConfigError::BadCharacters { flag, position });
            }
            entries.push(KeyEntry { scope, digest: digest(key.as_bytes()) });
        }
        Ok(Self { entries: entries.into() })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The scope of `presented`, if it is one of the keys. Every key is compared, each in
    /// constant time, so the answer's timing says nothing about how close a guess came.
    pub fn scope_of(&self, presented: &[u8]) -> Option<Scope> {
        let presented = digest(presented);
        let mut found = None;
        for entry in self.entries.iter() {
            if same_digest(&presented, &entry.digest) {
                found = Some(found.map_or(entry.scope, |s: Scope| s.max(entry.scope)));
            }
        }
        found
    }

    /// Lets a request through when no keys are configured, or when its `x-api-key` holds a key
    /// whose scope covers `needed`: else 401 `unauthorized` (no key, unknown key) or 403
    /// `forbidden` naming the scope `what` needs.
    pub fn authorize(&self, headers: &HeaderMap, needed: Scope, what: &str) -> Result<Scope, AppError> {
        if self.is_empty() {
            return Ok(Scope::Admin);
        }
        let Some(presented) = headers.get(API_KEY_HEADER) else {
            return Err(AppError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("this server requires an {API_KEY_HEADER} header"),
            ));
        };
        let Some(scope) = self.scope_of(presented.as_bytes()) else {
            return Err(AppError::new(StatusCode::UNAUTHORIZED, "unauthorized", format!("the {API_KEY_HEADER} header holds an unknown key")));
        };
        if scope < needed {
            return Err(AppError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("{what} needs a key with scope {needed} (or higher); this key has scope {scope}"),
            ));
        }
        Ok(scope)
    }
}

/// Refuses to serve without keys on an address other machines can reach, unless
/// `allow_unauthenticated` says something else guards the server.
pub fn check_exposure(host: IpAddr, keys: &ApiKeys, allow_unauthenticated: bool, flag: &'static str) -> Result<(), KeyConfigError> {
    if keys.is_empty() && !host.is_loopback() && !allow_unauthenticated {
        return Err(KeyConfigError::Exposed { flag, host });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAG: &str = "--api-key";

    fn keys(values: &[&str]) -> Result<ApiKeys, KeyConfigError> {
        ApiKeys::parse(values.iter().copied(), FLAG)
    }

    #[test]
    fn empty_and_blank_keys_are_refused_naming_the_flag() {
        for values in [&["k1", ""][..], &[" "], &["admin:"], &["read:  "], &["\t"]] {
            let error = keys(values).unwrap_err();
            assert!(matches!(error, KeyConfigError::Empty { .. }), "{values:?}: {error}");
            assert!(error.to_string().contains("--api-key"), "{error}");
        }
        assert!(matches!(keys(&["reed:k"]).unwrap_err(), KeyConfigError::UnknownScope { .. }));
        assert!(matches!(keys(&["a b"]).unwrap_err(), KeyConfigError::BadCharacters { .. }));
        assert!(matches!(keys(&["clé"]).unwrap_err(), KeyConfigError::BadCharacters { .. }));
    }

    #[test]
    fn scopes_parse_and_unscoped_keys_are_admin() {
        let keys = keys(&["read:r1", " write:w1", "admin:a1", "plain"]).unwrap();
        assert_eq!(keys.len(), 4);
        assert_eq!(keys.scope_of(b"r1"), Some(Scope::Read));
        assert_eq!(keys.scope_of(b"w1"), Some(Scope::Write));
        assert_eq!(keys.scope_of(b"a1"), Some(Scope::Admin));
        assert_eq!(keys.scope_of(b"plain"), Some(Scope::Admin));
        assert_eq!(keys.scope_of(b""), None);
        assert_eq!(keys.scope_of(b"read:r1"), None, "the scope prefix is not part of the key");
        assert_eq!(keys.scope_of(b"r"), None);
        assert!(!format!("{keys:?}").contains("r1"));
    }

    #[test]
    fn authorize_answers_401_403_or_lets_through() {
        let keys = keys(&["read:r1", "admin:a1"]).unwrap();
        let mut headers = HeaderMap::new();
        assert_eq!(keys.authorize(&headers, Scope::Read, "x").unwrap_err().code, "unauthorized");
        headers.insert(API_KEY_HEADER, "".parse().unwrap());
        assert_eq!(keys.authorize(&headers, Scope::Read, "x").unwrap_err().status, StatusCode::UNAUTHORIZED);
        headers.insert(API_KEY_HEADER, "r1".parse().unwrap());
        assert_eq!(keys.authorize(&headers, Scope::Read, "x"), Ok(Scope::Read));
        let denied = keys.authorize(&headers, Scope::Admin, "DELETE /x").unwrap_err();
        assert_eq!((denied.status, denied.code), (StatusCode::FORBIDDEN, "forbidden"));
        assert!(denied.message.contains("admin"), "{}", denied.message);
        headers.insert(API_KEY_HEADER, "a1".parse().unwrap());
        assert_eq!(keys.authorize(&headers, Scope::Admin, "x"), Ok(Scope::Admin));
        assert_eq!(ApiKeys::default().authorize(&HeaderMap::new(), Scope::Admin, "x"), Ok(Scope::Admin));
    }

    #[test]
    fn exposure_needs_a_key_or_an_explicit_opt_out() {
        let none = ApiKeys::default();
        let some = keys(&["k"]).unwrap();
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        assert!(check_exposure("127.0.0.1".parse().unwrap(), &none, false, FLAG).is_ok());
        assert!(check_exposure("::1".parse().unwrap(), &none, false, FLAG).is_ok());
        let error = check_exposure(any, &none, false, FLAG).unwrap_err();
        assert!(error.to_string().contains("--allow-unauthenticated") && error.to_string().contains(FLAG), "{error}");
        assert!(check_exposure(any, &none, true, FLAG).is_ok());
        assert!(check_exposure(any, &some, false, FLAG).is_ok());
    }
}
