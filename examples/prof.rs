//! temp profiling driver
use bnorm::*;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (l, op) = (a[1].as_str(), a[2].as_str());
    let layout = match l {
        "nchw" => Layout::Nchw,
        "nhwc" => Layout::Nhwc,
        b => Layout::Blocked { block: b.parse().unwrap() },
    };
    let dims: Vec<usize> = a[3].split('x').map(|v| v.parse().unwrap()).collect();
    let d = TensorDesc::new(Shape::nchw(dims[0], dims[1], dims[2], dims[3]), layout).unwrap();
    let x: Vec<f32> = (0..d.len()).map(|i| (i % 97) as f32 * 0.1).collect();
    let mut y = vec![0.0; d.len()];
    let c = dims[1];
    let (mut m, mut v) = (vec![0.0; c], vec![1.0; c]);
    let k = Kernels::detect();
    let reps: usize = a[4].parse().unwrap();
    let t = std::time::Instant::now();
    for _ in 0..reps {
        match op {
            "moments" => k.moments(&d, &x, &mut m, &mut v).unwrap(),
            "train" => k.forward_training(&d, &x, &mut y, &Affine::default(), &mut m, &mut v).unwrap(),
            _ => k.forward_inference(&d, &x, &mut y, &Affine::default(), &m, &v).unwrap(),
        }
    }
    let dt = t.elapsed().as_secs_f64() / reps as f64;
    println!("{:.1} GB/s (1x bytes)", d.len() as f64 * 4.0 / dt / 1e9);
}
