//! Where Redis is and how long to wait for it.

use std::path::PathBuf;
use std::time::Duration;

use redis::aio::{ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, IntoConnectionInfo};

use crate::conn::Conn;
use crate::error::{Error, Result};
use crate::sentinel::{self, SentinelUrl};

/// The URL used when neither the caller nor `REDIS_URL` gives one.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// How to reach Redis: `redis://`, `rediss://` (TLS), `unix:///path/to.sock`, with optional
/// `user:password@` (ACL) and a db number (`/2`, or `?db=2` for sockets); or the master a set
/// of Sentinels name, `redis+sentinel://[user:password@]s1:26379,s2:26379/mymaster[/db]`
/// (see [`crate::sentinel`]), followed across failovers.
///
/// ```
/// let config = rustq_core::RedisConfig::new("redis://app:s3cret@cache.internal:6380/2");
/// assert_eq!(config.redacted_url(), "redis://app:REDACTED@cache.internal:6380/2");
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RedisConfig {
    /// The Redis URL, password included: log [`RedisConfig::redacted_url`] instead.
    pub url: String,
    /// How long to wait for a connection to open.
    pub connect_timeout: Duration,
    /// How long to wait for a reply. `None` waits forever (only for blocking commands, which
    /// rustq runs on connections of their own).
    pub response_timeout: Option<Duration>,
    /// PEM file of the CA that signed the server's certificate (for `rediss://` with a private CA).
    pub ca_file: Option<PathBuf>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig::from_env()
    }
}

impl RedisConfig {
    /// A config for `url`, with 1 s to connect and 5 s to wait for a reply.
    pub fn new(url: impl Into<String>) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Some(Duration::from_secs(5)),
            ca_file: None,
        }
    }

    /// `REDIS_URL` if set and not blank, else `redis://127.0.0.1:6379/0`.
    pub fn from_env() -> RedisConfig {
        let url = std::env::var("REDIS_URL")
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_REDIS_URL.to_string());
        RedisConfig::new(url)
    }

    /// Whether Redis runs on this machine: a loopback address (`127.0.0.0/8`, `::1`,
    /// `localhost`) or a unix socket. False for anything else, a URL that does not parse included.
    pub fn is_local(&self) -> bool {
        use redis::{ConnectionAddr, IntoConnectionInfo};
        let Ok(info) = self.url.as_str().into_connection_info() else {
            return false;
        };
        match info.addr() {
            ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => {
                host.eq_ignore_ascii_case("localhost")
                    || host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            ConnectionAddr::Unix(_) => true,
            _ => false,
        }
    }

    /// The URL with any password replaced by `REDACTED`, fit for logs and error messages.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// Checks the URL (and CA file) without connecting: a typo fails at boot, not at the first
    /// push. The error names the URL, redacted.
    pub fn check(&self) -> Result<()> {
        match self.sentinel()? {
            Some(_) if self.ca_file.is_some() => Err(Error::Config {
                url: self.redacted_url(),
                reason: "TLS to a Sentinel-managed Redis is not supported yet".into(),
            }),
            Some(_) => Ok(()),
            None => self.client().map(|_| ()),
        }
    }

    /// The Sentinels and master of a `redis+sentinel://` URL; `None` for any other URL.
    pub fn sentinel(&self) -> Result<Option<SentinelUrl>> {
        if !sentinel::is_sentinel_url(&self.url) {
            return Ok(None);
        }
        SentinelUrl::parse(&self.url)
            .map(Some)
            .map_err(|reason| Error::Config {
                url: self.redacted_url(),
                reason,
            })
    }

    /// A `redis::Client` for this URL (and CA, if given); not for a `redis+sentinel://` URL,
    /// whose server is known only once the Sentinels are asked.
    pub fn client(&self) -> Result<redis::Client> {
        let bad = |reason: String| Error::Config {
            url: self.redacted_url(),
            reason,
        };
        let info = self
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| bad(e.to_string()))?;
        match &self.ca_file {
            None => redis::Client::open(info).map_err(|e| bad(e.to_string())),
            Some(path) => {
                let root = std::fs::read(path)
                    .map_err(|e| bad(format!("cannot read CA file {}: {e}", path.display())))?;
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root),
                };
                redis::Client::build_with_tls(info, certs).map_err(|e| bad(e.to_string()))
            }
        }
    }

    /// A shared, self-reconnecting connection for ordinary commands (behind Sentinel, to the
    /// master they name, followed across failovers).
    pub async fn connection_manager(&self) -> Result<Conn> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(self.response_timeout)
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let connect_error = |source| Error::Connect {
            url: self.redacted_url(),
            source,
        };
        if let Some(sentinel) = self.sentinel()? {
            let client = sentinel.client().map_err(connect_error)?;
            let lookup_timeout = self.connect_timeout * 3;
            return Conn::sentinel(client, config, lookup_timeout, sentinel.db, sentinel.master)
                .await
                .map_err(connect_error);
        }
        self.client()?
            .get_connection_manager_with_config(config)
            .await
            .map(Conn::direct)
            .map_err(connect_error)
    }

    /// The server to connect to now: the URL's, or the master the Sentinels name.
    async fn current_client(&self) -> Result<redis::Client> {
        match self.sentinel()? {
            None => self.client(),
            Some(sentinel) => {
                let connect_error = |source| Error::Connect {
                    url: self.redacted_url(),
                    source,
                };
                let mut client = sentinel.client().map_err(connect_error)?;
                crate::conn::master_client(&mut client, self.connect_timeout * 3)
                    .await
                    .map_err(connect_error)
            }
        }
    }

    /// A dedicated connection whose replies may take `block` longer than usual: for `BRPOP`,
    /// `BLMOVE` and friends, which must not share a multiplexed connection or time out early.
    pub async fn blocking_connection(&self, block: Duration) -> Result<MultiplexedConnection> {
        let client = self.current_client().await?;
        let response = self.response_timeout.map(|t| t + block);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(response);
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|source| Error::Connect {
                url: self.redacted_url(),
                source,
            })
    }
}

/// Replaces the password in a Redis URL with `REDACTED`: the userinfo's (`user:pass@`, or a bare
/// `pass@`, even when the password holds an unencoded `/`), and the `pass`/`password` query
/// parameters of unix-socket URLs (`unix:///r.sock?db=0&pass=…`, the form Sidekiq's own config
/// builds).
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let (head, query) = match url.find('?') {
        Some(q) => (&url[..q], Some(&url[q + 1..])),
        None => (url, None),
    };
    let rest = &head[scheme_end + 3..];
    // The host follows the last '@': a password may hold '/' or '@' unencoded.
    let head = match rest.rfind('@') {
        None => head.to_string(),
        Some(at) => {
            let userinfo = &rest[..at];
            let redacted = match userinfo.find(':') {
                Some(colon) => format!("{}:REDACTED", &userinfo[..colon]),
                None if userinfo.is_empty() => String::new(),
                // redis://password@host: a bare userinfo is a password in redis-rb and redis-rs.
                None => "REDACTED".to_string(),
            };
            format!("{}{}@{}", &url[..scheme_end + 3], redacted, &rest[at + 1..])
        }
    };
    let Some(query) = query else {
        return head;
    };
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((name, _)) if matches!(name, "pass" | "password" | "sentinel_password") => {
                format!("{name}=REDACTED")
            }
            _ => param.to_string(),
        })
        .collect();
    format!("{head}?{}", params.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(redact_url("redis://:pw@h:1/0"), "redis://:REDACTED@h:1/0");
        assert_eq!(
            redact_url("rediss://u:p%40ss@h/3"),
            "rediss://u:REDACTED@h/3"
        );
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact_url("unix:///tmp/r.sock"), "unix:///tmp/r.sock");
    }

    #[test]
    fn unix_socket_and_slash_passwords_never_show() {
        assert_eq!(
            redact_url("unix:///r.sock?db=0&pass=SECRET"),
            "unix:///r.sock?db=0&pass=REDACTED"
        );
        assert_eq!(
            redact_url("redis+unix:///r.sock?password=SECRET&db=2"),
            "redis+unix:///r.sock?password=REDACTED&db=2"
        );
        assert_eq!(
            redact_url("redis://u:se/cr@et@h:6379/0"),
            "redis://u:REDACTED@h:6379/0"
        );
        assert_eq!(redact_url("redis://h:6379/0?db=1"), "redis://h:6379/0?db=1");
    }

    #[test]
    fn bad_urls_are_config_errors() {
        let err = RedisConfig::new("http://nope").client().unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{err}");
        assert!(err.to_string().contains("http://nope"));
    }

    #[test]
    fn knows_a_redis_on_this_machine() {
        for url in [
            "redis://127.0.0.1:6379/2",
            "redis://127.0.0.2:6380",
            "redis://localhost",
            "redis://[::1]:6379",
            "rediss://u:pw@127.0.0.1:6380/0",
            "unix:///tmp/redis.sock",
        ] {
            assert!(RedisConfig::new(url).is_local(), "{url}");
        }
        for url in [
            "redis://10.0.0.5:6379",
            "redis://cache.internal:6379/1",
            "rediss://redis.example.com:6380",
            "redis://[2001:db8::1]:6379",
            "http://nope",
        ] {
            assert!(!RedisConfig::new(url).is_local(), "{url}");
        }
    }

    #[test]
    fn accepts_every_scheme() {
        for url in [
            "redis://127.0.0.1:6379/2",
            "redis://user:pw@127.0.0.1:6379",
            "rediss://127.0.0.1:6380/0",
            "unix:///tmp/redis.sock",
        ] {
            RedisConfig::new(url)
                .client()
                .unwrap_or_else(|e| panic!("{url}: {e}"));
        }
    }
}
