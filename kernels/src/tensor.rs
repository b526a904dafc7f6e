//! The dense, contiguous, row-major tensor.

use half::bf16;

use crate::{cuda::CudaStorage, DType, Device, Error, Result};

/// Backing memory of a tensor. The variant always agrees with the tensor's device and dtype.
pub enum Storage {
    CpuF32(Vec<f32>),
    CpuBF16(Vec<bf16>),
    CpuU32(Vec<u32>),
    Cuda(CudaStorage),
}

/// A dense row-major tensor on a device. No strides, no views: reshape is free, everything else
/// that changes layout is an explicit op. Not `Clone` on purpose (copies of GPU memory should be
/// visible in code): use [`Tensor::try_clone`].
pub struct Tensor {
    shape: Vec<usize>,
    dtype: DType,
    device: Device,
    storage: Storage,
}

impl Tensor {
    /// Wraps existing storage. Checks that the element count matches the shape.
    pub fn from_storage(storage: Storage, shape: &[usize], device: Device) -> Result<Tensor> {
        let (dtype, len) = match &storage {
            Storage::CpuF32(v) => (DType::F32, v.len()),
            Storage::CpuBF16(v) => (DType::BF16, v.len()),
            Storage::CpuU32(v) => (DType::U32, v.len()),
            Storage::Cuda(s) => (s.dtype(), s.len()),
        };
        let numel: usize = shape.iter().product();
        if numel != len {
            return Err(Error::shape(
                "from_storage",
                format!("shape {shape:?} has {numel} elements but storage has {len}"),
            ));
        }
        if matches!(storage, Storage::Cuda(_)) != device.is_cuda() {
            return Err(Error::msg(format!(
                "storage does not live on device {device}"
            )));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            dtype,
            device,
            storage,
        })
    }

    /// An f32 tensor from host data, placed on `device` (converted to nothing else).
    pub fn from_f32(data: Vec<f32>, shape: &[usize], device: &Device) -> Result<Tensor> {
        let t = Tensor::from_storage(Storage::CpuF32(data), shape, Device::Cpu)?;
        t.to_device(device)
    }

    /// A u32 tensor (token ids, positions, offsets) from host data, placed on `device`.
    pub fn from_u32(data: Vec<u32>, shape: &[usize], device: &Device) -> Result<Tensor> {
        let t = Tensor::from_storage(Storage::CpuU32(data), shape, Device::Cpu)?;
        t.to_device(device)
    }

    /// A bf16 tensor from host data, placed on `device`.
    pub fn from_bf16(data: Vec<bf16>, shape: &[usize], device: &Device) -> Result<Tensor> {
        let t = Tensor::from_storage(Storage::CpuBF16(data), shape, Device::Cpu)?;
        t.to_device(device)
    }

    /// Zero-filled tensor.
    pub fn zeros(shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let storage = match device {
            Device::Cpu => match dtype {
                DType::F32 => Storage::CpuF32(vec![0.0; n]),
                DType::BF16 => Storage::CpuBF16(vec![bf16::ZERO; n]),
                DType::U32 => Storage::CpuU32(vec![0; n]),
            },
            Device::Cuda(d) => Storage::Cuda(d.zeros(dtype, n)?),
        };
        Tensor::from_storage(storage, shape, device.clone())
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn storage_mut(&mut self) -> &mut Storage {
        &mut self.storage
    }

    pub fn into_storage(self) -> Storage {
        self.storage
    }

    /// Size in bytes of the data.
    pub fn size_in_bytes(&self) -> usize {
        self.numel() * self.dtype.size_in_bytes()
    }

    /// The two dimensions of a rank-2 tensor, or an error naming `op`.
    pub fn dims2(&self, op: &'static str) -> Result<(usize, usize)> {
        match self.shape[..] {
            [a, b] => Ok((a, b)),
            _ => Err(Error::shape(
                op,
                format!("expected a rank-2 tensor, got shape {:?}", self.shape),
            )),
        }
    }

    /// The three dimensions of a rank-3 tensor, or an error naming `op`.
    pub fn dims3(&self, op: &'static str) -> Result<(usize, usize, usize)> {
        match self.shape[..] {
            [a, b, c] => Ok((a, b, c)),
            _ => Err(Error::shape(
                op,
                format!("expected a rank-3 tensor, got shape {:?}", self.shape),
            )),
        }
    }

    /// Same data, new shape with the same element count. Free.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!("cannot reshape {:?} into {shape:?}", self.shape),
            ));
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// A deep copy on the same device.
    pub fn try_clone(&self) -> Result<Tensor> {
        let storage = match &self.storage {
            Storage::CpuF32(v) => Storage::CpuF32(v.clone()),
            Storage::CpuBF16(v) => Storage::CpuBF16(v.clone()),
            Storage::CpuU32(v) => Storage::CpuU32(v.clone()),
            Storage::Cuda(s) => Storage::Cuda(s.try_clone()?),
        };
        Tensor::from_storage(storage, &self.shape, self.device.clone())
    }

    /// Copies the tensor to `device` (same dtype). Returns a copy even when already there.
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        let storage = match (&self.storage, device) {
            (Storage::Cuda(s), Device::Cpu) => s.to_host()?,
            (_, Device::Cpu) => return self.try_clone(),
            (Storage::Cuda(s), Device::Cuda(d)) => Storage::Cuda(d.copy_from(s)?),
            (host, Device::Cuda(d)) => Storage::Cuda(d.upload(host)?),
        };
        Tensor::from_storage(storage, &self.shape, device.clone())
    }

    /// The data as host f32 (bf16 is widened, u32 is converted). Copies from the GPU if needed.
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        match &self.storage {
            Storage::CpuF32(v) => Ok(v.clone()),
            Storage::CpuBF16(v) => Ok(v.iter().map(|x| x.to_f32()).collect()),
            Storage::CpuU32(v) => Ok(v.iter().map(|&x| x as f32).collect()),
            Storage::Cuda(s) => {
                Tensor::from_storage(s.to_host()?, &self.shape, Device::Cpu)?.to_vec_f32()
            }
        }
    }

    /// The data as host u32. Errors unless the dtype is U32.
    pub fn to_vec_u32(&self) -> Result<Vec<u32>> {
        match &self.storage {
            Storage::CpuU32(v) => Ok(v.clone()),
            Storage::Cuda(s) if s.dtype() == DType::U32 => {
                Tensor::from_storage(s.to_host()?, &self.shape, Device::Cpu)?.to_vec_u32()
            }
            _ => Err(Error::DType {
                op: "to_vec_u32",
                dtype: self.dtype,
            }),
        }
    }

    /// Host f32 data by reference; errors unless this is a CPU f32 tensor.
    pub fn cpu_f32(&self) -> Result<&[f32]> {
        match &self.storage {
            Storage::CpuF32(v) => Ok(v),
            _ => Err(Error::msg(format!(
                "expected a cpu f32 tensor, got {} on {}",
                self.dtype, self.device
            ))),
        }
    }

    /// Host f32 data by mutable reference; errors unless this is a CPU f32 tensor.
    pub fn cpu_f32_mut(&mut self) -> Result<&mut [f32]> {
        let (dtype, device) = (self.dtype, self.device.to_string());
        match &mut self.storage {
            Storage::CpuF32(v) => Ok(v),
            _ => Err(Error::msg(format!(
                "expected a cpu f32 tensor, got {dtype} on {device}"
            ))),
        }
    }

    /// Host u32 data by reference; errors unless this is a CPU u32 tensor.
    pub fn cpu_u32(&self) -> Result<&[u32]> {
        match &self.storage {
            Storage::CpuU32(v) => Ok(v),
            _ => Err(Error::msg(format!(
                "expected a cpu u32 tensor, got {} on {}",
                self.dtype, self.device
            ))),
        }
    }

    /// Errors unless `other` lives on the same device as `self`.
    pub fn check_same_device(&self, other: &Tensor, op: &'static str) -> Result<()> {
        if self.device.same(&other.device) {
            Ok(())
        } else {
            Err(Error::DeviceMismatch {
                op,
                a: self.device.to_string(),
                b: other.device.to_string(),
            })
        }
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({:?}, {}, {})",
            self.shape, self.dtype, self.device
        )
    }
}
