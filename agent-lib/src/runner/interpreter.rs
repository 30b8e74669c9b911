//! Which program runs a script, by file extension.
//!
//! On Unix a plugin runs directly and its shebang picks the interpreter (a
//! file without one runs as a `/bin/sh` script, see [`super::run_plugin`]);
//! the table is used there only for ad-hoc scripts, whose "interpreter" is an
//! extension the server names (`sh`, `py`…). Windows has no shebangs, so
//! every plugin goes through the table by the extension of its name.
//! The table is a plain function of (extension, platform) so both platforms'
//! rows are unit-tested on any build host.

/// Whose conventions apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    Unix,
    Windows,
}

impl Platform {
    /// The platform this build runs on.
    pub const CURRENT: Platform = if cfg!(windows) {
        Platform::Windows
    } else {
        Platform::Unix
    };
}

/// The program and leading arguments that run a script with extension
/// `ext` (no dot, any case) on `platform`: the script's path is appended.
/// `Some([])` means the file runs directly (a Windows `.exe`); `None` means
/// no interpreter is known for it.
pub fn interpreter(ext: &str, platform: Platform) -> Option<&'static [&'static str]> {
    let ext = ext.to_ascii_lowercase();
    let argv: &'static [&'static str] = match (platform, ext.as_str()) {
        (Platform::Windows, "ps1") => &[
            "powershell",
            "-NoProfile",
            "-NonInteractive",
            "-ExecutionPolicy",
            "Bypass",
            "-File",
        ],
        (Platform::Windows, "py") => &["python"],
        (Platform::Windows, "bat" | "cmd") => &["cmd", "/C"],
        (Platform::Windows, "exe" | "com") => &[],
        (Platform::Unix, "sh") => &["/bin/sh"],
        (Platform::Unix, "bash") => &["bash"],
        (Platform::Unix, "py") => &["python3"],
        (Platform::Unix, "pl") => &["perl"],
        (Platform::Unix, "rb") => &["ruby"],
        (Platform::Unix, "ps1") => &["pwsh", "-NoProfile", "-NonInteractive", "-File"],
        _ => return None,
    };
    Some(argv)
}

/// The full command running `script` (named with extension `ext`) with
/// `args`; fails naming the extension when no interpreter is known.
pub fn script_command(
    ext: &str,
    script: &str,
    args: &[String],
    platform: Platform,
) -> Result<Vec<String>, String> {
    let prefix = interpreter(ext, platform).ok_or_else(|| {
        format!("no interpreter is known for {ext:?} scripts on {platform:?} agents")
    })?;
    let mut command: Vec<String> = prefix.iter().map(|s| (*s).to_owned()).collect();
    command.push(script.to_owned());
    command.extend(args.iter().cloned());
    Ok(command)
}

/// The extension of a file name (`check_disk.ps1` → `ps1`), if any.
pub fn extension(name: &str) -> Option<&str> {
    let (stem, ext) = name.rsplit_once('.')?;
    (!stem.is_empty() && !ext.is_empty() && !ext.contains(['/', '\\'])).then_some(ext)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_rows() {
        let w = |ext| script_command(ext, "C:\\p\\x", &["-a".into()], Platform::Windows);
        // PowerShell: never prompts, ignores the execution policy, and the
        // script follows `-File` with its arguments after it.
        let ps1 = w("ps1").unwrap();
        assert_eq!(ps1[0], "powershell");
        assert!(ps1.contains(&"-NonInteractive".to_owned()));
        assert!(ps1.windows(2).any(|p| p == ["-ExecutionPolicy", "Bypass"]));
        assert!(ps1.ends_with(&["-File".into(), "C:\\p\\x".into(), "-a".into()]));
        assert_eq!(w("PY").unwrap(), ["python", "C:\\p\\x", "-a"]);
        assert_eq!(w("bat").unwrap(), ["cmd", "/C", "C:\\p\\x", "-a"]);
        assert_eq!(w("cmd").unwrap(), ["cmd", "/C", "C:\\p\\x", "-a"]);
        assert_eq!(w("exe").unwrap(), ["C:\\p\\x", "-a"]);
        assert!(w("sh").unwrap_err().contains("\"sh\""));
    }

    #[test]
    fn unix_rows() {
        let u = |ext| script_command(ext, "/s", &[], Platform::Unix);
        assert_eq!(u("sh").unwrap(), ["/bin/sh", "/s"]);
        assert_eq!(u("py").unwrap(), ["python3", "/s"]);
        assert_eq!(u("pl").unwrap(), ["perl", "/s"]);
        assert_eq!(u("ps1").unwrap()[0], "pwsh");
        assert!(u("exe").is_err());
        assert!(u("bat").is_err());
    }

    #[test]
    fn extensions() {
        assert_eq!(extension("check_disk.ps1"), Some("ps1"));
        assert_eq!(extension("a.b.py"), Some("py"));
        assert_eq!(extension("noext"), None);
        assert_eq!(extension(".hidden"), None);
        assert_eq!(extension("dir.d/file"), None);
    }
}
