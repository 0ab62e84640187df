//! Both repository kinds for real: a directory, and an S3-compatible server (moto) on
//! loopback. Objects round-trip through compression and checksums; damage is named; an
//! abandoned or failed object leaves nothing behind.

use std::time::Duration;

use shoal_backup::{read_object, verify_object, write_object, RepoSpec, Repository};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Some compressible, not trivially repetitive bytes.
fn payload(n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n);
    let mut x: u32 = 12345;
    while v.len() < n {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        v.extend_from_slice(format!("row {} value {}\n", v.len(), (x >> 16) % 1000).as_bytes());
    }
    v.truncate(n);
    v
}

async fn round_trip(repo: &Repository) {
    repo.check().await.expect("check");
    let data = payload(12 << 20);
    let (mut w, pending) = write_object(repo, "c1/b1/data.zst", 1);
    for part in data.chunks(100_000) {
        w.write_all(part).await.unwrap();
    }
    w.shutdown().await.unwrap();
    drop(w);
    let obj = pending.finish().await.expect("finish");
    assert_eq!(obj.size, data.len() as u64);
    assert!(obj.stored_size < obj.size / 2, "compressed: {obj:?}");
    assert_eq!(repo.size(&obj.key).await.unwrap(), obj.stored_size);
    let (mut r, verdict) = read_object(repo, &obj).await.unwrap();
    let mut back = Vec::new();
    r.read_to_end(&mut back).await.unwrap();
    assert_eq!(verdict.check().await.unwrap(), data.len() as u64);
    assert!(back == data, "bytes differ after the round trip");
    assert_eq!(verify_object(repo, &obj).await.unwrap(), data.len() as u64);
    let listed = repo.list("c1/").await.unwrap();
    assert_eq!(listed, vec![(obj.key.clone(), obj.stored_size)]);

    // An abandoned object (the backup failed) leaves nothing.
    let (mut w, pending) = write_object(repo, "c1/b2/data.zst", 1);
    w.write_all(&data[..3 << 20]).await.unwrap();
    drop(w);
    pending.abort().await;
    assert!(repo.list("c1/b2/").await.unwrap().is_empty());
    assert!(repo.size("c1/b2/data.zst").await.is_err());

    // Damage: one flipped byte is named by the verification.
    let mut stored = repo.get(&obj.key).await.unwrap().to_vec();
    let mid = stored.len() / 2;
    stored[mid] ^= 0x40;
    repo.put(&obj.key, stored.into()).await.unwrap();
    let err = verify_object(repo, &obj).await.unwrap_err().to_string();
    assert!(
        err.contains("c1/b1/data.zst") && err.contains("damaged"),
        "{err}"
    );
    // A missing object is named too.
    repo.delete(&obj.key).await.unwrap();
    let err = verify_object(repo, &obj).await.unwrap_err().to_string();
    assert!(
        err.contains("c1/b1/data.zst") && err.contains("missing"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_repository_round_trips_and_names_damage() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::open(
        "local",
        &RepoSpec::Fs {
            path: dir.path().join("repo"),
        },
    )
    .unwrap();
    round_trip(&repo).await;
    // No staging files left behind by the abandoned upload.
    let mut left = Vec::new();
    for e in walk(&dir.path().join("repo")) {
        left.push(e);
    }
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn walk(p: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path().display().to_string());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_repository_round_trips_and_names_damage() {
    let s3 = shoal_tests::S3Server::start();
    let repo = Repository::open(
        "s3",
        &RepoSpec::S3 {
            endpoint: Some(s3.endpoint.clone()),
            bucket: s3.bucket.clone(),
            region: "us-east-1".into(),
            prefix: Some("shoal".into()),
            access_key_id: "test".into(),
            secret_access_key: "test".into(),
        },
    )
    .unwrap();
    round_trip(&repo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_repository_fails_fast_and_clearly() {
    let mut s3 = shoal_tests::S3Server::start();
    let spec = RepoSpec::S3 {
        endpoint: Some(s3.endpoint.clone()),
        bucket: s3.bucket.clone(),
        region: "us-east-1".into(),
        prefix: None,
        access_key_id: "test".into(),
        secret_access_key: "test".into(),
    };
    let repo = Repository::open("gone", &spec).unwrap();
    // The server dies in the middle of an object.
    let (mut w, pending) = write_object(&repo, "c/b/data.zst", 1);
    w.write_all(&payload(1 << 20)).await.unwrap();
    s3.kill();
    let data = payload(24 << 20);
    let _ = tokio::time::timeout(Duration::from_secs(60), w.write_all(&data)).await;
    let _ = w.shutdown().await;
    drop(w);
    let t = std::time::Instant::now();
    let err = pending.finish().await.unwrap_err().to_string();
    assert!(err.contains("gone"), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t.elapsed()
    );
    let err = repo.check().await.unwrap_err().to_string();
    assert!(err.contains("repository gone"), "{err}");
}

#[test]
fn bad_specs_are_refused_with_the_reason() {
    let cases = [
        (
            RepoSpec::Fs {
                path: "relative/dir".into(),
            },
            "must be absolute",
        ),
        (
            RepoSpec::S3 {
                endpoint: Some("ftp://x".into()),
                bucket: "ok-bucket".into(),
                region: "r".into(),
                prefix: None,
                access_key_id: "a".into(),
                secret_access_key: "s".into(),
            },
            "http:// or https://",
        ),
        (
            RepoSpec::S3 {
                endpoint: None,
                bucket: "Bad_Bucket".into(),
                region: "r".into(),
                prefix: None,
                access_key_id: "a".into(),
                secret_access_key: "s".into(),
            },
            "lowercase",
        ),
        (
            RepoSpec::S3 {
                endpoint: None,
                bucket: "ok-bucket".into(),
                region: "r".into(),
                prefix: None,
                access_key_id: String::new(),
                secret_access_key: "s".into(),
            },
            "access key",
        ),
    ];
    for (spec, want) in cases {
        let err = Repository::open("x", &spec).unwrap_err().to_string();
        assert!(err.contains(want), "{spec:?}: {err}");
    }
}
