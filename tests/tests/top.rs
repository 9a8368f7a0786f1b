//! `sockleak top`, driven in a real terminal (tmux): it shows the leaking group, sorts, opens
//! the group's stack and sockets, and quits leaving the terminal usable.
use std::process::Command;

use sockleak_tests::{Scenario, eventually, require_program, require_root, sockleak_bin};

/// A detached tmux session of its own (its own server socket), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(command: &str) -> Self {
        require_program("tmux");
        let tmux = Self {
            socket: format!("sockleak-test-{}", std::process::id()),
        };
        let status = tmux
            .cmd(&["new-session", "-d", "-x", "160", "-y", "45", command])
            .status()
            .unwrap();
        assert!(status.success(), "tmux new-session failed");
        tmux
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &self.socket]).args(args);
        cmd
    }

    fn screen(&self) -> String {
        let out = self.cmd(&["capture-pane", "-p"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys"];
        args.extend_from_slice(keys);
        assert!(self.cmd(&args).status().unwrap().success());
    }

    fn wait_for(&self, what: &str, shown: impl Fn(&str) -> bool) -> String {
        eventually(what, |last| {
            *last = self.screen();
            shown(last).then(|| last.clone())
        })
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]).status();
    }
}

#[test]
fn top_shows_the_leaking_group_sorts_opens_its_stack_and_quits_cleanly() {
    require_root();
    let mut server = Scenario::spawn();
    let port = server.run("listen 127.0.0.1:0")[0].clone();
    let mut client = Scenario::spawn();
    let pid = client.pid();
    let tmux = Tmux::start(&format!(
        "{} top --pid {pid} --min-age 0s --interval 300ms; echo \"top exited with $?\"; sleep 60",
        sockleak_bin().display()
    ));
    tmux.wait_for("the top header", |s| s.contains("sockleak top"));
    client.run(&format!("connect 127.0.0.1:{port} 9"));

    let screen = tmux.wait_for("a group of 9 sockets", |s| {
        s.lines()
            .any(|l| l.contains(&pid.to_string()) && l.split_whitespace().any(|w| w == "9"))
    });
    assert!(screen.contains("sockleak-scenar"), "{screen}");
    assert!(screen.contains("sort: suspect"), "{screen}");

    tmux.keys(&["s"]);
    tmux.wait_for("sorting by count", |s| s.contains("sort: count"));

    tmux.keys(&["Enter"]);
    let detail = tmux.wait_for("the group's detail", |s| s.contains("9 sockets of"));
    assert!(detail.contains("created at (innermost first):"), "{detail}");
    let innermost = detail
        .lines()
        .skip_while(|l| !l.contains("created at"))
        .nth(1)
        .unwrap_or_default();
    assert!(
        innermost.contains("socket"),
        "the stack starts at the socket() wrapper, where every socket's is taken: {detail}"
    );
    assert!(
        detail.contains(&format!("-> 127.0.0.1:{port}  ESTABLISHED")),
        "the group's sockets: {detail}"
    );
    tmux.keys(&["Escape"]);
    tmux.wait_for("the detail closed", |s| !s.contains("9 sockets of"));

    tmux.keys(&["q"]);
    let after = tmux.wait_for("top to exit", |s| s.contains("top exited with"));
    assert!(after.contains("top exited with 0"), "{after}");
    assert!(
        !after.contains("COUNT"),
        "the alternate screen is gone, the shell's screen is back: {after}"
    );
}

#[test]
fn top_refuses_to_draw_into_a_pipe() {
    let out = Command::new(sockleak_bin()).arg("top").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        "sockleak: error: sockleak top draws on a terminal; for pipes and files use `sockleak trace`"
    );
}
