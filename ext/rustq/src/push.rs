//! `Rustq::Native.push`, `.push_bulk` and `.prepare`: convert the Ruby hash (GVL held), let
//! `rustq-core` validate and normalise it (no network), then write it with the GVL released.

use std::sync::Arc;

use magnus::{prelude::*, Error, RArray, RHash, Ruby};
use rustq_core::client::Pushed;
use rustq_core::{wire, Client, PreparedPush};

use crate::client::{self, Session};
use crate::{convert, errors};

/// Converts and prepares a push; refuses it (writing nothing) with Sidekiq's message.
pub(crate) fn prepared(
    ruby: &Ruby,
    session: &Session,
    item: RHash,
    bulk: bool,
) -> Result<PreparedPush, Error> {
    let item = convert::job_item(ruby, item, bulk)?;
    let options = &session.settings.options;
    let prepared = match item.bulk_args {
        Some(args) => options.prepare_bulk_rendered(item.fields, args),
        None if bulk => options.prepare_bulk(item.fields),
        None => options.prepare_push(item.fields),
    }
    .map_err(|e| errors::invalid_job(ruby, &e))?;
    match item.bad_args {
        Some(message) => Err(errors::invalid_job_message(ruby, message)),
        None => Ok(prepared),
    }
}

/// Writes the jobs, once more if the connection had been dropped (a Redis restart, a killed
/// client, a failover): the shared connection reconnects in the background, and like redis-rb
/// (which Sidekiq uses) we retry once rather than fail the first push after every reconnect.
/// Timeouts are not retried: the first write may have landed.
async fn write(client: Client, prepared: &PreparedPush) -> rustq_core::Result<Pushed> {
    match client.write(prepared).await {
        Err(rustq_core::Error::Redis { source, .. })
            if source.is_connection_dropped() || source.is_connection_refusal() =>
        {
            client.write(prepared).await
        }
        other => other,
    }
}

/// [`write`] for several pushes in one round trip.
async fn write_all(client: Client, prepared: &[PreparedPush]) -> rustq_core::Result<Vec<Pushed>> {
    match client.write_all(prepared).await {
        Err(rustq_core::Error::Redis { source, .. })
            if source.is_connection_dropped() || source.is_connection_refusal() =>
        {
            client.write_all(prepared).await
        }
        other => other,
    }
}

/// `push(item) → jid`, or nil for a unique job whose lock another job holds.
pub fn push(ruby: &Ruby, item: RHash) -> Result<Option<String>, Error> {
    let session = client::session(ruby)?;
    let prepared = prepared(ruby, &session, item, false)?;
    let pushed = session.run(ruby, |client| write(client, &prepared))?;
    Ok(pushed
        .is_written(0)
        .then(|| prepared.jids.get(0).to_string()))
}

/// `push_bulk(items) → [jid, …]` (nil for a unique job whose lock another holds). Redis is written on rustq's runtime while this thread builds
/// the Array of jids (100,000 Ruby Strings take about as long as Redis takes to store the jobs).
pub fn push_bulk(ruby: &Ruby, items: RHash) -> Result<RArray, Error> {
    let session = client::session(ruby)?;
    let prepared = Arc::new(prepared(ruby, &session, items, true)?);
    if prepared.is_empty() {
        return Ok(ruby.ary_new());
    }
    let written = {
        let prepared = prepared.clone();
        session.spawn(
            ruby,
            move |client| async move { write(client, &prepared).await },
        )?
    };
    let jids = ruby.ary_from_iter(prepared.jids.iter().map(|jid| ruby.str_new(jid)));
    let pushed = session.wait(ruby, written)?;
    for &index in pushed.duplicates() {
        jids.store(index as isize, ruby.qnil())?;
    }
    Ok(jids)
}

/// `push_payloads([payload, …]) → [jid, …]`: jobs already normalised and perhaps changed one by
/// one (by client middleware), written in one round trip, each as `push` would write it.
pub fn push_payloads(ruby: &Ruby, payloads: RArray) -> Result<RArray, Error> {
    let session = client::session(ruby)?;
    let prepared = payloads
        .into_iter()
        .map(|payload| prepared(ruby, &session, RHash::try_convert(payload)?, false))
        .collect::<Result<Vec<_>, Error>>()?;
    let pushed = session.run(ruby, |client| write_all(client, &prepared))?;
    Ok(ruby.ary_from_iter(
        prepared
            .iter()
            .zip(&pushed)
            .map(|(push, pushed)| pushed.is_written(0).then(|| ruby.str_new(push.jids.get(0)))),
    ))
}

/// `prepare(item, bulk) → [payload_json, …]`: exactly what a push would write, without Redis,
/// for `Rustq::Testing.fake!`. Like Sidekiq's fake queues, a scheduled job keeps its `at` and an
/// immediate one gets its `enqueued_at`.
pub fn prepare(ruby: &Ruby, item: RHash, bulk: bool) -> Result<Vec<String>, Error> {
    let session = client::session(ruby)?;
    let prepared = prepared(ruby, &session, item, bulk)?;
    let options = &session.settings.options;
    let now = options.clock.now();
    Ok(prepared
        .jobs()
        .iter()
        .map(|entry| {
            let mut job = entry.job.clone();
            match entry.at {
                Some(at) => job.set("at", wire::float_value(at)),
                None => job.set_time("enqueued_at", now, options.wire),
            }
            job.to_json()
        })
        .collect())
}
