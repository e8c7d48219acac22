use clap::Parser;

fn main() {
    let cli = annexfs::cli::Cli::parse();
    annexfs::logging::init(cli.verbose);
    let code = match annexfs::cmd::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("annexfs: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
