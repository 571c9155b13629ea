"""Build the native deformable-attention operator for ONNX Runtime and OpenVINO.

    python tools/misc/build_native_ops.py            # what `make install` runs
    python tools/misc/build_native_ops.py --force    # rebuild even if up to date

Sources: ``projects/codetr/ops/csrc`` (one kernel, two wrappers, CMakeLists.txt). Output:
``projects/codetr/ops/lib/libcodetr_msda_{onnxruntime,openvino}.so`` (or
``$CODETR_NATIVE_OPS_DIR``), loaded by ``tools/test.py --backend``, ``tools/infer.py`` and
the export check for graphs exported with ``--target native``.

What each library is built from, all from the package registries:

- OpenVINO: the headers and CMake config that the ``openvino`` wheel ships
  (``openvino/include``, ``openvino/cmake``).
- ONNX Runtime: its PyPI wheel ships the runtime only, no C/C++ API headers, and no PyPI or
  Debian package carries them. The npm package ``com.github.asus4.onnxruntime`` (ONNX
  Runtime for Unity, MIT) ships the official headers inside its iOS framework; only the
  header files are extracted (``build/native_ops/ort_headers``). The operator uses the
  versioned C API table that the runtime hands over at registration, so headers of an API
  version <= the installed runtime's are enough.

Without cmake, a C++ compiler, npm or the registry, the affected library is skipped with a
message and the exit status stays 0 (``--strict``: 1): the standard-operator graphs
(``--target onnxruntime|openvino``) need none of this. Up-to-date libraries (same sources,
same runtime versions) are not rebuilt.
"""
from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]

SOURCES = REPO_ROOT / 'projects/codetr/ops/csrc'
BUILD = REPO_ROOT / 'build/native_ops'
ORT_HEADERS_PACKAGE = 'com.github.asus4.onnxruntime@0.4.9'
ORT_HEADERS = ('onnxruntime_c_api.h', 'onnxruntime_cxx_api.h', 'onnxruntime_cxx_inline.h',
               'onnxruntime_float16.h', 'onnxruntime_ep_c_api.h',
               'onnxruntime_session_options_config_keys.h',
               'onnxruntime_run_options_config_keys.h', 'onnxruntime_env_config_keys.h',
               'onnxruntime_error_code.h', 'onnxruntime_experimental_c_api.h',
               'onnxruntime_experimental_cxx_api.h', 'onnxruntime_lite_custom_op.h',
               'onnxruntime_ep_device_ep_metadata_keys.h')


def log(message: str) -> None:
    print(f'[native-ops] {message}', flush=True)


def ort_api_version(header_dir: Path) -> int:
    """``ORT_API_VERSION`` of ``onnxruntime_c_api.h`` in ``header_dir``."""
    text = (header_dir / 'onnxruntime_c_api.h').read_text(errors='replace')
    match = re.search(r'#define ORT_API_VERSION (\d+)', text)
    if not match:
        raise RuntimeError(f'{header_dir}/onnxruntime_c_api.h has no ORT_API_VERSION')
    return int(match.group(1))


def fetch_ort_headers(dest: Path) -> Path:
    """The ONNX Runtime C/C++ API headers in ``dest`` (fetched with npm once).

    Raises:
        RuntimeError: Naming what failed (npm missing, download, package layout).
    """
    if (dest / 'onnxruntime_cxx_api.h').is_file():
        return dest
    npm = shutil.which('npm')
    if npm is None:
        raise RuntimeError('npm not found (apt-get install npm); it fetches the ONNX Runtime '
                           f'headers from the npm package {ORT_HEADERS_PACKAGE}')
    download = BUILD / 'download'
    download.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([npm, 'pack', ORT_HEADERS_PACKAGE, '--pack-destination',
                             str(download)], capture_output=True, text=True)
    tarballs = sorted(download.glob('*.tgz'))
    if result.returncode != 0 or not tarballs:
        raise RuntimeError(f'npm pack {ORT_HEADERS_PACKAGE} failed: '
                           f'{(result.stderr or result.stdout).strip()[-500:]}')
    tmp = dest.with_name(dest.name + '.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(tarballs[-1]) as tar:
            # the headers of one framework slice (all slices carry the same files)
            members = {}
            for member in tar.getmembers():
                parts = member.name.split('/')
                if (member.isfile() and parts[-1] in ORT_HEADERS and 'Headers' in parts
                        and parts[-1] not in members):
                    members[parts[-1]] = member
            missing = sorted(set(ORT_HEADERS) - set(members))
            if missing:
                raise RuntimeError(f'{ORT_HEADERS_PACKAGE} has no {missing}')
            for name, member in members.items():
                with tar.extractfile(member) as src:
                    (tmp / name).write_bytes(src.read())
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for tarball in tarballs:  # 150 MB; npm keeps its own cache
            tarball.unlink()
    return dest


def openvino_cmake_dir() -> Path:
    """The CMake config directory of the installed openvino wheel.

    Raises:
        RuntimeError: openvino missing or without its C++ development files.
    """
    try:
        import openvino
    except ImportError as error:
        raise RuntimeError(f'openvino is not installed ({error})') from error
    root = Path(openvino.__file__).parent
    config = root / 'cmake' / 'OpenVINOConfig.cmake'
    if not config.is_file() or not (root / 'include/openvino/core/op_extension.hpp').is_file():
        raise RuntimeError(f'the openvino wheel at {root} ships no C++ headers/CMake config')
    return config.parent


def fingerprint(parts: Dict[str, str]) -> str:
    digest = hashlib.sha256()
    for path in sorted(SOURCES.iterdir()):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    for key in sorted(parts):
        digest.update(f'{key}={parts[key]}'.encode())
    return digest.hexdigest()


def check_loads(runtime: str, library: Path) -> None:
    """Load ``library`` into ``runtime`` as the tools do (raises on failure)."""
    if runtime == 'onnxruntime':
        import onnxruntime
        onnxruntime.SessionOptions().register_custom_ops_library(str(library))
    else:
        import openvino
        openvino.Core().add_extension(str(library))


def _native_module():
    """``projects/codetr/ops/native.py`` by its path (library names and directory), without
    importing the package (mmdet) for a build step."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        '_codetr_native', REPO_ROOT / 'projects/codetr/ops/native.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(force: bool = False) -> Dict[str, Optional[str]]:
    """Build what can be built; returns ``{runtime: None (built) or why it was skipped}``."""
    native = _native_module()
    status: Dict[str, Optional[str]] = {}
    out_dir = native.native_ops_dir()
    cmake, cxx = shutil.which('cmake'), shutil.which('c++') or shutil.which('g++')
    if cmake is None or cxx is None:
        why = ('cmake' if cmake is None else 'a C++ compiler') + ' not found (apt-get install ' \
            'cmake g++)'
        return {runtime: why for runtime in native.LIBRARIES}
    defines: List[str] = []
    versions: Dict[str, str] = {}
    try:
        ov_dir = openvino_cmake_dir()
        import openvino
        defines.append(f'-DOpenVINO_DIR={ov_dir}')
        versions['openvino'] = openvino.__version__
        status['openvino'] = None
    except RuntimeError as error:
        status['openvino'] = str(error)
    try:
        import onnxruntime
        headers = fetch_ort_headers(BUILD / 'ort_headers')
        api, runtime_api = ort_api_version(headers), int(onnxruntime.__version__.split('.')[1])
        if api > runtime_api:
            raise RuntimeError(f'the headers are of ONNX Runtime API {api}, newer than the '
                               f'installed onnxruntime {onnxruntime.__version__}')
        defines.append(f'-DORT_INCLUDE_DIR={headers}')
        versions['onnxruntime'] = f'{onnxruntime.__version__} (headers: API {api})'
        status['onnxruntime'] = None
    except (RuntimeError, ImportError, OSError, tarfile.TarError) as error:
        status['onnxruntime'] = str(error)
    wanted = [runtime for runtime, why in status.items() if why is None]
    if not wanted:
        return status
    stamp = out_dir / '.build_stamp'
    key = fingerprint(versions)
    libraries = {runtime: out_dir / native.LIBRARIES[runtime] for runtime in wanted}
    if (not force and stamp.is_file() and stamp.read_text() == key
            and all(path.is_file() for path in libraries.values())):
        log(f'up to date in {out_dir}')
        return status
    cmake_build = BUILD / 'cmake'
    shutil.rmtree(cmake_build, ignore_errors=True)
    commands = [
        [cmake, '-S', str(SOURCES), '-B', str(cmake_build), '-DCMAKE_BUILD_TYPE=Release',
         f'-DCMAKE_INSTALL_PREFIX={out_dir}', *defines]
        + (['-G', 'Ninja'] if shutil.which('ninja') else []),
        [cmake, '--build', str(cmake_build), '-j', '2'],
        [cmake, '--install', str(cmake_build)],
    ]
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            why = f'{" ".join(command[:2])} failed: {(result.stdout + result.stderr)[-1500:]}'
            return {runtime: why if runtime in wanted else status[runtime]
                    for runtime in status}
    for runtime, path in libraries.items():
        try:
            check_loads(runtime, path)
        except Exception as error:  # a library that does not load is as good as none
            path.unlink(missing_ok=True)
            status[runtime] = f'built, but {runtime} does not load it: {error}'
    stamp.write_text(key)
    return status


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--force', action='store_true', help='rebuild even if up to date')
    parser.add_argument('--strict', action='store_true',
                        help='exit 1 when a library could not be built')
    args = parser.parse_args(argv)
    native = _native_module()
    status = build(args.force)
    for runtime, why in status.items():
        if why is None:
            log(f'{runtime}: {native.native_ops_dir() / native.LIBRARIES[runtime]}')
        else:
            log(f'{runtime}: NOT BUILT ({why}); graphs exported with --target native will not '
                f'run in {runtime}; the standard-operator graphs (--target onnxruntime|openvino)'
                ' are unaffected')
    return int(args.strict and any(why is not None for why in status.values()))


if __name__ == '__main__':
    sys.exit(main())
