//! The pieces of the rollout engine's overlapped decode loop (`kernels::cuda::graph_ops`,
//! `kernels::cuda::staging::Readback`): a step's tagged input tokens taken from the previous
//! step's [R, 2] samples on the device equal the host reference; a step's samples copied into the
//! runner's feed buffer; an async read-back returns the values queued before it, not those
//! written after; an upload queued behind running work sends the values packed before it, not
//! those the host packs next. GPU only (the host reference is what the CPU path runs).

use kernels::cuda::graph_ops::{copy_u32_prefix, resolve_tokens, resolve_tokens_host, FROM_PREV};
use kernels::cuda::staging::{Readback, Staging};
use kernels::ops::linear;
use kernels::testing::test_devices;
use kernels::{DType, Device, Tensor};

fn cuda_devices() -> Vec<Device> {
    test_devices().into_iter().filter(|d| d.is_cuda()).collect()
}

#[test]
fn resolve_tokens_equals_the_host_reference() {
    for dev in cuda_devices() {
        // prev: 300 rows of (token, log-prob bits).
        let prev: Vec<(u32, f32)> = (0..300u32)
            .map(|r| (r * 7919 % 151_936, -0.5 * r as f32))
            .collect();
        let flat: Vec<u32> = prev.iter().flat_map(|&(t, lp)| [t, lp.to_bits()]).collect();
        let prev_t = Tensor::from_u32(flat, &[300, 2], &dev).unwrap();
        // Host ids, tagged rows (in any order, repeated) and a row past the end (→ 0).
        let tokens: Vec<u32> = (0..1000u32)
            .map(|i| match i % 4 {
                0 => i * 13 % 151_936,
                1 => FROM_PREV | (i * 31 % 300),
                2 => FROM_PREV | (299 - i % 300),
                _ => {
                    if i == 3 {
                        FROM_PREV | 300
                    } else {
                        i
                    }
                }
            })
            .collect();
        let mut want = tokens.clone();
        resolve_tokens_host(&mut want, &prev);
        assert_eq!(want[3], 0);
        assert_eq!(want[1], prev[31].0);
        let mut t = Tensor::from_u32(tokens, &[1000], &dev).unwrap();
        resolve_tokens(&mut t, &prev_t).unwrap();
        assert_eq!(t.to_vec_u32().unwrap(), want);
        // Wrong shapes are errors, not out-of-bounds reads.
        let flat_prev = Tensor::from_u32(vec![0; 6], &[6], &dev).unwrap();
        assert!(resolve_tokens(&mut t, &flat_prev).is_err());
        let mut f32s = Tensor::zeros(&[4], DType::F32, &dev).unwrap();
        assert!(resolve_tokens(&mut f32s, &prev_t).is_err());
    }
}

#[test]
fn samples_feed_the_next_step_and_come_back_asynchronously() {
    for dev in cuda_devices() {
        let Device::Cuda(cuda) = &dev else {
            unreachable!()
        };
        // A step's [8, 2] samples into a feed of [16, 2]: the first 16 values, the rest kept.
        let out = Tensor::from_u32((100..116).collect(), &[8, 2], &dev).unwrap();
        let mut feed = Tensor::from_u32(vec![7; 32], &[16, 2], &dev).unwrap();
        copy_u32_prefix(&out, &mut feed).unwrap();
        let f = feed.to_vec_u32().unwrap();
        assert_eq!(&f[..16], &(100..116).collect::<Vec<u32>>()[..]);
        assert!(f[16..].iter().all(|&v| v == 7));
        assert!(
            copy_u32_prefix(&feed, &mut Tensor::zeros(&[4], DType::U32, &dev).unwrap()).is_err()
        );
        // The next step reads row 3's token from the feed.
        let mut next = Tensor::from_u32(vec![5, FROM_PREV | 3], &[2], &dev).unwrap();
        resolve_tokens(&mut next, &feed).unwrap();
        assert_eq!(next.to_vec_u32().unwrap(), vec![5, 106]);
        // A read-back queued before an overwrite returns the values before it.
        let mut rb = Readback::new(cuda, 64).unwrap();
        let mut src = Tensor::from_u32((0..40).collect(), &[20, 2], &dev).unwrap();
        rb.fetch(&src).unwrap();
        copy_u32_prefix(
            &Tensor::from_u32(vec![9; 40], &[40], &dev).unwrap(),
            &mut src,
        )
        .unwrap();
        assert_eq!(rb.wait().unwrap(), &(0..40).collect::<Vec<u32>>()[..]);
        assert!(rb
            .fetch(&Tensor::zeros(&[65], DType::U32, &dev).unwrap())
            .is_err());
        rb.fetch(&src).unwrap();
        assert_eq!(rb.wait().unwrap(), &[9; 40][..]);
    }
}

/// The overlapped loop packs step N + 1 into a graph's pinned buffer while step N's upload from it
/// may still wait behind the device's queue: packing must wait for that copy, or step N runs on
/// step N + 1's inputs (seen on an H100, 2026-12-07: preempted overlapped rollouts differed from
/// HF greedy, and passed with CUDA_LAUNCH_BLOCKING=1).
#[test]
fn a_queued_upload_sends_what_was_packed_before_it() {
    for dev in cuda_devices() {
        let Device::Cuda(cuda) = &dev else {
            unreachable!()
        };
        let mut st = Staging::new(cuda, 4096).unwrap();
        // Milliseconds of queued work ahead of the upload: f32 products of 2048 × 2048.
        let n = 2048;
        let a = Tensor::from_f32(vec![1e-3; n * n], &[n, n], &dev).unwrap();
        let mut busy = Vec::new();
        for _ in 0..16 {
            busy.push(linear(&a, &a, None).unwrap()); // [n,n]
        }
        st.host_mut().unwrap().fill(1);
        st.send().unwrap();
        st.host_mut().unwrap().fill(2); // the next step's inputs
        let mut got = Tensor::zeros(&[4096], DType::U32, &dev).unwrap();
        st.scatter(0, &mut got).unwrap();
        assert!(
            got.to_vec_u32().unwrap().iter().all(|&v| v == 1),
            "the queued upload sent values packed after it"
        );
        // The next send carries the next values.
        st.send().unwrap();
        st.scatter(0, &mut got).unwrap();
        assert!(got.to_vec_u32().unwrap().iter().all(|&v| v == 2));
        drop(busy);
    }
}
