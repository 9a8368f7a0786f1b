//! A process that opens and closes sockets when told to, so tests can put sockets in exactly
//! the states they want, owned by a pid they know. One command per stdin line, one reply line
//! (`ok [DETAILS]` or `err MESSAGE`) per command:
//!
//! - `listen ADDR`          bind a TCP listener, reply with its port
//! - `serve`                accept and drop connections on listener 0 forever (a healthy server)
//! - `accept N`             accept N connections on listener 0 and keep them
//! - `fork-accept N`        accept N connections on listener 0, each kept by a child process
//!   of its own that closes the listener (a forking server: PostgreSQL, Apache prefork), reply
//!   with the children's pids
//! - `connect ADDR N`       open N TCP connections and keep them, reply with their local ports
//! - `close N`              close the first N kept connections
//! - `udp ADDR N`           bind N UDP sockets and keep them
//! - `churn ADDR N`         connect and close N times
//! - `serve-until-eof`      like `serve`, but close each connection only after the peer did
//!   (so the client closes first and its side goes to TIME_WAIT)
//! - `serve-keep`           accept on listener 0 forever and keep every connection
//! - `send I BYTES`         write up to BYTES on kept connection I without blocking
//! - `pump I`               write on kept connection I as fast as possible, forever
//! - `chat I MS`            write one byte on kept connection I every MS ms, forever
//! - `drain I`              read accepted connection I as fast as possible, forever
//! - `slowread I BYTES MS`  read BYTES from accepted connection I every MS ms, forever
//! - `reset I`              close accepted connection I with an RST (SO_LINGER 0)
//! - `trickle ADDR MS`      open (and keep) one connection every MS ms, forever
//! - `churn-forever ADDR`   connect and close in a loop, forever
//! - `unconnected N`        create N TCP sockets and never connect them
//! - `udp-flood PORT N`     send N 1 KiB datagrams to 127.0.0.1:PORT
//! - `rename HEX`           set this thread's name (comm) to the hex-encoded bytes
//! - `netns`                move into a new network namespace with loopback up (a container's
//!   view of the network), reply with the namespace's inode
//! - `exit`
use std::{
    io::{BufRead, Read, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

fn forever<F: FnMut() -> bool + Send + 'static>(mut step: F) {
    thread::spawn(move || while step() {});
}

fn main() {
    let mut listeners: Vec<TcpListener> = Vec::new();
    let mut conns: Vec<TcpStream> = Vec::new();
    let mut accepted: Vec<TcpStream> = Vec::new();
    let mut udps: Vec<UdpSocket> = Vec::new();
    let kept_by_server: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let mut raw_fds: Vec<i32> = Vec::new();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        let n = |i: usize| {
            words
                .get(i)
                .and_then(|w| w.parse::<usize>().ok())
                .unwrap_or(0)
        };
        let reply: Result<String, String> = (|| match words.first().copied() {
            Some("listen") => {
                let l = TcpListener::bind(words[1]).map_err(|e| e.to_string())?;
                let port = l.local_addr().unwrap().port();
                listeners.push(l);
                Ok(port.to_string())
            }
            Some("serve") => {
                let l = listeners[0].try_clone().map_err(|e| e.to_string())?;
                std::thread::spawn(move || {
                    for conn in l.incoming() {
                        drop(conn);
                    }
                });
                Ok(String::new())
            }
            Some("accept") => {
                for _ in 0..n(1) {
                    let (s, _) = listeners[0].accept().map_err(|e| e.to_string())?;
                    accepted.push(s);
                }
                Ok(String::new())
            }
            Some("fork-accept") => {
                let mut children = Vec::new();
                for _ in 0..n(1) {
                    let (conn, _) = listeners[0].accept().map_err(|e| e.to_string())?;
                    // SAFETY: the child only makes async-signal-safe calls (prctl, close,
                    // pause) and never returns.
                    match unsafe { libc::fork() } {
                        // SAFETY: as said above: prctl, close and pause only, on a descriptor
                        // this process owns, and no return.
                        0 => unsafe {
                            // Gone with the parent, whatever ends the test.
                            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                            libc::close(listeners[0].as_raw_fd());
                            let _kept = &conn;
                            loop {
                                libc::pause();
                            }
                        },
                        -1 => return Err(std::io::Error::last_os_error().to_string()),
                        child => {
                            children.push(child.to_string());
                            drop(conn);
                        }
                    }
                }
                Ok(children.join(" "))
            }
            Some("connect") => {
                let mut ports = Vec::new();
                for _ in 0..n(2) {
                    let s = TcpStream::connect(words[1]).map_err(|e| e.to_string())?;
                    ports.push(s.local_addr().unwrap().port().to_string());
                    conns.push(s);
                }
                Ok(ports.join(" "))
            }
            Some("close") => {
                let k = n(1).min(conns.len());
                conns.drain(..k);
                Ok(String::new())
            }
            Some("netns") => enter_new_netns(),
            Some("udp") => {
                let mut ports = Vec::new();
                for _ in 0..n(2) {
                    let u = UdpSocket::bind(words[1]).map_err(|e| e.to_string())?;
                    ports.push(u.local_addr().unwrap().port().to_string());
                    udps.push(u);
                }
                Ok(ports.join(" "))
            }
            Some("churn") => {
                for _ in 0..n(2) {
                    drop(TcpStream::connect(words[1]).map_err(|e| e.to_string())?);
                }
                Ok(String::new())
            }
            Some("serve-until-eof") => {
                let l = listeners[0].try_clone().map_err(|e| e.to_string())?;
                thread::spawn(move || {
                    for mut conn in l.incoming().flatten() {
                        thread::spawn(move || {
                            let mut buf = [0u8; 1024];
                            while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
                        });
                    }
                });
                Ok(String::new())
            }
            Some("serve-keep") => {
                let l = listeners[0].try_clone().map_err(|e| e.to_string())?;
                let kept = kept_by_server.clone();
                thread::spawn(move || {
                    for conn in l.incoming().flatten() {
                        kept.lock().unwrap().push(conn);
                    }
                });
                Ok(String::new())
            }
            Some("send") => {
                let conn = &mut conns[n(1)];
                conn.set_nonblocking(true).map_err(|e| e.to_string())?;
                let chunk = [b'x'; 65536];
                let mut sent = 0;
                while sent < n(2) {
                    match conn.write(&chunk[..(n(2) - sent).min(chunk.len())]) {
                        Ok(k) => sent += k,
                        Err(_) => break, // the window closed: the rest stays unsent
                    }
                }
                conn.set_nonblocking(false).map_err(|e| e.to_string())?;
                Ok(sent.to_string())
            }
            Some("pump") => {
                let mut conn = conns[n(1)].try_clone().map_err(|e| e.to_string())?;
                let chunk = [b'x'; 65536];
                forever(move || conn.write_all(&chunk).is_ok());
                Ok(String::new())
            }
            Some("chat") => {
                let mut conn = conns[n(1)].try_clone().map_err(|e| e.to_string())?;
                let pause = Duration::from_millis(n(2) as u64);
                forever(move || {
                    thread::sleep(pause);
                    conn.write_all(b".").is_ok()
                });
                Ok(String::new())
            }
            Some("drain") => {
                let mut conn = accepted[n(1)].try_clone().map_err(|e| e.to_string())?;
                let mut buf = vec![0u8; 1 << 20];
                forever(move || matches!(conn.read(&mut buf), Ok(k) if k > 0));
                Ok(String::new())
            }
            Some("slowread") => {
                let mut conn = accepted[n(1)].try_clone().map_err(|e| e.to_string())?;
                let mut buf = vec![0u8; n(2)];
                let pause = Duration::from_millis(n(3) as u64);
                forever(move || {
                    thread::sleep(pause);
                    matches!(conn.read(&mut buf), Ok(k) if k > 0)
                });
                Ok(String::new())
            }
            Some("reset") => {
                let conn = accepted.remove(n(1));
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: setsockopt on a socket we own, with a correctly sized struct.
                let rc = unsafe {
                    libc::setsockopt(
                        conn.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&raw const linger).cast(),
                        size_of::<libc::linger>() as u32,
                    )
                };
                if rc != 0 {
                    return Err(std::io::Error::last_os_error().to_string());
                }
                drop(conn);
                Ok(String::new())
            }
            Some("trickle") => {
                let addr = words[1].to_owned();
                let pause = Duration::from_millis(n(2) as u64);
                let mut kept = Vec::new();
                forever(move || {
                    thread::sleep(pause);
                    match TcpStream::connect(&addr) {
                        Ok(s) => {
                            kept.push(s);
                            true
                        }
                        Err(_) => false,
                    }
                });
                Ok(String::new())
            }
            Some("churn-forever") => {
                let addr = words[1].to_owned();
                forever(move || TcpStream::connect(&addr).is_ok());
                Ok(String::new())
            }
            Some("unconnected") => {
                for _ in 0..n(1) {
                    // SAFETY: plain socket(2); the fd is kept until exit.
                    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error().to_string());
                    }
                    raw_fds.push(fd);
                }
                Ok(String::new())
            }
            Some("udp-flood") => {
                let sender = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
                let target = format!("127.0.0.1:{}", words[1]);
                for _ in 0..n(2) {
                    let _ = sender.send_to(&[0u8; 1024], &target);
                }
                Ok(String::new())
            }
            Some("rename") => {
                let hex = words[1];
                let mut name: Vec<u8> = (0..hex.len() / 2)
                    .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(b'?'))
                    .collect();
                name.truncate(15);
                name.push(0);
                // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
                unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
                Ok(String::new())
            }
            Some("exit") => std::process::exit(0),
            other => Err(format!("unknown command {other:?}")),
        })();
        let text = match reply {
            Ok(details) => format!("ok {details}"),
            Err(e) => format!("err {e}"),
        };
        if writeln!(out, "{}", text.trim_end())
            .and_then(|()| out.flush())
            .is_err()
        {
            break;
        }
    }
}

/// unshare(CLONE_NEWNET) moves this (single-threaded) process into a fresh namespace whose
/// loopback is down; SIOCSIFFLAGS brings it up, as a container runtime would.
fn enter_new_netns() -> Result<String, String> {
    let os_err = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: plain syscalls on values owned here.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNET) != 0 {
            return Err(os_err("unshare"));
        }
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(os_err("socket"));
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        let up = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) == 0 && {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) == 0
        };
        let result = if up {
            Ok(())
        } else {
            Err(os_err("bringing lo up"))
        };
        libc::close(fd);
        result?;
    }
    let link = std::fs::read_link("/proc/self/ns/net").map_err(|e| e.to_string())?;
    Ok(link.to_string_lossy().into_owned())
}
