//! `Rustq::Native.cron_*`: recurring jobs for `Rustq::Cron` (lib/rustq/cron.rb). Schedules
//! cross as JSON text both ways; `rustq-cron` checks and stores them (sidekiq-cron's keys).

use chrono::Utc;
use magnus::{block::Proc, Error, Ruby};
use rustq_cron::{Schedule, Schedules, Source, Status, StoreError, Zone};
use serde_json::{json, Value};

use crate::{client, errors};

/// Runs `work` with the schedules of the configured Redis, the GVL released.
fn with_schedules<T, F, Fut>(ruby: &Ruby, work: F) -> Result<T, Error>
where
    F: FnOnce(Schedules) -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let session = client::session(ruby)?;
    let wire = session.settings.options.wire;
    let outcome = session.run(ruby, |client| async move {
        Ok(work(Schedules::new(client.connection(), wire, Zone::from_env())).await)
    })?;
    outcome.map_err(|e| store_error(ruby, e))
}

fn store_error(ruby: &Ruby, error: StoreError) -> Error {
    let class = match &error {
        StoreError::Schedule(_) => "InvalidSchedule",
        StoreError::NotFound(_) => "ScheduleNotFound",
        StoreError::Redis(e) if e.is_io_error() || e.is_connection_dropped() => "ConnectionError",
        StoreError::Redis(_) => "CommandError",
        StoreError::Legacy(_) => "ConfigurationError",
    };
    errors::named(ruby, class, error.to_string())
}

/// A schedule as `Rustq::Cron::Schedule` reads it.
fn view(s: &Schedule, zone: Zone) -> Value {
    let next = s
        .check(zone)
        .ok()
        .and_then(|line| line.next_after(Utc::now()))
        .map(|t| t.timestamp());
    json!({
        "name": s.name, "namespace": s.namespace, "cron": s.cron, "class": s.class,
        "args": s.args, "queue": s.queue, "retry": s.retry, "description": s.description,
        "status": s.status.unwrap_or(Status::Enabled).as_str(),
        "source": if s.source == Source::File { "schedule" } else { "dynamic" },
        "active_job": s.active_job, "date_as_argument": s.date_as_argument,
        "missed": s.missed.as_str(), "missed_cap": s.missed_cap, "overlap": s.overlap.as_str(),
        "last_enqueue_time": s.last_enqueue_time, "next_time": next,
    })
}

/// `cron_save(name, spec_json) → status`: creates or updates a schedule made through the API;
/// nothing is written when it is not valid.
pub fn save(ruby: &Ruby, name: String, spec: String) -> Result<String, Error> {
    let yaml: serde_norway::Value = serde_norway::from_str(&spec)
        .map_err(|e| errors::named(ruby, "InvalidSchedule", format!("schedule {name:?}: {e}")))?;
    let mut schedule = rustq_cron::file::schedule(&name, &yaml)
        .map_err(|e| errors::named(ruby, "InvalidSchedule", e.to_string()))?;
    schedule.source = Source::Dynamic;
    let status = with_schedules(
        ruby,
        |schedules| async move { schedules.save(&schedule).await },
    )?;
    Ok(status.as_str().to_string())
}

/// `cron_find(namespace, name) → json | nil`
pub fn find(ruby: &Ruby, namespace: String, name: String) -> Result<Option<String>, Error> {
    with_schedules(ruby, |schedules| async move {
        let zone = schedules.zone();
        Ok(schedules
            .find(&namespace, &name)
            .await?
            .map(|s| view(&s, zone).to_string()))
    })
}

/// `cron_all(namespace) → json`: the readable schedules, and why the others are not.
pub fn all(ruby: &Ruby, namespace: String) -> Result<String, Error> {
    with_schedules(ruby, |schedules| async move {
        let zone = schedules.zone();
        let found = schedules.all(&[namespace]).await?;
        let list: Vec<Value> = found
            .iter()
            .map(|s| match s {
                Ok(s) => view(s, zone),
                Err(e) => json!({"name": e.name, "error": e.to_string()}),
            })
            .collect();
        Ok(Value::Array(list).to_string())
    })
}

/// `cron_destroy(namespace, name) → true | false`
pub fn destroy(ruby: &Ruby, namespace: String, name: String) -> Result<bool, Error> {
    with_schedules(ruby, |schedules| async move {
        schedules.destroy(&namespace, &name).await
    })
}

/// `cron_status(namespace, name, enabled)`
pub fn set_status(
    ruby: &Ruby,
    namespace: String,
    name: String,
    enabled: bool,
) -> Result<(), Error> {
    let status = if enabled {
        Status::Enabled
    } else {
        Status::Disabled
    };
    with_schedules(ruby, |schedules| async move {
        schedules.set_status(&namespace, &name, status).await
    })
}

/// `cron_enqueue(namespace, name) → jid`: the schedule's job, now.
pub fn enqueue(ruby: &Ruby, namespace: String, name: String) -> Result<String, Error> {
    with_schedules(ruby, |schedules| async move {
        schedules.enqueue_now(&namespace, &name).await
    })
}

/// `cron_history(namespace, name) → json`: `[[jid, enqueued], …]`, newest first.
pub fn history(ruby: &Ruby, namespace: String, name: String) -> Result<String, Error> {
    with_schedules(ruby, |schedules| async move {
        let entries = schedules.history(&namespace, &name).await?;
        Ok(json!(entries).to_string())
    })
}

/// `cron_command(argv, erb) → exit code`: `bundle exec rustq-worker cron …`, the standalone
/// binary's own command (`argv[0]` is `cron`), with Ruby's ERB for the config file.
pub fn command(argv: Vec<String>, erb: Proc) -> u8 {
    let render = |text: &str| -> Result<String, String> {
        erb.call::<_, String>((text,)).map_err(|e| e.to_string())
    };
    use std::io::Write;
    let status = rustq_engine::cron_command::status(argv.into_iter().map(Into::into), &render);
    let _ = std::io::stdout().flush();
    status
}
