//! The load generator at CI scale: 50 talking and 20 idle devices for 15 s against a real
//! gateway; any failed turn fails the build. (Full-scale figures: BENCHMARKS.md.) A separate
//! test binary so that the other integration tests do not share its two cores.

use std::sync::Arc;

use xiaozhi_gateway::config::Settings;
use xiaozhi_gateway::loadtest::{LoadtestArgs, run};
use xiaozhi_gateway::pipeline::echo::EchoPipeline;
use xiaozhi_gateway::startup::Application;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_devices_for_fifteen_seconds_without_a_failed_turn() {
    let data = tempfile::tempdir().unwrap();
    let mut settings = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.path().to_owned(),
        ..Settings::default()
    };
    // Every simulated device connects from 127.0.0.1.
    settings.limits.upgrades_per_sec = 0;
    let server = Application::build_with(settings.clone(), Arc::new(EchoPipeline::new())).await.unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.run_until_stopped());
    let args = LoadtestArgs {
        url: format!("ws://{addr}/xiaozhi/v1/"),
        devices: 50,
        idle_devices: 20,
        ramp_up: 100.0,
        duration: 15,
        turns: 0,
        protocol_version: 1,
        token: None,
        wav: None,
        vad_silence_ms: settings.session.vad_silence_ms,
        metrics_url: None,
        json: None,
        fail_on_error: true,
    };
    let report = run(&args).await.unwrap();
    println!("{}", report.table());
    assert_eq!(report.connected, 70);
    assert_eq!(report.turns_failed, 0, "{:?}", report.failure_reasons);
    assert!(report.turns_ok >= 50, "every talking device completed a turn");
    assert!(report.reply_frames > 0);
    assert!(report.gateway_cpu_s.is_some(), "the gateway's /metrics were read");
}
