//! The etcd backend against a real etcd (Debian's etcd-server) started on free loopback ports.

use std::time::{Duration, Instant};

use shoal_dcs::etcd::Etcd;
use shoal_dcs::{Coordinator, DcsError};

#[tokio::test]
async fn two_hosts_on_one_etcd_never_elect_twice_and_one_manager_at_a_time() {
    let server = shoal_tests::Etcd::start();
    let a = Etcd::new(vec![server.url.clone()]).unwrap();
    let b = Etcd::new(vec![server.url.clone()]).unwrap();
    let ttl = Duration::from_secs(2);
    // Wait for the server to answer (it listens before it serves).
    let until = Instant::now() + Duration::from_secs(20);
    let first = loop {
        match a.keep_leader("pg", "pg-0", ttl).await {
            Ok(l) => break l,
            Err(e) => {
                assert!(Instant::now() < until, "etcd never served: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!((first.holder.as_str(), first.term), ("pg-0", 1));
    assert!(matches!(
        b.keep_leader("pg", "pg-1", ttl).await,
        Err(DcsError::Conflict(_))
    ));
    // Both hosts saw term 1 and both try to fail over: exactly one wins.
    let (ra, rb) = tokio::join!(
        a.elect("pg", Some(&first), "pg-1", ttl),
        b.elect("pg", Some(&first), "pg-2", ttl)
    );
    let winners: Vec<_> = [ra, rb].into_iter().filter_map(|r| r.ok()).collect();
    assert_eq!(winners.len(), 1, "exactly one election may succeed");
    assert_eq!(winners[0].term, 2);
    let (seen, live) = b.leader("pg").await.unwrap().unwrap();
    assert_eq!(seen, winners[0]);
    assert!(live);

    // Leader lease lapses when nobody renews it; the term stays.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (seen, live) = a.leader("pg").await.unwrap().unwrap();
    assert_eq!(seen.term, 2);
    assert!(!live, "an unrenewed leader lease must lapse");
    // The same leader may re-take its lapsed lease without a new term.
    let again = a.keep_leader("pg", &seen.holder, ttl).await.unwrap();
    assert_eq!(again, seen);

    // Manager lease: one host at a time; the other takes over when it lapses.
    assert!(a.manage("pg", "host-a", ttl).await.unwrap());
    assert!(!b.manage("pg", "host-b", ttl).await.unwrap());
    assert!(a.manage("pg", "host-a", ttl).await.unwrap());
    assert_eq!(b.manager("pg").await.unwrap().as_deref(), Some("host-a"));
    let lapsed = Instant::now() + Duration::from_secs(10);
    loop {
        if b.manage("pg", "host-b", ttl).await.unwrap() {
            break;
        }
        assert!(Instant::now() < lapsed, "host-b never took over");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(!a.manage("pg", "host-a", ttl).await.unwrap());
    assert_eq!(a.manager("pg").await.unwrap().as_deref(), Some("host-b"));

    a.forget("pg").await.unwrap();
    assert!(b.leader("pg").await.unwrap().is_none());
}

#[test]
fn bad_endpoints_are_refused() {
    assert!(Etcd::new(vec![]).is_err());
    assert!(Etcd::new(vec!["https://127.0.0.1:2379".into()]).is_err());
    assert!(Etcd::new(vec!["http://127.0.0.1:2379/v3".into()]).is_err());
}

#[tokio::test]
async fn an_unreachable_etcd_is_reported_not_hung() {
    let port = shoal_tests::free_port();
    let e = Etcd::new(vec![format!("127.0.0.1:{port}")]).unwrap();
    let err = e.leader("pg").await.unwrap_err();
    assert!(matches!(err, DcsError::Unavailable(_)), "{err}");
}
