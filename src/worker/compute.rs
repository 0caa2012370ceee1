//! Where the worker runs the image tower: the compute setting (auto / GPU / CPU), the WebGPU
//! device it opened for it, and the loaded model's tower uploaded there.
//!
//! * The setting `Cpu` never touches WebGPU (no adapter request, no `wgpu` call).
//! * Otherwise the browser's adapter is probed first (`navigator.gpu`, plain JS: no device is
//!   created for an adapter that will not be used): none → the CPU, with the reason; under
//!   "auto" a CPU emulation (SwiftShader, llvmpipe: slower than the SIMD path) → the CPU, with
//!   the reason; an explicit "GPU" uses it anyway.
//! * Then the device is created once and checked once per activation function
//!   ([`clipdino_gpu::self_check`]: a small random tower, GPU vs CPU); the model's tower is
//!   uploaded once per model, at its first encode.
//! * A GPU failure during an encode re-encodes that photo on the CPU (the reply says why);
//!   a lost device disables the GPU until the setting is applied again.

use std::cell::RefCell;
use std::rc::Rc;

use clipdino::Activation;
use clipdino_gpu::{is_cpu_emulation, DeviceChoice, Gpu, GpuError, GpuVision, LostSignal};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

use super::model::Model;
use super::{post, yield_now, Shared};
use crate::protocol::{ComputeInfo, RequestId, Response};
use crate::transport::js_error_text;

/// An opened device that passed the self-check.
pub(super) struct GpuDevice {
    pub gpu: Gpu,
    /// The adapter as the browser names it ("google swiftshader", "apple metal-3", …).
    pub name: String,
    lost: LostSignal,
    /// Activations whose self-check passed on this device.
    checked: RefCell<Vec<Activation>>,
    /// The image tower of model generation `.0` on this device.
    tower: RefCell<Option<(u64, Rc<GpuVision>)>>,
}

#[derive(Default)]
pub(super) enum Device {
    /// The setting is being applied (the adapter probed, the device opened and checked).
    #[default]
    Pending,
    /// The setting is "CPU".
    Cpu,
    /// The setting allows a GPU but none is usable: why, in words.
    Unavailable(String),
    Ready(Rc<GpuDevice>),
}

#[derive(Default)]
pub(super) struct Compute {
    pub setting: DeviceChoice,
    pub device: Device,
    /// Increases with every setting applied: an older one finishing late is void.
    epoch: u64,
}

impl Compute {
    /// Whether a model built now keeps its image-tower weights for an upload (the setting may
    /// use a GPU that is there or still being probed).
    pub fn keeps_weights(&self) -> bool {
        matches!(self.device, Device::Pending | Device::Ready(_))
    }

    pub fn info(&self, model: Option<&Model>) -> ComputeInfo {
        let mut info = ComputeInfo {
            setting: self.setting,
            gpu: None,
            note: None,
            needs_weights: false,
            pending: false,
        };
        match &self.device {
            Device::Pending => info.pending = true,
            Device::Cpu => {}
            Device::Unavailable(why) => info.note = Some(why.clone()),
            Device::Ready(d) => {
                info.gpu = Some(d.name.clone());
                info.needs_weights = model.is_some_and(|m| !m.has_visual_weights());
            }
        }
        info
    }
}

fn post_info(shared: &Shared, id: Option<RequestId>) {
    let info = {
        let st = shared.borrow();
        st.compute.info(st.model.as_deref())
    };
    post(&Response::Compute { id, info }, vec![]);
}

/// Apply the compute setting `setting` (request `id`, or `None` at the worker's start) and
/// say where the image tower runs now.
pub(super) async fn configure(shared: &Shared, id: Option<RequestId>, setting: DeviceChoice) {
    let epoch = {
        let mut st = shared.borrow_mut();
        let c = &mut st.compute;
        c.epoch += 1;
        c.setting = setting;
        // The old device (and the towers on it) goes now: its memory is released.
        c.device = if setting == DeviceChoice::Cpu {
            Device::Cpu
        } else {
            Device::Pending
        };
        c.epoch
    };
    let device = match setting {
        DeviceChoice::Cpu => Device::Cpu,
        _ => match open(setting).await {
            Ok(d) => Device::Ready(Rc::new(d)),
            Err(why) => Device::Unavailable(why),
        },
    };
    {
        let mut st = shared.borrow_mut();
        if st.compute.epoch != epoch {
            return;
        }
        st.compute.device = device;
        if !st.compute.keeps_weights() {
            if let Some(m) = &st.model {
                m.drop_visual_weights();
            }
        }
    }
    post_info(shared, id);
}

/// The browser's adapter, as plain JS (no `wgpu` device): its name, and whether it is a CPU
/// emulation.
async fn probe() -> Result<(String, bool), String> {
    let get = |o: &JsValue, k: &str| js_sys::Reflect::get(o, &k.into()).unwrap_or_default();
    let navigator = get(&js_sys::global(), "navigator");
    let gpu = get(&navigator, "gpu");
    if gpu.is_undefined() || gpu.is_null() {
        return Err("this browser offers no WebGPU (navigator.gpu is missing)".into());
    }
    let request: js_sys::Function = get(&gpu, "requestAdapter")
        .dyn_into()
        .map_err(|_| "this browser's WebGPU has no requestAdapter".to_string())?;
    let opts = js_sys::Object::new();
    let _ = js_sys::Reflect::set(&opts, &"powerPreference".into(), &"high-performance".into());
    let promise: js_sys::Promise = request
        .call1(&gpu, &opts)
        .and_then(|p| p.dyn_into())
        .map_err(|e| format!("requesting a WebGPU adapter failed: {}", js_error_text(&e)))?;
    let adapter = JsFuture::from(promise)
        .await
        .map_err(|e| format!("requesting a WebGPU adapter failed: {}", js_error_text(&e)))?;
    if adapter.is_null() || adapter.is_undefined() {
        return Err(
            "the browser has no WebGPU adapter (no supported GPU, or WebGPU is off)".into(),
        );
    }
    let info = get(&adapter, "info");
    let mut parts: Vec<String> = Vec::new();
    for key in ["vendor", "architecture", "device", "description"] {
        if let Some(s) = get(&info, key).as_string().filter(|s| !s.is_empty()) {
            if !parts.contains(&s) {
                parts.push(s);
            }
        }
    }
    let name = if parts.is_empty() {
        "unnamed WebGPU adapter".to_string()
    } else {
        parts.join(" ")
    };
    let fallback = [
        get(&info, "isFallbackAdapter"),
        get(&adapter, "isFallbackAdapter"),
    ]
    .iter()
    .any(|v| v.as_bool() == Some(true));
    Ok((name, fallback))
}

/// Probe, open and self-check a device for `setting` (not `Cpu`); the reason in words when
/// there is none to use.
async fn open(setting: DeviceChoice) -> Result<GpuDevice, String> {
    let (name, fallback) = probe().await?;
    let emulated = |name: &str| {
        format!("{name} is a CPU emulation of a GPU, slower than the CPU path (choose GPU to use it anyway)")
    };
    if setting == DeviceChoice::Auto && is_cpu_emulation(&name, fallback) {
        return Err(emulated(&name));
    }
    let gpu = Gpu::new().await.map_err(|e| e.to_string())?;
    if setting == DeviceChoice::Auto && gpu.is_cpu_emulation() {
        return Err(emulated(&name));
    }
    let lost = gpu.lost_signal();
    let device = GpuDevice {
        gpu,
        name,
        lost,
        checked: RefCell::new(Vec::new()),
        tower: RefCell::new(None),
    };
    check(&device, Activation::Gelu).await?;
    Ok(device)
}

/// The self-check of `device` for `activation`, once.
async fn check(device: &GpuDevice, activation: Activation) -> Result<(), String> {
    if device.checked.borrow().contains(&activation) {
        return Ok(());
    }
    clipdino_gpu::self_check(&device.gpu, activation)
        .await
        .map_err(|e| format!("{}: {e}", device.name))?;
    device.checked.borrow_mut().push(activation);
    Ok(())
}

/// Mark the GPU unusable until the setting is applied again, and tell the page.
fn disable(shared: &Shared, why: String) {
    shared.borrow_mut().compute.device = Device::Unavailable(why);
    post_info(shared, None);
}

fn lost_words(name: &str, reason: &str) -> String {
    let reason = reason.trim_end_matches('.');
    format!(
        "the GPU device ({name}) was lost: {reason}; choose a compute setting again to retry it"
    )
}

/// The device and the tower of `model` (generation `generation`) to encode with, uploaded
/// now when it is the model's first encode there; `None`: encode on the CPU.
pub(super) async fn tower(
    shared: &Shared,
    model: &Model,
    generation: u64,
) -> Option<(Rc<GpuDevice>, Rc<GpuVision>)> {
    let device = match &shared.borrow().compute.device {
        Device::Ready(d) => d.clone(),
        _ => return None,
    };
    if let Some(reason) = device.lost.reason() {
        disable(shared, lost_words(&device.name, &reason));
        return None;
    }
    if let Some((g, t)) = device.tower.borrow().as_ref() {
        if *g == generation {
            return Some((device.clone(), t.clone()));
        }
    }
    if let Err(why) = check(&device, model.seg.clip_cfg.activation).await {
        disable(shared, why);
        return None;
    }
    let tower = match model.upload_tower(&device.gpu)? {
        Ok(t) => Rc::new(t),
        Err(e) => {
            disable(
                shared,
                format!("the image tower could not be put on the GPU: {e}"),
            );
            return None;
        }
    };
    *device.tower.borrow_mut() = Some((generation, tower.clone()));
    Some((device, tower))
}

/// A GPU failure `error` during an encode on `device`: the words for this request, and the
/// GPU disabled when the device was lost.
pub(super) async fn failed(shared: &Shared, device: &GpuDevice, error: &GpuError) -> String {
    // The browser reports a loss through the event loop, maybe after the failure it caused.
    for _ in 0..10 {
        if device.lost.reason().is_some() {
            break;
        }
        yield_now().await;
    }
    let words = format!("the GPU failed ({error})");
    if let Some(reason) = device.lost.reason() {
        let still_this = matches!(&shared.borrow().compute.device,
            Device::Ready(d) if std::ptr::eq(Rc::as_ptr(d), device));
        if still_this {
            disable(shared, lost_words(&device.name, &reason));
        }
    }
    words
}
