//! Writes the man pages and shell completions of `conn-exporter` from its clap definitions
//! (`Args::command()`), so that neither can drift from `--help`. The Debian package ships
//! what this writes (`deploy/debian/build-deb.sh` runs it before `cargo deb`).
//!
//! ```text
//! cargo run --example generate-assets -- OUT_DIR
//! ```
//! writes `OUT_DIR/man/conn-exporter.1` (and one page per subcommand,
//! `conn-exporter-<name>.1`) and `OUT_DIR/completions/{conn-exporter.bash,_conn-exporter,conn-exporter.fish}`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Command, CommandFactory};
use clap_complete::Shell;

use conn_exporter::config::Args;

fn main() -> ExitCode {
    let mut argv = std::env::args_os().skip(1);
    let (Some(out), None) = (argv.next(), argv.next()) else {
        eprintln!("usage: generate-assets OUT_DIR");
        return ExitCode::from(2);
    };
    match generate(&PathBuf::from(out)) {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("generate-assets: {e}");
            ExitCode::from(1)
        }
    }
}

fn generate(out: &Path) -> io::Result<Vec<PathBuf>> {
    let mut cmd = Args::command();
    // Fills in what derive leaves lazy (version text on subcommands, help flags), so the
    // pages list exactly the arguments the parser accepts.
    cmd.build();
    let mut written = Vec::new();
    let man = out.join("man");
    fs::create_dir_all(&man)?;
    man_pages(&cmd, cmd.get_name(), &man, &mut written)?;
    let completions = out.join("completions");
    fs::create_dir_all(&completions)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(shell, &mut cmd.clone(), "conn-exporter", &completions)?;
        written.push(path);
    }
    Ok(written)
}

/// One page for the command and one per subcommand (`conn-exporter-hash-password.1`), as
/// `git` and `cargo` ship them; hidden subcommands and `help` get none.
fn man_pages(cmd: &Command, page_name: &str, dir: &Path, written: &mut Vec<PathBuf>) -> io::Result<()> {
    let path = dir.join(format!("{page_name}.1"));
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    fs::write(&path, page)?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        let name = format!("{page_name}-{}", sub.get_name());
        // The page's title and NAME; the synopsis keeps the bin name `conn-exporter <sub>`.
        let sub = sub.clone().display_name(name.clone());
        man_pages(&sub, &name, dir, written)?;
    }
    Ok(())
}
