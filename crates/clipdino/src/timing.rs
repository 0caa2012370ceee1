//! An optional per-op timing hook, so that a profiler can time the real forward passes (the
//! benchmark's `profile` step) instead of a hand-made copy of them.
//!
//! The model crate has no clock of its own (it runs natively and in a browser worker): the
//! caller installs an [`OpTimer`] with [`with_op_timer`] for the duration of a closure, and every
//! instrumented op that runs inside it (on this thread) reads the timer's clock before and after
//! and reports its name, duration and, for matrix products, its FLOPs.
//!
//! **Cost when off** (always, outside [`with_op_timer`]): one thread-local `bool` read and a
//! branch per instrumented op — about 30 per transformer block, against milliseconds of work per
//! op; the FLOP counts are closures that are never called. On wasm32 without threads the
//! thread-local is a plain static.
//!
//! Ops do not nest: while one is being timed, ops it calls run untimed (so the times add up to
//! at most the wall time).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use candle_core::{Tensor, D};

/// Receives the op timings of the forward passes run inside [`with_op_timer`].
pub trait OpTimer {
    /// The caller's clock, in milliseconds (`Instant` natively, `performance.now()` in a
    /// browser).
    fn now_ms(&self) -> f64;
    /// Op `op` took `ms` milliseconds and `flops` floating-point operations (0 where they are
    /// not counted: copies, element-wise ops, normalisations).
    fn record(&mut self, op: &'static str, ms: f64, flops: f64);
}

thread_local! {
    static TIMER: RefCell<Option<Rc<RefCell<dyn OpTimer>>>> = const { RefCell::new(None) };
    /// A timer is installed and no timed op is running.
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
}

/// Run `f` with `timer` receiving the op timings of this thread; the previous state is restored
/// afterwards (also when `f` panics).
pub fn with_op_timer<R>(timer: Rc<RefCell<dyn OpTimer>>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Rc<RefCell<dyn OpTimer>>>, bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            TIMER.with(|t| *t.borrow_mut() = self.0.take());
            ACTIVE.with(|a| a.set(self.1));
        }
    }
    let previous = TIMER.with(|t| t.replace(Some(timer)));
    let _restore = Restore(previous, ACTIVE.with(|a| a.replace(true)));
    f()
}

/// Whether a timer is installed on this thread ([`crate::par::install`] then keeps its work
/// here, where the timer is).
#[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
pub(crate) fn timer_installed() -> bool {
    TIMER.with(|t| t.borrow().is_some())
}

/// Time `f` as op `name` when a timer is installed (no FLOPs counted).
#[inline]
pub(crate) fn op<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    op_flops(name, |_| 0.0, f)
}

/// Time `f` as op `name` when a timer is installed; `flops` is asked for the op's FLOPs, given
/// its output, only then.
#[inline]
pub(crate) fn op_flops<T>(
    name: &'static str,
    flops: impl FnOnce(&T) -> f64,
    f: impl FnOnce() -> T,
) -> T {
    if !ACTIVE.with(Cell::get) {
        return f();
    }
    timed(name, flops, f)
}

fn timed<T>(name: &'static str, flops: impl FnOnce(&T) -> f64, f: impl FnOnce() -> T) -> T {
    let Some(timer) = TIMER.with(|t| t.borrow().clone()) else {
        return f();
    };
    ACTIVE.with(|a| a.set(false));
    let t0 = timer.borrow().now_ms();
    let out = f();
    let ms = timer.borrow().now_ms() - t0;
    timer.borrow_mut().record(name, ms, flops(&out));
    ACTIVE.with(|a| a.set(true));
    out
}

/// FLOPs of a matrix product with left operand `x`, from its output: `2 · |x| · n`, with `n`
/// the output's last dimension (`x @ Wᵀ`, `q @ kᵀ`, `probs @ v` alike).
pub(crate) fn matmul_flops<E>(x: &Tensor) -> impl FnOnce(&Result<Tensor, E>) -> f64 + '_ {
    move |y| match y {
        Ok(y) => 2.0 * x.elem_count() as f64 * y.dim(D::Minus1).unwrap_or(0) as f64,
        Err(_) => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Log {
        clock: Cell<f64>,
        ops: Vec<(&'static str, f64, f64)>,
    }

    impl OpTimer for Log {
        fn now_ms(&self) -> f64 {
            // Every read advances the clock by 1 ms.
            self.clock.set(self.clock.get() + 1.0);
            self.clock.get()
        }
        fn record(&mut self, op: &'static str, ms: f64, flops: f64) {
            self.ops.push((op, ms, flops));
        }
    }

    #[test]
    fn ops_are_timed_only_inside_with_op_timer_and_do_not_nest() {
        assert_eq!(op("outside", || 1), 1);
        let log = Rc::new(RefCell::new(Log::default()));
        let got = with_op_timer(log.clone(), || {
            op("outer", || op("inner", || 2) + 1)
                + op_flops("counted", |v: &i32| *v as f64 * 10.0, || 4)
        });
        assert_eq!(got, 7);
        assert_eq!(
            log.borrow().ops,
            vec![("outer", 1.0, 0.0), ("counted", 1.0, 40.0)]
        );
        assert!(!ACTIVE.with(Cell::get), "off again afterwards");
        op("after", || ());
        assert_eq!(log.borrow().ops.len(), 2);
    }

    #[test]
    fn matmul_flops_count_multiply_adds_twice() {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::zeros((2, 3, 4), candle_core::DType::F32, &dev).unwrap();
        let w = Tensor::zeros((4, 5), candle_core::DType::F32, &dev).unwrap();
        let y = x.broadcast_matmul(&w);
        assert_eq!(matmul_flops(&x)(&y), 2.0 * 2.0 * 3.0 * 4.0 * 5.0);
    }
}
