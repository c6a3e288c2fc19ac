//! The Llama-family decoder (Llama 2/3, SmolLM, Mistral, Qwen2, Qwen3,
//! Gemma 3) on Burn.
//!
//! Follows HF transformers' `modeling_llama.py`: pre-norm blocks of grouped-
//! query attention with rotate-half RoPE and a SwiGLU MLP. Gemma 3
//! (`modeling_gemma3.py`) adds norms after attention and MLP, GeGLU, scaled
//! embeddings and sliding-window layers with their own RoPE. Module and field
//! names are HF's, so `model.layers.7.self_attn.q_proj` names the same
//! projection here, in a safetensors file and in a PEFT adapter.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::activation::gelu_approximate;
use burn::tensor::module::embedding;
use burn::tensor::{Bool, DType, Device, Gradients, Int, Tensor, TensorData};

use keel_adapters::{Linear, QuantBase};
use keel_gemm::Weight;

use crate::attention;
use crate::config::{Activation, Config, LayerType, RopeFrequencies};
use crate::head::{self, HeadWeight};
use crate::selective::FullModule;
use crate::swiglu::swiglu;

/// RMSNorm: `x / sqrt(mean(x^2) + eps) * (weight + offset)`; the offset is
/// 1 in Gemma, whose files store `weight` as HF does.
#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: Param<Tensor<1>>,
    pub eps: f64,
    pub offset: f32,
}

impl RmsNorm {
    /// Normalises each head of `[batch, seq, heads, head_dim]` over `head_dim`.
    fn forward_heads(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, s, h, d] = x.dims();
        self.forward(x.reshape([b, s * h, d])).reshape([b, s, h, d])
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let rms = x.clone().square().mean_dim(2).add_scalar(self.eps).sqrt();
        let weight = match self.offset {
            0.0 => self.weight.val(),
            offset => self.weight.val().add_scalar(offset),
        };
        x.div(rms).mul(weight.unsqueeze::<3>())
    }
}

/// Rotary position embedding in HF's rotate-half layout: dimension `i` is
/// paired with `i + rotary_dim/2` (not with its neighbour, as Burn's
/// `RotaryEncoding` and GGUF's `llama` layout do); dimensions past
/// `rotary_dim` (Phi-3's partial rotary) pass unrotated.
#[derive(Debug, Clone)]
pub struct Rope {
    freqs: RopeFrequencies,
}

impl Rope {
    /// The RoPE of `layer`'s kind of attention.
    pub fn new(config: &Config, layer: LayerType) -> Self {
        Rope {
            freqs: config.rope_frequencies(layer),
        }
    }

    /// `cos` and `sin` tables, `[rows, len, 1, rotary_dim]` (token-major),
    /// for positions `start..start+len`. With longrope, a sequence longer
    /// than the original context takes the long factors, as transformers
    /// does (cached positions keep the rotation they had); a row
    /// left-padded by `pads[i]` is as long as its own tokens, so `rows` is
    /// the batch where rows differ, else 1.
    fn tables(
        &self,
        start: usize,
        len: usize,
        pads: &[usize],
        device: &Device,
    ) -> (Tensor<4>, Tensor<4>) {
        let freqs_of = |pad: usize| match &self.freqs.long {
            Some((original, long)) if start + len - pad > *original => long,
            _ => &self.freqs.inv_freq,
        };
        let mut rows: Vec<&Vec<f64>> = pads.iter().map(|&p| freqs_of(p)).collect();
        if rows.iter().all(|f| std::ptr::eq(*f, freqs_of(0))) {
            rows = vec![freqs_of(0)];
        }
        let scale = self.freqs.scale;
        let half = self.freqs.inv_freq.len();
        let (mut cos, mut sin) = (
            Vec::with_capacity(rows.len() * len * 2 * half),
            Vec::with_capacity(rows.len() * len * 2 * half),
        );
        for inv_freq in &rows {
            for pos in start..start + len {
                for _ in 0..2 {
                    for f in inv_freq.iter() {
                        // HF computes the angle in f32; rounding it first keeps us bit-close.
                        let angle = (pos as f32 * *f as f32) as f64;
                        cos.push((angle.cos() * scale) as f32);
                        sin.push((angle.sin() * scale) as f32);
                    }
                }
            }
        }
        let shape = [rows.len(), len, 1, 2 * half];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }

    /// Whether a cache may have to be recomputed ([`Rope::crosses`]): the
    /// tokens it holds are kept then.
    fn recomputes(&self) -> bool {
        self.freqs.long.is_some()
    }

    /// Whether these `len` positions after `start` cached ones take some
    /// row (left-padded by `pads`) past the original context, from within
    /// it: its cached positions were rotated with the short factors.
    fn crosses(&self, start: usize, len: usize, pads: &[usize]) -> bool {
        let Some((original, _)) = &self.freqs.long else {
            return false;
        };
        let crosses = |pad: usize| {
            start.saturating_sub(pad) <= *original && (start + len).saturating_sub(pad) > *original
        };
        start > 0 && (crosses(0) && pads.is_empty() || pads.iter().any(|&p| crosses(p)))
    }

    /// Rotates `x` of shape `[batch, seq, heads, head_dim]`.
    fn apply(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
        let (head_dim, rotary) = (x.dims()[3], cos.dims()[3]);
        if rotary < head_dim {
            let pass = x.clone().narrow(3, rotary, head_dim - rotary);
            let rotated = Self::apply(x.narrow(3, 0, rotary), cos, sin);
            return Tensor::cat(vec![rotated, pass], 3);
        }
        let half = head_dim / 2;
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x.mul(cos.clone()).add(rotated.mul(sin.clone()))
    }
}

/// Keys and values of the positions already seen, per layer, the tokens
/// they came from (kept for longrope, which recomputes them) and the left
/// padding of each row of a batch. Cloning is cheap (tensors are shared)
/// and a clone extends independently.
#[derive(Debug, Default, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    tokens: Option<Tensor<2, Int>>,
    pads: Vec<usize>,
}

impl KvCache {
    pub fn new(n_layers: usize) -> Self {
        Self::with_left_padding(n_layers, Vec::new())
    }

    /// A cache for a batch whose row `i` starts with `pads[i]` padding
    /// tokens: those key positions are masked from every query. Left
    /// padding shifts all of a row's positions alike, which RoPE attention
    /// does not see (it depends on relative positions only).
    pub fn with_left_padding(n_layers: usize, pads: Vec<usize>) -> Self {
        KvCache {
            layers: (0..n_layers).map(|_| None).collect(),
            tokens: None,
            pads,
        }
    }

    /// Number of positions cached.
    pub fn len(&self) -> usize {
        match self.layers.first() {
            Some(Some((k, _))) => k.dims()[2],
            _ => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A cache holding rows `rows` of this one (repeats allowed), so that
    /// several continuations of each prompt run as one batch.
    pub fn select_rows(&self, rows: &[usize]) -> KvCache {
        let Some(Some((k0, _))) = self.layers.first() else {
            return self.clone();
        };
        let ids: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let index = Tensor::<1, Int>::from_data(TensorData::new(ids, [rows.len()]), &k0.device());
        let pick = |t: &Tensor<4>| t.clone().select(0, index.clone());
        KvCache {
            layers: self
                .layers
                .iter()
                .map(|l| l.as_ref().map(|(k, v)| (pick(k), pick(v))))
                .collect(),
            tokens: self
                .tokens
                .as_ref()
                .map(|t| t.clone().select(0, index.clone())),
            pads: match self.pads.is_empty() {
                true => Vec::new(),
                false => rows.iter().map(|&r| self.pads[r]).collect(),
            },
        }
    }
}

/// `[rows, 1, queries or 1, keys]`, true where a key is hidden beyond the
/// causal mask: row `i`'s first `pads[i]` positions (padding), and for a
/// sliding `window`, keys `window` or more positions before the query (HF:
/// a key is seen when `kv > q - window`). The queries are the last
/// `queries` of `keys` positions. `None` when nothing is hidden.
fn attention_mask(
    pads: &[usize],
    window: Option<usize>,
    queries: usize,
    keys: usize,
    device: &Device,
) -> Option<Tensor<4, Bool>> {
    let window = window.filter(|&w| keys > w);
    if window.is_none() && pads.iter().all(|&p| p == 0) {
        return None;
    }
    let rows = pads.len().max(1);
    let query_rows = if window.is_some() { queries } else { 1 };
    let first = keys - queries;
    let mut flags = Vec::with_capacity(rows * query_rows * keys);
    for r in 0..rows {
        let pad = pads.get(r).copied().unwrap_or(0);
        for q in first..first + query_rows {
            flags.extend((0..keys).map(|k| k < pad || window.is_some_and(|w| q >= k + w)));
        }
    }
    Some(Tensor::from_data(
        TensorData::new(flags, [rows, 1, query_rows, keys]),
        device,
    ))
}

/// What the layers of one forward pass share, per kind of attention: the
/// RoPE tables and the mask.
struct LayerInputs {
    cos: Tensor<4>,
    sin: Tensor<4>,
    mask: Option<Tensor<4, Bool>>,
}

/// Grouped-query attention. q, k and v are three projections, or Phi-3's
/// one `qkv_proj` (rows q | k | v): exactly one of the two is set.
#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Option<Linear>,
    pub k_proj: Option<Linear>,
    pub v_proj: Option<Linear>,
    pub qkv_proj: Option<Linear>,
    pub o_proj: Linear,
    /// Per-head RMSNorm of queries and keys before RoPE (Qwen3, Gemma 3).
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// How many positions a sliding-window layer sees; `None` for all.
    pub window: Option<usize>,
    /// Multiplies the queries where scores are scaled by other than
    /// `1/sqrt(head_dim)` (Gemma's `query_pre_attn_scalar`).
    pub q_scale: Option<f64>,
}

impl Attention {
    /// The projected queries, keys and values, `[batch, seq, n · head_dim]`.
    fn qkv(&self, x: Tensor<3>) -> (Tensor<3>, Tensor<3>, Tensor<3>) {
        match (&self.qkv_proj, &self.q_proj, &self.k_proj, &self.v_proj) {
            (Some(qkv), ..) => {
                let (q_dim, kv_dim) = (
                    self.n_heads * self.head_dim,
                    self.n_kv_heads * self.head_dim,
                );
                let out = qkv.forward(x);
                (
                    out.clone().narrow(2, 0, q_dim),
                    out.clone().narrow(2, q_dim, kv_dim),
                    out.narrow(2, q_dim + kv_dim, kv_dim),
                )
            }
            (None, Some(q), Some(k), Some(v)) => {
                (q.forward(x.clone()), k.forward(x.clone()), v.forward(x))
            }
            _ => unreachable!("attention is built with q, k and v, or with qkv"),
        }
    }

    /// `[batch, seq, n · head_dim]` → token-major `[batch, seq, n, head_dim]`,
    /// normalised per head by `norm` when there is one.
    fn heads(&self, x: Tensor<3>, n: usize, norm: Option<&RmsNorm>) -> Tensor<4> {
        let [b, s, _] = x.dims();
        let x = x.reshape([b, s, n, self.head_dim]);
        match norm {
            Some(norm) => norm.forward_heads(x),
            None => x,
        }
    }

    fn forward(
        &self,
        x: Tensor<3>,
        inputs: &LayerInputs,
        cache: Option<&mut Option<(Tensor<4>, Tensor<4>)>>,
    ) -> Tensor<3> {
        let [b, s, _] = x.dims();
        let (q, k, v) = self.qkv(x);
        let q = Rope::apply(
            self.heads(q, self.n_heads, self.q_norm.as_ref()),
            &inputs.cos,
            &inputs.sin,
        );
        let q = match self.q_scale {
            Some(scale) => q.mul_scalar(scale),
            None => q,
        };
        let k = Rope::apply(
            self.heads(k, self.n_kv_heads, self.k_norm.as_ref()),
            &inputs.cos,
            &inputs.sin,
        );
        let v = self.heads(v, self.n_kv_heads, None);
        let out = match (cache, &inputs.mask) {
            (None, None) => attention::causal_self_attention(q, k, v),
            (cache, mask) => {
                // The cache holds keys and values head-major, as Burn's
                // attention takes them.
                let (mut k, mut v) = (k.swap_dims(1, 2), v.swap_dims(1, 2));
                if let Some(slot) = cache {
                    if let Some((pk, pv)) = slot.take() {
                        k = Tensor::cat(vec![pk, k], 2);
                        v = Tensor::cat(vec![pv, v], 2);
                    }
                    *slot = Some((k.clone(), v.clone()));
                }
                let keys = k.dims()[2];
                let mask = mask
                    .as_ref()
                    .map(|m| m.clone().expand([b, self.n_heads, s, keys]));
                attention::attend(q.swap_dims(1, 2), k, v, mask).swap_dims(1, 2)
            }
        };
        self.o_proj
            .forward(out.reshape([b, s, self.n_heads * self.head_dim]))
    }
}

/// A gated MLP, `down(act(gate(x)) * up(x))`: SwiGLU, or GeGLU in Gemma.
/// Gate and up are two projections, or Phi-3's one `gate_up_proj` (rows
/// gate | up): exactly one of the two is set.
#[derive(Module, Debug)]
pub struct Mlp {
    pub gate_proj: Option<Linear>,
    pub up_proj: Option<Linear>,
    pub gate_up_proj: Option<Linear>,
    pub down_proj: Linear,
    #[module(skip)]
    pub activation: Activation,
}

impl Mlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let (gate, up) = match (&self.gate_up_proj, &self.gate_proj, &self.up_proj) {
            (Some(gate_up), ..) => {
                let out = gate_up.forward(x);
                let half = out.dims()[2] / 2;
                (out.clone().narrow(2, 0, half), out.narrow(2, half, half))
            }
            (None, Some(gate), Some(up)) => (gate.forward(x.clone()), up.forward(x)),
            _ => unreachable!("the MLP is built with gate and up, or with gate_up"),
        };
        self.down_proj.forward(match self.activation {
            Activation::Silu => swiglu(gate, up),
            Activation::GeluTanh => gelu_approximate(gate).mul(up),
        })
    }
}

/// A decoder block. `post_attention_layernorm` normalises the MLP's input,
/// except in Gemma, where it normalises the attention's output and the two
/// feed-forward norms surround the MLP.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub pre_feedforward_layernorm: Option<RmsNorm>,
    pub post_feedforward_layernorm: Option<RmsNorm>,
    pub mlp: Mlp,
}

impl DecoderLayer {
    fn forward(
        &self,
        x: Tensor<3>,
        inputs: &LayerInputs,
        cache: Option<&mut Option<(Tensor<4>, Tensor<4>)>>,
    ) -> Tensor<3> {
        let attn = self
            .self_attn
            .forward(self.input_layernorm.forward(x.clone()), inputs, cache);
        match (
            &self.pre_feedforward_layernorm,
            &self.post_feedforward_layernorm,
        ) {
            (Some(pre), Some(post)) => {
                let h = x + self.post_attention_layernorm.forward(attn);
                h.clone() + post.forward(self.mlp.forward(pre.forward(h)))
            }
            _ => {
                let h = x + attn;
                h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h))
            }
        }
    }
}

/// The decoder with its LM head. `lm_head` is `None` when the embeddings are
/// tied: the head then reuses `embed_tokens`.
#[derive(Module, Debug)]
pub struct Llama {
    pub embed_tokens: Param<Tensor<2>>,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    pub lm_head: Option<Linear>,
    /// The RoPE of full-attention layers, and of sliding ones where theirs
    /// differs (Gemma 3).
    #[module(skip)]
    pub rope: Rope,
    #[module(skip)]
    pub rope_local: Option<Rope>,
    /// Multiplies the embeddings (Gemma: `sqrt(hidden_size)`).
    #[module(skip)]
    pub embed_scale: Option<f32>,
    /// The embedding table kept in its GGUF blocks (`embed_tokens` is then
    /// an empty placeholder): a lookup dequantizes only the rows it reads,
    /// and a tied head multiplies by the blocks.
    #[module(skip)]
    pub embed_blocks: Option<QuantBase>,
}

impl Llama {
    /// Final hidden states `[batch, seq, hidden]` for `tokens` `[batch, seq]`.
    /// With a cache, `tokens` continue the cached positions and are appended.
    pub fn forward_hidden(&self, tokens: Tensor<2, Int>, cache: Option<&mut KvCache>) -> Tensor<3> {
        self.forward_hidden_tapped(tokens, cache, |_, _| {})
    }

    /// As [`Llama::forward_hidden`], showing `tap(i, x)` the residual stream
    /// after decoder layer `i` (what probes of internal state read).
    pub fn forward_hidden_tapped(
        &self,
        tokens: Tensor<2, Int>,
        mut cache: Option<&mut KvCache>,
        mut tap: impl FnMut(usize, &Tensor<3>),
    ) -> Tensor<3> {
        let [_, s] = tokens.dims();
        let start = cache.as_ref().map_or(0, |c| c.len());
        let pads = cache.as_ref().map_or(Vec::new(), |c| c.pads.clone());
        // Longrope: once a sequence outgrows the original context,
        // transformers recomputes its cache with the long factors (Phi-3's
        // `prepare_inputs_for_generation`), and so does keel.
        if let Some(cache) = cache.as_mut()
            && self.rope.crosses(start, s, &pads)
            && let Some(seen) = cache.tokens.take()
        {
            let all = Tensor::cat(vec![seen, tokens], 1);
            cache.layers.iter_mut().for_each(|l| *l = None);
            let hidden = self.forward_hidden_tapped(all, Some(&mut **cache), tap);
            return hidden.narrow(1, start, s);
        }
        let inputs = self.layer_inputs(start, s, &pads, &tokens.device());
        if let Some(cache) = cache.as_mut()
            && self.rope.recomputes()
        {
            cache.tokens = Some(match cache.tokens.take() {
                Some(seen) => Tensor::cat(vec![seen, tokens.clone()], 1),
                None => tokens.clone(),
            });
        }
        let mut x = self.embed(tokens);
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(x, inputs.of(layer), slot);
            tap(i, &x);
        }
        self.norm.forward(x)
    }

    /// The embeddings of `tokens`, in f32 (a half-precision base is
    /// computed with in f32).
    fn embed(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let x = match &self.embed_blocks {
            Some(table) => lookup(table, tokens),
            None => embedding(self.embed_tokens.val(), tokens).cast(DType::F32),
        };
        match self.embed_scale {
            Some(scale) => x.mul_scalar(scale),
            None => x,
        }
    }

    /// The RoPE tables and masks of `len` positions from `start`, for rows
    /// left-padded by `pads`.
    fn layer_inputs(&self, start: usize, len: usize, pads: &[usize], device: &Device) -> Inputs {
        let keys = start + len;
        let (cos, sin) = self.rope.tables(start, len, pads, device);
        let window = self.layers.iter().find_map(|l| l.self_attn.window);
        let sliding = window.map(|w| {
            // The global tables serve sliding layers without a RoPE of their own.
            let (cos, sin) = match &self.rope_local {
                Some(local) => local.tables(start, len, pads, device),
                None => (cos.clone(), sin.clone()),
            };
            LayerInputs {
                cos,
                sin,
                mask: attention_mask(pads, Some(w), len, keys, device),
            }
        });
        Inputs {
            full: LayerInputs {
                cos,
                sin,
                mask: attention_mask(pads, None, len, keys, device),
            },
            sliding,
        }
    }

    /// The device the model is on.
    pub fn device(&self) -> Device {
        self.norm.weight.val().device()
    }

    /// The embeddings as a tied head reads them.
    fn tied_head(&self) -> HeadWeight<'_> {
        match &self.embed_blocks {
            Some(table) => HeadWeight::Blocks(table),
            None => HeadWeight::Dense(self.embed_tokens.val(), Weight::NK),
        }
    }

    /// Projects hidden states onto the vocabulary.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => self.tied_head().logits(hidden),
        }
    }

    /// `log p(targets)` `[batch, seq]` from hidden states of
    /// [`Llama::forward_hidden`]: the head fused with the log-softmax where
    /// it is a plain frozen product (see head.rs), through the logits
    /// otherwise.
    pub fn target_log_probs(&self, hidden: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<2> {
        let w = match &self.lm_head {
            None => self.tied_head(),
            Some(h) if h.bias.is_none() && h.live_adapters().next().is_none() => {
                match &h.quantized {
                    Some(blocks) => HeadWeight::Blocks(blocks),
                    None => HeadWeight::Dense(h.weight.val(), Weight::KN),
                }
            }
            Some(_) => return head::gather_log_probs(self.logits(hidden), targets),
        };
        head::target_log_probs(hidden, w, targets)
    }

    /// Logits `[batch, seq, vocab]` for every position.
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        self.logits(self.forward_hidden(tokens, None))
    }

    /// Forward and backward with activation checkpointing per decoder
    /// block: the forward pass keeps only each layer's input, and backward
    /// recomputes one layer at a time and back-propagates through it alone,
    /// so at most one layer's activations are alive (Burn's own
    /// checkpointing recomputes elementwise ops only). Costs one more
    /// forward pass.
    ///
    /// `head` maps the final hidden states (after the final norm) to the
    /// scalar loss. `before_layer(i)` runs before each forward of layer `i`:
    /// reseed the device there so that dropout draws the same masks when the
    /// layer is recomputed. `grads` receives each segment's gradients, to be
    /// summed per parameter.
    pub fn backward_checkpointed(
        &self,
        tokens: Tensor<2, Int>,
        head: impl FnOnce(Tensor<3>) -> Tensor<1>,
        mut before_layer: impl FnMut(usize),
        mut grads: impl FnMut(Gradients),
    ) {
        let [_, s] = tokens.dims();
        let shared = self.layer_inputs(0, s, &[], &tokens.device());
        let embedded = self.embed(tokens);
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut x = embedded.clone().detach();
        for (i, layer) in self.layers.iter().enumerate() {
            inputs.push(x.clone());
            before_layer(i);
            // Untracked parameters record no graph: Burn frees a recorded
            // one only at the next backward, so detaching is not enough.
            x = layer.clone().no_grad().forward(x, shared.of(layer), None);
        }
        let x = x.require_grad();
        let loss = head(self.norm.forward(x.clone()));
        let mut upstream = Self::segment(loss, &x, &mut grads);
        // Below the lowest layer that trains, and with frozen embeddings,
        // nothing needs a gradient.
        let embeddings_train = self.embed_tokens.is_require_grad();
        let lowest = match embeddings_train {
            true => 0,
            false => self
                .layers
                .iter()
                .position(trains)
                .unwrap_or(self.layers.len()),
        };
        for (i, layer) in self.layers.iter().enumerate().skip(lowest).rev() {
            let x = inputs[i].clone().require_grad();
            before_layer(i);
            let out = layer.forward(x.clone(), shared.of(layer), None);
            upstream = Self::segment(out.mul(upstream).sum(), &x, &mut grads);
        }
        if embeddings_train {
            grads(embedded.mul(upstream).sum().backward());
        }
    }

    /// Back-propagates `objective`, hands its gradients to `grads`, and
    /// returns the gradient reaching `input`.
    fn segment(
        objective: Tensor<1>,
        input: &Tensor<3>,
        grads: &mut impl FnMut(Gradients),
    ) -> Tensor<3> {
        let g = objective.backward();
        let upstream = input
            .grad(&g)
            .expect("the loss depends on every decoder layer's input");
        grads(g);
        upstream
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// A short identifier of this base model, recorded in exported adapters
    /// so that one made for another base is refused. It hashes the shapes
    /// and a sample of the weights no adapter or initialisation changes:
    /// the embeddings and the final norm.
    pub fn fingerprint(&self) -> String {
        const SAMPLE: usize = 1024;
        let (dims, sample) = match &self.embed_blocks {
            Some(table) => {
                let dims = table.dims();
                let mut sample = Vec::new();
                for row in 0..dims[0] {
                    table.weight().row_into(row, &mut sample);
                    if sample.len() >= SAMPLE {
                        break;
                    }
                }
                sample.truncate(SAMPLE);
                (dims, sample)
            }
            None => {
                let embed = self.embed_tokens.val();
                let dims = embed.dims();
                let sample: Vec<f32> = embed
                    .flatten::<1>(0, 1)
                    .narrow(0, 0, SAMPLE.min(dims[0] * dims[1]))
                    .try_into_vec_as()
                    .expect("float");
                (dims, sample)
            }
        };
        let norm: Vec<f32> = self.norm.weight.val().try_into_vec_as().expect("float");
        // FNV-1a, 64-bit: stable across platforms and Rust versions.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let shape = [dims[0], dims[1], self.layers.len()];
        let bytes = shape.iter().flat_map(|d| (*d as u64).to_le_bytes()).chain(
            sample
                .iter()
                .chain(&norm)
                .flat_map(|v| v.to_bits().to_le_bytes()),
        );
        for b in bytes {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{h:016x}")
    }

    /// Every linear projection with its HF module name, in model order.
    pub fn linears(&self) -> Vec<(String, &Linear)> {
        let mut out = Vec::with_capacity(self.layers.len() * 7 + 1);
        for (i, l) in self.layers.iter().enumerate() {
            out.extend(projections(i, &l.self_attn, &l.mlp));
        }
        if let Some(head) = &self.lm_head {
            out.push(("lm_head".to_string(), head));
        }
        out
    }

    /// Makes exactly the named adapters active in every layer: several
    /// adapters stay loaded on one base and are switched without reloading
    /// it; an empty list runs the bare base model.
    pub fn activate_adapters(&mut self, names: &[&str]) {
        for (_, layer) in self.linears_mut() {
            layer.set_active(names);
        }
    }

    /// [`Llama::linears`], mutable: where adapters are attached and merged.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::with_capacity(self.layers.len() * 7 + 1);
        for (i, l) in self.layers.iter_mut().enumerate() {
            out.extend(projections_mut(i, &mut l.self_attn, &mut l.mlp));
        }
        if let Some(head) = &mut self.lm_head {
            out.push(("lm_head".to_string(), head));
        }
        out
    }

    /// Every module a selective-layer adapter can train in full, with its
    /// HF name: the projections, in [`Llama::linears`] order, then the norms.
    pub fn full_modules_mut(&mut self) -> Vec<(String, FullModule<'_>)> {
        let mut out: Vec<(String, FullModule<'_>)> = Vec::new();
        let mut norms: Vec<(String, FullModule<'_>)> = Vec::new();
        for (i, l) in self.layers.iter_mut().enumerate() {
            let DecoderLayer {
                input_layernorm,
                self_attn,
                post_attention_layernorm,
                pre_feedforward_layernorm,
                post_feedforward_layernorm,
                mlp,
            } = l;
            out.extend(projections_mut(i, self_attn, mlp).map(|(n, l)| (n, FullModule::Linear(l))));
            let layer_norms = [
                ("input_layernorm", Some(input_layernorm)),
                ("post_attention_layernorm", Some(post_attention_layernorm)),
                (
                    "pre_feedforward_layernorm",
                    pre_feedforward_layernorm.as_mut(),
                ),
                (
                    "post_feedforward_layernorm",
                    post_feedforward_layernorm.as_mut(),
                ),
            ];
            for (name, norm) in layer_norms {
                if let Some(norm) = norm {
                    norms.push((format!("model.layers.{i}.{name}"), FullModule::Norm(norm)));
                }
            }
        }
        if let Some(head) = &mut self.lm_head {
            out.push(("lm_head".to_string(), FullModule::Linear(head)));
        }
        norms.push(("model.norm".to_string(), FullModule::Norm(&mut self.norm)));
        out.extend(norms);
        out
    }
}

/// The [`LayerInputs`] of full-attention and of sliding-window layers.
struct Inputs {
    full: LayerInputs,
    sliding: Option<LayerInputs>,
}

impl Inputs {
    fn of(&self, layer: &DecoderLayer) -> &LayerInputs {
        match (layer.self_attn.window, &self.sliding) {
            (Some(_), Some(sliding)) => sliding,
            _ => &self.full,
        }
    }
}

/// The rows of `table` (`[vocab, d]` in blocks) that `tokens` `[batch,
/// seq]` name, dequantized: `[batch, seq, d]` f32 on the tokens' device.
fn lookup(table: &QuantBase, tokens: Tensor<2, Int>) -> Tensor<3> {
    let [b, s] = tokens.dims();
    let [vocab, d] = table.dims();
    let device = tokens.device();
    let ids: Vec<i64> = tokens.into_data().try_into_vec_as().expect("token ids");
    let w = table.weight();
    let mut rows = Vec::with_capacity(b * s * d);
    for id in ids {
        let row = usize::try_from(id)
            .ok()
            .filter(|&t| t < vocab)
            .unwrap_or_else(|| panic!("token {id} outside the {vocab}-token vocabulary"));
        w.row_into(row, &mut rows);
    }
    Tensor::from_data(TensorData::new(rows, [b, s, d]), &device)
}

/// Whether any of `layer`'s parameters is trained.
fn trains(layer: &DecoderLayer) -> bool {
    struct Trains(bool);
    impl ModuleVisitor for Trains {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0 |= param.is_require_grad();
        }
    }
    let mut v = Trains(false);
    layer.visit(&mut v);
    v.0
}

/// A decoder layer's possible projections, HF names under `model.layers.N.`,
/// in [`Llama::linears`] order (HF's: attention, then MLP).
const PROJECTIONS: [&str; 9] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.qkv_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.gate_up_proj",
    "mlp.down_proj",
];

/// Decoder layer `i`'s projections with their HF names, in [`PROJECTIONS`]
/// order, those a model lacks left out.
fn projections<'a>(
    i: usize,
    a: &'a Attention,
    m: &'a Mlp,
) -> impl Iterator<Item = (String, &'a Linear)> {
    let layers = [
        a.q_proj.as_ref(),
        a.k_proj.as_ref(),
        a.v_proj.as_ref(),
        a.qkv_proj.as_ref(),
        Some(&a.o_proj),
        m.gate_proj.as_ref(),
        m.up_proj.as_ref(),
        m.gate_up_proj.as_ref(),
        Some(&m.down_proj),
    ];
    named(i, layers)
}

/// [`projections`], mutable.
fn projections_mut<'a>(
    i: usize,
    a: &'a mut Attention,
    m: &'a mut Mlp,
) -> impl Iterator<Item = (String, &'a mut Linear)> {
    let layers = [
        a.q_proj.as_mut(),
        a.k_proj.as_mut(),
        a.v_proj.as_mut(),
        a.qkv_proj.as_mut(),
        Some(&mut a.o_proj),
        m.gate_proj.as_mut(),
        m.up_proj.as_mut(),
        m.gate_up_proj.as_mut(),
        Some(&mut m.down_proj),
    ];
    named(i, layers)
}

/// Layer `i`'s present projections, in [`PROJECTIONS`] order, with their names.
fn named<T>(i: usize, layers: [Option<T>; 9]) -> impl Iterator<Item = (String, T)> {
    PROJECTIONS
        .iter()
        .zip(layers)
        .filter_map(move |(name, lin)| Some((format!("model.layers.{i}.{name}"), lin?)))
}
