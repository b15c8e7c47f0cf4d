//! The operator console in a real headless Chromium (Debian's `chromium`, driven by
//! `playwright-core` from npm; both installed by scripts/test): sign in, see a device that
//! just spoke, open its conversation, play a clip, export it, search a Chinese phrase,
//! delete the conversation. Screenshots go to `target/test-artifacts/console/`.

use std::path::PathBuf;
use std::time::Duration;

use firmware_protocol::ListenState;

use crate::admin_api::{TOKEN, app_with_token, voice_conversation};
use crate::helpers::collect_reply;

fn playwright_dir() -> PathBuf {
    let cache = std::env::var_os("XIAOZHI_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/xiaozhi-gateway")
    });
    cache.join("node/node_modules/playwright-core")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_real_browser() {
    let playwright = playwright_dir();
    assert!(
        playwright.join("package.json").exists() && std::path::Path::new("/usr/bin/chromium").exists(),
        "the console test needs /usr/bin/chromium and playwright-core in {}: run scripts/test",
        playwright.display()
    );
    let app = app_with_token().await;
    // A device speaks (a voice turn with clips), then says a Chinese phrase as text.
    let (mut dev, device, sid, _clips) = voice_conversation(&app).await;
    let phrase = "今天天气";
    dev.tx.listen(ListenState::Detect, None, Some("今天天气怎么样")).await.unwrap();
    collect_reply(&mut dev.rx, Duration::from_secs(10), Duration::ZERO).await;
    app.app.writer.flush().await;

    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/console");
    std::fs::create_dir_all(&artifacts).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/console/console.mjs");
    let run = tokio::process::Command::new("node")
        .arg(&script)
        .env("BASE", app.http_url(""))
        .env("TOKEN", TOKEN)
        .env("DEVICE", &device)
        .env("SESSION", sid.to_string())
        .env("PHRASE", phrase)
        .env("ARTIFACTS", &artifacts)
        .env("PLAYWRIGHT_DIR", &playwright)
        .kill_on_drop(true)
        .output();
    let out =
        tokio::time::timeout(Duration::from_secs(180), run).await.expect("the browser run finishes").unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "console test failed\n{stdout}\n{stderr}");
    assert!(stdout.contains("console: done"), "{stdout}");
    assert!(artifacts.join("search.png").exists());
    assert_eq!(app.app.store.session(sid).await.unwrap(), None, "deleted through the console");
    drop(dev);
}
