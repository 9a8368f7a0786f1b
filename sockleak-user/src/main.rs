//! sockleak: find socket leaks in running services.
//!
//! The path of data: `hooks` (eBPF programs, attached) -> ring buffer -> `table` (one entry
//! per open socket, reconciled with `sockdiag` and `procfs`) -> `report` (filter, group) ->
//! `render` (text or JSON), with `verdict` judging each socket on the way. `trace` drives the loop; `cli` defines the command line.
mod cgroups;
mod cli;
mod filter;
mod hooks;
mod procfs;
mod render;
mod report;
mod sockdiag;
mod symbolize;
mod table;
mod trace;
mod verdict;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .init();

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => fail(&anyhow::Error::from(err)),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Trace(args) => trace::run(args).await,
        }
    });
    if let Err(err) = result {
        fail(&err);
    }
}

/// One line, the whole cause chain, non-zero exit: never a panic or a backtrace.
fn fail(err: &anyhow::Error) -> ! {
    let text = format!("{err:#}").replace('\n', " ");
    eprintln!("sockleak: error: {text}");
    std::process::exit(1);
}
