//! Where facts come from: the only code that opens files under `--path.procfs` or sockets to the kernel.

pub mod interfaces;
pub mod process;
pub mod procfs;
pub mod reader;
pub mod sock_diag;
pub mod socket_table;
pub mod sysctl;

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// A source that could not be read. Variants say what an operator should look at.
#[derive(Debug, Error)]
pub enum SourceError {
    /// The file or directory does not exist.
    #[error("{path}: not found (is --path.procfs right?)")]
    NotFound {
        /// What was opened.
        path: PathBuf,
    },
    /// Permission denied.
    #[error("{path}: permission denied")]
    PermissionDenied {
        /// What was opened.
        path: PathBuf,
    },
    /// Any other I/O error, with the path.
    #[error("{path}: {source}")]
    Io {
        /// What was opened or read.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A file whose text is not what the kernel writes there.
    #[error("{path}: {reason}")]
    Malformed {
        /// What was read.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The kernel refused or failed a request.
    #[error("{what}: {source}")]
    Kernel {
        /// The request.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

impl SourceError {
    /// Classifies an I/O error met at `path`.
    pub fn at(path: &Path, source: io::Error) -> SourceError {
        let path = path.to_path_buf();
        match source.kind() {
            io::ErrorKind::NotFound => SourceError::NotFound { path },
            io::ErrorKind::PermissionDenied => SourceError::PermissionDenied { path },
            _ => SourceError::Io { path, source },
        }
    }
}

/// True when `procfs` shows the network namespace this process runs in, so that live
/// kernel interfaces (getifaddrs, netlink) describe the same sockets as its files. A
/// fixture tree has no `self/ns/net` and is read from its files alone.
pub fn is_own_namespace(procfs: &Path) -> bool {
    let theirs = std::fs::read_link(procfs.join("self/ns/net"));
    let ours = std::fs::read_link("/proc/self/ns/net");
    matches!((theirs, ours), (Ok(a), Ok(b)) if a == b)
}
