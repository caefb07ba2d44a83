use clap::error::ErrorKind;
use clap::Parser;

fn main() {
    // Die quietly on a closed pipe (`lowbit inspect | head`) like other command-line tools.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match lowbit::cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            e.exit()
        }
        Err(e) => {
            // Usage errors in the same one-line form as every other error (exit 2); the usage
            // block and clap's "For more information" line are replaced by a pointer to --help.
            let text = e.render().to_string();
            let body: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .filter(|l| !l.is_empty())
                .collect();
            let cmd = <lowbit::cli::Cli as clap::CommandFactory>::command();
            let sub = std::env::args()
                .nth(1)
                .filter(|a| cmd.get_subcommands().any(|c| c.get_name() == a))
                .map(|a| format!(" {a}"))
                .unwrap_or_default();
            eprintln!("{} (see lowbit{sub} --help)", body.join(" ").trim_end_matches(':'));
            std::process::exit(2);
        }
    };
    if let Err(e) = lowbit::cli::run(cli) {
        // One line: the file and the problem; the chain joined by ": ". Control characters from
        // file names or file contents are escaped and the line is capped.
        eprintln!("error: {}", lowbit::escape::line(&format!("{e:#}").replace('\n', " ")));
        std::process::exit(2);
    }
}
