//! `network_connection_states`: exact socket counts by family, interface and state.

use std::io::{self, Write};

use crate::exposition::Encoder;
use crate::snapshot::Snapshot;

/// Writes the family from the snapshot's counts.
pub fn write<W: Write>(enc: &mut Encoder<W>, snap: &Snapshot) -> io::Result<()> {
    snap.counts.write(enc, &snap.table)
}
