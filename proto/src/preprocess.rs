//! Image preprocessing: one function used by the trainer and the edge daemon, so both
//! halves feed the encoder identical tensors.
//!
//! Steps: decode (JPEG, PNG; grayscale, CMYK and alpha become RGB, alpha is dropped),
//! squash to `size` x `size` without cropping (as the tutorial's
//! `load_img(target_size=(224, 224))`) with a triangle (bilinear) filter, then per channel
//! `(pixel - mean) / std` on 0..255 RGB values, laid out CHW as f32.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::RgbImage;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("cannot read image {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot decode image {path}: {problem}")]
    Decode { path: PathBuf, problem: String },
}

/// The resize filter; recorded in feature files and bundle manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeFilter {
    Nearest,
    Triangle,
}

/// The channel order of an encoder's input tensor (and of `mean`/`std`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Channels {
    /// Red, green, blue: every encoder the project knows (torchvision, EfficientNet-Lite).
    #[default]
    #[serde(rename = "RGB")]
    Rgb,
}

/// How an image becomes an encoder input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    /// Square input side in pixels.
    pub size: u32,
    pub filter: ResizeFilter,
    /// Channel order of `mean`/`std` and of the tensor.
    pub channels: Channels,
    /// Per-channel mean on the 0..255 scale.
    pub mean: [f32; 3],
    /// Per-channel divisor on the 0..255 scale.
    pub std: [f32; 3],
}

impl Preprocessing {
    /// EfficientNet-Lite: `(pixel - 127) / 128`.
    pub fn efficientnet_lite(size: u32) -> Preprocessing {
        Preprocessing {
            size,
            filter: ResizeFilter::Triangle,
            channels: Channels::Rgb,
            mean: [127.0; 3],
            std: [128.0; 3],
        }
    }

    /// torchvision ImageNet models: `(pixel / 255 - mean) / std` written on the 0..255 scale.
    pub fn imagenet_torchvision(size: u32) -> Preprocessing {
        Preprocessing {
            size,
            filter: ResizeFilter::Triangle,
            channels: Channels::Rgb,
            mean: [123.675, 116.28, 103.53],
            std: [58.395, 57.12, 57.375],
        }
    }

    /// Normalise an RGB image already at `size` x `size` into CHW floats.
    pub fn normalize(&self, rgb: &RgbImage) -> Vec<f32> {
        let (w, h) = rgb.dimensions();
        let plane = (w * h) as usize;
        let mut out = vec![0.0f32; 3 * plane];
        for (i, px) in rgb.pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = (px[c] as f32 - self.mean[c]) / self.std[c];
            }
        }
        out
    }

    /// Squash an RGB image to `size` x `size` (no crop); unchanged if already that size.
    pub fn resize(&self, rgb: RgbImage) -> RgbImage {
        if rgb.dimensions() == (self.size, self.size) {
            return rgb;
        }
        let filter = match self.filter {
            ResizeFilter::Nearest => FilterType::Nearest,
            ResizeFilter::Triangle => FilterType::Triangle,
        };
        image::imageops::resize(&rgb, self.size, self.size, filter)
    }

    /// Decode encoded image bytes, resize and normalise. `origin` names the source in errors.
    pub fn from_bytes(&self, bytes: &[u8], origin: &Path) -> Result<Vec<f32>, PreprocessError> {
        Ok(self.normalize(&self.resize(decode_rgb(bytes, origin)?)))
    }

    /// Read, decode, resize and normalise an image file.
    pub fn from_file(&self, path: &Path) -> Result<Vec<f32>, PreprocessError> {
        let bytes = std::fs::read(path).map_err(|source| PreprocessError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.from_bytes(&bytes, path)
    }
}

/// Decode JPEG or PNG bytes to 8-bit RGB (format from content, not the file name).
pub fn decode_rgb(bytes: &[u8], origin: &Path) -> Result<RgbImage, PreprocessError> {
    let decode_err = |problem: String| PreprocessError::Decode {
        path: origin.to_owned(),
        problem,
    };
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| decode_err(e.to_string()))?;
    match reader.format() {
        None => return Err(decode_err("not a JPEG or PNG image".into())),
        // The JPEG decoder fills a truncated scan with grey instead of failing, so a cut
        // file is caught here: entropy-coded data cannot contain FF D9, so its absence
        // near the end means the end-of-image marker never came.
        Some(image::ImageFormat::Jpeg) => {
            let tail = &bytes[bytes.len().saturating_sub(4096)..];
            if !tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
                return Err(decode_err(
                    "truncated JPEG: no end-of-image marker (FF D9)".into(),
                ));
            }
        }
        Some(_) => {}
    }
    let img = reader.decode().map_err(|e| decode_err(e.to_string()))?;
    Ok(img.to_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{DynamicImage, GrayImage, ImageFormat, Rgba, RgbaImage};

    fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut buf = std::io::Cursor::new(Vec::new());
        img.write_to(&mut buf, format).unwrap();
        buf.into_inner()
    }

    #[test]
    fn normalisation_is_per_channel_chw() {
        let pre = Preprocessing::efficientnet_lite(2);
        let mut img = RgbImage::new(2, 2);
        img.put_pixel(1, 0, image::Rgb([255, 127, 0]));
        let x = pre.normalize(&img);
        assert_eq!(x.len(), 12);
        // Pixel (x=1, y=0) is index 1 of each plane.
        assert_eq!(x[1], (255.0 - 127.0) / 128.0);
        assert_eq!(x[4 + 1], 0.0);
        assert_eq!(x[8 + 1], -127.0 / 128.0);
    }

    #[test]
    fn grayscale_and_alpha_png_become_rgb_and_are_squashed() {
        let pre = Preprocessing::efficientnet_lite(4);
        let gray = DynamicImage::ImageLuma8(GrayImage::from_pixel(8, 2, image::Luma([200])));
        let x = pre
            .from_bytes(&encode(&gray, ImageFormat::Png), Path::new("g.png"))
            .unwrap();
        assert_eq!(x.len(), 3 * 16);
        assert!(x
            .iter()
            .all(|v| (*v - (200.0 - 127.0) / 128.0).abs() < 1e-6));

        let rgba = DynamicImage::ImageRgba8(RgbaImage::from_pixel(3, 5, Rgba([10, 20, 30, 0])));
        let x = pre
            .from_bytes(&encode(&rgba, ImageFormat::Png), Path::new("a.png"))
            .unwrap();
        assert_eq!(x[0], (10.0 - 127.0) / 128.0);
    }

    #[test]
    fn jpeg_decodes() {
        let pre = Preprocessing::imagenet_torchvision(8);
        let img =
            DynamicImage::ImageRgb8(RgbImage::from_pixel(16, 16, image::Rgb([120, 120, 120])));
        let x = pre
            .from_bytes(&encode(&img, ImageFormat::Jpeg), Path::new("x.jpg"))
            .unwrap();
        assert_eq!(x.len(), 3 * 64);
    }

    #[test]
    fn bad_bytes_name_the_file() {
        let pre = Preprocessing::efficientnet_lite(4);
        let msg = pre
            .from_bytes(b"hello, not an image", Path::new("notes.jpg"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("notes.jpg"), "{msg}");
        // Truncated JPEGs, cut in the headers and in the scan: the decoder alone would
        // return a grey-filled image for the second.
        let noisy = RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 13) as u8, (x * y) as u8])
        });
        let jpeg = encode(&DynamicImage::ImageRgb8(noisy), ImageFormat::Jpeg);
        assert!(pre.from_bytes(&jpeg, Path::new("whole.jpg")).is_ok());
        for cut in [jpeg.len() / 10, jpeg.len() * 3 / 4] {
            let msg = pre
                .from_bytes(&jpeg[..cut], Path::new("cut.jpg"))
                .unwrap_err()
                .to_string();
            assert!(msg.contains("cut.jpg"), "{msg}");
        }
        let msg = pre
            .from_file(Path::new("/nonexistent/x.jpg"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("/nonexistent/x.jpg"), "{msg}");
    }
}
