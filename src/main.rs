use clap::Parser;

fn main() {
    // Die quietly on a closed pipe (`lowbit inspect | head`) like other command-line tools.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = lowbit::cli::Cli::parse();
    if let Err(e) = lowbit::cli::run(cli) {
        // One line: the file and the problem; the chain joined by ": ".
        eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
        std::process::exit(2);
    }
}
