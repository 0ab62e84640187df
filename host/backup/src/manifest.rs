//! The manifest of a backup: everything a restore or a verification needs, stored next to the
//! backup's objects (`<cluster>/<id>/manifest.json`) and in the host's state store.

use serde::{Deserialize, Serialize};

use crate::pipeline::StoredObject;

/// Format version of [`Manifest`].
pub const FORMAT: u32 = 1;

/// A finished backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// Backup id, unique per host ("pg-20261124T051500Z-physical").
    pub id: String,
    pub cluster: String,
    pub engine: String,
    pub engine_version: String,
    /// sha256 of the addon that made it.
    pub addon_digest: String,
    pub addon_version: String,
    pub method: String,
    /// "full", "logical", … (the method's kind in the addon manifest).
    pub kind: String,
    /// Instance the backup was taken from.
    pub source_instance: String,
    pub started_unix_ms: i64,
    pub finished_unix_ms: i64,
    /// Engine positions the backup starts at and is consistent at (WAL LSN, GTID), if any.
    pub start_position: Option<String>,
    pub end_position: Option<String>,
    /// Engine-specific facts the restore needs.
    pub labels: Vec<(String, String)>,
    /// "zstd".
    pub compression: String,
    pub objects: Vec<StoredObject>,
}

impl Manifest {
    /// Key of the manifest of backup `id` of `cluster`.
    pub fn key(cluster: &str, id: &str) -> String {
        format!("{cluster}/{id}/manifest.json")
    }

    /// Bytes before compression, over every object.
    pub fn size(&self) -> u64 {
        self.objects.iter().map(|o| o.size).sum()
    }

    /// Bytes stored, over every object.
    pub fn stored_size(&self) -> u64 {
        self.objects.iter().map(|o| o.stored_size).sum()
    }
}
