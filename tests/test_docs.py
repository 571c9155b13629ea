"""The docs stay true: every fenced shell command of README.md and docs/get_started.md is run
in dry form, and every docs page is linked from the README.

Dry form: ``make T`` needs the Makefile target, ``bash tools/X.sh ...`` the script, ``python
tools/X.py ARGS`` the script and its own ``parse_args(ARGS)`` (placeholders such as CONFIG
replaced by real files, ``[--option VALUE]`` taken as written without the brackets, ``a|b`` as
``a``); every ``configs/``, ``tools/`` and ``tests/`` path named must exist. An option or path
that no longer exists fails here.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = [ROOT / 'README.md', ROOT / 'docs' / 'get_started.md']
PLACEHOLDERS = {
    'CONFIG': 'configs/co_deformable_detr_synthetic.py',
    'CKPT': 'work_dirs/x/epoch_1.pth',
    'IMAGE_OR_FOLDER': 'data/synthetic/val',
    'IMAGE': 'data/synthetic/val/000000.png',
    'MODEL.onnx': 'work_dirs/x/model.onnx',
}
REPO_PATH = re.compile(r'^(configs|tools|tests)/[\w./-]+$')


def shell_commands(path: Path) -> list[str]:
    """The commands of the ``bash`` blocks of a markdown file (continuations joined, comments
    and prompts removed, ``a && b`` split)."""
    commands = []
    for block in re.findall(r'```bash\n(.*?)```', path.read_text(), re.S):
        joined = re.sub(r'\\\n\s*', ' ', block)
        for line in joined.splitlines():
            line = re.sub(r'(^|\s)#.*$', '', line).strip()
            commands += [part.strip() for part in line.split('&&') if part.strip()]
    return commands


def _makefile_targets() -> set[str]:
    text = (ROOT / 'Makefile').read_text()
    return set(re.findall(r'^([\w-]+):', text, re.M))


def _tool_parser(script: Path):
    spec = importlib.util.spec_from_file_location(f'_docs_{script.stem}', script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert hasattr(module, 'parse_args'), f'{script} has no parse_args'
    return module.parse_args


def check_command(command: str) -> None:
    """Raise AssertionError (or the tool's SystemExit) if the command cannot run as written."""
    tokens = shlex.split(command)
    while tokens and re.match(r'^[A-Z_]+=\S*$', tokens[0]):  # VAR=value prefixes
        tokens.pop(0)
    tokens = [PLACEHOLDERS.get(t, t) for t in tokens]
    args = []
    for token in tokens:
        token = token.replace('[', '').replace(']', '')
        if token in ('', '...'):
            continue
        if '|' in token and not token.startswith('-'):
            token = token.split('|')[0]
        args.append(token)
    for token in args:
        if REPO_PATH.match(token):
            assert (ROOT / token).exists(), f'{command!r}: {token} does not exist'
    program, rest = args[0], args[1:]
    if program == 'make':
        assert set(rest) <= _makefile_targets(), f'{command!r}: unknown make target'
    elif program == 'source':
        assert rest == ['.venv/bin/activate'], command  # made by `make install`
    elif program == 'bash':
        assert (ROOT / rest[0]).is_file(), f'{command!r}: no {rest[0]}'
    elif program == 'python':
        script = ROOT / rest[0]
        assert script.is_file() and script.suffix == '.py', f'{command!r}: no {rest[0]}'
        try:
            _tool_parser(script)(rest[1:])
        except SystemExit as exc:
            raise AssertionError(f'{command!r}: {rest[0]} rejects its arguments') from exc
    else:
        raise AssertionError(f'{command!r}: no dry form for {program!r}; extend test_docs.py')


def _all_commands() -> list[tuple[str, str]]:
    return [(path.relative_to(ROOT).as_posix(), command)
            for path in CHECKED for command in shell_commands(path)]


@pytest.mark.parametrize('where,command', _all_commands(),
                         ids=[f'{w}:{c[:60]}' for w, c in _all_commands()])
def test_documented_command_runs_dry(where, command):
    check_command(command)


def test_commands_are_found():
    """The extraction itself works: both files have commands, and a wrong one fails."""
    per_file = {w for w, _ in _all_commands()}
    assert per_file == {'README.md', 'docs/get_started.md'}
    for wrong in ('python tools/test.py CONFIG CKPT --no-such-option',
                  'python tools/nope.py CONFIG', 'make no-such-target',
                  'bash tools/dist_train.sh configs/missing.py 8'):
        with pytest.raises(AssertionError):
            check_command(wrong)


def test_readme_is_short_and_links_every_docs_page():
    readme = (ROOT / 'README.md').read_text()
    assert len(readme.splitlines()) <= 220
    pages = sorted(p.name for p in (ROOT / 'docs').glob('*.md'))
    assert {'get_started.md', 'configs.md', 'checkpoints.md', 'deployment.md', 'benchmarks.md',
            'claim_study.md', 'reliability.md', 'design.md'} <= set(pages)
    for page in pages:
        assert f'](docs/{page}' in readme, f'README does not link docs/{page}'
    # relative links between the docs resolve
    for page in [ROOT / 'README.md', *(ROOT / 'docs').glob('*.md')]:
        for target in re.findall(r'\]\(([^)#:]+)(?:#[^)]*)?\)', page.read_text()):
            assert (page.parent / target).exists(), f'{page.name}: broken link {target}'
