//! `pollux-gen-docs ROOT`: writes the manual pages and shell completions of `polluxd`,
//! `polluxctl` and `pollux-agent` under ROOT, at the paths Debian installs them to
//! (`usr/share/man/man1`, `usr/share/bash-completion/completions`,
//! `usr/share/zsh/vendor-completions`, `usr/share/fish/vendor_completions.d`).
//!
//! They are rendered from the clap definitions the binaries parse with
//! (`pollux_control::cli`, `pollux_agent::cli`), so the package never documents an option
//! the binary does not have. `packaging/build-deb.sh` runs it; the pages are left
//! uncompressed here and gzipped there.

use std::fs;
use std::io;
use std::path::Path;
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(root), None) = (args.next(), args.next()) else {
        eprintln!("usage: pollux-gen-docs ROOT");
        return ExitCode::from(2);
    };
    let commands = [
        pollux_control::cli::polluxd::Args::command(),
        pollux_control::cli::polluxctl::Cli::command(),
        pollux_agent::cli::Cli::command(),
    ];
    for cmd in commands {
        if let Err(e) = write_all(Path::new(&root), cmd) {
            eprintln!("pollux-gen-docs: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn write_all(root: &Path, mut cmd: clap::Command) -> io::Result<()> {
    let name = cmd.get_name().to_owned();
    // Subcommands' names and versions are filled in only once the command is built.
    cmd.build();
    let man1 = root.join("usr/share/man/man1");
    fs::create_dir_all(&man1)?;
    write_man_pages(&man1, &cmd, &name)?;
    let completions = [
        (
            Shell::Bash,
            "usr/share/bash-completion/completions",
            name.clone(),
        ),
        (
            Shell::Zsh,
            "usr/share/zsh/vendor-completions",
            format!("_{name}"),
        ),
        (
            Shell::Fish,
            "usr/share/fish/vendor_completions.d",
            format!("{name}.fish"),
        ),
    ];
    for (shell, dir, file) in completions {
        let dir = root.join(dir);
        fs::create_dir_all(&dir)?;
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cmd, &name, &mut out);
        fs::write(dir.join(file), out)?;
    }
    Ok(())
}

/// One page per command and per subcommand, named as git names its own
/// (`polluxctl-show-ports.1`), so `man polluxctl-apply` finds the options of `apply`.
fn write_man_pages(man1: &Path, cmd: &clap::Command, page: &str) -> io::Result<()> {
    let mut out = Vec::new();
    // clap takes a command's name as `&'static str` (without its `string` feature, which
    // would rebuild clap for the whole workspace): a few short names, kept until exit.
    let name: &'static str = Box::leak(page.to_owned().into_boxed_str());
    clap_mangen::Man::new(cmd.clone().name(name)).render(&mut out)?;
    fs::write(man1.join(format!("{page}.1")), out)?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        write_man_pages(man1, sub, &format!("{page}-{}", sub.get_name()))?;
    }
    Ok(())
}
