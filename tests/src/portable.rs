//! The portable build (`packaging/build`, glibc 2.17 symbol versions) and
//! a Debian 11 root to run it in.
//!
//! Both are made once per test binary and cached under the target
//! directory, so reruns cost nothing: the build in
//! `target/packaging/portable` (cargo's own incremental cache), the root in
//! `target/debootstrap/bullseye` (made by `debootstrap --variant=minbase`,
//! reused while it exists).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The oldest glibc the shipped artefacts may need: RHEL 7's, which also
/// covers Amazon Linux 2, Debian 10+ and Ubuntu 18.04+.
pub const MAX_GLIBC: GlibcVersion = GlibcVersion(2, 17, 0);

/// A `GLIBC_x.y[.z]` symbol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct GlibcVersion(pub u32, pub u32, pub u32);

impl std::fmt::Display for GlibcVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.2 {
            0 => write!(f, "GLIBC_{}.{}", self.0, self.1),
            z => write!(f, "GLIBC_{}.{}.{z}", self.0, self.1),
        }
    }
}

/// What a binary asks of glibc, read from `readelf -V` output: the version
/// needs of `.gnu.version_r` named `GLIBC_x.y[.z]`, and whether it needs
/// `GLIBC_PRIVATE` (never portable).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GlibcNeeds {
    pub versions: Vec<GlibcVersion>,
    pub private: bool,
}

impl GlibcNeeds {
    /// Parses the `Version needs section '.gnu.version_r'` part of
    /// `readelf -V --wide`; the `.gnu.version_d` (definitions) and symbol
    /// table parts are ignored, so a library that defines a version named
    /// like glibc's is not counted.
    pub fn parse(readelf: &str) -> GlibcNeeds {
        let mut needs = GlibcNeeds::default();
        let mut in_needs = false;
        for line in readelf.lines() {
            if line.starts_with("Version needs section") {
                in_needs = true;
                continue;
            }
            if line.starts_with("Version ") || line.starts_with("Symbol ") {
                in_needs = false;
            }
            if !in_needs {
                continue;
            }
            let Some(name) = line
                .split("Name: ")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
            else {
                continue;
            };
            let Some(version) = name.strip_prefix("GLIBC_") else {
                continue;
            };
            if version == "PRIVATE" {
                needs.private = true;
                continue;
            }
            let mut parts = version.split('.').map(|p| p.parse::<u32>());
            if let (Some(Ok(x)), Some(Ok(y))) = (parts.next(), parts.next()) {
                let z = parts.next().and_then(Result::ok).unwrap_or(0);
                needs.versions.push(GlibcVersion(x, y, z));
            }
        }
        needs.versions.sort();
        needs.versions.dedup();
        needs
    }

    /// The versions newer than `max`, oldest first.
    pub fn above(&self, max: GlibcVersion) -> Vec<GlibcVersion> {
        self.versions.iter().copied().filter(|v| *v > max).collect()
    }
}

/// `readelf -V --wide FILE`, parsed.
pub fn glibc_needs(file: &Path) -> GlibcNeeds {
    let out = Command::new("readelf")
        .args(["-V", "--wide"])
        .arg(file)
        .output()
        .expect("run readelf (binutils; tests/deps installs it)");
    assert!(
        out.status.success(),
        "readelf -V {} failed: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    GlibcNeeds::parse(&String::from_utf8_lossy(&out.stdout))
}

/// The target directory (`target/`), parent of the profile directory the
/// test binaries run from.
fn target_dir() -> PathBuf {
    crate::bin_dir()
        .parent()
        .expect("target/<profile> has a parent")
        .to_path_buf()
}

/// The directory holding `outrider-agent`, `liboutrider_agent.so` and
/// `outrider` as `packaging/build --portable --profile dev` makes them; built
/// once per test binary. The dev profile is the quick one: the symbol
/// versions come from the linker's glibc 2.17 stubs, whatever the profile.
pub fn portable_build() -> &'static Path {
    static DIST: OnceLock<PathBuf> = OnceLock::new();
    DIST.get_or_init(|| {
        let target = target_dir();
        let out = target.join("packaging/e2e-dist");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/build");
        let result = Command::new("sh")
            .arg(&script)
            .args(["--portable", "--profile", "dev", "--out"])
            .arg(&out)
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .expect("run packaging/build");
        assert!(
            result.status.success(),
            "packaging/build --portable failed:\n{}",
            String::from_utf8_lossy(&result.stderr)
        );
        out
    })
}

/// A Debian 11 (bullseye, glibc 2.31) root with what the installer uses:
/// `curl`, OpenSSL 1.1.1 (which cannot verify Ed25519) and `python3` (the
/// installer's fallback verifier). Made by `debootstrap` on first use (a few
/// minutes, from deb.debian.org or `$OUTRIDER_DEBIAN_MIRROR`) and reused
/// after; a cached root made before python3 was needed gets it through
/// `apt-get` inside the root. Needs root.
pub fn bullseye_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = target_dir().join("debootstrap/bullseye");
        if root.join("etc/debian_version").exists() {
            if !root.join("usr/bin/python3").exists() {
                add_python3(&root);
            }
            return root;
        }
        // Made beside and renamed: an interrupted debootstrap leaves no
        // root that looks complete.
        let tmp = root.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.parent().unwrap()).unwrap();
        let mirror = std::env::var("OUTRIDER_DEBIAN_MIRROR")
            .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
        let out = Command::new("debootstrap")
            .args([
                "--variant=minbase",
                "--include=curl,openssl,python3-minimal",
                "bullseye",
            ])
            .arg(&tmp)
            .arg(&mirror)
            .output()
            .expect("run debootstrap (tests/deps installs it)");
        assert!(
            out.status.success(),
            "debootstrap bullseye failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(&tmp, &root).expect("rename the new root into place");
        root
    })
}

/// Installs `python3-minimal` into a cached root with the root's own
/// `apt-get`, in a private mount namespace (its /proc and the host's
/// resolver, nothing of the host changed).
fn add_python3(root: &Path) {
    let steps = format!(
        "set -eu\nmount -t proc proc {root}/proc\ncp /etc/resolv.conf {root}/etc/resolv.conf\n\
         chroot {root} apt-get update -q\n\
         DEBIAN_FRONTEND=noninteractive chroot {root} apt-get install -y -q --no-install-recommends python3-minimal\n\
         chroot {root} apt-get clean\n",
        root = root.display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &steps])
        .output()
        .expect("run unshare (util-linux)");
    assert!(
        out.status.success(),
        "installing python3 into the cached Debian 11 root failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const READELF: &str = "
Version symbols section '.gnu.version' contains 3 entries:
 Addr: 0x0000000000000b46  Offset: 0x000b46  Link: 6 (.dynsym)
  000:   0 (*local*)       2 (GLIBC_2.34)    3 (GLIBC_2.2.5)

Version definition section '.gnu.version_d' contains 2 entries:
  000000: Rev: 1  Flags: BASE  Index: 1  Cnt: 1  Name: liboutrider_agent.so
  0x001c: Rev: 1  Flags: none  Index: 2  Cnt: 1  Name: GLIBC_2.99

Version needs section '.gnu.version_r' contains 2 entries:
 Addr: 0x0000000000000b68  Offset: 0x000b68  Link: 7 (.dynstr)
  000000: Version: 1  File: libgcc_s.so.1  Cnt: 1
  0x0010:   Name: GCC_3.0  Flags: none  Version: 5
  0x0020: Version: 1  File: libc.so.6  Cnt: 3
  0x0030:   Name: GLIBC_2.14  Flags: none  Version: 4
  0x0040:   Name: GLIBC_2.2.5  Flags: none  Version: 3
  0x0050:   Name: GLIBC_2.34  Flags: none  Version: 2
";

    #[test]
    fn needs_are_read_from_version_r_only() {
        let needs = GlibcNeeds::parse(READELF);
        assert_eq!(
            needs.versions,
            vec![
                GlibcVersion(2, 2, 5),
                GlibcVersion(2, 14, 0),
                GlibcVersion(2, 34, 0)
            ],
            "GLIBC_2.99 is a definition, GCC_3.0 not glibc's"
        );
        assert!(!needs.private);
    }

    #[test]
    fn versions_above_the_limit_by_table() {
        let cases: &[(&str, &[GlibcVersion])] = &[
            ("GLIBC_2.17", &[]),
            ("GLIBC_2.2.5", &[]),
            ("GLIBC_2.17.1", &[GlibcVersion(2, 17, 1)]),
            ("GLIBC_2.18", &[GlibcVersion(2, 18, 0)]),
            ("GLIBC_2.34", &[GlibcVersion(2, 34, 0)]),
            ("GLIBC_3.0", &[GlibcVersion(3, 0, 0)]),
            ("GCC_4.2.0", &[]),
        ];
        for (name, want) in cases {
            let text = format!(
                "Version needs section '.gnu.version_r' contains 1 entry:\n  0x0010:   Name: {name}  Flags: none  Version: 2\n"
            );
            assert_eq!(GlibcNeeds::parse(&text).above(MAX_GLIBC), *want, "{name}");
        }
    }

    #[test]
    fn glibc_private_is_flagged() {
        let text = "Version needs section '.gnu.version_r' contains 1 entry:\n  0x0010:   Name: GLIBC_PRIVATE  Flags: none  Version: 2\n";
        assert!(GlibcNeeds::parse(text).private);
    }

    #[test]
    fn display_names_the_symbol_version() {
        assert_eq!(GlibcVersion(2, 17, 0).to_string(), "GLIBC_2.17");
        assert_eq!(GlibcVersion(2, 2, 5).to_string(), "GLIBC_2.2.5");
    }
}
