//! `annexfs generate man|completions DIR`: man pages (clap_mangen, one per command) and shell
//! completions (clap_complete: bash, zsh, fish), written for the packages.

use crate::cli::{Cli, GenerateArgs};
use anyhow::Context;
use clap::CommandFactory;
use std::path::Path;

fn man_pages(cmd: &clap::Command, prefix: &str, dir: &Path) -> anyhow::Result<()> {
    let name = if prefix.is_empty() { cmd.get_name().to_string() } else { format!("{prefix}-{}", cmd.get_name()) };
    let page = cmd.clone().name(name.clone());
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, out).with_context(|| format!("write {}", path.display()))?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        man_pages(sub, &name, dir)?;
    }
    Ok(())
}

pub fn run(args: &GenerateArgs) -> anyhow::Result<i32> {
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    let mut cmd = Cli::command();
    cmd.build();
    match args.what.as_str() {
        "man" => man_pages(&cmd, "", &args.dir)?,
        _ => {
            use clap_complete::Shell;
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                clap_complete::generate_to(shell, &mut cmd, "annexfs", &args.dir)?;
            }
        }
    }
    Ok(0)
}
