//! `captiond run` as a real process against a real mosquitto (started here on free
//! loopback ports) with a real subscriber, using the committed default bundle and real
//! Flickr8k fixture images.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caption_proto::mqtt::CaptionEvent;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn mosquitto_bin() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("mosquitto is not installed (scripts/ensure-system-deps.sh installs it)");
}

struct Mosquitto {
    child: Child,
    conf: PathBuf,
    port: u16,
}

impl Mosquitto {
    /// A broker with persistence in `dir`; `extra` adds config lines (e.g. a TLS listener).
    fn start(dir: &Path, port: u16, extra: &str) -> Mosquitto {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "user root\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nmax_queued_messages 100000\nmax_inflight_messages 100\n{extra}",
                dir.display()
            ),
        )
        .unwrap();
        Self::spawn(conf, port)
    }

    fn spawn(conf: PathBuf, port: u16) -> Mosquitto {
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "mosquitto did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto { child, conf, port }
    }

    /// SIGTERM (mosquitto saves its persistent sessions) and wait.
    fn stop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }

    /// Stop if running, then start again with the same config and persistence.
    fn restart(&mut self) {
        self.stop();
        let next = Self::spawn(self.conf.clone(), self.port);
        let old = std::mem::replace(self, next);
        std::mem::forget(old); // already stopped and reaped
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Payloads received on one topic, with their retain flag, in order.
type Received = Vec<(Vec<u8>, bool)>;

/// Everything a subscriber saw, by topic, in order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<HashMap<String, Received>>>);

impl Seen {
    fn payloads(&self, topic: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .get(topic)
            .map(|v| {
                v.iter()
                    .map(|(p, _)| String::from_utf8_lossy(p).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
    fn raw(&self, topic: &str) -> Vec<Vec<u8>> {
        self.0
            .lock()
            .unwrap()
            .get(topic)
            .map(|v| v.iter().map(|(p, _)| p.clone()).collect())
            .unwrap_or_default()
    }
    fn retained(&self, topic: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .get(topic)
            .map(|v| {
                v.iter()
                    .filter(|(_, r)| *r)
                    .map(|(p, _)| String::from_utf8_lossy(p).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
    fn wait_for(&self, what: &str, timeout: Duration, done: impl Fn(&Seen) -> bool) {
        let t = Instant::now();
        while !done(self) {
            assert!(t.elapsed() < timeout, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A QoS 1 subscriber to `captiond/#` with a persistent session; reconnects by itself.
fn subscribe(port: u16, id: &str) -> Seen {
    subscribe_to(port, id, &["captiond/#"])
}

/// A QoS 1 subscriber to `filters`, ready once every subscription is acknowledged.
fn subscribe_to(port: u16, id: &str, filters: &[&str]) -> Seen {
    let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
    let seen = Seen::default();
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_clean_session(false);
    o.set_keep_alive(Duration::from_secs(5));
    // Snapshots are JPEGs of tens of KB; rumqttc's default limit is 10 KB.
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut conn) = Client::new(o, 100);
    let s = seen.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut acks = 0;
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    acks = 0;
                    for f in &filters {
                        client.subscribe(f, QoS::AtLeastOnce).unwrap();
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    acks += 1;
                    if acks == filters.len() {
                        let _ = ready_tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let payload = p.payload.to_vec();
                    s.0.lock()
                        .unwrap()
                        .entry(p.topic.clone())
                        .or_default()
                        .push((payload, p.retain));
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("subscribed");
    seen
}

/// A folder with `n` real fixture images (cycled, renamed so names sort in order).
fn images(dir: &Path, n: usize) -> PathBuf {
    let src = workspace().join("fixtures/flickr8k/Flicker8k_Dataset");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.sort();
    let out = dir.join("frames");
    std::fs::create_dir_all(&out).unwrap();
    for i in 0..n {
        std::fs::copy(&files[i % files.len()], out.join(format!("{i:05}.jpg"))).unwrap();
    }
    out
}

fn config(dir: &Path, body: &str) -> PathBuf {
    let bundle = workspace().join("models/flickr8k-lite1-attention-f16");
    let path = dir.join("captiond.toml");
    std::fs::write(
        &path,
        format!(
            "device_id = \"test\"\nlog_level = \"info,rumqttd=warn\"\n[model]\nbundle = \"{}\"\n{body}",
            bundle.display()
        ),
    )
    .unwrap();
    path
}

/// Start `captiond run`; stdout and stderr go to files beside the config (a pipe nobody
/// reads would fill up and block the daemon).
fn daemon(config: &Path) -> Child {
    let dir = config.parent().unwrap();
    Command::new(env!("CARGO_BIN_EXE_captiond"))
        .args(["run", "--config"])
        .arg(config)
        .stdout(std::fs::File::create(dir.join("stdout.log")).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .spawn()
        .unwrap()
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(t.elapsed() < timeout, "captiond did not exit in time");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait for the daemon to exit and return its log (stderr).
fn stderr_of(mut child: Child, dir: &Path) -> String {
    child.wait().unwrap();
    std::fs::read_to_string(dir.join("stderr.log")).unwrap()
}

const CAPTION: &str = "captiond/test/main/caption";

/// The JSON payloads of `topic`, parsed.
fn parsed<T: serde::de::DeserializeOwned>(seen: &Seen, topic: &str) -> Vec<T> {
    seen.payloads(topic)
        .iter()
        .map(|p| serde_json::from_str(p).unwrap_or_else(|e| panic!("{topic}: {e}: {p}")))
        .collect()
}

fn events(seen: &Seen) -> Vec<CaptionEvent> {
    parsed(seen, CAPTION)
}

#[test]
fn a_folder_of_images_gives_one_event_each_and_retained_topics() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = Mosquitto::start(dir.path(), port, "");
    let seen = subscribe(port, "sub-folder");
    let frames = images(dir.path(), 6);
    // Bad files among the good ones: skipped, counted, logged with their path.
    std::fs::write(
        frames.join("00002a-corrupt.jpg"),
        b"\xff\xd8\xff\xe0 not really",
    )
    .unwrap();
    let good = std::fs::read(frames.join("00000.jpg")).unwrap();
    std::fs::write(frames.join("00003a-truncated.jpg"), &good[..good.len() / 2]).unwrap();
    std::fs::write(frames.join("00004a-text.png"), b"hello").unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "[source]\npath = \"{}\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nstats_interval_s = 1\n",
            frames.display()
        ),
    );
    let mut child = daemon(&cfg);
    let status = wait_exit(&mut child, Duration::from_secs(120));
    assert!(status.success());
    let stderr = stderr_of(child, dir.path());
    for bad in [
        "00002a-corrupt.jpg",
        "00003a-truncated.jpg",
        "00004a-text.png",
    ] {
        assert!(stderr.contains(bad), "{bad} not logged:\n{stderr}");
    }
    seen.wait_for("6 events", Duration::from_secs(10), |s| {
        events(s).len() >= 6
    });
    std::thread::sleep(Duration::from_millis(300));
    let evs = events(&seen);
    assert_eq!(evs.len(), 6);
    let raw: serde_json::Value = serde_json::from_str(&seen.payloads(CAPTION)[0]).unwrap();
    for field in [
        "id",
        "camera",
        "timestamp",
        "caption",
        "score",
        "model_id",
        "sequence",
        "latency_ms",
    ] {
        assert!(raw.get(field).is_some(), "missing {field}");
    }
    for f in ["capture", "decode", "encoder", "decoder", "total"] {
        assert!(raw["latency_ms"][f].as_f64().unwrap() >= 0.0);
    }
    for e in &evs {
        assert_eq!(e.camera, "main");
        assert_eq!(e.model_id, "flickr8k-lite1-attention-f16");
        assert!(!e.caption.is_empty() && e.score < 0.0);
        assert!(e.timestamp.ends_with('Z') && e.timestamp.contains('T'));
    }
    let stats: Vec<serde_json::Value> = seen
        .payloads("captiond/test/stats")
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect();
    let last = stats.last().expect("stats published");
    assert_eq!(last["skipped_frames"], 3, "{last}");
    assert_eq!(last["captions"], 6, "{last}");
    // A subscriber that comes late sees the retained state and availability.
    let late = subscribe(port, "sub-late");
    late.wait_for("retained topics", Duration::from_secs(5), |s| {
        !s.retained("captiond/test/availability").is_empty()
            && !s.retained("captiond/test/main/state").is_empty()
    });
    assert_eq!(late.retained("captiond/test/availability"), ["offline"]);
    assert_eq!(
        late.retained("captiond/test/main/state"),
        [evs.last().unwrap().caption.clone()]
    );
}

/// `jpeg` with an APP1 (EXIF-like) segment inserted after its SOI that holds `thumbnail`,
/// a whole JPEG with its own EOI, as cameras write them.
fn with_thumbnail(jpeg: &[u8], thumbnail: &[u8]) -> Vec<u8> {
    let mut app = b"Exif\0\0".to_vec();
    app.extend_from_slice(thumbnail);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&u16::try_from(app.len() + 2).unwrap().to_be_bytes());
    out.extend_from_slice(&app);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[test]
fn an_mjpeg_stream_on_stdin_is_captioned_frame_by_frame() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = Mosquitto::start(dir.path(), port, "");
    let frames = images(dir.path(), 4);
    let mut jpegs: Vec<Vec<u8>> = (0..4)
        .map(|i| std::fs::read(frames.join(format!("{i:05}.jpg"))).unwrap())
        .collect();
    // Frame 1 carries a thumbnail (frame 3, EOI included) in an APP1 segment.
    jpegs[1] = with_thumbnail(&jpegs[1], &jpegs[3].clone());
    let cfg = config(
        dir.path(),
        &format!(
            "[source]\nkind = \"stdin\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nstats_interval_s = 0\n"
        ),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_captiond"))
        .args(["run", "--config"])
        .arg(&cfg)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(dir.path().join("stdout.log")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        // Bytes before the first frame and between frames are not frames; a camera
        // stream is paced, so the reader drops nothing.
        stdin.write_all(&[0x55; 100_000]).unwrap();
        for jpeg in &jpegs {
            for chunk in jpeg.chunks(4096) {
                stdin.write_all(chunk).unwrap();
            }
            stdin.write_all(b"\x00\x00").unwrap();
            stdin.flush().unwrap();
            std::thread::sleep(Duration::from_millis(1500));
        }
    } // closing stdin ends the stream, and the daemon
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let stderr = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("skipping a bad frame"), "{stderr}");
    let events: Vec<CaptionEvent> = std::fs::read_to_string(dir.path().join("stdout.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one event per line"))
        .collect();
    assert_eq!(events.len(), 4, "{stderr}");
    let captions: Vec<&str> = events.iter().map(|e| e.caption.as_str()).collect();
    // Each frame gets its own caption: the same as `captiond caption` gives the file.
    let out = Command::new(env!("CARGO_BIN_EXE_captiond"))
        .args(["caption", "--bundle"])
        .arg(workspace().join("models/flickr8k-lite1-attention-f16"))
        .args((0..4).map(|i| frames.join(format!("{i:05}.jpg"))))
        .output()
        .unwrap();
    let expected: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split('\t').nth(1).unwrap().to_owned())
        .collect();
    assert_eq!(captions, expected);
}

#[test]
fn the_embedded_broker_as_the_main_job_runs_it_serves_subscribers_and_runs_without_errors() {
    // examples/demo.toml (scripts/main.sh) on a free port and an empty watched folder.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let watched = dir.path().join("watched");
    std::fs::create_dir(&watched).unwrap();
    let demo = std::fs::read_to_string(workspace().join("examples/demo.toml")).unwrap();
    let demo = demo
        .replace("\"models/", &format!("\"{}/models/", workspace().display()))
        .replace("\"examples/images\"", &format!("\"{}\"", watched.display()))
        .replace("127.0.0.1:1883", &format!("127.0.0.1:{port}"));
    let cfg = dir.path().join("demo.toml");
    std::fs::write(&cfg, demo).unwrap();
    let mut child = daemon(&cfg);
    // The subscriber retries until the daemon's broker is up.
    let seen = subscribe(port, "sub-embedded");
    let frames = images(dir.path(), 3);
    for i in 0..3 {
        let name = format!("{i:05}.jpg");
        std::fs::copy(frames.join(&name), watched.join(&name)).unwrap();
    }
    let topic = "captiond/demo/main/caption";
    seen.wait_for("3 captions", Duration::from_secs(60), |s| {
        s.payloads(topic).len() >= 3
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
    let stderr = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(
        stderr.contains("embedded MQTT broker listening"),
        "{stderr}"
    );
    // No error from start to stop (rumqttd logged a clean disconnect as one).
    assert!(
        stderr.contains("stopping:") && !stderr.contains("ERROR"),
        "the run holds an error:\n{stderr}"
    );
    for payload in seen.payloads(topic) {
        let event: CaptionEvent = serde_json::from_str(&payload).unwrap();
        assert!(!event.caption.is_empty());
    }
}

/// Publish `payload` once (QoS 1) and wait for the broker's acknowledgement.
fn publish(port: u16, topic: &str, payload: &[u8]) {
    let mut o = MqttOptions::new(format!("cmd-{}", free_port()), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = Client::new(o, 10);
    client
        .publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
        .unwrap();
    for ev in conn.iter() {
        match ev {
            Ok(Event::Incoming(Packet::PubAck(_))) => break,
            Ok(_) => {}
            Err(e) => panic!("publishing a command: {e}"),
        }
    }
    let _ = client.disconnect();
}

fn results(seen: &Seen) -> Vec<serde_json::Value> {
    parsed(seen, "captiond/test/main/command/result")
}

#[test]
fn mqtt_commands_pause_resume_caption_now_and_home_assistant_entities() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = Mosquitto::start(dir.path(), port, "");
    let seen = subscribe_to(port, "sub-commands", &["captiond/#", "homeassistant/#"]);
    let frames = images(dir.path(), 60);
    let cfg = config(
        dir.path(),
        &format!(
            "[source]\npath = \"{}\"\ninterval_ms = 300\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nstats_interval_s = 0\n",
            frames.display()
        ),
    );
    let mut child = daemon(&cfg);
    let t = Instant::now();
    while events(&seen).len() < 2 {
        let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
        assert!(t.elapsed() < Duration::from_secs(60), "no events:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let command = "captiond/test/main/command";

    // pause: the result, the retained state, and no more events.
    publish(port, command, b"pause");
    seen.wait_for("the pause result", Duration::from_secs(10), |s| {
        results(s).len() == 1
    });
    assert_eq!(results(&seen)[0]["ok"], true);
    seen.wait_for("paused = true", Duration::from_secs(10), |s| {
        s.payloads("captiond/test/main/paused")
            .last()
            .map(String::as_str)
            == Some("true")
    });
    std::thread::sleep(Duration::from_millis(800)); // a frame in flight may still land
    let paused_at = events(&seen).len();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(events(&seen).len(), paused_at, "events while paused");

    // caption_now while paused: exactly one event.
    publish(port, command, b"caption_now");
    seen.wait_for("one forced caption", Duration::from_secs(10), |s| {
        events(s).len() > paused_at
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(events(&seen).len(), paused_at + 1);

    // Malformed commands are answered with the reason; the daemon keeps running.
    publish(port, command, b"reboot");
    publish(port, command, br#"{"interval_ms": "soon"}"#);
    seen.wait_for("4 results", Duration::from_secs(10), |s| {
        results(s).len() >= 4
    });
    let r = results(&seen);
    assert_eq!(r[1]["command"], "caption_now");
    for bad in &r[2..4] {
        assert_eq!(bad["ok"], false, "{bad}");
        assert!(!bad["message"].as_str().unwrap().is_empty());
    }
    assert!(r[2]["message"]
        .as_str()
        .unwrap()
        .contains("caption_now, pause, resume"));
    assert!(child.try_wait().unwrap().is_none(), "captiond stopped");

    // resume: events flow again; the interval can be changed.
    publish(port, command, br#"{"interval_ms": 100}"#);
    publish(port, command, b"resume");
    seen.wait_for("events after resume", Duration::from_secs(20), |s| {
        events(s).len() >= paused_at + 3
    });
    assert_eq!(
        seen.payloads("captiond/test/main/paused")
            .last()
            .map(String::as_str),
        Some("false")
    );

    // The snapshot: a retained JPEG of the captioned frame.
    let snap = seen.raw("captiond/test/main/snapshot");
    let jpeg = snap.last().expect("a snapshot");
    let img = image::load_from_memory(jpeg).expect("a decodable JPEG");
    assert!(img.width() > 0 && img.width().max(img.height()) <= 640);

    // Home Assistant: sensor, image, button and switch configs, retained, valid JSON.
    let late = subscribe_to(
        port,
        "sub-ha-late",
        &[
            "homeassistant/#",
            "captiond/test/main/paused",
            "captiond/test/main/snapshot",
        ],
    );
    let base = "homeassistant/{}/test_main_{}/config";
    let topic =
        |component: &str, object: &str| base.replacen("{}", component, 1).replacen("{}", object, 1);
    let wanted = [
        topic("sensor", "caption"),
        topic("image", "snapshot"),
        topic("button", "caption_now"),
        topic("switch", "captioning"),
    ];
    late.wait_for(
        "4 retained discovery configs",
        Duration::from_secs(10),
        |s| {
            wanted.iter().all(|t| !s.retained(t).is_empty())
                && !s.retained("captiond/test/main/snapshot").is_empty()
        },
    );
    // The pause state and the snapshot are retained for whoever subscribes later.
    assert_eq!(late.retained("captiond/test/main/paused"), ["false"]);
    image::load_from_memory(&late.raw("captiond/test/main/snapshot")[0]).unwrap();
    let config = |t: &str| -> serde_json::Value {
        serde_json::from_str(late.retained(t).last().unwrap()).unwrap()
    };
    assert_eq!(
        config(&wanted[1])["image_topic"],
        "captiond/test/main/snapshot"
    );
    assert_eq!(config(&wanted[2])["command_topic"], command);
    assert_eq!(config(&wanted[2])["payload_press"], "caption_now");
    let switch = config(&wanted[3]);
    assert_eq!(switch["state_topic"], "captiond/test/main/paused");
    assert_eq!(
        (&switch["payload_on"], &switch["payload_off"]),
        (&"resume".into(), &"pause".into())
    );

    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
}

#[test]
fn the_queue_file_carries_undelivered_events_across_a_restart_with_the_broker_down() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let queue = dir.path().join("queue.jsonl");
    // The subscriber's persistent session exists; then the broker goes away.
    let mut broker = Mosquitto::start(dir.path(), port, "");
    let seen = subscribe(port, "sub-queue-file");
    broker.stop();
    let mqtt = |timeout: u64| {
        format!(
            "[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\nshutdown_timeout_s = {timeout}\nqueue_file = \"{}\"\n",
            queue.display()
        )
    };
    // Run 1: three captions, no broker; at the end they are saved.
    let first = tempfile::tempdir().unwrap();
    let frames = images(first.path(), 3);
    let cfg = config(
        first.path(),
        &format!("[source]\npath = \"{}\"\n{}", frames.display(), mqtt(1)),
    );
    let mut child = daemon(&cfg);
    assert!(wait_exit(&mut child, Duration::from_secs(120)).success());
    let saved: Vec<CaptionEvent> = std::fs::read_to_string(&queue)
        .expect("the queue file is written at shutdown")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(saved.len(), 3);
    // Run 2 starts with the broker still down, captions one more frame, then the broker
    // comes back: the three saved events and the new one are delivered.
    let second = tempfile::tempdir().unwrap();
    let frames = images(second.path(), 1);
    let cfg = config(
        second.path(),
        &format!("[source]\npath = \"{}\"\n{}", frames.display(), mqtt(60)),
    );
    let mut child = daemon(&cfg);
    std::thread::sleep(Duration::from_secs(3));
    broker.restart();
    assert!(wait_exit(&mut child, Duration::from_secs(120)).success());
    seen.wait_for("4 events", Duration::from_secs(30), |s| {
        events(s).len() >= 4
    });
    let mut ids: Vec<String> = events(&seen).into_iter().map(|e| e.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "{ids:?}");
    for e in &saved {
        assert!(ids.contains(&e.id), "saved event {} not delivered", e.id);
    }
    let log = std::fs::read_to_string(second.path().join("stderr.log")).unwrap();
    assert!(log.contains("3 undelivered events reloaded"), "{log}");
    assert!(!queue.exists(), "an empty queue leaves no file");
}

#[test]
fn publish_on_change_holds_back_repeated_captions() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = Mosquitto::start(dir.path(), port, "");
    let seen = subscribe(port, "sub-on-change");
    let src = images(dir.path(), 2);
    let frames = dir.path().join("repeated");
    std::fs::create_dir(&frames).unwrap();
    // A A A B B A: three captions published, three held back.
    for (i, which) in [0, 0, 0, 1, 1, 0].iter().enumerate() {
        std::fs::copy(
            src.join(format!("{which:05}.jpg")),
            frames.join(format!("{i:05}.jpg")),
        )
        .unwrap();
    }
    let cfg = config(
        dir.path(),
        &format!(
            "[source]\npath = \"{}\"\npublish_on_change = true\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nstats_interval_s = 1\n",
            frames.display()
        ),
    );
    let mut child = daemon(&cfg);
    assert!(wait_exit(&mut child, Duration::from_secs(120)).success());
    seen.wait_for("stats", Duration::from_secs(10), |s| {
        !s.payloads("captiond/test/stats").is_empty() && events(s).len() >= 3
    });
    std::thread::sleep(Duration::from_millis(300));
    let evs = events(&seen);
    let seqs: Vec<u64> = evs.iter().map(|e| e.sequence).collect();
    assert_eq!(seqs, [0, 3, 5], "{evs:?}");
    assert_ne!(evs[0].caption, evs[1].caption);
    assert_eq!(evs[0].caption, evs[2].caption);
    let stats: Vec<serde_json::Value> = parsed(&seen, "captiond/test/stats");
    let last = stats.last().unwrap();
    assert_eq!(last["unchanged_captions"], 3, "{last}");
    assert_eq!(last["captions"], 6, "{last}");
}

#[test]
fn home_assistant_discovery_is_retained_and_re_sent_when_home_assistant_comes_online() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = Mosquitto::start(dir.path(), port, "");
    let watched = dir.path().join("watched");
    std::fs::create_dir(&watched).unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "[source]\npath = \"{}\"\nwatch = true\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n",
            watched.display()
        ),
    );
    let mut child = daemon(&cfg);
    let sensor = "homeassistant/sensor/test_main_caption/config";
    // A subscriber arriving after the daemon announced itself gets the config retained.
    let t = Instant::now();
    while !std::fs::read_to_string(dir.path().join("stderr.log"))
        .unwrap_or_default()
        .contains("connected to MQTT broker")
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "captiond did not connect"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let seen = subscribe_to(port, "sub-ha", &["homeassistant/#"]);
    seen.wait_for("the retained sensor config", Duration::from_secs(30), |s| {
        !s.retained(sensor).is_empty()
    });
    let config: serde_json::Value = serde_json::from_str(&seen.payloads(sensor)[0]).unwrap();
    assert_eq!(config["state_topic"], "captiond/test/main/state");
    assert_eq!(config["availability_topic"], "captiond/test/availability");
    let before = seen.payloads(sensor).len();
    // Home Assistant restarts and announces itself: every config is sent again.
    publish(port, "homeassistant/status", b"online");
    seen.wait_for("the re-sent sensor config", Duration::from_secs(10), |s| {
        s.payloads(sensor).len() > before
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
}

#[test]
fn sigterm_publishes_offline_and_exits_zero_and_sigkill_triggers_the_last_will() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = Mosquitto::start(dir.path(), port, "");
    let seen = subscribe(port, "sub-signals");
    let frames = images(dir.path(), 2);
    let cfg = config(
        dir.path(),
        &format!(
            "[source]\npath = \"{}\"\nwatch = true\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nshutdown_timeout_s = 5\nkeep_alive_s = 5\n",
            frames.display()
        ),
    );
    let avail = "captiond/test/availability";
    for (signal, label) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGKILL, "SIGKILL")] {
        let before = seen.payloads(avail).len();
        let mut child = daemon(&cfg);
        seen.wait_for("online", Duration::from_secs(30), |s| {
            s.payloads(avail).len() > before && s.payloads(avail).last().unwrap() == "online"
        });
        seen.wait_for("a caption", Duration::from_secs(60), |s| {
            !events(s).is_empty()
        });
        let t = Instant::now();
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = wait_exit(&mut child, Duration::from_secs(10));
        if signal == libc::SIGTERM {
            assert!(status.success(), "{label}: {status:?}");
            assert!(t.elapsed() < Duration::from_secs(6));
        }
        // SIGKILL: the broker notices the dead connection and publishes the last will.
        seen.wait_for("offline", Duration::from_secs(20), |s| {
            s.payloads(avail).last().map(String::as_str) == Some("offline")
        });
    }
}

#[test]
fn broker_down_at_start_then_up_delivers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let frames = images(dir.path(), 4);
    let cfg = config(
        dir.path(),
        &format!(
            "[source]\npath = \"{}\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\nshutdown_timeout_s = 60\n",
            frames.display()
        ),
    );
    // The subscriber's persistent session exists before the daemon starts.
    let mut broker = Mosquitto::start(dir.path(), port, "");
    let seen = subscribe(port, "sub-late-broker");
    broker.stop();
    let child = daemon(&cfg);
    // Let it caption (and queue) everything while no broker runs.
    std::thread::sleep(Duration::from_secs(8));
    broker.restart();
    seen.wait_for("4 events", Duration::from_secs(60), |s| {
        events(s).len() >= 4
    });
    let stderr = stderr_of(child, dir.path());
    assert!(stderr.contains("unreachable"), "{stderr}");
    let mut ids: Vec<String> = events(&seen).into_iter().map(|e| e.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4);
}

#[test]
fn a_broker_restart_mid_run_loses_no_caption() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut broker = Mosquitto::start(dir.path(), port, "");
    let seen = subscribe(port, "sub-restart");
    let n = 200;
    let frames = images(dir.path(), n);
    let cfg = config(
        dir.path(),
        &format!(
            "[source]\npath = \"{}\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\nshutdown_timeout_s = 60\n",
            frames.display()
        ),
    );
    let mut child = daemon(&cfg);
    seen.wait_for("some events", Duration::from_secs(300), |s| {
        events(s).len() >= 20
    });
    broker.stop();
    std::thread::sleep(Duration::from_secs(3));
    broker.restart();
    let status = wait_exit(&mut child, Duration::from_secs(900));
    assert!(status.success());
    seen.wait_for("all events", Duration::from_secs(60), |s| {
        let mut ids: Vec<String> = events(s).into_iter().map(|e| e.id).collect();
        ids.sort();
        ids.dedup();
        ids.len() >= n
    });
    let all = events(&seen);
    let mut seqs: Vec<u64> = all.iter().map(|e| e.sequence).collect();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs, (0..n as u64).collect::<Vec<_>>());
    let duplicates = all.len() - n;
    println!("{n} captions delivered across a broker restart, {duplicates} QoS 1 duplicates");
    // Only events in flight when the broker went down can arrive twice: at most the
    // publisher's window of unacknowledged events (publish.rs, MAX_IN_FLIGHT = 64).
    assert!(duplicates <= 64, "{duplicates} duplicates");
}

fn openssl(dir: &Path, args: &[&str]) {
    let ok = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs")
        .success();
    assert!(ok, "openssl {args:?}");
}

#[test]
fn tls_to_a_broker_with_its_own_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=captiond test CA",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    let (plain, tls) = (free_port(), free_port());
    let _broker = Mosquitto::start(
        d,
        plain,
        &format!(
            "listener {tls} 127.0.0.1\ncafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\n",
            d.display()
        ),
    );
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", tls)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = subscribe(plain, "sub-tls");
    let frames = images(d, 2);
    let cfg = config(
        d,
        &format!(
            "[source]\npath = \"{}\"\n[mqtt]\nhost = \"localhost\"\nport = {tls}\n[mqtt.tls]\nca_file = \"{}/ca.pem\"\n",
            frames.display(),
            d.display()
        ),
    );
    let mut child = daemon(&cfg);
    assert!(wait_exit(&mut child, Duration::from_secs(120)).success());
    seen.wait_for("2 events over TLS", Duration::from_secs(10), |s| {
        events(s).len() >= 2
    });
    // A CA that did not sign the server's certificate is refused.
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "other.key",
            "-out",
            "other.pem",
            "-days",
            "2",
            "-subj",
            "/CN=other CA",
        ],
    );
    let cfg = config(
        d,
        &format!(
            "[source]\npath = \"{}\"\n[mqtt]\nhost = \"localhost\"\nport = {tls}\nshutdown_timeout_s = 2\n[mqtt.tls]\nca_file = \"{}/other.pem\"\n",
            frames.display(),
            d.display()
        ),
    );
    let mut child = daemon(&cfg);
    assert!(wait_exit(&mut child, Duration::from_secs(120)).success());
    let stderr = stderr_of(child, d);
    assert!(
        stderr.contains("unreachable") && stderr.contains("undelivered"),
        "{stderr}"
    );
}

#[test]
fn check_config_prints_the_effective_config_or_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = config(dir.path(), "[source]\ninterval_ms = 500\n");
    let out = Command::new(env!("CARGO_BIN_EXE_captiond"))
        .args(["check-config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("interval_ms = 500") && text.contains("queue_capacity = 10000"),
        "{text}"
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[mqtt]\nreconnect_min_ms = 0\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_captiond"))
        .args(["check-config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("mqtt.reconnect_min_ms"),
        "{err}"
    );
}
