//! The one updating line on stderr that long phases draw, so whoever runs
//! the bench sees it is alive and how fast it goes.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often a terminal line is redrawn: often enough to look live, rarely
/// enough to cost nothing next to what is measured.
const REDRAW: Duration = Duration::from_millis(200);
/// How often a line is printed when stderr is a log file (CI): a `\r` line
/// would pile up there as one unreadable line.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// `label done/total  rate/s` on one line.
#[derive(Debug)]
pub(crate) struct Progress {
    label: String,
    total: usize,
    started: Instant,
    last: Instant,
    drawn: Option<usize>,
    terminal: bool,
}

impl Progress {
    /// A progress line for `total` items of `label`, shown from now.
    pub(crate) fn new(label: impl Into<String>, total: usize) -> Self {
        let mut progress = Self {
            label: label.into(),
            total,
            started: Instant::now(),
            last: Instant::now(),
            drawn: None,
            terminal: std::io::stderr().is_terminal(),
        };
        progress.draw(0);
        progress
    }

    /// Shows `done` items, unless the line was drawn a moment ago.
    pub(crate) fn show(&mut self, done: usize) {
        let every = if self.terminal { REDRAW } else { LOG_EVERY };
        if self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        self.draw(done);
    }

    /// Draws the final count and ends the line.
    pub(crate) fn finish(mut self, done: usize) {
        if self.drawn != Some(done) {
            self.draw(done);
        }
        if self.terminal {
            eprintln!();
        }
    }

    fn draw(&mut self, done: usize) {
        self.drawn = Some(done);
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = if elapsed > 0.0 {
            format!("  {:.0}/s", done as f64 / elapsed)
        } else {
            String::new()
        };
        let line = format!("{} {done}/{}{rate}  {elapsed:.1}s", self.label, self.total);
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r{line}\x1b[K");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }
}
