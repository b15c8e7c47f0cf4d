//! Audio clips to object storage: [`storage`] (MinIO/S3 or a local directory through
//! `object_store`) and the durable background [`pool`] that drains the upload outbox.
//! Sessions never touch either: they hand turns to the store writer, whose transaction
//! stages the clip bytes; the pool uploads them later, whatever happens in between.

pub mod pool;
pub mod storage;
