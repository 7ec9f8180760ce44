//! Frame sources behind one trait: a V4L2 camera (`nokhwa`), a folder of image files, and
//! an MJPEG stream on standard input (e.g. `libcamera-vid --codec mjpeg -o -` on a Pi CSI
//! camera, which nokhwa does not support).

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use crate::config::{SourceConfig, SourceKind};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read the image folder {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("camera support is not built in (build captiond with the `camera` feature)")]
    NoCameraSupport,
    #[error("camera {device}: {problem}")]
    Camera { device: String, problem: String },
}

/// The pixels of a frame: still encoded (JPEG/PNG bytes) or already RGB.
pub enum FrameImage {
    Encoded(Vec<u8>),
    Rgb(image::RgbImage),
}

pub struct Frame {
    /// Where it came from (a file path, `stdin#12`, `camera 0`), for logs.
    pub origin: String,
    pub captured_at: SystemTime,
    /// Time spent obtaining the frame (reading the file, grabbing from the camera).
    pub capture: Duration,
    pub image: FrameImage,
}

pub enum Next {
    Frame(Frame),
    /// Nothing now (waiting for a file, a camera to come back); ask again soon.
    Idle,
    /// The source is exhausted (end of folder without `watch`, end of stdin).
    End,
}

pub trait FrameSource {
    fn next_frame(&mut self) -> Next;
    fn describe(&self) -> String;
}

/// Image files of a folder in name order; with `watch`, files that appear later too.
pub struct DirectorySource {
    dir: PathBuf,
    watch: bool,
    seen: BTreeSet<PathBuf>,
    pending: std::collections::VecDeque<PathBuf>,
    last_scan: Option<Instant>,
}

fn is_image_name(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

impl DirectorySource {
    pub fn new(dir: &Path, watch: bool) -> Result<DirectorySource, SourceError> {
        let mut s = DirectorySource {
            dir: dir.to_owned(),
            watch,
            seen: BTreeSet::new(),
            pending: Default::default(),
            last_scan: None,
        };
        s.scan()?;
        Ok(s)
    }

    fn scan(&mut self) -> Result<(), SourceError> {
        self.last_scan = Some(Instant::now());
        let entries = std::fs::read_dir(&self.dir).map_err(|source| SourceError::Folder {
            path: self.dir.clone(),
            source,
        })?;
        let mut new: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_image_name(p) && !self.seen.contains(p))
            .collect();
        new.sort();
        for p in new {
            self.seen.insert(p.clone());
            self.pending.push_back(p);
        }
        Ok(())
    }
}

impl FrameSource for DirectorySource {
    fn next_frame(&mut self) -> Next {
        if self.pending.is_empty() && self.watch {
            let due = self
                .last_scan
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(500));
            if due {
                if let Err(e) = self.scan() {
                    tracing::warn!("{e}");
                }
            }
        }
        let Some(path) = self.pending.pop_front() else {
            return if self.watch { Next::Idle } else { Next::End };
        };
        let t = Instant::now();
        let captured_at = SystemTime::now();
        match std::fs::read(&path) {
            Ok(bytes) => Next::Frame(Frame {
                origin: path.display().to_string(),
                captured_at,
                capture: t.elapsed(),
                image: FrameImage::Encoded(bytes),
            }),
            Err(e) => {
                // A file that vanished or cannot be read is skipped like a bad frame.
                tracing::warn!(path = %path.display(), "cannot read image file: {e}");
                Next::Frame(Frame {
                    origin: path.display().to_string(),
                    captured_at,
                    capture: t.elapsed(),
                    image: FrameImage::Encoded(Vec::new()),
                })
            }
        }
    }

    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }
}

/// The default largest JPEG the splitter assembles (`source.max_frame_bytes`); a longer
/// one (a stream that lost its end marker) is dropped so that memory stays bounded. A 4K
/// MJPEG frame is a few MB.
pub const MAX_JPEG_BYTES: usize = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// Looking for SOI (`FF D8`); bytes before it are not part of any frame.
    Seeking,
    /// Inside a frame, at a marker (`FF xx`).
    Marker,
    /// Inside entropy-coded data after SOS, where only `FF 00` and `FF D0..D7` are not
    /// markers.
    Entropy,
}

/// Splits an MJPEG byte stream into its JPEG images by walking their structure: segments
/// are skipped by their length, so an `FF D9` inside an EXIF thumbnail (APP1) does not end
/// the frame; each byte is examined once, however the stream is chunked; bytes outside a
/// frame are discarded at once, and a frame over its size limit is dropped.
///
/// Written by hand: the `image`/`jpeg-decoder` crates decode one complete JPEG, and no
/// well-kept crate splits a stream of them.
pub struct MjpegSplitter {
    buf: Vec<u8>,
    max_bytes: usize,
    /// Next byte to examine.
    pos: usize,
    walk: Walk,
    /// Frames dropped (too long, or a marker where a marker must be missing).
    pub dropped: u64,
}

impl Default for MjpegSplitter {
    fn default() -> Self {
        MjpegSplitter::new(MAX_JPEG_BYTES)
    }
}

impl MjpegSplitter {
    /// A splitter dropping frames longer than `max_bytes`.
    pub fn new(max_bytes: usize) -> MjpegSplitter {
        MjpegSplitter {
            buf: Vec::new(),
            max_bytes,
            pos: 0,
            walk: Walk::Seeking,
            dropped: 0,
        }
    }

    /// Add bytes; return every complete JPEG now available.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            match self.walk {
                Walk::Seeking => {
                    let rest = self.buf.get(self.pos..).unwrap_or_default();
                    match rest.windows(2).position(|w| w == [0xFF, 0xD8]) {
                        Some(at) => {
                            // The frame starts the buffer: nothing before it is kept.
                            self.buf.drain(..self.pos + at);
                            self.pos = 2;
                            self.walk = Walk::Marker;
                        }
                        None => {
                            // Keep a trailing 0xFF: it may start the SOI.
                            let keep = usize::from(self.buf.last() == Some(&0xFF));
                            self.buf.drain(..self.buf.len() - keep);
                            self.pos = 0;
                            return out;
                        }
                    }
                }
                Walk::Marker => {
                    let Some(&[ff, marker]) = self.buf.get(self.pos..self.pos + 2) else {
                        break;
                    };
                    if ff != 0xFF {
                        // A segment's length did not lead to a marker: not a JPEG after all.
                        self.resync();
                        continue;
                    }
                    match marker {
                        // Fill byte before a marker.
                        0xFF => self.pos += 1,
                        0xD9 => {
                            let end = self.pos + 2;
                            if end > self.max_bytes {
                                self.dropped += 1;
                            } else {
                                out.push(self.buf[..end].to_vec());
                            }
                            self.buf.drain(..end);
                            self.pos = 0;
                            self.walk = Walk::Seeking;
                        }
                        // A new SOI: the frame before it never ended.
                        0xD8 => {
                            self.dropped += 1;
                            self.buf.drain(..self.pos);
                            self.pos = 2;
                        }
                        // Markers without a length.
                        0x01 | 0xD0..=0xD7 => self.pos += 2,
                        _ => {
                            let Some(&[hi, lo]) = self.buf.get(self.pos + 2..self.pos + 4) else {
                                break;
                            };
                            let length = u16::from_be_bytes([hi, lo]) as usize;
                            if length < 2 {
                                self.resync();
                                continue;
                            }
                            self.pos += 2 + length;
                            if marker == 0xDA {
                                self.walk = Walk::Entropy;
                            }
                        }
                    }
                }
                Walk::Entropy => {
                    // A segment skipped by its length may end past what has arrived.
                    let rest = self.buf.get(self.pos..).unwrap_or_default();
                    let Some(at) = rest.iter().position(|&b| b == 0xFF) else {
                        self.pos = self.pos.max(self.buf.len());
                        break;
                    };
                    let at = self.pos + at;
                    match self.buf.get(at + 1) {
                        None => {
                            self.pos = at;
                            break;
                        }
                        Some(0x00 | 0xD0..=0xD7) => self.pos = at + 2,
                        Some(_) => {
                            self.pos = at;
                            self.walk = Walk::Marker;
                        }
                    }
                }
            }
        }
        if self.walk != Walk::Seeking && self.buf.len() > self.max_bytes {
            self.resync();
            return [out, self.push(&[])].concat();
        }
        out
    }

    /// Bytes held for a frame not yet complete.
    pub fn held(&self) -> usize {
        self.buf.len()
    }

    /// Give up the frame being assembled and look for the next SOI after its start.
    fn resync(&mut self) {
        self.dropped += 1;
        self.pos = 2;
        self.walk = Walk::Seeking;
    }
}

/// JPEG frames from standard input, read by a background thread.
pub struct StdinSource {
    frames: mpsc::Receiver<(Vec<u8>, Instant)>,
    count: u64,
}

impl StdinSource {
    pub fn new() -> StdinSource {
        Self::from_reader(Box::new(std::io::stdin()), MAX_JPEG_BYTES)
    }

    /// Frames from `reader`, each at most `max_frame_bytes` long.
    pub fn from_reader(mut reader: Box<dyn Read + Send>, max_frame_bytes: usize) -> StdinSource {
        // A small bound: when captioning is slower than the stream, old frames are dropped
        // by the reader rather than piling up.
        let (tx, rx) = mpsc::sync_channel(2);
        std::thread::spawn(move || {
            let mut splitter = MjpegSplitter::new(max_frame_bytes);
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::error!("reading stdin: {e}");
                        break;
                    }
                };
                let dropped = splitter.dropped;
                let jpegs = splitter.push(&buf[..n]);
                // Logged once as a warning (a broken stream drops many), then counted.
                if splitter.dropped > dropped && dropped == 0 {
                    tracing::warn!(
                        "stdin: dropped an incomplete JPEG frame or one over \
                         source.max_frame_bytes = {max_frame_bytes}; later drops are logged \
                         at debug level with their count"
                    );
                } else if splitter.dropped > dropped {
                    tracing::debug!("stdin: {} frames dropped so far", splitter.dropped);
                }
                for jpeg in jpegs {
                    match tx.try_send((jpeg, Instant::now())) {
                        Ok(()) | Err(mpsc::TrySendError::Full(_)) => {}
                        Err(mpsc::TrySendError::Disconnected(_)) => return,
                    }
                }
            }
        });
        StdinSource {
            frames: rx,
            count: 0,
        }
    }
}

impl Default for StdinSource {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameSource for StdinSource {
    fn next_frame(&mut self) -> Next {
        match self.frames.recv_timeout(Duration::from_millis(200)) {
            Ok((bytes, at)) => {
                self.count += 1;
                Next::Frame(Frame {
                    origin: format!("stdin#{}", self.count),
                    captured_at: SystemTime::now(),
                    capture: at.elapsed(),
                    image: FrameImage::Encoded(bytes),
                })
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Next::Idle,
            Err(mpsc::RecvTimeoutError::Disconnected) => Next::End,
        }
    }

    fn describe(&self) -> String {
        "MJPEG on stdin".into()
    }
}

#[cfg(feature = "camera")]
mod camera {
    use super::*;
    use crate::backoff::Backoff;
    use crate::config::PixelFormat;
    use nokhwa::pixel_format::RgbFormat;
    use nokhwa::utils::{
        CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType, Resolution,
    };

    pub struct CameraSource {
        config: SourceConfig,
        camera: Option<nokhwa::Camera>,
        backoff: Backoff,
        retry_at: Option<Instant>,
        /// Set while the camera is missing, so an outage is logged once.
        outage_since: Option<Instant>,
    }

    pub fn index(device: &str) -> CameraIndex {
        match device.parse::<u32>() {
            Ok(i) => CameraIndex::Index(i),
            Err(_) => match device
                .strip_prefix("/dev/video")
                .and_then(|n| n.parse::<u32>().ok())
            {
                Some(i) => CameraIndex::Index(i),
                None => CameraIndex::String(device.to_owned()),
            },
        }
    }

    impl CameraSource {
        pub fn new(config: &SourceConfig) -> CameraSource {
            CameraSource {
                config: config.clone(),
                camera: None,
                backoff: Backoff::new(
                    Duration::from_millis(config.reconnect_min_ms),
                    Duration::from_millis(config.reconnect_max_ms),
                ),
                retry_at: None,
                outage_since: None,
            }
        }

        fn open(&self) -> Result<nokhwa::Camera, nokhwa::NokhwaError> {
            let c = &self.config;
            let format = match c.format {
                PixelFormat::Mjpeg => FrameFormat::MJPEG,
                PixelFormat::Yuyv => FrameFormat::YUYV,
            };
            let wanted = CameraFormat::new(Resolution::new(c.width, c.height), format, c.fps);
            let requested = RequestedFormat::new::<RgbFormat>(RequestedFormatType::Closest(wanted));
            let mut camera = nokhwa::Camera::new(index(&c.device), requested)?;
            camera.open_stream()?;
            Ok(camera)
        }

        fn lost(&mut self, problem: String) {
            self.camera = None;
            if self.outage_since.is_none() {
                tracing::error!(
                    device = %self.config.device,
                    "camera unavailable: {problem}; retrying with back-off"
                );
                self.outage_since = Some(Instant::now());
            }
            self.retry_at = Some(Instant::now() + self.backoff.next_wait());
        }
    }

    impl FrameSource for CameraSource {
        fn next_frame(&mut self) -> Next {
            if self.camera.is_none() {
                if self.retry_at.is_some_and(|t| Instant::now() < t) {
                    std::thread::sleep(Duration::from_millis(50));
                    return Next::Idle;
                }
                match self.open() {
                    Ok(camera) => {
                        if let Some(since) = self.outage_since.take() {
                            tracing::info!(
                                device = %self.config.device,
                                "camera back after {:.1} s",
                                since.elapsed().as_secs_f64()
                            );
                        }
                        self.backoff.reset();
                        self.camera = Some(camera);
                    }
                    Err(e) => {
                        self.lost(e.to_string());
                        return Next::Idle;
                    }
                }
            }
            let camera = self.camera.as_mut().expect("opened above");
            let t = Instant::now();
            let captured_at = SystemTime::now();
            match camera
                .frame()
                .and_then(|buffer| buffer.decode_image::<RgbFormat>())
            {
                Ok(rgb) => Next::Frame(Frame {
                    origin: format!("camera {}", self.config.device),
                    captured_at,
                    capture: t.elapsed(),
                    image: FrameImage::Rgb(rgb),
                }),
                Err(e) => {
                    self.lost(e.to_string());
                    Next::Idle
                }
            }
        }

        fn describe(&self) -> String {
            format!("camera {}", self.config.device)
        }
    }

    /// `captiond cameras`: devices and their formats, one line each.
    pub fn list() -> Result<Vec<String>, SourceError> {
        let err = |e: nokhwa::NokhwaError| SourceError::Camera {
            device: "*".into(),
            problem: e.to_string(),
        };
        let backend = nokhwa::native_api_backend().ok_or(SourceError::Camera {
            device: "*".into(),
            problem: "no camera backend on this platform".into(),
        })?;
        let mut lines = Vec::new();
        for info in nokhwa::query(backend).map_err(err)? {
            lines.push(format!(
                "{}\t{}\t{}",
                info.index(),
                info.human_name(),
                info.description()
            ));
            let requested = RequestedFormat::new::<RgbFormat>(RequestedFormatType::None);
            match nokhwa::Camera::new(info.index().clone(), requested)
                .and_then(|mut c| c.compatible_camera_formats())
            {
                Ok(formats) => {
                    for f in formats {
                        lines.push(format!(
                            "\t{} {}x{} @ {} fps",
                            f.format(),
                            f.resolution().width(),
                            f.resolution().height(),
                            f.frame_rate()
                        ));
                    }
                }
                Err(e) => lines.push(format!("\tformats unavailable: {e}")),
            }
        }
        Ok(lines)
    }
}

/// List cameras and their formats (`captiond cameras`).
pub fn list_cameras() -> Result<Vec<String>, SourceError> {
    #[cfg(feature = "camera")]
    {
        camera::list()
    }
    #[cfg(not(feature = "camera"))]
    {
        Err(SourceError::NoCameraSupport)
    }
}

/// The source a config asks for.
pub fn open(config: &SourceConfig) -> Result<Box<dyn FrameSource>, SourceError> {
    Ok(match config.kind {
        SourceKind::Directory => Box::new(DirectorySource::new(&config.path, config.watch)?),
        SourceKind::Stdin => Box::new(StdinSource::from_reader(
            Box::new(std::io::stdin()),
            config.max_frame_bytes,
        )),
        #[cfg(feature = "camera")]
        SourceKind::Camera => Box::new(camera::CameraSource::new(config)),
        #[cfg(not(feature = "camera"))]
        SourceKind::Camera => return Err(SourceError::NoCameraSupport),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal structurally valid JPEG: SOI, an APP segment holding `app`, SOS with a
    /// one-component header, `entropy`, EOI.
    fn jpeg(app: &[u8], entropy: &[u8]) -> Vec<u8> {
        let mut v = vec![0xFF, 0xD8, 0xFF, 0xE1];
        v.extend_from_slice(&((app.len() + 2) as u16).to_be_bytes());
        v.extend_from_slice(app);
        v.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 1, 1, 0, 0, 63, 0]);
        v.extend_from_slice(entropy);
        v.extend_from_slice(&[0xFF, 0xD9]);
        v
    }

    fn split(stream: &[u8], chunk: usize) -> (Vec<Vec<u8>>, MjpegSplitter) {
        let mut s = MjpegSplitter::default();
        let mut frames = Vec::new();
        for c in stream.chunks(chunk) {
            frames.extend(s.push(c));
        }
        (frames, s)
    }

    #[test]
    fn mjpeg_splitter_finds_frames_across_chunks() {
        let a = jpeg(b"Exif", &[1, 2, 0xFF, 0x00, 3, 0xFF, 0xD3, 4]);
        let b = jpeg(b"", &[9]);
        let mut stream = vec![7, 7, 0xFF];
        stream.extend_from_slice(&a);
        stream.extend_from_slice(&[0, 0xFF]);
        stream.extend_from_slice(&b);
        for chunk in [1, 2, 3, 7, 1000] {
            let (frames, s) = split(&stream, chunk);
            assert_eq!(frames, vec![a.clone(), b.clone()], "chunk {chunk}");
            assert_eq!(s.dropped, 0);
        }
    }

    #[test]
    fn an_exif_thumbnail_does_not_end_the_frame() {
        // The APP1 segment holds a whole JPEG thumbnail, EOI included.
        let thumbnail = jpeg(b"", &[5, 6]);
        let mut app = b"Exif\0\0".to_vec();
        app.extend_from_slice(&thumbnail);
        let frame = jpeg(&app, &[1, 2, 3]);
        let (frames, _) = split(&frame, 5);
        assert_eq!(frames, vec![frame]);
    }

    #[test]
    fn real_flickr8k_frames_come_out_whole() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/images");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let originals: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
        let stream = originals.concat();
        let (frames, s) = split(&stream, 4096);
        assert_eq!(frames.len(), originals.len());
        assert!(frames == originals);
        assert_eq!(s.dropped, 0);
    }

    #[test]
    fn garbage_and_a_frame_that_never_ends_are_dropped_and_later_frames_pass() {
        let good = jpeg(b"", &[1, 2, 3]);
        // Megabytes without a marker, then a frame cut off mid-scan, then a good one.
        let mut stream = vec![0x55u8; 3 << 20];
        let mut cut = jpeg(b"", &[]);
        cut.truncate(cut.len() - 2);
        cut.extend(std::iter::repeat_n(0x11, 1000));
        stream.extend_from_slice(&cut);
        stream.extend_from_slice(&good);
        let (frames, s) = split(&stream, 1 << 16);
        assert_eq!(frames, vec![good.clone()]);
        assert_eq!(s.dropped, 1);
        assert!(s.buf.is_empty());

        // An endless frame is dropped at the size cap; memory stays bounded.
        let mut s = MjpegSplitter::default();
        s.push(&jpeg(b"", &[])[..14]);
        let chunk = vec![0x22u8; 1 << 20];
        for _ in 0..(MAX_JPEG_BYTES >> 20) + 2 {
            assert!(s.push(&chunk).is_empty());
            assert!(s.buf.len() <= MAX_JPEG_BYTES + chunk.len());
        }
        assert_eq!(s.dropped, 1);
        assert_eq!(s.push(&good), vec![good.clone()]);

        // The cap is the caller's: a frame over it is dropped, one under it passes.
        let mut small = MjpegSplitter::new(good.len() + 100);
        let mut big = jpeg(b"", &[7; 200]);
        big.extend_from_slice(&good);
        assert_eq!(small.push(&big), vec![good]);
        assert_eq!(small.dropped, 1);
    }

    #[test]
    fn directory_source_reads_in_name_order_and_watches() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["b.jpg", "a.png", "notes.txt", "c.JPG"] {
            std::fs::write(dir.path().join(n), n).unwrap();
        }
        let mut s = DirectorySource::new(dir.path(), true).unwrap();
        let mut names = Vec::new();
        for _ in 0..3 {
            match s.next_frame() {
                Next::Frame(f) => names.push(Path::new(&f.origin).file_name().unwrap().to_owned()),
                _ => panic!("expected a frame"),
            }
        }
        assert_eq!(names, ["a.png", "b.jpg", "c.JPG"]);
        assert!(matches!(s.next_frame(), Next::Idle));
        std::fs::write(dir.path().join("d.jpg"), "d").unwrap();
        std::thread::sleep(Duration::from_millis(600));
        assert!(matches!(s.next_frame(), Next::Frame(_)));
        let mut once = DirectorySource::new(dir.path(), false).unwrap();
        for _ in 0..4 {
            assert!(matches!(once.next_frame(), Next::Frame(_)));
        }
        assert!(matches!(once.next_frame(), Next::End));
    }
}
