//! Figures, their lower bounds and goals, and the table they are printed
//! as. A figure is always shown beside the floor measured in the same run on
//! the same machine, so a reader judges the ratio, not a number that depends
//! on how busy the machine was.

use std::fmt::Write as _;

/// The repetitions of one measurement.
#[derive(Debug, Clone, Default)]
pub(crate) struct Samples(Vec<f64>);

impl Samples {
    /// Samples from `values`.
    pub(crate) fn new(values: Vec<f64>) -> Self {
        Self(values)
    }

    /// Adds one repetition.
    pub(crate) fn push(&mut self, value: f64) {
        self.0.push(value);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        sorted
    }

    /// The middle value (mean of the two middle ones for an even count):
    /// what a repetition typically gives, insensitive to one disturbed run.
    pub(crate) fn median(&self) -> f64 {
        let sorted = self.sorted();
        match sorted.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        }
    }

    /// The nearest-rank percentile `p` (0–100): with 50 samples, p99 is the
    /// slowest one, which is what a user at the tail sees.
    pub(crate) fn percentile(&self, p: f64) -> f64 {
        let sorted = self.sorted();
        if sorted.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// What a figure is measured in, and how it is written.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Unit {
    /// Milliseconds.
    Ms,
    /// Milliseconds for `n` schemas, also written per 1,000 schemas.
    MsForSchemas(usize),
    /// Milliseconds for `n` schemas, also scaled linearly to 10,000.
    MsScaledTo10k(usize),
    /// Tenants per second.
    PerSec,
    /// Mebibytes.
    MiB,
    /// A plain factor (e.g. last window ÷ first window).
    Factor,
}

impl Unit {
    fn format(self, v: f64) -> String {
        if v.is_nan() {
            return "—".into();
        }
        match self {
            Self::Ms => format!("{} ms", ms(v)),
            Self::MsForSchemas(n) => {
                format!("{} ms ({} ms/1k)", ms(v), ms(v * 1000.0 / n.max(1) as f64))
            }
            Self::MsScaledTo10k(n) => {
                format!("{} ms ({} ms at 10k)", ms(v), ms(v * 10_000.0 / n.max(1) as f64))
            }
            Self::PerSec => format!("{v:.1}/s"),
            Self::MiB => format!("{v:.1} MiB"),
            Self::Factor => format!("{v:.2}×"),
        }
    }

    fn format_bare(self, v: f64) -> String {
        match self {
            Self::Ms | Self::MsForSchemas(_) | Self::MsScaledTo10k(_) => ms(v),
            Self::PerSec | Self::MiB => format!("{v:.1}"),
            Self::Factor => format!("{v:.2}"),
        }
    }
}

/// Milliseconds with a precision that suits their size.
fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// What a figure should reach.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Goal {
    /// The figure at most this multiple of its lower bound (times).
    RatioAtMost(f64),
    /// The figure at least this fraction of its lower bound (rates).
    RatioAtLeast(f64),
    /// The figure, multiplied by `scale`, at most `limit`; `text` says so.
    AtMost {
        /// Applied to the median before comparing (1.0: none).
        scale: f64,
        /// The limit.
        limit: f64,
        /// The goal as the table shows it.
        text: &'static str,
    },
    /// The figure's median at least `limit`; `text` says so.
    AtLeast {
        /// The limit.
        limit: f64,
        /// The goal as the table shows it.
        text: &'static str,
    },
    /// No goal: shown for context.
    None,
}

/// One line of the table.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// What was measured.
    pub(crate) label: String,
    /// Its unit.
    pub(crate) unit: Unit,
    /// The system's figure, one value per repetition.
    pub(crate) figure: Samples,
    /// The floor measured the same way, if there is one.
    pub(crate) lower: Option<Samples>,
    /// What the figure should reach.
    pub(crate) goal: Goal,
}

impl Row {
    /// The figure's median over its lower bound's.
    fn ratio(&self) -> Option<f64> {
        let lower = self.lower.as_ref()?.median();
        (lower > 0.0).then(|| self.figure.median() / lower)
    }

    fn ratio_text(&self) -> String {
        match (self.ratio(), self.unit) {
            (None, _) => "—".into(),
            (Some(r), Unit::PerSec) => format!("{:.0}%", r * 100.0),
            (Some(r), _) => format!("{r:.2}×"),
        }
    }

    fn goal_text(&self) -> String {
        match self.goal {
            Goal::RatioAtMost(x) => format!("≤ {x}×"),
            Goal::RatioAtLeast(x) => format!("≥ {:.0}%", x * 100.0),
            Goal::AtMost { text, .. } | Goal::AtLeast { text, .. } => text.into(),
            Goal::None => "—".into(),
        }
    }

    /// Whether the goal is met; `None` when there is none to meet.
    pub(crate) fn met(&self) -> Option<bool> {
        match self.goal {
            Goal::RatioAtMost(x) => self.ratio().map(|r| r <= x),
            Goal::RatioAtLeast(x) => self.ratio().map(|r| r >= x),
            Goal::AtMost { scale, limit, .. } => Some(self.figure.median() * scale <= limit),
            Goal::AtLeast { limit, .. } => Some(self.figure.median() >= limit),
            Goal::None => None,
        }
    }

    fn spread(unit: Unit, samples: &Samples) -> String {
        if samples.len() < 2 {
            return String::new();
        }
        format!(
            "{}–{}",
            unit.format_bare(samples.min()),
            unit.format_bare(samples.max())
        )
    }
}

/// Everything one invocation measured, printed as one table.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// The lines, in the order measured.
    pub(crate) rows: Vec<Row>,
    /// Remarks printed under the table (what the figures mean, oddities seen).
    pub(crate) notes: Vec<String>,
    /// A smoke run (`all --quick`): its sizes are far below the ones the
    /// goals are set for, so no row is judged against its goal.
    pub(crate) smoke: bool,
}

impl Report {
    /// Adds a line.
    pub(crate) fn row(
        &mut self,
        label: impl Into<String>,
        unit: Unit,
        figure: Samples,
        lower: Option<Samples>,
        goal: Goal,
    ) {
        self.rows.push(Row {
            label: label.into(),
            unit,
            figure,
            lower,
            goal,
        });
    }

    /// Adds a remark.
    pub(crate) fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Rows whose goal was missed (none in a smoke run, which judges nothing).
    pub(crate) fn missed(&self) -> Vec<&Row> {
        self.rows
            .iter()
            .filter(|r| !self.smoke && r.met() == Some(false))
            .collect()
    }

    /// The table, as Markdown (readable in a terminal, pasteable in a README).
    pub(crate) fn table(&self) -> String {
        let header = [
            "measurement",
            "figure (median)",
            "spread",
            "lower bound (median)",
            "spread",
            "ratio",
            "goal",
            "verdict",
        ];
        let mut lines: Vec<[String; 8]> = Vec::new();
        for row in &self.rows {
            let lower = row.lower.as_ref();
            lines.push([
                row.label.clone(),
                row.unit.format(row.figure.median()),
                Row::spread(row.unit, &row.figure),
                lower.map_or_else(|| "—".into(), |l| row.unit.format(l.median())),
                lower.map_or_else(String::new, |l| Row::spread(row.unit, l)),
                row.ratio_text(),
                row.goal_text(),
                match row.met() {
                    _ if self.smoke => "not judged".into(),
                    Some(true) => "met".into(),
                    Some(false) => "MISSED".into(),
                    None => "—".into(),
                },
            ]);
        }
        let mut widths = header.map(|h| h.chars().count());
        for line in &lines {
            for (w, cell) in widths.iter_mut().zip(line) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let render = |cells: &[String]| {
            let mut out = String::from("|");
            for (cell, w) in cells.iter().zip(widths) {
                let pad = w - cell.chars().count();
                let _ = write!(out, " {cell}{} |", " ".repeat(pad));
            }
            out
        };
        let mut out = String::new();
        out.push_str(&render(&header.map(String::from)));
        out.push('\n');
        out.push_str(&render(&widths.map(|w| "-".repeat(w))));
        out.push('\n');
        for line in &lines {
            out.push_str(&render(line));
            out.push('\n');
        }
        if !self.notes.is_empty() {
            out.push('\n');
        }
        for note in &self.notes {
            let _ = writeln!(out, "- {note}");
        }
        out
    }
}

/// A duration in milliseconds, the unit of every time in the table.
pub(crate) fn millis(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The machine's load and core count, printed at the start and the end: a
/// figure taken on a busy machine is worth less, and this says whether it was.
pub(crate) fn machine_line() -> String {
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("load average {load} (1, 5, 15 min), {cores} cores")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentiles() {
        let s = Samples::new(vec![5.0, 1.0, 3.0]);
        assert_eq!(s.median(), 3.0);
        let s = Samples::new(vec![4.0, 1.0, 3.0, 2.0]);
        assert_eq!(s.median(), 2.5);
        let s = Samples::new((1..=50).map(f64::from).collect());
        assert_eq!(s.percentile(99.0), 50.0);
        assert_eq!(s.percentile(50.0), 25.0);
        let s = Samples::new((1..=200).map(f64::from).collect());
        assert_eq!(s.percentile(99.0), 198.0);
    }

    #[test]
    fn goals_compare_the_medians() {
        let row = |figure: f64, lower: f64, goal| Row {
            label: "x".into(),
            unit: Unit::Ms,
            figure: Samples::new(vec![figure]),
            lower: Some(Samples::new(vec![lower])),
            goal,
        };
        assert_eq!(row(140.0, 100.0, Goal::RatioAtMost(1.5)).met(), Some(true));
        assert_eq!(row(160.0, 100.0, Goal::RatioAtMost(1.5)).met(), Some(false));
        assert_eq!(row(60.0, 100.0, Goal::RatioAtLeast(0.7)).met(), Some(false));
        let scaled = Goal::AtMost {
            scale: 10.0,
            limit: 2000.0,
            text: "< 2 s at 10k",
        };
        assert_eq!(row(150.0, 1.0, scaled).met(), Some(true));
        assert_eq!(row(250.0, 1.0, scaled).met(), Some(false));
        assert_eq!(row(1.0, 1.0, Goal::None).met(), None);
    }

    #[test]
    fn the_table_lines_up() {
        let mut report = Report::default();
        report.row(
            "throughput",
            Unit::PerSec,
            Samples::new(vec![30.0, 32.0]),
            Some(Samples::new(vec![40.0])),
            Goal::RatioAtLeast(0.7),
        );
        let table = report.table();
        let widths: Vec<usize> = table.lines().map(|l| l.chars().count()).collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{table}");
        assert!(table.contains("78%"), "{table}");
        assert!(table.contains("met"), "{table}");
    }

    #[test]
    fn a_smoke_run_judges_no_goal() {
        let mut report = Report {
            smoke: true,
            ..Report::default()
        };
        report.row(
            "throughput",
            Unit::PerSec,
            Samples::new(vec![10.0]),
            Some(Samples::new(vec![40.0])),
            Goal::RatioAtLeast(0.7),
        );
        assert!(report.missed().is_empty());
        let table = report.table();
        assert!(
            table.contains("not judged") && !table.contains("MISSED"),
            "{table}"
        );
        report.smoke = false;
        assert_eq!(report.missed().len(), 1);
    }
}
