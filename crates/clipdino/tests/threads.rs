//! The model's outputs do not depend on the number of threads (`clipdino::par`): the image
//! encode (towers + head, one pass and sliding windows), every mode's last block, PAMR and the
//! label embeddings are computed on rayon pools of 1, 2 and 3 threads and compared bit for bit,
//! on every compute path.

use candle_core::{Device, Tensor};
use clipdino::loaders::{random_clip_store, random_head_store};
use clipdino::pipeline::{EncodeOptions, Mode, Refine, SegmentOptions, Segmenter, Window};
use clipdino::templates::TemplateSet;
use clipdino::tokenizer::ClipTokenizer;
use clipdino::{par, ClipConfig, ComputePath, HeadConfig, Vb};

fn segmenter(path: ComputePath) -> Segmenter {
    let clip = ClipConfig::tiny();
    let head = HeadConfig::for_clip(&clip, 32);
    let mut store = random_clip_store(&clip, 3);
    store.merge(random_head_store(&head, 4), "dinoiser.");
    let vb = Vb::new(std::sync::Arc::new(store), Device::Cpu, path);
    Segmenter::new(&vb, &clip, Some(&head)).expect("tiny segmenter")
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("f32 tensor")
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

/// Everything the app computes from a photo and labels, as bits.
fn outputs(seg: &Segmenter, image: &Tensor, tok: &ClipTokenizer) -> Vec<Vec<u32>> {
    let mut out = Vec::new();
    // 320×480: 600 tokens, so the row blocks, head groups and row tasks all split; the window
    // run adds a second tower size.
    let window = EncodeOptions {
        short_side: Some(224),
        window: Some(Window {
            size: 224,
            stride: 112,
        }),
    };
    let labels: Vec<String> = ["cat", "a red sofa", "window", "background"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let emb = seg
        .clip
        .embed_labels(tok, &labels, TemplateSet::Full)
        .expect("labels");
    out.push(bits(&emb));
    for opts in [EncodeOptions::full_res(), window] {
        let mut f = seg.encode_image(image, &opts, &mut |_| {}).expect("encode");
        for mode in Mode::ALL {
            seg.prepare_mode(&mut f, mode).expect("mode");
        }
        for w in &f.windows {
            out.push(bits(&w.dense));
            out.push(bits(w.refined.as_ref().expect("refined")));
            out.push(bits(w.bkg.as_ref().expect("bkg")));
            for mode in Mode::ALL {
                out.push(bits(w.features(mode).expect("features")));
            }
        }
        let pamr = SegmentOptions {
            mode: Mode::NaClip,
            refine: Refine::PAMR,
            ..Default::default()
        };
        out.push(bits(&seg.segment(&f, &emb, &pamr).expect("pamr").probs));
    }
    out
}

#[test]
fn outputs_do_not_depend_on_the_thread_count() {
    let tok = ClipTokenizer::embedded().expect("tokenizer");
    let image = Tensor::rand(0f32, 1.0, (3, 320, 480), &Device::Cpu).expect("image");
    for path in [ComputePath::F32, ComputePath::Int, ComputePath::Quantized] {
        let seg = segmenter(path);
        let mut first: Option<Vec<Vec<u32>>> = None;
        for n in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .expect("pool");
            let got = pool.install(|| {
                assert_eq!(par::threads(), n);
                outputs(&seg, &image, &tok)
            });
            match &first {
                None => first = Some(got),
                Some(want) => {
                    for (i, (g, w)) in got.iter().zip(want).enumerate() {
                        assert!(g == w, "{path:?}: output {i} differs on {n} threads");
                    }
                }
            }
        }
    }
}
