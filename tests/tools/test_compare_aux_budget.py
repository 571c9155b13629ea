"""The claim study's bookkeeping: curves from mmengine scalars, seed aggregation, table."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tools.analysis_tools import compare_aux_budget as cab


def _write_run(work_dir: Path, times: list[float], maps: dict[int, float]) -> None:
    """A fake mmengine run: a train record every 10 iterations, val after some of them."""
    lines = []
    for i, t in enumerate(times, start=1):
        lines.append(json.dumps({'loss': 1.0, 'time': t, 'epoch': 1, 'iter': 10 * i,
                                 'step': 10 * i}))
        if 10 * i in maps:
            lines.append(json.dumps({'coco/bbox_mAP': maps[10 * i],
                                     'coco/bbox_mAP_50': 2 * maps[10 * i], 'step': 1}))
    scalars = work_dir / '20261203_000000' / 'vis_data' / 'scalars.json'
    scalars.parent.mkdir(parents=True)
    scalars.write_text('\n'.join(lines) + '\n')


def test_val_curve_sums_iteration_times(tmp_path: Path) -> None:
    _write_run(tmp_path, [1.0, 2.0, 0.5, 0.5], {20: 0.1, 40: 0.3})
    assert cab.val_curve(tmp_path) == [
        dict(iter=20, mAP=0.1, mAP_50=0.2, train_s=30.0),
        dict(iter=40, mAP=0.3, mAP_50=0.6, train_s=40.0)]
    with pytest.raises(FileNotFoundError, match='no .*scalars.json'):
        cab.val_curve(tmp_path / 'missing')


def test_aggregate_mean_and_sample_std() -> None:
    runs = {0: [dict(iter=10, mAP=0.1, mAP_50=0.2, train_s=5.0),
                dict(iter=20, mAP=0.2, mAP_50=0.4, train_s=10.0)],
            1: [dict(iter=10, mAP=0.3, mAP_50=0.4, train_s=7.0)]}
    rows = cab.aggregate(runs)
    assert len(rows) == 1  # iteration 20 is not reached by every seed
    row = rows[0]
    assert row['n'] == 2 and row['iter'] == 10
    assert row['mAP'] == pytest.approx(0.2) and row['mAP_std'] == pytest.approx(math.sqrt(0.02))
    assert row['train_s'] == pytest.approx(6.0)
    assert cab.mean_std([0.5]) == (0.5, 0.0)


def test_skip_train_writes_table_json_and_plot(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cab, 'ROOT', tmp_path)
    _write_run(tmp_path / 'out' / 'co_detr' / 'seed0', [2.0, 2.0], {20: 0.2})
    _write_run(tmp_path / 'demo', [2.0, 2.0], {20: 0.4})  # seed 1 taken from elsewhere
    for seed, b in enumerate([0.1, 0.3]):
        _write_run(tmp_path / 'out' / 'baseline' / f'seed{seed}', [1.0, 1.0], {20: b})
    result = cab.main(['--out-dir', 'out', '--seeds', '0', '1', '--skip-train',
                       '--take-run', 'co_detr', '1', 'demo'])
    co, base = result['aggregate']['co_detr'][0], result['aggregate']['baseline'][0]
    assert co['mAP'] == pytest.approx(0.3) and base['mAP'] == pytest.approx(0.2)
    table = (tmp_path / 'out' / 'aux_budget.md').read_text()
    assert '0.300 ± 0.141 / 0.600 ± 0.283 (40 s)' in table
    # final AP per 1000 training seconds: 0.3 / 40 s and 0.2 / 20 s
    assert '| 40 | 7.500 |' in table and '| 20 | 10.000 |' in table
    assert (tmp_path / 'out' / 'aux_budget.png').stat().st_size > 10_000
    saved = json.loads((tmp_path / 'out' / 'aux_budget.json').read_text())
    assert saved['runs']['baseline']['1'][0]['mAP'] == 0.3
    assert saved['taken'] == {'co_detr/1': str(tmp_path / 'demo')}
    with pytest.raises(SystemExit):  # a seed that is not run
        cab.main(['--seeds', '0', '--skip-train', '--take-run', 'co_detr', '3', 'demo'])
    # seeds without a finished run are left out of the table, an arm without any is an error
    result = cab.main(['--out-dir', 'out', '--seeds', '0', '1', '2', '--skip-train'])
    assert [r['n'] for r in result['aggregate']['baseline']] == [2]
    assert [r['n'] for r in result['aggregate']['co_detr']] == [1]
    with pytest.raises(SystemExit, match='atss_only: no finished run'):
        cab.main(['--out-dir', 'out', '--arms', 'atss_only', '--skip-train'])
    ann = tmp_path / 'data' / 'annotations' / 'instances_val.json'
    ann.parent.mkdir(parents=True)
    ann.write_text('{}')
    with pytest.raises(SystemExit, match='already holds a run'):  # never trains over a run
        cab.main(['--out-dir', 'out', '--arms', 'baseline', '--seeds', '0',
                  '--data-root', str(tmp_path / 'data')])


def test_variant_arms_change_only_the_model(tmp_path: Path) -> None:
    from mmengine.config import Config
    base = Config.fromfile(str(cab.arm_config('co_detr', tmp_path)))
    assert cab.arm_config('co_detr', tmp_path) == cab.ROOT / cab.SYNTHETIC
    no_pos = Config.fromfile(str(cab.arm_config('no_pos_coord', tmp_path)))
    assert base.model.with_pos_coord and not no_pos.model.with_pos_coord
    atss = Config.fromfile(str(cab.arm_config('atss_only', tmp_path)))
    assert atss.model.rpn_head is None and atss.model.roi_head is None
    assert atss.model.query_head.num_co_heads == 1
    assert [c.get('assigner', {}).get('type') for c in atss.model.train_cfg] == [
        base.model.train_cfg[0].get('assigner', {}).get('type'), 'ATSSAssigner']
    for cfg in (no_pos, atss):  # same data, schedule and optimiser as the shipped arm
        for key in ('train_dataloader', 'train_cfg', 'optim_wrapper', 'param_scheduler'):
            assert cfg[key] == base[key], key
