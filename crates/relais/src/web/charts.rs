//! Small charts drawn on the server as SVG: sparklines and stacked bars.
//! Only numbers and escaped text go into the markup.

/// The palette, the same as the stylesheet's `.c0`…`.c7` swatches.
pub const PALETTE: [&str; 8] = ["#0b5cab", "#c2410c", "#1a7f37", "#7c3aed", "#b42318", "#0e7490", "#a16207", "#4d5560"];

/// Escape text for SVG or HTML.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// A sparkline of `values` (oldest first), `label` read by screen readers.
/// Fewer than two points draw a flat line.
pub fn sparkline(values: &[f64], label: &str) -> String {
    let (width, height, pad) = (120.0, 28.0, 2.0);
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let (min, max) = finite.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let span = if max > min { max - min } else { 1.0 };
    let points: Vec<String> = if finite.len() < 2 {
        vec![format!("{pad},{:.1}", height / 2.0), format!("{:.1},{:.1}", width - pad, height / 2.0)]
    } else {
        let step = (width - 2.0 * pad) / (finite.len() - 1) as f64;
        finite
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let x = pad + step * i as f64;
                let y = height - pad - (v - min) / span * (height - 2.0 * pad);
                format!("{x:.1},{y:.1}")
            })
            .collect()
    };
    format!(
        "<svg class=\"spark\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"{}\"><polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/></svg>",
        escape(label),
        PALETTE[0],
        points.join(" ")
    )
}

/// Stacked bars: one bar per column (`columns` labels), one colour per series
/// (`series`: name and one value per column). `label` for screen readers.
pub fn stacked_bars(columns: &[String], series: &[(String, Vec<f64>)], label: &str) -> String {
    let (width, height, bottom) = (640.0, 180.0, 20.0);
    let totals: Vec<f64> =
        (0..columns.len()).map(|i| series.iter().map(|(_, v)| v.get(i).copied().unwrap_or(0.0)).sum()).collect();
    let top = totals.iter().copied().fold(0.0f64, f64::max).max(1.0);
    let slot = width / columns.len().max(1) as f64;
    let bar = (slot * 0.7).max(1.0);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {width} {}\" width=\"100%\" role=\"img\" aria-label=\"{}\">",
        height + bottom,
        escape(label)
    );
    for (i, column) in columns.iter().enumerate() {
        let x = slot * i as f64 + (slot - bar) / 2.0;
        let mut y = height;
        for (s, (name, values)) in series.iter().enumerate() {
            let value = values.get(i).copied().unwrap_or(0.0);
            if value <= 0.0 {
                continue;
            }
            let h = value / top * (height - 10.0);
            y -= h;
            out.push_str(&format!(
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar:.1}\" height=\"{h:.1}\" fill=\"{}\"><title>{} · {}: {}</title></rect>",
                PALETTE[s % PALETTE.len()],
                escape(column),
                escape(name),
                value
            ));
        }
        if columns.len() <= 12 || i % (columns.len() / 12 + 1) == 0 {
            out.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\" fill=\"#4d5560\">{}</text>",
                x + bar / 2.0,
                height + 14.0,
                escape(column)
            ));
        }
    }
    out.push_str("</svg>");
    out
}

/// Two bars per label, before (grey) and after (colour), in percent, with
/// the two series' names; `label` for screen readers.
pub fn paired_bars(labels: &[String], before: &[f64], after: &[f64], names: [&str; 2], label: &str) -> String {
    let (width, height, bottom) = (640.0, 200.0, 36.0);
    let top = before.iter().chain(after).copied().filter(|v| v.is_finite()).fold(1.0f64, f64::max);
    let slot = width / labels.len().max(1) as f64;
    let bar = (slot * 0.35).max(1.0);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {width} {}\" width=\"100%\" role=\"img\" aria-label=\"{}\">",
        height + bottom,
        escape(label)
    );
    for (i, name) in labels.iter().enumerate() {
        let x = slot * i as f64 + slot * 0.1;
        for (k, value) in [before.get(i), after.get(i)].into_iter().enumerate() {
            let value = value.copied().filter(|v| v.is_finite()).unwrap_or(0.0);
            let h = value / top * (height - 10.0);
            out.push_str(&format!(
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{h:.1}\" fill=\"{}\"><title>{} · {}: {value:.1}%</title></rect>",
                x + k as f64 * bar,
                height - h,
                if k == 0 { "#9aa3ad" } else { PALETTE[i % PALETTE.len()] },
                escape(name),
                escape(names[k])
            ));
        }
        out.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\" fill=\"#1b1f24\">{}</text>",
            x + bar,
            height + 16.0,
            escape(name)
        ));
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        let svg = sparkline(&[1.0, 2.0], "<script>\"x\"");
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("&lt;script&gt;&quot;x&quot;"));
        let bars = stacked_bars(&["<b>".into()], &[("<i>".into(), vec![1.0])], "x");
        assert!(!bars.contains("<b>") && !bars.contains("<i>"));
    }

    #[test]
    fn a_sparkline_spans_its_box_and_survives_odd_input() {
        let svg = sparkline(&[3.0, 1.0, 2.0], "size");
        assert!(svg.contains("points=\"2.0,2.0 60.0,26.0 118.0,14.0\""), "{svg}");
        let flat = sparkline(&[f64::NAN], "size");
        assert!(flat.contains("polyline") && !flat.contains("NaN"));
    }
}
