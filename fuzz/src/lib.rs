//! Helpers shared by the fuzz targets: the kernel's side of the formats the exporter reads,
//! written independently of the exporter's code, so a target can check a decoder against it.

use std::net::IpAddr;

use conn_exporter::parse::proc_net::ByteOrder;

/// An endpoint as `/proc/net/tcp{,6}` prints it: each 32-bit word of the address as the
/// machine holds it in memory, with `%08X`, then `:%04X` of the port.
pub fn kernel_hex_endpoint(ip: IpAddr, port: u16, order: ByteOrder) -> String {
    let word = |bytes: &[u8]| {
        let bytes = [bytes[0], bytes[1], bytes[2], bytes[3]];
        match order {
            ByteOrder::Little => u32::from_le_bytes(bytes),
            ByteOrder::Big => u32::from_be_bytes(bytes),
        }
    };
    let mut out = String::with_capacity(37);
    let octets: Vec<u8> = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    for chunk in octets.chunks_exact(4) {
        out.push_str(&format!("{:08X}", word(chunk)));
    }
    out.push_str(&format!(":{port:04X}"));
    out
}

/// Reads one escaped label value of the text formats, from just after its opening quote:
/// returns the value and the bytes consumed, closing quote included. `None` when the value
/// is not closed or holds an escape the formats do not define.
pub fn unescape_label_value(escaped: &[u8]) -> Option<(String, usize)> {
    let mut value = Vec::new();
    let mut i = 0;
    while i < escaped.len() {
        match escaped[i] {
            b'"' => return Some((String::from_utf8(value).ok()?, i + 1)),
            b'\\' => {
                value.push(match escaped.get(i + 1)? {
                    b'\\' => b'\\',
                    b'"' => b'"',
                    b'n' => b'\n',
                    _ => return None,
                });
                i += 2;
            }
            b => {
                value.push(b);
                i += 1;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_hex_matches_the_issue_vectors() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(kernel_hex_endpoint(ip("127.0.0.1"), 0x1234, ByteOrder::Little), "0100007F:1234");
        assert_eq!(kernel_hex_endpoint(ip("127.0.0.1"), 22, ByteOrder::Big), "7F000001:0016");
        assert_eq!(
            kernel_hex_endpoint(ip("2a00:1450:4001:814::200e"), 80, ByteOrder::Little),
            "5014002A14080140000000000E200000:0050"
        );
    }

    #[test]
    fn unescapes_what_the_encoder_escapes() {
        assert_eq!(unescape_label_value(br#"a\"b\\c\nd"} 1"#), Some(("a\"b\\c\nd".to_owned(), 11)));
        assert_eq!(unescape_label_value(br#"open"#), None);
        assert_eq!(unescape_label_value(br#"\t""#), None);
    }
}
