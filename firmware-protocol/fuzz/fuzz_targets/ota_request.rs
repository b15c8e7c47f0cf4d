//! Any bytes as an OTA request body: `OtaRequest::from_body` never panics.
#![no_main]

use firmware_protocol::ota::OtaRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let req = OtaRequest::from_body(data);
    let _ = (req.firmware_version(), req.board_type());
});
