"""cmtnet: CMT (Convolutional Neural Networks Meet Vision Transformers) for timm.

Importing the package registers `cmt_ti`, `cmt_xs`, `cmt_s` and `cmt_b` with `timm.create_model`.
"""
from .models import CMT, VARIANT_ARGS, checkpoint_filter_fn, resize_rel_pos_bias

__version__ = '0.1.0'
__all__ = ['CMT', 'VARIANT_ARGS', 'checkpoint_filter_fn', 'resize_rel_pos_bias', '__version__']
