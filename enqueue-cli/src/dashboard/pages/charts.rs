//! The overview's two small charts, drawn as inline SVG on the server: no
//! script, no library, readable without either.

use chrono::{DateTime, Utc};
use maud::{Markup, html};

use crate::dashboard::queries::StepDuration;

const WIDTH: f64 = 560.0;

/// Tenants that became ready per hour: one bar an hour, the last 24.
pub(crate) fn ready_per_hour(hours: &[(DateTime<Utc>, i64)]) -> Markup {
    const HEIGHT: f64 = 150.0;
    const TOP: f64 = 16.0;
    const BOTTOM: f64 = 20.0;
    let max = hours.iter().map(|h| h.1).max().unwrap_or(0).max(1) as f64;
    let slot = WIDTH / hours.len().max(1) as f64;
    let plot = HEIGHT - TOP - BOTTOM;
    let total: i64 = hours.iter().map(|h| h.1).sum();
    html! {
        svg.chart viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img"
            aria-label={ (total) " tenants became ready in the last 24 hours" } data-chart="ready-per-hour" {
            line.axis x1="0" x2=(WIDTH) y1=(HEIGHT - BOTTOM) y2=(HEIGHT - BOTTOM) {}
            @for (i, (hour, n)) in hours.iter().enumerate() {
                @let h = *n as f64 / max * plot;
                @let x = i as f64 * slot;
                rect.bar x=(fmt(x + 2.0)) y=(fmt(HEIGHT - BOTTOM - h)) width=(fmt(slot - 4.0)) height=(fmt(h)) {
                    title { (hour.format("%H:00")) " UTC: " (n) }
                }
                @if *n > 0 {
                    text x=(fmt(x + slot / 2.0)) y=(fmt(HEIGHT - BOTTOM - h - 4.0)) text-anchor="middle" { (n) }
                }
                @if i == 0 {
                    text x="0" y=(fmt(HEIGHT - 6.0)) text-anchor="start" { (hour.format("%H:00")) }
                } @else if i + 1 == hours.len() {
                    text x=(WIDTH) y=(fmt(HEIGHT - 6.0)) text-anchor="end" { (hour.format("%H:00")) }
                } @else if i % 6 == 0 {
                    text x=(fmt(x + slot / 2.0)) y=(fmt(HEIGHT - 6.0)) text-anchor="middle" { (hour.format("%H:00")) }
                }
            }
        }
    }
}

/// Each step's median (dark) and 95th percentile (light) duration.
pub(crate) fn step_durations(steps: &[StepDuration]) -> Markup {
    const ROW: f64 = 26.0;
    const LABEL: f64 = 100.0;
    const FIGURES: f64 = 215.0;
    let height = ROW * steps.len().max(1) as f64 + 6.0;
    let max = steps.iter().map(|s| s.p95_ms).fold(0.0, f64::max).max(0.001);
    let room = WIDTH - LABEL - FIGURES;
    html! {
        @if steps.is_empty() {
            p.muted { "No step recorded yet." }
        } @else {
            svg.chart viewBox={ "0 0 " (WIDTH) " " (fmt(height)) } role="img"
                aria-label="How long each provisioning step took" data-chart="step-durations" {
                @for (i, step) in steps.iter().enumerate() {
                    @let y = i as f64 * ROW + 4.0;
                    text x="0" y=(fmt(y + 14.0)) { (step.step) }
                    rect.bar.p95 x=(LABEL) y=(fmt(y)) width=(fmt((step.p95_ms / max * room).max(1.0))) height="18" {
                        title { (step.step) " p95: " (ms(step.p95_ms)) }
                    }
                    rect.bar x=(LABEL) y=(fmt(y)) width=(fmt((step.median_ms / max * room).max(1.0))) height="18" {
                        title { (step.step) " median: " (ms(step.median_ms)) }
                    }
                    text x=(fmt(WIDTH - FIGURES + 8.0)) y=(fmt(y + 14.0)) {
                        (ms(step.median_ms)) " median · " (ms(step.p95_ms)) " p95 · " (step.count) "×"
                    }
                }
            }
        }
    }
}

/// A coordinate, short.
fn fmt(v: f64) -> String {
    format!("{v:.1}")
}

/// A duration for a label.
pub(crate) fn ms(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0} s", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.1} s", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.1} ms")
    }
}
