//! Scans in: ghosts out, missed sockets in, state ages bounded.
use sockleak_common::{EventKind, Hook, Origin, Protocol, Role, TcpState};

use crate::table::{SocketTable, testing::*};
use crate::{
    filter::Filter,
    holders::Holders,
    sockdiag::DiagSocket,
    table::reconcile::{GHOST_GRACE_NS, GHOST_SCANS},
};

#[test]
fn a_missed_release_is_reconciled_away_after_two_scans() {
    let mut t = SocketTable::new(16);
    t.apply(&created(9, std::process::id()));
    let mut fd = event(EventKind::CreationCompleted, Hook::SysExitSocket);
    fd.cookie = 9;
    fd.inode = 31337;
    t.apply(&fd);
    let later = 10 * GHOST_GRACE_NS;
    let nobody = Holders::default();
    t.reconcile(&[], &nobody, later, &Filter::default(), &nobody_holds());
    assert_eq!(t.len(), 1, "one scan is not proof");
    t.reconcile(&[], &nobody, later, &Filter::default(), &nobody_holds());
    assert!(t.is_empty());
    assert_eq!(t.stats.reconciled, 1);
}

#[test]
fn only_sockets_of_followed_processes_are_adopted_and_owned_by_a_followed_holder() {
    let me = std::process::id();
    let parent = std::os::unix::process::parent_id();
    let shared = diag(50, TcpState::ESTABLISHED, 700);
    let theirs = diag(51, TcpState::ESTABLISHED, 701);
    // The parent holds both (it comes first: lowest pid); we share one of them.
    let holders = Holders::from_pairs(vec![(700, parent), (700, me), (701, parent)]);
    let only_me = Filter {
        pids: vec![me],
        ..Filter::default()
    };
    let mut t = SocketTable::new(16);
    t.seed_pre_existing(&[shared, theirs], &holders, 1, &only_me, &nobody_holds());
    assert_eq!(t.len(), 1);
    assert_eq!(t.get(50).map(|s| s.owner.pid), Some(me));

    let udp_only = Filter {
        protocol: Some(Protocol::Udp),
        ..Filter::default()
    };
    let mut t = SocketTable::new(16);
    t.seed_pre_existing(
        &[diag(52, TcpState::ESTABLISHED, 700)],
        &holders,
        1,
        &udp_only,
        &nobody_holds(),
    );
    assert!(t.is_empty());
}

#[test]
fn a_missed_create_is_found_by_reconciliation() {
    let mut t = SocketTable::new(16);
    let held = diag(42, TcpState::ESTABLISHED, 900);
    let orphan = DiagSocket {
        id: SockId::new(43, 0),
        inode: 0,
        ..held.clone()
    };
    let holders = Holders::from_pairs(vec![(900, std::process::id())]);
    t.reconcile(
        &[held.clone(), orphan.clone()],
        &holders,
        5,
        &Filter::default(),
        &nobody_holds(),
    );
    assert!(t.get(42).is_none(), "one scan is not proof");
    t.reconcile(
        &[held, orphan],
        &holders,
        6,
        &Filter::default(),
        &nobody_holds(),
    );
    let s = t.get(42).expect("recovered");
    assert_eq!(
        (s.origin, s.owner.pid),
        (Origin::Recovered(Role::Connected), std::process::id())
    );
    assert!(t.get(43).is_none(), "nobody holds it: not ours to report");
    assert_eq!(t.stats.recovered, 1);
}

#[test]
fn a_socket_released_while_the_scans_ran_is_not_recovered_from_the_stale_dump() {
    let mut t = SocketTable::new(16);
    let me = std::process::id();
    t.apply(&created(7, me));
    t.apply(&released(7)); // both applied by the drain after the scans
    let stale = diag(7, TcpState::ESTABLISHED, 700);
    let stale_holders = Holders::from_pairs(vec![(700, me)]);
    t.reconcile(
        &[stale],
        &stale_holders,
        5,
        &Filter::default(),
        &nobody_holds(),
    );
    // The next scan no longer sees it.
    t.reconcile(
        &[],
        &Holders::default(),
        6,
        &Filter::default(),
        &nobody_holds(),
    );
    assert!(t.get(7).is_none());
    assert_eq!(t.stats.recovered, 0);
}

#[test]
fn a_socket_whose_fd_and_release_were_both_missed_is_still_reconciled_away() {
    let mut t = SocketTable::new(16);
    let me = std::process::id(); // alive: liveness alone cannot judge
    for cookie in [1, 2, 3, 4, 5] {
        let mut create = created(cookie, me);
        create.ts_ns = cookie;
        t.apply(&create);
    }
    let mut est = event(EventKind::StateChanged, Hook::TpBtfInetSockSetState);
    est.cookie = 1;
    est.new_state = state(TcpState::ESTABLISHED);
    t.apply(&est);
    // 1: tracked ESTABLISHED but no longer listed: destroyed.
    // 2: listed in TIME_WAIT without an inode: released.
    // 3, 4, 5: unconnected (CLOSE), not listed, owner alive: may well be open, but the
    // owner holds only one such TCP socket (inode 77; 78 is a UDP one, 79 the listed one):
    // the newest, 5, is kept as that one.
    let time_wait = diag(2, TcpState::TIME_WAIT, 0);
    let listed = diag(6, TcpState::ESTABLISHED, 79);
    let owner_holds = |pid: u32| {
        assert_eq!(pid, me, "only the owner of the doubtful sockets is asked");
        vec![
            (77, Protocol::Tcp),
            (78, Protocol::Udp),
            (79, Protocol::Tcp),
        ]
    };
    let later = 10 * GHOST_GRACE_NS;
    for _ in 0..GHOST_SCANS {
        t.reconcile(
            &[time_wait.clone(), listed.clone()],
            &Holders::default(),
            later,
            &Filter::default(),
            &World(owner_holds),
        );
    }
    assert_eq!(t.len(), 1);
    assert!(t.get(5).is_some());
    assert_eq!(t.stats.reconciled, 4);

    // The owner lets go of its last one without the release being seen.
    for _ in 0..GHOST_SCANS {
        t.reconcile(
            &[],
            &Holders::default(),
            later,
            &Filter::default(),
            &nobody_holds(),
        );
    }
    assert!(t.is_empty());
}

#[test]
fn a_held_socket_survives_reconciliation() {
    let mut t = SocketTable::new(16);
    t.apply(&created(9, 1));
    let mut fd = event(EventKind::CreationCompleted, Hook::SysExitSocket);
    fd.cookie = 9;
    fd.inode = 31337;
    t.apply(&fd);
    let holders = Holders::from_pairs(vec![(31337, 1), (31337, 2)]);
    for _ in 0..5 {
        t.reconcile(
            &[],
            &holders,
            10 * GHOST_GRACE_NS,
            &Filter::default(),
            &nobody_holds(),
        );
    }
    assert_eq!(*t.get(9).unwrap().holders, [1, 2]);
}

#[test]
fn a_state_found_by_a_sample_began_between_that_sample_and_the_look_before() {
    const S: u64 = 1_000_000_000;
    let mut t = SocketTable::new(4);
    let mut born = created(9, 1);
    born.inode = 31337;
    born.ts_ns = S;
    t.apply(&born);
    let holders = Holders::from_pairs(vec![(31337, 1)]);
    let sample = |t: &mut SocketTable, state, now_ns| {
        t.reconcile(
            &[diag(9, state, 31337)],
            &holders,
            now_ns,
            &Filter::default(),
            &nobody_holds(),
        )
    };
    let window = |t: &SocketTable| {
        let e = &t.get(9).unwrap().evidence;
        (e.state_since_ns, e.state_entered_after_ns)
    };
    // Created (an event: exact), then connected some time before the first sample.
    assert_eq!(window(&t), (S, Some(S)));
    sample(&mut t, TcpState::ESTABLISHED, 3 * S);
    assert_eq!(window(&t), (3 * S, Some(S)));
    // Still established: nothing moves.
    sample(&mut t, TcpState::ESTABLISHED, 5 * S);
    assert_eq!(window(&t), (3 * S, Some(S)));
    // The peer left between the last two samples.
    sample(&mut t, TcpState::CLOSE_WAIT, 7 * S);
    assert_eq!(window(&t), (7 * S, Some(5 * S)));
    // A reset the kernel side reports: the transition itself, though the table last knew
    // the socket in another state than the event's old one.
    let mut reset = event(EventKind::StateChanged, Hook::TpBtfInetSockSetState);
    reset.cookie = 9;
    reset.old_state = state(TcpState::LAST_ACK);
    reset.new_state = state(TcpState::CLOSE);
    reset.ts_ns = 8 * S;
    t.apply(&reset);
    assert_eq!(window(&t), (8 * S, Some(8 * S)));
}

#[test]
fn a_socket_found_already_open_has_no_bound_on_its_state_age() {
    let mut t = SocketTable::new(4);
    let holders = Holders::from_pairs(vec![(31337, 1)]);
    t.seed_pre_existing(
        &[diag(9, TcpState::ESTABLISHED, 31337)],
        &holders,
        5_000,
        &Filter::default(),
        &nobody_holds(),
    );
    let e = &t.get(9).unwrap().evidence;
    assert_eq!((e.state_since_ns, e.state_entered_after_ns), (5_000, None));
}

#[test]
fn fin_in_close_wait_is_not_unread_data() {
    let mut t = SocketTable::new(4);
    t.apply(&created(1, 1));
    let mut s = t.get(1).unwrap().clone();
    s.state = TcpState::CLOSE_WAIT;
    s.rx_queue = 1;
    assert_eq!(s.unread_bytes(), 0);
    s.rx_queue = 11;
    assert_eq!(s.unread_bytes(), 10);
    s.state = TcpState::ESTABLISHED;
    assert_eq!(s.unread_bytes(), 11);
}

#[test]
fn sockets_found_open_are_told_apart_and_accepted_ones_belong_to_the_listener() {
    let at = |s: &str| s.parse().unwrap();
    let listener = DiagSocket {
        local: at("0.0.0.0:5432"),
        remote: at("0.0.0.0:0"),
        ..diag(1, TcpState::LISTEN, 100)
    };
    // Two connections a forking server accepted, each held by its own child.
    let accepted = |cookie, inode, client: &str| DiagSocket {
        local: at("127.0.0.1:5432"),
        remote: at(client),
        ..diag(cookie, TcpState::ESTABLISHED, inode)
    };
    // The client ends of two more, in another process; and a connection in another network
    // namespace whose local port happens to be a listener's port here.
    let client = |cookie, inode, local: &str| DiagSocket {
        local: at(local),
        remote: at("127.0.0.1:5432"),
        ..diag(cookie, TcpState::ESTABLISHED, inode)
    };
    let elsewhere = DiagSocket {
        netns: 2,
        local: at("10.0.0.2:5432"),
        remote: at("10.0.0.1:40000"),
        ..diag(7, TcpState::ESTABLISHED, 106)
    };
    let scan = [
        listener,
        accepted(2, 101, "127.0.0.1:40001"),
        accepted(3, 102, "127.0.0.1:40002"),
        client(4, 103, "127.0.0.1:40001"),
        client(5, 104, "127.0.0.1:40002"),
        elsewhere,
    ];
    let holders = Holders::from_pairs(vec![
        (100, 10),
        (101, 21),
        (102, 22),
        (103, 30),
        (104, 30),
        (106, 40),
    ]);
    let mut t = SocketTable::new(16);
    t.seed_pre_existing(&scan, &holders, 1, &Filter::default(), &nobody_holds());
    let found = |cookie| {
        let s = t.get(cookie).unwrap();
        (s.origin, s.owner.pid, s.holders.to_vec())
    };
    assert_eq!(
        found(1),
        (Origin::PreExisting(Role::Listening), 10, vec![10])
    );
    assert_eq!(
        found(2),
        (Origin::PreExisting(Role::Accepted), 10, vec![21])
    );
    assert_eq!(
        found(3),
        (Origin::PreExisting(Role::Accepted), 10, vec![22])
    );
    assert_eq!(
        found(4),
        (Origin::PreExisting(Role::Connected), 30, vec![30])
    );
    assert_eq!(
        found(7),
        (Origin::PreExisting(Role::Connected), 40, vec![40])
    );

    // A filter that leaves the listener's process out keeps each connection with its holder.
    let only_children = Filter {
        pids: vec![21, 22],
        ..Filter::default()
    };
    let mut t = SocketTable::new(16);
    t.seed_pre_existing(&scan, &holders, 1, &only_children, &nobody_holds());
    assert_eq!(t.get(2).map(|s| s.owner.pid), Some(21));
    assert_eq!(t.len(), 2);
}

/// A report folds the dump in batch by batch while events still come: a socket born after its
/// batch came is matched at the end, a socket the dump never listed is judged then, and held
/// sockets no event announced are adopted as in a look taken in one go.
#[test]
fn a_look_folded_in_batches_ends_as_one_taken_in_one_go() {
    let me = std::process::id();
    let with_fd = |cookie: u64, inode: u64| {
        let mut fd = event(EventKind::CreationCompleted, Hook::SysExitSocket);
        (fd.cookie, fd.inode, fd.task) = (cookie, inode, task(me, "client"));
        fd
    };
    let mut t = SocketTable::new(16);
    t.apply(&created(1, me));
    t.apply(&with_fd(1, 101));
    t.apply(&created(2, me)); // its fd closed unseen: listed, nobody holds it
    t.apply(&with_fd(2, 102));
    let holders = Holders::from_pairs(vec![(101, me), (103, me), (104, me)]);
    let listed = [
        diag(1, TcpState::ESTABLISHED, 101),
        diag(2, TcpState::ESTABLISHED, 102),
        diag(3, TcpState::SYN_SENT, 103),
        diag(4, TcpState::ESTABLISHED, 104), // held, never announced
    ];
    let later = 10 * GHOST_GRACE_NS;
    for look in 0..GHOST_SCANS as u64 {
        t.begin_look();
        t.observe_listed(&listed[..2], 0, &holders, later + look);
        if look == 0 {
            // Born after its batch was folded in: applied before the look ends.
            t.observe_listed(&listed[..3], 2, &holders, later + look);
            t.apply(&created(3, me));
            t.apply(&with_fd(3, 103));
        }
        t.observe_listed(
            &listed,
            if look == 0 { 3 } else { 2 },
            &holders,
            later + look,
        );
        t.finish_look(
            &listed,
            &holders,
            later + look,
            &Filter::default(),
            &nobody_holds(),
        );
        let s = t.get(3).expect("born during the look");
        assert_eq!((s.state, &*s.holders), (TcpState::SYN_SENT, &[me][..]));
        assert_eq!(t.get(1).map(|s| s.state), Some(TcpState::ESTABLISHED));
    }
    assert!(t.get(2).is_none(), "unheld on two looks");
    assert_eq!(t.stats.reconciled, 1);
    let found = t.get(4).expect("adopted on its second look");
    assert_eq!(found.origin, Origin::Recovered(Role::Connected));
    assert_eq!(t.stats.recovered, 1);
}

/// sockleak's own sockets (its runtime's wake-up socketpair) are no service's: a look adopts a
/// socket only sockleak holds under nobody, and one it shares under the other holder.
#[test]
fn sockets_only_sockleak_holds_are_never_adopted() {
    let mut t = SocketTable::new(16);
    let me = std::process::id();
    let parent = std::os::unix::process::parent_id();
    t.leave_out_sockets_of(me);
    let holders = Holders::from_pairs(vec![(900, me), (901, me), (901, parent)]);
    t.seed_pre_existing(
        &[
            diag(42, TcpState::ESTABLISHED, 900),
            diag(43, TcpState::ESTABLISHED, 901),
        ],
        &holders,
        5,
        &Filter::default(),
        &nobody_holds(),
    );
    assert!(t.get(42).is_none());
    assert_eq!(t.get(43).map(|s| s.owner.pid), Some(parent));
}
