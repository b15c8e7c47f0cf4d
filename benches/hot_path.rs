//! The per-frame hot path: binary framing in every protocol version, Opus decoding of a 60 ms
//! frame, voice activity detection per frame, and Ogg muxing of a clip.
//!
//! Run: `cargo bench --bench hot_path` (figures in BENCHMARKS.md).

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use firmware_protocol::frame::{self, ProtocolVersion};
use xiaozhi_gateway::audio::ogg::{ClipFormat, DEFAULT_PRE_SKIP, mux};
use xiaozhi_gateway::audio::opus::{FrameEncoder, UplinkDecoder};
use xiaozhi_gateway::audio::vad::VoiceDetector;

fn speech_pcm() -> Vec<i16> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/speech-16k.wav");
    hound::WavReader::open(path).unwrap().samples::<i16>().map(|s| s.unwrap()).collect()
}

fn speech_packets() -> Vec<Vec<u8>> {
    FrameEncoder::new(16_000, 60).unwrap().encode_all(&speech_pcm()).unwrap()
}

fn framing(c: &mut Criterion) {
    let packets = speech_packets();
    let packet = &packets[packets.len() / 2];
    let mut g = c.benchmark_group("frame");
    for v in [ProtocolVersion::V1, ProtocolVersion::V2, ProtocolVersion::V3] {
        let encoded = frame::encode(v, 1234, packet).unwrap();
        g.bench_function(format!("decode_v{v}"), |b| {
            b.iter(|| frame::decode(v, black_box(&encoded)).unwrap().payload.len())
        });
        let mut out = Vec::with_capacity(512);
        g.bench_function(format!("encode_v{v}"), |b| {
            b.iter(|| {
                out.clear();
                frame::encode_into(v, 1234, black_box(packet), &mut out).unwrap();
                out.len()
            })
        });
    }
    g.finish();
}

fn opus_and_vad(c: &mut Criterion) {
    let packets = speech_packets();
    let mut g = c.benchmark_group("uplink");
    g.bench_function("opus_decode_60ms", |b| {
        let mut dec = UplinkDecoder::new().unwrap();
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % packets.len();
            dec.decode(black_box(&packets[i])).unwrap().len()
        })
    });
    let pcm = speech_pcm();
    g.bench_function("vad_60ms", |b| {
        let mut vad = VoiceDetector::new(0.5);
        let mut i = 0;
        b.iter(|| {
            i = (i + 960) % (pcm.len() - 960);
            vad.is_voiced(black_box(&pcm[i..i + 960]))
        })
    });
    g.finish();
}

fn ogg_mux(c: &mut Criterion) {
    let packets: Vec<Bytes> = speech_packets().into_iter().map(Bytes::from).collect();
    let seconds = packets.len() as f64 * 0.06;
    let mut g = c.benchmark_group("ogg");
    // Throughput in clip-milliseconds: criterion's "elements" are ms of audio.
    g.throughput(Throughput::Elements((seconds * 1000.0) as u64));
    g.bench_function("mux_clip", |b| {
        b.iter(|| {
            mux(black_box(&packets), ClipFormat { input_rate: 16_000, pre_skip: DEFAULT_PRE_SKIP }, 1)
                .unwrap()
                .bytes
                .len()
        })
    });
    g.finish();
}

criterion_group!(benches, framing, opus_and_vad, ogg_mux);
criterion_main!(benches);
