//! Where a tensor lives.

use crate::cuda::CudaDevice;

/// A compute device. `Cpu` is the f32 reference backend; `Cuda` wraps one GPU (context, stream,
/// cuBLAS handle and the NVRTC module cache), cheap to clone.
#[derive(Clone)]
pub enum Device {
    Cpu,
    Cuda(CudaDevice),
}

impl Device {
    /// Opens GPU `ordinal`. Fails with a clear error when no CUDA driver or GPU is present.
    pub fn cuda(ordinal: usize) -> crate::Result<Device> {
        Ok(Device::Cuda(CudaDevice::new(ordinal)?))
    }

    /// Parses `cpu`, `cuda` or `cuda:N`.
    pub fn parse(s: &str) -> crate::Result<Device> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Device::cuda(0),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Device::cuda(n),
                _ => Err(crate::Error::msg(format!(
                    "unknown device `{other}` (expected cpu, cuda or cuda:N)"
                ))),
            },
        }
    }

    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu)
    }

    pub fn is_cuda(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }

    /// True when two handles name the same device.
    pub fn same(&self, other: &Device) -> bool {
        match (self, other) {
            (Device::Cpu, Device::Cpu) => true,
            (Device::Cuda(a), Device::Cuda(b)) => a.ordinal() == b.ordinal(),
            _ => false,
        }
    }

    /// Waits for all queued work on this device (no-op on CPU).
    pub fn synchronize(&self) -> crate::Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(d) => d.synchronize(),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(d) => write!(f, "cuda:{}", d.ordinal()),
        }
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}
