//! Loopback socket load for the benchmarks. Native and multi-threaded, so the tracer under test
//! is the bottleneck, not the load.
//!
//! - `churn --seconds S [--connections N] [--threads T]`: T client threads connect, wait for the server's FIN and
//!   close, as fast as they can; acceptor threads accept and close at once (the server closes
//!   first, as a healthy HTTP/1.0 server would, so TIME_WAIT lands on the server side and no
//!   client runs out of ephemeral ports). Prints `{"connections":N,"seconds":S}`.
//! - `hold --sockets N`: opens N/2 connections to itself (N sockets), keeps them, prints
//!   `ready N`, and waits for stdin to close. Past the fd hard limit, helper processes each
//!   hold a share.
use std::{
    io::{BufRead, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    Churn {
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Stop after this many connections instead (or at `--seconds`, whichever is first).
        #[arg(long)]
        connections: Option<u64>,
        /// Client threads (default: twice the CPUs).
        #[arg(long)]
        threads: Option<usize>,
    },
    Hold {
        #[arg(long)]
        sockets: usize,
    },
}

fn main() -> Result<()> {
    match Cli::parse().mode {
        Mode::Churn {
            seconds,
            connections,
            threads,
        } => churn(seconds, connections.unwrap_or(u64::MAX), threads),
        Mode::Hold { sockets } => hold(sockets),
    }
}

fn cpus() -> usize {
    thread::available_parallelism().map_or(2, |n| n.get())
}

fn churn(seconds: f64, limit: u64, threads: Option<usize>) -> Result<()> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    for _ in 0..cpus() {
        let listener = listener.try_clone()?;
        thread::spawn(move || {
            for conn in listener.incoming() {
                drop(conn); // close first
            }
        });
    }
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let clients: Vec<_> = (0..threads.unwrap_or(2 * cpus()))
        .map(|_| {
            let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
            thread::spawn(move || {
                let mut sink = [0u8; 16];
                while !stop.load(Ordering::Relaxed) && done.load(Ordering::Relaxed) < limit {
                    let Ok(mut conn) = TcpStream::connect(addr) else {
                        continue;
                    };
                    let _ = conn.read(&mut sink); // the server's FIN
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let start = Instant::now();
    while Instant::now() < deadline && done.load(Ordering::Relaxed) < limit {
        thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{{\"connections\":{},\"seconds\":{elapsed:.3}}}",
        done.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Connections per listener: below the ~28k ephemeral ports one (source, destination) pair
/// allows.
const PER_LISTENER: usize = 20_000;

/// fds a holder keeps free for everything else.
const FD_MARGIN: usize = 256;

fn hold(sockets: usize) -> Result<()> {
    // Without CAP_SYS_RESOURCE the fd limit cannot go past its hard limit (20000 on the CI
    // machines): more sockets than one process may hold are spread over helper processes.
    let per_process = (fd_hard_limit().saturating_sub(FD_MARGIN as u64) as usize) & !1;
    if sockets > per_process {
        return hold_in_helpers(sockets, per_process);
    }
    raise_fd_limit((sockets + FD_MARGIN) as u64)?;
    let connections = sockets / 2;
    let mut kept = Vec::with_capacity(sockets);
    let mut remaining = connections;
    while remaining > 0 {
        let batch = remaining.min(PER_LISTENER);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr: SocketAddr = listener.local_addr()?;
        let acceptor = thread::spawn(move || -> Result<Vec<TcpStream>> {
            (0..batch)
                .map(|_| Ok(listener.accept()?.0))
                .collect::<Result<_>>()
        });
        for _ in 0..batch {
            kept.push(TcpStream::connect(addr).context("connect")?);
        }
        let accepted = acceptor
            .join()
            .map_err(|_| anyhow::anyhow!("acceptor panicked"))??;
        kept.extend(accepted);
        remaining -= batch;
    }
    println!("ready {}", kept.len());
    std::io::stdout().flush()?;
    for _ in std::io::stdin().lock().lines() {}
    drop(kept);
    Ok(())
}

fn hold_in_helpers(sockets: usize, per_process: usize) -> Result<()> {
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe()?;
    let mut helpers = Vec::new();
    let mut remaining = sockets;
    while remaining > 0 {
        let share = remaining.min(per_process);
        let mut child = Command::new(&exe)
            .args(["hold", "--sockets", &share.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().context("helper stdout")?)
            .read_line(&mut line)?;
        if !line.starts_with("ready") {
            bail!("a holder helper said {line:?}");
        }
        helpers.push(child);
        remaining -= share;
    }
    println!("ready {sockets}");
    std::io::stdout().flush()?;
    for _ in std::io::stdin().lock().lines() {}
    for mut helper in helpers {
        drop(helper.stdin.take());
        let _ = helper.wait();
    }
    Ok(())
}

fn fd_hard_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_max
}

fn raise_fd_limit(wanted: u64) -> Result<()> {
    let limit = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: wanted.max(fd_hard_limit()),
    };
    // SAFETY: setrlimit with an initialized struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        bail!(
            "raising RLIMIT_NOFILE to {wanted}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
