//! `rustq-worker cron list|enqueue|enable|disable NAME`: recurring jobs for operators, on the
//! same Redis and config as the worker (sidekiq-cron's Web UI tab does the same from a browser).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::Utc;
use clap::{Parser, Subcommand};
use rustq_cron::{Schedules, Status, StoreError};

/// Recurring jobs (sidekiq-cron's schedules) in this Redis.
#[derive(Parser, Debug)]
#[command(name = "rustq-worker cron")]
struct CronCli {
    /// Config file (default: config/rustq.yml, else config/sidekiq.yml): its redis_url and cron_timezone.
    #[arg(short = 'C', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Environment section of the config file.
    #[arg(short, long)]
    environment: Option<String>,
    /// Redis to use.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// sidekiq-cron's namespace.
    #[arg(long, default_value = rustq_cron::store::DEFAULT_NAMESPACE)]
    namespace: String,
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Every schedule: name, status, cron line, class, queue, last and next enqueue.
    List,
    /// Enqueue a schedule's job now (enabled or not).
    Enqueue {
        /// The schedule's name.
        name: String,
    },
    /// Let a schedule's ticks enqueue again.
    Enable {
        /// The schedule's name.
        name: String,
    },
    /// Stop a schedule's ticks (within a second on every worker).
    Disable {
        /// The schedule's name.
        name: String,
    },
}

/// Runs `cron …` (`args[0]` is `cron`) and returns its exit code: 0 done, 1 not found or Redis
/// failed, 2 bad usage or config.
pub fn main(
    args: impl IntoIterator<Item = OsString>,
    render: &dyn Fn(&str) -> Result<String, String>,
) -> ExitCode {
    ExitCode::from(status(args, render))
}

/// [`main`]'s exit code as a number (the gem's `bundle exec rustq-worker cron` exits with it).
pub fn status(
    args: impl IntoIterator<Item = OsString>,
    render: &dyn Fn(&str) -> Result<String, String>,
) -> u8 {
    let cli = match CronCli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.exit_code() == 0 { 0 } else { 2 };
        }
    };
    let options = match crate::options::config_options(
        cli.config.clone(),
        cli.environment.clone(),
        cli.redis_url.clone(),
        render,
    ) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("rustq-worker cron: {e}");
            return 2;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rustq-worker cron: cannot start the runtime: {e}");
            return 1;
        }
    };
    runtime.block_on(async move {
        let conn = match options.redis.connection_manager().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("rustq-worker cron: {e}");
                return 1;
            }
        };
        let schedules = Schedules::new(conn, options.wire, options.cron_timezone);
        match run(&schedules, &cli).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("rustq-worker cron: {e}");
                1
            }
        }
    })
}

async fn run(schedules: &Schedules, cli: &CronCli) -> Result<(), StoreError> {
    let ns = cli.namespace.as_str();
    match &cli.action {
        Action::List => {
            schedules.check_layout().await?;
            let now = Utc::now();
            println!(
                "{:<24} {:<8} {:<22} {:<28} {:<10} {:<25} NEXT (UTC)",
                "NAME", "STATUS", "CRON", "CLASS", "QUEUE", "LAST ENQUEUE"
            );
            for found in schedules.all(&[ns.to_string()]).await? {
                match found {
                    Ok(s) => {
                        let next = s
                            .check(schedules.zone())
                            .ok()
                            .and_then(|line| line.next_after(now))
                            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                            .unwrap_or_else(|| "-".into());
                        println!(
                            "{:<24} {:<8} {:<22} {:<28} {:<10} {:<25} {next}",
                            s.name,
                            s.status.unwrap_or(Status::Enabled).as_str(),
                            s.cron,
                            s.class,
                            s.queue,
                            s.last_enqueue_time.as_deref().unwrap_or("-"),
                        );
                    }
                    Err(e) => println!("{e}"),
                }
            }
        }
        Action::Enqueue { name } => {
            let jid = schedules.enqueue_now(ns, name).await?;
            println!("enqueued {name}: jid {jid}");
        }
        Action::Enable { name } => {
            schedules.set_status(ns, name, Status::Enabled).await?;
            println!("enabled {name}");
        }
        Action::Disable { name } => {
            schedules.set_status(ns, name, Status::Disabled).await?;
            println!("disabled {name}");
        }
    }
    Ok(())
}
