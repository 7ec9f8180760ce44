//! What libtorch sees on this machine: the check that the trainer's libtorch loads and
//! whether CUDA is usable.

use serde::Serialize;

/// Where libtorch computes (`--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DeviceChoice {
    /// CUDA when libtorch sees a device, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// The first CUDA device; an error when there is none.
    Cuda,
}

#[derive(Debug, thiserror::Error)]
#[error("--device cuda: libtorch sees no CUDA device (see `caption-train device`)")]
pub struct NoCudaDevice;

impl DeviceChoice {
    pub fn resolve(self) -> Result<tch::Device, NoCudaDevice> {
        Ok(match self {
            DeviceChoice::Cpu => tch::Device::Cpu,
            DeviceChoice::Cuda if !tch::Cuda::is_available() => return Err(NoCudaDevice),
            DeviceChoice::Cuda => tch::Device::Cuda(0),
            DeviceChoice::Auto => tch::Device::cuda_if_available(),
        })
    }
}

/// libtorch's CUDA backend is `libtorch_cuda.so`, which no symbol of the binary references,
/// so the linker drops it and CUDA would never be seen. Load it at start-up when it is
/// there (CUDA set-up, or a GPU machine's torch on LD_LIBRARY_PATH); on the CPU set-up its
/// CUDA libraries are absent, the load fails and libtorch runs on the CPU.
pub fn load_cuda_backend() -> bool {
    // SAFETY: dlopen with a constant, NUL-terminated name; the handle is kept for the
    // process lifetime on purpose (the library registers CUDA kernels globally).
    unsafe {
        !libc::dlopen(
            c"libtorch_cuda.so".as_ptr(),
            libc::RTLD_NOW | libc::RTLD_GLOBAL,
        )
        .is_null()
    }
}

/// Keep freed activation buffers in the heap instead of returning them to the kernel.
/// glibc serves blocks above its adaptive mmap threshold with fresh `mmap`s, so every
/// forward pass of a CNN paid for zeroed pages again: measured on the 2-core machine,
/// EfficientNet-Lite0 extraction spent more time in the kernel than in libtorch
/// (14.8 -> 42.3 images/s with these settings and batch 8).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; called once at start-up before
    // any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    /// Whether libtorch's CUDA backend library could be loaded.
    pub cuda_backend_loaded: bool,
    pub cuda_available: bool,
    pub cudnn_available: bool,
    pub cuda_devices: i64,
    /// Intra-op threads libtorch uses on the CPU (`OMP_NUM_THREADS` sets it).
    pub cpu_threads: i32,
    /// A small computation run through libtorch, so the report proves it works.
    pub smoke_test_sum: f64,
}

pub fn report(cuda_backend_loaded: bool) -> DeviceReport {
    let t = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.5]);
    DeviceReport {
        cuda_backend_loaded,
        cuda_available: tch::Cuda::is_available(),
        cudnn_available: tch::Cuda::cudnn_is_available(),
        cuda_devices: tch::Cuda::device_count(),
        cpu_threads: tch::get_num_threads(),
        smoke_test_sum: t.sum(tch::Kind::Float).double_value(&[]),
    }
}
