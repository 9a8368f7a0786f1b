//! A process that opens and closes sockets when told to, so tests can put sockets in exactly
//! the states they want, owned by a pid they know. One command per stdin line, one reply line
//! (`ok [DETAILS]` or `err MESSAGE`) per command:
//!
//! - `listen ADDR`          bind a TCP listener, reply with its port
//! - `serve`                accept and drop connections on listener 0 forever (a healthy server)
//! - `accept N`             accept N connections on listener 0 and keep them
//! - `connect ADDR N`       open N TCP connections and keep them, reply with their local ports
//! - `close N`              close the first N kept connections
//! - `udp ADDR N`           bind N UDP sockets and keep them
//! - `churn ADDR N`         connect and close N times
//! - `exit`
use std::{
    io::{BufRead, Write},
    net::{TcpListener, TcpStream, UdpSocket},
};

fn main() {
    let mut listeners: Vec<TcpListener> = Vec::new();
    let mut conns: Vec<TcpStream> = Vec::new();
    let mut accepted: Vec<TcpStream> = Vec::new();
    let mut udps: Vec<UdpSocket> = Vec::new();
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
            Some("udp") => {
                for _ in 0..n(2) {
                    udps.push(UdpSocket::bind(words[1]).map_err(|e| e.to_string())?);
                }
                Ok(String::new())
            }
            Some("churn") => {
                for _ in 0..n(2) {
                    drop(TcpStream::connect(words[1]).map_err(|e| e.to_string())?);
                }
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
