//! Every Lua script of the engine (and of rustq-cron, the recurring jobs it runs) takes every key it touches in `KEYS`: none names a key itself
//! (`redis.call('SADD', 'queues', ...)`) or builds one (`'queue:' .. name`). Redis Cluster
//! routes a script by its `KEYS`, so a script that makes up keys cannot run there. This reads
//! the scripts in `src/` and fails, naming the script and line, when one does.

use std::path::Path;

/// `(file, script)` for every raw string in `src/` that calls Redis.
fn scripts(src: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(src).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("a source file is readable");
        let mut rest = text.as_str();
        while let Some(start) = rest.find("r#\"") {
            let body = &rest[start + 3..];
            let Some(end) = body.find("\"#") else { break };
            if body[..end].contains("redis.call") {
                found.push((
                    path.file_name().unwrap().to_string_lossy().into_owned(),
                    body[..end].to_string(),
                ));
            }
            rest = &body[end + 2..];
        }
    }
    found
}

/// The lines of `script` that name or build a key themselves.
fn offences(script: &str) -> Vec<String> {
    script
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .filter(|line| {
            let literal_key = ["redis.call('", "redis.pcall('"].iter().any(|call| {
                line.split(call).skip(1).any(|after| {
                    // After the command name: `', '` means its first argument is a literal.
                    after
                        .split_once('\'')
                        .is_some_and(|(_, args)| args.trim_start().starts_with(", '"))
                })
            });
            // Building a key: a concatenation inside a call, or with a `prefix:` literal or a
            // bare ':' (a message such as `name .. ': ' .. err` is not a key).
            let concat = line.contains(" .. ");
            let key_literal = line.contains(":' ..") || line.contains(".. ':'");
            literal_key || (concat && (line.contains("redis.call") || key_literal))
        })
        .map(|line| line.trim().to_string())
        .collect()
}

#[test]
fn no_engine_script_names_or_builds_a_key() {
    let scripts = match std::env::var_os("RUSTQ_LUA_SRC") {
        Some(src) => scripts(Path::new(&src)),
        // The engine's, the recurring jobs' (rustq-cron's) and the core's (unique pushes,
        // limiters).
        None => {
            let here = Path::new(env!("CARGO_MANIFEST_DIR"));
            let mut all = scripts(&here.join("src"));
            all.extend(scripts(&here.join("../rustq-cron/src")));
            all.extend(scripts(&here.join("../rustq-core/src")));
            all
        }
    };
    assert!(
        scripts.len() >= 5,
        "found too few scripts: {}",
        scripts.len()
    );
    let bad: Vec<String> = scripts
        .iter()
        .flat_map(|(file, script)| {
            offences(script)
                .into_iter()
                .map(move |line| format!("{file}: {line}"))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "scripts naming or building keys:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_check_sees_literal_and_built_keys() {
    assert_eq!(
        offences("redis.call('SADD', 'queues', ARGV[1])"),
        vec!["redis.call('SADD', 'queues', ARGV[1])"]
    );
    assert_eq!(offences("redis.call('RPUSH', 'queue:' .. q, job)").len(), 1);
    assert!(offences("redis.call('RPUSH', KEYS[2], job)").is_empty());
    assert!(offences("-- redis.call('SADD', 'queues', x)").is_empty());
    assert!(offences("local ok = pcall(cjson.decode, job)").is_empty());
    assert_eq!(
        offences("local list = ARGV[5] .. identity .. ':' .. queue").len(),
        1
    );
    assert!(offences("errors[1] = parts[1] .. ': ' .. reply.err").is_empty());
}
