//! Values that must never reach a log: API keys, passwords, URLs that carry a password. They
//! hide themselves in `Debug` and `Display`, so a configuration can be logged whole; the value
//! itself is read with `expose`, where it is used.

use std::fmt;
use std::str::FromStr;

/// A secret string (an API key, a token): shown as `<hidden>`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<hidden>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<hidden>")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// A URL, or a comma-separated list of them, that may carry credentials
/// (`redis://:password@host`, `nats://user:password@host`, `nats://token@host`): shown with
/// them hidden ([`without_password`]).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The URL with its credentials, for the one place that connects with it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", without_password(&self.0))
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&without_password(&self.0))
    }
}

impl FromStr for SecretUrl {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl From<&str> for SecretUrl {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl From<String> for SecretUrl {
    fn from(value: String) -> Self {
        Self(value)
    }
}

/// `scheme://user:password@host` → `scheme://user:<hidden>@host` (and `scheme://token@host` →
/// `scheme://<hidden>@host`), for every URL of a comma-separated list.
pub fn without_password(urls: &str) -> String {
    urls.split(',')
        .map(|url| {
            let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
            let (authority, path) = rest.split_once('/').map_or((rest, None), |(a, p)| (a, Some(p)));
            let authority = match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    let user = userinfo.split_once(':').map_or("", |(u, _)| u);
                    if userinfo.contains(':') {
                        format!("{user}:<hidden>@{host}")
                    } else {
                        format!("<hidden>@{host}")
                    }
                }
                None => authority.to_owned(),
            };
            match path {
                Some(p) => format!("{scheme}://{authority}/{p}"),
                None => format!("{scheme}://{authority}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_in_urls() {
        assert_eq!(without_password("redis://:s3cret@redis:6379/0"), "redis://:<hidden>@redis:6379/0");
        assert_eq!(without_password("nats://bob:pw@a:4222,nats://b:4222"), "nats://bob:<hidden>@a:4222,nats://b:4222");
        assert_eq!(without_password("nats://token@a:4222"), "nats://<hidden>@a:4222");
        assert_eq!(without_password("http://qdrant:6334"), "http://qdrant:6334");
    }

    #[test]
    fn secrets_hide_themselves() {
        let key = Secret::new("k3y");
        assert_eq!(format!("{key} {key:?}"), "<hidden> <hidden>");
        assert_eq!(key.expose(), "k3y");
        let url = SecretUrl::new("redis://:pw@r:6379");
        assert_eq!(format!("{url}"), "redis://:<hidden>@r:6379");
        assert!(!format!("{url:?} {:?}", Some(&url)).contains("pw"));
        assert_eq!(url.expose(), "redis://:pw@r:6379");
    }
}
