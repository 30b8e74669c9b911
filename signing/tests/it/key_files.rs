//! Private key files on disk.

use outrider_signing::{Error, KeyPair, KeyRole};

#[cfg(unix)]
#[test]
fn world_readable_key_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("release.key");
    KeyPair::generate(KeyRole::Release)
        .unwrap()
        .write_new(&path)
        .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = KeyPair::read(&path).unwrap_err();
    assert!(
        matches!(&err, Error::KeyFilePermissions { path: p, mode: 0o644 } if *p == path),
        "{err:?}"
    );
}

#[test]
fn existing_key_file_is_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("root.key");
    std::fs::write(&path, b"precious").unwrap();
    let err = KeyPair::generate(KeyRole::Root)
        .unwrap()
        .write_new(&path)
        .unwrap_err();
    assert!(matches!(err, Error::KeyFileExists { .. }), "{err:?}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

#[test]
fn missing_key_file_is_an_io_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.key");
    let err = KeyPair::read(&path).unwrap_err();
    assert!(
        matches!(&err, Error::Io { path: p, .. } if *p == path),
        "{err:?}"
    );
    assert!(err.to_string().contains("nope.key"));
}

#[test]
fn a_json_file_that_is_not_a_key_is_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("root.json");
    write_private(&path, br#"{"payload":"", "signatures":[]}"#);
    let err = KeyPair::read(&path).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Malformed {
                what: "key file",
                ..
            }
        ),
        "{err:?}"
    );
}

fn write_private(path: &std::path::Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}
