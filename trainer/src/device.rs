//! What libtorch sees on this machine: the check that the trainer's libtorch loads and
//! whether CUDA is usable.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    pub cuda_available: bool,
    pub cudnn_available: bool,
    pub cuda_devices: i64,
    /// Intra-op threads libtorch uses on the CPU (`OMP_NUM_THREADS` sets it).
    pub cpu_threads: i32,
    /// A small computation run through libtorch, so the report proves it works.
    pub smoke_test_sum: f64,
}

pub fn report() -> DeviceReport {
    let t = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.5]);
    DeviceReport {
        cuda_available: tch::Cuda::is_available(),
        cudnn_available: tch::Cuda::cudnn_is_available(),
        cuda_devices: tch::Cuda::device_count(),
        cpu_threads: tch::get_num_threads(),
        smoke_test_sum: t.sum(tch::Kind::Float).double_value(&[]),
    }
}
