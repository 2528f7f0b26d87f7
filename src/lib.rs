//! conn-exporter reports every TCP connection of a Linux host, IPv4 and IPv6, as
//! Prometheus metrics: one series per socket and exact counts by state and interface.
//!
//! Data flows one way: [`source`] reads the kernel (netlink or the files under
//! `--path.procfs`), [`parse`] turns bytes into the typed [`model`], [`iface`] names
//! interfaces, [`snapshot`] holds one read shared by concurrent scrapes, [`classify`]
//! sorts sockets into peers, [`metrics`] writes one module per family, [`exporter`]
//! runs a scrape, [`exposition`] encodes and [`http`] serves. [`config`] turns flags into
//! a checked configuration.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod classify;
pub mod config;
pub mod exporter;
pub mod exposition;
pub mod http;
pub mod iface;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod nat;
pub mod netns;
pub mod owners;
pub mod parse;
pub mod quality;
pub mod snapshot;
pub mod source;
pub mod webconfig;
