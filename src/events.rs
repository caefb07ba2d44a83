//! What the library tells its caller while it works: the progress of a long stage, warnings and
//! notes. The library never prints; the binary implements [`Events`] on stderr
//! (`cli::StderrEvents`), a library caller can drop them ([`Quiet`]) or keep them ([`Collect`]).

/// The receiver of a long-running call's reports.
pub trait Events {
    /// `done` of `total` steps of the stage `what` are finished.
    fn progress(&mut self, done: usize, total: usize, what: &str) {
        let _ = (done, total, what);
    }
    /// Something the user should know that does not stop the work (the binary prints
    /// `warning: {msg}`).
    fn warn(&mut self, msg: &str);
    /// A line of information (the binary prints it as it is).
    fn note(&mut self, msg: &str);
}

/// Drops every report.
pub struct Quiet;

impl Events for Quiet {
    fn warn(&mut self, _: &str) {}
    fn note(&mut self, _: &str) {}
}

/// Keeps the warnings and notes, in order (progress is dropped).
#[derive(Clone, Debug, Default)]
pub struct Collect {
    pub warnings: Vec<String>,
    pub notes: Vec<String>,
}

impl Events for Collect {
    fn warn(&mut self, msg: &str) {
        self.warnings.push(msg.to_string());
    }
    fn note(&mut self, msg: &str) {
        self.notes.push(msg.to_string());
    }
}
