"""The test run's own settings: thread count applied, skips outside the allow-list fail."""
import os
import subprocess
import sys

import torch
from conftest import ROOT


def test_thread_variables_reach_torch():
    """conftest sets OMP_NUM_THREADS before torch is imported; set later it would be ignored
    (torch would use one thread per core)."""
    assert torch.get_num_threads() == int(os.environ['OMP_NUM_THREADS'])


def test_a_skip_outside_the_allow_list_fails_the_run(tmp_path):
    tests = tmp_path / 'tests'
    tests.mkdir()
    (tests / 'conftest.py').write_text((ROOT / 'tests' / 'conftest.py').read_text())
    (tests / 'test_skips.py').write_text(
        'import pytest\n\n\n'
        'def test_missing_file():\n    pytest.skip("fixture file not available")\n\n\n'
        'def test_gpu():\n    pytest.skip("needs CUDA")\n')

    def run(*extra):
        return subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
                               str(tests), *extra], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))

    red = run()
    assert red.returncode == 1, red.stdout
    assert 'test_missing_file: Skipped: fixture file not available' in red.stdout
    assert 'test_gpu' not in red.stdout.split('skips that fail the run')[1]
    green = run('-k', 'test_gpu')
    assert green.returncode == 0, green.stdout
