//! Credentials written in NATS URLs (`nats://user:password@host:4222`, `nats://token@host`):
//! the client library does not send them from the URL, so they are taken out of it and given
//! to the connection options.

use imgfleet_core::secret::Secret;

/// How a client authenticates to NATS.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum NatsCredentials {
    UserPassword { user: String, password: Secret },
    Token(Secret),
}

/// `%XX` escapes decoded (a password may hold characters a URL cannot).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The comma-separated `urls` without their user info, and the first credentials found in them.
pub fn split_credentials(urls: &str) -> (Vec<String>, Option<NatsCredentials>) {
    let mut credentials = None;
    let mut plain = Vec::new();
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let Some((scheme, rest)) = url.split_once("://") else {
            plain.push(url.to_owned());
            continue;
        };
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                if credentials.is_none() {
                    credentials = Some(match userinfo.split_once(':') {
                        Some((user, password)) => {
                            NatsCredentials::UserPassword { user: percent_decode(user), password: percent_decode(password).into() }
                        }
                        None => NatsCredentials::Token(percent_decode(userinfo).into()),
                    });
                }
                plain.push(format!("{scheme}://{host}{path}"));
            }
            None => plain.push(url.to_owned()),
        }
    }
    (plain, credentials)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_out_of_the_urls() {
        let (urls, creds) = split_credentials("nats://imgfleet:p%40ss@nats-1:4222, nats://nats-2:4222");
        assert_eq!(urls, ["nats://nats-1:4222", "nats://nats-2:4222"]);
        assert_eq!(creds, Some(NatsCredentials::UserPassword { user: "imgfleet".into(), password: "p@ss".into() }));
        assert!(!format!("{creds:?}").contains("p@ss"));
        let (urls, creds) = split_credentials("nats://s3cret@nats:4222");
        assert_eq!((urls, creds), (vec!["nats://nats:4222".to_owned()], Some(NatsCredentials::Token("s3cret".into()))));
        let (urls, creds) = split_credentials("nats://127.0.0.1:4222");
        assert_eq!((urls, creds), (vec!["nats://127.0.0.1:4222".to_owned()], None));
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }
}
