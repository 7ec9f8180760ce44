//! `loss.png`: train (blue) and dev (orange) loss per epoch, drawn from `metrics.csv`.
//!
//! No text is drawn (plotters needs a font file for text, which this project does not
//! ship); the README says which colour is which, and `metrics.csv` holds the numbers.

use std::path::Path;

use plotters::prelude::*;

/// (epoch, train loss, dev loss) rows of a `metrics.csv`, skipping the header.
pub fn read_metrics(csv: &str) -> Vec<(f64, f64, f64)> {
    csv.lines()
        .skip(1)
        .filter_map(|line| {
            let mut f = line.split(',');
            let epoch = f.next()?.parse().ok()?;
            let train = f.next()?.parse().ok()?;
            let dev = f.next()?.parse().ok()?;
            Some((epoch, train, dev))
        })
        .collect()
}

/// Draw the loss curves as a PNG.
pub fn write_loss_plot(path: &Path, rows: &[(f64, f64, f64)]) -> Result<(), String> {
    if rows.is_empty() {
        return Ok(());
    }
    let max_epoch = rows.iter().map(|r| r.0).fold(1.0, f64::max);
    let losses = rows.iter().flat_map(|r| [r.1, r.2]);
    let lo = losses.clone().fold(f64::INFINITY, f64::min);
    let hi = losses.fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.1).max(0.05);
    let root = BitMapBackend::new(path, (640, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .margin(20)
        .build_cartesian_2d(0.5..max_epoch + 0.5, (lo - pad)..(hi + pad))
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_labels(0)
        .draw()
        .map_err(|e| e.to_string())?;
    for (colour, pick) in [(BLUE, 1), (RGBColor(255, 127, 14), 2)] {
        let points: Vec<(f64, f64)> = rows
            .iter()
            .map(|r| (r.0, if pick == 1 { r.1 } else { r.2 }))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(3)))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 4, colour.filled())),
            )
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_is_a_png_with_both_curves() {
        let rows = read_metrics("epoch,train_loss,val_loss,seconds,improved\n1,4.6,3.9,1,true\n2,3.7,3.6,1,true\n3,3.4,3.6,1,false\n");
        assert_eq!(rows.len(), 3);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        write_loss_plot(&path, &rows).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (640, 400));
        let has = |c: [u8; 3]| img.pixels().any(|p| p.0 == c);
        assert!(has([0, 0, 255]), "train curve (blue) drawn");
        assert!(has([255, 127, 14]), "dev curve (orange) drawn");
    }
}
