//! An S3 bucket (with a prefix) as a store: `s3://BUCKET/PREFIX?endpoint=URL&region=R`.
//!
//! Without `endpoint=` the store is Amazon's (`https://s3.amazonaws.com`, virtual-host
//! style); with one (MinIO, `rclone serve s3`, moto), path style. Requests are presigned with
//! SigV4 by rusty-s3 just before they are sent, with the credentials of the environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), unsigned without them.
//! The secret never appears in a spec, a manifest or a log line.

use super::store::StoreError;
use rusty_s3::S3Action;
use std::time::Duration;

/// How long a presigned URL is valid: it is made just before its request.
const PRESIGN_FOR: Duration = Duration::from_secs(15 * 60);
/// Connecting longer than this means the store is not there.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One S3 store.
pub struct S3Store {
    bucket: rusty_s3::Bucket,
    prefix: String,
    creds: Option<rusty_s3::Credentials>,
    client: reqwest::Client,
}

impl S3Store {
    /// Parses `s3://BUCKET[/PREFIX][?endpoint=URL][&region=R]`.
    pub fn parse(spec: &str) -> Result<S3Store, String> {
        let bad = |why: &str| format!("store {spec:?}: {why}");
        let rest = spec.strip_prefix("s3://").ok_or_else(|| bad("not s3://"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket"));
        }
        let mut endpoint = None;
        let mut region = "us-east-1".to_string();
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| bad("query is not k=v"))?;
            let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned();
            match k {
                "endpoint" => endpoint = Some(v),
                "region" => region = v,
                _ => return Err(bad(&format!("unknown setting {k}= (endpoint=, region=)"))),
            }
        }
        let (url, style) = match &endpoint {
            Some(e) => (e.as_str(), rusty_s3::UrlStyle::Path),
            None => ("https://s3.amazonaws.com", rusty_s3::UrlStyle::VirtualHost),
        };
        let url: reqwest::Url = url.parse().map_err(|e| bad(&format!("endpoint: {e}")))?;
        let bucket =
            rusty_s3::Bucket::new(url, style, bucket.to_string(), region).map_err(|e| bad(&format!("{e:?}")))?;
        let mut prefix = prefix.to_string();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        let creds = match (std::env::var("AWS_ACCESS_KEY_ID"), std::env::var("AWS_SECRET_ACCESS_KEY")) {
            (Ok(id), Ok(secret)) if !id.is_empty() => Some(match std::env::var("AWS_SESSION_TOKEN") {
                Ok(t) if !t.is_empty() => rusty_s3::Credentials::new_with_token(id, secret, t),
                _ => rusty_s3::Credentials::new(id, secret),
            }),
            _ => None,
        };
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| bad(&format!("HTTP client: {e}")))?;
        Ok(S3Store { bucket, prefix, creds, client })
    }

    fn object(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, StoreError> {
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() || e.is_timeout() {
                StoreError::Unreachable(e.to_string())
            } else {
                StoreError::Io(e.to_string())
            }
        })?;
        match resp.status().as_u16() {
            200..=299 => Ok(resp),
            404 => Err(StoreError::NotFound),
            s => Err(StoreError::Io(format!("HTTP status {s}"))),
        }
    }

    async fn body(resp: reqwest::Response) -> Result<Vec<u8>, StoreError> {
        resp.bytes().await.map(|b| b.to_vec()).map_err(|e| StoreError::Io(e.to_string()))
    }

    pub async fn get_all(&self, name: &str, limit: u64) -> Result<Vec<u8>, StoreError> {
        let url = self.bucket.get_object(self.creds.as_ref(), &self.object(name)).sign(PRESIGN_FOR);
        let resp = self.send(self.client.get(url)).await?;
        if resp.content_length().is_some_and(|l| l > limit) {
            return Err(StoreError::Io(format!("larger than {limit} bytes")));
        }
        let b = Self::body(resp).await?;
        if b.len() as u64 > limit {
            return Err(StoreError::Io(format!("larger than {limit} bytes")));
        }
        Ok(b)
    }

    pub async fn read(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let url = self.bucket.get_object(self.creds.as_ref(), &self.object(name)).sign(PRESIGN_FOR);
        let range = format!("bytes={offset}-{}", offset + len - 1);
        let resp = self.send(self.client.get(url).header(reqwest::header::RANGE, range)).await?;
        // A 200 with a Content-Range is a range under the wrong status (`rclone serve s3` up
        // to 1.75); its bytes are checked against the shard's piece hashes like any others.
        let partial = resp.status().as_u16() == 206 || resp.headers().contains_key(reqwest::header::CONTENT_RANGE);
        let b = Self::body(resp).await?;
        // A server that ignores Range sends the whole object: cut it, checking its size.
        let b = if partial {
            b
        } else {
            let end = usize::try_from(offset + len).unwrap_or(usize::MAX);
            b.get(super::layout::to_usize(offset)..end).map(<[u8]>::to_vec).unwrap_or_default()
        };
        if b.len() as u64 != len {
            return Err(StoreError::Short { got: b.len() as u64, want: len });
        }
        Ok(b)
    }

    pub async fn size(&self, name: &str) -> Result<u64, StoreError> {
        let url = self.bucket.head_object(self.creds.as_ref(), &self.object(name)).sign(PRESIGN_FOR);
        let resp = self.send(self.client.head(url)).await?;
        resp.headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| StoreError::Io("HEAD without Content-Length".into()))
    }

    pub async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let url = self.bucket.put_object(self.creds.as_ref(), &self.object(name)).sign(PRESIGN_FOR);
        self.send(self.client.put(url).body(bytes)).await.map(drop)
    }

    /// Uploads a local file of `len` bytes as `name`, streamed in 1 MiB reads.
    pub async fn put_file(&self, name: &str, file: tempfile::NamedTempFile, len: u64) -> Result<(), StoreError> {
        use std::io::{Read, Seek};
        let mut f = file.reopen().map_err(|e| StoreError::Io(e.to_string()))?;
        f.rewind().map_err(|e| StoreError::Io(e.to_string()))?;
        let stream = futures_util::stream::unfold((f, file), |(mut f, keep)| async move {
            let mut buf = vec![0u8; 1 << 20];
            match f.read(&mut buf) {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), (f, keep)))
                }
                Err(e) => Some((Err(e), (f, keep))),
            }
        });
        let url = self.bucket.put_object(self.creds.as_ref(), &self.object(name)).sign(PRESIGN_FOR);
        let req =
            self.client.put(url).header(reqwest::header::CONTENT_LENGTH, len).body(reqwest::Body::wrap_stream(stream));
        self.send(req).await.map(drop)
    }

    /// The names (below the prefix) of every object whose name ends with `suffix`, listed
    /// page by page (ListObjectsV2, keys URL-encoded in the answer).
    pub async fn list(&self, suffix: &str) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            // A GET of the bucket itself with the listing's query, signed as such.
            let mut action = self.bucket.get_object(self.creds.as_ref(), "");
            let q = action.query_mut();
            q.insert("list-type", "2");
            q.insert("encoding-type", "url");
            if !self.prefix.is_empty() {
                q.insert("prefix", self.prefix.clone());
            }
            if let Some(t) = &token {
                q.insert("continuation-token", t.clone());
            }
            let url = action.sign(PRESIGN_FOR);
            let resp = self.send(self.client.get(url)).await?;
            let text = resp.text().await.map_err(|e| StoreError::Io(e.to_string()))?;
            let page = parse_listing(&text).map_err(StoreError::Io)?;
            for key in page.keys {
                if let Some(name) = key.strip_prefix(self.prefix.as_str())
                    && name.ends_with(suffix)
                {
                    out.push(name.to_string());
                }
            }
            match page.next {
                Some(t) if token.as_ref() != Some(&t) => token = Some(t),
                Some(_) => return Err(StoreError::Io("the listing repeats its continuation token".into())),
                None => return Ok(out),
            }
        }
    }

    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let url = self.bucket.delete_object(self.creds.as_ref(), &self.object(name)).sign(PRESIGN_FOR);
        self.send(self.client.delete(url)).await.map(drop)
    }
}

/// One page of a ListObjectsV2 answer: its keys (URL-decoded) and the token of the next page
/// when it is truncated.
#[derive(Debug, PartialEq, Eq)]
struct Listing {
    keys: Vec<String>,
    next: Option<String>,
}

/// The text of every `<tag>…</tag>` in `xml`, in order, entities decoded.
fn elements(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(a) = rest.find(&open) {
        let after = &rest[a + open.len()..];
        let Some(b) = after.find(&close) else { break };
        let text = &after[..b];
        out.push(
            text.replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        );
        rest = &after[b + close.len()..];
    }
    out
}

fn parse_listing(xml: &str) -> Result<Listing, String> {
    if !xml.contains("<ListBucketResult") {
        return Err(format!("not a listing: {}", xml.chars().take(200).collect::<String>()));
    }
    let url_encoded = elements(xml, "EncodingType").first().is_some_and(|e| e == "url");
    let keys = elements(xml, "Key")
        .into_iter()
        .map(|k| {
            if url_encoded {
                // URL encoding of a key writes a space as `+`.
                percent_encoding::percent_decode_str(&k.replace('+', " ")).decode_utf8_lossy().into_owned()
            } else {
                k
            }
        })
        .collect();
    let truncated = elements(xml, "IsTruncated").first().is_some_and(|t| t == "true");
    let next = elements(xml, "NextContinuationToken").into_iter().next().filter(|t| !t.is_empty());
    match (truncated, next) {
        (true, None) => Err("a truncated listing without a continuation token".into()),
        (true, next) => Ok(Listing { keys, next }),
        (false, _) => Ok(Listing { keys, next: None }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_parse() {
        let page = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>shards</Name><Prefix>p/</Prefix>
<KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>
<Contents><Key>p/abc/def/SHA256E-s3--00.bin/manifest</Key><Size>9</Size></Contents>
<Contents><Key>p/a%2Bb/c+d/shard-0</Key><Size>9</Size></Contents>
<NextContinuationToken>tok&amp;1</NextContinuationToken></ListBucketResult>"#;
        let l = parse_listing(page).unwrap();
        assert_eq!(l.keys, vec!["p/abc/def/SHA256E-s3--00.bin/manifest".to_string(), "p/a+b/c d/shard-0".into()]);
        assert_eq!(l.next.as_deref(), Some("tok&1"));
        let last = "<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>";
        assert_eq!(parse_listing(last).unwrap(), Listing { keys: vec![], next: None });
        assert!(parse_listing("<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>").is_err());
        assert!(parse_listing("<Error><Code>AccessDenied</Code></Error>").is_err());
    }
}
