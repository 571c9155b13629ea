"""Official Co-DETR (mmdet 2.x) checkpoints -> this project's mmdet 3.x layout.

The official Co-Deformable-DETR state dict (Sense-X/Co-DETR, mmdet 2.25) and ours hold the
same tensors under different names: mmdet 3 moved the transformer out of
``query_head.transformer`` into the head and renamed the layers' sub-modules
(``attentions.0`` -> ``self_attn``, ``ffns.0`` -> ``ffn``, ``enc_output`` ->
``memory_trans_fc``, ...). The conversion is therefore a pure renaming, written down as an
explicit table of ``(official template, our template)`` pairs, :data:`KEY_RULES`. Templates
use ``{name}`` placeholders whose allowed values are listed in :data:`PLACEHOLDERS`
(indices, parameter names, the four deformable-attention projections); nothing else is
pattern-matched.

Every official key must match exactly one rule: it is either renamed or dropped with the
rule's reason. Auxiliary-head rules are flagged ``aux``; ``inference_only=True`` drops them
(RPN, RoI and ATSS heads plus the auxiliary-query projections), which leaves the weights of
the Deformable-DETR++ baseline (``configs/deformable_detr_pp_r50_1x_coco.py``). Unknown keys,
shape or dtype mismatches against the target model and missing keys are all collected and
raised together as a :class:`ConversionError`.
"""
import functools
import hashlib
import pickle
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

#: Allowed values of each template placeholder (regular-expression alternatives).
PLACEHOLDERS: Dict[str, str] = {
    'i': r'\d+',  # layer / block index
    'j': r'\d+',  # sub-module index
    'k': r'\d+',  # auxiliary-head index
    's': r'\d+',  # ResNet stage number
    'w': r'weight|bias',
    'name': r'[A-Za-z0-9_]+',  # a flattened parameter path (EMA buffers)
    'vit_attn': r'q_bias|v_bias|q_proj\.weight|k_proj\.weight|v_proj\.weight|proj\.weight|'
                r'proj\.bias',
    'vit_mlp': r'(?:w1|w2|w3|ffn_ln)\.(?:weight|bias)',
    'rope': r'(?:blocks\.\d+\.attn\.)?rope(?:_win|_glb)?\.freqs_(?:cos|sin)',
    'bn': r'weight|bias|running_mean|running_var|num_batches_tracked',
    'msda': r'sampling_offsets|attention_weights|value_proj|output_proj',
    'swin_attn': (r'qkv\.(?:weight|bias)|proj\.(?:weight|bias)|relative_position_bias_table|'
                  r'relative_position_index'),
}

_RPN = 'auxiliary Faster R-CNN RPN head (training only; not used by eval_module="detr")'
_ROI = 'auxiliary Faster R-CNN RoI head (training only; not used by eval_module="detr")'
_ROI_MASK = ('FCN mask head of the auxiliary RoI head (its masks come with '
             'eval_module="two-stage")')
_ATSS = 'auxiliary ATSS head (training only; not used by eval_module="detr")'
_AUXQ = 'auxiliary-query projection of the aux heads\' positives (training only)'


@dataclass(frozen=True)
class KeyRule:
    """One row of the key table.

    Attributes:
        official (str): Template of the official (mmdet 2.x) key.
        ours (str, optional): Template of our key; ``None`` drops the key.
        reason (str): Why the key is dropped (or dropped in inference-only mode).
        aux (bool): Auxiliary-head weight, dropped by ``inference_only``.
        convert (callable, optional): ``convert(official_key, tensor)`` -> the
            tensor in our layout, for weights whose layout (not only name)
            differs; None copies the tensor.
    """
    official: str
    ours: Optional[str]
    reason: str = ''
    aux: bool = False
    convert: Optional[Callable[[str, Tensor], Tensor]] = None


def _same(template: str, reason: str = '', aux: bool = False) -> KeyRule:
    """A rule whose key is the same in both layouts."""
    return KeyRule(template, template, reason, aux)


_QH = 'query_head.transformer'
_ENC, _DEC = f'{_QH}.encoder.layers.{{i}}', f'{_QH}.decoder.layers.{{i}}'
_OUR_ENC, _OUR_DEC = 'query_head.encoder.layers.{i}', 'query_head.decoder.layers.{i}'

#: ResNet and ChannelMapper: mmdet modules whose layout did not change.
RESNET_NECK_RULES: Tuple[KeyRule, ...] = (
    _same('backbone.conv1.weight'),
    _same('backbone.bn1.{bn}'),
    _same('backbone.layer{s}.{i}.conv{j}.weight'),
    _same('backbone.layer{s}.{i}.bn{j}.{bn}'),
    _same('backbone.layer{s}.{i}.downsample.0.weight'),
    _same('backbone.layer{s}.{i}.downsample.1.{bn}'),
    _same('neck.convs.{i}.conv.{w}'),
    _same('neck.convs.{i}.gn.{w}'),
    _same('neck.extra_convs.{i}.conv.{w}'),
    _same('neck.extra_convs.{i}.gn.{w}'),
)
#: The deformable encoder/decoder layers and the two-stage proposal projection: the
#: transformer's modules now live in the head itself.
TRANSFORMER_RULES: Tuple[KeyRule, ...] = (
    KeyRule(f'{_QH}.level_embeds', 'query_head.level_embed'),
    KeyRule(f'{_ENC}.attentions.0.{{msda}}.{{w}}', f'{_OUR_ENC}.self_attn.{{msda}}.{{w}}'),
    KeyRule(f'{_ENC}.ffns.0.layers.0.0.{{w}}', f'{_OUR_ENC}.ffn.layers.0.0.{{w}}'),
    KeyRule(f'{_ENC}.ffns.0.layers.1.{{w}}', f'{_OUR_ENC}.ffn.layers.1.{{w}}'),
    KeyRule(f'{_ENC}.norms.{{j}}.{{w}}', f'{_OUR_ENC}.norms.{{j}}.{{w}}'),
    KeyRule(f'{_DEC}.attentions.0.attn.in_proj_{{w}}',
            f'{_OUR_DEC}.self_attn.attn.in_proj_{{w}}'),
    KeyRule(f'{_DEC}.attentions.0.attn.out_proj.{{w}}',
            f'{_OUR_DEC}.self_attn.attn.out_proj.{{w}}'),
    KeyRule(f'{_DEC}.attentions.1.{{msda}}.{{w}}', f'{_OUR_DEC}.cross_attn.{{msda}}.{{w}}'),
    KeyRule(f'{_DEC}.ffns.0.layers.0.0.{{w}}', f'{_OUR_DEC}.ffn.layers.0.0.{{w}}'),
    KeyRule(f'{_DEC}.ffns.0.layers.1.{{w}}', f'{_OUR_DEC}.ffn.layers.1.{{w}}'),
    KeyRule(f'{_DEC}.norms.{{j}}.{{w}}', f'{_OUR_DEC}.norms.{{j}}.{{w}}'),
    KeyRule(f'{_QH}.enc_output.{{w}}', 'query_head.memory_trans_fc.{w}'),
    KeyRule(f'{_QH}.enc_output_norm.{{w}}', 'query_head.memory_trans_norm.{w}'),
    KeyRule(f'{_QH}.aux_pos_trans.{{k}}.{{w}}', 'query_head.aux_pos_trans_fc.{k}.{w}', _AUXQ,
            True),
    KeyRule(f'{_QH}.aux_pos_trans_norm.{{k}}.{{w}}', 'query_head.aux_pos_trans_norm.{k}.{w}',
            _AUXQ, True),
    KeyRule(f'{_QH}.pos_feats_trans.{{k}}.{{w}}', 'query_head.pos_feats_trans.{k}.{w}', _AUXQ,
            True),
    KeyRule(f'{_QH}.pos_feats_norm.{{k}}.{{w}}', 'query_head.pos_feats_norm.{k}.{w}', _AUXQ,
            True),
)
#: Prediction branches and the extra stride-2 level (it only feeds the aux heads, but the
#: aux-free baselines keep the module so that checkpoints load both ways).
BRANCH_RULES: Tuple[KeyRule, ...] = (
    _same('query_head.downsample.{j}.{w}'),
    _same('query_head.cls_branches.{i}.{w}'),
    _same('query_head.reg_branches.{i}.{j}.{w}'),
)
#: Auxiliary heads: unchanged mmdet RPNHead / Shared2FCBBoxHead / ATSS layouts.
AUX_HEAD_RULES: Tuple[KeyRule, ...] = (
    _same('rpn_head.rpn_conv.{w}', _RPN, True),
    _same('rpn_head.rpn_cls.{w}', _RPN, True),
    _same('rpn_head.rpn_reg.{w}', _RPN, True),
    _same('roi_head.{k}.bbox_head.fc_cls.{w}', _ROI, True),
    _same('roi_head.{k}.bbox_head.fc_reg.{w}', _ROI, True),
    _same('roi_head.{k}.bbox_head.shared_fcs.{i}.{w}', _ROI, True),
    # Co-Deformable-DETR's mask variant: Mask R-CNN's FCNMaskHead in the RoI head
    _same('roi_head.{k}.mask_head.convs.{i}.conv.{w}', _ROI_MASK, True),
    _same('roi_head.{k}.mask_head.upsample.{w}', _ROI_MASK, True),
    _same('roi_head.{k}.mask_head.conv_logits.{w}', _ROI_MASK, True),
    _same('bbox_head.{k}.cls_convs.{i}.conv.{w}', _ATSS, True),
    _same('bbox_head.{k}.cls_convs.{i}.gn.{w}', _ATSS, True),
    _same('bbox_head.{k}.reg_convs.{i}.conv.{w}', _ATSS, True),
    _same('bbox_head.{k}.reg_convs.{i}.gn.{w}', _ATSS, True),
    _same('bbox_head.{k}.atss_cls.{w}', _ATSS, True),
    _same('bbox_head.{k}.atss_reg.{w}', _ATSS, True),
    _same('bbox_head.{k}.atss_centerness.{w}', _ATSS, True),
    _same('bbox_head.{k}.scales.{i}.scale', _ATSS, True),
)

#: Co-Deformable-DETR: official template -> our template.
KEY_RULES: Tuple[KeyRule, ...] = (
    RESNET_NECK_RULES + TRANSFORMER_RULES + (
        KeyRule(f'{_QH}.pos_trans.{{w}}', 'query_head.pos_trans_fc.{w}'),
        KeyRule(f'{_QH}.pos_trans_norm.{{w}}', 'query_head.pos_trans_norm.{w}'),
        KeyRule(f'{_QH}.head_pos_embed.weight', 'query_head.head_pos_embed.weight', _AUXQ,
                True),
        _same('query_head.query_embedding.weight'),
    ) + BRANCH_RULES + AUX_HEAD_RULES)


class TensorSpec(NamedTuple):
    """Expected shape and dtype of one target tensor."""
    shape: Tuple[int, ...]
    dtype: torch.dtype


class ConversionError(ValueError):
    """Conversion failed; ``problems`` lists every offending key with the reason."""

    def __init__(self, problems: Sequence[str], header: str = 'checkpoint conversion failed'):
        self.problems = list(problems)
        lines = '\n  '.join(self.problems)
        super().__init__(f'{header} ({len(self.problems)} problem(s)):\n  {lines}')


class UntrustedCheckpointError(RuntimeError):
    """The checkpoint holds pickled objects that ``weights_only=True`` refuses."""


@dataclass
class ConversionResult:
    """Converted weights and the record of what happened to every official key.

    Attributes:
        state_dict (OrderedDict[str, Tensor]): Weights in our layout.
        mapped (list[tuple[str, str]]): ``(official key, our key)`` pairs.
        dropped (list[tuple[str, str]]): ``(official key, reason)`` pairs.
        notes (list[str]): Non-fatal adjustments (filled / cast tensors).
    """
    state_dict: 'OrderedDict[str, Tensor]' = field(default_factory=OrderedDict)
    mapped: List[Tuple[str, str]] = field(default_factory=list)
    dropped: List[Tuple[str, str]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: counts of mapped, dropped and adjusted keys."""
        return (f'{len(self.mapped)} keys mapped, {len(self.dropped)} dropped, '
                f'{len(self.notes)} adjusted; {len(self.state_dict)} keys written')


@functools.cache
def _compile(template: str) -> 're.Pattern[str]':
    """Template -> anchored regex with one named group per placeholder."""
    parts, pos = [], 0
    for m in re.finditer(r'\{(\w+)\}', template):
        name = m.group(1)
        if name not in PLACEHOLDERS:
            raise KeyError(f'unknown placeholder {{{name}}} in key template {template!r}; '
                           f'known: {sorted(PLACEHOLDERS)}')
        parts.append(re.escape(template[pos:m.start()]))
        parts.append(f'(?P<{name}>{PLACEHOLDERS[name]})')
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    return re.compile(''.join(parts))


def _match(key: str, templates: Sequence[Tuple[str, KeyRule]]) -> List[Tuple[KeyRule, Dict]]:
    """All rules whose template (first item) fully matches ``key``, with the placeholders."""
    hits = []
    for template, rule in templates:
        m = _compile(template).fullmatch(key)
        if m is not None:
            hits.append((rule, m.groupdict()))
    return hits


def match_key(key: str, rules: Sequence[KeyRule] = KEY_RULES
              ) -> Optional[Tuple[KeyRule, Dict[str, str]]]:
    """Find the rule of an official key.

    Args:
        key (str): Official state-dict key.
        rules (Sequence[KeyRule]): The table. Defaults to :data:`KEY_RULES`.

    Returns:
        tuple or None: ``(rule, placeholder values)``; None when no rule matches.

    Raises:
        ValueError: When more than one rule matches (the table is ambiguous).
    """
    hits = _match(key, [(r.official, r) for r in rules])
    if len(hits) > 1:
        raise ValueError(f'official key {key!r} matches {len(hits)} rules: '
                         f'{[r.official for r, _ in hits]}')
    return hits[0] if hits else None


def convert_key(key: str, inference_only: bool = False,
                rules: Sequence[KeyRule] = KEY_RULES) -> Tuple[Optional[str], str]:
    """Our key for an official key, or ``(None, reason)`` when it is dropped.

    Raises:
        KeyError: When no rule matches ``key``.
    """
    found = match_key(key, rules)
    if found is None:
        raise KeyError(f'unknown official key {key!r}: no rule in KEY_RULES matches it')
    rule, values = found
    if rule.ours is None:
        return None, rule.reason
    if inference_only and rule.aux:
        return None, f'--inference-only: {rule.reason}'
    return rule.ours.format(**values), ''


def invert_state_dict(state_dict: Mapping[str, Tensor],
                      rules: Sequence[KeyRule] = KEY_RULES) -> 'OrderedDict[str, Tensor]':
    """Our layout -> official layout (for tests and reference implementations).

    Raises:
        ConversionError: Listing our keys that no rule (or several) produce.
    """
    out, problems = OrderedDict(), []
    templates = [(r.ours, r) for r in rules if r.ours is not None]
    for key, value in state_dict.items():
        hits = _match(key, templates)
        if len(hits) != 1:
            problems.append(f'{key}: produced by {len(hits)} rules, expected exactly one')
            continue
        rule, values = hits[0]
        out[rule.official.format(**values)] = value
    if problems:
        raise ConversionError(problems, 'cannot invert the key mapping')
    return out


def expected_spec(model_or_state: Union[nn.Module, Mapping[str, Tensor]]
                  ) -> Dict[str, TensorSpec]:
    """Shapes and dtypes of a model's state dict (the conversion target)."""
    state = (model_or_state.state_dict() if isinstance(model_or_state, nn.Module)
             else model_or_state)
    return {k: TensorSpec(tuple(v.shape), v.dtype) for k, v in state.items()}


def convert_state_dict(official: Mapping[str, Tensor],
                       expected: Optional[Mapping[str, TensorSpec]] = None,
                       inference_only: bool = False,
                       rules: Sequence[KeyRule] = KEY_RULES) -> ConversionResult:
    """Rename an official state dict to our layout and check it against the target.

    Checks, all collected before raising: every official key matches one rule; no two keys
    map to the same target; with ``expected``, every produced key exists in the target with
    the same shape and dtype, and every target key is produced. Missing BatchNorm
    ``num_batches_tracked`` counters are filled with 0 (as torch's BatchNorm does for old
    checkpoints) and reported in ``notes``; floating tensors of another precision are cast.

    Args:
        official (Mapping[str, Tensor]): Official state dict (``module.`` prefix allowed).
        expected (Mapping[str, TensorSpec], optional): Target shapes and dtypes, e.g.
            ``expected_spec(model)``. None checks only the key table.
        inference_only (bool): Drop the auxiliary-head weights. Defaults to False.
        rules (Sequence[KeyRule]): The table. Defaults to :data:`KEY_RULES`.

    Returns:
        ConversionResult: Converted weights and the per-key record.

    Raises:
        ConversionError: Listing every unknown, duplicate, mismatched or missing key.
    """
    result, problems, sources = ConversionResult(), [], {}
    for raw_key, value in official.items():
        key = raw_key[len('module.'):] if raw_key.startswith('module.') else raw_key
        if not isinstance(value, Tensor):
            problems.append(f'{raw_key}: value is a {type(value).__name__}, not a tensor')
            continue
        try:
            ours, reason = convert_key(key, inference_only, rules)
        except KeyError as err:
            problems.append(str(err.args[0]))
            continue
        if ours is None:
            result.dropped.append((raw_key, reason))
            continue
        rule = match_key(key, rules)[0]
        if rule.convert is not None:
            value = rule.convert(key, value)
        if ours in sources:
            problems.append(f'{raw_key} -> {ours}: target already produced by {sources[ours]}')
            continue
        sources[ours] = raw_key
        if expected is not None:
            spec = expected.get(ours)
            if spec is None:
                problems.append(f'{raw_key} -> {ours}: not a key of the target model '
                                '(wrong --config, or a different number of layers/heads?)')
                continue
            if tuple(value.shape) != tuple(spec.shape):
                problems.append(f'{raw_key} -> {ours}: shape mismatch, checkpoint '
                                f'{list(value.shape)} vs model {list(spec.shape)}')
                continue
            if value.dtype != spec.dtype:
                if value.is_floating_point() and spec.dtype.is_floating_point:
                    result.notes.append(f'{ours}: cast {value.dtype} -> {spec.dtype}')
                    value = value.to(spec.dtype)
                else:
                    problems.append(f'{raw_key} -> {ours}: dtype mismatch, checkpoint '
                                    f'{value.dtype} vs model {spec.dtype}')
                    continue
        result.state_dict[ours] = value
        result.mapped.append((raw_key, ours))
    if expected is not None:
        for key, spec in expected.items():
            if key in sources:  # produced (possibly with a mismatch reported above)
                continue
            bn_prefix = key[:-len('num_batches_tracked')]
            if (key.endswith('.num_batches_tracked')
                    and f'{bn_prefix}running_mean' in result.state_dict):
                result.state_dict[key] = torch.zeros(spec.shape, dtype=spec.dtype)
                result.notes.append(f'{key}: missing BatchNorm counter filled with 0')
            else:
                problems.append(f'{key}: expected by the target model but not produced by '
                                'any official key')
    if problems:
        raise ConversionError(problems)
    return result


def _unpickling_reason(err: Exception) -> str:
    """The informative line of torch's weights-only error (which global was refused)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for line in lines:
        if 'WeightsUnpickler error' in line:
            return line.split('. Please use')[0]
    return lines[0] if lines else type(err).__name__


def load_official_checkpoint(path: Union[str, Path], trust_checkpoint: bool = False
                             ) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    """Load an official checkpoint: ``{'state_dict', 'meta', ...}`` or a bare state dict.

    By default the file is read with ``torch.load(weights_only=True)`` (tensors, containers
    and primitives only, plus the numpy scalars/arrays and ``ConfigDict`` allow-listed in
    :mod:`projects.codetr.checkpoint_compat`), which cannot execute code from the file.

    Args:
        path (str | Path): Checkpoint file.
        trust_checkpoint (bool): Use ``weights_only=False``, i.e. full unpickling, which can
            run arbitrary code stored in the file. Only for files you trust.

    Returns:
        tuple[dict, dict]: The state dict and the checkpoint's ``meta`` (``{}`` if absent).

    Raises:
        UntrustedCheckpointError: When the safe load refuses the file.
        ValueError: When the file holds no state dict.
    """
    if trust_checkpoint:
        ckpt = torch.load(path, map_location='cpu', weights_only=False)
    else:
        try:
            from ..utils.checkpoint_compat import register_checkpoint_safe_globals
            register_checkpoint_safe_globals()
        except ImportError:  # the allow-list is optional; plain weights_only still applies
            pass
        try:
            ckpt = torch.load(path, map_location='cpu', weights_only=True)
        except pickle.UnpicklingError as err:
            raise UntrustedCheckpointError(
                f'{path}: torch.load(weights_only=True) refused this checkpoint: it contains '
                'pickled Python objects besides tensors (official mmdet 2.x checkpoints may '
                "store mmcv/numpy objects in 'meta' or 'optimizer'). If the file comes from a "
                'source you trust (e.g. the official Co-DETR release), re-run with '
                '--trust-checkpoint, which loads it with weights_only=False and can execute '
                f'code embedded in the file. torch says: {_unpickling_reason(err)}') from err
    if not isinstance(ckpt, Mapping):
        raise ValueError(f'{path}: expected a dict checkpoint, got {type(ckpt).__name__}')
    if 'state_dict' in ckpt:
        state, meta = ckpt['state_dict'], ckpt.get('meta') or {}
    else:
        state, meta = ckpt, {}
    if not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f'{path}: no state dict of tensors found (keys: {list(ckpt)[:10]})')
    return dict(state), dict(meta) if isinstance(meta, Mapping) else {}


def sha256sum(path: Union[str, Path], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            digest.update(block)
    return digest.hexdigest()


def build_meta(result: ConversionResult, source: Union[str, Path], source_meta: Mapping,
               inference_only: bool, config: Optional[str] = None) -> Dict[str, Any]:
    """Provenance ``meta`` of the converted checkpoint (plain Python types only).

    Keeps the official ``CLASSES`` as mmdet 3's ``dataset_meta['classes']`` and the
    official version strings; nothing that ``torch.load(weights_only=True)`` would refuse.
    """
    meta: Dict[str, Any] = dict(
        converted_by='tools/model_converters/official_to_mmdet3.py',
        source=str(Path(source).name),
        source_sha256=sha256sum(source),
        inference_only=bool(inference_only),
        checked_against_config=config,
        num_mapped=len(result.mapped),
        dropped={k: reason for k, reason in result.dropped},
        notes=list(result.notes),
    )
    for key in ('mmdet_version', 'mmcv_version', 'epoch', 'iter', 'time'):
        value = source_meta.get(key)
        if isinstance(value, str | int | float):
            meta[f'source_{key}'] = value
    classes = source_meta.get('CLASSES')
    if isinstance(classes, list | tuple) and all(isinstance(c, str) for c in classes):
        meta['dataset_meta'] = dict(classes=tuple(classes))
    return meta
