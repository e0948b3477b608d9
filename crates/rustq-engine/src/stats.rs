//! Counters a process keeps between heartbeats: `stat:processed`/`stat:failed` and the
//! per-class execution metrics the Web UI's Metrics tab charts, in the key formats of Sidekiq 7
//! and 8 (each version's tab reads only its own; see [`MetricsFormats`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use rustq_core::wire::{self, keys, WireVersion};

/// Histogram bucket upper bounds in ms (Sidekiq 7's `Histogram::BUCKET_INTERVALS`); the last
/// bucket takes everything slower.
pub const HISTOGRAM_BOUNDS_MS: [u64; 25] = [
    20, 30, 45, 65, 100, 150, 225, 335, 500, 750, 1100, 1700, 2500, 3800, 5750, 8500, 13000, 20000,
    30000, 45000, 65000, 100000, 150000, 225000, 335000,
];

/// Metrics hashes and histograms live eight hours (Sidekiq's `SHORT_TERM`/`HISTOGRAM_TTL`).
pub const METRICS_TTL_SECS: i64 = 8 * 3600;

/// Which Sidekiq generations' execution-metrics keys are written (`metrics_format:`). 7.x reads
/// `j|%Y%m%d|%-H:%-M` and histograms `Class-%d-%H:%-M`; 8.x reads `j|%y%m%d|%-H:%M`, its
/// ten-minute rollup `j|%y%m%d|%-H:<tens digit>` and histograms `h|Class-%-d-%-H:%-M`. The
/// default writes both, so whichever Sidekiq's Web UI a team runs beside rustq charts its jobs
/// (one more hash field per class and bucket per beat, not per job). 6.x has no Metrics tab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsFormats {
    /// Write Sidekiq 7.x's keys.
    pub v7: bool,
    /// Write Sidekiq 8.x's keys.
    pub v8: bool,
}

impl Default for MetricsFormats {
    fn default() -> Self {
        MetricsFormats { v7: true, v8: true }
    }
}

impl MetricsFormats {
    /// Parses a `metrics_format:` value: `both`, `7`, `8` or `none`.
    pub fn parse(value: &str) -> Option<MetricsFormats> {
        let (v7, v8) = match value.trim() {
            "both" => (true, true),
            "7" => (true, false),
            "8" => (false, true),
            "none" | "off" => (false, false),
            _ => return None,
        };
        Some(MetricsFormats { v7, v8 })
    }

    /// Only the keys of `version`.
    pub fn only(version: WireVersion) -> MetricsFormats {
        MetricsFormats {
            v7: version == WireVersion::V7,
            v8: version == WireVersion::V8,
        }
    }

    fn versions(self) -> impl Iterator<Item = WireVersion> {
        [(self.v7, WireVersion::V7), (self.v8, WireVersion::V8)]
            .into_iter()
            .filter_map(|(on, v)| on.then_some(v))
    }
}

/// One job class's counts since the last flush: the per-class metrics and run time histogram
/// that Sidekiq 7's Web UI charts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClassMetrics {
    /// Sum of the run times of successful executions, in ms.
    pub ms: u64,
    /// Executions, failed ones included.
    pub processed: u64,
    /// Failed executions.
    pub failed: u64,
    /// Successful executions per run time bucket of [`HISTOGRAM_BOUNDS_MS`]; the last bucket holds
    /// those slower than every bound.
    pub histogram: [u64; 26],
}

/// What happened since the last flush.
#[derive(Default)]
pub struct Counters {
    processed: AtomicU64,
    failed: AtomicU64,
    classes: Mutex<HashMap<String, ClassMetrics>>,
}

/// A drained set of counters, ready to write (or to put back if writing failed).
#[derive(Debug, Default, PartialEq)]
pub struct Flush {
    /// Executions, failed ones included: added to `stat:processed` and today's counter.
    pub processed: u64,
    /// Failed executions: added to `stat:failed` and today's counter.
    pub failed: u64,
    /// Metrics by job class name.
    pub classes: HashMap<String, ClassMetrics>,
}

impl Counters {
    /// Counts one execution of `class` that took `ms`.
    pub fn record(&self, class: &str, ms: u64, failed: bool) {
        self.processed.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        let mut classes = self.classes.lock().unwrap_or_else(|e| e.into_inner());
        let m = match classes.get_mut(class) {
            Some(m) => m,
            None => classes.entry(class.to_string()).or_default(),
        };
        m.processed += 1;
        if failed {
            m.failed += 1;
        } else {
            m.ms += ms;
            let bucket = HISTOGRAM_BOUNDS_MS
                .iter()
                .position(|b| ms < *b)
                .unwrap_or(25);
            m.histogram[bucket] += 1;
        }
    }

    /// Executions counted since the last flush, failed ones included.
    pub fn processed(&self) -> u64 {
        self.processed.load(Ordering::Relaxed)
    }

    /// Drains the counts for the heartbeat to write, leaving every counter at zero.
    pub fn take(&self) -> Flush {
        let classes = std::mem::take(&mut *self.classes.lock().unwrap_or_else(|e| e.into_inner()));
        Flush {
            processed: self.processed.swap(0, Ordering::Relaxed),
            failed: self.failed.swap(0, Ordering::Relaxed),
            classes,
        }
    }

    /// Puts counts back after a failed write, so none are lost.
    pub fn restore(&self, flush: Flush) {
        self.processed.fetch_add(flush.processed, Ordering::Relaxed);
        self.failed.fetch_add(flush.failed, Ordering::Relaxed);
        let mut classes = self.classes.lock().unwrap_or_else(|e| e.into_inner());
        for (class, m) in flush.classes {
            let into = classes.entry(class).or_default();
            into.ms += m.ms;
            into.processed += m.processed;
            into.failed += m.failed;
            for (a, b) in into.histogram.iter_mut().zip(m.histogram) {
                *a += b;
            }
        }
    }
}

impl Flush {
    /// Adds the commands that write these counts to `pipe` (inside the heartbeat's MULTI).
    pub fn write(&self, pipe: &mut redis::Pipeline, now: DateTime<Utc>, formats: MetricsFormats) {
        let date = now.format("%Y-%m-%d").to_string();
        for (stat, n) in [
            (keys::STAT_PROCESSED, self.processed),
            (keys::STAT_FAILED, self.failed),
        ] {
            if n == 0 {
                continue;
            }
            let daily = keys::daily_stat(stat, &date);
            pipe.incr(stat, n)
                .ignore()
                .incr(&daily, n)
                .ignore()
                .expire(&daily, wire::DAILY_STAT_TTL_SECS)
                .ignore();
        }
        if self.classes.is_empty() {
            return;
        }
        for version in formats.versions() {
            self.write_metrics(pipe, now, version);
        }
    }

    fn write_metrics(&self, pipe: &mut redis::Pipeline, now: DateTime<Utc>, version: WireVersion) {
        // 7.x: one-minute buckets; 8.x: one-minute and ten-minute buckets, two-digit years.
        let minute = now.format("%y%m%d|%-H:%M").to_string();
        let buckets: Vec<(String, i64)> = match version {
            WireVersion::V7 => vec![(now.format("j|%Y%m%d|%-H:%-M").to_string(), METRICS_TTL_SECS)],
            WireVersion::V8 => vec![
                (format!("j|{}", &minute[..minute.len() - 1]), 3 * 24 * 3600),
                (format!("j|{minute}"), METRICS_TTL_SECS),
            ],
        };
        for (key, ttl) in &buckets {
            for (class, m) in &self.classes {
                for (suffix, n) in [("ms", m.ms), ("p", m.processed), ("f", m.failed)] {
                    if n > 0 {
                        pipe.hincr(key, format!("{class}|{suffix}"), n).ignore();
                    }
                }
            }
            pipe.expire(key, *ttl).ignore();
        }
        for (class, m) in &self.classes {
            if m.histogram.iter().all(|n| *n == 0) {
                continue;
            }
            let hist_key = match version {
                WireVersion::V7 => format!("{class}-{}", now.format("%d-%H:%-M")),
                WireVersion::V8 => format!("h|{class}-{}", now.format("%-d-%-H:%-M")),
            };
            let mut cmd = redis::cmd("BITFIELD");
            cmd.arg(&hist_key).arg("OVERFLOW").arg("SAT");
            for (i, n) in m.histogram.iter().enumerate() {
                if *n > 0 {
                    cmd.arg("INCRBY").arg("u16").arg(format!("#{i}")).arg(*n);
                }
            }
            pipe.add_command(cmd).ignore();
            pipe.expire(&hist_key, METRICS_TTL_SECS).ignore();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_buckets() {
        let c = Counters::default();
        c.record("A", 10, false);
        c.record("A", 40, false);
        c.record("A", 5, true);
        c.record("B", 999_999, false);
        let f = c.take();
        assert_eq!((f.processed, f.failed), (4, 1));
        let a = &f.classes["A"];
        assert_eq!((a.ms, a.processed, a.failed), (50, 3, 1));
        assert_eq!(a.histogram[0], 1);
        assert_eq!(a.histogram[2], 1);
        assert_eq!(f.classes["B"].histogram[25], 1);
        assert_eq!(c.take(), Flush::default());
        c.restore(f);
        assert_eq!(c.take().processed, 4);
    }

    #[test]
    fn metrics_keys_follow_each_generation() {
        let c = Counters::default();
        c.record("HardJob", 12, false);
        let flush = c.take();
        let now = chrono::DateTime::parse_from_rfc3339("2025-02-14T08:43:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let keys_of = |version| {
            let mut pipe = redis::pipe();
            flush.write(&mut pipe, now, MetricsFormats::only(version));
            let text = String::from_utf8_lossy(&pipe.get_packed_pipeline()).into_owned();
            text
        };
        let v7 = keys_of(WireVersion::V7);
        assert!(
            v7.contains("j|20250214|8:43")
                && v7.contains("HardJob|p")
                && v7.contains("HardJob-14-08:43"),
            "{v7}"
        );
        let v8 = keys_of(WireVersion::V8);
        assert!(
            v8.contains("j|250214|8:43")
                && v8.contains("j|250214|8:4\r")
                && v8.contains("h|HardJob-14-8:43"),
            "{v8:?}"
        );
        assert!(!v8.contains("j|20250214") && !v7.contains("j|250214"));
        let mut pipe = redis::pipe();
        flush.write(&mut pipe, now, MetricsFormats::default());
        let both = String::from_utf8_lossy(&pipe.get_packed_pipeline()).into_owned();
        assert!(
            both.contains("j|20250214|8:43")
                && both.contains("HardJob-14-08:43")
                && both.contains("j|250214|8:43")
                && both.contains("h|HardJob-14-8:43"),
            "{both}"
        );
        assert_eq!(
            MetricsFormats::parse("none"),
            Some(MetricsFormats {
                v7: false,
                v8: false
            })
        );
        assert_eq!(MetricsFormats::parse("9"), None);
    }
}
