//! Object storage for clips through the `object_store` crate: MinIO or any S3 service when
//! `MINIO_ENDPOINT` is set, otherwise a directory under the data dir (the embedded default).
//! The S3 handle is kept concrete next to the trait object because presigning needs it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    Attribute, Attributes, ClientOptions, ObjectStore, ObjectStoreExt, PutOptions, PutPayload, RetryConfig,
};

use crate::config::{Settings, StorageSettings};

/// What went wrong with object storage.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object storage: {0}")]
    Store(#[from] object_store::Error),
    #[error("object key {key:?} is not usable: {reason}")]
    BadKey { key: String, reason: String },
    #[error("cannot create bucket {bucket}: {reason}")]
    Bucket { bucket: String, reason: String },
    #[error("cannot prepare the local object directory: {0}")]
    Io(#[from] std::io::Error),
}

/// The MIME type of a clip's `file_type` (what S3 serves it as).
pub fn content_type(file_type: &str) -> &'static str {
    match file_type {
        "ogg" => "audio/ogg",
        "wav" => "audio/wav",
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        _ => "application/octet-stream",
    }
}

/// Where clips go.
#[derive(Clone, Debug)]
pub struct ClipStorage {
    store: Arc<dyn ObjectStore>,
    /// Present for S3: presigned URLs and bucket creation.
    s3: Option<Arc<AmazonS3>>,
    bucket: String,
    /// The local directory (embedded default), for serving clips through the gateway.
    local_root: Option<std::path::PathBuf>,
}

impl ClipStorage {
    /// Builds the store from the settings and makes sure the bucket exists.
    pub async fn open(settings: &Settings) -> Result<Self, StorageError> {
        let s = &settings.storage;
        let storage = match &s.endpoint {
            Some(endpoint) => Self::s3(s, endpoint)?,
            None => {
                let root = settings.data_dir.join("objects").join(&s.bucket);
                std::fs::create_dir_all(&root)?;
                ClipStorage {
                    store: Arc::new(LocalFileSystem::new_with_prefix(&root)?),
                    s3: None,
                    bucket: s.bucket.clone(),
                    local_root: Some(root),
                }
            }
        };
        storage.ensure_bucket().await?;
        Ok(storage)
    }

    fn s3(s: &StorageSettings, endpoint: &str) -> Result<Self, StorageError> {
        let scheme = if s.use_ssl { "https" } else { "http" };
        let endpoint =
            if endpoint.contains("://") { endpoint.to_owned() } else { format!("{scheme}://{endpoint}") };
        // The upload pool does its own patient retrying; each request here fails fast, well
        // within the pool's 30 s claim lease.
        let retry =
            RetryConfig { max_retries: 1, retry_timeout: Duration::from_secs(10), ..RetryConfig::default() };
        let client = ClientOptions::new()
            .with_timeout(Duration::from_secs(20))
            .with_connect_timeout(Duration::from_secs(5))
            .with_allow_http(!s.use_ssl);
        let s3 = AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_bucket_name(&s.bucket)
            .with_region(&s.region)
            .with_access_key_id(&s.access_key)
            .with_secret_access_key(&s.secret_key)
            .with_allow_http(!s.use_ssl)
            .with_virtual_hosted_style_request(false)
            .with_retry(retry)
            .with_client_options(client)
            .build()?;
        let s3 = Arc::new(s3);
        Ok(ClipStorage { store: s3.clone(), s3: Some(s3), bucket: s.bucket.clone(), local_root: None })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn is_local(&self) -> bool {
        self.local_root.is_some()
    }

    /// Creates the bucket when it is missing (S3); the local directory already exists.
    pub async fn ensure_bucket(&self) -> Result<(), StorageError> {
        let Some(s3) = &self.s3 else { return Ok(()) };
        if self.store.list_with_delimiter(None).await.is_ok() {
            return Ok(());
        }
        // object_store has no bucket API: sign a path-style `PUT /bucket/` (CreateBucket) with
        // the same credentials and send it ourselves.
        let url = s3.signed_url(axum::http::Method::PUT, &Path::from(""), Duration::from_secs(60)).await?;
        let resp = reqwest::Client::new()
            .put(url.as_str())
            .send()
            .await
            .map_err(|e| StorageError::Bucket { bucket: self.bucket.clone(), reason: e.to_string() })?;
        let status = resp.status();
        // 409: it exists (made meanwhile by another gateway process).
        if status.is_success() || status.as_u16() == 409 {
            tracing::info!(bucket = %self.bucket, "bucket created");
            Ok(())
        } else {
            let body = resp.text().await.unwrap_or_default();
            Err(StorageError::Bucket {
                bucket: self.bucket.clone(),
                reason: format!("HTTP {status}: {body}"),
            })
        }
    }

    fn path(key: &str) -> Result<Path, StorageError> {
        Path::parse(key).map_err(|e| StorageError::BadKey { key: key.to_owned(), reason: e.to_string() })
    }

    /// Stores an object (overwriting: uploads are idempotent by key).
    pub async fn put(&self, key: &str, bytes: Bytes, content_type: &str) -> Result<(), StorageError> {
        let mut attributes = Attributes::new();
        // The local file system keeps no attributes; S3 serves the content type back.
        if self.s3.is_some() {
            attributes.insert(Attribute::ContentType, content_type.to_owned().into());
        }
        let opts = PutOptions { attributes, ..PutOptions::default() };
        self.store.put_opts(&Self::path(key)?, PutPayload::from(bytes), opts).await?;
        Ok(())
    }

    /// Reads an object.
    pub async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        Ok(self.store.get(&Self::path(key)?).await?.bytes().await?)
    }

    /// Deletes an object; one that is already gone counts as deleted.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.store.delete(&Self::path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the object exists.
    pub async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        match self.store.head(&Self::path(key)?).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// A presigned GET URL (S3 only; the local store serves clips through the gateway).
    pub async fn presigned_get(
        &self,
        key: &str,
        expires_in: Duration,
    ) -> Result<Option<String>, StorageError> {
        let Some(s3) = &self.s3 else { return Ok(None) };
        Ok(Some(s3.signed_url(axum::http::Method::GET, &Self::path(key)?, expires_in).await?.to_string()))
    }

    /// Whether the store answers (for readiness).
    pub async fn ping(&self) -> Result<(), StorageError> {
        self.store.list_with_delimiter(None).await?;
        Ok(())
    }
}
