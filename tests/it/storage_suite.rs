//! The object-storage suite: the same tests against the local directory (embedded default)
//! and a real S3 server (`s3s-fs`, started by the test process), each on a fresh bucket.

use std::time::Duration;

use bytes::Bytes;
use xiaozhi_gateway::config::Settings;
use xiaozhi_gateway::uploads::storage::ClipStorage;

/// A storage backend under test.
pub struct TestStorage {
    pub storage: ClipStorage,
    pub settings: Settings,
    /// Where the bytes of `key` end up on disk (both backends keep plain files).
    pub file_of: Box<dyn Fn(&str) -> std::path::PathBuf + Send + Sync>,
    _dir: tempfile::TempDir,
}

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Local,
    S3,
}

/// Settings pointing at a fresh bucket of the shared S3 server.
pub fn s3_settings(settings: &mut Settings) -> String {
    xiaozhi_gateway::install_crypto_provider();
    let s3 = testkit::s3::shared();
    let bucket = testkit::s3::fresh_bucket();
    settings.storage.endpoint = Some(s3.endpoint.clone());
    settings.storage.access_key = testkit::s3::ACCESS_KEY.into();
    settings.storage.secret_key = testkit::s3::SECRET_KEY.into();
    settings.storage.bucket = bucket.clone();
    bucket
}

impl TestStorage {
    pub async fn new(backend: Backend) -> Self {
        xiaozhi_gateway::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings { data_dir: dir.path().to_owned(), ..Settings::default() };
        let file_of: Box<dyn Fn(&str) -> std::path::PathBuf + Send + Sync> = match backend {
            Backend::Local => {
                let root = dir.path().join("objects").join(&settings.storage.bucket);
                Box::new(move |key: &str| root.join(key))
            }
            Backend::S3 => {
                let bucket = tokio::task::spawn_blocking(move || {
                    let b = s3_settings(&mut settings);
                    (b, settings)
                })
                .await
                .unwrap();
                settings = bucket.1;
                let bucket = bucket.0;
                Box::new(move |key: &str| testkit::s3::shared().object_path(&bucket, key))
            }
        };
        let storage = ClipStorage::open(&settings).await.expect("storage opens (bucket created)");
        TestStorage { storage, settings, file_of, _dir: dir }
    }
}

const KEY: &str = "a0:b1:c2:d3:e4:f5/2026-11-25/0193a0f2-0000-7000-8000-000000000001/0193a0f2-0000-7000-8000-000000000002.ogg";

async fn objects_round_trip(t: TestStorage) {
    let s = &t.storage;
    assert!(!s.exists(KEY).await.unwrap());
    let bytes = Bytes::from_static(b"OggS\x00 not really a clip");
    s.put(KEY, bytes.clone(), "audio/ogg").await.unwrap();
    assert!(s.exists(KEY).await.unwrap());
    assert_eq!(s.get(KEY).await.unwrap(), bytes);
    assert_eq!(std::fs::read((t.file_of)(KEY)).unwrap(), &bytes[..], "a plain file at the key's path");
    // Overwriting with the same bytes (a repeated upload) is harmless.
    s.put(KEY, bytes.clone(), "audio/ogg").await.unwrap();
    assert_eq!(s.get(KEY).await.unwrap(), bytes);
    s.delete(KEY).await.unwrap();
    assert!(!s.exists(KEY).await.unwrap());
    s.delete(KEY).await.expect("deleting a missing object is fine");
    assert!(s.get(KEY).await.is_err());
    s.ping().await.unwrap();
}

async fn bucket_is_created_once(t: TestStorage) {
    // Opening again finds the bucket already there.
    let again = ClipStorage::open(&t.settings).await.expect("reopen");
    again.ensure_bucket().await.unwrap();
    assert_eq!(again.bucket(), t.storage.bucket());
}

async fn presigned_urls_fetch_the_object_and_nothing_else(t: TestStorage) {
    let s = &t.storage;
    s.put(KEY, Bytes::from_static(b"clip"), "audio/ogg").await.unwrap();
    match s.presigned_get(KEY, Duration::from_secs(60)).await.unwrap() {
        None => assert!(s.is_local(), "only the local store serves clips through the gateway"),
        Some(url) => {
            let got = reqwest::get(&url).await.unwrap();
            assert_eq!(got.status().as_u16(), 200);
            assert_eq!(got.bytes().await.unwrap(), Bytes::from_static(b"clip"));
            // Flip the signature's last hex digit.
            let last = url.chars().last().unwrap();
            let tampered = format!("{}{}", &url[..url.len() - 1], if last == '0' { '1' } else { '0' });
            assert_eq!(reqwest::get(&tampered).await.unwrap().status().as_u16(), 403);
            let other_key = url.replace(".ogg", ".wav");
            assert_eq!(reqwest::get(&other_key).await.unwrap().status().as_u16(), 403);
        }
    }
}

macro_rules! storage_suite {
    ($($name:ident),* $(,)?) => {
        mod local {
            $( #[tokio::test] async fn $name() { super::$name(super::TestStorage::new(super::Backend::Local).await).await } )*
        }
        mod s3 {
            $( #[tokio::test] async fn $name() { super::$name(super::TestStorage::new(super::Backend::S3).await).await } )*
        }
    };
}

storage_suite!(objects_round_trip, bucket_is_created_once, presigned_urls_fetch_the_object_and_nothing_else);

#[tokio::test]
async fn wrong_credentials_are_refused_by_the_s3_server() {
    let mut settings = tokio::task::spawn_blocking(|| {
        let mut settings = Settings::default();
        s3_settings(&mut settings);
        settings
    })
    .await
    .unwrap();
    settings.storage.secret_key = "not-the-secret".into();
    assert!(ClipStorage::open(&settings).await.is_err(), "a bucket cannot be made with a wrong key");
}
