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
        // One line: the file and the problem; the chain joined by ": ". Control characters from
        // file names or file contents are escaped and the line is capped.
        eprintln!("error: {}", lowbit::escape::line(&format!("{e:#}").replace('\n', " ")));
        std::process::exit(2);
    }
}
