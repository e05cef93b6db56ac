use super::*;

fn chunk(segment: (u64, u64), first: u64, fetch: bool) -> Chunk {
    Chunk {
        segment,
        first,
        fetch,
    }
}

fn s(x: &str) -> String {
    x.to_owned()
}

#[test]
fn a_stale_upstream_is_left_and_heartbeats_raise_its_epoch() {
    let mut m = ReplicaSession::new(3);
    assert!(m.check_upstream(3).is_ok());
    assert!(m.check_upstream(4).is_err());
    assert_eq!(
        m.heartbeat(5, 4),
        5,
        "the node takes the upstream's newer epoch"
    );
    assert!(m.check_upstream(4).is_ok());
    assert_eq!(m.heartbeat(2, 5), 5, "an older one changes nothing");
    assert!(m.check_upstream(5).is_ok());
}

#[test]
fn a_message_from_an_older_epoch_is_refused() {
    let mut m = ReplicaSession::new(3);
    assert!(m.message(3, 3).is_ok());
    assert!(
        m.message(0, 3).is_ok(),
        "an upstream that predates the field"
    );
    assert!(m.message(2, 3).is_err(), "sent by a deposed node");
    // The upstream moved on mid-stream (it follows a newer primary): followed on.
    assert!(m.message(5, 4).is_ok());
    assert!(m.check_upstream(5).is_ok());
}

#[test]
fn frames_drop_an_import_and_wait_for_an_install() {
    let mut m = ReplicaSession::new(1);
    assert_eq!(
        m.frames("a", true),
        vec![
            Command::DropImport(s("a")),
            Command::Append {
                log: s("a"),
                sync: true
            }
        ]
    );
    // A segment received whole installs; frames of the same log wait for it.
    assert_eq!(m.staged("a", 200, 200), vec![Command::Install(s("a"))]);
    assert_eq!(
        m.frames("a", false),
        vec![
            Command::DropImport(s("a")),
            Command::DropFollowOn(s("a")),
            Command::Drain,
            Command::Append {
                log: s("a"),
                sync: false
            }
        ]
    );
    // Drained: the next frames go straight on.
    assert_eq!(m.frames("a", false).len(), 2);
}

#[test]
fn segments_back_to_back_overlap_their_installs() {
    let mut m = ReplicaSession::new(1);
    let first = chunk((100, 200), 100, true);
    assert_eq!(
        m.chunk("a", &first, None),
        vec![
            Command::DropImport(s("a")),
            Command::Drain,
            Command::SendAcks,
            Command::BeginImport(s("a")),
            Command::Receive {
                log: s("a"),
                fetch: true
            }
        ]
    );
    assert_eq!(m.begin_at(&first, 100), Ok(100));
    assert!(
        m.begin_at(&first, 90).is_err(),
        "the log must end where it begins"
    );
    assert!(m.staged("a", 150, 200).is_empty(), "not whole yet");
    assert_eq!(m.staged("a", 200, 200), vec![Command::Install(s("a"))]);
    // The next segment begins from the follow-on while the install runs: no drain.
    let next = chunk((200, 300), 200, true);
    assert_eq!(
        m.chunk("a", &next, None),
        vec![
            Command::BeginFollowOn(s("a")),
            Command::Receive {
                log: s("a"),
                fetch: true
            }
        ]
    );
    // Whole too: it installs after the one before has landed (installs land in order).
    assert_eq!(
        m.staged("a", 300, 300),
        vec![Command::Drain, Command::Install(s("a"))]
    );
    m.landed("a");
    let third = chunk((300, 400), 300, false);
    assert_eq!(
        m.chunk("a", &third, None),
        vec![
            Command::BeginFollowOn(s("a")),
            Command::Receive {
                log: s("a"),
                fetch: false
            }
        ]
    );
}

#[test]
fn a_follow_on_elsewhere_is_dropped_and_an_import_in_progress_continues() {
    let mut m = ReplicaSession::new(1);
    let _ = m.staged("a", 200, 200);
    // The next chunk does not begin where the last segment ended.
    let other = chunk((250, 300), 250, false);
    let cmds = m.chunk("a", &other, None);
    assert_eq!(cmds[0], Command::DropFollowOn(s("a")));
    assert!(cmds.contains(&Command::BeginImport(s("a"))));
    // A chunk continuing the import in progress just goes on.
    let import = Some(Import {
        base: 250,
        staged_to: 270,
    });
    assert_eq!(
        m.chunk("a", &chunk((250, 300), 270, false), import),
        vec![Command::Receive {
            log: s("a"),
            fetch: false
        }]
    );
}

#[test]
fn starts_gate_acks_and_keep_an_import_only_where_the_log_continues() {
    let mut m = ReplicaSession::new(1);
    let ends = || vec![(s("a"), 9), (s("b"), 4)];
    assert!(m.acks(ends()).is_empty(), "nothing acked before a start");
    let import = Some(Import {
        base: 100,
        staged_to: 150,
    });
    let cont = Start {
        continue_at: Some(100),
        ..Default::default()
    };
    let here = Here {
        exists: true,
        import,
        ..Default::default()
    };
    assert_eq!(
        m.start("a", cont, here, 0),
        vec![Command::Drain, Command::ApplyStart(s("a"))]
    );
    let cut = Start {
        continue_at: Some(90),
        ..Default::default()
    };
    assert_eq!(
        m.start("a", cut, here, 0),
        vec![
            Command::Drain,
            Command::DropImport(s("a")),
            Command::ApplyStart(s("a"))
        ]
    );
    let diverged = Start {
        diverged: true,
        ..Default::default()
    };
    let _ = m.start("b", diverged, Here::default(), 0);
    assert_eq!(
        m.acks(ends()),
        vec![(s("a"), 9)],
        "a diverged log acks nothing"
    );
}

#[test]
fn a_delayed_replica_keeps_an_old_incarnation_and_skips_the_new_one() {
    let mut m = ReplicaSession::new(1);
    let recreate = Start {
        recreate: true,
        ..Default::default()
    };
    let here = Here {
        delayed: true,
        exists: true,
        ..Default::default()
    };
    let cmds = m.start("a", recreate, here, 77);
    assert_eq!(
        cmds,
        vec![
            Command::Drain,
            Command::DropImport(s("a")),
            Command::ScheduleDelete {
                log: s("a"),
                at_us: 77
            },
            Command::Ignore(s("a"))
        ]
    );
    assert_eq!(m.ignored().collect::<Vec<_>>(), vec!["a"]);
    assert!(m.frames("a", true).is_empty(), "skipped");
    assert!(m.chunk("a", &chunk((0, 10), 0, false), None).is_empty());
    assert!(m.acks(vec![(s("a"), 5)]).is_empty());
    m.check().unwrap();
    // Not delayed: a recreated log is carried out at once.
    let mut m = ReplicaSession::new(1);
    let here = Here {
        exists: true,
        ..Default::default()
    };
    assert_eq!(
        m.start("a", recreate, here, 77),
        vec![
            Command::Drain,
            Command::DropImport(s("a")),
            Command::ApplyStart(s("a"))
        ]
    );
}

#[test]
fn deletions_are_immediate_or_wait_for_the_delay() {
    let mut m = ReplicaSession::new(1);
    let _ = m.start("a", Start::default(), Here::default(), 0);
    assert_eq!(
        m.deleted("a", 5, Here::default(), 9),
        vec![
            Command::Drain,
            Command::DropImport(s("a")),
            Command::DeleteNow(s("a"))
        ]
    );
    assert!(
        m.acks(vec![(s("a"), 1)]).is_empty(),
        "a deleted log is not acked"
    );
    let delayed = Here {
        delayed: true,
        exists: true,
        ..Default::default()
    };
    let cmds = m.deleted("b", 0, delayed, 9);
    assert_eq!(
        cmds.last(),
        Some(&Command::ScheduleDelete {
            log: s("b"),
            at_us: 9
        }),
        "no time from upstream: now"
    );
    let cmds = m.deleted("b", 5, delayed, 9);
    assert_eq!(
        cmds.last(),
        Some(&Command::ScheduleDelete {
            log: s("b"),
            at_us: 5
        })
    );
    let gone = Here {
        delayed: true,
        ..Default::default()
    };
    assert_eq!(
        m.deleted("c", 5, gone, 9).len(),
        2,
        "nothing here to delete"
    );
}
