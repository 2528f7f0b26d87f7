//! The `/proc/<pid>` files: the exporter's own `stat` and `limits` and `/proc/stat` for the
//! `process_*` metrics, and the inode links under `fd/` and `ns/`.

/// Figures from `/proc/self/stat`, in the kernel's units (ticks, bytes, pages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// User time, clock ticks.
    pub utime: u64,
    /// System time, clock ticks.
    pub stime: u64,
    /// Start time after boot, clock ticks.
    pub starttime: u64,
    /// Virtual memory size, bytes.
    pub vsize: u64,
    /// Resident set size, pages.
    pub rss_pages: u64,
}

/// Parses `/proc/<pid>/stat`. The command name may hold spaces and parentheses, so
/// fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state) of proc(5).
    let field = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(ProcStat {
        utime: field(14)?,
        stime: field(15)?,
        starttime: field(22)?,
        vsize: field(23)?,
        rss_pages: field(24)?,
    })
}

/// The soft limit on open files from `/proc/<pid>/limits`; `None` when unlimited or absent.
pub fn parse_max_open_files(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// Boot time in seconds since the epoch, from `/proc/stat`.
pub fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

/// The inode in a `/proc/<pid>/fd` or `/proc/<pid>/ns` link of the given kind
/// (`socket:[4242]`, `net:[4026531840]`).
pub fn link_inode(link: &str, kind: &str) -> Option<u64> {
    link.strip_prefix(kind)?.strip_prefix(":[")?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_a_hostile_command_name() {
        let text = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 300 0 0 0 17 9 0 0 20 0 3 0 123456 9437184 512 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let s = parse_stat(text).unwrap();
        assert_eq!((s.utime, s.stime, s.starttime, s.vsize, s.rss_pages), (17, 9, 123456, 9437184, 512));
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn limits_and_boot_time() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \nMax open files            20000                20000                files     \n";
        assert_eq!(parse_max_open_files(limits), Some(20000));
        assert_eq!(parse_max_open_files("Max open files unlimited unlimited files"), None);
        assert_eq!(parse_boot_time("cpu 1 2\nbtime 1764400000\n"), Some(1764400000));
    }
}
