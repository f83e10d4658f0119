//! Latency percentile curves as SVG: x is the percentile on a "nines" scale (50%, 90%,
//! 99%, ... evenly spaced), y the latency on a log scale, one line per series. Plain SVG
//! 1.1 text, no scripts or external references, so any renderer draws it.

use std::fmt::Write;

use hdrhistogram::Histogram;

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 560.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 260.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
/// Rightmost percentile drawn: 99.999%.
const MAX_NINES: f64 = 5.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// One line: a label and a histogram whose values are `unit_ns` nanoseconds each.
pub struct Series<'a> {
    pub label: String,
    pub histogram: &'a Histogram<u64>,
    pub unit_ns: f64,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Percentile (0..1) of `nines` (0 -> 0%, 1 -> 90%, 2 -> 99%, ...).
fn quantile(nines: f64) -> f64 {
    1.0 - 10f64.powf(-nines)
}

fn label_us(us: f64) -> String {
    match us {
        u if u >= 1e6 => format!("{} s", u / 1e6),
        u if u >= 1e3 => format!("{} ms", u / 1e3),
        u => format!("{u} us"),
    }
}

/// The SVG document. Empty series are skipped; with none left the plot says so.
pub fn percentile_svg(title: &str, series: &[Series]) -> String {
    let series: Vec<&Series> = series.iter().filter(|s| !s.histogram.is_empty()).collect();
    let us_of = |s: &Series, q: f64| {
        (s.histogram.value_at_quantile(q) as f64 * s.unit_ns / 1000.0).max(1.0)
    };
    let mut lo = f64::MAX;
    let mut hi = 1.0f64;
    for s in &series {
        lo = lo.min(us_of(s, 0.0));
        hi = hi.max(s.histogram.max() as f64 * s.unit_ns / 1000.0);
    }
    let (lo_dec, hi_dec) = if series.is_empty() {
        (0.0, 3.0)
    } else {
        (
            lo.log10().floor(),
            hi.log10().ceil().max(lo.log10().floor() + 1.0),
        )
    };
    let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let x = |nines: f64| LEFT + pw * nines / MAX_NINES;
    let y = |us: f64| TOP + ph * (1.0 - (us.log10() - lo_dec) / (hi_dec - lo_dec));
    let mut o = String::new();
    let _ = writeln!(o, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        o,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        o,
        r#"<text x="{}" y="28" font-size="16" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        esc(title)
    );
    // Grid and axis labels.
    for n in 0..=MAX_NINES as u32 {
        let xv = x(n as f64);
        let label = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"][n as usize];
        let _ = writeln!(
            o,
            r##"<line x1="{xv:.1}" y1="{TOP}" x2="{xv:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            TOP + ph
        );
        let _ = writeln!(
            o,
            r#"<text x="{xv:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            TOP + ph + 18.0
        );
    }
    for d in lo_dec as i32..=hi_dec as i32 {
        let us = 10f64.powi(d);
        let yv = y(us);
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" y1="{yv:.1}" x2="{:.1}" y2="{yv:.1}" stroke="#ddd"/>"##,
            LEFT + pw
        );
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            yv + 4.0,
            label_us(us)
        );
    }
    let _ = writeln!(
        o,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT + pw / 2.0,
        HEIGHT - 15.0
    );
    let _ = writeln!(
        o,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">latency</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    if series.is_empty() {
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">no I/O recorded</text>"#,
            LEFT + pw / 2.0,
            TOP + ph / 2.0
        );
    }
    // Curves: 50 points per decade of nines, and the maximum at the right edge.
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mut pts = String::new();
        for k in 0..=(MAX_NINES as usize * 50) {
            let n = k as f64 / 50.0;
            let _ = write!(pts, "{:.1},{:.1} ", x(n), y(us_of(s, quantile(n))));
        }
        let _ = writeln!(
            o,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            pts.trim_end()
        );
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let lx = WIDTH - RIGHT + 16.0;
        let _ = writeln!(
            o,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="3"/>"#,
            lx + 20.0
        );
        let p99 = us_of(s, 0.99);
        let _ = writeln!(
            o,
            r#"<text x="{}" y="{}">{} (p99 {:.0} us)</text>"#,
            lx + 26.0,
            ly + 4.0,
            esc(&s.label),
            p99
        );
    }
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_one_polyline_per_non_empty_series() {
        let mut a = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for v in 1..10_000 {
            a.record(v).unwrap();
        }
        let empty = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        let svg = percentile_svg(
            "t <1>",
            &[
                Series {
                    label: "a&b".into(),
                    histogram: &a,
                    unit_ns: 1000.0,
                },
                Series {
                    label: "e".into(),
                    histogram: &empty,
                    unit_ns: 1000.0,
                },
            ],
        );
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(svg.contains("a&amp;b") && svg.contains("t &lt;1&gt;"));
        assert!(svg.contains("99.999%"));
        assert!(svg.trim_end().ends_with("</svg>"));
        let none = percentile_svg("x", &[]);
        assert!(none.contains("no I/O recorded"));
    }
}
