//! Command-line driver for the delta benchmark (`bench/delta.sh`).
//!
//! ```text
//! deltatool create FORMAT BASE NEW OUT            # FORMAT: bsdiff-zstd | zstd-patch-from | elf-x86-64-bsdiff-zstd
//! deltatool apply FORMAT BASE PATCH SIZE OUT      # `apply_to`, streaming into a BufWriter<File>
//! deltatool apply-vec FORMAT BASE PATCH SIZE OUT  # `apply` into a Vec, then one write
//! deltatool zstd LEVEL IN OUT                     # the full build, as `release publish` stores it
//! ```
//!
//! Exit codes: 0 ok, 1 failure, 64 bad usage.

use std::fs::{self, File};
use std::io::BufWriter;
use std::process::ExitCode;

use anyhow::{Context, bail};
use outrider_delta::DeltaFormat;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["create", format, base, new, out] => create(format, base, new, out),
        ["apply", format, base, patch, size, out] => apply(format, base, patch, size, out),
        ["apply-vec", format, base, patch, size, out] => apply_vec(format, base, patch, size, out),
        ["zstd", level, input, out] => compress(level, input, out),
        _ => {
            eprintln!(
                "usage: deltatool create FORMAT BASE NEW OUT | apply[-vec] FORMAT BASE PATCH SIZE OUT | zstd LEVEL IN OUT"
            );
            return ExitCode::from(64);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("deltatool: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn format(name: &str) -> anyhow::Result<DeltaFormat> {
    Ok(match name {
        "bsdiff-zstd" => DeltaFormat::BsdiffZstd,
        "zstd-patch-from" => DeltaFormat::ZstdPatchFrom,
        "elf-x86-64-bsdiff-zstd" => DeltaFormat::ElfX86BsdiffZstd,
        _ => bail!(
            "unknown format {name:?}; use bsdiff-zstd, zstd-patch-from or elf-x86-64-bsdiff-zstd"
        ),
    })
}

fn read(path: &str) -> anyhow::Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {path}"))
}

fn create(fmt: &str, base: &str, new: &str, out: &str) -> anyhow::Result<()> {
    let patch = outrider_delta::create(format(fmt)?, &read(base)?, &read(new)?)?;
    fs::write(out, patch).with_context(|| format!("writing {out}"))
}

fn size(size: &str) -> anyhow::Result<u64> {
    size.parse()
        .with_context(|| format!("SIZE {size:?} is not a byte count"))
}

fn apply(fmt: &str, base: &str, patch: &str, size: &str, out: &str) -> anyhow::Result<()> {
    let (format, size) = (format(fmt)?, self::size(size)?);
    let (base, patch) = (read(base)?, read(patch)?);
    let file = File::create(out).with_context(|| format!("creating {out}"))?;
    let mut writer = BufWriter::new(file);
    outrider_delta::apply_to(format, &base, &patch, size, &mut writer)
        .with_context(|| format!("applying to {out}"))
}

fn apply_vec(fmt: &str, base: &str, patch: &str, size: &str, out: &str) -> anyhow::Result<()> {
    let (format, size) = (format(fmt)?, self::size(size)?);
    let new = outrider_delta::apply(format, &read(base)?, &read(patch)?, size)?;
    fs::write(out, new).with_context(|| format!("writing {out}"))
}

fn compress(level: &str, input: &str, out: &str) -> anyhow::Result<()> {
    let level: i32 = level
        .parse()
        .with_context(|| format!("LEVEL {level:?} is not a number"))?;
    let blob = zstd::stream::encode_all(&read(input)?[..], level).context("compressing")?;
    fs::write(out, blob).with_context(|| format!("writing {out}"))
}
