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
