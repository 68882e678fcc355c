//! setgate: the network edge of a multi-datacenter RabbitMQ deployment.
//!
//! This file stays thin: parse arguments, then hand over to `check`, `route` (`route_diff`) or
//! `run`.

mod config;
mod load;
mod reload;
mod route_diff;
mod run;
mod shovel;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "setgate",
    version,
    about = "AMQP edge for multi-datacenter RabbitMQ: SET routing, health-checked pools, federation, VRRP"
)]
struct Cli {
    /// Log format: human-readable text, or one JSON object per line for collectors.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything the file configures (listeners, federation, vrrp, admin).
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate the file: print a summary, or every error found (exit 1).
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print, per key, the SET, the reason (override/hash/bucket/default) and the pool; or,
    /// with --diff OLD NEW, what a new routing table moves.
    Route {
        #[arg(long, short, required_unless_present = "diff", conflicts_with = "diff")]
        config: Option<PathBuf>,
        /// Compare two config files: the share of keys, the buckets, the overrides and the
        /// listed keys that change SET.
        #[arg(long, num_args = 2, value_names = ["OLD", "NEW"])]
        diff: Option<Vec<PathBuf>>,
        /// With --diff: a file of keys, one per line, to check one by one.
        #[arg(long, requires = "diff")]
        keys: Option<PathBuf>,
        /// Print JSON (one object per key; with --diff, one document) instead of a table.
        #[arg(long)]
        json: bool,
        /// User ids (or client property values) to route.
        #[arg(required_unless_present = "diff")]
        key: Vec<String>,
    },
    /// Move the messages a queue holds now to another queue or exchange (e.g. replay a
    /// dead-letter queue), at-least-once; prints how many.
    Shovel {
        /// Source broker, amqp://user:pass@host:port/vhost.
        #[arg(long)]
        from: String,
        /// The queue to move (what it holds when the command starts).
        #[arg(long)]
        queue: String,
        /// Destination broker.
        #[arg(long)]
        to: String,
        /// Publish to this exchange; without it, to the queue of the same name.
        #[arg(long)]
        exchange: Option<String>,
        /// Replace each message's routing key.
        #[arg(long)]
        routing_key: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Route {
            diff: Some(files),
            keys,
            json,
            key,
            ..
        } => route_diff::run(&files[0], &files[1], keys.as_deref(), &key, json),
        Command::Route {
            config, json, key, ..
        } => route(
            &config.expect("clap requires --config without --diff"),
            json,
            &key,
        ),
        Command::Shovel {
            from,
            queue,
            to,
            exchange,
            routing_key,
        } => shovel::run(setgate_federation::OneShot {
            from,
            queue,
            to,
            exchange,
            routing_key,
        }),
        Command::Run { config } => {
            run::tune_allocator();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            match rt.block_on(run::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("setgate: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(format: LogFormat) {
    // lapin's own logs are off by default: federation reports every failure it sees itself, with
    // the link, upstream and exchange, and lapin would log some of them again without context.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,lapin=off".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Prints every error under the file's name; returns an error for `?`.
pub(crate) fn report_errors(path: &Path, errs: &[String]) -> anyhow::Error {
    eprintln!(
        "{}: {} error{}",
        path.display(),
        errs.len(),
        if errs.len() == 1 { "" } else { "s" }
    );
    for e in errs {
        eprintln!("  - {e}");
    }
    anyhow::anyhow!(
        "{} has {} error(s); nothing was started",
        path.display(),
        errs.len()
    )
}

/// Writes to stdout, ignoring a closed pipe (`setgate route ... | head` must not panic).
fn out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn check(path: &Path) -> ExitCode {
    match load::load(path, None) {
        Ok(loaded) => {
            let router = loaded.proxy.router.as_deref();
            out(&format!(
                "{}: OK\n{}",
                path.display(),
                loaded.cfg.summary(router)
            ));
            ExitCode::SUCCESS
        }
        Err(errs) => {
            report_errors(path, &errs);
            ExitCode::FAILURE
        }
    }
}

fn route(path: &Path, json: bool, keys: &[String]) -> ExitCode {
    let loaded = match load::load(path, None) {
        Ok(l) => l,
        Err(errs) => {
            report_errors(path, &errs);
            return ExitCode::FAILURE;
        }
    };
    let Some(router) = loaded.proxy.router.as_deref() else {
        eprintln!(
            "{}: has no [routing] section; nothing to route by",
            path.display()
        );
        return ExitCode::FAILURE;
    };
    let mut text = String::new();
    if !json {
        text += &format!("# fingerprint {}\n", router.fingerprint());
        text += &format!("{:<24} {:<16} {:<9} POOL\n", "KEY", "SET", "REASON");
    }
    for key in keys {
        let r = router.route(Some(key));
        if json {
            let v = serde_json::json!({"key": key, "set": r.set, "reason": r.reason.as_str(), "pool": r.pool, "fingerprint": router.fingerprint()});
            text += &format!("{v}\n");
        } else {
            text += &format!(
                "{:<24} {:<16} {:<9} {}\n",
                key,
                r.set.unwrap_or("-"),
                r.reason.as_str(),
                r.pool
            );
        }
    }
    out(&text);
    ExitCode::SUCCESS
}
