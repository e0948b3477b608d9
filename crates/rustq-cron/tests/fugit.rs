//! The same ticks as fugit (the parser sidekiq-cron reads cron lines with), checked against
//! fugit 1.13 itself from `../shared/peers`: for each line and start time, the next ticks both
//! compute. Skipped, saying so, where the peers are absent.

use chrono::{DateTime, Utc};
use rustq_cron::{CronLine, Zone};
use rustq_testing::repo_root;

const LINES: &[&str] = &[
    "* * * * *",
    "*/5 * * * *",
    "0 3 * * *",
    "30 2 * * 1-5",
    "0 9,17 * * mon-fri",
    "15 10 1 * *",
    "0 0 L * *",
    "0 12 * * 5#2",
    "0 0 1 jan,jul *",
    "0 22-23/1 * * sun",
    "10-20/5 8 * * *",
    "0 0 13 * 5",
    "*/20 * * * * *",
    "30 */10 * * * *",
    "0 0 * * * *",
    "@hourly",
    "@daily",
    "@weekly",
    "@monthly",
    "@yearly",
    "@noon",
    "0 9 * * 1-5 Europe/Berlin",
    "0 9 * * * America/New_York",
    "30 8 * * * Asia/Kolkata",
    "0 9 * * * +09:00",
    "@daily Europe/Berlin",
    "every second",
    "every minute",
    "every hour",
    "every day",
    "every week",
    "every month",
    "every year",
    "every 5 seconds",
    "every 15 minutes",
    "every 45 minutes",
    "every 2 hours",
    "every 3 days",
    "every day at 5pm",
    "every day at 5:30pm",
    "every day at 17:30",
    "at 5am every day",
    "at 5am",
    "every monday",
    "every monday at 9am",
    "every weekday",
    "every weekday at noon",
    "every sunday at midnight",
    "every tuesday and friday at 8:00",
    "every hour at minute 15",
    "every 2 days at 3am",
    "every day at 8am Europe/Berlin",
];

/// Start times away from DST changes in the zones above (rustq and fugit differ on purpose there).
const STARTS: &[i64] = &[
    1_767_225_600, /* 2026-01-01 */
    1_781_870_445, /* 2026-06-19 12:00:45 */
];

#[test]
fn ticks_match_fugit() {
    let peers = repo_root().join("../shared/peers");
    if !peers.join("fugit-1.13.0").exists() {
        eprintln!("SKIPPED: ../shared/peers/fugit-1.13.0 not found (fugit's vectors are checked where the peers are)");
        return;
    }
    let mut ruby = String::from("require 'fugit'\nrequire 'json'\nout = {}\n");
    ruby.push_str("lines = JSON.parse(ARGV[0]); starts = JSON.parse(ARGV[1])\n");
    ruby.push_str(
        "lines.each { |l| c = Fugit.parse_cronish(l) or raise \"fugit refused #{l}\"; out[l] = starts.map { |s| t = EtOrbi::EoTime.new(s, 'UTC'); (1..6).map { t = c.next_time(t); t.to_i } } }\nputs JSON.generate(out)\n",
    );
    let mut cmd = std::process::Command::new("ruby");
    for lib in ["fugit-1.13.0", "et-orbi-1.4.1", "raabro-1.5.0"] {
        cmd.arg("-I").arg(peers.join(lib).join("lib"));
    }
    let out = cmd
        .arg("-e")
        .arg(&ruby)
        .arg(serde_json::to_string(LINES).unwrap())
        .arg(serde_json::to_string(STARTS).unwrap())
        .env("TZ", "UTC")
        .output()
        .expect("ruby runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fugit: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let utc = Zone::parse("UTC").unwrap();
    let mut compared = 0;
    for line in LINES {
        let parsed = CronLine::parse(line, utc).unwrap_or_else(|e| panic!("{e}"));
        for (i, start) in STARTS.iter().enumerate() {
            let mut at = DateTime::<Utc>::from_timestamp(*start, 0).unwrap();
            let ours: Vec<i64> = (0..6)
                .map(|_| {
                    at = parsed.next_after(at).unwrap();
                    at.timestamp()
                })
                .collect();
            let theirs: Vec<i64> = serde_json::from_value(fugit[line][i].clone()).unwrap();
            assert_eq!(ours, theirs, "{line:?} from {start}: rustq vs fugit");
            compared += ours.len();
        }
    }
    eprintln!("{compared} ticks of {} lines equal to fugit's", LINES.len());
}
