//! Real services for tests and benchmarks, started by the test process itself:
//! * [`pg`]: throwaway PostgreSQL 15 clusters (or the server named by `DATABASE_URL`), one
//!   fresh database per test;
//! * [`fake_openai`]: a scriptable in-process OpenAI-compatible API (ASR, chat, TTS);
//! * [`s3`]: the `s3s-fs` S3 server, built once into the cache, one bucket per test;
//! * [`mariadb`]: a throwaway MariaDB server, one database per test (importer sources);
//! * [`redis`]: throwaway Redis servers, one per test (importer sources).
//!
//! Child servers get `PR_SET_PDEATHSIG`, so they die with the thread that started them even
//! when the test process is killed; the process-wide ones are started from a thread that
//! lives as long as the process.

pub mod fake_openai;
pub mod mariadb;
pub mod pg;
mod process;
pub mod redis;
pub mod s3;

pub use process::free_port;
