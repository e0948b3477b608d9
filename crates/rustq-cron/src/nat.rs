//! The natural-language schedules people write most, as fugit (sidekiq-cron's and Solid Queue's
//! parser) reads them: `every hour`, `every 15 minutes`, `every day at 5pm`, `at 5am every day`,
//! `every monday at 9:30am`, `every weekday at noon`, `every tuesday and friday`, with an optional
//! zone after. Each becomes the cron line fugit makes of it (checked tick for tick against fugit
//! in `tests/fugit.rs`); anything else is refused, naming what to write instead.

const DAYS: [&str; 7] = [
    "sunday",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
];

/// The cron line for `words` (already split, zone removed), or why it is not read.
pub fn to_cron(words: &[&str]) -> Result<String, String> {
    let words: Vec<String> = words
        .iter()
        .map(|w| w.trim_end_matches(',').to_ascii_lowercase())
        .filter(|w| !w.is_empty())
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let unsupported = || {
        "is not a natural-language schedule rustq reads (it reads `every hour`, `every 15 minutes`, `every day at 5pm`, `at 5am every day`, `every monday at 9:30am`, `every weekday at noon`): write its cron line".to_string()
    };
    // `at TIME every day` and `at TIME` are `every day at TIME`.
    let words: Vec<&str> = match words.as_slice() {
        ["at", time, "every", "day"] | ["at", time] => vec!["every", "day", "at", time],
        _ => words,
    };
    let (every, at) = match words.iter().position(|w| *w == "at") {
        Some(i) => (&words[..i], Some(&words[i + 1..])),
        None => (&words[..], None),
    };
    let ["every", spec @ ..] = every else {
        return Err(unsupported());
    };
    let time = match at {
        None => None,
        Some([time]) => Some(clock(time).ok_or_else(unsupported)?),
        Some(["minute", m]) => {
            let m: u32 = m.parse().ok().filter(|m| *m < 60).ok_or_else(unsupported)?;
            return match spec {
                ["hour"] => Ok(format!("{m} * * * *")),
                _ => Err(unsupported()),
            };
        }
        Some(_) => return Err(unsupported()),
    };
    let (minute, hour) = time.map_or(("0".to_string(), "0".to_string()), |(h, m)| {
        (m.to_string(), h.to_string())
    });
    let daily = |dom: &str, dow: &str| Ok(format!("{minute} {hour} {dom} * {dow}"));
    match spec {
        ["second"] if time.is_none() => Ok("* * * * * *".into()),
        ["minute"] if time.is_none() => Ok("* * * * *".into()),
        ["hour"] if time.is_none() => Ok("0 * * * *".into()),
        ["day"] => daily("*", "*"),
        ["week"] if time.is_none() => Ok("0 0 * * 0".into()),
        ["month"] if time.is_none() => Ok("0 0 1 * *".into()),
        ["year"] if time.is_none() => Ok("0 0 1 1 *".into()),
        ["weekday"] => daily("*", "1,2,3,4,5"),
        [n, unit] if n.parse::<u32>().is_ok() => {
            let n: u32 = n.parse().unwrap_or_default();
            match (unit.trim_end_matches('s'), time) {
                ("second", None) if (1..60).contains(&n) => Ok(format!("*/{n} * * * * *")),
                ("minute", None) if (1..60).contains(&n) => Ok(format!("*/{n} * * * *")),
                ("hour", None) if (1..24).contains(&n) => Ok(format!("0 */{n} * * *")),
                ("day", _) if (1..=31).contains(&n) => daily(&format!("*/{n}"), "*"),
                _ => Err(unsupported()),
            }
        }
        days => match day_list(days) {
            Some(d) => daily("*", &d),
            None => Err(unsupported()),
        },
    }
}

/// `monday`, `tuesday and friday`, `mon, wed`: the weekday numbers, in order.
fn day_list(words: &[&str]) -> Option<String> {
    let mut days = Vec::new();
    for word in words.iter().filter(|w| **w != "and") {
        let word = word.trim_end_matches('s');
        let day = DAYS
            .iter()
            .position(|d| *d == word || (word.len() >= 3 && d.starts_with(word)))?;
        days.push(day);
    }
    if days.is_empty() {
        return None;
    }
    days.sort_unstable();
    days.dedup();
    Some(
        days.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// `5pm`, `5:30pm`, `17:30`, `noon`, `midnight` → (hour, minute).
fn clock(text: &str) -> Option<(u32, u32)> {
    match text {
        "noon" => return Some((12, 0)),
        "midnight" => return Some((0, 0)),
        _ => {}
    }
    let (digits, offset) = if let Some(t) = text.strip_suffix("am") {
        (t, Some(0))
    } else if let Some(t) = text.strip_suffix("pm") {
        (t, Some(12))
    } else {
        (text, None)
    };
    let (h, m) = match digits.split_once(':') {
        Some((h, m)) => (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?),
        None if offset.is_some() => (digits.parse::<u32>().ok()?, 0),
        None => return None,
    };
    let h = match offset {
        Some(add) if (1..=12).contains(&h) => h % 12 + add,
        Some(_) => return None,
        None => h,
    };
    (h < 24 && m < 60).then_some((h, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron(text: &str) -> Result<String, String> {
        to_cron(&text.split_whitespace().collect::<Vec<_>>())
    }

    #[test]
    fn common_phrases_become_fugits_cron_lines() {
        for (phrase, line) in [
            ("every hour", "0 * * * *"),
            ("every 15 minutes", "*/15 * * * *"),
            ("every day at 5pm", "0 17 * * *"),
            ("every day at 5:30pm", "30 17 * * *"),
            ("at 5am every day", "0 5 * * *"),
            ("every monday at 9am", "0 9 * * 1"),
            ("every weekday at noon", "0 12 * * 1,2,3,4,5"),
            ("every tuesday and friday at 8:00", "0 8 * * 2,5"),
            ("every hour at minute 15", "15 * * * *"),
            ("every 2 days at 3am", "0 3 */2 * *"),
        ] {
            assert_eq!(cron(phrase).as_deref(), Ok(line), "{phrase}");
        }
        assert!(cron("every 90 minutes").is_err());
        assert!(cron("every month on the 1st at 9am").is_err());
        assert!(cron("every day at 25:00").is_err());
    }
}
