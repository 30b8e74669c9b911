//! The stub's command line, parsed by hand.
//!
//! Two flags do not justify an argument-parsing crate in the one binary that
//! can never be updated: `clap` was 10 % of the stub's size
//! (docs/benchmarks.md, "The stub since then"). The grammar is the usual
//! GNU one: `--prefix DIR` or `--prefix=DIR`, `--self-test`, `-h`/`--help`,
//! `-V`/`--version`, and `--` ends the options (no positional argument is
//! accepted after it either).

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the agent, with the files under `prefix` when given (a non-root
    /// install) or the system paths.
    Run {
        /// `--prefix`: PREFIX/etc/agent.toml, data in PREFIX, logs in PREFIX/log.
        prefix: Option<PathBuf>,
    },
    /// `--self-test`: print the version line and exit 0.
    SelfTest,
    /// `--help`: print [`HELP`] and exit 0.
    Help,
    /// `--version`: print `outrider-agent <version>` and exit 0.
    Version,
}

/// The text `--help` prints.
pub const HELP: &str = "\
The Outrider agent: fetches, verifies and runs the agent library.

Usage: outrider-agent [--prefix <PREFIX>] [--self-test]

Options:
      --prefix <PREFIX>  Install prefix of a non-root install: PREFIX/etc/agent.toml,
                         PREFIX/etc/root.json, data in PREFIX, logs in PREFIX/log.
                         Without it the system paths /etc/outrider, /opt/outrider and
                         /var/log/outrider are used.
      --self-test        Print `outrider-agent <version> abi <major>.<minor>` and exit 0:
                         the check a running stub makes before it trusts this binary
                         to replace it.
  -h, --help             Print help
  -V, --version          Print version
";

/// A command line the stub does not understand; the message names the
/// argument and ends with a hint to `--help`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; see 'outrider-agent --help'", self.0)
    }
}

impl std::error::Error for UsageError {}

/// Parses the arguments after the program name.
///
/// Fails on an unknown option, a positional argument, a missing or empty
/// `--prefix` value, a flag given twice, or an argument that is not UTF-8
/// (except the value of `--prefix`, which is a path and may be anything).
pub fn parse<I>(args: I) -> Result<Command, UsageError>
where
    I: IntoIterator<Item = OsString>,
{
    let mut args = args.into_iter();
    let mut prefix: Option<PathBuf> = None;
    let mut self_test = false;
    while let Some(arg) = args.next() {
        // `--prefix=<path>` keeps its non-UTF-8 bytes: split on the bytes.
        if let Some(value) = strip_prefix_value(&arg) {
            set_prefix(&mut prefix, value)?;
            continue;
        }
        let Some(text) = arg.to_str() else {
            return Err(UsageError(format!(
                "unexpected argument '{}'",
                arg.to_string_lossy()
            )));
        };
        match text {
            "--prefix" => {
                let value = args
                    .next()
                    .ok_or_else(|| UsageError("'--prefix' needs a directory".into()))?;
                set_prefix(&mut prefix, value)?;
            }
            "--self-test" if self_test => {
                return Err(UsageError("'--self-test' given more than once".into()));
            }
            "--self-test" => self_test = true,
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--" => {
                if let Some(extra) = args.next() {
                    return Err(UsageError(format!(
                        "unexpected argument '{}'",
                        extra.to_string_lossy()
                    )));
                }
            }
            other => return Err(UsageError(format!("unexpected argument '{other}'"))),
        }
    }
    Ok(if self_test {
        Command::SelfTest
    } else {
        Command::Run { prefix }
    })
}

/// The value of a `--prefix=<value>` argument.
fn strip_prefix_value(arg: &OsString) -> Option<OsString> {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    arg.as_bytes()
        .strip_prefix(b"--prefix=")
        .map(|value| OsString::from_vec(value.to_vec()))
}

fn set_prefix(prefix: &mut Option<PathBuf>, value: OsString) -> Result<(), UsageError> {
    if prefix.is_some() {
        return Err(UsageError("'--prefix' given more than once".into()));
    }
    if value.is_empty() {
        return Err(UsageError("'--prefix' needs a directory".into()));
    }
    *prefix = Some(PathBuf::from(value));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    fn run(args: &[&str]) -> Result<Command, UsageError> {
        parse(args.iter().map(OsString::from))
    }

    fn prefix(path: &str) -> Command {
        Command::Run {
            prefix: Some(PathBuf::from(path)),
        }
    }

    #[test]
    fn commands_by_table() {
        let cases: &[(&[&str], Command)] = &[
            (&[], Command::Run { prefix: None }),
            (&["--prefix", "/opt/x"], prefix("/opt/x")),
            (&["--prefix=/opt/x"], prefix("/opt/x")),
            (&["--prefix", "--self-test"], prefix("--self-test")),
            (&["--prefix", "/p", "--"], prefix("/p")),
            (&["--self-test"], Command::SelfTest),
            (&["--prefix", "/p", "--self-test"], Command::SelfTest),
            (&["-h"], Command::Help),
            (&["--help"], Command::Help),
            (&["--prefix", "/p", "--help"], Command::Help),
            (&["-V"], Command::Version),
            (&["--version"], Command::Version),
        ];
        for (args, want) in cases {
            assert_eq!(run(args).as_ref(), Ok(want), "{args:?}");
        }
    }

    #[test]
    fn usage_errors_name_the_argument() {
        let cases: &[(&[&str], &str)] = &[
            (&["--prefx", "/p"], "unexpected argument '--prefx'"),
            (&["/p"], "unexpected argument '/p'"),
            (&["--prefix"], "'--prefix' needs a directory"),
            (&["--prefix="], "'--prefix' needs a directory"),
            (&["--prefix", ""], "'--prefix' needs a directory"),
            (
                &["--prefix", "/a", "--prefix=/b"],
                "'--prefix' given more than once",
            ),
            (
                &["--self-test", "--self-test"],
                "'--self-test' given more than once",
            ),
            (&["--", "--self-test"], "unexpected argument '--self-test'"),
            (&["-x"], "unexpected argument '-x'"),
        ];
        for (args, want) in cases {
            let err = run(args).expect_err(&format!("{args:?} must be refused"));
            assert_eq!(
                err.to_string(),
                format!("{want}; see 'outrider-agent --help'"),
                "{args:?}"
            );
        }
    }

    #[test]
    fn a_prefix_keeps_non_utf8_bytes() {
        let raw = b"/opt/\xffx".to_vec();
        let mut joined = b"--prefix=".to_vec();
        joined.extend_from_slice(&raw);
        for args in [
            vec![OsString::from("--prefix"), OsString::from_vec(raw.clone())],
            vec![OsString::from_vec(joined)],
        ] {
            assert_eq!(
                parse(args),
                Ok(Command::Run {
                    prefix: Some(PathBuf::from(OsString::from_vec(raw.clone())))
                })
            );
        }
        let bad = parse([OsString::from_vec(b"--x\xff".to_vec())]).unwrap_err();
        assert!(bad.to_string().starts_with("unexpected argument '--x"));
    }
}
