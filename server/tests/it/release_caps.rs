//! `--release-blob-max-bytes` and `--release-blobs-max-total-bytes`: a
//! release blob upload above either cap is refused naming it, and nothing
//! of it is stored.

use outrider_signing::sha256;

use crate::helpers::Server;

#[tokio::test]
async fn release_blob_uploads_above_the_caps_are_refused_naming_them() {
    let server = Server::start_with(|c| {
        c.release_blob_max_bytes = 100;
        c.release_blobs_max_total_bytes = Some(150);
    })
    .await;
    let auth = format!("Bearer {}", server.admin_token);
    let put = |blob: Vec<u8>| {
        let auth = auth.clone();
        let server = &server;
        async move {
            server
                .http_raw(
                    "PUT",
                    &format!("/api/v1/releases/blobs/{}", sha256(&blob)),
                    Some(&auth),
                    Some("application/octet-stream"),
                    &blob,
                )
                .await
        }
    };
    let get = |blob: Vec<u8>| {
        let server = &server;
        async move {
            server
                .http_raw(
                    "GET",
                    &format!("/v1/updates/blobs/{}", sha256(&blob)),
                    None,
                    None,
                    b"",
                )
                .await
                .0
        }
    };
    let (status, body) = put(vec![1; 101]).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("limit of 100 bytes"),
        "{body}"
    );
    assert_eq!(get(vec![1; 101]).await, 404);

    let (status, body) = put(vec![2; 100]).await;
    assert_eq!(status, 200, "{body}");
    // The same blob again adds nothing: accepted.
    assert_eq!(put(vec![2; 100]).await.0, 200);
    let (status, body) = put(vec![3; 51]).await;
    assert_eq!(status, 507, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("total cap of 150 bytes"),
        "{body}"
    );
    assert_eq!(get(vec![3; 51]).await, 404);
    assert_eq!(put(vec![4; 50]).await.0, 200);
    server.stop().await;
}
