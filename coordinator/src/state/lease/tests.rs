use std::sync::Arc;
use std::time::Duration;

use mirrorplay_worker::io::Location;

use super::{Lease, LeaseError};

fn root(dir: &tempfile::TempDir) -> Location {
    Location::parse(dir.path().join("state").to_str().unwrap()).unwrap()
}

async fn lease_files(root: &Location) -> Vec<String> {
    root.join("lease")
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect()
}

#[tokio::test]
async fn a_live_lease_is_refused_and_a_released_one_is_taken_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = root(&dir);
    let first = Lease::acquire(&root, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(first.generation(), 1);
    match Lease::acquire(&root, Duration::from_secs(60)).await {
        Err(LeaseError::Held {
            owner, remaining_s, ..
        }) => {
            assert_eq!(owner, first.owner());
            assert!(remaining_s > 50.0, "{remaining_s}");
        }
        other => panic!("expected Held, got {:?}", other.map(|l| l.generation())),
    }
    first.release().await.unwrap();
    let second = Lease::acquire(&root, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(second.generation(), 2);
    assert_ne!(second.owner(), first.owner());
    // The older generation is cleaned up.
    assert_eq!(
        lease_files(&root).await,
        vec!["000000000002.json".to_string()]
    );
}

#[tokio::test]
async fn a_lease_that_ran_out_is_taken_over_and_its_old_holder_learns_it_lost() {
    let dir = tempfile::tempdir().unwrap();
    let root = root(&dir);
    let dead = Lease::acquire(&root, Duration::from_millis(200))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let next = Lease::acquire(&root, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(next.generation(), 2);
    assert!(matches!(dead.renew().await, Err(LeaseError::Lost { .. })));
    assert!(matches!(dead.release().await, Err(LeaseError::Lost { .. })));
    // The new holder's lease is intact.
    assert!(matches!(
        Lease::acquire(&root, Duration::from_secs(60)).await,
        Err(LeaseError::Held { .. })
    ));
}

#[tokio::test]
async fn a_kept_lease_outlives_its_duration_and_stops_when_told() {
    let dir = tempfile::tempdir().unwrap();
    let root = root(&dir);
    let lease = Arc::new(
        Lease::acquire(&root, Duration::from_millis(300))
            .await
            .unwrap(),
    );
    let (lost_tx, mut lost_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let keeper = lease.keep(lost_tx, stop_rx);
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(matches!(
        Lease::acquire(&root, Duration::from_secs(1)).await,
        Err(LeaseError::Held { .. })
    ));
    assert!(lost_rx.try_recv().is_err(), "the lease was kept");
    stop_tx.send(()).unwrap();
    keeper.await.unwrap();
    lease.release().await.unwrap();
    Lease::acquire(&root, Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn a_kept_lease_reports_a_takeover() {
    let dir = tempfile::tempdir().unwrap();
    let root = root(&dir);
    let lease = Arc::new(
        Lease::acquire(&root, Duration::from_millis(300))
            .await
            .unwrap(),
    );
    // Another coordinator writes the next generation (as after a long pause of this one).
    root.join("lease/000000000002.json")
        .put(b"{}".to_vec())
        .await
        .unwrap();
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel();
    let (_stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let _keeper = lease.keep(lost_tx, stop_rx);
    let lost = tokio::time::timeout(Duration::from_secs(5), lost_rx)
        .await
        .expect("the keeper notices")
        .unwrap();
    assert!(lost.to_string().contains("took it over"), "{lost}");
}

#[tokio::test]
async fn the_lock_of_an_older_version_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let root = root(&dir);
    root.join("lock")
        .put(br#"{"pid":1,"started":0,"version":"0.0.1"}"#.to_vec())
        .await
        .unwrap();
    Lease::acquire(&root, Duration::from_secs(1)).await.unwrap();
    assert!(!root.join("lock").exists().await.unwrap());
}

#[test]
fn generation_names_round_trip() {
    assert_eq!(super::object_name(7), "000000000007.json");
    assert_eq!(super::generation_of("000000000007.json"), Some(7));
    assert_eq!(super::generation_of("x.json"), None);
    assert_eq!(super::generation_of("a/000000000007.json"), None);
}
