//! The host's interfaces and addresses, for the `interface` label.
//!
//! In the exporter's own network namespace the kernel's address list (getifaddrs, one
//! netlink dump) is exact. A procfs tree from elsewhere (fixtures) carries no IPv4
//! address list, so IPv4 falls back to its connected routes (`net/route`): a socket's
//! local address is an address of the host, and the connected subnet holding it names
//! the interface. IPv6 addresses are listed exactly in `net/if_inet6` either way.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::Path;

use nix::ifaddrs::getifaddrs;

use super::SourceError;
use crate::iface::{interface_of_label, InterfaceTable, InterfaceTableBuilder};
use crate::parse::proc_net::ByteOrder;
use crate::parse::route;

/// Reads the table from the live kernel (`live`) or from the files under `procfs`.
pub fn read(procfs: &Path, live: bool) -> Result<InterfaceTable, SourceError> {
    if live {
        read_live()
    } else {
        read_files(procfs)
    }
}

/// The kernel's address list (getifaddrs, which asks over NETLINK_ROUTE).
pub fn read_live() -> Result<InterfaceTable, SourceError> {
    let addrs: Vec<_> =
        getifaddrs().map_err(|e| SourceError::Kernel { what: "getifaddrs", source: io::Error::from(e) })?.collect();
    let links: Vec<&str> = addrs
        .iter()
        .filter(|a| a.address.as_ref().is_some_and(|s| s.as_link_addr().is_some()))
        .map(|a| a.interface_name.as_str())
        .collect();
    let mut table = InterfaceTableBuilder::default();
    for a in &addrs {
        let Some(addr) = a.address else { continue };
        if let Some(link) = addr.as_link_addr() {
            table.index(link.ifindex() as u32, &a.interface_name);
        } else if let Some(v4) = addr.as_sockaddr_in() {
            // IPv4 addresses carry their label (`eth0:1`); the label is not an interface.
            table.address(v4.ip().into(), interface_of_label(&a.interface_name, links.iter().copied()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            table.address(v6.ip().into(), &a.interface_name);
        }
    }
    Ok(table.build())
}

/// The files under `<procfs>/net`: exact for IPv6, by connected route for IPv4.
pub fn read_files(procfs: &Path) -> Result<InterfaceTable, SourceError> {
    let mut table = InterfaceTableBuilder::default();
    let net = procfs.join("net");
    if let Some(file) = open_optional(&net.join("if_inet6"))? {
        let (addrs, _) =
            route::parse_if_inet6(BufReader::new(file)).map_err(|e| SourceError::at(&net.join("if_inet6"), e))?;
        for a in addrs {
            table.address(a.address.into(), &a.interface);
            table.index(a.index, &a.interface);
        }
    }
    if let Some(file) = open_optional(&net.join("route"))? {
        let (routes, _) = route::parse_routes(BufReader::new(file), ByteOrder::NATIVE)
            .map_err(|e| SourceError::at(&net.join("route"), e))?;
        for r in routes {
            table.connected_route(r.network, r.prefix_len, r.metric, &r.interface);
        }
    }
    Ok(table.build())
}

fn open_optional(path: &Path) -> Result<Option<File>, SourceError> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SourceError::at(path, e)),
    }
}
