//! The byte streams a hook reads or writes on the host side: a [`HostSink`] a backup writes
//! into and a [`HostSource`] a restore reads from. The runtime knows nothing about where the
//! bytes go; the caller (the backup subsystem) supplies any `AsyncWrite` / `AsyncRead` and
//! does compression, checksums and storage itself.

use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

/// Where a backup hook's bytes go.
pub struct HostSink {
    pub(crate) writer: Pin<Box<dyn AsyncWrite + Send + Sync>>,
    pub(crate) written: u64,
    /// The first write failure, remembered so a call whose addon ignored it still fails.
    pub(crate) failed: Option<String>,
}

impl HostSink {
    /// A sink writing into `writer`.
    pub fn new(writer: impl AsyncWrite + Send + Sync + 'static) -> Self {
        HostSink {
            writer: Box::pin(writer),
            written: 0,
            failed: None,
        }
    }

    /// The writer, after the call finished (and shut it down, when the call succeeded).
    pub fn into_inner(self) -> Pin<Box<dyn AsyncWrite + Send + Sync>> {
        self.writer
    }

    /// Bytes accepted so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }
}

/// Where a restore hook's bytes come from.
pub struct HostSource {
    pub(crate) reader: Pin<Box<dyn AsyncRead + Send + Sync>>,
    pub(crate) read: u64,
}

impl HostSource {
    /// A source reading from `reader`.
    pub fn new(reader: impl AsyncRead + Send + Sync + 'static) -> Self {
        HostSource {
            reader: Box::pin(reader),
            read: 0,
        }
    }

    /// Bytes handed out so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }
}

impl std::fmt::Debug for HostSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostSink")
            .field("written", &self.written)
            .finish()
    }
}

impl std::fmt::Debug for HostSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostSource")
            .field("read", &self.read)
            .finish()
    }
}
