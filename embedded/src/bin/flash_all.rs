//! Flash probe: a firmware that makes one call of every operation through the free
//! functions and exits, so that its size (`llvm-size`) less the empty probe's is what that costs in flash.

#![no_std]
#![no_main]

use bnorm::{Affine, Layout, Shape, TensorDesc};
use core::hint::black_box;
use cortex_m_rt::entry;
use cortex_m_semihosting::debug;

#[entry]
fn main() -> ! {
    let desc = TensorDesc::new(Shape::new(1, 5, 7), black_box(Layout::Nchw)).ok();
    let x = black_box([1.0f32; 35]);
    let mut y = [0.0f32; 35];
    let (mut m, mut v) = ([0.0f32; 5], [1.0f32; 5]);
    let aff = Affine { gamma: None, beta: None, eps: 1e-5 };
    let mut ok = desc.is_some();
    if let Some(d) = &desc {
        ok &= bnorm::moments(d, &x, &mut m, &mut v).is_ok();
        ok &= bnorm::forward_training(d, &x, &mut y, &aff, &mut m, &mut v).is_ok();
        ok &= bnorm::forward_training_in_place(d, &mut y, &aff, &mut m, &mut v).is_ok();
        ok &= bnorm::forward_inference(d, &x, &mut y, &aff, &m, &v).is_ok();
        ok &= bnorm::forward_inference_in_place(d, &mut y, &aff, &m, &v).is_ok();
        ok &= bnorm::channel_affine(d, &x, &mut y, &m, &v).is_ok();
        ok &= bnorm::channel_affine_in_place(d, &mut y, &m, &v).is_ok();
        let (mut rm, mut rv) = ([0.0f32; 5], [1.0f32; 5]);
        ok &= bnorm::update_running_stats(d, &mut rm, &mut rv, &m, &v, bnorm::Momentum::Exponential(0.1))
            .is_ok();
        black_box((&rm, &rv));
    }
    black_box(&y);
    debug::exit(if ok { debug::EXIT_SUCCESS } else { debug::EXIT_FAILURE });
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}
