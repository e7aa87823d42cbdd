use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

const VM: u32 = 0xc612_010a; // 198.18.1.10
const VM2: u32 = 0xc612_010b; // 198.18.1.11
const EXT: u32 = 0xcb00_710a; // 203.0.113.10
const REMOTE: u32 = 0xcb00_7163; // 203.0.113.99
const GRE: u8 = 47;

const SYN: TcpFlags = TcpFlags::SYN;
const ACK: TcpFlags = TcpFlags::ACK;
const NONE: TcpFlags = TcpFlags(0);

fn key(proto: u8, src: u32, sport: u16, dst: u32, dport: u16) -> FlowKey {
    FlowKey {
        zone: 1,
        proto,
        src,
        dst,
        sport,
        dport,
    }
}

fn table(capacity: usize) -> ConnTable {
    ConnTable::new(ConnConfig::with_capacity(capacity))
}

/// Checks everything the table's parts must agree on: the index holds exactly the keys
/// of the sessions held, each pointing back at its session and direction; owner counts,
/// timer lists, free list and counters add up.
fn check(t: &ConnTable) {
    let mut keys = 0;
    let mut owners: HashMap<u32, u32> = HashMap::new();
    for (id, s) in t.iter() {
        let [o, r] = s.keys;
        assert_eq!(t.find(&o), Some((id.0, Dir::Original)));
        if r != o {
            assert_eq!(t.find(&r), Some((id.0, Dir::Reply)));
            keys += 2;
        } else {
            keys += 1;
        }
        *owners.entry(s.owner).or_default() += 1;
        // Lazy scheduling: a session is examined no later than its deadline.
        assert!(t.wheel.sched(id.0) <= s.expires.max(t.wheel.time));
    }
    assert_eq!(t.index.len(), keys, "index entries");
    assert_eq!(t.owners.len(), owners.len(), "owners");
    for (&o, &n) in &owners {
        assert_eq!(t.owner_sessions(o), n, "sessions of owner {o}");
    }
    assert_eq!(t.iter().count(), t.len());
    assert_eq!(t.wheel.linked_len(), t.len(), "sessions on the wheel");
    assert_eq!(t.wheel.free_len(), t.capacity() - t.len(), "free slots");
    let st = t.stats();
    assert_eq!(st.sessions, t.len() as u64);
    assert_eq!(st.created - st.expired - st.deleted, st.sessions);
}

#[test]
fn snat_session_is_found_from_both_directions_with_its_rewrites() {
    let mut t = table(64);
    let orig = key(TCP, VM, 40000, REMOTE, 80);
    let port = t.alloc_snat(1, TCP, EXT, REMOTE, 80, 40000).unwrap();
    assert_eq!(port, 40000, "the original port is kept when free");
    let reply = orig.snat_reply(EXT, port);
    assert_eq!(reply, key(TCP, REMOTE, 80, EXT, 40000));
    let id = t.insert(orig, reply, 3, 77, 100).unwrap();
    assert_eq!(t.lookup(&orig, 100), Some((id, Dir::Original)));
    assert_eq!(t.lookup(&reply, 100), Some((id, Dir::Reply)));
    // The untranslated reverse, another zone, another protocol: not this session.
    assert_eq!(t.lookup(&orig.reversed(), 100), None);
    assert_eq!(t.lookup(&FlowKey { zone: 2, ..orig }, 100), None);
    assert_eq!(t.lookup(&FlowKey { proto: UDP, ..orig }, 100), None);

    let s = t.session(id);
    assert!(s.is_nat());
    assert_eq!((s.owner(), s.tag()), (3, 77));
    assert_eq!(
        s.rewrite(Dir::Original),
        Some(Rewrite {
            src: EXT,
            sport: 40000,
            dst: REMOTE,
            dport: 80
        })
    );
    assert_eq!(
        s.rewrite(Dir::Reply),
        Some(Rewrite {
            src: REMOTE,
            sport: 80,
            dst: VM,
            dport: 40000
        })
    );
    assert_eq!(s.translated(Dir::Reply), orig.reversed());
    assert_eq!(s.key(Dir::Reply), &reply);

    // A plain tracked flow translates nothing.
    let plain = key(UDP, VM, 5353, VM2, 53);
    let p = t.insert(plain, plain.reversed(), 3, 0, 100).unwrap();
    assert_eq!(t.lookup(&plain.reversed(), 100), Some((p, Dir::Reply)));
    assert!(!t.session(p).is_nat());
    assert_eq!(t.session(p).rewrite(Dir::Original), None);
    assert_eq!(t.session(p).rewrite(Dir::Reply), None);
    check(&t);
}

#[test]
fn dnat_and_icmp_sessions_translate_the_right_fields() {
    let mut t = table(64);
    // A floating IP: the outside opens to EXT:22, the VM answers from VM:22.
    let orig = key(TCP, REMOTE, 50000, EXT, 22);
    let reply = key(TCP, VM, 22, REMOTE, 50000);
    let id = t.insert(orig, reply, 1, 0, 0).unwrap();
    let s = t.session(id);
    assert_eq!(
        s.rewrite(Dir::Original),
        Some(Rewrite {
            src: REMOTE,
            sport: 50000,
            dst: VM,
            dport: 22
        })
    );
    assert_eq!(
        s.rewrite(Dir::Reply),
        Some(Rewrite {
            src: EXT,
            sport: 22,
            dst: REMOTE,
            dport: 50000
        })
    );

    // ICMP echo: the identifier sits in both ports and is translated as one.
    let ping = key(ICMP, VM, 7, REMOTE, 7);
    let ident = t.alloc_snat(1, ICMP, EXT, REMOTE, 0, 7).unwrap();
    // Identifier 7 is outside the SNAT range, so it is not kept.
    assert!(PortRange::DEFAULT.contains(ident));
    let reply = ping.snat_reply(EXT, ident);
    assert_eq!((reply.sport, reply.dport), (ident, ident));
    let id = t.insert(ping, reply, 1, 0, 0).unwrap();
    let rw = t.session(id).rewrite(Dir::Original).unwrap();
    assert_eq!((rw.src, rw.sport, rw.dport), (EXT, ident, ident));
    let rw = t.session(id).rewrite(Dir::Reply).unwrap();
    assert_eq!((rw.dst, rw.sport, rw.dport), (VM, 7, 7));
    check(&t);
}

#[test]
fn icmp_identifier_hint_in_range_is_kept() {
    let mut t = table(64);
    assert_eq!(t.alloc_snat(1, ICMP, EXT, REMOTE, 0, 4242), Some(4242));
}

#[test]
fn tcp_handshake_and_close_set_state_and_timeouts() {
    let to = Timeouts::default();
    let mut t = table(64);
    let orig = key(TCP, VM, 40000, REMOTE, 80);
    let id = t.insert(orig, orig.reversed(), 1, 0, 1000).unwrap();
    let st = |t: &ConnTable| {
        let s = t.session(id);
        (s.tcp_state().unwrap(), s.expires() - s.last_seen())
    };
    assert_eq!(st(&t), (TcpState::New, 120));
    t.touch(id, Dir::Original, SYN, 60, 1000);
    assert_eq!(st(&t), (TcpState::SynSent, u64::from(to.tcp_transitory)));
    t.touch(id, Dir::Original, SYN, 60, 1001); // retransmitted SYN
    assert_eq!(st(&t).0, TcpState::SynSent);
    t.touch(id, Dir::Reply, SYN | ACK, 60, 1001);
    assert_eq!(st(&t), (TcpState::SynReceived, 120));
    t.touch(id, Dir::Original, ACK, 52, 1002);
    assert_eq!(st(&t), (TcpState::Established, 7440));
    t.touch(id, Dir::Reply, ACK | TcpFlags::PSH, 1500, 1003);
    assert_eq!(st(&t), (TcpState::Established, 7440));
    t.touch(id, Dir::Original, TcpFlags::FIN | ACK, 52, 1010);
    assert_eq!(st(&t), (TcpState::FinWait, 120));
    t.touch(id, Dir::Original, ACK, 52, 1011); // still half open
    assert_eq!(st(&t), (TcpState::FinWait, 120));
    t.touch(id, Dir::Reply, TcpFlags::FIN | ACK, 52, 1012);
    assert_eq!(st(&t), (TcpState::TimeWait, 10));
    assert!(t.lookup(&orig, 1021).is_some());
    assert_eq!(t.lookup(&orig, 1022), None, "closed: gone after 10 s");

    let s = t.session(id);
    assert_eq!((s.packets(Dir::Original), s.packets(Dir::Reply)), (5, 3));
    assert_eq!((s.bytes(Dir::Original), s.bytes(Dir::Reply)), (276, 1612));
    assert!(s.replied());
    assert_eq!(s.last_seen(), 1012);
    // The sweep frees it at its (earlier) deadline, not at the established one.
    assert_eq!(t.expire(1022, usize::MAX), 1);
    check(&t);
}

#[test]
fn tcp_rst_closes_and_a_new_syn_reopens() {
    let mut t = table(64);
    let orig = key(TCP, VM, 40001, REMOTE, 443);
    let id = t.insert(orig, orig.reversed(), 1, 0, 0).unwrap();
    t.touch(id, Dir::Original, SYN, 60, 0);
    t.touch(id, Dir::Reply, SYN | ACK, 60, 0);
    t.touch(id, Dir::Original, ACK, 60, 0);
    t.touch(id, Dir::Reply, TcpFlags::RST, 40, 5);
    assert_eq!(t.session(id).tcp_state(), Some(TcpState::Closed));
    assert_eq!(t.session(id).expires(), 15);
    // A FIN after the RST does not revive it.
    t.touch(id, Dir::Original, TcpFlags::FIN | ACK, 40, 6);
    assert_eq!(t.session(id).tcp_state(), Some(TcpState::Closed));
    // Port reuse: a fresh SYN from the client starts over.
    t.touch(id, Dir::Original, SYN, 60, 7);
    assert_eq!(t.session(id).tcp_state(), Some(TcpState::SynSent));
    assert_eq!(t.session(id).expires(), 127);
}

#[test]
fn tcp_picked_up_mid_stream_is_transitory_until_answered() {
    let mut t = table(64);
    let orig = key(TCP, VM, 40002, REMOTE, 22);
    let id = t.insert(orig, orig.reversed(), 1, 0, 0).unwrap();
    t.touch(id, Dir::Original, ACK, 52, 0);
    assert_eq!(t.session(id).tcp_state(), Some(TcpState::Established));
    assert_eq!(t.session(id).expires(), 120, "an unanswered ACK scan");
    t.touch(id, Dir::Reply, ACK, 52, 1);
    assert_eq!(t.session(id).expires(), 1 + 7440);
}

#[test]
fn udp_icmp_and_other_protocols_time_out() {
    let mut t = table(64);
    let udp = key(UDP, VM, 5000, REMOTE, 53);
    let u = t.insert(udp, udp.reversed(), 1, 0, 0).unwrap();
    t.touch(u, Dir::Original, NONE, 80, 0);
    assert_eq!(t.session(u).expires(), 30, "unreplied UDP");
    assert_eq!(t.session(u).tcp_state(), None);
    t.touch(u, Dir::Reply, NONE, 120, 10);
    assert_eq!(t.session(u).expires(), 310, "replied UDP");
    t.touch(u, Dir::Original, NONE, 80, 20);
    assert_eq!(t.session(u).expires(), 320, "stays assured");

    let ping = key(ICMP, VM, 9, REMOTE, 9);
    let i = t.insert(ping, ping.reversed(), 1, 0, 0).unwrap();
    t.touch(i, Dir::Original, NONE, 84, 0);
    assert_eq!(t.session(i).expires(), 30);

    let gre = key(GRE, VM, 0, REMOTE, 0);
    let g = t.insert(gre, gre.reversed(), 1, 0, 0).unwrap();
    assert_eq!(t.session(g).expires(), 600);

    // Exact boundaries: alive the second before the deadline, gone at it.
    assert!(t.lookup(&ping, 29).is_some());
    assert_eq!(t.lookup(&ping, 30), None);
    assert!(t.lookup(&udp, 319).is_some());
    assert_eq!(t.lookup(&udp.reversed(), 320), None);
    assert_eq!(t.expire(30, usize::MAX), 1);
    assert_eq!(t.expire(320, usize::MAX), 1);
    assert_eq!(t.expire(599, usize::MAX), 0);
    assert_eq!(t.expire(600, usize::MAX), 1);
    assert!(t.is_empty());
    check(&t);
}

#[test]
fn custom_timeouts_apply() {
    let mut cfg = ConnConfig::with_capacity(8);
    cfg.timeouts.udp_unreplied = 3;
    cfg.timeouts.icmp = 60;
    let mut t = ConnTable::new(cfg);
    let udp = key(UDP, VM, 1, REMOTE, 2);
    let u = t.insert(udp, udp.reversed(), 0, 0, 10).unwrap();
    assert_eq!(t.session(u).expires(), 13);
    let ping = key(ICMP, VM, 3, REMOTE, 3);
    let i = t.insert(ping, ping.reversed(), 1, 0, 10).unwrap();
    assert_eq!(t.session(i).expires(), 70);
}

#[test]
fn expire_frees_at_most_budget_and_lookups_never_see_expired() {
    let mut t = table(64);
    let keys: Vec<FlowKey> = (0..10)
        .map(|p| key(UDP, VM, 1000 + p, REMOTE, 53))
        .collect();
    for (owner, k) in keys.iter().enumerate() {
        t.insert(*k, k.reversed(), owner as u32, 0, 0).unwrap();
    }
    assert!(keys.iter().all(|k| t.lookup(k, 30).is_none()));
    assert_eq!(t.expire(29, usize::MAX), 0);
    assert_eq!(t.expire(30, 3), 3);
    assert_eq!(t.len(), 7);
    check(&t);
    assert_eq!(t.expire(30, 0), 0);
    assert_eq!(t.expire(30, 4), 4);
    assert_eq!(t.expire(31, 100), 3);
    assert!(t.is_empty());
    assert_eq!(t.stats().expired, 10);
    check(&t);
}

#[test]
fn a_busy_session_outlives_its_first_deadline_and_a_closing_one_leaves_early() {
    let mut t = table(64);
    let udp = key(UDP, VM, 1000, REMOTE, 53);
    let u = t.insert(udp, udp.reversed(), 1, 0, 0).unwrap();
    t.touch(u, Dir::Original, NONE, 1, 0);
    t.touch(u, Dir::Original, NONE, 1, 20); // deadline 50, still filed at 30
    assert_eq!(t.expire(35, usize::MAX), 0);
    assert!(t.lookup(&udp, 35).is_some());
    check(&t);
    assert_eq!(t.expire(49, usize::MAX), 0);
    assert_eq!(t.expire(50, usize::MAX), 1);

    // Established for hours, then reset: the slot comes back 10 s later, not in 2 h.
    let tcp = key(TCP, VM, 1001, REMOTE, 80);
    let id = t.insert(tcp, tcp.reversed(), 1, 0, 100).unwrap();
    t.touch(id, Dir::Original, SYN, 1, 100);
    t.touch(id, Dir::Reply, SYN | ACK, 1, 100);
    t.touch(id, Dir::Original, ACK, 1, 100);
    assert_eq!(t.session(id).expires(), 7540);
    t.touch(id, Dir::Original, TcpFlags::RST, 1, 200);
    assert_eq!(t.expire(209, usize::MAX), 0);
    assert_eq!(t.expire(210, usize::MAX), 1);
    check(&t);
}

#[test]
fn long_lived_sessions_survive_many_wheel_revolutions() {
    let mut cfg = ConnConfig::with_capacity(8);
    cfg.wheel_slots = 4;
    let mut t = ConnTable::new(cfg);
    let tcp = key(TCP, VM, 1, REMOTE, 2);
    let id = t.insert(tcp, tcp.reversed(), 0, 0, 0).unwrap();
    for (f, d) in [
        (SYN, Dir::Original),
        (SYN | ACK, Dir::Reply),
        (ACK, Dir::Original),
    ] {
        t.touch(id, d, f, 1, 0);
    }
    for now in 0..7440 {
        assert_eq!(t.expire(now, 2), 0);
    }
    assert!(t.lookup(&tcp, 7439).is_some());
    assert_eq!(t.expire(7440, 2), 1);
    check(&t);
}

#[test]
fn an_expired_key_is_reclaimed_by_insert_and_a_live_one_is_refused() {
    let mut t = table(64);
    let k = key(UDP, VM, 1000, REMOTE, 53);
    let a = t.insert(k, k.reversed(), 1, 0, 0).unwrap();
    assert_eq!(
        t.insert(k, k.reversed(), 1, 0, 29),
        Err(InsertError::Exists)
    );
    // The reply key of a live session also counts.
    assert_eq!(
        t.insert(k.reversed(), k, 1, 0, 29),
        Err(InsertError::Exists)
    );
    let b = t.insert(k, k.reversed(), 1, 0, 30).unwrap();
    assert_eq!(t.lookup(&k, 30), Some((b, Dir::Original)));
    assert_eq!(a, b, "the freed slot is reused first");
    let st = t.stats();
    assert_eq!((st.created, st.expired, st.exists), (2, 1, 2));
    check(&t);
    assert_eq!(t.expire(1000, usize::MAX), 1);
    check(&t);
}

#[test]
fn a_full_table_refuses_and_counts() {
    let mut cfg = ConnConfig::with_capacity(4);
    cfg.owner_quota = 4;
    let mut t = ConnTable::new(cfg);
    let ids: Vec<SessionId> = (0..4)
        .map(|p| {
            let k = key(UDP, VM, p, REMOTE, 53);
            t.insert(k, k.reversed(), 1, 0, 0).unwrap()
        })
        .collect();
    let k = key(UDP, VM, 99, REMOTE, 53);
    assert_eq!(
        t.insert(k, k.reversed(), 2, 0, 0),
        Err(InsertError::TableFull)
    );
    assert_eq!(t.stats().table_full, 1);
    assert!(t.remove(ids[2]));
    assert!(t.insert(k, k.reversed(), 2, 0, 0).is_ok());
    check(&t);
}

#[test]
fn quotas_keep_one_owner_from_starving_the_others() {
    assert_eq!(ConnConfig::with_capacity(800).owner_quota, 100);
    assert_eq!(ConnConfig::with_capacity(3).owner_quota, 1);
    assert_eq!(ConnConfig::default().capacity, 256 * 1024);

    let mut t = table(64); // quota 8
                           // One VM tries to open a thousand flows (a scan): it gets its quota, no more.
    let mut refused = 0;
    for p in 0..1000u16 {
        let k = key(TCP, VM, 10000 + p, REMOTE, 80);
        match t.insert(k, k.reversed(), 1, 0, 0) {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e, InsertError::QuotaExceeded);
                refused += 1;
            }
        }
    }
    assert_eq!((t.owner_sessions(1), refused), (8, 992));
    assert_eq!(t.stats().quota_exceeded, 992);
    // Seven other owners still get their full share each.
    for owner in 2..=8u32 {
        for p in 0..8u16 {
            let k = key(TCP, VM2 + owner, 20000 + p, REMOTE, 80);
            t.insert(k, k.reversed(), owner, 0, 0).unwrap();
        }
        assert_eq!(t.owner_sessions(owner), 8);
    }
    assert_eq!(t.len(), 64);
    // Now the table is full for everyone.
    let k = key(TCP, VM2 + 9, 1, REMOTE, 80);
    assert_eq!(
        t.insert(k, k.reversed(), 9, 0, 0),
        Err(InsertError::TableFull)
    );
    // An owner at quota is told so even when the table is also full.
    let k = key(TCP, VM, 9, REMOTE, 80);
    assert_eq!(
        t.insert(k, k.reversed(), 1, 0, 0),
        Err(InsertError::QuotaExceeded)
    );
    // Its sessions going away gives the quota back.
    assert_eq!(t.remove_owner(1), 8);
    assert_eq!(t.owner_sessions(1), 0);
    assert!(t.insert(k, k.reversed(), 1, 0, 0).is_ok());
    assert_eq!(t.stats().deleted, 8);
    check(&t);
}

#[test]
fn snat_gives_distinct_ports_to_many_flows_towards_one_remote() {
    let mut t = table(8192);
    // 4000 VMs all using source port 5000 towards one DNS server.
    let mut ports = std::collections::HashSet::new();
    for vm in 0..4000u32 {
        let orig = key(UDP, 0xc612_0000 + vm, 5000, REMOTE, 53);
        let port = t.alloc_snat(1, UDP, EXT, REMOTE, 53, 5000).unwrap();
        assert!(PortRange::DEFAULT.contains(port));
        assert!(ports.insert(port), "port {port} handed out twice");
        t.insert(orig, orig.snat_reply(EXT, port), vm, 0, 0)
            .unwrap();
    }
    assert!(ports.contains(&5000));
    assert_eq!(t.stats().nat_ports_exhausted, 0);
    // Endpoint-dependent: the same external port serves another remote.
    assert_eq!(t.alloc_snat(1, UDP, EXT, REMOTE + 1, 53, 5000), Some(5000));
    assert_eq!(t.alloc_snat(1, UDP, EXT, REMOTE, 54, 5000), Some(5000));
    assert_eq!(t.alloc_snat(1, TCP, EXT, REMOTE, 53, 5000), Some(5000));
    assert_eq!(t.alloc_snat(2, UDP, EXT, REMOTE, 53, 5000), Some(5000));
    assert_eq!(t.alloc_snat(1, UDP, EXT + 1, REMOTE, 53, 5000), Some(5000));
    check(&t);
}

#[test]
fn snat_port_exhaustion_is_counted() {
    let mut cfg = ConnConfig::with_capacity(64);
    cfg.snat_ports = PortRange::new(2000, 2009);
    let mut t = ConnTable::new(cfg);
    for vm in 0..10u32 {
        let orig = key(TCP, VM + vm, 40000, REMOTE, 443);
        let port = t.alloc_snat(1, TCP, EXT, REMOTE, 443, 40000).unwrap();
        assert!((2000..=2009).contains(&port));
        t.insert(orig, orig.snat_reply(EXT, port), vm, 0, 0)
            .unwrap();
    }
    assert_eq!(t.alloc_snat(1, TCP, EXT, REMOTE, 443, 40000), None);
    assert_eq!(t.alloc_snat(1, TCP, EXT, REMOTE, 443, 2005), None);
    assert_eq!(t.stats().nat_ports_exhausted, 2);
    // Another remote still has every port.
    assert_eq!(t.alloc_snat(1, TCP, EXT, REMOTE + 1, 443, 2003), Some(2003));
    // Freeing one makes exactly that one available.
    let (id, _) = t.lookup(&key(TCP, VM + 4, 40000, REMOTE, 443), 0).unwrap();
    let freed = t.session(id).key(Dir::Reply).dport;
    t.remove(id);
    assert_eq!(t.alloc_snat(1, TCP, EXT, REMOTE, 443, 40000), Some(freed));
}

#[test]
fn snat_allocates_only_from_this_workers_slice() {
    for worker in 0..4 {
        let mut cfg = ConnConfig::with_capacity(4096);
        cfg.worker = worker;
        cfg.workers = 4;
        let mut t = ConnTable::new(cfg);
        let slice = PortRange::DEFAULT.slice(worker, 4).unwrap();
        assert_eq!(t.snat_ports(), slice);
        for vm in 0..2000u32 {
            let orig = key(UDP, 0xc612_0000 + vm, 1024 + vm as u16 * 31, REMOTE, 123);
            let port = t.alloc_snat(1, UDP, EXT, REMOTE, 123, orig.sport).unwrap();
            assert!(slice.contains(port), "{port} outside {slice:?}");
            assert_eq!(worker_for_external_port(port, 4), Some(worker));
            t.insert(orig, orig.snat_reply(EXT, port), vm, 0, 0)
                .unwrap();
        }
        check(&t);
    }
    let mut cfg = ConnConfig::with_capacity(8);
    cfg.worker = 4;
    cfg.workers = 4;
    assert!(cfg.validate().is_err());
}

#[test]
fn removal_leaves_no_stale_index_entry_and_the_flow_can_return() {
    let mut t = table(16);
    let orig = key(TCP, VM, 40000, REMOTE, 80);
    let reply = orig.snat_reply(EXT, 41000);
    let id = t.insert(orig, reply, 5, 0, 0).unwrap();
    assert!(t.remove(id));
    assert!(!t.remove(id), "removing twice");
    assert!(!t.remove(SessionId(1000)), "out of range");
    assert_eq!(t.get(id), None);
    assert_eq!((t.lookup(&orig, 0), t.lookup(&reply, 0)), (None, None));
    assert_eq!(t.index.len(), 0);
    assert_eq!(t.owner_sessions(5), 0);
    check(&t);
    let again = t.insert(orig, reply, 5, 0, 1).unwrap();
    assert_eq!(t.lookup(&reply, 1), Some((again, Dir::Reply)));
    assert_eq!(
        t.session(again).packets(Dir::Original),
        0,
        "counters start over"
    );
    // A removed session is not swept again later.
    assert!(t.remove(again));
    assert_eq!(t.expire(10_000, usize::MAX), 0);
    let st = t.stats();
    assert_eq!((st.created, st.deleted, st.expired), (2, 2, 0));
    check(&t);
}

#[test]
fn a_flow_to_itself_has_one_index_entry() {
    let mut t = table(16);
    let k = key(UDP, VM, 7, VM, 7);
    assert_eq!(k, k.reversed());
    let id = t.insert(k, k.reversed(), 0, 0, 0).unwrap();
    assert_eq!(t.index.len(), 1);
    assert_eq!(t.lookup(&k, 0), Some((id, Dir::Original)));
    check(&t);
    assert_eq!(t.expire(30, usize::MAX), 1);
    assert_eq!(t.index.len(), 0);
    check(&t);
}

#[test]
fn iter_lists_sessions_and_get_tells_free_slots() {
    let mut t = table(16);
    let a = key(UDP, VM, 1, REMOTE, 2);
    let b = key(ICMP, VM, 3, REMOTE, 3);
    let ia = t.insert(a, a.reversed(), 0, 0, 0).unwrap();
    let ib = t.insert(b, b.reversed(), 0, 0, 0).unwrap();
    t.set_tag(ib, 9);
    let listed: Vec<(SessionId, FlowKey, u32)> = t
        .iter()
        .map(|(id, s)| (id, *s.key(Dir::Original), s.tag()))
        .collect();
    assert_eq!(listed, vec![(ia, a, 0), (ib, b, 9)]);
    assert!(t.get(ia).is_some());
    assert_eq!(t.get(SessionId(5)), None);
    assert_eq!(t.stats().owners, 1);
    assert_eq!(TcpState::SynReceived.name(), "syn_received");
}

#[test]
fn invalid_configurations_are_refused() {
    let ok = ConnConfig::with_capacity(8);
    assert_eq!(ok.validate(), Ok(()));
    for bad in [
        ConnConfig { capacity: 0, ..ok },
        ConnConfig {
            owner_quota: 0,
            ..ok
        },
        ConnConfig {
            wheel_slots: 100,
            ..ok
        },
        ConnConfig {
            snat_ports: PortRange::new(10, 9),
            ..ok
        },
        ConnConfig {
            timeouts: Timeouts {
                icmp: 0,
                ..Timeouts::default()
            },
            ..ok
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
}

#[test]
fn session_layout_stays_small() {
    assert!(std::mem::size_of::<Session>() <= 104);
    assert_eq!(std::mem::size_of::<FlowKey>(), 20);
}

// ---- property test against a model ----

const P_CAP: usize = 12;
const P_QUOTA: usize = 5;
const P_PORTS: PortRange = PortRange::new(1000, 1003);

fn p_config() -> ConnConfig {
    ConnConfig {
        capacity: P_CAP,
        owner_quota: P_QUOTA,
        // Timeouts longer than the wheel (16 s) exercise later rounds; all TCP states
        // share one timeout so the model needs no state machine (tested above); a UDP
        // reply shortens the deadline, which moves the session on the wheel.
        timeouts: Timeouts {
            tcp_transitory: 20,
            tcp_established: 20,
            tcp_fin_wait: 20,
            tcp_closed: 20,
            udp_unreplied: 17,
            udp_replied: 5,
            icmp: 8,
            other: 40,
        },
        snat_ports: P_PORTS,
        wheel_slots: 16,
        ..ConnConfig::with_capacity(P_CAP)
    }
}

fn p_timeout(proto: u8, replied: bool) -> u64 {
    match proto {
        TCP => 20,
        UDP if replied => 5,
        UDP => 17,
        _ => 8,
    }
}

#[derive(Clone, Debug)]
enum Op {
    Insert {
        k: FlowKey,
        owner: u32,
        nat: bool,
    },
    Lookup(FlowKey),
    Touch {
        pick: usize,
        reply: bool,
        flags: u16,
        bytes: u32,
    },
    Expire(usize),
    Remove(usize),
    RemoveOwner(u32),
    Advance(u64),
}

fn p_key() -> impl Strategy<Value = FlowKey> {
    // A tiny key space: keys collide, reply keys of one session are originals of
    // another, and flows to themselves occur.
    (
        0u32..2,
        0usize..3,
        0u32..3,
        0u32..3,
        1000u16..1004,
        1000u16..1003,
    )
        .prop_map(|(zone, p, src, dst, sport, dport)| {
            let proto = [TCP, UDP, ICMP][p];
            FlowKey {
                zone,
                proto,
                src,
                dst,
                sport,
                dport: if proto == ICMP { sport } else { dport },
            }
        })
}

fn p_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (p_key(), 0u32..4, any::<bool>())
            .prop_map(|(k, owner, nat)| Op::Insert { k, owner, nat }),
        2 => p_key().prop_map(Op::Lookup),
        3 => (any::<usize>(), any::<bool>(), 0u16..0x20, 0u32..2000)
            .prop_map(|(pick, reply, flags, bytes)| Op::Touch { pick, reply, flags, bytes }),
        2 => prop_oneof![0usize..4, Just(usize::MAX)].prop_map(Op::Expire),
        1 => any::<usize>().prop_map(Op::Remove),
        1 => (0u32..4).prop_map(Op::RemoveOwner),
        2 => prop_oneof![0u64..6, 0u64..40].prop_map(Op::Advance),
    ]
}

#[derive(Clone, Debug)]
struct Model {
    keys: [FlowKey; 2],
    owner: u32,
    expires: u64,
    replied: bool,
}

const P_EXT: u32 = 7;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn table_agrees_with_a_model(ops in proptest::collection::vec(p_op(), 1..200)) {
        let mut t = ConnTable::new(p_config());
        let mut model: HashMap<SessionId, Model> = HashMap::new();
        let mut now = 0u64;
        for op in ops {
            match op {
                Op::Insert { k, owner, nat } => {
                    let reply = if nat {
                        let held = |r: &FlowKey| model.values().any(|m| m.keys.contains(r));
                        let got = t.alloc_snat(k.zone, k.proto, P_EXT, k.dst, k.dport, k.sport);
                        match got {
                            Some(p) => {
                                prop_assert!(P_PORTS.contains(p));
                                let r = k.snat_reply(P_EXT, p);
                                prop_assert!(!held(&r), "allocated a held port");
                                r
                            }
                            None => {
                                // Every port of the range must really be taken.
                                for p in P_PORTS.first..=P_PORTS.last {
                                    prop_assert!(held(&k.snat_reply(P_EXT, p)));
                                }
                                continue;
                            }
                        }
                    } else {
                        k.reversed()
                    };
                    // What the table must answer, in its order of checks.
                    let mut expect = None;
                    let distinct: &[FlowKey] = if reply == k { &[k] } else { &[k, reply] };
                    for key in distinct {
                        let holder = model.iter().find(|(_, m)| m.keys.contains(key)).map(|(&id, m)| (id, m.expires));
                        if let Some((id, expires)) = holder {
                            if expires > now {
                                expect = Some(InsertError::Exists);
                                break;
                            }
                            model.remove(&id);
                        }
                    }
                    if expect.is_none() {
                        if model.values().filter(|m| m.owner == owner).count() >= P_QUOTA {
                            expect = Some(InsertError::QuotaExceeded);
                        } else if model.len() >= P_CAP {
                            expect = Some(InsertError::TableFull);
                        }
                    }
                    match (t.insert(k, reply, owner, 0, now), expect) {
                        (Ok(id), None) => {
                            prop_assert!(!model.contains_key(&id));
                            model.insert(id, Model {
                                keys: [k, reply],
                                owner,
                                expires: now + p_timeout(k.proto, false),
                                replied: false,
                            });
                        }
                        (Err(e), Some(x)) => prop_assert_eq!(e, x),
                        (got, want) => prop_assert!(false, "insert: got {:?}, want {:?}", got, want),
                    }
                }
                Op::Lookup(k) => {
                    let want = model.iter().find(|(_, m)| m.keys.contains(&k) && m.expires > now).map(|(&id, m)| {
                        (id, if m.keys[0] == k { Dir::Original } else { Dir::Reply })
                    });
                    prop_assert_eq!(t.lookup(&k, now), want);
                }
                Op::Touch { pick, reply, flags, bytes } => {
                    let mut live: Vec<SessionId> = model.iter().filter(|(_, m)| m.expires > now).map(|(&id, _)| id).collect();
                    if live.is_empty() {
                        continue;
                    }
                    live.sort_unstable();
                    let id = live[pick % live.len()];
                    let dir = if reply { Dir::Reply } else { Dir::Original };
                    let m = model.get_mut(&id).unwrap();
                    let found = t.lookup(&m.keys[dir.index()], now);
                    let dir = found.map_or(dir, |(_, d)| d); // a flow to itself matches Original
                    prop_assert_eq!(found, Some((id, dir)));
                    let before = t.session(id).packets(dir);
                    t.touch(id, dir, TcpFlags(flags), bytes, now);
                    m.replied |= dir == Dir::Reply;
                    m.expires = now + p_timeout(m.keys[0].proto, m.replied);
                    prop_assert_eq!(t.session(id).expires(), m.expires);
                    prop_assert_eq!(t.session(id).packets(dir), before + 1);
                }
                Op::Expire(budget) => {
                    let freed = t.expire(now, budget);
                    prop_assert!(freed <= budget);
                    let gone: Vec<SessionId> = model.keys().copied().filter(|&id| t.get(id).is_none()).collect();
                    for id in &gone {
                        prop_assert!(model[id].expires <= now, "swept a live session");
                        model.remove(id);
                    }
                    prop_assert_eq!(gone.len(), freed);
                    if budget == usize::MAX {
                        prop_assert!(model.values().all(|m| m.expires > now), "an unlimited sweep left expired sessions");
                    }
                }
                Op::Remove(pick) => {
                    let mut ids: Vec<SessionId> = model.keys().copied().collect();
                    if ids.is_empty() {
                        prop_assert!(!t.remove(SessionId((pick % P_CAP) as u32)));
                        continue;
                    }
                    ids.sort_unstable();
                    let id = ids[pick % ids.len()];
                    prop_assert!(t.remove(id));
                    model.remove(&id);
                }
                Op::RemoveOwner(owner) => {
                    let n = model.values().filter(|m| m.owner == owner).count();
                    prop_assert_eq!(t.remove_owner(owner), n);
                    model.retain(|_, m| m.owner != owner);
                }
                Op::Advance(dt) => now += dt,
            }
            prop_assert_eq!(t.len(), model.len());
            prop_assert_eq!(t.stats().sessions, model.len() as u64);
            for (&id, m) in &model {
                prop_assert_eq!(t.session(id).keys, m.keys);
                prop_assert_eq!(t.session(id).owner(), m.owner);
                prop_assert_eq!(t.session(id).expires(), m.expires);
            }
            check(&t);
        }
    }
}

/// What an explained packet is told (the port SNAT would pick, whether the session could
/// be created, whether a segment fits the window) is what the next real packet gets, and
/// asking changes nothing.
#[test]
fn probes_answer_as_the_real_calls_would_and_change_nothing() {
    let mut t = ConnTable::new(ConnConfig {
        owner_quota: 20,
        ..ConnConfig::with_capacity(32)
    });
    let mut refused = std::collections::HashSet::new();
    for vm in 0..60u32 {
        let orig = key(UDP, 0xc612_0000 + vm, 5000, REMOTE, 53);
        let owner = u32::from(vm >= 25);
        let probed = t.probe_snat(1, UDP, EXT, REMOTE, 53, 5000);
        let before = (t.stats(), t.len(), t.snat_salt);
        let reply = probed.map(|p| orig.snat_reply(EXT, p));
        let checked = reply.map(|r| t.check_insert(&orig, &r, owner, 0));
        assert_eq!(
            (t.stats(), t.len(), t.snat_salt),
            before,
            "probing changed the table"
        );
        let port = t.alloc_snat(1, UDP, EXT, REMOTE, 53, 5000);
        assert_eq!(port, probed, "flow {vm}");
        let Some(port) = port else { continue };
        let inserted = t.insert(orig, orig.snat_reply(EXT, port), owner, 0, 0);
        assert_eq!(inserted.map(|_| ()), checked.unwrap(), "flow {vm}");
        if let Err(e) = inserted {
            refused.insert(format!("{e:?}"));
        }
        let rewrite = Session::planned_rewrite(orig, orig.snat_reply(EXT, port));
        if let Ok(id) = inserted {
            assert_eq!(t.session(id).rewrite(Dir::Original), rewrite);
        }
    }
    assert_eq!(
        refused.len(),
        2,
        "both the quota and a full table were met: {refused:?}"
    );
    // An existing key is what insert says too.
    let orig = key(UDP, 0xc612_0000, 5000, REMOTE, 53);
    assert_eq!(
        t.check_insert(&orig, &orig.reversed(), 7, 0),
        t.insert(orig, orig.reversed(), 7, 0, 0).map(|_| ())
    );
    check(&t);
}
