//! The optional SVG chart (`--svg`): one bar per (workload, clients) showing raftkv's
//! throughput as a multiple of etcd's, with reference lines at 1x (parity) and 1.5x (the
//! performance goal). A ratio chart rather than absolute bars because the workloads differ
//! by orders of magnitude in ops/s, which would flatten most bars on a shared axis.

use std::fmt::Write as _;

use crate::report::Comparison;

const BAR_WIDTH: f64 = 28.0;
const GAP: f64 = 12.0;
const PLOT_HEIGHT: f64 = 300.0;
const LEFT: f64 = 70.0;
/// Room for the last labels, which are rotated to the right.
const RIGHT: f64 = 100.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 110.0;

/// Renders the chart of `comparisons` as a standalone SVG document.
pub fn throughput_ratio_svg(comparisons: &[Comparison], title: &str) -> String {
    let max_ratio = comparisons
        .iter()
        .filter_map(|c| c.throughput)
        .fold(2.0_f64, f64::max)
        .ceil();
    let plot_right = LEFT + comparisons.len() as f64 * (BAR_WIDTH + GAP) + GAP;
    let width = plot_right + RIGHT;
    let height = TOP + PLOT_HEIGHT + BOTTOM;
    let y = |ratio: f64| TOP + PLOT_HEIGHT * (1.0 - ratio / max_ratio);

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="18" font-size="13">{}</text>"#,
        escape(title)
    );
    for (ratio, label, color) in [(1.0, "1x", "#888"), (1.5, "1.5x goal", "#c60")] {
        let _ = writeln!(
            svg,
            r#"<line x1="{LEFT}" x2="{plot_right:.0}" y1="{0:.1}" y2="{0:.1}" stroke="{color}" stroke-dasharray="4 3"/><text x="4" y="{1:.1}" fill="{color}">{label}</text>"#,
            y(ratio),
            y(ratio) + 4.0
        );
    }
    for (i, c) in comparisons.iter().enumerate() {
        let x = LEFT + GAP + i as f64 * (BAR_WIDTH + GAP);
        let label = format!("{} c={}", c.workload, c.clients);
        if let Some(ratio) = c.throughput {
            let color = if ratio >= 1.0 { "#4a4" } else { "#c44" };
            let _ = writeln!(
                svg,
                r#"<rect x="{x:.1}" y="{:.1}" width="{BAR_WIDTH}" height="{:.1}" fill="{color}"><title>{}: {ratio:.2}x</title></rect><text x="{:.1}" y="{:.1}" text-anchor="middle">{ratio:.2}</text>"#,
                y(ratio),
                TOP + PLOT_HEIGHT - y(ratio),
                escape(&label),
                x + BAR_WIDTH / 2.0,
                y(ratio) - 3.0
            );
        }
        let (lx, ly) = (x + BAR_WIDTH / 2.0, TOP + PLOT_HEIGHT + 8.0);
        let _ = writeln!(
            svg,
            r#"<text x="{lx:.1}" y="{ly:.1}" transform="rotate(60 {lx:.1} {ly:.1})">{}</text>"#,
            escape(&label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Workload;

    #[test]
    fn one_bar_per_measured_comparison() {
        let comparison = |clients, throughput| Comparison {
            workload: Workload::PutRand,
            clients,
            throughput,
            p50: None,
            p90: None,
            p99: None,
        };
        let svg = throughput_ratio_svg(
            &[
                comparison(1, Some(0.8)),
                comparison(16, Some(1.7)),
                comparison(64, None),
            ],
            "a < b",
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<rect x=").count(), 2);
        assert!(svg.contains("put-rand c=64"));
        assert!(svg.contains("a &lt; b"));
    }
}
