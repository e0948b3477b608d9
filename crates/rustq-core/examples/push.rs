//! Pushes jobs with rustq's client: `cargo run --example push -- [COUNT] [CLASS]`.
//! Uses `REDIS_URL` (default `redis://127.0.0.1:6379/0`).

use rustq_core::{Client, RedisConfig};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut argv = std::env::args().skip(1);
    let count: usize = argv.next().map(|n| n.parse()).transpose()?.unwrap_or(10);
    let class = argv.next().unwrap_or_else(|| "RecordJob".to_string());
    let config = RedisConfig::from_env();
    let client = Client::connect(&config).await?;
    let args: Vec<_> = (0..count)
        .map(|i| json!([i, format!("job #{i}")]))
        .collect();
    let jids = client
        .push_bulk(
            json!({"class": class, "args": args})
                .as_object()
                .unwrap()
                .clone(),
        )
        .await?;
    println!(
        "pushed {} {class} jobs to {} (first jid {})",
        jids.len(),
        config.redacted_url(),
        jids[0]
    );
    Ok(())
}
