//! The binary's reports on stderr: progress bars (plain lines in a log) and the library's
//! [`Events`] (warnings as `warning: …`, notes as they are).

use crate::events::Events;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Progress of a long stage on stderr: an indicatif bar on a terminal; in a log (CI, scripts,
/// `2> file`) one plain line per finished step, at most one every [`LOG_EVERY`] and always the
/// last.
pub enum Progress {
    Bar(ProgressBar),
    Log { msg: String, len: u64, start: Instant, last: Option<Instant>, pos: u64 },
}

/// Minimum time between two plain progress lines.
const LOG_EVERY: Duration = Duration::from_secs(10);

pub fn progress(len: u64, msg: &str) -> Progress {
    progress_styled(len, msg, "{msg} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}")
}

/// A progress bar counted in tokens, with the rate (tokens/s) on a terminal.
pub fn progress_tokens(len: u64, msg: &str) -> Progress {
    progress_styled(len, msg, "{msg} [{bar:30}] {human_pos}/{human_len} {per_sec} {elapsed_precise} eta {eta}")
}

fn progress_styled(len: u64, msg: &str, template: &str) -> Progress {
    if !std::io::stderr().is_terminal() {
        return Progress::Log { msg: msg.to_string(), len, start: Instant::now(), last: None, pos: u64::MAX };
    }
    let pb = ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stderr());
    pb.set_style(ProgressStyle::with_template(template).unwrap().progress_chars("=> "));
    pb.set_message(msg.to_string());
    Progress::Bar(pb)
}

impl Progress {
    pub fn set(&mut self, pos: u64, msg: &str) {
        match self {
            Progress::Bar(pb) => {
                pb.set_message(msg.to_string());
                pb.set_position(pos);
            }
            Progress::Log { msg: m, len, start, last, pos: p } => {
                // Nothing to report before the first step is done.
                let changed = pos > 0 && (*m != msg || *p != pos);
                let due = last.is_none_or(|t| t.elapsed() >= LOG_EVERY) || pos >= *len;
                if changed && due {
                    let t = start.elapsed().as_secs_f64();
                    if pos < *len {
                        // Remaining steps at the mean rate so far.
                        let eta = t * (*len - pos) as f64 / pos as f64;
                        eprintln!("{msg}: {pos}/{len} ({t:.0} s, eta {eta:.0} s)");
                    } else {
                        eprintln!("{msg}: {pos}/{len} ({t:.0} s)");
                    }
                    *last = Some(Instant::now());
                    (*m, *p) = (msg.to_string(), pos);
                }
            }
        }
    }

    pub fn finish(self) {
        if let Progress::Bar(pb) = self {
            pb.finish_and_clear();
        }
    }
}

/// The library's [`Events`] on stderr: progress as a [`Progress`] bar, warnings and notes as lines
/// (printed above a bar on a terminal).
pub struct StderrEvents {
    bar: Option<(Progress, String)>,
    /// A new bar for each stage (sweep), or one bar for the whole run (quantize).
    bar_per_stage: bool,
}

impl StderrEvents {
    /// One bar for the whole run.
    pub fn one_bar() -> Self {
        StderrEvents { bar: None, bar_per_stage: false }
    }

    /// A new bar whenever the stage's name changes.
    pub fn bar_per_stage() -> Self {
        StderrEvents { bar: None, bar_per_stage: true }
    }

    /// Clear the bar.
    pub fn finish(self) {
        if let Some((p, _)) = self.bar {
            p.finish();
        }
    }

    fn line(&self, line: &str) {
        match &self.bar {
            Some((Progress::Bar(pb), _)) => pb.suspend(|| eprintln!("{line}")),
            _ => eprintln!("{line}"),
        }
    }
}

impl Events for StderrEvents {
    fn progress(&mut self, done: usize, total: usize, what: &str) {
        let new_stage = self.bar_per_stage && self.bar.as_ref().is_some_and(|(_, m)| m != what);
        if new_stage {
            if let Some((p, _)) = self.bar.take() {
                p.finish();
            }
        }
        let (p, _) = self.bar.get_or_insert_with(|| (progress(total as u64, what), what.to_string()));
        p.set(done as u64, what);
    }

    fn warn(&mut self, msg: &str) {
        self.line(&format!("warning: {msg}"));
    }

    fn note(&mut self, msg: &str) {
        self.line(msg);
    }
}
