//! Semantic-segmentation metrics: a confusion-matrix accumulator over (prediction, ground
//! truth) label maps, per-class IoU, mIoU and pixel accuracy.
//!
//! The definitions follow mmsegmentation's `IoUMetric` (`mmseg/evaluation/metrics/iou_metric.py`,
//! `intersect_and_union` + `total_area_to_metrics`), which the CLIP-DINOiser numbers are reported with:
//! * pixels whose ground truth equals the ignore index (255 for VOC) are skipped entirely;
//! * intersections and unions are summed over the whole dataset before dividing;
//! * a class whose union is 0 (absent from both ground truth and prediction) has IoU NaN and is
//!   excluded from the mean (`np.nanmean`);
//! * pixel accuracy (`aAcc`) = correctly labelled pixels / counted pixels.

use crate::error::{Error, Result};

/// Accumulates a `num_classes × num_classes` confusion matrix (rows = ground truth, columns =
/// prediction) over any number of images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfusionMatrix {
    num_classes: usize,
    ignore_index: Option<u32>,
    /// Row-major `[gt][pred]` pixel counts.
    counts: Vec<u64>,
}

impl ConfusionMatrix {
    pub fn new(num_classes: usize, ignore_index: Option<u32>) -> Self {
        Self {
            num_classes,
            ignore_index,
            counts: vec![0; num_classes * num_classes],
        }
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    pub fn ignore_index(&self) -> Option<u32> {
        self.ignore_index
    }

    /// Pixel count with ground truth `gt` predicted as `pred`.
    pub fn count(&self, gt: usize, pred: usize) -> u64 {
        self.counts[gt * self.num_classes + pred]
    }

    /// Add one image. `pred` and `gt` are row-major label maps of the same size. Ground-truth
    /// pixels equal to the ignore index are skipped; any other value must be a class index, and
    /// so must every counted prediction (`field` names the image in errors).
    pub fn add(&mut self, pred: &[u32], gt: &[u32], field: &str) -> Result<()> {
        if pred.len() != gt.len() {
            return Err(Error::invalid(
                field,
                format!(
                    "prediction has {} pixels but the ground truth has {}",
                    pred.len(),
                    gt.len()
                ),
            ));
        }
        let n = self.num_classes;
        // Validate first so that a bad image leaves the accumulator untouched.
        for (&p, &g) in pred.iter().zip(gt) {
            if Some(g) == self.ignore_index {
                continue;
            }
            if g as usize >= n {
                return Err(Error::invalid(
                    field,
                    format!(
                        "ground-truth value {g} is neither a class index (0..{n}) nor the ignore index{}",
                        self.ignore_index.map(|i| format!(" {i}")).unwrap_or_default()
                    ),
                ));
            }
            if p as usize >= n {
                return Err(Error::invalid(
                    field,
                    format!("predicted value {p} is not a class index (0..{n})"),
                ));
            }
        }
        for (&p, &g) in pred.iter().zip(gt) {
            if Some(g) == self.ignore_index {
                continue;
            }
            self.counts[g as usize * n + p as usize] += 1;
        }
        Ok(())
    }

    /// Add the counts of another matrix with the same classes.
    pub fn merge(&mut self, other: &ConfusionMatrix) -> Result<()> {
        if other.num_classes != self.num_classes {
            return Err(Error::invalid(
                "confusion matrix",
                format!(
                    "cannot merge {} classes into {}",
                    other.num_classes, self.num_classes
                ),
            ));
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        Ok(())
    }

    /// Pixels counted (ignored pixels excluded).
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Correctly labelled pixels of class `c` (the diagonal).
    pub fn intersection(&self, c: usize) -> u64 {
        self.count(c, c)
    }

    /// Ground-truth pixels of class `c` (row sum).
    pub fn gt_area(&self, c: usize) -> u64 {
        let n = self.num_classes;
        self.counts[c * n..(c + 1) * n].iter().sum()
    }

    /// Predicted pixels of class `c` (column sum), counted pixels only.
    pub fn pred_area(&self, c: usize) -> u64 {
        (0..self.num_classes).map(|g| self.count(g, c)).sum()
    }

    /// |gt ∪ pred| for class `c`.
    pub fn union(&self, c: usize) -> u64 {
        self.gt_area(c) + self.pred_area(c) - self.intersection(c)
    }

    /// Per-class IoU in [0, 1]; NaN for classes with an empty union.
    pub fn per_class_iou(&self) -> Vec<f64> {
        (0..self.num_classes)
            .map(|c| {
                let u = self.union(c);
                if u == 0 {
                    f64::NAN
                } else {
                    self.intersection(c) as f64 / u as f64
                }
            })
            .collect()
    }

    /// Per-class accuracy (recall) in [0, 1]; NaN for classes absent from the ground truth.
    pub fn per_class_accuracy(&self) -> Vec<f64> {
        (0..self.num_classes)
            .map(|c| {
                let a = self.gt_area(c);
                if a == 0 {
                    f64::NAN
                } else {
                    self.intersection(c) as f64 / a as f64
                }
            })
            .collect()
    }

    /// Mean IoU over the classes whose IoU is defined; NaN if none is.
    pub fn mean_iou(&self) -> f64 {
        nan_mean(&self.per_class_iou())
    }

    /// Mean per-class accuracy (mmseg `mAcc`); NaN if no class is present in the ground truth.
    pub fn mean_accuracy(&self) -> f64 {
        nan_mean(&self.per_class_accuracy())
    }

    /// Overall pixel accuracy (mmseg `aAcc`); NaN if no pixel was counted.
    pub fn pixel_accuracy(&self) -> f64 {
        let total = self.total();
        if total == 0 {
            return f64::NAN;
        }
        let correct: u64 = (0..self.num_classes).map(|c| self.intersection(c)).sum();
        correct as f64 / total as f64
    }
}

/// Mean of the non-NaN values, NaN if there are none (NumPy's `nanmean`).
pub fn nan_mean(v: &[f64]) -> f64 {
    let (sum, n) = v
        .iter()
        .filter(|x| !x.is_nan())
        .fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        sum / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn perfect_prediction_scores_one() {
        let gt = [0, 0, 1, 1, 2, 2, 255];
        let mut cm = ConfusionMatrix::new(4, Some(255));
        cm.add(&[0, 0, 1, 1, 2, 2, 3], &gt, "img").unwrap();
        let iou = cm.per_class_iou();
        assert_eq!(&iou[..3], &[1.0, 1.0, 1.0]);
        // Class 3 appears only where the ground truth is ignored: union 0, excluded.
        assert!(iou[3].is_nan());
        assert_eq!(cm.mean_iou(), 1.0);
        assert_eq!(cm.pixel_accuracy(), 1.0);
        assert_eq!(cm.total(), 6);
    }

    #[test]
    fn hand_computed_example() {
        // gt:   0 0 0 0 1 1 1 2 2 255
        // pred: 0 0 1 1 1 1 2 2 0 2
        // class 0: I = 2, gt = 4, pred = 3 (the last pixel is ignored) → U = 5, IoU = 0.4
        // class 1: I = 2, gt = 3, pred = 4 → U = 5, IoU = 0.4
        // class 2: I = 1, gt = 2, pred = 2 → U = 3, IoU = 1/3
        // class 3: never seen → NaN, excluded. mIoU = (0.4 + 0.4 + 1/3) / 3 = 17/45.
        // aAcc = 5 / 9; accuracies 2/4, 2/3, 1/2 → mAcc = 5/9.
        let gt = [0, 0, 0, 0, 1, 1, 1, 2, 2, 255];
        let pred = [0, 0, 1, 1, 1, 1, 2, 2, 0, 2];
        let mut cm = ConfusionMatrix::new(4, Some(255));
        cm.add(&pred, &gt, "img").unwrap();
        let iou = cm.per_class_iou();
        assert!(close(iou[0], 0.4));
        assert!(close(iou[1], 0.4));
        assert!(close(iou[2], 1.0 / 3.0));
        assert!(iou[3].is_nan());
        assert!(close(cm.mean_iou(), 17.0 / 45.0));
        assert!(close(cm.pixel_accuracy(), 5.0 / 9.0));
        assert!(close(cm.mean_accuracy(), (0.5 + 2.0 / 3.0 + 0.5) / 3.0));
        assert_eq!(cm.count(0, 1), 2);
        assert_eq!(cm.union(0), 5);
    }

    #[test]
    fn class_only_in_prediction_counts_with_iou_zero() {
        // A class predicted but absent from the ground truth has union > 0 and IoU 0 (mmseg).
        let mut cm = ConfusionMatrix::new(3, None);
        cm.add(&[0, 2, 1, 1], &[0, 0, 1, 1], "img").unwrap();
        let iou = cm.per_class_iou();
        assert!(close(iou[0], 0.5));
        assert!(close(iou[1], 1.0));
        assert_eq!(iou[2], 0.0);
        assert!(close(cm.mean_iou(), 0.5));
        assert!(cm.per_class_accuracy()[2].is_nan());
    }

    #[test]
    fn totals_accumulate_across_images_before_dividing() {
        // Image A: class 1 I=1 U=2; image B: class 1 I=3 U=3. Dataset IoU = 4/5, not mean(0.5, 1).
        let mut cm = ConfusionMatrix::new(2, None);
        cm.add(&[1, 0], &[1, 1], "a").unwrap();
        cm.add(&[1, 1, 1], &[1, 1, 1], "b").unwrap();
        assert!(close(cm.per_class_iou()[1], 0.8));
        let mut other = ConfusionMatrix::new(2, None);
        other.add(&[0], &[0], "c").unwrap();
        cm.merge(&other).unwrap();
        assert_eq!(cm.total(), 6);
        assert!(close(cm.per_class_iou()[0], 0.5));
    }

    #[test]
    fn bad_inputs_are_errors_and_leave_counts_untouched() {
        let mut cm = ConfusionMatrix::new(2, Some(255));
        assert!(cm.add(&[0, 1], &[0], "img").is_err());
        let e = cm
            .add(&[0, 1], &[0, 7], "mask.png")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mask.png") && e.contains("7"), "{e}");
        assert!(cm.add(&[0, 5], &[0, 1], "img").is_err());
        assert_eq!(cm.total(), 0);
        assert!(cm.mean_iou().is_nan());
        assert!(cm.pixel_accuracy().is_nan());
        assert!(cm.merge(&ConfusionMatrix::new(3, None)).is_err());
    }
}
