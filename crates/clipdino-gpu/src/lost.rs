//! What an application needs around a device beyond the kernels: the device-lost signal (a
//! driver reset, a GPU process crash, the browser reclaiming memory), and a deliberate loss
//! for tests of the fallback path.

use std::sync::{Arc, Mutex};

use crate::context::Gpu;

/// Set once the device is lost, with the browser's / driver's words. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct LostSignal(Arc<Mutex<Option<String>>>);

impl LostSignal {
    /// Why the device was lost, once it was.
    pub fn reason(&self) -> Option<String> {
        self.0.lock().ok().and_then(|r| r.clone())
    }
}

impl Gpu {
    /// A signal set when this device is lost (every later dispatch or readback fails then).
    /// Call once per device.
    pub fn lost_signal(&self) -> LostSignal {
        let signal = LostSignal::default();
        let slot = signal.0.clone();
        self.device
            .set_device_lost_callback(move |reason, message| {
                let words = if message.is_empty() {
                    format!("{reason:?}")
                } else {
                    message
                };
                if let Ok(mut r) = slot.lock() {
                    r.get_or_insert(words);
                }
            });
        signal
    }

    /// Destroy the device as a driver reset would (test hook of the fallback path): every
    /// later use fails and the [`Self::lost_signal`] fires.
    pub fn lose(&self) {
        self.device.destroy();
    }
}
