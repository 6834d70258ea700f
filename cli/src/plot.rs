//! The learning-curve PNG of `engram eval`.

use std::path::Path;

use plotters::prelude::*;

/// Fonts tried for labels, in order (Debian's fonts-dejavu-core provides the first).
const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// One method's curve: (facts learned so far, learned accuracy, retention), fractions.
pub struct Curve {
    /// Scoring method name.
    pub name: String,
    /// Points in order of facts.
    pub points: Vec<(usize, f64, f64)>,
}

/// Registers a system font for labels; false when none is installed (the plot has no text).
fn register_font() -> bool {
    static FOUND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FOUND.get_or_init(|| {
        FONTS.iter().any(|p| match std::fs::read(p) {
            Ok(bytes) => {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            }
            Err(_) => false,
        })
    })
}

/// Draws learned accuracy (solid) and retention (dashed) against facts learned, per method.
pub fn learning_curves(path: &Path, curves: &[Curve], total_facts: usize) -> Result<(), String> {
    let labels = register_font();
    if !labels {
        eprintln!(
            "warning: no DejaVuSans.ttf found (install fonts-dejavu-core); the plot has no labels"
        );
    }
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if labels {
        builder
            .caption(
                "learned accuracy (solid) and retention (dashed) as facts stream in",
                ("sans-serif", 20),
            )
            .x_label_area_size(45)
            .y_label_area_size(55);
    }
    let mut chart = builder
        .build_cartesian_2d(0f64..total_facts.max(1) as f64, 0f64..100f64)
        .map_err(|e| err(&e))?;
    if labels {
        chart
            .configure_mesh()
            .x_desc("facts learned")
            .y_desc("% correct")
            .draw()
            .map_err(|e| err(&e))?;
    } else {
        chart
            .configure_mesh()
            .disable_x_mesh()
            .draw()
            .map_err(|e| err(&e))?;
    }
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for (curve, color) in curves.iter().zip(colors.iter().cycle()) {
        let learned: Vec<(f64, f64)> = curve
            .points
            .iter()
            .map(|&(n, l, _)| (n as f64, 100.0 * l))
            .collect();
        let kept: Vec<(f64, f64)> = curve
            .points
            .iter()
            .map(|&(n, _, r)| (n as f64, 100.0 * r))
            .collect();
        let style = color.stroke_width(2);
        let series = chart
            .draw_series(LineSeries::new(learned, style))
            .map_err(|e| err(&e))?;
        if labels {
            let name = format!("{} learned", curve.name);
            series
                .label(name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
        }
        let series = chart
            .draw_series(DashedLineSeries::new(kept, 6, 4, style))
            .map_err(|e| err(&e))?;
        if labels {
            let name = format!("{} retention", curve.name);
            series
                .label(name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 8, y)], style));
        }
    }
    if labels {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
