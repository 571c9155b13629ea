"""tools/analysis_tools/benchmark.py: the deployment switches (--cpu-optim, --backend,
--precision, --raw, --profile) on the synthetic config, one or two rounds each."""
import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_tools import REPO_ROOT  # noqa: E402

from tools.analysis_tools import benchmark  # noqa: E402

CONFIG = str(REPO_ROOT / 'configs' / 'co_deformable_detr_synthetic.py')
BASE = [CONFIG, '--shape', '96', '128', '--warmup', '0', '--threads', '2']


def test_cpu_optim_ab_with_profile(tmp_path, capsys):
    out = tmp_path / 'bench.json'
    result = benchmark.main([*BASE, '--cpu-optim', '--profile', '--profile-rows', '500',
                             '--repeat', '2', '--json', str(out)])
    assert set(result['results']) == {CONFIG, 'optimize_for_cpu_inference'}
    assert result['ratio']['repeats'] == 2 and result['ratio']['median_s'] > 0
    assert json.loads(out.read_text())['ratio'] == result['ratio']
    printed = capsys.readouterr().out
    # every operator listed: the model as loaded runs BatchNorm, the optimised one has it
    # folded away
    profiles = printed.split('profile of optimize_for_cpu_inference:')
    assert 'native_batch_norm' in profiles[0] and 'native_batch_norm' not in profiles[1]


@pytest.mark.parametrize('backend', ['onnxruntime', 'openvino'])
def test_runtime_against_pytorch_with_raw_outputs(capsys, backend):
    result = benchmark.main([*BASE, '--backend', backend, '--raw', '--repeat', '1'])
    assert set(result['results']) == {CONFIG, f'{backend} (fp32)'}
    printed = capsys.readouterr().out
    assert f'(arranged for {backend})' in printed  # the graph exported for this runtime
    diffs = re.findall(r'vs PyTorch, (\w+) \(1, \d+, \d+\): max \|diff\| (\S+)', printed)
    assert [name for name, _ in diffs] == ['logits', 'boxes_cxcywh']
    assert all(float(value) <= 1e-3 for _, value in diffs)


def test_pytorch_backend_and_bad_precision():
    result = benchmark.main([*BASE, '--backend', 'pytorch', '--repeat', '1'])
    assert list(result['results']) == [CONFIG] and 'ratio' not in result
    with pytest.raises(SystemExit, match='--precision bf16 is an option of --backend openvino'):
        benchmark.main([*BASE, '--backend', 'onnxruntime', '--precision', 'bf16'])
