//! The fake OpenAI-compatible server lives in `testkit` (the benchmarks use it too).

pub use testkit::fake_openai::*;
