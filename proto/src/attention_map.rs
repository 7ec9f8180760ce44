//! The picture people expect from an attention captioner: the image, then one panel per
//! generated word with that step's attention map upsampled over the image (bright where
//! the model looked, dark elsewhere). Shared by `caption-train caption --attention` and
//! `captiond caption --attention`. Drawn without text (no font is linked): the words go to
//! stdout in panel order.

use image::{imageops, ImageBuffer, Luma, Rgb, RgbImage};

/// Panels per row.
pub const COLUMNS: u32 = 5;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AttentionMapError {
    #[error("attention map {index} has {got} weights, but the {rows}x{cols} grid needs {want}")]
    Size {
        index: usize,
        got: usize,
        want: usize,
        rows: u32,
        cols: u32,
    },
    #[error("no words to draw")]
    Empty,
}

/// `maps[i]`: word i's attention weights over the `grid` (rows, columns) regions,
/// row-major, as the model's regions are ordered.
pub fn attention_picture(
    image: &RgbImage,
    grid: (u32, u32),
    maps: &[Vec<f32>],
) -> Result<RgbImage, AttentionMapError> {
    if maps.is_empty() {
        return Err(AttentionMapError::Empty);
    }
    let (rows, cols) = grid;
    let want = (rows * cols) as usize;
    if let Some((index, m)) = maps.iter().enumerate().find(|(_, m)| m.len() != want) {
        return Err(AttentionMapError::Size {
            index,
            got: m.len(),
            want,
            rows,
            cols,
        });
    }
    let (w, h) = image.dimensions();
    let panels = maps.len() as u32 + 1;
    let columns = panels.min(COLUMNS);
    let lines = panels.div_ceil(COLUMNS);
    let mut out = RgbImage::new(columns * w, lines * h);
    imageops::replace(&mut out, image, 0, 0);
    for (i, map) in maps.iter().enumerate() {
        let peak = map.iter().copied().fold(f32::MIN_POSITIVE, f32::max);
        let small: ImageBuffer<Luma<f32>, Vec<f32>> = ImageBuffer::from_fn(cols, rows, |x, y| {
            Luma([map[(y * cols + x) as usize] / peak])
        });
        let weights = imageops::resize(&small, w, h, imageops::FilterType::Triangle);
        let panel = RgbImage::from_fn(w, h, |x, y| {
            let a = 0.2 + 0.8 * weights.get_pixel(x, y)[0].clamp(0.0, 1.0);
            let p = image.get_pixel(x, y);
            Rgb([
                (p[0] as f32 * a) as u8,
                (p[1] as f32 * a) as u8,
                (p[2] as f32 * a) as u8,
            ])
        });
        let n = i as u32 + 1;
        imageops::replace(
            &mut out,
            &panel,
            ((n % COLUMNS) * w) as i64,
            ((n / COLUMNS) * h) as i64,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_follow_the_words_and_brighten_where_the_model_looked() {
        let image = RgbImage::from_pixel(70, 70, Rgb([200, 100, 50]));
        // Word 0 looks at the top-left region, word 1 at the bottom-right one.
        let mut a = vec![0.0; 49];
        a[0] = 1.0;
        let mut b = vec![0.0; 49];
        b[48] = 1.0;
        let maps: Vec<Vec<f32>> = (0..6)
            .map(|i| if i % 2 == 0 { a.clone() } else { b.clone() })
            .collect();
        let pic = attention_picture(&image, (7, 7), &maps).unwrap();
        // 7 panels: 5 on the first line, 2 on the second.
        assert_eq!(pic.dimensions(), (5 * 70, 2 * 70));
        let first = (70, 0);
        assert!(pic.get_pixel(first.0 + 2, 2)[0] > pic.get_pixel(first.0 + 67, 67)[0]);
        let second = (140, 0);
        assert!(pic.get_pixel(second.0 + 67, 67)[0] > pic.get_pixel(second.0 + 2, 2)[0]);
        assert_eq!(
            attention_picture(&image, (7, 7), &[vec![1.0; 48]]),
            Err(AttentionMapError::Size {
                index: 0,
                got: 48,
                want: 49,
                rows: 7,
                cols: 7
            })
        );
        assert_eq!(
            attention_picture(&image, (7, 7), &[]),
            Err(AttentionMapError::Empty)
        );
    }
}
