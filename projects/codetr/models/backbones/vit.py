"""EVA-02-style plain ViT of Co-DINO ViT-L: 2-D RoPE, window + global attention, SwiGLU.

Specified in ``shared/DESIGN_VITL.md`` section 2 (official ``mmdet/models/backbones/vit.py``).
State-dict names are the official ones (``blocks.{i}.attn.q_proj.weight``, ...). Differences
that do not change the outputs of the released weights:

- the rotary tables are computed, not stored: they are deterministic, and the released LVIS
  checkpoints lack some of the official buffers (official issues #152, #207); the converter
  drops ``*rope*`` keys;
- attention can run through ``torch.nn.functional.scaled_dot_product_attention`` (the
  default), which does not materialise the (tokens x tokens) logits of the global blocks;
- activation checkpointing is ``torch.utils.checkpoint`` per block (no fairscale); key names
  are unchanged.
"""
import math
import warnings
from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn.bricks.drop import DropPath
from mmdet.registry import MODELS
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_
from torch import Tensor, nn


def rope_angles(length: int, dim: int = 32, pt_seq_len: int = 16,
                theta: float = 10000.) -> Tensor:
    """Rotary angles of one axis: (length, dim), each frequency on two adjacent channels.

    Index ``i`` sits at ``pt_seq_len * i / length`` (every axis is rescaled to the
    pretraining grid's range); frequencies ``theta ** (-2j / dim)``, ``j < dim / 2``.
    """
    freqs = 1. / (theta ** (torch.arange(0, dim, 2)[:dim // 2].float() / dim))  # (dim / 2, )
    t = torch.arange(length) / length * pt_seq_len
    return (t[:, None] * freqs[None]).repeat_interleave(2, dim=-1)  # (length, dim)


def rope_table(height: int, width: int, half_dim: int = 32,
               pt_seq_len: int = 16) -> Tuple[Tensor, Tensor]:
    """cos / sin tables (height * width, 2 * half_dim) of a token grid, rows row-major.

    The first ``half_dim`` channels rotate with the row index, the last with the column.
    """
    rows = rope_angles(height, half_dim, pt_seq_len)[:, None].expand(height, width, half_dim)
    cols = rope_angles(width, half_dim, pt_seq_len)[None].expand(height, width, half_dim)
    angles = torch.cat([rows, cols], dim=-1).reshape(height * width, 2 * half_dim)
    return angles.cos(), angles.sin()


def rotate_half(x: Tensor) -> Tensor:
    """Rotate channel pairs: (x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """(..., N, D) rotated by the (N, D) tables."""
    return x * cos + rotate_half(x) * sin


def window_partition(x: Tensor, window: int) -> Tuple[Tensor, Tuple[int, int]]:
    """(B, H, W, C) -> (B * nh * nw, window, window, C), zero-padded bottom/right."""
    b, h, w, c = x.shape
    pad_h, pad_w = (window - h % window) % window, (window - w % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def window_unpartition(windows: Tensor, window: int, padded_hw: Tuple[int, int],
                       hw: Tuple[int, int]) -> Tensor:
    """Inverse of :func:`window_partition`, cropped to ``hw``: -> (B, H, W, C)."""
    hp, wp = padded_hw
    h, w = hw
    b = windows.shape[0] // (hp * wp // window // window)
    x = windows.view(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w].contiguous() if (hp > h or wp > w) else x


def resize_pos_embed(pos_embed: Tensor, hw: Tuple[int, int], has_cls_token: bool = True
                     ) -> Tensor:
    """(1, [1 +] S * S, C) table -> (1, H, W, C), bicubic (``align_corners=False``) when the
    token map is not S x S (each axis stretched on its own)."""
    if has_cls_token:
        pos_embed = pos_embed[:, 1:]
    size = int(math.sqrt(pos_embed.shape[1]))
    if size * size != pos_embed.shape[1]:
        raise ValueError(f'ViT: pos_embed has {pos_embed.shape[1]} grid positions, not a square')
    grid = pos_embed.reshape(1, size, size, -1)
    if (size, size) == tuple(hw):
        return grid
    grid = F.interpolate(grid.permute(0, 3, 1, 2), size=hw, mode='bicubic', align_corners=False)
    return grid.permute(0, 2, 3, 1)


class PatchEmbed(nn.Module):
    """Non-overlapping patches: (B, 3, H, W) -> (B, H / p, W / p, C)."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class SwiGLU(nn.Module):
    """``w3(LN(SiLU(w1 x) * w2 x))`` (SwiGLU with the sub-LayerNorm of EVA-02)."""

    def __init__(self, dim: int, hidden: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.ffn_ln = nn.LayerNorm(hidden, eps=eps)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.w3(self.ffn_ln(F.silu(self.w1(x)) * self.w2(x)))


class RoPEAttention(nn.Module):
    """Multi-head self-attention with q/v biases (no k bias) and 2-D RoPE on q and k.

    Args:
        dim (int): Channels.
        num_heads (int): Heads.
        qkv_bias (bool): Learn ``q_bias`` and ``v_bias``.
        use_sdpa (bool): ``scaled_dot_product_attention`` instead of explicit logits.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True,
                 use_sdpa: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.proj = nn.Linear(dim, dim)
        self.use_sdpa = use_sdpa

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        q = F.linear(x, self.q_proj.weight, self.q_bias)
        k = F.linear(x, self.k_proj.weight)
        v = F.linear(x, self.v_proj.weight, self.v_bias)
        # (B, N, C) -> (B, heads, N, head_dim)
        q, k, v = (t.reshape(b, h * w, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        q = apply_rope(q, cos, sin).type_as(v)
        k = apply_rope(k, cos, sin).type_as(v)
        if self.use_sdpa:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            x = attn @ v
        x = x.transpose(1, 2).reshape(b, h * w, c)  # (B, heads, N, d) -> (B, N, C)
        return self.proj(x).view(b, h, w, c)


class ViTBlock(nn.Module):
    """Pre-norm block: window (``window_size > 0``) or global attention, then SwiGLU."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, qkv_bias: bool = True,
                 drop_path: float = 0.0, window_size: int = 0, use_sdpa: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RoPEAttention(dim, num_heads, qkv_bias, use_sdpa)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = SwiGLU(dim, mlp_hidden)
        self.window_size = window_size

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C); ``cos``/``sin``: the window's or the map's table."""
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            hw = x.shape[1:3]
            x, padded_hw = window_partition(x, self.window_size)  # padding after norm1: zeros
            x = window_unpartition(self.attn(x, cos, sin), self.window_size, padded_hw, hw)
        else:
            x = self.attn(x, cos, sin)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


@MODELS.register_module()
class ViT(BaseModule):
    """EVA-02-style ViT with ViTDet's window/global layout (Co-DINO ViT-L's backbone).

    Output: one stride-``patch_size`` map (B, embed_dim, H / 16, W / 16), after ``out_norm``
    (LayerNorm eps 1e-5; the blocks use 1e-6, as officially).

    Args:
        img_size (int): Official argument, only used with ``use_lsj`` there; accepted.
        patch_size (int): Patch size. Defaults to 16.
        in_chans (int): Input channels.
        embed_dim (int): Channels (1024 for ViT-L).
        depth (int): Blocks (24).
        num_heads (int): Heads (16); the head dim must be 64 (the official RoPE).
        mlp_ratio (float): SwiGLU hidden = ``int(embed_dim * mlp_ratio)``.
        qkv_bias (bool): q/v biases.
        drop_path_rate (float): Stochastic depth, linear over the blocks.
        window_size (int): Window of the window blocks.
        window_block_indexes (Sequence[int]): Window blocks; the others are global. Indexes
            >= ``depth`` are ignored with a warning (the official COCO config lists 24-26).
        pt_hw_seq_len (int): RoPE pretraining grid length (16).
        use_abs_pos (bool): Add the (resized) absolute position table.
        pretrain_img_size (int): Size of the position table's grid x ``patch_size``.
        pretrain_use_cls_token (bool): The table has a cls slot (dropped).
        use_act_checkpoint (bool): Recompute each block in the backward pass (training).
        use_sdpa (bool): Fused attention (no materialised logits). False computes the
            logits explicitly, as the official ``xattn=False``.
        use_lsj (bool): Official flag of a fixed global RoPE table; the table is computed
            for every map size here, identical at the LSJ size. Accepted, no effect.
        init_cfg (dict, optional): ``Pretrained`` checkpoint.
        rope, intp_freq, use_rel_pos, residual_block_indexes, out_feature, xattn: official
            arguments without effect (RoPE is always on with interpolated frequencies; the
            official blocks ignore the residual/rel-pos options; ``use_sdpa`` replaces
            ``xattn``). Accepted so that official configs build.
    """

    def __init__(self,
                 img_size: int = 1024,
                 patch_size: int = 16,
                 in_chans: int = 3,
                 embed_dim: int = 768,
                 depth: int = 12,
                 num_heads: int = 12,
                 mlp_ratio: float = 4 * 2 / 3,
                 qkv_bias: bool = True,
                 drop_path_rate: float = 0.0,
                 window_size: int = 0,
                 window_block_indexes: Sequence[int] = (),
                 pt_hw_seq_len: int = 16,
                 use_abs_pos: bool = True,
                 pretrain_img_size: int = 224,
                 pretrain_use_cls_token: bool = True,
                 use_act_checkpoint: bool = False,
                 use_sdpa: bool = True,
                 use_lsj: bool = False,
                 init_cfg: Optional[dict] = None,
                 rope: bool = True,
                 intp_freq: bool = True,
                 use_rel_pos: bool = False,
                 residual_block_indexes: Sequence[int] = (),
                 out_feature: str = 'last_feat',
                 xattn: bool = False) -> None:
        super().__init__(init_cfg=init_cfg)
        if embed_dim // num_heads != 64:
            raise ValueError(f'ViT: head dim {embed_dim}/{num_heads} = {embed_dim // num_heads}; '
                             'the official rotary embedding is defined for head dim 64')
        dropped = [i for i in window_block_indexes if i >= depth]
        if dropped:
            warnings.warn(f'ViT: window_block_indexes {dropped} >= depth {depth} are ignored',
                          stacklevel=2)
        self.window_block_indexes = sorted(i for i in set(window_block_indexes) if i < depth)
        self.patch_size = patch_size
        self.pt_hw_seq_len = pt_hw_seq_len
        self.pretrain_use_cls_token = pretrain_use_cls_token
        self.use_act_checkpoint = use_act_checkpoint
        self.window_size = window_size
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)
        self.pos_embed = None
        if use_abs_pos:
            grid = (pretrain_img_size // patch_size) ** 2
            self.pos_embed = nn.Parameter(
                torch.zeros(1, grid + int(pretrain_use_cls_token), embed_dim))
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]
        hidden = int(embed_dim * mlp_ratio)
        self.blocks = nn.ModuleList([
            ViTBlock(embed_dim, num_heads, hidden, qkv_bias, dpr[i],
                     window_size if i in self.window_block_indexes else 0, use_sdpa)
            for i in range(depth)])
        self.out_norm = nn.LayerNorm(embed_dim)
        self._rope_cache = OrderedDict()

    def init_weights(self) -> None:
        """Truncated-normal (0.02) linears and position table, LayerNorms 1/0; or a
        ``Pretrained`` checkpoint through mmengine."""
        if self.init_cfg is not None:
            return super().init_weights()
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def rope(self, height: int, width: int, device: torch.device) -> Tuple[Tensor, Tensor]:
        """cos/sin tables of a ``height`` x ``width`` token grid, the 8 latest sizes cached
        (multi-scale training sees many sizes; a 96 x 96 grid's pair is 4.7 MB)."""
        key = (height, width, str(device))
        if key in self._rope_cache:
            self._rope_cache.move_to_end(key)
        else:
            cos, sin = rope_table(height, width, 32, self.pt_hw_seq_len)
            self._rope_cache[key] = (cos.to(device), sin.to(device))
            if len(self._rope_cache) > 8:
                self._rope_cache.popitem(last=False)
        return self._rope_cache[key]

    def forward(self, x: Tensor) -> List[Tensor]:
        """(B, 3, H, W) -> [(B, embed_dim, H / 16, W / 16)]."""
        x = self.patch_embed(x)  # (B, h, w, C)
        h, w = x.shape[1:3]
        if self.pos_embed is not None:
            x = x + resize_pos_embed(self.pos_embed, (h, w), self.pretrain_use_cls_token)
        window_rope = self.rope(self.window_size, self.window_size, x.device) \
            if self.window_block_indexes else None
        global_rope = self.rope(h, w, x.device)
        for blk in self.blocks:
            cos, sin = window_rope if blk.window_size > 0 else global_rope
            if self.use_act_checkpoint and self.training and x.requires_grad:
                x = cp.checkpoint(blk, x, cos, sin, use_reentrant=False)
            else:
                x = blk(x, cos, sin)
        return [self.out_norm(x).permute(0, 3, 1, 2).contiguous()]
