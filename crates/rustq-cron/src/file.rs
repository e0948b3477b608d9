//! Schedules declared in files, in sidekiq-cron's shapes: a hash of name → schedule, or an
//! array of schedules with a `name` (the `schedule:` section of a config file, or
//! `config/schedule.yml`). Keys: `cron`, `class` (or `klass`), `args`, `queue`, `description`,
//! `status`, `namespace`, `retry`, `active_job`, `date_as_argument`, `queue_name_prefix`,
//! `queue_name_delimiter`, `symbolize_args`, and rustq's `missed` (`skip`, `latest`, `all`),
//! `missed_cap` and `overlap` (`allow`, `skip_if_running`, `skip_if_queued`).

use serde_json::Value;
use serde_norway::Value as Yaml;

use crate::schedule::{parse_args, Missed, Overlap, Schedule, Source, Status};

/// Why a file's schedules were refused: the message names the schedule and the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FileError(pub String);

/// Reads the schedules of a `schedule:` section or a schedule file's document (ERB rendered).
pub fn schedules(doc: &Yaml) -> Result<Vec<Schedule>, FileError> {
    let mut found = Vec::new();
    match doc {
        Yaml::Null => {}
        Yaml::Mapping(map) => {
            for (name, spec) in map {
                let name = scalar(name)
                    .ok_or_else(|| FileError("a schedule's name is not a string".into()))?;
                found.push(schedule(&name, spec)?);
            }
        }
        Yaml::Sequence(list) => {
            for (i, spec) in list.iter().enumerate() {
                let name = spec
                    .get("name")
                    .and_then(scalar)
                    .ok_or_else(|| FileError(format!("schedule #{} has no `name`", i + 1)))?;
                found.push(schedule(&name, spec)?);
            }
        }
        _ => {
            return Err(FileError(
                "schedules must be a hash (name: {cron: …, class: …}) or an array of them".into(),
            ))
        }
    }
    let mut names: Vec<(&str, &str)> = found
        .iter()
        .map(|s| (s.namespace.as_str(), s.name.as_str()))
        .collect();
    names.sort();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(FileError(format!(
            "schedule {:?} is declared twice",
            w[0].1
        )));
    }
    Ok(found)
}

/// Reads Solid Queue's `config/recurring.yml`: its `environment` section (or the whole file when
/// it has none), each entry `key: {class, args, schedule, queue}`; the classes are ActiveJob
/// classes (Solid Queue runs only those), so they are enqueued as ActiveJob payloads. `priority`
/// is ignored; a `command:` entry is refused (Solid Queue runs its Ruby code in a job of its own).
pub fn recurring(doc: &Yaml, environment: Option<&str>) -> Result<Vec<Schedule>, FileError> {
    let Yaml::Mapping(root) = doc else {
        return match doc {
            Yaml::Null => Ok(Vec::new()),
            _ => Err(FileError(
                "recurring tasks must be a hash of name: {class: …, schedule: …}".into(),
            )),
        };
    };
    let is_task = |v: &Yaml| {
        v.get("schedule").is_some() || v.get("class").is_some() || v.get("command").is_some()
    };
    let tasks = match environment.and_then(|env| doc.get(env)) {
        Some(section) => section,
        None if root.values().all(is_task) => doc,
        // Sections for other environments only.
        None => return Ok(Vec::new()),
    };
    let Yaml::Mapping(tasks) = tasks else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    for (name, spec) in tasks {
        let name = scalar(name).ok_or_else(|| FileError("a task's name is not a string".into()))?;
        let bad =
            |key: &str, what: &str| FileError(format!("task {name:?}: `{key}` must be {what}"));
        if spec.get("command").is_some() {
            return Err(FileError(format!(
                "task {name:?}: `command:` tasks are not run by rustq: put the code in a job class and name it with `class:`"
            )));
        }
        let schedule_text = spec
            .get("schedule")
            .and_then(scalar)
            .ok_or_else(|| bad("schedule", "a schedule (\"every hour\", \"0 3 * * *\")"))?;
        let class = spec
            .get("class")
            .and_then(scalar)
            .ok_or_else(|| bad("class", "a job class name"))?;
        let mut s = Schedule::new(&name, &schedule_text, &class);
        s.source = Source::File;
        s.active_job = true;
        if let Some(args) = spec.get("args") {
            s.args =
                match serde_json::to_value(args).map_err(|_| bad("args", "JSON-like values"))? {
                    Value::Array(a) => a,
                    Value::Null => Vec::new(),
                    one => vec![one],
                };
        }
        if let Some(q) = spec.get("queue") {
            s.queue = scalar(q).ok_or_else(|| bad("queue", "a queue name"))?;
        }
        found.push(s);
    }
    Ok(found)
}

fn scalar(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.trim_start_matches(':').to_string()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn flag(v: &Yaml) -> Option<bool> {
    match v {
        Yaml::Bool(b) => Some(*b),
        other => scalar(other).map(|s| {
            matches!(
                s.to_ascii_lowercase().as_str(),
                "true" | "t" | "yes" | "y" | "1"
            )
        }),
    }
}

/// One schedule declared as `spec` (a hash of the keys above) under `name`.
pub fn schedule(name: &str, spec: &Yaml) -> Result<Schedule, FileError> {
    let bad =
        |key: &str, what: &str| FileError(format!("schedule {name:?}: `{key}` must be {what}"));
    let Yaml::Mapping(_) = spec else {
        return Err(FileError(format!(
            "schedule {name:?} must be a hash with `cron` and `class`"
        )));
    };
    let get = |key: &str| {
        spec.get(key)
            .or_else(|| spec.get(format!(":{key}").as_str()))
    };
    let cron = get("cron")
        .and_then(scalar)
        .ok_or_else(|| bad("cron", "a cron line (\"0 3 * * *\")"))?;
    let class = get("class")
        .or_else(|| get("klass"))
        .and_then(scalar)
        .ok_or_else(|| bad("class", "a job class name"))?;
    let mut s = Schedule::new(name, &cron, &class);
    s.source = Source::File;
    if let Some(args) = get("args") {
        s.args = match args {
            Yaml::Null => Vec::new(),
            Yaml::String(text) => parse_args(text),
            other => {
                match serde_json::to_value(other).map_err(|_| bad("args", "JSON-like values"))? {
                    Value::Array(a) => a,
                    one => vec![one],
                }
            }
        };
    }
    if let Some(q) = get("queue") {
        s.queue = scalar(q).ok_or_else(|| bad("queue", "a queue name"))?;
    }
    if let Some(d) = get("description") {
        s.description = scalar(d).unwrap_or_default();
    }
    if let Some(ns) = get("namespace") {
        s.namespace = scalar(ns).ok_or_else(|| bad("namespace", "a string"))?;
    }
    if let Some(status) = get("status") {
        s.status = Some(match scalar(status).as_deref() {
            Some("enabled") => Status::Enabled,
            Some("disabled") => Status::Disabled,
            _ => return Err(bad("status", "enabled or disabled")),
        });
    }
    if let Some(retry) = get("retry") {
        s.retry = Some(match retry {
            Yaml::Bool(b) => Value::Bool(*b),
            Yaml::Number(n) if n.as_u64().is_some() => Value::from(n.as_u64().unwrap_or_default()),
            _ => return Err(bad("retry", "true, false or a number of retries")),
        });
    }
    for (key, field) in [
        ("active_job", &mut s.active_job),
        ("date_as_argument", &mut s.date_as_argument),
        ("symbolize_args", &mut s.symbolize_args),
    ] {
        if let Some(v) = get(key) {
            *field = flag(v).ok_or_else(|| bad(key, "true or false"))?;
        }
    }
    if let Some(p) = get("queue_name_prefix") {
        s.queue_name_prefix = scalar(p).unwrap_or_default();
    }
    if let Some(d) = get("queue_name_delimiter") {
        s.queue_name_delimiter = scalar(d).unwrap_or_default();
    }
    if let Some(m) = get("missed") {
        s.missed = scalar(m)
            .as_deref()
            .and_then(Missed::parse)
            .ok_or_else(|| bad("missed", "skip, latest or all"))?;
    }
    if let Some(o) = get("overlap") {
        s.overlap = scalar(o)
            .as_deref()
            .and_then(Overlap::parse)
            .ok_or_else(|| bad("overlap", "allow, skip_if_running or skip_if_queued"))?;
    }
    if let Some(cap) = get("missed_cap") {
        s.missed_cap = cap
            .as_u64()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| bad("missed_cap", "a whole number from 1 to 10000"))?
            as u32;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Vec<Schedule>, FileError> {
        schedules(&serde_norway::from_str(text).unwrap())
    }

    #[test]
    fn reads_sidekiq_crons_hash_and_array_shapes() {
        let hash = read(
            "nightly:\n  cron: \"0 3 * * *\"\n  class: ReportJob\n  args: [1, 2]\n  queue: low\n  missed: all\n  missed_cap: 3\n\
             digest:\n  cron: \"@daily\"\n  klass: DigestJob\n  args: '[\"x\"]'\n  status: disabled\n",
        )
        .unwrap();
        assert_eq!(hash.len(), 2);
        assert_eq!(hash[0].name, "nightly");
        assert_eq!(hash[0].args, vec![Value::from(1), Value::from(2)]);
        assert_eq!(hash[0].missed, Missed::All);
        assert_eq!(hash[0].missed_cap, 3);
        assert_eq!(hash[1].args, vec![Value::from("x")]);
        assert_eq!(hash[1].status, Some(Status::Disabled));
        let array =
            read("- name: one\n  cron: \"* * * * *\"\n  class: OneJob\n  args: {a: 1}\n").unwrap();
        assert_eq!(array[0].name, "one");
        assert_eq!(array[0].args, vec![serde_json::json!({"a": 1})]);
        assert_eq!(array[0].source, Source::File);
    }

    #[test]
    fn reads_solid_queues_recurring_yml() {
        let doc = serde_norway::from_str(
            "production:\n  periodic_cleanup:\n    class: CleanSoftDeletedRecordsJob\n    queue: background\n    args: [ 1000, { batch_size: 500 } ]\n    schedule: every hour\n\
             development:\n  other:\n    class: OtherJob\n    schedule: every minute\n",
        )
        .unwrap();
        let tasks = recurring(&doc, Some("production")).unwrap();
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].name, "periodic_cleanup");
        assert_eq!(tasks[0].cron, "every hour");
        assert!(tasks[0].active_job);
        assert_eq!(tasks[0].queue, "background");
        assert_eq!(
            tasks[0].args,
            vec![
                serde_json::json!(1000),
                serde_json::json!({"batch_size": 500})
            ]
        );
        assert!(recurring(&doc, Some("test")).unwrap().is_empty());
        let flat =
            serde_norway::from_str("nightly:\n  class: NightlyJob\n  schedule: at 5am every day\n")
                .unwrap();
        assert_eq!(
            recurring(&flat, Some("production")).unwrap()[0].class,
            "NightlyJob"
        );
        let command = serde_norway::from_str(
            "production:\n  purge:\n    command: \"Thing.purge\"\n    schedule: every day\n",
        )
        .unwrap();
        assert!(recurring(&command, Some("production"))
            .unwrap_err()
            .to_string()
            .contains("`command:` tasks are not run by rustq"));
    }

    #[test]
    fn bad_entries_name_the_schedule_and_key() {
        assert_eq!(
            read("nightly:\n  class: ReportJob\n")
                .unwrap_err()
                .to_string(),
            "schedule \"nightly\": `cron` must be a cron line (\"0 3 * * *\")"
        );
        assert!(
            read("x:\n  cron: \"* * * * *\"\n  class: A\n  missed: never\n")
                .unwrap_err()
                .to_string()
                .contains("`missed` must be skip, latest or all")
        );
        assert!(read("- cron: \"* * * * *\"\n  class: A\n")
            .unwrap_err()
            .to_string()
            .contains("#1 has no `name`"));
    }
}
