use super::*;

fn task(job: &str, id: &str) -> Task {
    Task {
        task_id: id.into(),
        job_id: job.into(),
        group_size: 1,
        ..Default::default()
    }
}

fn gang(job: &str, id: &str, size: u32) -> Task {
    Task {
        group_size: size,
        ..task(job, id)
    }
}

/// Polls with every worker until each holds its rank of the gang; tasks in the workers' order.
fn form(s: &Scheduler, workers: &[&String]) -> Vec<Task> {
    let mut got: Vec<Option<Task>> = vec![None; workers.len()];
    for _ in 0..3 {
        for (i, w) in workers.iter().enumerate() {
            if got[i].is_none() {
                got[i] = s.assign(w);
            }
        }
    }
    got.into_iter().map(|t| t.expect("a rank")).collect()
}

/// A scheduler whose retries wait for no backoff (`retries` failures survived).
fn no_backoff(lease: Duration, retries: u32) -> Scheduler {
    Scheduler::with_retry(
        lease,
        RetryPolicy {
            max_retries: retries,
            backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
        },
    )
}

fn refs(t: &Task) -> Vec<TaskRef> {
    vec![TaskRef {
        task_id: t.task_id.clone(),
        attempt: t.attempt,
    }]
}

#[test]
fn lease_loss_requeues_with_a_new_attempt_and_fences_the_old_one() {
    let s = no_backoff(Duration::from_millis(10), 4);
    let a = s.register("a", 1);
    let b = s.register("b", 1);
    s.enqueue(vec![(task("j", "t1"), 0), (task("j", "t2"), 0)], 0);
    let t1 = s.assign(&a).unwrap();
    assert_eq!((t1.task_id.as_str(), t1.attempt), ("t1", 1));
    assert!(s.assign(&a).is_none(), "one slot");
    std::thread::sleep(Duration::from_millis(20));
    s.heartbeat(&b, &[]).unwrap();
    assert_eq!(s.expired_workers(), vec![a.clone()]);
    let lost = s.remove_worker(&a, "lost its lease", false);
    assert_eq!(
        lost,
        vec![Lost::Requeued {
            job_id: "j".into(),
            task_id: "t1".into(),
            attempt: 2,
            cause: Cause::LostWorker,
            worker: "a".into(),
            reason: "worker `a` lost its lease".into(),
            retry: 1,
            delay: Duration::ZERO,
        }]
    );
    let again = s.assign(&b).unwrap();
    assert_eq!((again.task_id.as_str(), again.attempt), ("t1", 2));
    assert_eq!(
        s.finish(&a, "t1", 1),
        Err(Rejected::StaleAttempt { current: 2 })
    );
    assert!(matches!(s.finish(&b, "t1", 2), Ok(Finished::Task(t)) if t.task_id == "t1"));
    assert_eq!(s.finish(&b, "t1", 2), Err(Rejected::UnknownTask));
    assert!(s.heartbeat(&a, &[]).is_none(), "a is forgotten");
}

#[test]
fn heartbeat_cancels_tasks_that_are_no_longer_yours_and_job_limits_hold() {
    let s = Scheduler::new(Duration::from_secs(10));
    let a = s.register("a", 1);
    let b = s.register("b", 1);
    s.enqueue(vec![(task("j", "t1"), 0), (task("j", "t2"), 0)], 1);
    let t1 = s.assign(&a).unwrap();
    assert!(s.assign(&b).is_none(), "job limited to one worker");
    s.drop_job("j");
    let beat = s.heartbeat(&a, &refs(&t1)).unwrap();
    assert_eq!(beat.cancel.len(), 1);
    assert!(beat.handed_back.is_empty());
    assert_eq!(s.job_counts("j"), (0, 0, 0.0));
}

#[test]
fn a_gang_is_assigned_all_or_nothing_to_polling_workers_with_ranks_in_registration_order() {
    let s = Scheduler::new(Duration::from_secs(10));
    let a = s.register("a", 1);
    let b = s.register("b", 1);
    let c = s.register("c", 1);
    s.enqueue(vec![(gang("j", "g", 3), 0)], 0);
    // Only a and b have polled: no partial gang.
    assert!(s.assign(&a).is_none());
    assert!(s.assign(&b).is_none());
    let status = s.gang_status("j");
    assert_eq!(status[0].waiting, "waiting for 3 workers, 2 free");
    assert!(status[0].workers.is_empty());
    // c polls: the gang forms around it; a and b find their ranks at their next poll.
    let tc = s.assign(&c).unwrap();
    let ta = s.assign(&a).unwrap();
    let tb = s.assign(&b).unwrap();
    assert_eq!(
        [ta.rank, tb.rank, tc.rank],
        [0, 1, 2],
        "ranks follow registration order"
    );
    for t in [&ta, &tb, &tc] {
        assert_eq!((t.group_size, t.attempt, t.task_id.as_str()), (3, 1, "g"));
    }
    let status = s.gang_status("j");
    assert_eq!(status[0].workers, vec!["a", "b", "c"]);
    assert_eq!(status[0].waiting, "");
    // Every member is busy: nothing else is handed out.
    s.enqueue(vec![(task("k", "other"), 0)], 0);
    assert!(s.assign(&a).is_none());
}

#[test]
fn the_rendezvous_completes_when_every_rank_joined_and_refuses_other_epochs_and_ranks() {
    let s = Scheduler::new(Duration::from_secs(10));
    let a = s.register("a", 1);
    let b = s.register("b", 1);
    s.enqueue(vec![(gang("j", "g", 2), 0)], 0);
    assert!(s.assign(&a).is_none());
    let tb = s.assign(&b).unwrap();
    let ta = s.assign(&a).unwrap();
    assert_eq!((ta.rank, tb.rank), (0, 1));
    assert_eq!(
        s.join_group(&a, "g", 1, 1, Some(b"x".to_vec())),
        Err(Rejected::NotAssignee),
        "a is rank 0, not 1"
    );
    assert_eq!(
        s.join_group(&a, "g", 7, 0, Some(b"x".to_vec())),
        Err(Rejected::StaleAttempt { current: 1 })
    );
    assert_eq!(
        s.join_group(&a, "g", 1, 0, Some(b"addr-a".to_vec())),
        Ok(Joined::Waiting)
    );
    let Ok(Joined::Complete { epoch, members }) =
        s.join_group(&b, "g", 1, 1, Some(b"addr-b".to_vec()))
    else {
        panic!("the gang should be complete")
    };
    assert_eq!(epoch, 1);
    let seen: Vec<(u32, &str, &[u8])> = members
        .iter()
        .map(|m| (m.rank, m.worker_name.as_str(), m.endpoint.as_slice()))
        .collect();
    assert_eq!(
        seen,
        vec![(0, "a", &b"addr-a"[..]), (1, "b", &b"addr-b"[..])]
    );
}

#[test]
fn losing_a_member_ends_the_epoch_for_all_and_the_gang_re_forms_at_min_size() {
    let s = no_backoff(Duration::from_secs(10), 4);
    let a = s.register("a", 1);
    let b = s.register("b", 1);
    let c = s.register("c", 1);
    s.enqueue(vec![(gang("j", "g", 3), 2)], 0);
    s.assign(&a);
    s.assign(&b);
    let tc = s.assign(&c).unwrap();
    let ta = s.assign(&a).unwrap();
    s.assign(&b).unwrap();
    let lost = s.remove_worker(&c, "lost its lease", false);
    assert_eq!(
        lost,
        vec![Lost::Requeued {
            job_id: "j".into(),
            task_id: "g".into(),
            attempt: 2,
            cause: Cause::GangBroken,
            worker: "c".into(),
            reason: "worker `c` lost its lease".into(),
            retry: 1,
            delay: Duration::ZERO,
        }]
    );
    // The survivors are told to stop the old epoch.
    assert_eq!(s.heartbeat(&a, &refs(&ta)).unwrap().cancel, refs(&ta));
    assert_eq!(
        s.join_group(&a, "g", 1, 0, Some(vec![])),
        Err(Rejected::StaleAttempt { current: 2 })
    );
    drop(tc);
    // min_group_size = 2: the two survivors re-form it as epoch 2.
    let ta2 = s.assign(&a).unwrap();
    let tb2 = s.assign(&b).unwrap();
    assert_eq!(
        (ta2.attempt, ta2.group_size, ta2.rank, tb2.rank),
        (2, 2, 0, 1)
    );
    let status = s.gang_status("j");
    assert_eq!(status[0].attempt, 2);
    assert_eq!(status[0].last_restart, "worker `c` lost its lease");
}

#[test]
fn a_gang_broken_failure_requeues_but_a_task_failure_is_final_and_rank_zero_completes() {
    let s = no_backoff(Duration::from_secs(10), 4);
    let a = s.register("a", 1);
    let b = s.register("b", 1);
    s.enqueue(vec![(gang("j", "g", 2), 0)], 0);
    form(&s, &[&a, &b]);
    let failed = s
        .fail(&b, "g", 1, FailureKind::GangBroken, "peer closed the ring")
        .unwrap();
    assert!(matches!(
        failed,
        Failed::Again(Lost::Requeued { attempt: 2, .. })
    ));
    // A second survivor's report of the same epoch is stale.
    assert_eq!(
        s.fail(&a, "g", 1, FailureKind::GangBroken, "peer closed the ring"),
        Err(Rejected::StaleAttempt { current: 2 })
    );
    form(&s, &[&a, &b]);
    // Rank 1 finishing only frees its worker; rank 0's report completes the task.
    assert_eq!(s.finish(&b, "g", 2), Ok(Finished::Rank));
    assert_eq!(s.job_counts("j"), (0, 1, 0.0));
    assert!(matches!(s.finish(&a, "g", 2), Ok(Finished::Task(_))));
    assert_eq!(s.job_counts("j"), (0, 0, 0.0));
    // A plain failure of a gang rank is final.
    s.enqueue(vec![(gang("j", "h", 2), 0)], 0);
    form(&s, &[&a, &b]);
    assert!(matches!(
        s.fail(&a, "h", 1, FailureKind::Final, "bad data"),
        Ok(Failed::Task(_))
    ));
}

#[test]
fn a_gang_gives_up_after_its_retries() {
    let s = no_backoff(Duration::from_secs(10), 3);
    let a = s.register("a", 1);
    let b = s.register("b", 1);
    s.enqueue(vec![(gang("j", "g", 2), 0)], 0);
    let mut last = None;
    for _ in 0..4 {
        let tb = form(&s, &[&a, &b]).remove(1);
        last = Some(
            s.fail(&b, "g", tb.attempt, FailureKind::GangBroken, "peer died")
                .unwrap(),
        );
    }
    assert!(
        matches!(&last, Some(Failed::Again(Lost::GaveUp { failures: 4, reason, .. })) if reason == "rank on `b`: peer died"),
        "{last:?}"
    );
    assert_eq!(s.job_counts("j"), (0, 0, 0.0));
}

#[test]
fn a_transient_failure_is_retried_after_a_doubling_backoff_until_the_limit() {
    let policy = RetryPolicy {
        max_retries: 2,
        backoff: Duration::from_millis(150),
        max_backoff: Duration::from_secs(10),
    };
    let s = Scheduler::with_retry(Duration::from_secs(10), policy);
    let a = s.register("a", 1);
    s.enqueue(vec![(task("j", "t"), 0)], 0);
    let mut attempt = s.assign(&a).unwrap().attempt;
    for retry in 1..=2u32 {
        let failed = s
            .fail(&a, "t", attempt, FailureKind::Transient, "store: 503")
            .unwrap();
        let delay = policy.delay(retry);
        assert_eq!(
            failed,
            Failed::Again(Lost::Requeued {
                job_id: "j".into(),
                task_id: "t".into(),
                attempt: attempt + 1,
                cause: Cause::Transient,
                worker: "a".into(),
                reason: "store: 503".into(),
                retry,
                delay,
            })
        );
        assert_eq!(s.task_counts(), (1, 0), "queued during the backoff");
        assert!(s.assign(&a).is_none(), "not before the backoff");
        std::thread::sleep(delay + Duration::from_millis(20));
        attempt = s.assign(&a).expect("assigned after the backoff").attempt;
    }
    // The third failure is one more than the two retries allow.
    let failed = s
        .fail(&a, "t", attempt, FailureKind::Transient, "store: 503 again")
        .unwrap();
    assert!(
        matches!(&failed, Failed::Again(Lost::GaveUp { failures: 3, reason, .. }) if reason == "store: 503 again"),
        "{failed:?}"
    );
    assert_eq!(s.task_counts(), (0, 0));
    // A final failure fails at once, whatever the retries left.
    s.enqueue(vec![(task("j", "u"), 0)], 0);
    let u = s.assign(&a).unwrap();
    assert!(matches!(
        s.fail(&a, "u", u.attempt, FailureKind::Final, "invalid task"),
        Ok(Failed::Task(_))
    ));
}

#[test]
fn hand_backs_are_not_failures_but_a_lost_worker_is() {
    let s = no_backoff(Duration::from_secs(10), 1);
    s.enqueue(vec![(task("j", "t"), 0)], 0);
    // Handed back more often than any retry limit: re-issued each time, at once.
    for n in 1..=5u32 {
        let w = s.register(&format!("w{n}"), 1);
        let t = s.assign(&w).unwrap();
        assert_eq!(t.attempt, n);
        let lost = s.remove_worker(&w, "left", true);
        assert!(
            matches!(&lost[..], [Lost::Requeued { cause: Cause::HandedBack, retry: 0, delay, .. }] if delay.is_zero()),
            "{lost:?}"
        );
    }
    // Two workers lost with it: the first is its one retry, the second fails it.
    for (n, last) in [(6u32, false), (7, true)] {
        let w = s.register(&format!("w{n}"), 1);
        s.assign(&w).unwrap();
        let lost = s.remove_worker(&w, "lost its lease", false);
        assert_eq!(matches!(&lost[..], [Lost::GaveUp { .. }]), last, "{lost:?}");
    }
}

#[test]
fn a_resumed_gang_starts_its_first_epoch_at_full_size() {
    let s = no_backoff(Duration::from_secs(10), 4);
    let a = s.register("a", 1);
    let b = s.register("b", 1);
    let c = s.register("c", 1);
    // A resumed job's tasks start above the earlier runs' attempts.
    let resumed = Task {
        attempt: MAX_ATTEMPTS + 1,
        ..gang("j", "g", 3)
    };
    s.enqueue(vec![(resumed, 2)], 0);
    assert!(s.assign(&a).is_none());
    assert!(
        s.assign(&b).is_none(),
        "two of three ranks are not enough yet"
    );
    let ranks = form(&s, &[&a, &b, &c]);
    assert!(ranks.iter().all(|t| t.group_size == 3), "{ranks:?}");
}

/// The one task handed back by a heartbeat (`stranded.rs`), as (task, attempt, cause, retry).
fn handed_back(beat: &Heartbeat) -> Vec<(String, u32, Cause, u32)> {
    beat.handed_back
        .iter()
        .map(|l| match l {
            Lost::Requeued {
                task_id,
                attempt,
                cause,
                retry,
                ..
            } => (task_id.clone(), *attempt, *cause, *retry),
            other => panic!("expected a re-issue, got {other:?}"),
        })
        .collect()
}

#[test]
fn an_assignment_the_worker_never_lists_is_handed_back_after_the_lease() {
    let lease = Duration::from_millis(40);
    let s = no_backoff(lease, 0);
    let a = s.register("a", 1);
    s.enqueue(vec![(task("j", "t1"), 0), (task("j", "t2"), 0)], 0);
    // The poll's reply carrying t1 never reaches the worker: it idles and lists nothing.
    let t1 = s.assign(&a).unwrap();
    assert!(s.assign(&a).is_none(), "its one slot is taken");
    let first = s.heartbeat(&a, &[]).unwrap();
    assert!(first.handed_back.is_empty(), "the grace starts: {first:?}");
    std::thread::sleep(lease + Duration::from_millis(20));
    let beat = s.heartbeat(&a, &[]).unwrap();
    assert_eq!(
        handed_back(&beat),
        vec![("t1".to_string(), 2, Cause::HandedBack, 0)],
        "re-issued, not a failure (the policy allows none)"
    );
    assert!(beat.cancel.is_empty());
    // The slot is free again and t1 comes first; the lost attempt is fenced.
    let again = s.assign(&a).unwrap();
    assert_eq!((again.task_id.as_str(), again.attempt), ("t1", 2));
    assert_eq!(
        s.finish(&a, "t1", t1.attempt),
        Err(Rejected::StaleAttempt { current: 2 })
    );
    // Listed from now on: never handed back, however long it runs.
    for _ in 0..3 {
        std::thread::sleep(lease / 2);
        let beat = s.heartbeat(&a, &refs(&again)).unwrap();
        assert!(
            beat.handed_back.is_empty() && beat.cancel.is_empty(),
            "{beat:?}"
        );
    }
    assert!(matches!(s.finish(&a, "t1", 2), Ok(Finished::Task(_))));
}

#[test]
fn the_grace_restarts_whenever_the_task_is_listed_and_a_polling_renewal_lists_nothing() {
    let lease = Duration::from_millis(40);
    let s = no_backoff(lease, 0);
    let a = s.register("a", 1);
    s.enqueue(vec![(task("j", "t"), 0)], 0);
    let t = s.assign(&a).unwrap();
    // A heartbeat built before the poll's reply arrived leaves it out; the next lists it.
    assert!(s.heartbeat(&a, &[]).unwrap().handed_back.is_empty());
    std::thread::sleep(lease + Duration::from_millis(20));
    s.renew(&a);
    assert!(s.heartbeat(&a, &refs(&t)).unwrap().handed_back.is_empty());
    // Left out again: the grace counts from this heartbeat, not the first one.
    assert!(s.heartbeat(&a, &[]).unwrap().handed_back.is_empty());
    assert_eq!(s.job_counts("j"), (0, 1, 0.0));
}

#[test]
fn an_undelivered_gang_rank_is_not_expected_in_heartbeats_but_a_stranded_rank_ends_the_epoch() {
    let lease = Duration::from_millis(40);
    let s = no_backoff(lease, 0);
    let a = s.register("a", 1);
    let b = s.register("b", 1);
    assert!(s.assign(&b).is_none(), "b is polling");
    s.enqueue(vec![(gang("j", "g", 2), 0)], 0);
    let rank0 = s.assign(&a).unwrap();
    assert_eq!(rank0.rank, 0);
    // b's rank waits in `pending` for its next poll: not stranded, however long.
    assert!(s.heartbeat(&b, &[]).unwrap().handed_back.is_empty());
    std::thread::sleep(lease + Duration::from_millis(20));
    assert!(s.heartbeat(&b, &[]).unwrap().handed_back.is_empty());
    // a never lists rank 0: the epoch ends for both, re-issued as a hand-back.
    assert!(s.heartbeat(&a, &[]).unwrap().handed_back.is_empty());
    std::thread::sleep(lease + Duration::from_millis(20));
    let beat = s.heartbeat(&a, &[]).unwrap();
    assert_eq!(
        handed_back(&beat),
        vec![("g".to_string(), 2, Cause::HandedBack, 0)]
    );
    assert_eq!(
        s.job_counts("j"),
        (1, 0, 0.0),
        "queued again, no rank running"
    );
}
