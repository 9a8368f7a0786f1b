//! `sockleak`: the command line over the library. Parses the arguments into plain
//! configuration (`cli`), runs the command, and turns every error into one line on stderr.
mod cli;

use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command};

fn main() {
    return_freed_memory();
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
    let result = match cli.command {
        Command::Trace(args) => runtime.block_on(sockleak_user::trace::run(args.into_config())),
        Command::Top(args) => runtime.block_on(sockleak_user::top::run(args.into_config())),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "sockleak", &mut script);
            print_quietly(&script)
        }
        Command::Manpage => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .map_err(anyhow::Error::from)
                .and_then(|()| print_quietly(&page))
        }
    };
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

/// Writes to stdout; a reader that went away (`| head`) is not an error.
fn print_quietly(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// A report over many sockets allocates tens of MiB for a moment (the sock_diag dump, the
/// holder scan's pairs, the rows), some of it on the dump and scan threads. glibc's defaults
/// keep that memory: one arena per thread, and an mmap threshold that rises after every large
/// free so the next large buffer comes from the never-shrinking heap. One arena and a fixed
/// 128 KiB threshold (large buffers always mmapped, so unmapped when freed) keep sockleak's
/// resident memory near what it uses, with the same report time (docs/design-notes.md, "Memory").
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called first thing, before any thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}
