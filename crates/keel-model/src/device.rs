use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

use crate::error::Error;

/// The compute backends a user can pick with `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// Burn's pure-Rust CPU backend (the default).
    #[default]
    Flex,
    /// GPU through wgpu (Vulkan, Metal, DX12); Mesa lavapipe on a CPU-only machine.
    Wgpu,
    /// Burn's ndarray CPU backend (build with the `ndarray` feature).
    Ndarray,
}

impl FromStr for DeviceChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "flex" | "cpu" => Ok(DeviceChoice::Flex),
            "wgpu" | "gpu" => Ok(DeviceChoice::Wgpu),
            "ndarray" => Ok(DeviceChoice::Ndarray),
            other => Err(Error::Device(
                other.into(),
                "unknown device (expected flex, wgpu or ndarray)".into(),
            )),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceChoice::Flex => "flex",
            DeviceChoice::Wgpu => "wgpu",
            DeviceChoice::Ndarray => "ndarray",
        })
    }
}

impl DeviceChoice {
    pub fn device(self) -> Result<Device, Error> {
        match self {
            DeviceChoice::Flex => Ok(Device::flex()),
            DeviceChoice::Wgpu => wgpu_device(),
            DeviceChoice::Ndarray => ndarray_device(),
        }
    }
}

#[cfg(feature = "ndarray")]
fn ndarray_device() -> Result<Device, Error> {
    // Deprecated upstream in favour of flex; kept as an opt-in cross-check.
    #[allow(deprecated)]
    Ok(Device::ndarray())
}

#[cfg(not(feature = "ndarray"))]
fn ndarray_device() -> Result<Device, Error> {
    Err(Error::Device(
        "ndarray".into(),
        "this keel was built without the `ndarray` feature".into(),
    ))
}

#[cfg(feature = "wgpu")]
fn wgpu_device() -> Result<Device, Error> {
    Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice))
}

// Off only in the fuzz build: wgpu's instrumented code made every fuzz input slower.
#[cfg(not(feature = "wgpu"))]
fn wgpu_device() -> Result<Device, Error> {
    Err(Error::Device(
        "wgpu".into(),
        "this keel was built without the `wgpu` feature".into(),
    ))
}
