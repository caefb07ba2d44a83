use clap::Parser;

fn main() {
    let cli = lowbit::cli::Cli::parse();
    if let Err(e) = lowbit::cli::run(cli) {
        // One line: the file and the problem; the chain joined by ": ".
        eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
        std::process::exit(2);
    }
}
