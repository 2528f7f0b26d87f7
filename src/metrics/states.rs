//! `network_connection_states`: exact socket counts by family, interface and state.

use std::io::{self, Write};

use crate::exposition::{Encoder, Kind};
use crate::snapshot::Snapshot;

/// Writes the family from the snapshot's counts.
pub fn write<W: Write>(enc: &mut Encoder<W>, snap: &Snapshot) -> io::Result<()> {
    if snap.spaces.is_empty() {
        return snap.counts.write(enc, &snap.table);
    }
    enc.family(
        "network_connection_states",
        Kind::Gauge,
        "Number of TCP sockets by family, interface and state; never truncated by a series limit.",
    )?;
    for part in snap.parts() {
        part.counts.write_samples(enc, part.table, part.ns)?;
    }
    Ok(())
}
