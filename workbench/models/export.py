"""Export a ``HookedTransformer`` as a Hugging Face ``transformers`` directory that computes the same logits.

``export_hf(model, out)`` writes ``config.json`` (``model_type``, ``architectures``), ``model.safetensors``,
``generation_config.json`` and the tokenizer's files, so that ``AutoModelForCausalLM.from_pretrained(out)`` (and
every tool built on it: vLLM, lm-eval, PEFT, the hub) runs the model as TransformerLens does.

Two targets, chosen by the model's structure; the weight maps invert TransformerLens's own conversions
(``transformer_lens/pretrained/weight_conversions/gpt2.py`` and ``llama.py``):

* **GPT2LMHeadModel** for learned positional embeddings and LayerNorm: the organisms, our checkpoints, and
  GPT-2s loaded from Hugging Face directories. GPT-2 keeps its weights as ``Conv1D`` ([in, out]) with Q, K and V
  fused in ``c_attn``; its lm_head is never tied to the embedding here (TransformerLens's ``W_U`` is its own
  tensor). LayerNorm that TransformerLens folded into the next weights (``LNPre``) is written as weight 1, bias 0.
* **LlamaForCausalLM** for rotary embeddings, RMSNorm and a gated MLP, with grouped K/V heads as
  ``num_key_value_heads``, ``rope_theta`` from ``cfg.rotary_base`` (and linear or Llama-3 NTK-by-parts scaling).

Everything TransformerLens computes that these classes compute differently is rewritten exactly:

* the attention scale: both classes divide scores by ``sqrt(head_dim)``; TransformerLens divides by
  ``attn_scale`` (times the layer number with ``scale_attn_by_inverse_layer_idx``), so W_Q and b_Q are scaled by
  ``sqrt(d_head) / attn_scale`` of their layer;
* the unembedding bias: neither lm_head has a bias. GPT-2's LayerNorm centres, so W_U's component along
  ``1 / ln_f.w`` is never read by the stream; that free direction and ln_f's bias together add ``b_U`` to the
  logits exactly (:func:`_final_norm_and_unembed`). A nonzero ``b_U`` of a Llama-like model (RMSNorm neither
  centres nor has a bias) has no place to go and is refused;
* b_V folded into b_O (``fold_value_biases``) is written as it is: a zero value bias and TransformerLens's b_O;
* TransformerLens's gated MLP adds ``b_in`` after the gate product, which passes through ``W_out`` as the
  constant ``b_in @ W_out``: it joins ``b_out`` in ``down_proj``'s bias;
* GPT-J-style rotary (``rotary_adjacent_pairs``) rotates pairs (2i, 2i+1) where Llama rotates (i, i + d/2): the
  head dimensions of W_Q, b_Q, W_K and b_K are permuted alike, which leaves every score unchanged;
* attention-only models get an MLP of width 1 whose weights are all zero (it adds exactly 0).

What neither class can represent (another activation, parallel attention and MLP, soft caps, local attention,
QK-norm, MoE, d_vocab_out != d_vocab, ...) is refused naming the config field. Before the directory is moved
into place the written files are loaded back with ``from_pretrained`` and run beside the model on probe tokens:
an export whose logits differ is refused, never written.

Token ids are the model's: the tokenizer is saved as it is (the organisms' prepends BOS itself; a GPT-2
tokenizer does not, where TransformerLens's ``to_tokens`` prepends one), so compare models on the same ids.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import einops
import torch
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.components import (
    GroupedQueryAttention,
    LayerNorm,
    LayerNormPre,
    RMSNorm,
    RMSNormPre,
)

from workbench.errors import WorkbenchError
from workbench.io import atomic_dir
from workbench.models.checkpoint import FORMAT, DamagedFile, error_summary, read_json_object

HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_new", "gelu_fast": "gelu_fast",
                  "gelu_pytorch_tanh": "gelu_pytorch_tanh", "relu": "relu", "silu": "silu"}
"""TransformerLens ``act_fn`` -> the ``transformers`` activation (``ACT2FN`` key) with the same formula."""
_LN, _RMS = (LayerNorm, LayerNormPre), (RMSNorm, RMSNormPre)
_OLMO = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")
_SINGLE_FILE = "10000GB"
"""``max_shard_size`` for save_pretrained: always one ``model.safetensors``."""


class ExportRefused(WorkbenchError):
    """The model cannot be written as a transformers model that computes the same logits."""


def export_hf(model: HookedTransformer, out: str | Path, *, check: bool = True) -> Path:
    """Write ``model`` to ``out`` as a transformers directory (GPT2LMHeadModel or LlamaForCausalLM, see the
    module docstring) that ``AutoModelForCausalLM.from_pretrained(out)`` loads to the same logits.

    The files are built in a temporary directory and, with ``check`` (the default), loaded back and compared with
    ``model`` on probe tokens (:func:`check_export`) before anything in ``out`` is replaced. A directory holding
    a workbench checkpoint is refused (its config.json would be overwritten): export beside it, e.g. ``CKPT/hf``.
    """
    out = Path(out)
    _refuse_checkpoint_dir(out)
    target = hf_target(model)
    config, state = _gpt2(model) if target == "gpt2" else _llama(model)
    hf = _build_hf(config, state, model.cfg.dtype)
    del state

    def write(tmp: Path) -> None:
        hf.save_pretrained(str(tmp), safe_serialization=True, max_shard_size=_SINGLE_FILE)
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(str(tmp))
        if check:
            check_export(model, tmp)

    return atomic_dir(out, write)


def hf_target(model: HookedTransformer) -> str:
    """``"gpt2"`` or ``"llama"``: the transformers class that can compute what ``model`` computes; otherwise an
    :class:`ExportRefused` naming the first config field (or module) neither can represent."""
    cfg = model.cfg
    common = [
        ("attention_dir", cfg.attention_dir == "causal", "only causal attention"),
        ("parallel_attn_mlp", not cfg.parallel_attn_mlp, "attention and MLP in sequence"),
        ("use_normalization_before_and_after", not cfg.use_normalization_before_and_after, "one norm per sublayer"),
        ("post_embedding_ln", not cfg.post_embedding_ln, "no LayerNorm after the embedding"),
        ("num_experts", cfg.num_experts is None, "a dense MLP"),
        ("use_qk_norm", not cfg.use_qk_norm and cfg.original_architecture not in _OLMO, "no QK-norm"),
        ("attn_scores_soft_cap", cfg.attn_scores_soft_cap <= 0, "no attention-score soft cap"),
        ("output_logits_soft_cap", cfg.output_logits_soft_cap <= 0, "no logit soft cap"),
        ("use_local_attn", not cfg.use_local_attn and not (cfg.attn_types and "local" in cfg.attn_types),
         "global attention in every layer"),
        ("load_in_4bit", not cfg.load_in_4bit, "unquantized weights"),
        ("d_vocab_out", cfg.d_vocab_out == cfg.d_vocab, "an output vocabulary equal to the input one"),
    ]
    for field, ok, needs in common:
        if not ok:
            _refuse(f"{field}={getattr(cfg, field, None)!r}: GPT-2 and Llama in transformers support {needs}")
    if cfg.act_fn not in HF_ACTIVATIONS:
        _refuse(f"act_fn={cfg.act_fn!r} has no transformers equivalent (supported: {', '.join(HF_ACTIVATIONS)})")
    if cfg.positional_embedding_type == "standard":
        target, norms, needs = "gpt2", _LN, "LayerNorm (normalization_type LN or LNPre, final_rms False)"
        if cfg.gated_mlp:
            _refuse("gated_mlp=True with learned positional embeddings: GPT-2's MLP is not gated (a gated MLP "
                    "exports as Llama, which needs rotary embeddings)")
        if cfg.n_heads * cfg.d_head != cfg.d_model:
            _refuse(f"d_head={cfg.d_head}: GPT-2 needs n_heads * d_head == d_model ({cfg.n_heads} * {cfg.d_head} != "
                    f"{cfg.d_model})")
        if cfg.n_key_value_heads not in (None, cfg.n_heads):
            _refuse(f"n_key_value_heads={cfg.n_key_value_heads}: GPT-2 has no grouped K/V heads")
    elif cfg.positional_embedding_type == "rotary":
        target, norms, needs = "llama", _RMS, "RMSNorm (normalization_type RMS or RMSPre)"
        if not cfg.gated_mlp and not cfg.attn_only:
            _refuse("gated_mlp=False with rotary embeddings: Llama's MLP is gated (gate * up -> down)")
        if cfg.rotary_dim != cfg.d_head:
            _refuse(f"rotary_dim={cfg.rotary_dim}: Llama rotates all of each head's {cfg.d_head} dimensions")
        if cfg.use_yarn_rope:
            _refuse("use_yarn_rope=True: YaRN scaling is not exported (default, linear and NTK-by-parts are)")
    else:
        _refuse(f"positional_embedding_type={cfg.positional_embedding_type!r}: exported are 'standard' (GPT-2) and "
                "'rotary' (Llama)")
    modules = [("ln_final", getattr(model, "ln_final", None))]
    for layer, block in enumerate(model.blocks):
        modules += [(f"blocks.{layer}.ln1", getattr(block, "ln1", None))]
        if not cfg.attn_only:
            modules += [(f"blocks.{layer}.ln2", getattr(block, "ln2", None))]
    for name, module in modules:
        if not isinstance(module, norms):
            kind = "no norm" if module is None or isinstance(module, torch.nn.Identity) else type(module).__name__
            _refuse(f"normalization_type={cfg.normalization_type!r} (final_rms={cfg.final_rms}): {name} is {kind}; "
                    f"{'GPT-2' if target == 'gpt2' else 'Llama'} needs {needs}")
    return target


def check_export(model: HookedTransformer, directory: str | Path, tokens: Tensor | None = None,
                 atol: float | None = None) -> float:
    """Load ``directory`` with ``AutoModelForCausalLM.from_pretrained`` and run it and ``model`` on ``tokens``
    (default: two seeded random sequences of up to 32 ids). Returns the largest absolute difference of their
    logits; beyond ``atol`` (default: 1e-3 of the logits' scale in float32, 3e-2 in half precision) it is an
    :class:`ExportRefused`."""
    from transformers import AutoModelForCausalLM

    device = model.cfg.device
    if tokens is None:
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, model.cfg.d_vocab, (2, min(model.cfg.n_ctx, 32)), generator=g)
    tokens = tokens.to(device)
    try:
        hf = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True, use_safetensors=True,
                                                  torch_dtype=model.cfg.dtype).to(device).eval()
    except Exception as e:
        raise ExportRefused(f"the exported files in {directory} do not load in transformers "
                            f"({error_summary(e)})") from None
    with torch.inference_mode():
        ours = model(tokens).float()
        theirs = hf(tokens).logits.float()
    diff = float((ours - theirs).abs().max())
    if atol is None:
        rel = 1e-3 if model.cfg.dtype in (torch.float32, torch.float64) else 3e-2
        atol = rel * max(1.0, float(ours.abs().max()))
    if not diff <= atol:  # also catches NaN
        raise ExportRefused(f"the exported {type(hf).__name__} gives logits up to {diff:.3g} away from the model's "
                            f"(tolerance {atol:.3g}); nothing was written")
    return diff


def _refuse(message: str) -> None:
    raise ExportRefused(f"cannot export as a transformers model: {message}")


def _refuse_checkpoint_dir(out: Path) -> None:
    if (out / "config.json").is_file():
        try:
            ours = read_json_object(out / "config.json").get("format") == FORMAT
        except DamagedFile:
            ours = False
        if ours:
            raise WorkbenchError(f"{out} holds a workbench checkpoint, whose config.json the export would replace; "
                                 f"export into another directory (e.g. {out / 'hf'})")


def _cpu(t: Tensor) -> Tensor:
    return t.detach().to("cpu").contiguous()


def _q_scale(model: HookedTransformer, layer: int) -> float:
    """What W_Q and b_Q of ``layer`` are multiplied by so that transformers' 1/sqrt(head_dim) is the model's
    1/attn_scale (``attn_scale`` already holds use_attn_scale and the inverse-layer-index factor)."""
    scale = float(model.blocks[layer].attn.attn_scale)
    return math.sqrt(model.cfg.d_head) / scale


def _scaled(t: Tensor, factor: float) -> Tensor:
    return t if factor == 1.0 else (t.double() * factor).to(t.dtype)


def _norm(module, d: int, dtype: torch.dtype, bias: bool) -> dict[str, Tensor]:
    """weight (and bias) of a norm; a folded one (no parameters) is the identity affine map."""
    w = module.w if hasattr(module, "w") else torch.ones(d, dtype=dtype)
    out = {"weight": _cpu(w)}
    if bias:
        out["bias"] = _cpu(module.b) if hasattr(module, "b") else torch.zeros(d, dtype=dtype)
    return out


def _prefixed(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def _mlp_width(model: HookedTransformer) -> int:
    return 1 if model.cfg.attn_only else model.blocks[0].mlp.W_in.shape[1]


def _final_norm_and_unembed(model: HookedTransformer) -> tuple[Tensor, Tensor, Tensor]:
    """GPT-2's ``ln_f`` weight and bias and ``lm_head`` ([d_model, d_vocab] here) that give the model's logits,
    ``b_U`` included although GPT-2's lm_head has no bias.

    ln_f's output is ``n * w + b`` with ``n`` of mean zero (LayerNorm centres), so adding ``u v^T`` to W_U with
    ``u = 1 / w`` changes nothing for the ``n * w`` part (``(n * w) . u = sum(n) = 0``) and adds ``(b . u) v`` to
    the constant ``b @ W_U``. The bias is moved along ``u`` until ``b . u = d_model`` and ``v`` is solved so that the
    constant becomes ``b @ W_U + b_U`` exactly. Reloaded into TransformerLens (fold_ln, centring), the ``u v^T``
    part is centred away again and ``b_U`` comes back from the bias.
    """
    d = model.cfg.d_model
    W = model.unembed.W_U.detach().double().cpu()
    b_U = model.unembed.b_U.detach().double().cpu()
    ln = model.ln_final
    w = ln.w.detach().double().cpu() if hasattr(ln, "w") else torch.ones(d, dtype=torch.float64)
    b = ln.b.detach().double().cpu() if hasattr(ln, "b") else torch.zeros(d, dtype=torch.float64)
    if b_U.any():
        if not (w.abs() > 1e-6 * w.abs().max()).all():
            _refuse("unembed.b_U: GPT-2's lm_head has no bias, and ln_final.w has zero entries, so b_U cannot go "
                    "into ln_f's bias either")
        u = 1 / w
        c = (d - b @ u) / (u @ u)
        b = b + c * u  # now b . u == d
        v = (b_U - c * (u @ W)) / d
        W = W + torch.outer(u, v)
    dtype = model.cfg.dtype
    return w.to(dtype), b.to(dtype), W.to(dtype)


def _gpt2(model: HookedTransformer) -> tuple:
    from transformers import GPT2Config

    cfg, dtype = model.cfg, model.cfg.dtype
    d, n_mlp = cfg.d_model, _mlp_width(model)
    tok = model.tokenizer
    config = GPT2Config(
        vocab_size=cfg.d_vocab, n_positions=cfg.n_ctx, n_ctx=cfg.n_ctx, n_embd=d, n_layer=cfg.n_layers,
        n_head=cfg.n_heads, n_inner=n_mlp, activation_function=HF_ACTIVATIONS[cfg.act_fn],
        layer_norm_epsilon=cfg.eps, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, scale_attn_weights=True,
        scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False, tie_word_embeddings=False,
        **_special_ids(tok),
    )
    state = {"transformer.wte.weight": _cpu(model.embed.W_E), "transformer.wpe.weight": _cpu(model.pos_embed.W_pos)}
    for layer, block in enumerate(model.blocks):
        attn, f = block.attn, _q_scale(model, layer)
        flat = lambda w: einops.rearrange(_cpu(w), "i m h -> m (i h)")  # noqa: E731
        p = f"transformer.h.{layer}"
        state |= _prefixed(f"{p}.ln_1", _norm(block.ln1, d, dtype, bias=True))
        state[f"{p}.attn.c_attn.weight"] = torch.cat([flat(_scaled(attn.W_Q, f)), flat(attn.W_K), flat(attn.W_V)], 1)
        state[f"{p}.attn.c_attn.bias"] = torch.cat([_cpu(_scaled(attn.b_Q, f)).flatten(), _cpu(attn.b_K).flatten(),
                                                    _cpu(attn.b_V).flatten()])
        state[f"{p}.attn.c_proj.weight"] = einops.rearrange(_cpu(attn.W_O), "i h m -> (i h) m")
        state[f"{p}.attn.c_proj.bias"] = _cpu(attn.b_O)
        if cfg.attn_only:
            z = lambda *shape: torch.zeros(*shape, dtype=dtype)  # noqa: E731  (an MLP that adds exactly 0)
            state |= _prefixed(f"{p}.ln_2", {"weight": torch.ones(d, dtype=dtype), "bias": z(d)})
            state |= {f"{p}.mlp.c_fc.weight": z(d, 1), f"{p}.mlp.c_fc.bias": z(1),
                      f"{p}.mlp.c_proj.weight": z(1, d), f"{p}.mlp.c_proj.bias": z(d)}
        else:
            state |= _prefixed(f"{p}.ln_2", _norm(block.ln2, d, dtype, bias=True))
            state |= {f"{p}.mlp.c_fc.weight": _cpu(block.mlp.W_in), f"{p}.mlp.c_fc.bias": _cpu(block.mlp.b_in),
                      f"{p}.mlp.c_proj.weight": _cpu(block.mlp.W_out), f"{p}.mlp.c_proj.bias": _cpu(block.mlp.b_out)}
    ln_w, ln_b, W_U = _final_norm_and_unembed(model)
    state |= {"transformer.ln_f.weight": ln_w, "transformer.ln_f.bias": ln_b, "lm_head.weight": W_U.T.contiguous()}
    return config, state


def _rope_scaling(model: HookedTransformer) -> dict | None:
    cfg = model.cfg
    if cfg.use_NTK_by_parts_rope:
        return {"rope_type": "llama3", "factor": float(cfg.NTK_by_parts_factor),
                "low_freq_factor": float(cfg.NTK_by_parts_low_freq_factor),
                "high_freq_factor": float(cfg.NTK_by_parts_high_freq_factor),
                "original_max_position_embeddings": int(cfg.NTK_original_ctx_len)}
    if cfg.rotary_scaling_factor != 1.0:
        return {"rope_type": "linear", "factor": float(cfg.rotary_scaling_factor)}
    return None


def _llama(model: HookedTransformer) -> tuple:
    from transformers import LlamaConfig

    cfg, dtype = model.cfg, model.cfg.dtype
    d, d_head, n_mlp = cfg.d_model, cfg.d_head, _mlp_width(model)
    if model.unembed.b_U.detach().any():
        _refuse("unembed.b_U is nonzero: Llama's lm_head has no bias and RMSNorm none to fold it into")
    first = model.blocks[0].attn
    n_kv = first._W_K.shape[0] if isinstance(first, GroupedQueryAttention) else cfg.n_heads
    # GPT-J-style rotary pairs (2i, 2i+1) become Llama's (i, i + d/2) by one permutation of Q's and K's dims.
    perm = torch.cat([torch.arange(0, d_head, 2), torch.arange(1, d_head, 2)]) if cfg.rotary_adjacent_pairs else None
    state: dict[str, Tensor] = {"model.embed_tokens.weight": _cpu(model.embed.W_E)}
    attention_bias = mlp_bias = False
    for layer, block in enumerate(model.blocks):
        attn, f, p = block.attn, _q_scale(model, layer), f"model.layers.{layer}"
        gqa = isinstance(attn, GroupedQueryAttention)
        W_K, b_K = (attn._W_K, attn._b_K) if gqa else (attn.W_K, attn.b_K)
        W_V, b_V = (attn._W_V, attn._b_V) if gqa else (attn.W_V, attn.b_V)
        W_Q, b_Q = _cpu(_scaled(attn.W_Q, f)), _cpu(_scaled(attn.b_Q, f))
        W_K, b_K = _cpu(W_K), _cpu(b_K)
        if perm is not None:
            W_Q, b_Q, W_K, b_K = W_Q[..., perm], b_Q[..., perm], W_K[..., perm], b_K[..., perm]
        rows = lambda w: einops.rearrange(w, "n m h -> (n h) m")  # noqa: E731
        state |= _prefixed(f"{p}.input_layernorm", _norm(block.ln1, d, dtype, bias=False))
        state |= {f"{p}.self_attn.q_proj.weight": rows(W_Q), f"{p}.self_attn.k_proj.weight": rows(W_K),
                  f"{p}.self_attn.v_proj.weight": rows(_cpu(W_V)),
                  f"{p}.self_attn.o_proj.weight": einops.rearrange(_cpu(attn.W_O), "n h m -> m (n h)")}
        biases = {"q_proj": b_Q.flatten(), "k_proj": b_K.flatten(), "v_proj": _cpu(b_V).flatten(),
                  "o_proj": _cpu(attn.b_O)}
        attention_bias |= any(bool(b.any()) for b in biases.values())
        state |= {f"{p}.self_attn.{k}.bias": v for k, v in biases.items()}
        if cfg.attn_only:
            state |= _prefixed(f"{p}.post_attention_layernorm", {"weight": torch.ones(d, dtype=dtype)})
            z = lambda *shape: torch.zeros(*shape, dtype=dtype)  # noqa: E731  (an MLP that adds exactly 0)
            mlp = {"gate_proj.weight": z(1, d), "up_proj.weight": z(1, d), "down_proj.weight": z(d, 1),
                   "gate_proj.bias": z(1), "up_proj.bias": z(1), "down_proj.bias": z(d)}
        else:
            m = block.mlp
            state |= _prefixed(f"{p}.post_attention_layernorm", _norm(block.ln2, d, dtype, bias=False))
            # TransformerLens adds b_in after the gate product: through W_out it is the constant b_in @ W_out.
            down_bias = (_cpu(m.b_out).double() + _cpu(m.b_in).double() @ _cpu(m.W_out).double()).to(dtype)
            mlp = {"gate_proj.weight": _cpu(m.W_gate.T), "up_proj.weight": _cpu(m.W_in.T),
                   "down_proj.weight": _cpu(m.W_out.T), "gate_proj.bias": torch.zeros(n_mlp, dtype=dtype),
                   "up_proj.bias": torch.zeros(n_mlp, dtype=dtype), "down_proj.bias": down_bias}
            mlp_bias |= bool(down_bias.any())
        state |= _prefixed(f"{p}.mlp", mlp)
    if not attention_bias:
        state = {k: v for k, v in state.items() if not (".self_attn." in k and k.endswith(".bias"))}
    if not mlp_bias:
        state = {k: v for k, v in state.items() if not (".mlp." in k and k.endswith(".bias"))}
    state |= _prefixed("model.norm", _norm(model.ln_final, d, dtype, bias=False))
    state["lm_head.weight"] = _cpu(model.unembed.W_U.T)
    config = LlamaConfig(
        vocab_size=cfg.d_vocab, hidden_size=d, intermediate_size=n_mlp, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=n_kv, head_dim=d_head,
        hidden_act=HF_ACTIVATIONS[cfg.act_fn],
        max_position_embeddings=cfg.n_ctx, rms_norm_eps=cfg.eps, rope_theta=float(cfg.rotary_base),
        rope_scaling=_rope_scaling(model), attention_bias=attention_bias, mlp_bias=mlp_bias, attention_dropout=0.0,
        tie_word_embeddings=False, **_special_ids(model.tokenizer),
    )
    return config, state


def _special_ids(tokenizer) -> dict:
    if tokenizer is None:
        return {}
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}


def _no_init():
    try:
        from transformers.modeling_utils import no_init_weights
    except ImportError:  # an older or newer transformers: random initialisation, then overwritten anyway
        return contextlib.nullcontext()
    return no_init_weights()


def _build_hf(config, state: dict[str, Tensor], dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    with _no_init():
        hf = AutoModelForCausalLM.from_config(config, torch_dtype=dtype)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if missing or unexpected:  # a bug of this module, not of the model: say what did not line up
        raise ExportRefused(f"the {type(hf).__name__} built for export does not match the converted weights "
                            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    return hf.eval()


def export_beside(model: HookedTransformer, checkpoint_dir: str | Path) -> Path | None:
    """After a trainer saves ``checkpoint_dir``, also write ``checkpoint_dir/hf`` for transformers, vLLM or TRL.

    A model no transformers class can hold exactly is logged and skipped (the checkpoint is what the workbench
    needs); the export never stops a finished training run.
    """
    import logging

    try:
        return export_hf(model, Path(checkpoint_dir) / "hf")
    except ExportRefused as e:
        logging.getLogger(__name__).warning("no transformers export beside %s: %s", checkpoint_dir, e)
        return None
