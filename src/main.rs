use clap::Parser;

fn main() {
    let cli = annexfs::cli::Cli::parse();
    let daemon = matches!(cli.command, annexfs::cli::Command::Mount(_));
    annexfs::logging::init(cli.verbose, daemon);
    let code = match annexfs::cmd::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("annexfs: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
