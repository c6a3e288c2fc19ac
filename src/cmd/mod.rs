//! One module per subcommand: its flags and what it runs. The library
//! crates do the work; these parse, open, call and print.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use keel_adapters::DEFAULT_ADAPTER;
use keel_adapters::peft::AdapterFile;
use keel_model::{DeviceChoice, LoadedModel};

pub mod adapter;
pub mod align;
pub mod bench;
pub mod convert;
pub mod eval;
pub mod export;
pub mod generate;
pub mod inspect;
pub mod probe;
pub mod recipe;
pub mod train;

/// Opens the model at `path` on `device`.
pub fn open(path: &Path, device: DeviceChoice) -> Result<LoadedModel> {
    LoadedModel::open(path, &device.device()?)
        .with_context(|| format!("loading {}", path.display()))
}

/// Opens the model at `path` with the PEFT adapter in `adapter` attached as
/// the default adapter (its modules trained in full included).
pub fn open_with_adapter(
    path: &Path,
    adapter: &Path,
    device: DeviceChoice,
) -> Result<(LoadedModel, AdapterFile)> {
    let mut loaded = open(path, device)?;
    let file = AdapterFile::read(adapter)
        .with_context(|| format!("reading adapter {}", adapter.display()))?;
    loaded
        .model
        .attach(&file, DEFAULT_ADAPTER)
        .with_context(|| format!("attaching {} to {}", adapter.display(), path.display()))?;
    Ok((loaded, file))
}

/// The model at `path`, with `adapter` attached where one is given.
pub fn open_maybe_adapter(
    path: &Path,
    adapter: Option<&Path>,
    device: DeviceChoice,
) -> Result<LoadedModel> {
    match adapter {
        Some(a) => Ok(open_with_adapter(path, a, device)?.0),
        None => open(path, device),
    }
}

/// The alignment subspace of the reference adapter in `dir` (the update
/// that aligned the base), on `device`.
pub fn reference_subspace(dir: &Path, device: DeviceChoice) -> Result<keel_align::Subspace> {
    let file = AdapterFile::read(dir)
        .with_context(|| format!("reading reference adapter {}", dir.display()))?;
    Ok(keel_align::Subspace::from_adapter(
        &file,
        &device.device()?,
    )?)
}

/// Prints a summary as text or, with `json`, as pretty JSON.
pub fn print_summary(
    summary: &(impl std::fmt::Display + serde::Serialize),
    json: bool,
) -> Result<()> {
    match json {
        true => print_out(&(serde_json::to_string_pretty(summary)? + "\n")),
        false => print_out(&summary.to_string()),
    }
}

/// Prints to stdout; a closed pipe (`keel inspect M | head`) is not an error.
pub fn print_out(text: &str) -> Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
