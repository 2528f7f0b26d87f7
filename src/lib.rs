//! conn-exporter reports every TCP connection of a Linux host, IPv4 and IPv6, as
//! Prometheus metrics: one series per socket and exact counts by state and interface.
//!
//! Data flows one way: [`source`] reads the kernel (files under `--path.procfs`),
//! [`parse`] turns bytes into the typed [`model`], [`iface`] names interfaces,
//! [`collector`] builds metric families, [`exposition`] encodes them and [`http`] serves
//! them. [`config`] turns flags into a checked configuration.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod collector;
pub mod config;
pub mod exposition;
pub mod http;
pub mod iface;
pub mod logging;
pub mod model;
pub mod parse;
pub mod source;
pub mod webconfig;
