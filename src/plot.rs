//! The sweep's plot: perplexity against stored bits per weight, one line per method, the float
//! model as a horizontal line; log-scaled perplexity (2-bit RTN can be 10⁵× the float model).
//! It reads its own [`Chart`], which `sweep` fills in (neither module depends on the other's types).

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::collections::BTreeMap;

const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(0, 0, 128),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// What the plot shows.
pub struct Chart<'a> {
    /// The model's and the eval text's paths (their last components are the title).
    pub model: &'a str,
    pub eval_text: &'a str,
    pub eval_ctx: usize,
    /// The float model's perplexity and bits per weight (the horizontal line).
    pub fp_ppl: f64,
    pub fp_bits: u32,
    /// One point per scored combination: method, stored bits per weight, perplexity (points
    /// without both, or with a non-finite perplexity, are not drawn).
    pub points: Vec<(&'a str, Option<f64>, Option<f64>)>,
}

/// The plot as an SVG document.
pub fn svg(r: &Chart) -> Result<String> {
    let mut lines: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for &(method, bpw, ppl) in &r.points {
        if let (Some(b), Some(p)) = (bpw, ppl) {
            if p.is_finite() {
                lines.entry(method).or_default().push((b, p));
            }
        }
    }
    for pts in lines.values_mut() {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let all = lines.values().flatten();
    let (mut x0, mut x1) = all.clone().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (mut y0, mut y1) = all.fold((r.fp_ppl, r.fp_ppl), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if x0 > x1 {
        (x0, x1) = (2.0, 4.5);
    }
    (x0, x1) = ((x0 - 0.2).max(0.0), x1 + 0.2);
    (y0, y1) = (y0 / 1.25, y1 * 1.6);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (900, 560)).into_drawing_area();
        let e = |e: DrawingAreaErrorKind<_>| anyhow!("plot: {e:?}");
        root.fill(&WHITE).map_err(e)?;
        let title = format!("{} — {} (ctx {})", short(r.model), short(r.eval_text), r.eval_ctx);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("stored bits per weight of the quantized linears (scales and codebooks included)")
            .y_desc("perplexity (log scale)")
            .y_label_formatter(&|v| if *v >= 1e4 { format!("{v:.0e}") } else { format!("{v:.1}") })
            .x_label_formatter(&|v| format!("{v:.2}"))
            .draw()
            .map_err(e)?;
        let fp = r.fp_ppl;
        chart
            .draw_series(LineSeries::new([(x0, fp), (x1, fp)], BLACK.stroke_width(1)))
            .map_err(e)?
            .label(format!("FP {}-bit: {fp:.3}", r.fp_bits))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK));
        for (i, (name, pts)) in lines.iter().enumerate() {
            let c = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
                .map_err(e)?
                .label(*name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled()))).map_err(e)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(e)?;
        root.present().map_err(e)?;
    }
    Ok(out)
}

/// The last path component, for titles.
fn short(p: &str) -> &str {
    p.trim_end_matches('/').rsplit('/').next().unwrap_or(p)
}
