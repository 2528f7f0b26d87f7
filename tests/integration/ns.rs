//! A network namespace made by a test, removed on drop, and an exporter run inside it:
//! sockets, addresses and `ss` of that namespace only, so no other test's sockets count.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

use crate::util::{binary, require_tool, run, Exporter};

pub struct Netns(pub String);

impl Netns {
    pub fn new(name: &str) -> Netns {
        let ip = require_tool("ip");
        let _ = run(Command::new(&ip).args(["netns", "del", name]));
        let (code, _, err) = run(Command::new(&ip).args(["netns", "add", name]));
        assert_eq!(code, 0, "ip netns add: {err}");
        let ns = Netns(name.to_owned());
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside; panics when it fails.
    pub fn exec(&self, args: &[&str]) -> String {
        let (code, out, err) = run(Command::new("ip").args(["netns", "exec", &self.0]).args(args));
        assert_eq!(code, 0, "{args:?}: {err}");
        out
    }

    /// The exporter, started inside with extra flags.
    pub fn exporter(&self, args: &[&str]) -> Exporter {
        Exporter::start_with(&["ip", "netns", "exec", &self.0, binary()], args)
    }

    /// A scrape made from inside (the exporter listens on the namespace's loopback).
    pub fn scrape(&self, e: &Exporter, query: &str) -> String {
        self.exec(&["curl", "-sSf", &format!("http://{}/metrics{query}", e.addr)])
    }

    /// Starts a Python script inside and waits for its first line (what it made); the
    /// script holds its sockets until [`Held`] is dropped.
    pub fn hold(&self, script: &str, args: &[&str]) -> (Held, String) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.0, "python3", script])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "{script} made nothing");
        (Held(child), line)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(Command::new("ip").args(["netns", "del", &self.0]));
    }
}

impl Held {
    /// Writes a line to the script and waits for the next line it prints.
    pub fn say(&mut self, line: &str) -> String {
        let stdin = self.0.stdin.as_mut().unwrap();
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
        let mut answer = String::new();
        BufReader::new(self.0.stdout.as_mut().unwrap()).read_line(&mut answer).unwrap();
        assert!(!answer.is_empty(), "the script ended instead of answering {line:?}");
        answer
    }
}

/// A script holding sockets; on drop, closes its standard input (which lets the test's
/// scripts go) and sends SIGTERM (which stops bench/loadgen.py), then waits for it.
pub struct Held(Child);

impl Held {
    /// Sends the script one command line and waits for its one-line answer.
    pub fn command(&mut self, line: &str) -> String {
        let stdin = self.0.stdin.as_mut().expect("the script's stdin is open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        let mut answer = String::new();
        BufReader::new(self.0.stdout.as_mut().unwrap()).read_line(&mut answer).unwrap();
        assert!(!answer.is_empty(), "the script ended at {line:?}");
        answer
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.0.stdin.take() {
            let _ = stdin.flush();
        }
        let _ = run(Command::new("kill").args(["-TERM", &self.0.id().to_string()]));
        let _ = self.0.wait();
    }
}
