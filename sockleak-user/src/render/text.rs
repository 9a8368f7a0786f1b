//! The table a person reads in an incident: groups first (the likely leaks), then a few
//! sockets of each group as evidence.
use std::fmt::Write;

use sockleak_common::{SiteKind, StackUnwinder, Verdict};

use super::{escape::for_terminal, frames::plumbing_inside};
use crate::report::{Group, Peer, Report, SocketRow, Started};

/// Sockets listed under each group; the JSON output has all of them.
const SOCKETS_PER_GROUP: usize = 5;
/// Creation-stack frames shown under each group; the JSON output has all of them.
const FRAMES_PER_GROUP: usize = 12;

/// Said above a stack taken where a libuv handle was made.
pub const HANDLE_STACK: &str =
    "(where the libuv handle was made; libuv opened its socket a tick later)";

pub fn started(s: &Started) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "sockleak {}: tracing sockets ({} pre-existing found); hooks: {}",
        s.version,
        s.pre_existing,
        s.hooks
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    for w in &s.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    let pids = if s.pids.is_empty() {
        "all processes".to_owned()
    } else {
        format!("pid {}", pid_list(&s.pids, ", "))
    };
    let _ = writeln!(
        out,
        "reporting sockets of {pids} open longer than {} every {}; Ctrl-C for a final report",
        human_ms(s.min_age_ms),
        human_ms(s.interval_ms)
    );
    if let Some(rate) = s.stack_rate.filter(|&r| r > 0) {
        let _ = writeln!(
            out,
            "creation stacks: up to {rate} per process per second (--stack-rate; 0 takes all)"
        );
    }
    if s.stack_rate.is_some() {
        let _ = writeln!(
            out,
            "{}",
            if s.stack_unwinders.contains(&StackUnwinder::Copy) {
                "creation stacks: walked along frame pointers where a program keeps them, else \
                 copied and unwound from its call frame information"
            } else {
                "creation stacks: walked along frame pointers only (--stack-copy-budget 0, or \
                 this kernel cannot read a task's registers): code built without them shows a \
                 frame or two"
            }
        );
    }
    if let Some(url) = &s.metrics {
        let _ = writeln!(out, "serving Prometheus metrics at {url}");
    }
    out
}

pub fn report(r: &Report, final_report: bool) -> String {
    let mut out = String::new();
    let st = &r.stats;
    let _ = writeln!(
        out,
        "\n=== {}: {} open sockets in {} groups (table {}; events {} seen, {} lost) ===",
        if final_report {
            "final report"
        } else {
            "report"
        },
        r.sockets.len(),
        r.groups.len(),
        st.open_sockets,
        st.table.events_seen,
        st.kernel.events_lost,
    );
    if st.kernel.stack_collisions > 0 {
        let _ = writeln!(
            out,
            "warning: {} creation stacks lost to a full stack map: some sockets group without one",
            st.kernel.stack_collisions
        );
    }
    if st.kernel.js_stacks_lost > 0 {
        let _ = writeln!(
            out,
            "warning: {} JavaScript stacks lost to a full table: some Node.js groups show \
             native frames only",
            st.kernel.js_stacks_lost
        );
    }
    if st.kernel.stack_copies_lost > 0 {
        let _ = writeln!(
            out,
            "warning: {} stack copies over --stack-copy-budget or their ring: those sockets \
             group without a creation stack",
            st.kernel.stack_copies_lost
        );
    }
    if st.stacks.made_before_ready > 0 {
        let _ = writeln!(
            out,
            "note: {} sockets made by a node before sockleak had probed it (its first moments): \
             their groups show native frames only",
            st.stacks.made_before_ready
        );
    }
    if st.kernel.events_lost > 0 || st.table.dropped_table_full > 0 {
        let _ = writeln!(
            out,
            "warning: {} events lost in the kernel, {} sockets not tracked (table full): \
             counts may be low until the next reconciliation",
            st.kernel.events_lost, st.table.dropped_table_full
        );
    }
    if st.kernel.listeners_full > 0 {
        let _ = writeln!(
            out,
            "warning: {} listeners did not fit the kernel's listener map: connections through \
             them are attributed late, from sockleak's own view of their listener or its scans",
            st.kernel.listeners_full
        );
    }
    if st.netns_unreachable > 0 {
        let _ = writeln!(
            out,
            "warning: {} network namespaces could not be sampled: their sockets' queues and \
             states may be stale",
            st.netns_unreachable
        );
    }
    if r.groups.is_empty() {
        let _ = writeln!(out, "no open sockets match");
        churn(&mut out, r);
        return out;
    }
    // A site may hold a UNIX name, which comes from whoever bound the socket.
    let sites: Vec<String> = r
        .groups
        .iter()
        .map(|g| for_terminal(&g.key.site.text()))
        .collect();
    // Wide enough for the longest site (`connect() to [2001:db8::1]:5432`), so the columns
    // after it stay aligned.
    let site = sites
        .iter()
        .map(|s| s.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(20, 56);
    let _ = writeln!(
        out,
        "{:>6}  {:>7}  {:<16}  {:<site$}  {:>8}  {:>8}  {:>8}  {:>8}  {:<24}  STATES",
        "COUNT", "PID", "COMM", "SITE", "OLDEST", "RX_Q", "TX_Q", "MEM", "FLAGS"
    );
    for (g, site_text) in r.groups.iter().zip(&sites) {
        let _ = writeln!(
            out,
            "{:>6}  {:>7}  {:<16}  {:<site$}  {:>8}  {:>8}  {:>8}  {:>8}  {:<24}  {}",
            g.count,
            g.key.pid,
            for_terminal(&g.key.comm),
            site_text,
            human_ms(g.oldest_age_ms),
            g.rx_queue,
            g.tx_queue,
            human_bytes(g.memory_bytes),
            group_flags(g),
            group_states(g)
        );
        if let Some(growth) = &g.growth {
            let eta = match (growth.seconds_to_fd_limit, growth.fd_limit, growth.open_fds) {
                (Some(secs), Some(limit), Some(open)) => format!(
                    "; {open}/{limit} fds open, limit reached in {}",
                    human_ms(secs.saturating_mul(1000))
                ),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "{:>8}growing by {:.1} sockets/min{eta}",
                "", growth.per_minute
            );
        }
        if let Some(line) = placement(g) {
            let _ = writeln!(out, "{:>8}{line}", "");
        }
        let members = members_worst_first(r, g);
        if let Some(line) = process_line(g, members.iter().any(|s| !s.origin.traced())) {
            let _ = writeln!(out, "{:>8}{line}", "");
        }
        if let Some(line) = endpoints_line(g) {
            let _ = writeln!(out, "{:>8}{line}", "");
        }
        if g.handle_stack && !g.key.stack.frames().is_empty() {
            let _ = writeln!(out, "{:>8}{HANDLE_STACK}", "");
        }
        stack(&mut out, g.key.stack.frames());
        if let Some(note) = &g.stack_note {
            let _ = writeln!(out, "{:>8}({})", "", for_terminal(note));
        }
        if g.stack_not_sampled {
            let _ = writeln!(
                out,
                "{:>8}({})",
                "",
                g.key.stack.why_no_frames().unwrap_or("")
            );
        }
        for s in members.iter().take(SOCKETS_PER_GROUP) {
            let _ = writeln!(out, "{:>8}{}", "", socket_line(s));
        }
        if members.len() > SOCKETS_PER_GROUP {
            let _ = writeln!(
                out,
                "{:>8}... and {} more",
                "",
                members.len() - SOCKETS_PER_GROUP
            );
        }
    }
    churn(&mut out, r);
    out
}

/// A group's verdicts, `-` for none.
pub fn group_flags(g: &Group) -> String {
    if g.flags.is_empty() {
        "-".to_owned()
    } else {
        names(&g.flags)
    }
}

/// `STATE:COUNT` for each state the group's sockets are in.
pub fn group_states(g: &Group) -> String {
    g.states
        .iter()
        .map(|(state, n)| format!("{}:{n}", state.name()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Where the group's process runs, unless that is the root cgroup.
pub fn placement(g: &Group) -> Option<String> {
    let cgroup = g.cgroup.as_deref().filter(|c| *c != "/")?;
    let mut line = format!("cgroup {}", for_terminal(cgroup));
    if let Some(id) = &g.container.container_id {
        // Twelve digits, as `docker ps` shows them.
        let _ = write!(line, "  container {}", &id[..id.len().min(12)]);
    }
    if let Some(pod) = &g.container.pod_uid {
        let _ = write!(line, "  pod {pod}");
    }
    Some(line)
}

/// The owner's memory (and how it moved since sockleak's first report) and age. A socket
/// the process opened cannot be older than it: for sockets sockleak found open
/// (`found_open`), the only upper bound on their age.
pub fn process_line(g: &Group, found_open: bool) -> Option<String> {
    let p = g.process?;
    let change = match p.resident_change_bytes {
        0 => String::new(),
        d if d > 0 => format!(
            " (+{} since the first report)",
            human_bytes(d.unsigned_abs())
        ),
        d => format!(
            " (-{} since the first report)",
            human_bytes(d.unsigned_abs())
        ),
    };
    let bound = if found_open {
        "; the sockets found open are no older"
    } else {
        ""
    };
    Some(format!(
        "process: {} resident{change}, started {} ago{bound}",
        human_bytes(p.resident_bytes),
        human_ms(p.age_ms)
    ))
}

/// Where the group's client connections go, unless its site already names the one place.
pub fn endpoints_line(g: &Group) -> Option<String> {
    if g.endpoints.is_empty()
        || (g.endpoints.len() == 1 && g.more_endpoints == 0 && g.key.site.kind == SiteKind::Connect)
    {
        return None;
    }
    let mut line = String::from("to ");
    for (i, e) in g.endpoints.iter().enumerate() {
        if i > 0 {
            line.push_str(", ");
        }
        let _ = write!(line, "{} ({})", e.endpoint, e.count);
    }
    if g.more_endpoints > 0 {
        let _ = write!(line, " and {} more endpoints", g.more_endpoints);
    }
    Some(line)
}

/// The group's sockets, the evidence a person should see first first: flagged sockets, then
/// the fullest queues, then the oldest.
pub fn members_worst_first<'r>(r: &'r Report, g: &Group) -> Vec<&'r SocketRow> {
    let mut members: Vec<&SocketRow> = g.members.iter().map(|&i| &r.sockets[i]).collect();
    members.sort_by_key(|s| {
        (
            std::cmp::Reverse(s.flags.len()),
            std::cmp::Reverse(u64::from(s.rx_queue) + u64::from(s.tx_queue)),
            std::cmp::Reverse(s.age_ms),
        )
    });
    members
}

/// One socket as evidence: addresses, state and for how long, queues, verdicts, the other
/// processes holding it, and who holds a UNIX socket's other end. A UNIX socket's name,
/// chosen by whoever bound it, is shown escaped.
pub fn socket_line(s: &SocketRow) -> String {
    format!(
        "{} {} {} -> {}  {} for {}  age {}  rx {} tx {}{}{}{}",
        s.protocol.name(),
        s.family.name(),
        for_terminal(&s.local.to_string()),
        for_terminal(&s.remote.to_string()),
        s.state.name(),
        state_age(s),
        human_ms(s.age_ms),
        s.rx_queue,
        s.tx_queue,
        if s.flags.is_empty() {
            String::new()
        } else {
            format!("  [{}]", names(&s.flags))
        },
        if s.holders.is_empty() || s.holders == [s.pid] {
            String::new()
        } else {
            format!("  held by {}", pid_list(&s.holders, ","))
        },
        match &s.peer {
            Some(peer) => peer_text(peer),
            None => String::new(),
        }
    )
}

/// A UNIX socket's other end: who holds it (by pid, and command), or that it was released
/// (by whom it was last held).
fn peer_text(peer: &Peer) -> String {
    let command = peer
        .command
        .as_deref()
        .map(|c| format!(" ({})", for_terminal(c)))
        .unwrap_or_default();
    if peer.inode == 0 {
        format!("  peer released{command}")
    } else if !peer.holders.is_empty() {
        format!("  peer held by {}{command}", pid_list(&peer.holders, ","))
    } else {
        String::new()
    }
}

/// Verdicts as a comma-separated list.
fn names(flags: &[Verdict]) -> String {
    flags.iter().map(|v| v.name()).collect::<Vec<_>>().join(",")
}

/// The frames of a creation stack, innermost first, from the first past the socket plumbing
/// (which is said, not shown), C++ parameter lists left out (JSON has them whole).
fn stack(out: &mut String, frames: &[String]) {
    if let Some(line) = folded_line(frames) {
        let _ = writeln!(out, "{:>8}{line}", "");
    }
    let frames = &frames[plumbing_inside(frames)..];
    for frame in frames.iter().take(FRAMES_PER_GROUP) {
        let _ = writeln!(
            out,
            "{:>8}at {}",
            "",
            for_terminal(&without_parameters(frame))
        );
    }
    if frames.len() > FRAMES_PER_GROUP {
        let _ = writeln!(
            out,
            "{:>8}... {} more frames",
            "",
            frames.len() - FRAMES_PER_GROUP
        );
    }
}

/// What the text views say in place of the plumbing they fold.
pub fn folded_line(frames: &[String]) -> Option<String> {
    let folded = plumbing_inside(frames);
    let innermost = frames.first()?;
    let name = innermost.split(" (").next().unwrap_or(innermost);
    (folded > 0).then(|| {
        let frames = if folded == 1 { "frame" } else { "frames" };
        format!(
            "({folded} {frames} of socket plumbing folded, from {})",
            for_terminal(&without_parameters(name))
        )
    })
}

/// `ns::f<T>(int, char const*) const (x.cc:12)` -> `ns::f<T> const (x.cc:12)`: demangled C++
/// parameter lists make frames unreadably long and rarely tell one frame from another.
/// `(anonymous namespace)` is part of the name and stays, and so does a Go receiver
/// (`net.(*netFD).accept`), which follows a dot.
pub fn without_parameters(frame: &str) -> String {
    let mut out = String::with_capacity(frame.len());
    let mut chars = frame.char_indices().peekable();
    let mut prev = ' ';
    while let Some((i, c)) = chars.next() {
        if c == '('
            && prev != ' '
            && prev != '.'
            && !frame[i..].starts_with("(anonymous namespace)")
        {
            let mut depth = 1;
            for (_, c) in chars.by_ref() {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
            }
            prev = ')';
            continue;
        }
        out.push(c);
        prev = c;
    }
    out
}

/// Closed sockets still in the kernel: not leaks, but a cost worth seeing.
fn churn(out: &mut String, r: &Report) {
    if r.churn.is_empty() {
        return;
    }
    let _ = writeln!(out, "churn (closed, still in the kernel):");
    for c in &r.churn {
        let _ = writeln!(
            out,
            "{:>8}{} {}: {} TIME_WAIT, {} orphaned",
            "",
            c.pid,
            for_terminal(&c.comm),
            c.time_wait,
            c.orphaned
        );
    }
}

fn pid_list(pids: &[u32], separator: &str) -> String {
    pids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(separator)
}

pub fn human_bytes(bytes: u64) -> String {
    match bytes {
        0..1024 => format!("{bytes}B"),
        1024..1_048_576 => format!("{:.1}K", bytes as f64 / 1024.0),
        _ => format!("{:.1}M", bytes as f64 / 1_048_576.0),
    }
}

/// Time in the current state: `2.0s..12.0s` where samples bracket the transition (the state
/// began between the sample that found it and the look before), one figure where an event
/// showed it or where there is no earlier look to bound it.
fn state_age(s: &SocketRow) -> String {
    let at_least = human_ms(s.state_age_ms);
    match s.state_age_max_ms.map(human_ms) {
        Some(at_most) if at_most != at_least => format!("{at_least}..{at_most}"),
        _ => at_least,
    }
}

pub fn human_ms(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

#[cfg(test)]
mod tests {
    use sockleak_common::{Family, Origin, Protocol, SocketState};

    use super::*;

    /// The row `report` makes of a socket found ESTABLISHED by a sample (`report`'s
    /// `a_state_found_between_two_looks_has_both_bounds`).
    fn established(state_age_ms: u64, state_age_max_ms: Option<u64>) -> SocketRow {
        SocketRow {
            id: sockleak_common::SockId::new(1, 0),
            pid: 1,
            tid: 1,
            comm: "client".into(),
            uid: 0,
            cgroup_id: 0,
            cgroup: None,
            container: Default::default(),
            family: Family::Ipv4,
            protocol: Protocol::Tcp,
            state: SocketState::Established,
            local: "127.0.0.1:1".parse().unwrap(),
            remote: "127.0.0.1:2".parse().unwrap(),
            local_base64: None,
            remote_base64: None,
            age_ms: 3_000,
            rx_queue: 0,
            tx_queue: 0,
            origin: Origin::Socket,
            holders: [1][..].into(),
            peer: None,
            flags: Vec::new(),
            state_age_ms,
            state_age_max_ms,
            memory: None,
            tcp: None,
            rcvqueue_full: 0,
            exceed_buf_limit: 0,
        }
    }

    #[test]
    fn a_unix_name_cannot_drive_the_terminal() {
        let mut row = established(1_000, None);
        row.local = "@evil\u{1b}[2J".parse().unwrap();
        let text = socket_line(&row);
        assert!(text.contains(" @evil\\x1b[2J -> 127.0.0.1:2 "), "{text}");
    }

    #[test]
    fn a_state_age_shows_both_bounds_where_samples_bracket_it() {
        let text = socket_line(&established(1_000, Some(3_000)));
        assert!(
            text.contains("ESTABLISHED for 1.0s..3.0s  age 3.0s"),
            "{text}"
        );
        let text = socket_line(&established(1_000, None));
        assert!(text.contains("ESTABLISHED for 1.0s  age 3.0s"), "{text}");
    }

    #[test]
    fn frames_lose_their_parameter_lists_only() {
        assert_eq!(
            without_parameters(
                "void node::TCPWrap::Bind<sockaddr_in>(v8::FunctionCallbackInfo<v8::Value> const&, int)"
            ),
            "void node::TCPWrap::Bind<sockaddr_in>"
        );
        assert_eq!(
            without_parameters(
                "v8::internal::(anonymous namespace)::Invoke(v8::internal::Isolate*)"
            ),
            "v8::internal::(anonymous namespace)::Invoke"
        );
        assert_eq!(
            without_parameters("open_and_forget (leaky.c:14)"),
            "open_and_forget (leaky.c:14)"
        );
        assert_eq!(without_parameters("f(g(int)) const"), "f const");
        assert_eq!(
            without_parameters("net.(*netFD).accept (fd_unix.go:172)"),
            "net.(*netFD).accept (fd_unix.go:172)"
        );
        assert_eq!(
            without_parameters("main.(*Pool[go.shape.int]).Get"),
            "main.(*Pool[go.shape.int]).Get"
        );
        assert_eq!(without_parameters("unbalanced(oops"), "unbalanced");
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_ms(250), "250ms");
        assert_eq!(human_ms(12_300), "12.3s");
        assert_eq!(human_ms(125_000), "2m05s");
        assert_eq!(human_ms(7_380_000), "2h03m");
    }
}
