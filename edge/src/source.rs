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

/// Splits a byte stream into JPEG images at SOI (`FF D8`) .. EOI (`FF D9`) markers.
#[derive(Default)]
pub struct MjpegSplitter {
    buf: Vec<u8>,
}

impl MjpegSplitter {
    /// Add bytes; return every complete JPEG now available.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            let Some(start) = self.buf.windows(2).position(|w| w == [0xFF, 0xD8]) else {
                // Keep a trailing 0xFF: it may start a marker.
                let keep = usize::from(self.buf.last() == Some(&0xFF));
                self.buf.drain(..self.buf.len() - keep);
                break;
            };
            let Some(end) = self.buf[start + 2..]
                .windows(2)
                .position(|w| w == [0xFF, 0xD9])
            else {
                self.buf.drain(..start);
                break;
            };
            let end = start + 2 + end + 2;
            out.push(self.buf[start..end].to_vec());
            self.buf.drain(..end);
        }
        out
    }
}

/// JPEG frames from standard input, read by a background thread.
pub struct StdinSource {
    frames: mpsc::Receiver<(Vec<u8>, Instant)>,
    count: u64,
}

impl StdinSource {
    pub fn new() -> StdinSource {
        Self::from_reader(Box::new(std::io::stdin()))
    }

    pub fn from_reader(mut reader: Box<dyn Read + Send>) -> StdinSource {
        // A small bound: when captioning is slower than the stream, old frames are dropped
        // by the reader rather than piling up.
        let (tx, rx) = mpsc::sync_channel(2);
        std::thread::spawn(move || {
            let mut splitter = MjpegSplitter::default();
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
                for jpeg in splitter.push(&buf[..n]) {
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

/// Exponential back-off with ±25 % jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
    seed: u64,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        Backoff {
            min,
            max,
            current: min,
            seed,
        }
    }

    /// The next wait (jittered), doubling the base up to the maximum.
    pub fn next_wait(&mut self) -> Duration {
        // xorshift: jitter only needs to spread reconnecting clients apart.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let unit = (self.seed % 1000) as f64 / 1000.0; // 0..1
        let wait = self.current.mul_f64(0.75 + 0.5 * unit);
        self.current = (self.current * 2).min(self.max);
        wait
    }

    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(feature = "camera")]
mod camera {
    use super::*;
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
        SourceKind::Stdin => Box::new(StdinSource::new()),
        #[cfg(feature = "camera")]
        SourceKind::Camera => Box::new(camera::CameraSource::new(config)),
        #[cfg(not(feature = "camera"))]
        SourceKind::Camera => return Err(SourceError::NoCameraSupport),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mjpeg_splitter_finds_frames_across_chunks() {
        let a = [0xFF, 0xD8, 1, 2, 3, 0xFF, 0xD9];
        let b = [0xFF, 0xD8, 9, 0xFF, 0xD9];
        let mut stream = vec![7, 7];
        stream.extend_from_slice(&a);
        stream.extend_from_slice(&b);
        let mut s = MjpegSplitter::default();
        let mut frames = Vec::new();
        for chunk in stream.chunks(3) {
            frames.extend(s.push(chunk));
        }
        assert_eq!(frames, vec![a.to_vec(), b.to_vec()]);
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

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_maximum() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let waits: Vec<u128> = (0..6).map(|_| b.next_wait().as_millis()).collect();
        for (w, base) in waits.iter().zip([100u128, 200, 400, 800, 800, 800]) {
            assert!(*w >= base * 3 / 4 && *w <= base * 5 / 4, "{waits:?}");
        }
        b.reset();
        assert!(b.next_wait().as_millis() <= 125);
    }
}
