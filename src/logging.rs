//! Log lines in logfmt or JSON on standard error, and a limiter for warnings a client
//! could otherwise trigger at will.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// `--log.format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `ts=… level=… msg="…"`
    Logfmt,
    /// One JSON object per line.
    Json,
}

struct Logger {
    format: LogFormat,
    level: LevelFilter,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level && metadata.target().starts_with("conn_exporter")
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_line(self.format, SystemTime::now(), record.level(), &record.args().to_string());
        // A closed stderr must not take the exporter down: the line is lost, nothing else.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Formats one log line, newline included.
pub fn format_line(format: LogFormat, now: SystemTime, level: Level, msg: &str) -> String {
    let ts = humantime::format_rfc3339_millis(now);
    let level = level.as_str().to_ascii_lowercase();
    match format {
        LogFormat::Logfmt => {
            let mut quoted = String::with_capacity(msg.len() + 2);
            quoted.push('"');
            for c in msg.chars() {
                match c {
                    '"' => quoted.push_str("\\\""),
                    '\\' => quoted.push_str("\\\\"),
                    '\n' => quoted.push_str("\\n"),
                    c => quoted.push(c),
                }
            }
            quoted.push('"');
            format!("ts={ts} level={level} msg={quoted}\n")
        }
        LogFormat::Json => format!("{}\n", serde_json::json!({"ts": ts.to_string(), "level": level, "msg": msg})),
    }
}

/// Installs the logger; call once, first thing in `main`.
pub fn init(format: LogFormat, level: LevelFilter) {
    if log::set_boxed_logger(Box::new(Logger { format, level })).is_ok() {
        log::set_max_level(level);
    }
}

/// Lets one event through per period and drops the rest, so a client that can cause a
/// warning at will cannot flood the log.
#[derive(Debug)]
pub struct RateLimit {
    period_ms: u64,
    origin: Instant,
    next_ms: AtomicU64,
}

impl RateLimit {
    /// A limiter letting one event through per `period`.
    pub fn new(period: Duration) -> RateLimit {
        RateLimit { period_ms: period.as_millis() as u64, origin: Instant::now(), next_ms: AtomicU64::new(0) }
    }

    /// True when this event may be logged.
    pub fn allow(&self) -> bool {
        let now = self.origin.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        now >= next
            && self.next_ms.compare_exchange(next, now + self.period_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logfmt_quotes_and_json_is_json() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(
            format_line(LogFormat::Logfmt, t, Level::Warn, "bad \"x\"\nnext"),
            "ts=2027-01-15T08:00:00.000Z level=warn msg=\"bad \\\"x\\\"\\nnext\"\n"
        );
        let v: serde_json::Value = serde_json::from_str(&format_line(LogFormat::Json, t, Level::Info, "a\"b")).unwrap();
        assert_eq!(v["msg"], "a\"b");
        assert_eq!(v["level"], "info");
    }

    #[test]
    fn rate_limit_lets_the_first_through_then_waits() {
        let r = RateLimit::new(Duration::from_secs(3600));
        assert!(r.allow());
        assert!(!r.allow());
        let open = RateLimit::new(Duration::ZERO);
        assert!(open.allow());
        assert!(open.allow());
    }
}
