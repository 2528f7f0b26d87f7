//! `conn-exporter hash-password`: the hash it prints is checked by two implementations
//! that are not ours (the `bcrypt` crate and Apache's `htpasswd`), and by the exporter
//! itself serving basic auth with it.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::util::{binary, require_tool, run, Exporter};

/// Runs `conn-exporter hash-password ARGS` with `input` on a pipe: (exit code, stdout, stderr).
fn hash_password(args: &[&str], input: &[u8]) -> (i32, String, String) {
    let mut child = Command::new(binary())
        .arg("hash-password")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A child that refuses its arguments may exit before reading: a broken pipe then.
    if let Err(e) = child.stdin.take().unwrap().write_all(input) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `htpasswd -vb` on a one-user file: true when it says the password matches.
fn htpasswd_verifies(hash: &str, password: &str) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users");
    std::fs::write(&file, format!("prometheus:{hash}\n")).unwrap();
    let (code, _, _) = run(Command::new(require_tool("htpasswd")).arg("-vb").arg(&file).args(["prometheus", password]));
    code == 0
}

#[test]
fn printed_hash_verifies_with_bcrypt_and_htpasswd() {
    for (input, password) in [
        (&b"s3cret\n"[..], "s3cret"),
        (b"no newline", "no newline"),
        (b"crlf\r\n", "crlf"),
        (b"two newlines\n\n", "two newlines\n"),
        (b" spaces kept \n", " spaces kept "),
    ] {
        let (code, out, err) = hash_password(&[], input);
        assert_eq!(code, 0, "{input:?}: {err}");
        let hash = out.trim_end_matches('\n');
        assert!(!hash.contains('\n'), "one line: {out:?}");
        assert!(hash.starts_with("$2y$10$") && hash.len() == 60, "{hash}");
        assert!(bcrypt::verify(password, hash).unwrap(), "{input:?} -> {hash}");
        assert!(!bcrypt::verify(format!("{password}x"), hash).unwrap());
        assert!(htpasswd_verifies(hash, password), "htpasswd does not accept {hash} for {password:?}");
        assert!(!htpasswd_verifies(hash, "wrong"), "htpasswd accepts a wrong password for {hash}");
    }
    let (code, out, err) = hash_password(&["--cost", "5"], b"s3cret\n");
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("$2y$05$"), "{out}");
    assert!(bcrypt::verify("s3cret", out.trim()).unwrap());
}

#[test]
fn empty_or_too_long_password_and_bad_cost_exit_2() {
    for input in [&b""[..], b"\n", b"\r\n"] {
        let (code, out, err) = hash_password(&[], input);
        assert_eq!(code, 2, "{input:?}: {out}{err}");
        assert!(out.is_empty(), "no hash for an empty password: {out}");
        assert!(err.contains("empty password"), "{err}");
    }
    let (code, out, err) = hash_password(&[], &[b'a'; 73]);
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    assert!(err.contains("72"), "{err}");
    let (code, _, err) = hash_password(&["--cost", "3"], b"s3cret\n");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--cost"), "{err}");
}

#[test]
fn exporter_accepts_the_hash_and_flat_flags_still_work() {
    let (code, hash, err) = hash_password(&["--cost", "4"], b"s3cret\n");
    assert_eq!(code, 0, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("web.yml");
    std::fs::write(&config, format!("basic_auth_users:\n  prometheus: {}\n", hash.trim())).unwrap();
    // No subcommand: the flags as always.
    let e = Exporter::start(&["--web.config.file", config.to_str().unwrap(), "--no-collector.connections"]);
    let basic = |user_pass: &str| {
        use base64::Engine;
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_pass))
    };
    let get = |auth: &str| crate::util::http_get(e.addr, "/metrics", &[("Authorization", auth)]).status;
    assert_eq!(get(&basic("prometheus:s3cret")), 200);
    assert_eq!(get(&basic("prometheus:wrong")), 401);
    let (code, out, _) = run(Command::new(binary()).arg("--help"));
    assert_eq!(code, 0);
    assert!(out.contains("hash-password") && out.contains("--web.listen-address"), "{out}");
}

/// Regression: `hash-password --help` said `Usage: conn-exporter [OPTIONS]`, a command
/// line that starts the exporter.
#[test]
fn help_and_errors_show_the_subcommand_usage() {
    let (code, out, err) = run(Command::new(binary()).args(["hash-password", "--help"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l == "Usage: conn-exporter hash-password [OPTIONS]"), "{out}");
    let (code, _, err) = hash_password(&["--bogus"], b"s3cret\n");
    assert_eq!(code, 2);
    assert!(err.contains("Usage: conn-exporter hash-password [OPTIONS]"), "{err}");
}

/// On a terminal: a prompt, the password typed is not echoed, one line is read.
#[test]
fn from_a_terminal_the_password_is_not_echoed() {
    // A real pseudo-terminal, from Python's pty module: the exporter sees a tty on stdin.
    let script = r#"
import os, pty, sys
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], [sys.argv[1], "hash-password", "--cost", "4"])
out = b""
while b"Password:" not in out:
    out += os.read(fd, 1024)
os.write(fd, b"s3cret\n")
while True:
    try:
        chunk = os.read(fd, 1024)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode())
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let (code, out, err) = run(Command::new(require_tool("python3")).args(["-c", script, binary()]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Password:"), "{out:?}");
    assert!(!out.contains("s3cret"), "the password was echoed: {out:?}");
    let hash = out.lines().map(str::trim).find(|l| l.starts_with("$2y$04$")).unwrap_or_else(|| panic!("{out:?}"));
    assert!(bcrypt::verify("s3cret", hash).unwrap(), "{hash}");
}
