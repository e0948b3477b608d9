//! Redis behind Sentinel: which Sentinels to ask, for which master, with what credentials.
//!
//! `redis+sentinel://[user:password@]host:port[,host:port…]/<master name>[/<db>][?sentinel_password=…]`
//! (`sentinel_username` too, for Sentinels with ACL users). The userinfo is the master's (and its
//! replicas'); the Sentinels themselves are asked without credentials unless the query gives
//! some. The master is looked up through the Sentinels when connecting, and again whenever the
//! connection to it is lost or it answers as a replica (`READONLY`): see [`crate::conn::Conn`].

use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

/// The URL scheme of a master found through Sentinels.
pub const SCHEME: &str = "redis+sentinel://";

/// A parsed `redis+sentinel://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentinelUrl {
    /// The Sentinels, in the order given.
    pub sentinels: Vec<(String, u16)>,
    /// The name the Sentinels know the master by (`sentinel monitor <name> …`).
    pub master: String,
    /// The database number on the master.
    pub db: i64,
    /// The master's ACL user, if any.
    pub username: Option<String>,
    /// The master's password, if any.
    pub password: Option<String>,
    /// The Sentinels' ACL user, if any.
    pub sentinel_username: Option<String>,
    /// The Sentinels' password, if any.
    pub sentinel_password: Option<String>,
}

/// Whether `url` names its Redis through Sentinels.
pub fn is_sentinel_url(url: &str) -> bool {
    url.starts_with(SCHEME)
}

fn decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "a bad %-escape".to_string())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a %-escape that is not UTF-8".to_string())
}

impl SentinelUrl {
    /// Parses a `redis+sentinel://` URL; the error says what is wrong (never the password).
    pub fn parse(url: &str) -> Result<SentinelUrl, String> {
        let rest = url
            .strip_prefix(SCHEME)
            .ok_or_else(|| format!("not a {SCHEME} URL"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        // The userinfo ends at the last '@' (a password may hold '@' and '/'); the hosts end
        // at the first '/' after it.
        let (userinfo, rest) = match rest.rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (hosts, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash + 1..]),
            None => (rest, ""),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((user, pass)) => (
                    Some(decode(user)?).filter(|u| !u.is_empty()),
                    Some(decode(pass)?),
                ),
                None => (None, Some(decode(info)?)),
            },
        };
        let mut sentinels = Vec::new();
        for host in hosts.split(',').filter(|h| !h.is_empty()) {
            let (name, port) = match host.rsplit_once(':') {
                Some((name, port)) => (
                    name,
                    port.parse::<u16>()
                        .map_err(|_| format!("sentinel port {port:?} is not a number"))?,
                ),
                None => (host, 26379),
            };
            sentinels.push((name.to_string(), port));
        }
        if sentinels.is_empty() {
            return Err(
                "no sentinel host (redis+sentinel://host:26379,host2:26379/mymaster)".into(),
            );
        }
        let mut segments = path.split('/').filter(|s| !s.is_empty());
        let master =
            segments.next().map(decode).transpose()?.ok_or_else(|| {
                "no master name (redis+sentinel://host:26379/mymaster)".to_string()
            })?;
        let db = match segments.next() {
            Some(db) => db
                .parse::<i64>()
                .map_err(|_| format!("db {db:?} is not a number"))?,
            None => 0,
        };
        let mut parsed = SentinelUrl {
            sentinels,
            master,
            db,
            username,
            password,
            sentinel_username: None,
            sentinel_password: None,
        };
        for param in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = param.split_once('=').unwrap_or((param, ""));
            match name {
                "sentinel_password" => parsed.sentinel_password = Some(decode(value)?),
                "sentinel_username" => parsed.sentinel_username = Some(decode(value)?),
                "db" => {
                    parsed.db = value
                        .parse()
                        .map_err(|_| format!("db {value:?} is not a number"))?
                }
                other => return Err(format!("unknown parameter {other:?}")),
            }
        }
        Ok(parsed)
    }

    /// A client that asks the Sentinels for the master.
    pub fn client(&self) -> redis::RedisResult<SentinelClient> {
        let sentinels = self
            .sentinels
            .iter()
            .map(|(host, port)| {
                let mut info = ConnectionAddr::Tcp(host.clone(), *port).into_connection_info()?;
                let mut redis = RedisConnectionInfo::default();
                if let Some(user) = &self.sentinel_username {
                    redis = redis.set_username(user);
                }
                if let Some(pass) = &self.sentinel_password {
                    redis = redis.set_password(pass);
                }
                info = info.set_redis_settings(redis);
                Ok(info)
            })
            .collect::<redis::RedisResult<Vec<ConnectionInfo>>>()?;
        let mut node = RedisConnectionInfo::default().set_db(self.db);
        if let Some(user) = &self.username {
            node = node.set_username(user);
        }
        if let Some(pass) = &self.password {
            node = node.set_password(pass);
        }
        SentinelClient::build(
            sentinels,
            self.master.clone(),
            Some(SentinelNodeConnectionInfo::default().set_redis_connection_info(node)),
            SentinelServerType::Master,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_master_db_and_credentials() {
        let url = SentinelUrl::parse(
            "redis+sentinel://app:p%40ss@s1:26379,s2:26380,s3/mymaster/2?sentinel_password=sp",
        )
        .unwrap();
        assert_eq!(
            url.sentinels,
            vec![
                ("s1".into(), 26379),
                ("s2".into(), 26380),
                ("s3".into(), 26379)
            ]
        );
        assert_eq!(url.master, "mymaster");
        assert_eq!(url.db, 2);
        assert_eq!(url.username.as_deref(), Some("app"));
        assert_eq!(url.password.as_deref(), Some("p@ss"));
        assert_eq!(url.sentinel_password.as_deref(), Some("sp"));
    }

    #[test]
    fn a_password_with_slashes_and_ats_stays_whole_and_unseen() {
        let url = SentinelUrl::parse("redis+sentinel://app:s3cr/et@x@s1:26379/m").unwrap();
        assert_eq!(url.password.as_deref(), Some("s3cr/et@x"));
        assert_eq!(url.sentinels, vec![("s1".into(), 26379)]);
        assert_eq!(url.master, "m");
        let err = SentinelUrl::parse("redis+sentinel://:12/34@s1:x/m").unwrap_err();
        assert!(!err.contains("12") && !err.contains("34"), "{err}");
    }

    #[test]
    fn says_what_is_missing() {
        assert!(SentinelUrl::parse("redis+sentinel://s1:26379")
            .unwrap_err()
            .contains("no master name"));
        assert!(SentinelUrl::parse("redis+sentinel:///mymaster")
            .unwrap_err()
            .contains("no sentinel host"));
        assert!(SentinelUrl::parse("redis+sentinel://s1:x/m")
            .unwrap_err()
            .contains("port"));
    }
}
