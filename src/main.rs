use clap::Parser;

fn main() {
    let cli = annexfs::cli::Cli::parse();
    use std::io::IsTerminal;
    let (daemon, background) = match &cli.command {
        annexfs::cli::Command::Mount(m) => (true, !m.foreground),
        _ => (false, false),
    };
    // A background daemon's stderr becomes its log file: no colour codes there.
    let ansi = std::io::stderr().is_terminal() && !background;
    annexfs::logging::init(cli.verbose, daemon, ansi);
    let code = match annexfs::cmd::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("annexfs: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
