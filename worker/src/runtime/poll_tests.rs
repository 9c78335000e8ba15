//! `await_poll`: a heartbeat's cancel leaves the poll in flight; shutdown and a lost lease end
//! the wait.

use std::time::Duration;

use tokio::sync::{oneshot, watch};

use super::*;

fn cancel_of(task_id: &str) -> HeartbeatState {
    HeartbeatState {
        lost: false,
        cancel: vec![TaskRef {
            task_id: task_id.into(),
            attempt: 1,
        }],
    }
}

#[tokio::test]
async fn a_cancel_while_polling_keeps_the_poll_and_its_reply() {
    let (_shutdown_tx, mut shutdown) = watch::channel(false);
    let (hb_tx, mut hb_rx) = watch::channel(HeartbeatState::default());
    let (reply_tx, reply_rx) = oneshot::channel::<&str>();
    let driver = tokio::spawn(async move {
        // A heartbeat that crossed the previous task's final report, then the poll's reply.
        tokio::time::sleep(Duration::from_millis(20)).await;
        hb_tx.send_replace(cancel_of("job/shard-5"));
        tokio::time::sleep(Duration::from_millis(20)).await;
        reply_tx.send("job/shard-6").unwrap();
        hb_tx
    });
    let got = await_poll(reply_rx, &mut shutdown, &mut hb_rx).await;
    assert!(matches!(got, Ok(Ok("job/shard-6"))), "{got:?}");
    driver.await.unwrap();
}

#[tokio::test]
async fn a_lost_lease_or_a_shutdown_ends_the_wait() {
    let (_shutdown_tx, mut shutdown) = watch::channel(false);
    let (hb_tx, mut hb_rx) = watch::channel(HeartbeatState::default());
    hb_tx.send_replace(HeartbeatState {
        lost: true,
        cancel: vec![],
    });
    let never = std::future::pending::<()>();
    let got = await_poll(never, &mut shutdown, &mut hb_rx).await;
    assert!(matches!(got, Err(SessionEnd::Lost)), "{got:?}");

    // The heartbeat loop gone (it ends only once the lease is lost) counts as lost too.
    let (hb_tx, mut hb_rx) = watch::channel(HeartbeatState::default());
    drop(hb_tx);
    let got = await_poll(std::future::pending::<()>(), &mut shutdown, &mut hb_rx).await;
    assert!(matches!(got, Err(SessionEnd::Lost)), "{got:?}");

    let (shutdown_tx, mut shutdown) = watch::channel(false);
    let (_hb_tx, mut hb_rx) = watch::channel(HeartbeatState::default());
    shutdown_tx.send_replace(true);
    let got = await_poll(std::future::pending::<()>(), &mut shutdown, &mut hb_rx).await;
    assert!(matches!(got, Err(SessionEnd::Shutdown)), "{got:?}");
}

/// A coordinator that accepts the connection and then never answers: the heartbeat gives up at
/// its deadline and, the lease run out, reports it lost, so the worker registers again instead
/// of waiting forever.
#[tokio::test]
async fn a_heartbeat_never_answered_loses_the_lease() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let connection = Connection {
        url: format!("http://{}", listener.local_addr().unwrap()),
        ..Connection::default()
    };
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            held.push(listener.accept().await.unwrap().0);
        }
    });
    let client = connection.client(connection.endpoint().unwrap().connect_lazy());
    let (_running_tx, running_rx) = watch::channel(None);
    let (hb_tx, mut hb_rx) = watch::channel(HeartbeatState::default());
    let lease = Duration::from_millis(300);
    let started = tokio::time::Instant::now();
    let heartbeat = tokio::spawn(heartbeat_loop(
        client,
        "w-1".into(),
        Duration::from_millis(50),
        lease,
        lease,
        running_rx,
        hb_tx,
    ));
    tokio::time::timeout(Duration::from_secs(10), hb_rx.changed())
        .await
        .expect("the heartbeat loop reported nothing within 10 s")
        .unwrap();
    assert!(hb_rx.borrow().lost);
    assert!(started.elapsed() >= lease);
    tokio::time::timeout(Duration::from_secs(1), heartbeat)
        .await
        .expect("the heartbeat loop ends once the lease is lost")
        .unwrap();
    silent.abort();
}

#[test]
fn a_heartbeat_waits_for_its_answer_a_lease_and_at_least_the_floor() {
    assert_eq!(
        heartbeat_deadline(Duration::from_secs(1)),
        HEARTBEAT_DEADLINE_FLOOR
    );
    assert_eq!(
        heartbeat_deadline(Duration::from_secs(30)),
        Duration::from_secs(30)
    );
}
