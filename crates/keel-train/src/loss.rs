use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

/// Sum over positions of `-log p(target) · weight`: next-token cross
/// entropy on the trained tokens only. Divide by the weight sum for the mean.
pub fn weighted_nll(logits: Tensor<3>, targets: Tensor<2, Int>, weights: Tensor<2>) -> Tensor<1> {
    let log_p = log_softmax(logits, 2)
        .gather(2, targets.unsqueeze_dim(2))
        .squeeze_dim::<2>(2);
    log_p.mul(weights).sum().neg()
}
