//! The installer's Ed25519 verifiers: OpenSSL 3 when it can, else the
//! pure-Python RFC 8032 verifier embedded in `packaging/install.sh`
//! (`ED25519_PY`), for hosts whose OpenSSL 1.1.1 or 1.0.2 cannot verify
//! Ed25519. The Python verifier must give the same verdict as the agent's
//! own verifier (`verify_strict`, as `signing/src/envelope.rs` calls it) on
//! signatures made by `outrider-signing`, valid and attacked; and with no
//! verifier at all the installer refuses and says why.

use std::path::{Path, PathBuf};
use std::process::Command;

use outrider_signing::{DOMAIN_PREFIX, Envelope, KeyPair, KeyRole};

/// The group order L of Ed25519, little-endian.
const L_LE: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10,
];

fn install_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/install.sh")
}

/// The Python program as install.sh carries it: between `ED25519_PY='` and
/// the closing quote (the program holds no single quote).
fn embedded_verifier() -> String {
    let text = std::fs::read_to_string(install_sh()).unwrap();
    let start = text
        .find("ED25519_PY='")
        .expect("install.sh has ED25519_PY")
        + 12;
    let len = text[start..].find('\'').expect("ED25519_PY is closed");
    text[start..start + len].to_owned()
}

/// The pythons to test: python3 always (the fallback on Debian 11, Ubuntu
/// 20.04, RHEL 8), python2.7 where the machine has one (Amazon Linux 2's).
fn pythons() -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from("python3")];
    let home = std::env::var("HOME").unwrap_or_default();
    let candidates = [
        PathBuf::from("/usr/bin/python2.7"),
        Path::new(&home).join(".pyenv/versions/2.7.18/bin/python2.7"),
    ];
    if let Some(py2) = candidates.into_iter().find(|p| p.exists()) {
        out.push(py2);
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `s + L` over the signature's S half: the same point equation holds, so
/// only a verifier that insists on S < L refuses it.
fn add_l_to_s(sig: &[u8; 64]) -> [u8; 64] {
    let mut out = *sig;
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(sig[32 + i]) + u16::from(L_LE[i]) + carry;
        out[32 + i] = (sum & 0xff) as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0, "S < L < 2^253, so S + L fits");
    out
}

/// The agent's verdict: the call `signing/src/envelope.rs` makes.
fn rust_verdict(public: &[u8; 32], message: &[u8], sig: &[u8; 64]) -> bool {
    ed25519_dalek::VerifyingKey::from_bytes(public).is_ok_and(|key| {
        key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(sig))
            .is_ok()
    })
}

struct Case {
    name: String,
    public: [u8; 32],
    message: Vec<u8>,
    sig: [u8; 64],
    valid: bool,
}

/// Signatures by outrider-signing over envelope messages of several sizes,
/// each valid and under every attack the verifier must refuse.
fn cases() -> Vec<Case> {
    let key = KeyPair::generate(KeyRole::Release).unwrap();
    let other = KeyPair::generate(KeyRole::Release).unwrap();
    let public: [u8; 32] = decode_hex(&key.public_key_hex()).try_into().unwrap();
    let other_public: [u8; 32] = decode_hex(&other.public_key_hex()).try_into().unwrap();
    let mut out = Vec::new();
    for (size, filler) in [("short", 0), ("1 KiB", 1000), ("64 KiB", 65_000)] {
        let payload = format!(
            r#"{{"type":"release","channel":"dev","pad":"{}"}}"#,
            "x".repeat(filler)
        )
        .into_bytes();
        let envelope = Envelope::sign(payload.clone(), &[&key]);
        let sig = envelope.signatures()[0].sig;
        let mut message = DOMAIN_PREFIX.to_vec();
        message.extend_from_slice(b"release\n");
        message.extend_from_slice(&payload);
        let mut case = |what: &str, public: [u8; 32], message: &[u8], sig: [u8; 64], valid| {
            out.push(Case {
                name: format!("{size}: {what}"),
                public,
                message: message.to_vec(),
                sig,
                valid,
            });
        };
        case("valid", public, &message, sig, true);
        for (byte, bit) in [(0, 0), (17, 3), (31, 7), (32, 0), (45, 5), (63, 4)] {
            let mut bad = sig;
            bad[byte] ^= 1 << bit;
            case(
                &format!("sig byte {byte} bit {bit} flipped"),
                public,
                &message,
                bad,
                false,
            );
        }
        for at in [0, message.len() / 2, message.len() - 1] {
            let mut bad = message.clone();
            bad[at] ^= 0x01;
            case(
                &format!("message byte {at} flipped"),
                public,
                &bad,
                sig,
                false,
            );
        }
        for (byte, bit) in [(0, 0), (13, 6), (31, 1)] {
            let mut bad = public;
            bad[byte] ^= 1 << bit;
            case(
                &format!("key byte {byte} bit {bit} flipped"),
                bad,
                &message,
                sig,
                false,
            );
        }
        case("another key", other_public, &message, sig, false);
        case(
            "S + L (non-canonical S)",
            public,
            &message,
            add_l_to_s(&sig),
            false,
        );
        let mut s_is_l = sig;
        s_is_l[32..].copy_from_slice(&L_LE);
        case("S = L", public, &message, s_is_l, false);
        case("empty message", public, b"", sig, false);
    }
    // The identity as key, R the identity and S = 0: [S]B - [k]A = R holds
    // for every message, so only the small-order check refuses it.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let mut weak_sig = [0u8; 64];
    weak_sig[0] = 1;
    out.push(Case {
        name: "small-order key and R".into(),
        public: identity,
        message: b"anything".to_vec(),
        sig: weak_sig,
        valid: false,
    });
    out
}

fn decode_hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn the_python_fallback_verifier_agrees_with_the_rust_verifier() {
    let program = embedded_verifier();
    let dir = tempfile::tempdir().unwrap();
    let table = cases();
    for python in pythons() {
        for (i, case) in table.iter().enumerate() {
            let rust = rust_verdict(&case.public, &case.message, &case.sig);
            assert_eq!(
                rust, case.valid,
                "{}: the Rust verifier's verdict is the expected one",
                case.name
            );
            let message = dir.path().join(format!("m{i}"));
            std::fs::write(&message, &case.message).unwrap();
            let out = Command::new(&python)
                .arg("-c")
                .arg(&program)
                .arg(hex(&case.public))
                .arg(&message)
                .arg(hex(&case.sig))
                .output()
                .unwrap_or_else(|e| panic!("run {}: {e}", python.display()));
            let code = out.status.code();
            assert!(
                matches!(code, Some(0 | 1)),
                "{} on {}: exit {code:?}, {}",
                python.display(),
                case.name,
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                code == Some(0),
                rust,
                "{} on {}: the Python verifier disagrees with the Rust verifier",
                python.display(),
                case.name
            );
        }
    }
}

/// An openssl that cannot verify Ed25519, like OpenSSL 1.1.1 (`pkeyutl`
/// has no `-rawin`), and otherwise the real one: it still hashes and
/// decodes base64 as every version does.
fn old_openssl(dir: &Path) {
    outrider_tests::script(
        dir,
        "openssl",
        r#"case "$1" in
    pkeyutl) echo "pkeyutl: Unknown option: -rawin" >&2; exit 1 ;;
    version) echo "OpenSSL 1.1.1w  11 Sep 2023"; exit 0 ;;
esac
exec /usr/bin/openssl "$@""#,
    );
}

#[test]
fn without_openssl_3_or_python_the_installer_refuses_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let fakes = dir.path().join("bin");
    std::fs::create_dir_all(&fakes).unwrap();
    old_openssl(&fakes);
    // Every python the installer would try, present but broken.
    for name in ["python3", "python2.7", "python2", "python"] {
        outrider_tests::script(&fakes, name, "exit 1");
    }
    let prefix = dir.path().join("outrider");
    let out = Command::new("sh")
        .arg(install_sh())
        .args(["--token", "t", "--server", "http://127.0.0.1:9", "--prefix"])
        .arg(&prefix)
        .args(["--service-manager", "none"])
        .env("PATH", format!("{}:/usr/bin:/bin", fakes.display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("cannot verify Ed25519 signatures")
            && err.contains("OpenSSL 1.1.1w")
            && err.contains("python3 or python2.7")
            && err.contains("Nothing was installed"),
        "{err}"
    );
    assert!(!prefix.exists(), "nothing was installed");
}
