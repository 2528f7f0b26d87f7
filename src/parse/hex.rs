//! Hexadecimal fields as /proc writes them, decoded without allocation.

/// The value of an ASCII hex digit, or `None`.
fn digit(b: u8) -> Option<u32> {
    match b {
        b'0'..=b'9' => Some(u32::from(b - b'0')),
        b'a'..=b'f' => Some(u32::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u32::from(b - b'A' + 10)),
        _ => None,
    }
}

/// Decodes 1 to 8 hex digits into a `u32`; `None` for an empty, overlong or non-hex field.
pub fn parse_u32(field: &[u8]) -> Option<u32> {
    if field.is_empty() || field.len() > 8 {
        return None;
    }
    field.iter().try_fold(0u32, |acc, &b| Some((acc << 4) | digit(b)?))
}

#[cfg(test)]
mod tests {
    use super::parse_u32;

    #[test]
    fn decodes_both_cases_and_rejects_the_rest() {
        assert_eq!(parse_u32(b"0A"), Some(10));
        assert_eq!(parse_u32(b"ffffFFFF"), Some(u32::MAX));
        assert_eq!(parse_u32(b""), None);
        assert_eq!(parse_u32(b"123456789"), None);
        assert_eq!(parse_u32(b"12G4"), None);
        assert_eq!(parse_u32(b"-1"), None);
    }
}
