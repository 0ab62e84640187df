//! Backups' storage side, engine-neutral: repositories ([`repo`]: a local directory or an
//! S3-compatible bucket), the object pipeline ([`pipeline`]: zstd and sha256 while the bytes
//! stream, verification on the way back) and the manifest describing a backup ([`manifest`]).
//! What to run to make or restore a backup is the addon's business; moving, compressing,
//! checksumming and keeping the bytes is this crate's.

pub mod manifest;
pub mod pipeline;
pub mod repo;

pub use manifest::Manifest;
pub use pipeline::{read_object, verify_object, write_object, PendingObject, StoredObject};
pub use repo::{RepoError, RepoSpec, Repository};
