//! Sockets from `<procfs>/net/tcp` and `<procfs>/net/tcp6`.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::Path;

use super::SourceError;
use crate::model::{Connection, Family};
use crate::parse::proc_net::{self, ByteOrder, ParseReport};

/// The file name under `<procfs>/net` for a family; also the `file` label of parse errors.
pub fn file_name(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "tcp",
        Family::Ipv6 => "tcp6",
    }
}

/// Reads one family's sockets into `sink`.
///
/// `Ok(None)` when `tcp6` does not exist: IPv6 disabled is a normal host, not an error.
pub fn read_tcp(
    procfs: &Path,
    family: Family,
    sink: impl FnMut(Connection),
) -> Result<Option<ParseReport>, SourceError> {
    let path = procfs.join("net").join(file_name(family));
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound && family == Family::Ipv6 => return Ok(None),
        Err(e) => return Err(SourceError::at(&path, e)),
    };
    // /proc hands out at most a page per read; a large buffer only costs copies.
    let reader = BufReader::with_capacity(64 * 1024, file);
    proc_net::parse_tcp(reader, family, ByteOrder::NATIVE, sink).map(Some).map_err(|e| SourceError::at(&path, e))
}
