//! The online store's read path, with the layout and freshness rules of
//! `driftline.featurestore.online`: one hash per entity, `t` (event time, epoch seconds as
//! text), `d` (the values as little-endian doubles, in the feature set's order) and, from hashes
//! an earlier version wrote, `v` (the values as space-separated text). One pipelined
//! `HMGET key t d v` per entity, all of a call's entities in one round trip. A value older than
//! its feature's ttl is stale, never served as fresh.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ClientTlsConfig, TlsCertificates};

use crate::spec::{Policy, StoreSpec, StoreTls};

/// One entity's vector as read.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    /// No hash, or one that does not hold a usable time and vector.
    Missing,
    Found {
        values: Vec<f64>,
        event_time: f64,
        age_s: f64,
        /// How many of its features are older than their ttl.
        stale: usize,
    },
}

#[derive(Debug)]
pub enum ReadError {
    Unreachable(String),
    Timeout,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Unreachable(why) => write!(f, "cannot be reached: {why}"),
            ReadError::Timeout => f.write_str("did not answer in time"),
        }
    }
}

/// Key format and read semantics, independent of the connection (unit-tested on its own).
#[derive(Debug, Clone)]
pub struct Layout {
    prefix: String,
    names: Vec<String>,
    ttls_s: Vec<f64>,
    defaults: Vec<f64>,
    policy: Policy,
}

impl Layout {
    pub fn new(spec: &StoreSpec) -> Self {
        Layout {
            prefix: spec.key_prefix.clone(),
            names: spec.names.clone(),
            ttls_s: spec.ttls_s.clone(),
            defaults: spec.defaults.clone(),
            policy: spec.policy,
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn width(&self) -> usize {
        self.ttls_s.len()
    }

    /// Whether feature `column` (in the store's order) is stale at `age_s`.
    pub fn is_stale(&self, column: usize, age_s: f64) -> bool {
        self.ttls_s[column] < age_s
    }

    /// The first feature, in the store's order, that is stale at `age_s`.
    pub fn first_stale(&self, age_s: f64) -> Option<&str> {
        (0..self.width())
            .find(|&c| self.is_stale(c, age_s))
            .map(|c| self.names[c].as_str())
    }

    pub fn key(&self, entity_id: &str) -> String {
        format!("{}{}", self.prefix, entity_id)
    }

    /// One entity's `[t, d, v]` as of `now` (epoch seconds). Under the `default` policy stale
    /// values are replaced by their defaults; `serve` and `fail` keep them (`fail` is judged by
    /// the caller, which tells unknown entities apart first).
    pub fn parse(
        &self,
        stamp: Option<&[u8]>,
        packed: Option<&[u8]>,
        text: Option<&[u8]>,
        now: f64,
    ) -> Row {
        let width = self.width();
        // A time that is not a number (a foreign writer, a torn key) reads as missing.
        let event_time = stamp
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<f64>().ok());
        let Some(event_time) = event_time else {
            return Row::Missing;
        };
        let values = match packed {
            Some(bytes) if bytes.len() == 8 * width => bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect::<Vec<_>>(),
            Some(_) => return Row::Missing,
            None => match text.and_then(|t| text_values(t, width)) {
                Some(values) => values,
                None => return Row::Missing,
            },
        };
        let age_s = now - event_time;
        let mut values = values;
        let mut stale = 0;
        for (j, value) in values.iter_mut().enumerate() {
            if self.is_stale(j, age_s) {
                stale += 1;
                if self.policy == Policy::Default {
                    *value = self.defaults[j];
                }
            }
        }
        Row::Found {
            values,
            event_time,
            age_s,
            stale,
        }
    }
}

/// The values of a hash an earlier version wrote (space-separated numbers), when there are
/// `count` of them.
fn text_values(text: &[u8], count: usize) -> Option<Vec<f64>> {
    let text = std::str::from_utf8(text).ok()?;
    let values = text
        .split(' ')
        .map(|p| p.parse::<f64>().ok())
        .collect::<Option<Vec<_>>>()?;
    (values.len() == count).then_some(values)
}

/// The PEM files of a `rediss://` store, read once at connect (a renewed certificate takes a
/// restart, as in the Python services).
fn certificates(tls: &StoreTls) -> Result<TlsCertificates, ReadError> {
    let read = |path: &String| {
        std::fs::read(path).map_err(|e| ReadError::Unreachable(format!("cannot read {path}: {e}")))
    };
    let client_tls = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        (None, None) => None,
        _ => {
            return Err(ReadError::Unreachable(
                "a client certificate and its key go together".into(),
            ))
        }
    };
    Ok(TlsCertificates {
        client_tls,
        root_cert: tls.ca_file.as_ref().map(read).transpose()?,
    })
}

/// The online store on one multiplexed connection: concurrent calls' reads share it, each
/// call's entities pipelined in one round trip. A connection that breaks (Redis restarted) is
/// re-established in the background; calls meanwhile fail as unreachable.
pub struct Store {
    connection: ConnectionManager,
    pub layout: Layout,
    timeout: Duration,
}

type Reply = (Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>);

impl Store {
    pub async fn connect(spec: &StoreSpec) -> Result<Self, ReadError> {
        let client = match &spec.tls {
            Some(tls) => redis::Client::build_with_tls(spec.url.as_str(), certificates(tls)?),
            None => redis::Client::open(spec.url.as_str()),
        }
        .map_err(|e| ReadError::Unreachable(e.to_string()))?;
        let timeout = Duration::from_secs_f64(spec.timeout_s);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(2)
            .set_max_delay(500);
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| ReadError::Unreachable(e.to_string()))?;
        Ok(Store {
            connection,
            layout: Layout::new(spec),
            timeout,
        })
    }

    pub async fn read(&self, entity_ids: &[&str], now: f64) -> Result<Vec<Row>, ReadError> {
        let mut pipe = redis::pipe();
        for id in entity_ids {
            pipe.cmd("HMGET")
                .arg(self.layout.key(id))
                .arg("t")
                .arg("d")
                .arg("v");
        }
        let mut connection = self.connection.clone();
        let replies: Vec<Reply> =
            tokio::time::timeout(self.timeout, pipe.query_async(&mut connection))
                .await
                .map_err(|_| ReadError::Timeout)?
                .map_err(|e| ReadError::Unreachable(e.to_string()))?;
        if replies.len() != entity_ids.len() {
            return Err(ReadError::Unreachable(format!(
                "{} replies for {} entities",
                replies.len(),
                entity_ids.len()
            )));
        }
        Ok(replies
            .iter()
            .map(|(t, d, v)| {
                self.layout
                    .parse(t.as_deref(), d.as_deref(), v.as_deref(), now)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(policy: Policy) -> Layout {
        Layout::new(&StoreSpec {
            url: String::new(),
            key_prefix: "dl:fs:card:v1:".into(),
            feature_set: "card".into(),
            names: vec!["a".into(), "b".into(), "c".into()],
            ttls_s: vec![60.0, 3600.0, 60.0],
            defaults: vec![-1.0, -2.0, -3.0],
            policy,
            timeout_s: 1.0,
            tls: None,
        })
    }

    fn packed(values: &[f64]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn keys_follow_the_feature_set_prefix() {
        assert_eq!(layout(Policy::Serve).key("card-7"), "dl:fs:card:v1:card-7");
    }

    #[test]
    fn packed_values_are_read_with_their_age() {
        let row = layout(Policy::Serve).parse(
            Some(b"100.5"),
            Some(&packed(&[1.0, 2.5, -3.0])),
            None,
            130.5,
        );
        assert_eq!(
            row,
            Row::Found {
                values: vec![1.0, 2.5, -3.0],
                event_time: 100.5,
                age_s: 30.0,
                stale: 0
            }
        );
    }

    #[test]
    fn a_value_past_its_ttl_is_stale_and_the_default_policy_replaces_it() {
        let d = packed(&[1.0, 2.0, 3.0]);
        let served = layout(Policy::Serve).parse(Some(b"0"), Some(&d), None, 61.0);
        assert_eq!(
            served,
            Row::Found {
                values: vec![1.0, 2.0, 3.0],
                event_time: 0.0,
                age_s: 61.0,
                stale: 2
            }
        );
        let defaulted = layout(Policy::Default).parse(Some(b"0"), Some(&d), None, 61.0);
        assert_eq!(
            defaulted,
            Row::Found {
                values: vec![-1.0, 2.0, -3.0],
                event_time: 0.0,
                age_s: 61.0,
                stale: 2
            }
        );
        // An age equal to the ttl is still fresh, as in the Python store.
        let edge = layout(Policy::Default).parse(Some(b"0"), Some(&d), None, 60.0);
        assert!(matches!(edge, Row::Found { stale: 0, .. }));
    }

    #[test]
    fn text_values_of_an_earlier_version_still_read() {
        let row = layout(Policy::Serve).parse(Some(b"10"), None, Some(b"1.5 2 3e1"), 10.0);
        assert_eq!(
            row,
            Row::Found {
                values: vec![1.5, 2.0, 30.0],
                event_time: 10.0,
                age_s: 0.0,
                stale: 0
            }
        );
    }

    #[test]
    fn unusable_hashes_read_as_missing() {
        let l = layout(Policy::Serve);
        let good = packed(&[1.0, 2.0, 3.0]);
        assert_eq!(l.parse(None, Some(&good), None, 1.0), Row::Missing); // no time
        assert_eq!(l.parse(Some(b"soon"), Some(&good), None, 1.0), Row::Missing); // not a number
        assert_eq!(
            l.parse(Some(b"1"), Some(&good[..16]), None, 1.0),
            Row::Missing
        ); // short vector
        assert_eq!(l.parse(Some(b"1"), None, Some(b"1 2"), 1.0), Row::Missing); // two of three
        assert_eq!(l.parse(Some(b"1"), None, Some(b"1 x 3"), 1.0), Row::Missing);
        assert_eq!(l.parse(Some(b"1"), None, None, 1.0), Row::Missing);
    }
}
