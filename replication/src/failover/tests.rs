use super::*;

fn policy() -> Policy {
    Policy {
        ttl: Duration::from_secs(2),
        safety_margin: Policy::margin_for(Duration::from_secs(2)),
        failover: true,
        max_lag: 1000,
    }
}

fn member(id: &str, ends: &[(&str, u64)]) -> Member {
    Member {
        id: id.into(),
        addr: format!("{id}:7070"),
        epoch: 3,
        logs: ends
            .iter()
            .map(|&(n, end)| (n.to_owned(), LogEnd { end, last_epoch: 3 }))
            .collect(),
        ..Member::default()
    }
}

#[test]
fn a_lease_allows_acks_until_ttl_minus_margin_from_the_request() {
    let p = policy();
    let t0 = Instant::now();
    let mut c = LeaseClock::default();
    assert!(!c.may_ack(t0), "no lease, no acks");
    c.renewed(&p, t0);
    assert!(c.may_ack(t0 + Duration::from_millis(1400)));
    assert!(!c.may_ack(t0 + Duration::from_millis(1500)));
    // An older request answered late does not pull the deadline back.
    c.renewed(&p, t0 + Duration::from_secs(1));
    c.renewed(&p, t0);
    assert_eq!(c.valid_until(), Some(t0 + Duration::from_millis(2500)));
    c.lost();
    assert!(!c.may_ack(t0));
}

#[test]
fn the_margin_is_a_quarter_of_the_ttl_within_bounds() {
    assert_eq!(
        Policy::margin_for(Duration::from_secs(2)),
        Duration::from_millis(500)
    );
    assert_eq!(
        Policy::margin_for(Duration::from_millis(400)),
        Duration::from_millis(200)
    );
    assert_eq!(
        Policy::margin_for(Duration::from_secs(60)),
        Duration::from_secs(2)
    );
}

#[test]
fn delayed_never_promote_lagging_and_stale_members_are_not_eligible() {
    let p = policy();
    let mut d = member("d", &[("a", 10)]);
    d.delayed = true;
    let mut n = member("n", &[("a", 10)]);
    n.never_promote = true;
    let far = member("f", &[("a", 5000)]);
    let slow = member("s", &[("a", 10)]);
    let mut old = member("o", &[("a", 5000)]);
    old.epoch = 1;
    let all = vec![d.clone(), n.clone(), far.clone(), slow.clone(), old.clone()];
    assert_eq!(eligibility(&d, &all, 3, &p), Err(Ineligible::Delayed));
    assert_eq!(eligibility(&n, &all, 3, &p), Err(Ineligible::NeverPromote));
    assert!(matches!(
        eligibility(&slow, &all, 3, &p),
        Err(Ineligible::Lagging { behind: 4990, .. })
    ));
    assert!(matches!(
        eligibility(&old, &all, 3, &p),
        Err(Ineligible::Stale { epoch: 1, .. })
    ));
    assert_eq!(eligibility(&far, &all, 3, &p), Ok(()));
    assert_eq!(choose(&all, 3, &p).map(|m| m.id.as_str()), Some("f"));
}

#[test]
fn a_delayed_replica_ahead_does_not_make_others_lag() {
    let p = policy();
    let mut d = member("d", &[("a", 9000)]);
    d.delayed = true;
    let r = member("r", &[("a", 10)]);
    assert_eq!(eligibility(&r, &[d, r.clone()], 3, &p), Ok(()));
}

#[test]
fn sync_replicas_first_then_the_furthest_on_most_logs() {
    let p = policy();
    let a = member("a", &[("x", 100), ("y", 50)]);
    let b = member("b", &[("x", 90), ("y", 60)]);
    let c = member("c", &[("x", 100), ("y", 60)]);
    let all = vec![a.clone(), b.clone(), c.clone()];
    assert_eq!(choose(&all, 3, &p).unwrap().id, "c");
    let mut s = member("s", &[("x", 95), ("y", 55)]);
    s.sync = true;
    let all = vec![a, b, c, s];
    assert_eq!(choose(&all, 3, &p).unwrap().id, "s");
}

#[test]
fn ties_break_by_priority_then_id() {
    let p = policy();
    let a = member("a", &[("x", 100)]);
    let mut b = member("b", &[("x", 100)]);
    assert_eq!(choose(&[a.clone(), b.clone()], 3, &p).unwrap().id, "a");
    b.priority = 5;
    assert_eq!(choose(&[a, b], 3, &p).unwrap().id, "b");
}

#[test]
fn a_candidate_fetches_each_tail_from_the_member_furthest_on_it() {
    let me = member("a", &[("x", 100), ("y", 50)]);
    let b = member("b", &[("x", 90), ("y", 60), ("z", 7)]);
    let mut d = member("d", &[("x", 500)]);
    d.delayed = true;
    let fetch = tails_to_fetch(&me, &[me.clone(), b, d]);
    assert_eq!(
        fetch,
        vec![
            TailFetch {
                log: "y".into(),
                from: 50,
                to: 60,
                addr: "b:7070".into()
            },
            TailFetch {
                log: "z".into(),
                from: 0,
                to: 7,
                addr: "b:7070".into()
            },
        ]
    );
}

#[test]
fn a_later_epoch_wins_over_a_longer_log_in_an_earlier_one() {
    let mut a = member("a", &[("x", 100)]);
    a.logs.get_mut("x").unwrap().last_epoch = 2;
    let b = member("b", &[("x", 80)]);
    let all = [a, b];
    let far = furthest(&all);
    assert_eq!(far["x"].1, "b:7070");
}

/// Found by the failover simulation (seed 1_000_750, there in epochs 4 and 5): a zombie
/// primary of epoch 2 wrote on while cut off, then followed epoch 3's primary without
/// receiving anything; its longer log of epoch 2 made it the candidate over a replica
/// holding epoch 3's acked records, and it took no tail (its end was past the furthest
/// one's): the acked records were lost.
#[test]
fn a_longer_log_of_an_older_epoch_is_not_ahead() {
    let p = policy();
    let mut zombie = member("a", &[("x", 29)]);
    zombie.logs.get_mut("x").unwrap().last_epoch = 2;
    let acked = member("b", &[("x", 22)]);
    let mut short = member("c", &[("x", 22)]);
    short.logs.get_mut("x").unwrap().last_epoch = 2;
    let all = [zombie.clone(), acked.clone(), short.clone()];
    assert_eq!(choose(&all, 3, &p).unwrap().id, "b");
    let tail = |m: &Member| tails_to_fetch(m, &all);
    assert_eq!(tail(&acked), vec![]);
    // Even at the same end, or reaching past it, an older epoch takes the tail.
    for m in [&zombie, &short] {
        assert_eq!(
            tail(m),
            vec![TailFetch {
                log: "x".into(),
                from: 22,
                to: 22,
                addr: "b:7070".into()
            }]
        );
    }
}

/// Found by the failover simulation (seed 1_000_032): the sync replica, a former primary that
/// wrote on in epoch 1 while cut off, was preferred over a replica of epoch 2; its log
/// reached past the furthest end, so no tail was taken and epoch 2's acked records lost.
#[test]
fn a_sync_replica_of_an_older_epoch_is_not_preferred() {
    let p = policy();
    let mut sync = member("s", &[("x", 207)]);
    sync.sync = true;
    sync.logs.get_mut("x").unwrap().last_epoch = 1;
    let newer = member("n", &[("x", 190)]);
    let all = [sync.clone(), newer];
    assert_eq!(choose(&all, 3, &p).unwrap().id, "n");
    // In the latest epoch, the sync replica is preferred even if it lacks records.
    sync.logs.get_mut("x").unwrap().last_epoch = 3;
    sync.logs.get_mut("x").unwrap().end = 150;
    let all = [sync, all[1].clone()];
    assert_eq!(choose(&all, 3, &p).unwrap().id, "s");
}

#[test]
fn decisions_follow_the_leader_or_elect_the_chosen_one() {
    let p = policy();
    let a = member("a", &[("x", 100)]);
    let b = member("b", &[("x", 90)]);
    let all = vec![a.clone(), b.clone()];
    let view = |me, leader, i_lead| View {
        me,
        members: &all,
        leader,
        cluster_epoch: 3,
        i_lead,
        fresh: true,
        designated: None,
    };
    assert_eq!(
        decide(&view(&a, None, false), &p),
        Step::Campaign { epoch: 4 }
    );
    assert!(matches!(
        decide(&view(&b, None, false), &p),
        Step::Wait { .. }
    ));
    assert_eq!(
        decide(&view(&b, Some(("a", "a:7070", 4)), false), &p),
        Step::Follow {
            addr: "a:7070".into(),
            epoch: 4
        }
    );
    assert_eq!(
        decide(&view(&a, Some(("a", "a:7070", 4)), true), &p),
        Step::Stay
    );
    assert!(matches!(
        decide(&view(&a, Some(("a", "a:7070", 4)), false), &p),
        Step::Wait { .. }
    ));
    let off = Policy {
        failover: false,
        ..p
    };
    assert!(matches!(
        decide(&view(&a, None, false), &off),
        Step::Wait { .. }
    ));
}

#[test]
fn the_next_epoch_is_past_every_member_and_the_cluster() {
    let mut a = member("a", &[]);
    a.epoch = 9;
    assert_eq!(next_epoch(3, &[a.clone()]), 10);
    assert_eq!(next_epoch(12, &[a]), 13);
}

#[test]
fn a_vacancy_waits_for_a_publication_from_every_live_member() {
    let mut a = member("a", &[]);
    let mut b = member("b", &[]);
    let mut v = Vacancy::default();
    assert!(!v.fresh(true, &[a.clone(), b.clone()]));
    assert!(!v.fresh(false, &[a.clone(), b.clone()]), "nothing new yet");
    a.seq += 1;
    assert!(
        !v.fresh(false, &[a.clone(), b.clone()]),
        "b has not published"
    );
    b.seq += 1;
    assert!(v.fresh(false, &[a.clone(), b.clone()]));
    // A member that joined during the vacancy counts as fresh; a leader resets it.
    let c = member("c", &[]);
    assert!(v.fresh(false, &[a.clone(), b.clone(), c]));
    assert!(!v.fresh(true, &[a.clone()]));
    assert!(!v.fresh(false, &[a]));
}

#[test]
fn a_designated_node_campaigns_alone_and_force_overrides_eligibility() {
    let p = policy();
    let a = member("a", &[("x", 100)]);
    let mut b = member("b", &[("x", 90)]);
    let all = vec![a.clone(), b.clone()];
    let view = |me, force| View {
        me,
        members: &all,
        leader: None,
        cluster_epoch: 3,
        i_lead: false,
        fresh: false,
        designated: Some(Designated {
            node: "b",
            force,
            handover: true,
        }),
    };
    assert!(matches!(decide(&view(&a, false), &p), Step::Wait { .. }));
    assert_eq!(decide(&view(&b, false), &p), Step::Campaign { epoch: 4 });
    b.never_promote = true;
    let all = vec![a, b.clone()];
    let view = |force| View {
        me: &b,
        members: &all,
        leader: None,
        cluster_epoch: 3,
        i_lead: false,
        fresh: true,
        designated: Some(Designated {
            node: "b",
            force,
            handover: false,
        }),
    };
    assert!(matches!(decide(&view(false), &p), Step::Wait { .. }));
    assert_eq!(decide(&view(true), &p), Step::Campaign { epoch: 4 });
}
