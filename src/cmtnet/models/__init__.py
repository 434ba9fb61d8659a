"""The CMT model family: the network (`cmt`), its exact inference folding (`fuse`, through
`timm.utils.reparameterize_model`) and the CPU fast path over a folded model (`fast_path`), the pass for
training on a CPU under bfloat16 autocast (`autocast_training`), the released
checkpoints (`released`), the position bias on any grid (`pos_bias`) and the variants' fixed facts
(`variants`). Importing it registers the models with timm."""
from .cmt import CMT, CMTBlock, CMTStage, LightweightAttention, set_model_fused_attn
from .fast_path import cpu_fast_path
from .pos_bias import resize_rel_pos_bias
from .released import checkpoint_filter_fn
from .variants import NET_STRIDE, VARIANT_ARGS, check_img_size, native_img_size
from . import ablation, scaling  # noqa: F401  (registers cmt_scaled and the ablation steps, cmt_s_abl_* and cmt_ti_abl_*)

__all__ = [
    'CMT', 'CMTBlock', 'CMTStage', 'LightweightAttention', 'NET_STRIDE', 'VARIANT_ARGS', 'check_img_size',
    'checkpoint_filter_fn', 'cpu_fast_path', 'native_img_size', 'resize_rel_pos_bias', 'set_model_fused_attn',
]
