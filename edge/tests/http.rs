//! The status page and HTTP API, on a real `captiond run` (embedded broker, a watched folder
//! of real Flickr8k fixture images), spoken to over plain TCP; and the page in a real
//! headless Chromium when one is installed (scripts/ensure-system-deps.sh installs it).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use caption_proto::mqtt::CaptionEvent;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn fixture_images() -> Vec<PathBuf> {
    let dir = workspace().join("fixtures/flickr8k/Flicker8k_Dataset");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.sort();
    files
}

struct Response {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Response {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: not JSON: {}", self.text()))
    }
    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// One HTTP/1.1 request, `Connection: close`, the whole response read.
fn request(port: u16, method: &str, path: &str, headers: &[&str], body: &[u8]) -> Response {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) before the whole body is sent.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {}", String::from_utf8_lossy(&raw)));
    let headers = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = headers.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..line]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[line + 2..line + 2 + size]);
        b = &b[line + 2 + size + 2..];
    }
}

fn get(port: u16, path: &str) -> Response {
    request(port, "GET", path, &[], b"")
}

struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
    http: u16,
    watched: PathBuf,
}

impl Daemon {
    /// `captiond run` on an empty watched folder, embedded broker, `[http]` on a free port.
    fn start(http_extra: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let (http, mqtt) = (free_port(), free_port());
        let watched = dir.path().join("watched");
        std::fs::create_dir(&watched).unwrap();
        let cfg = dir.path().join("captiond.toml");
        std::fs::write(
            &cfg,
            format!(
                "device_id = \"http-test\"\nlog_level = \"info,rumqttd=warn\"\n\
                 [model]\nbundle = \"{}\"\nthreads = 1\n\
                 [source]\npath = \"{}\"\nwatch = true\n\
                 [mqtt]\nstats_interval_s = 0\n\
                 [embedded_broker]\nlisten = \"127.0.0.1:{mqtt}\"\n\
                 [http]\nlisten = \"127.0.0.1:{http}\"\n{http_extra}",
                workspace()
                    .join("models/flickr8k-lite1-attention-f16")
                    .display(),
                watched.display()
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_captiond"))
            .args(["run", "--config"])
            .arg(&cfg)
            .stdout(std::fs::File::create(dir.path().join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        let d = Daemon {
            child,
            dir,
            http,
            watched,
        };
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", http)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "no HTTP server: {}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Drop fixture image `i` into the watched folder.
    fn add_image(&self, i: usize) -> PathBuf {
        let src = &fixture_images()[i];
        let dst = self.watched.join(src.file_name().unwrap());
        std::fs::copy(src, &dst).unwrap();
        dst
    }

    fn wait_captions(&self, n: u64, auth: &[&str]) {
        let t = Instant::now();
        loop {
            // Published captions (the counter moves before the caption is published).
            let s = request(
                self.http,
                "GET",
                "/api/cameras/main/captions?limit=50",
                auth,
                b"",
            );
            if s.status == 200 && s.json().as_array().unwrap().len() as u64 >= n {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "{n} captions: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// `captiond caption` on files: their captions, in order.
fn captiond_caption(files: &[PathBuf]) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_captiond"))
        .args(["caption", "--threads", "1", "--bundle"])
        .arg(workspace().join("models/flickr8k-lite1-attention-f16"))
        .args(files)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split('\t').nth(1).unwrap().to_owned())
        .collect()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn status_snapshot_captions_metrics_and_posted_images() {
    let d = Daemon::start("");
    let first = d.add_image(0);
    d.wait_captions(1, &[]);

    let status = get(d.http, "/api/status");
    assert_eq!(status.status, 200);
    let s = status.json();
    assert_eq!(s["summary"]["model_id"], "flickr8k-lite1-attention-f16");
    assert_eq!(s["summary"]["device_id"], "http-test");
    assert!(s.get("connected").is_some() && s["cameras"][0]["name"] == "main");
    let latest: CaptionEvent = serde_json::from_value(s["cameras"][0]["latest"].clone()).unwrap();

    // The snapshot: a JPEG of the captioned frame's size (224×224 fixtures, under max_side).
    let jpg = get(d.http, "/api/cameras/main/latest.jpg");
    assert_eq!(jpg.status, 200);
    assert_eq!(jpg.header("content-type").as_deref(), Some("image/jpeg"));
    let img = image::load_from_memory(&jpg.body).expect("a decodable JPEG");
    let src = image::open(&first).unwrap();
    assert_eq!((img.width(), img.height()), (src.width(), src.height()));
    assert_eq!(get(d.http, "/api/cameras/garden/latest.jpg").status, 404);

    let list = get(d.http, "/api/cameras/main/captions?limit=5");
    assert_eq!(list.status, 200);
    let list: Vec<CaptionEvent> = serde_json::from_slice(&list.body).unwrap();
    assert_eq!(list.first(), Some(&latest));

    // Metrics parse as Prometheus text and count on.
    let m1 = get(d.http, "/metrics");
    assert_eq!(m1.status, 200);
    let text = m1.text();
    for line in text.lines() {
        if line.starts_with('#') {
            assert!(
                line.starts_with("# HELP ") || line.starts_with("# TYPE "),
                "{line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        value.parse::<f64>().unwrap_or_else(|_| panic!("{line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
    }
    let before = metric(&text, "captiond_captions_total");
    d.add_image(1);
    d.wait_captions(before as u64 + 1, &[]);
    let after = metric(&get(d.http, "/metrics").text(), "captiond_captions_total");
    assert!(after > before, "{before} -> {after}");
    assert!(text.contains("captiond_latency_ms_bucket{stage=\"encoder\",le=\"+Inf\"}"));

    // POST a real image: the same caption as `captiond caption` on the file.
    let posted = fixture_images()[2].clone();
    let r = request(
        d.http,
        "POST",
        "/api/caption",
        &["Content-Type: image/jpeg"],
        &std::fs::read(&posted).unwrap(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let event: CaptionEvent = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(event.model_id, "flickr8k-lite1-attention-f16");
    assert_eq!(vec![event.caption.clone()], captiond_caption(&[posted]));
    assert!(event.latency_ms.encoder > 0.0 && event.score < 0.0);

    let garbage = request(d.http, "POST", "/api/caption", &[], b"this is not an image");
    assert_eq!(garbage.status, 400);
    assert!(garbage.json()["error"]
        .as_str()
        .unwrap()
        .contains("not a JPEG or PNG"));
    let huge = vec![0u8; 9 << 20];
    assert_eq!(
        request(d.http, "POST", "/api/caption", &[], &huge).status,
        413
    );
    let page = get(d.http, "/");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<title>captiond</title>"));
}

#[test]
fn a_token_guards_everything_but_metrics_and_a_full_queue_answers_503() {
    let d = Daemon::start("token = \"s3cret-t0ken\"\nqueue = 1\n");
    let auth = ["Authorization: Bearer s3cret-t0ken"];
    let no = get(d.http, "/api/status");
    assert_eq!(no.status, 401);
    assert!(no.header("www-authenticate").is_some());
    let wrong = request(
        d.http,
        "GET",
        "/api/status",
        &["Authorization: Bearer s3cret-t0keN"],
        b"",
    );
    assert_eq!(wrong.status, 401);
    assert_eq!(
        request(d.http, "GET", "/api/status", &auth, b"").status,
        200
    );
    assert_eq!(get(d.http, "/api/status?token=s3cret-t0ken").status, 200);
    assert_eq!(get(d.http, "/").status, 401);
    assert_eq!(
        request(d.http, "POST", "/api/caption", &[], b"x").status,
        401
    );
    assert_eq!(get(d.http, "/metrics").status, 200);

    // Eight posts at once with room for one: some are refused with Retry-After, the
    // admitted ones are captioned, and the daemon keeps serving.
    let jpeg = std::fs::read(&fixture_images()[0]).unwrap();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let port = d.http;
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (jpeg, barrier) = (jpeg.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let r = request(port, "POST", "/api/caption", &auth, &jpeg);
                (r.status, r.header("retry-after"))
            })
        })
        .collect();
    let results: Vec<(u16, Option<String>)> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let busy: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert!(ok >= 1, "{results:?}");
    assert!(!busy.is_empty(), "{results:?}");
    assert!(
        busy.iter().all(|r| r.1.as_deref() == Some("1")),
        "{results:?}"
    );
    assert_eq!(ok + busy.len(), 8, "{results:?}");
    let m = get(d.http, "/metrics").text();
    assert_eq!(
        metric(&m, "captiond_http_rejected_total"),
        busy.len() as f64
    );
    assert_eq!(metric(&m, "captiond_http_captions_total"), ok as f64);
}

/// Headless Chromium, when installed: find it.
fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            let out = Command::new("sh")
                .args(["-c", &format!("command -v {name}")])
                .output()
                .ok()?;
            let path = String::from_utf8(out.stdout).ok()?.trim().to_owned();
            (!path.is_empty()).then(|| PathBuf::from(path))
        })
}

#[test]
fn the_page_in_headless_chromium_shows_the_caption_and_the_frame() {
    let Some(browser) = chromium() else {
        // CI installs it (scripts/ensure-system-deps.sh); say so loudly elsewhere.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have chromium (scripts/ensure-system-deps.sh)"
        );
        eprintln!("SKIPPED: no chromium installed");
        return;
    };
    let d = Daemon::start("");
    for i in 0..3 {
        d.add_image(i);
    }
    d.wait_captions(3, &[]);
    let caption = get(d.http, "/api/status").json()["cameras"][0]["latest"]["caption"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = format!("http://127.0.0.1:{}/", d.http);
    let run = |args: &[&str]| {
        let out = Command::new(&browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--virtual-time-budget=8000",
                "--window-size=420,900",
            ])
            .args(args)
            .arg(&url)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    // The DOM after the page's scripts ran: the caption text and the frame's <img>.
    let dom = String::from_utf8(run(&["--dump-dom"]).stdout).unwrap();
    assert!(dom.contains(&caption), "caption {caption:?} not in\n{dom}");
    assert!(
        dom.contains("src=\"/api/cameras/main/latest.jpg?id="),
        "no frame in\n{dom}"
    );
    // A screenshot, kept where the README's copy is made from (scripts/screenshot.sh).
    let shot = d.dir.path().join("page.png");
    run(&[&format!("--screenshot={}", shot.display())]);
    let png = image::open(&shot).expect("a PNG screenshot");
    assert_eq!((png.width(), png.height()), (420, 900));
    if let Some(out) = std::env::var_os("CAPTIOND_SCREENSHOT") {
        std::fs::copy(&shot, out).unwrap();
    }
}
