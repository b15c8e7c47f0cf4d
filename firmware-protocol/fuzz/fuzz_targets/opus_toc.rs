//! Any bytes as an Opus packet: `opus::packet_samples_48k` never panics, and a duration it
//! reports is at most 120 ms (5760 samples at 48 kHz) and a whole number of 2.5 ms steps.
#![no_main]

use firmware_protocol::opus;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(samples) = opus::packet_samples_48k(data) {
        assert!(samples > 0 && samples <= 5760, "{samples} samples");
        assert_eq!(samples % 120, 0, "{samples} samples is not a multiple of 2.5 ms");
        assert_eq!(opus::packet_duration_us(data), Ok(samples * 125 / 6));
    } else {
        assert!(opus::packet_duration_us(data).is_err());
    }
});
