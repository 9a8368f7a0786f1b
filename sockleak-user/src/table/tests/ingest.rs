//! Events in, table out.
use std::sync::Arc;

use sockleak_common::{COMM_LEN, EventKind, Hook, Origin, StackRef, TcpState};

use crate::table::{SocketTable, testing::*};
use crate::{
    filter::Filter,
    holders::Holders,
    stacks::identity::{CreationStack, NativeFrames},
    table::{SYNTHETIC_KEY, socket::CommNames},
};

#[test]
fn one_name_is_one_shared_string_and_the_cache_stays_bounded() {
    let mut names = CommNames::default();
    let mut comm = [0u8; COMM_LEN];
    comm[..4].copy_from_slice(b"node");
    let first = names.of(&comm);
    assert_eq!(&*first, "node");
    assert!(Arc::ptr_eq(&first, &names.of(&comm)));
    comm[..4].copy_from_slice(b"n\xffde");
    assert_eq!(&*names.of(&comm), "n\u{fffd}de");
    for i in 0..2 * CommNames::MAX as u32 {
        comm[..4].copy_from_slice(&i.to_ne_bytes());
        names.of(&comm);
    }
    assert!(names.len() <= CommNames::MAX);
}

#[test]
fn created_then_released_leaves_nothing() {
    let mut t = SocketTable::new(16);
    t.apply(&created(5, 100));
    assert_eq!(t.get(5).unwrap().owner.pid, 100);
    assert_eq!(&*t.get(5).unwrap().owner.comm, "client");
    t.apply(&released(5));
    assert!(t.is_empty());
    assert_eq!(t.stats.released, 1);
}

#[test]
fn a_created_socket_is_known_by_address_and_inode_and_its_stack_follows() {
    let mut t = SocketTable::new(16);
    let mut born = created(5, 100);
    born.skaddr = 0xffff_5000;
    born.inode = 777;
    born.user_stack = StackRef::PENDING;
    t.apply(&born);
    let s = t.get(5).unwrap();
    assert_eq!(
        (s.skaddr, s.inode, s.stack),
        (0xffff_5000, 777, CreationStack::Unknown)
    );
    // The classic tracepoint names only the address.
    let mut listen = event(EventKind::StateChanged, Hook::TracepointInetSockSetState);
    listen.skaddr = 0xffff_5000;
    listen.new_state = state(TcpState::LISTEN);
    t.apply(&listen);
    assert_eq!(t.get(5).unwrap().state, TcpState::LISTEN);
    // The stack, taken at the exit of socket().
    let mut exit = event(EventKind::CreationCompleted, Hook::SysExitSocket);
    exit.cookie = 5;
    exit.skaddr = 0xffff_5000;
    exit.inode = 777;
    exit.task = task(100, "client");
    exit.user_stack = StackRef::from_stackid(12);
    t.apply(&exit);
    assert_eq!(
        t.get(5).unwrap().stack.key().map(|k| k.native),
        Some(NativeFrames::Stacks(12))
    );
    // Over the budget, the creation event says so and nothing follows.
    let mut unsampled = created(6, 100);
    unsampled.user_stack = StackRef::NOT_SAMPLED;
    t.apply(&unsampled);
    assert_eq!(t.get(6).unwrap().stack, CreationStack::NotSampled);
}

#[test]
fn accepted_socket_is_owned_by_the_acceptor_not_the_softirq() {
    let mut t = SocketTable::new(16);
    let mut est = event(EventKind::StateChanged, Hook::TpBtfInetSockSetState);
    est.cookie = 77;
    est.skaddr = 0xffff_0000;
    est.new_state = state(TcpState::ESTABLISHED);
    est.task = task(0, "swapper/0"); // whatever ran the softirq; must be ignored
    t.apply(&est);
    assert!(t.is_empty(), "nobody owns it before accept()");
    t.apply(&accepted_without_cookie(0xffff_0000, 999));
    let s = t.get(77).expect("joined on skaddr");
    assert_eq!(
        (s.owner.pid, s.origin, s.state),
        (4242, Origin::Accept, TcpState::ESTABLISHED)
    );
    let mut cw = est;
    cw.new_state = state(TcpState::CLOSE_WAIT);
    t.apply(&cw);
    assert_eq!(t.get(77).unwrap().state, TcpState::CLOSE_WAIT);
}

#[test]
fn a_handshake_through_a_known_listener_is_its_owners_with_its_stack_once_accepted() {
    let mut t = SocketTable::new(16);
    let mut listener = created(1, 4242);
    listener.user_stack = StackRef::from_stackid(7);
    t.apply(&listener);
    let mut listen = listening(1, 8080);
    listen.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    t.apply(&listen);

    // The kernel named the owner; the table adds the listener's stack.
    t.apply(&handshake(2, 4242, 8080));
    // The kernel did not know the listener: the table does.
    t.apply(&handshake(3, 0, 8080));
    // Nobody known listens on this port: left for reports to adopt once held.
    t.apply(&handshake(4, 0, 9090));
    assert!(t.get(4).is_none());
    for cookie in [2, 3] {
        let s = t.get(cookie).unwrap();
        assert_eq!(
            (s.owner.pid, s.origin, s.state),
            (4242, Origin::Accept, TcpState::ESTABLISHED)
        );
        assert_eq!(
            s.stack.key().map(|k| k.native),
            Some(NativeFrames::Stacks(7))
        );
        assert!(s.awaiting_accept(), "no file before accept()");
    }

    // A look: 2 was accepted (it has an inode now, held by the server); 3 still waits in the
    // queue, which is not a release however many looks find it so.
    let mut accepted = diag(2, TcpState::ESTABLISHED, 222);
    accepted.local = "127.0.0.1:8080".parse().unwrap();
    let mut waiting = diag(3, TcpState::ESTABLISHED, 0);
    waiting.local = accepted.local.clone();
    let holders = Holders::from_pairs(vec![(222, 4242)]);
    for now in [2_000_000_000, 4_000_000_000, 6_000_000_000] {
        t.reconcile(
            &[accepted.clone(), waiting.clone()],
            &holders,
            now,
            &Filter::default(),
            &nobody_holds(),
        );
    }
    let s = t.get(2).unwrap();
    assert_eq!((s.inode, &s.holders[..]), (222, &[4242][..]));
    assert!(!s.awaiting_accept());
    assert!(t.get(3).is_some_and(|s| s.awaiting_accept()));
    // Gone from the dump: it died in the queue, and goes like any unheld socket.
    for now in [8_000_000_000, 10_000_000_000] {
        t.reconcile(
            &[accepted.clone()],
            &holders,
            now,
            &Filter::default(),
            &nobody_holds(),
        );
    }
    assert!(t.get(3).is_none());
}

#[test]
fn a_listener_on_the_same_port_elsewhere_lends_neither_owner_nor_stack() {
    // Two processes listen on port 8080, each in its own network namespace.
    let mut t = SocketTable::new(16);
    for (cookie, pid, stack) in [(1, 100, 7), (2, 200, 8)] {
        let mut listener = created(cookie, pid);
        listener.user_stack = StackRef::from_stackid(stack);
        t.apply(&listener);
        t.apply(&listening(cookie, 8080));
    }
    // The kernel named process 300, whose listener the table does not know: no one's stack.
    t.apply(&handshake(3, 300, 8080));
    let s = t.get(3).unwrap();
    assert_eq!((s.owner.pid, s.stack), (300, CreationStack::Unknown));
    // The kernel named no one: which of the two is not the table's to guess.
    t.apply(&handshake(4, 0, 8080));
    assert!(t.get(4).is_none());
    t.apply(&handshake(5, 200, 8080));
    assert_eq!(
        t.get(5).unwrap().stack.key().map(|k| k.native),
        Some(NativeFrames::Stacks(8))
    );
}

#[test]
fn one_cookie_in_two_network_namespaces_is_two_sockets() {
    // Kernels before 5.12 number cookies per namespace: two containers' sockets can share one.
    let mut t = SocketTable::new(16);
    for (netns, pid) in [(11, 100), (22, 200)] {
        let mut made = created(5, pid);
        made.netns = netns;
        t.apply(&made);
    }
    assert_eq!(t.len(), 2);
    let mut gone = released(5);
    gone.netns = 22;
    t.apply(&gone);
    let left: Vec<_> = t.sockets().map(|s| (s.id, s.owner.pid)).collect();
    assert_eq!(left, [(SockId::new(5, 11), 100)]);
}

#[test]
fn a_connection_the_kernel_named_no_owner_for_takes_its_own_namespaces_listener() {
    let mut t = SocketTable::new(16);
    for (cookie, netns, pid, stack) in [(1, 11, 100, 7), (2, 22, 200, 8)] {
        let mut listener = created(cookie, pid);
        listener.netns = netns;
        listener.user_stack = StackRef::from_stackid(stack);
        t.apply(&listener);
        let mut listens = listening(cookie, 8080);
        listens.netns = netns;
        t.apply(&listens);
    }
    let mut connection = handshake(3, 0, 8080);
    connection.netns = 22;
    t.apply(&connection);
    let s = t.get(3).unwrap();
    assert_eq!(
        (s.owner.pid, s.stack.key().map(|k| k.native)),
        (200, Some(NativeFrames::Stacks(8)))
    );
}

#[test]
fn a_connection_born_before_its_listener_in_the_same_report_still_gets_its_stack() {
    let mut t = SocketTable::new(16);
    t.expect_newborn_in_kernel();
    // The listener's LISTEN comes through the ring while its birth waits in the kernel's map.
    t.apply(&listening(1, 8080));
    let mut listener = created(1, 4242);
    listener.user_stack = StackRef::from_stackid(7);
    t.adopt_newborn(&[handshake(2, 4242, 8080), listener]);
    let s = t.get(2).unwrap();
    assert_eq!(s.owner.pid, 4242);
    assert_eq!(
        s.stack.key().map(|k| k.native),
        Some(NativeFrames::Stacks(7))
    );
}

#[test]
fn an_accept_without_a_cookie_is_keyed_by_the_cookie_sock_diag_names_for_its_inode() {
    // The classic-tracepoint fallback (5.10): the accept's fd walk finds no cookie yet.
    let mut t = SocketTable::new(16);
    t.apply(&accepted_without_cookie(0xffff_0000, 999));
    assert!(t.get(0xffff_0000 | SYNTHETIC_KEY).is_some());
    let holders = Holders::from_pairs(vec![(999, 4242)]);
    let sample = diag(31, TcpState::CLOSE_WAIT, 999);
    t.reconcile(&[sample], &holders, 2, &Filter::default(), &nobody_holds());
    assert_eq!(
        t.len(),
        1,
        "one socket, not a traced one and a recovered twin"
    );
    assert_eq!(
        t.get(31).map(|s| (s.state, s.origin)),
        Some((TcpState::CLOSE_WAIT, Origin::Accept))
    );
    // Its release carries the cookie: now it is found.
    t.apply(&released(31));
    assert!(t.is_empty());
}

#[test]
fn a_cookieless_accept_at_a_reused_address_replaces_the_freed_socket() {
    let mut t = SocketTable::new(16);
    let mut acc = accepted_without_cookie(0xffff_0000, 999);
    t.apply(&acc);
    // Its release (keyed by a cookie nobody knew) went unmatched; the memory is reused.
    acc.inode = 1000;
    t.apply(&acc);
    assert_eq!(t.len(), 1);
    assert_eq!(
        t.get(0xffff_0000 | SYNTHETIC_KEY).map(|s| s.inode),
        Some(1000)
    );
    assert_eq!((t.stats.accepted, t.stats.released), (2, 1));
}

#[test]
fn a_reused_sock_address_does_not_join_a_new_socket_to_an_old_one() {
    let mut t = SocketTable::new(16);
    let mut acc = event(EventKind::AcceptReturned, Hook::SysExitAccept4);
    acc.cookie = 1;
    acc.skaddr = 0xabc;
    acc.task = task(10, "old");
    t.apply(&acc);
    // The old socket's release was lost; the address is reused by a new socket.
    let mut est = event(EventKind::StateChanged, Hook::TpBtfInetSockSetState);
    est.cookie = 2;
    est.skaddr = 0xabc;
    est.new_state = state(TcpState::CLOSE_WAIT);
    t.apply(&est);
    assert_eq!(
        t.get(1).unwrap().state,
        TcpState::ESTABLISHED,
        "old socket untouched"
    );
    let mut acc2 = acc;
    acc2.cookie = 2;
    acc2.task = task(20, "new");
    t.apply(&acc2);
    assert_eq!(
        (t.get(2).unwrap().owner.pid, t.get(2).unwrap().state),
        (20, TcpState::CLOSE_WAIT)
    );
}

#[test]
fn state_changes_carry_addresses_for_short_lived_sockets() {
    let mut t = SocketTable::new(4);
    t.apply(&created(3, 1));
    let mut est = event(EventKind::StateChanged, Hook::TpBtfInetSockSetState);
    est.cookie = 3;
    est.new_state = state(TcpState::ESTABLISHED);
    est.family = 10;
    est.sport = 40000;
    est.dport = 443;
    est.saddr[15] = 1;
    est.daddr[15] = 1;
    t.apply(&est);
    let s = t.get(3).unwrap();
    assert_eq!(s.local, Some("[::1]:40000".parse().unwrap()));
    assert_eq!(s.remote, Some("[::1]:443".parse().unwrap()));
    let mut reset = est;
    reset.new_state = state(TcpState::CLOSE);
    reset.sport = 0; // already released by the kernel when the tracepoint fires
    t.apply(&reset);
    let s = t.get(3).unwrap();
    assert_eq!(s.local, Some("[::1]:40000".parse().unwrap()), "port kept");
    assert_eq!(s.state, TcpState::CLOSE);
}

#[test]
fn closed_sockets_lingering_in_the_kernel_count_as_churn_of_their_owner() {
    let mut t = SocketTable::new(8);
    for cookie in [1, 2] {
        t.apply(&created(cookie, 55));
        let mut est = event(EventKind::StateChanged, Hook::TpBtfInetSockSetState);
        est.cookie = cookie;
        est.new_state = state(TcpState::ESTABLISHED);
        t.apply(&est);
        t.apply(&released(cookie));
    }
    // TIME_WAIT sockets come as cookies from a dump of their own; orphans still closing
    // are listed without an inode.
    t.count_churn(&[diag(2, TcpState::FIN_WAIT2, 0)], &ids(&[1, 3]), &[]);
    let churn = &t.churn()[&55];
    assert_eq!(
        (churn.time_wait, churn.orphaned, &*churn.comm),
        (1, 1, "client")
    );
    assert_eq!(t.churn().len(), 1, "cookie 3 belongs to nobody we saw");
}

#[test]
fn releases_the_kernel_logged_count_as_churn_of_their_creator() {
    let mut t = SocketTable::new(8);
    let mut logged = sockleak_common::ReleasedSocket {
        cookie: 7,
        pid: 66,
        ..Default::default()
    };
    logged.comm[..6].copy_from_slice(b"server");
    t.count_churn(&[], &ids(&[7, 8]), &[logged]);
    let churn = &t.churn()[&66];
    assert_eq!((churn.time_wait, &*churn.comm), (1, "server"));
    assert_eq!(t.churn().len(), 1);
}

#[test]
fn an_event_about_a_socket_still_in_the_kernels_map_waits_for_it() {
    let mut t = SocketTable::new(8);
    t.expect_newborn_in_kernel();
    let listen = listening(9, 0);
    t.apply(&listen);
    assert!(t.is_empty());
    // The report reads the kernel's map: the listener arrives, then what waited for it.
    t.adopt_newborn(&[created(9, 70)]);
    assert_eq!(t.get(9).unwrap().state, TcpState::LISTEN);
    assert_eq!(t.stats.events, 2);
    // Events about known sockets are applied at once.
    let mut close = listen;
    close.old_state = state(TcpState::LISTEN);
    close.new_state = state(TcpState::CLOSE);
    t.apply(&close);
    assert_eq!(t.get(9).unwrap().state, TcpState::CLOSE);
}

#[test]
fn an_event_whose_socket_never_comes_is_applied_as_before() {
    let mut t = SocketTable::new(8);
    t.expect_newborn_in_kernel();
    let mut est = event(EventKind::StateChanged, Hook::TpBtfInetSockSetState);
    est.cookie = 4;
    est.skaddr = 0x1000;
    est.new_state = state(TcpState::ESTABLISHED);
    t.apply(&est);
    // Released before any report read it: the kernel dropped it, the event stays unowned,
    // as an accepted child's would.
    t.adopt_newborn(&[]);
    assert!(t.is_empty());
    let mut accept = accepted_without_cookie(0x1000, 77);
    accept.cookie = 4;
    t.apply(&accept);
    assert_eq!(t.get(4).unwrap().state, TcpState::ESTABLISHED);
}

#[test]
fn table_is_bounded() {
    let mut t = SocketTable::new(3);
    for cookie in 1..=5 {
        t.apply(&created(cookie, 1));
    }
    assert_eq!(t.len(), 3);
    assert_eq!(t.stats.dropped_table_full, 2);
}

#[test]
fn ignores_protocols_it_does_not_track() {
    let mut t = SocketTable::new(3);
    let mut raw = created(1, 1);
    raw.protocol = 1; // ICMP
    t.apply(&raw);
    assert!(t.is_empty());
    assert_eq!(t.stats.ignored, 1);
}

#[test]
fn a_socket_opened_for_a_libuv_handle_has_the_stack_that_made_the_handle() {
    let mut t = SocketTable::new(4);
    let mut born = created(5, 100);
    born.user_stack = StackRef::from_stackid(3); // the event loop's, had it been taken
    born.handle_stack = StackRef::from_stackid(9);
    t.apply(&born);
    let key = t.get(5).unwrap().stack.key().unwrap();
    assert_eq!(
        (key.pid, key.native, key.handle),
        (100, NativeFrames::Stacks(9), true)
    );
    // Any other socket keeps its own.
    let mut plain = created(6, 100);
    plain.user_stack = StackRef::from_stackid(3);
    t.apply(&plain);
    let key = t.get(6).unwrap().stack.key().unwrap();
    assert_eq!((key.native, key.handle), (NativeFrames::Stacks(3), false));
}

/// A UNIX client's connect, as `cgroup/connect_unix` sends it.
fn unix_connecting(cookie: u64, pid: u32, inode: u64) -> sockleak_common::SockEvent {
    let mut e = event(EventKind::Connecting, Hook::CgroupConnectUnix);
    e.cookie = cookie;
    e.family = sockleak_common::Family::Unix.af();
    e.protocol = 0;
    e.sock_type = sockleak_common::SockType::Dgram as u16;
    e.inode = inode;
    e.task = task(pid, "client");
    e
}

/// A UNIX socket's first word is its connect (no hook sees its `socket()`): one socket, its
/// owner, counted as connected; a datagram socket connecting again stays that one socket. A
/// look then fills in what the connect could not say, and the socket leaves once looks find
/// it no longer held, with no release event and nothing counted as lost.
#[test]
fn a_unix_socket_seen_connecting_is_one_socket_until_looks_find_it_gone() {
    use sockleak_common::{Endpoint, Family, Protocol, UnixName};

    use crate::sockdiag::{DiagSocket, UnixDiag};

    let mut t = SocketTable::new(16);
    let me = std::process::id();
    t.apply(&unix_connecting(5, me, 700));
    t.apply(&unix_connecting(5, me, 700));
    let s = t.get(5).unwrap();
    assert_eq!(
        (s.origin, s.family, s.protocol, s.owner.pid, s.inode),
        (Origin::Connect, Family::Unix, Protocol::UnixDgram, me, 700)
    );
    assert_eq!((t.len(), t.stats.connected), (1, 1));

    let listed = DiagSocket {
        family: Family::Unix,
        protocol: Protocol::UnixDgram,
        local: Endpoint::Unix(UnixName(Box::default())),
        remote: Endpoint::Unix(UnixName((*b"/run/log").into())),
        unix: Some(Box::new(UnixDiag {
            peer_inode: Some(701),
            ..UnixDiag::default()
        })),
        ..diag(5, TcpState::ESTABLISHED, 700)
    };
    let held = Holders::from_pairs(vec![(700, me)]);
    let filter = Filter::default();
    t.reconcile(&[listed], &held, 10, &filter, &nobody_holds());
    let s = t.get(5).unwrap();
    assert_eq!(s.state, TcpState::ESTABLISHED);
    assert_eq!(
        s.remote,
        Some(Endpoint::Unix(UnixName((*b"/run/log").into())))
    );
    assert_eq!(s.origin, Origin::Connect, "a look does not make it listed");

    // Closed: no longer listed, nobody holds it. Two looks past the grace period drop it.
    let second = 2_000_000_000;
    for now in [second, 2 * second] {
        t.reconcile(&[], &Holders::default(), now, &filter, &nobody_holds());
    }
    assert!(t.is_empty());
    assert_eq!(
        t.stats.reconciled, 0,
        "a UNIX socket's going is no lost event"
    );
}

/// A UNIX socket a look found before its connect came (a socket connecting while the look
/// ran) takes the owner and stack its connect names, once.
#[test]
fn a_listed_unix_socket_takes_its_connects_owner() {
    use sockleak_common::{Endpoint, Family, Protocol, Role, UnixName};

    use crate::sockdiag::DiagSocket;

    let mut t = SocketTable::new(16);
    let me = std::process::id();
    let listed = DiagSocket {
        family: Family::Unix,
        protocol: Protocol::UnixStream,
        local: Endpoint::Unix(UnixName(Box::default())),
        remote: Endpoint::Unix(UnixName((*b"/run/app.sock").into())),
        ..diag(9, TcpState::ESTABLISHED, 900)
    };
    let held = Holders::from_pairs(vec![(900, me)]);
    t.reconcile(&[listed], &held, 10, &Filter::default(), &nobody_holds());
    assert_eq!(t.get(9).unwrap().origin, Origin::Listed(Role::Connected));
    let mut connect = unix_connecting(9, 4321, 900);
    connect.user_stack = StackRef::NOT_SAMPLED;
    t.apply(&connect);
    let s = t.get(9).unwrap();
    assert_eq!((s.origin, s.owner.pid), (Origin::Connect, 4321));
    assert_eq!(t.stats.connected, 0, "counted once, as listed");
}
