//! ctnetlink messages: `parse::conntrack::decode_batch`, and the translation table fed
//! what it decodes.
//!
//! Checks, besides never panicking: a decoded entry is TCP with both tuples whole, and
//! a table given any sequence of entries keeps its budget's count equal to what it
//! holds, never above the bound.

#![no_main]

use std::time::{Duration, Instant};

use conn_exporter::classify::Direction;
use conn_exporter::nat::table::{Budget, Table, GRACE};
use conn_exporter::parse::conntrack::{decode_batch, Event};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut events = Vec::new();
    let _ = decode_batch(data, |e| events.push(e));
    let (mut table, mut budget, now) = (Table::default(), Budget::new(8), Instant::now());
    for e in &events {
        table.apply(*e, now, &mut budget);
        let f = match e {
            Event::Exists(f) | Event::Destroyed(f) => f,
        };
        let _ = table.translate(Direction::Outbound, &f.original.src, &f.original.dst);
        let _ = table.translate(Direction::Inbound, &f.reply.src, &f.reply.dst);
        assert_eq!(budget.held, table.len());
        assert!(budget.held <= budget.max);
    }
    table.expire(now + GRACE + Duration::from_secs(1), &mut budget);
    assert_eq!(budget.held, table.len());
});
