//! Sample-rate conversion of whole clips (synthesized speech to the downlink rate) with
//! rubato's polynomial resampler: cheap, and ample for speech headed for a 16 kbit/s codec.
//! (The FFT resampler needs odd-sized transforms for 22050 → 24000 Hz and was measured at
//! minutes per second of audio in debug builds.)

use audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Async, FixedAsync, PolynomialDegree, Resampler};

/// Resamples mono `f32` samples from `from` Hz to `to` Hz.
pub(crate) fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>, String> {
    if from == to || samples.is_empty() {
        return Ok(samples.to_vec());
    }
    let ratio = f64::from(to) / f64::from(from);
    let mut resampler =
        Async::<f32>::new_poly(ratio, 1.0, PolynomialDegree::Cubic, 1024, 1, FixedAsync::Input)
            .map_err(|e| e.to_string())?;
    let input = InterleavedSlice::new(samples, 1, samples.len()).map_err(|e| e.to_string())?;
    let out = resampler.process_all(&input, samples.len(), None).map_err(|e| e.to_string())?;
    Ok(out.take_data())
}

#[cfg(test)]
mod tests {
    #[test]
    fn lengths_follow_the_ratio() {
        let input: Vec<f32> = (0..22_050).map(|i| (i as f32 * 0.05).sin() * 0.5).collect();
        let out = super::resample(&input, 22_050, 24_000).unwrap();
        assert!((out.len() as i64 - 24_000).abs() <= 2, "{}", out.len());
        assert!(out.iter().all(|s| s.is_finite() && s.abs() < 1.0));
    }
}
