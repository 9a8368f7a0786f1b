//! Stack frames a person can act on. The innermost frames of a creation stack are the same
//! for every socket of a runtime: the syscall wrapper, the C library, the language runtime's
//! socket plumbing, libuv's event loop. The text views lead with the first frame past them and
//! say how many were folded; JSON, folded stacks and flame graphs keep every frame.

/// How many of the innermost `frames` are socket plumbing, to be folded. 0 when every frame
/// is plumbing or the program's entry (`main` and what calls it): then there is nothing
/// better to lead with.
pub fn plumbing_inside(frames: &[String]) -> usize {
    if frames.iter().all(|f| is_plumbing(f) || is_entry(f)) {
        return 0;
    }
    frames.iter().take_while(|f| is_plumbing(f)).count()
}

/// A program's entry: its `main` and the C library's code that calls it.
fn is_entry(frame: &str) -> bool {
    let name = frame.split(" (").next().unwrap_or(frame);
    matches!(
        name,
        "main"
            | "_start"
            | "__libc_start_main"
            | "__libc_start_main_impl"
            | "__libc_start_call_main"
    )
}

/// Whether a frame (`name (file:line)`, `name`, `JS:name script:line` from a perf map,
/// `JS:name (script:line)` from V8's heap, `0xADDR [unknown]`) belongs to the machinery
/// between a program's own code and the socket.
fn is_plumbing(frame: &str) -> bool {
    if frame.ends_with(" [unknown]") {
        return true;
    }
    // Node's own JavaScript (`JS:internalConnect node:net:1038:25`, `JS:connect (node:net)`).
    if let Some(js) = frame.strip_prefix("JS:") {
        return js.contains(" node:") || js.contains(" (node:");
    }
    let name = frame.split(" (").next().unwrap_or(frame);
    const RUNTIME_PREFIXES: &[&str] = &[
        // Go: the runtime, syscalls, the poller, the net package and what dials for you.
        "runtime.",
        "runtime/",
        "syscall.",
        "internal/",
        "net.",
        "net/http.",
        "crypto/tls.",
        // Rust: the standard library, and the async runtimes' I/O drivers.
        "std::",
        "<std::",
        "core::",
        "<core::",
        "alloc::",
        "tokio::",
        "<tokio::",
        "mio::",
        "<mio::",
        // libuv's loop, Node and V8.
        "uv_",
        "uv__",
        "node::",
        "v8::",
        "Builtins_",
    ];
    if RUNTIME_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return true;
    }
    // The C library's wrappers: `socket`, `__GI_socket`, `__libc_accept4`, `__connect`...
    let bare = name
        .trim_start_matches('_')
        .trim_start_matches("GI_")
        .trim_start_matches("libc_")
        .trim_start_matches('_');
    matches!(
        bare,
        "socket" | "socketpair" | "accept" | "accept4" | "connect" | "bind" | "listen"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn the_plumbing_of_each_runtime_is_folded_up_to_the_programs_own_code() {
        let c = frames(&[
            "__GI_socket (syscall-template.S:120)",
            "open_and_forget_connections (leaky_native.c:31)",
            "main (leaky_native.c:47)",
        ]);
        assert_eq!(plumbing_inside(&c), 1);
        let go = frames(&[
            "runtime/internal/syscall.Syscall6 (asm_linux_amd64.s:36)",
            "syscall.Socket",
            "net.sysSocket (sock_cloexec.go:19)",
            "net.(*sysDialer).dialSingle (dial.go:707)",
            "internal/poll.(*FD).Init",
            "main.(*Client).open (leaky.go:21)",
            "main.main (leaky.go:40)",
            "runtime.main (proc.go:267)",
        ]);
        assert_eq!(plumbing_inside(&go), 5);
        // A Go accept loop in a goroutine of the program's own: its closure leads.
        let go_accept = frames(&[
            "internal/poll.(*FD).Accept (fd_unix.go:605)",
            "net.(*TCPListener).Accept (tcpsock.go:288)",
            "main.main.func1 (leaky.go:46)",
            "runtime.goexit (asm_amd64.s:1594)",
        ]);
        assert_eq!(plumbing_inside(&go_accept), 2);
        let rust = frames(&[
            "accept4 (accept4.c:31)",
            "<std::net::tcp::TcpListener>::accept",
            "sockleak_scenario::main::{closure#1}",
        ]);
        assert_eq!(plumbing_inside(&rust), 2);
        let node_client = frames(&[
            "0x7f00 [unknown]",
            "uv__tcp_connect (tcp.c:230)",
            "node::TCPWrap::Connect",
            "JS:internalConnect node:net:1038:25",
            "JS:openUpstream /srv/app.js:12:3",
        ]);
        assert_eq!(plumbing_inside(&node_client), 4);
        // The same named from V8's heap (no perf map).
        let node_heap = frames(&[
            "uv_tcp_init (tcp.c:118)",
            "node::TCPWrap::New",
            "JS:connect (node:net)",
            "JS:openUpstream (/srv/app.js:12)",
        ]);
        assert_eq!(plumbing_inside(&node_heap), 3);
        // Nothing but the event loop and the program's entry: nothing to lead with, nothing
        // folded.
        let node_accept = frames(&[
            "accept4 (accept4.c:31)",
            "uv__server_io (stream.c:519)",
            "uv_run (core.c:447)",
            "node::Start",
            "main (node_main.cc:97)",
            "__libc_start_call_main (libc_start_call_main.h:58)",
        ]);
        assert_eq!(plumbing_inside(&node_accept), 0);
        let socket_in_main = frames(&["socket (socket.S:1)", "main (a.c:3)", "_start"]);
        assert_eq!(plumbing_inside(&socket_in_main), 0);
        assert_eq!(plumbing_inside(&[]), 0);
        assert!(!is_plumbing("JSON::parse (json.cc:3)"));
        assert!(!is_plumbing("socketpool_get (pool.c:9)"));
    }
}
