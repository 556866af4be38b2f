"""TensorRT: build an engine from the exported ONNX, save it, refit it, run it.

Loaders follow Polygraphy's naming: :class:`EngineFromOnnx` (build), :class:`SaveEngine` (write);
:func:`refit_engine_from_onnx` loads new weights into a *standby* engine (the runtime does not
refit: each engine version is a fresh build in the daemon; ``benchmarks/bench_export.py`` times a
refit against a build). Written for the TensorRT 10 Python API; TensorRT 11 (no FP16 builder flag, strongly typed networks only) is
handled by converting the ONNX file to fp16 before parsing. Device memory and the stream come
from cuda-python. Nothing here imports tensorrt or touches a GPU before it is called.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from iapc.errors import UserError
from iapc.engines.runner_base import Runner

DEFAULT_WORKSPACE_BYTES = 1 << 30
# Engines held by active runners, by id(): refitting one of them would change weights under
# work in flight, so refit_engine_from_onnx refuses.
_ENGINES_IN_USE: set[int] = set()


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise UserError("TensorRT is not installed: install the 'tensorrt' package on a machine "
                        "with an NVIDIA GPU, or use --backend onnxruntime") from None
    return trt


def import_cudart():
    """cuda-python's runtime module (new layout first, then the pre-12.8 one)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise UserError("cuda-python is not installed: pip install cuda-python "
                            "(needed for TensorRT inference)") from None
    return cudart


def nvidia_gpu_count() -> int:
    """CUDA devices visible through cuda-python; 0 without it or without a driver."""
    try:
        cudart = import_cudart()
        err, count = cudart.cudaGetDeviceCount()
    except (UserError, RuntimeError, OSError):
        return 0
    return int(count) if err == cudart.cudaError_t.cudaSuccess else 0


def tensorrt_available() -> tuple[bool, str]:
    """(True, "") when tensorrt imports and a GPU is present, else (False, why not)."""
    try:
        import_tensorrt()
    except UserError:
        return False, "no TensorRT"
    if nvidia_gpu_count() == 0:
        return False, "no NVIDIA GPU"
    return True, ""


def tensorrt_device(index: int = 0) -> str:
    """What a TensorRT engine built here is bound to: the GPU, its compute capability and the
    TensorRT version (an engine runs only where all three match)."""
    trt = import_tensorrt()
    props = _check_cuda(import_cudart().cudaGetDeviceProperties(index))
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return f"{name.rstrip(chr(0)).strip()} sm_{props.major}{props.minor}, TensorRT {trt.__version__}"


def _check_cuda(result: tuple) -> Any:
    """cuda-python calls return (error, *values): raise on error, return the value(s)."""
    cudart = import_cudart()
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"CUDA call failed: {cudart.cudaGetErrorName(err)[1].decode()}")
    return values[0] if len(values) == 1 else (tuple(values) or None)


_LOGGER = None


def trt_logger():
    global _LOGGER
    if _LOGGER is None:
        trt = import_tensorrt()
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def _convert_onnx_to_fp16(onnx_path: Path, workdir: Path) -> Path:
    """TensorRT 11 builds strongly typed networks only: fp16 must be in the ONNX file itself."""
    import onnx

    try:
        import modelopt.onnx.autocast as autocast
        converted = autocast.convert_to_mixed_precision(onnx_path=str(onnx_path),
                                                        low_precision_type="fp16", keep_io_types=True)
    except ImportError:
        try:
            from onnxconverter_common import float16
        except ImportError:
            raise UserError("fp16 with TensorRT 11 needs the ONNX converted first: pip install "
                            "nvidia-modelopt[onnx] (or onnxconverter-common), or build with fp16=False") from None
        converted = float16.convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
    out = workdir / (onnx_path.stem + ".fp16.onnx")
    onnx.save(converted, str(out))
    return out


def _needs_strong_typing(trt) -> bool:
    return not hasattr(trt.BuilderFlag, "FP16")  # TensorRT 11 and later


def _parse_onnx(trt, builder, onnx_path: Path):
    network = builder.create_network(0)  # explicit batch is the only mode since TensorRT 10
    parser = trt.OnnxParser(network, trt_logger())
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT could not parse {onnx_path}: {errors[:300]}")
    return network, parser


def _add_batch_profile(builder, config, network, max_batch: int) -> None:
    """A dynamic batch axis needs an optimisation profile: 1 .. max_batch."""
    profile = builder.create_optimization_profile()
    needed = False
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)  # (N, H, W, 3), N = -1 when dynamic
        if shape[0] == -1:
            needed = True
            profile.set_shape(tensor.name, [1, *shape[1:]], [max_batch, *shape[1:]],
                              [max_batch, *shape[1:]])
    if needed:
        config.add_optimization_profile(profile)


class EngineFromOnnx:
    """Callable loader: ONNX file -> built ``trt.ICudaEngine``.

    ``timing_cache``: a file read before and written after the build (rebuilds after adaptation
    reuse the kernel timings). ``refit=True`` builds a refittable engine (BuilderFlag.REFIT,
    not REFIT_IDENTICAL, because new weights differ from the ones built with).
    """

    def __init__(self, onnx_path: str | os.PathLike, fp16: bool = True,
                 timing_cache: str | os.PathLike | None = None,
                 workspace_bytes: int = DEFAULT_WORKSPACE_BYTES, optimization_level: int = 3,
                 refit: bool = True, max_batch: int = 8):
        self.onnx_path = Path(onnx_path)
        self.fp16 = fp16
        self.timing_cache = Path(timing_cache) if timing_cache else None
        self.workspace_bytes = workspace_bytes
        self.optimization_level = optimization_level
        self.refit = refit
        self.max_batch = max_batch

    def _configure(self, trt, builder):
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        config.builder_optimization_level = self.optimization_level
        if self.fp16 and not _needs_strong_typing(trt):
            config.set_flag(trt.BuilderFlag.FP16)
        if self.refit:
            config.set_flag(trt.BuilderFlag.REFIT)
        if self.timing_cache is not None:
            cached = self.timing_cache.read_bytes() if self.timing_cache.is_file() else b""
            config.set_timing_cache(config.create_timing_cache(cached), ignore_mismatch=True)
        return config

    def _save_timing_cache(self, config) -> None:
        if self.timing_cache is None:
            return
        data = bytes(memoryview(config.get_timing_cache().serialize()))
        _write_atomically(self.timing_cache, data)

    def __call__(self):
        trt = import_tensorrt()
        if not self.onnx_path.is_file():
            raise UserError(f"ONNX file {self.onnx_path} does not exist: export one with 'iapc export'")
        builder = trt.Builder(trt_logger())
        with tempfile.TemporaryDirectory() as workdir:
            source = self.onnx_path
            if self.fp16 and _needs_strong_typing(trt):
                source = _convert_onnx_to_fp16(self.onnx_path, Path(workdir))
            network, _parser = _parse_onnx(trt, builder, source)
            config = self._configure(trt, builder)
            _add_batch_profile(builder, config, network, self.max_batch)
            serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"TensorRT failed to build an engine from {self.onnx_path} "
                               "(see the TensorRT log above)")
        self._save_timing_cache(config)
        return trt.Runtime(trt_logger()).deserialize_cuda_engine(serialized)


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class SaveEngine:
    """Callable loader: ``engine`` (or a loader returning one) -> same engine, written to ``path``."""

    def __init__(self, engine: Any, path: str | os.PathLike):
        self.engine = engine
        self.path = Path(path)

    def __call__(self):
        engine = self.engine() if callable(self.engine) else self.engine
        _write_atomically(self.path, bytes(memoryview(engine.serialize())))
        return engine


def engine_from_path(path: str | os.PathLike):
    """Deserialize a saved engine file."""
    trt = import_tensorrt()
    path = Path(path)
    if not path.is_file():
        raise UserError(f"engine file {path} does not exist: build one with 'iapc export --backend tensorrt'")
    engine = trt.Runtime(trt_logger()).deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise UserError(f"{path} is not a TensorRT engine for this TensorRT version and GPU: rebuild it")
    return engine


def refit_engine_from_onnx(engine, onnx_path: str | os.PathLike, fp16: bool = True):
    """Load the weights of ``onnx_path`` (same architecture) into ``engine``; returns it.

    Only for a standby engine: an engine used by an active :class:`TensorRTRunner` is refused.
    """
    if id(engine) in _ENGINES_IN_USE:
        raise RuntimeError("this engine is in use by an active runner: refit a standby engine, "
                           "then swap runners between frames")
    trt = import_tensorrt()
    refitter = trt.Refitter(engine, trt_logger())
    parser_refitter = trt.OnnxParserRefitter(refitter, trt_logger())
    with tempfile.TemporaryDirectory() as workdir:
        source = Path(onnx_path)
        if fp16 and _needs_strong_typing(trt):
            source = _convert_onnx_to_fp16(source, Path(workdir))
        if not parser_refitter.refit_from_file(str(source)):
            errors = "; ".join(str(parser_refitter.get_error(i)) for i in range(parser_refitter.num_errors))
            raise UserError(f"could not refit from {onnx_path}: {errors[:300]}; was it exported from the "
                            "same architecture and frame size?")
    if not refitter.refit_cuda_engine():
        raise RuntimeError(f"TensorRT refit from {onnx_path} failed (see the TensorRT log)")
    return engine


class _DeviceBuffer:
    """One cudaMalloc'd buffer, grown on demand."""

    def __init__(self):
        self.ptr = 0
        self.nbytes = 0

    def ensure(self, nbytes: int) -> int:
        if nbytes > self.nbytes:
            self.free()
            self.ptr = int(_check_cuda(import_cudart().cudaMalloc(nbytes)))
            self.nbytes = nbytes
        return self.ptr

    def free(self) -> None:
        if self.ptr:
            _check_cuda(import_cudart().cudaFree(self.ptr))
        self.ptr, self.nbytes = 0, 0


class TensorRTRunner(Runner):
    """Runs a TensorRT engine with ``execute_async_v3`` on its own (non-default) CUDA stream.

    ``engine``: a path to a saved engine, an ``ICudaEngine``, or a loader returning one.
    """

    def __init__(self, engine: str | os.PathLike | Any | Callable[[], Any]):
        label = Path(engine).name if isinstance(engine, (str, os.PathLike)) else "engine"
        super().__init__(name=f"tensorrt:{label}")
        self._source = engine
        self.engine = None
        self._context = None
        self._stream = None
        self._buffers: dict[str, _DeviceBuffer] = {}
        self._inputs: list[str] = []
        self._outputs: list[str] = []

    def _load_engine(self):
        if isinstance(self._source, (str, os.PathLike)):
            return engine_from_path(self._source)
        return self._source() if callable(self._source) else self._source

    def activate_impl(self) -> None:
        trt = import_tensorrt()
        cudart = import_cudart()
        self.engine = self._load_engine()
        self._context = self.engine.create_execution_context()
        self._stream = _check_cuda(cudart.cudaStreamCreate())
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        self._buffers = {n: _DeviceBuffer() for n in names}
        _ENGINES_IN_USE.add(id(self.engine))

    def infer_impl(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        trt = import_tensorrt()
        cudart = import_cudart()
        frames = np.ascontiguousarray(frames)  # (N, H, W, 3) uint8
        (input_name,) = self._inputs
        if not self._context.set_input_shape(input_name, frames.shape):
            raise UserError(f"the engine does not accept frames of shape {tuple(frames.shape)} "
                            f"(it takes {tuple(self.engine.get_tensor_shape(input_name))})")
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        ptr = self._buffers[input_name].ensure(frames.nbytes)
        _check_cuda(cudart.cudaMemcpyAsync(ptr, frames.ctypes.data, frames.nbytes, h2d, self._stream))
        self._context.set_tensor_address(input_name, ptr)
        outputs = {}
        for name in self._outputs:
            shape = tuple(self._context.get_tensor_shape(name))  # (N, H, W)
            outputs[name] = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
            self._context.set_tensor_address(name, self._buffers[name].ensure(outputs[name].nbytes))
        if not self._context.execute_async_v3(int(self._stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        for name, host in outputs.items():
            _check_cuda(cudart.cudaMemcpyAsync(host.ctypes.data, self._buffers[name].ptr, host.nbytes,
                                               d2h, self._stream))
        _check_cuda(cudart.cudaStreamSynchronize(self._stream))  # CPU-GPU sync point
        return outputs

    def deactivate_impl(self) -> None:
        cudart = import_cudart()
        _ENGINES_IN_USE.discard(id(self.engine))
        for buffer in self._buffers.values():
            buffer.free()
        if self._stream is not None:
            _check_cuda(cudart.cudaStreamDestroy(self._stream))
        self._buffers, self._stream, self._context = {}, None, None
        self.engine = None
