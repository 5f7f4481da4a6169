"""ownllm's C kernels for the CPU hot path, compiled on first use and called via ctypes.

Kernels (source: `csrc/cpu_kernels.c`; both C files include `csrc/kernels_common.h`):

- `rope_cache`: rotary on the q and k heads of the step's qkv rows, in place, and
  the k and v heads copied into their cache slots: one call per layer instead of
  a handful of small torch ops;
- `decode_attention`: paged attention for the decoding rows (one query each),
  reading keys and values straight from the cache blocks; the torch path first
  gathers every sequence's blocks into a padded copy, per layer;
- `add_rms_norm` (the residual add and the next RMSNorm in one pass) and
  `silu_mul`: one call each instead of the several ops torch runs for them;
- `lora`: every row's adapter slot applied in one pass over the rows (the torch
  path tiles rows by slot for two `bmm`, with a gather and a scatter);
- `quant_matmul` (source: `csrc/quant_kernels.c`): x W^T for a few rows of x with W
  in q4_0, q4_1, q8_0 or int8 (`ownllm.formats.quant`), dequantised in registers
  (AVX-512, AVX2 + FMA or a portable loop; bf16 x times q4 in AVX512-BF16 dot
  products where the CPU has them), and `quant_dequantize`, W's rows in
  float32 or bfloat16 for the GEMM of a prompt chunk.
- `quant_gemm` (source: `csrc/quant_gemm.c`): the same product for dozens of rows (a
  decode step of many sequences), a GEMM whose packing of W is its dequantisation: a
  panel of columns at a time into the microkernel's layout (AVX512-BF16 pairs, or
  float32 for AVX-512F and AVX2 + FMA; not in the portable build).
- `quant_matmul_i8` (source: `csrc/quant_i8.c`): the same product with x first rounded
  to int8 blocks of 32 and integer dot products (AVX-512 VNNI, AVX2 or portable),
  llama.cpp's scheme, for `engine.quant_activations = int8`.

The source is compiled once per machine with the system C compiler
(`cc -O3 -march=native -fopenmp`) into a cache directory keyed by the source,
the compiler and the CPU (`$OWNLLM_KERNEL_CACHE`, default
`~/.cache/ownllm/kernels`, created 0700), written to a temporary name and renamed
into place so concurrent starts never load a half-written library. A library is
loaded only from a directory and file this user owns and no one else may write;
otherwise it is compiled again, into a private directory (one log line says why).
The compiler gets `COMPILE_TIMEOUT_S`; past it the engine uses torch. Every
wrapper checks the dtype, device, shape and memory layout the C code assumes and
raises TypeError or ValueError before a pointer crosses over (a QuantWeight, which is
frozen, on its first call; its checked pointers are kept); the values (slot
and block ids, lengths) are the caller's to keep in range.
OpenMP resolves to the libgomp torch has already loaded, so the kernels share
torch's thread pool. Without a compiler (or on another device, or with `engine.cpu_kernels =
false`) the engine uses its torch path, which computes the same thing.

Left out: prefill attention (compute-bound; SDPA does it well), fp16 (CPU models
run in float32 or bfloat16).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from functools import cache
from pathlib import Path

import torch

from ownllm.formats.quant import QuantWeight

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "cpu_kernels.c"
SOURCES = tuple(
    SOURCE.with_name(n) for n in ("cpu_kernels.c", "quant_kernels.c", "quant_gemm.c", "quant_i8.c")
)
HEADERS = tuple(SOURCE.with_name(n) for n in ("kernels_common.h", "quant_common.h"))
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=gnu11"]
COMPILE_TIMEOUT_S = 300.0  # a first build takes seconds; past this the compiler is killed
_SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16"}
_QUANT_TYPES = {"q4_0": 0, "q4_1": 1, "q8_0": 2, "int8": 3}  # csrc/quant_kernels.c's QT_*
_QUANT_PATHS = {2: "AVX-512", 1: "AVX2", 0: "portable"}
_I8_PATHS = {2: "AVX-512 VNNI", 1: "AVX2", 0: "portable"}  # csrc/quant_i8.c's I8_PATH
# csrc/quant_gemm.c's quant_gemm_path (3: bf16 pairs in vdpbf16ps, for bf16 x); 0: not built
_GEMM_PATHS = {3: "AVX512-BF16", 2: "AVX-512", 1: "AVX2", 0: None}
I8_TYPES = ("q4_0", "q4_1", "q8_0")  # what quant_matmul_i8 takes
_I8_CODES = frozenset(_QUANT_TYPES[t] for t in I8_TYPES)
_MAX_CACHED_WEIGHTS = 4096  # checked weights kept by `CpuKernels._quant_args` (a model: ~7 a layer)
_ENOMEM = 12  # what a kernel returns when its scratch allocation failed (OWNLLM_ENOMEM)
_P, _I64, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
# what the library's `decode_path` answers, as the startup log names it
_DECODE_PATHS = {
    3: "C (AVX-512 decode attention, AVX512-BF16)",
    2: "C (AVX-512 decode attention)",
    1: "C (portable loops, AVX2)",
    0: "C (portable loops)",
}


def cache_dir() -> Path:
    return Path(
        os.environ.get("OWNLLM_KERNEL_CACHE") or Path.home() / ".cache" / "ownllm" / "kernels"
    )


def _cpu_signature() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    flags = next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), "")
    return platform.machine() + flags


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def build(directory: Path | None = None, extra_flags: list[str] | None = None) -> Path:
    """Compile the kernels (once; later calls find the cached library) and return its path.
    `extra_flags`, e.g. `-DOWNLLM_NO_AVX512` for the portable loop only (tests)."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC or install gcc)")
    source = b"\0".join(path.read_bytes() for path in SOURCES + HEADERS)
    version = _run([compiler, "--version"]).stdout
    flags = FLAGS + list(extra_flags or ())
    key = hashlib.sha256(
        b"\0".join([source, version.encode(), _cpu_signature().encode(), " ".join(flags).encode()])
    ).hexdigest()[:16]
    directory = _private_dir(directory or cache_dir())
    target = directory / f"cpu_kernels-{key}.so"
    if target.is_file():
        reason = _writable_by_others(target, follow=False)
        if reason is None:
            return target
        log.warning("not loading %s (%s): compiling it again", target, reason)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".so.tmp")
    os.close(fd)
    start = time.perf_counter()
    try:
        done = _run([compiler, *flags, "-o", tmp, *map(str, SOURCES)])
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {done.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("compiled the C kernels in %.1fs into %s", time.perf_counter() - start, target)
    return target


def _run(command: list[str]) -> subprocess.CompletedProcess:
    """Run the compiler in its own process group, so a timeout kills its children too."""
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=COMPILE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise RuntimeError(
                f"{command[0]} ran past {COMPILE_TIMEOUT_S:g}s and was stopped"
            ) from None
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _writable_by_others(path: Path, *, follow: bool = True) -> str | None:
    """Why another user may have written `path`, or None when only this user can have."""
    st = os.stat(path, follow_symlinks=follow)
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"owned by uid {st.st_uid}, not {os.getuid()}"
    if st.st_mode & 0o022:
        return f"mode {stat.S_IMODE(st.st_mode):o}: writable by group or others"
    return None


def _private_dir(directory: Path) -> Path:
    """`directory` (created 0700) when no one else can write to it, else a fresh private one."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    reason = _writable_by_others(directory)
    if reason is None:
        return directory
    private = Path(tempfile.mkdtemp(prefix="ownllm-kernels-"))
    log.warning(
        "kernel cache %s is not private (%s): compiling into %s; chmod go-w it or set "
        "OWNLLM_KERNEL_CACHE",
        directory,
        reason,
        private,
    )
    return private


def _tensor(what: str, t: torch.Tensor, dtype: torch.dtype, ndim: int, rows: bool = False) -> None:
    """Raise unless `t` is a CPU `dtype` tensor of `ndim` dimensions laid out as the C code
    reads it: contiguous, or with `rows`, each row contiguous (the row stride is passed)."""
    if not isinstance(t, torch.Tensor) or t.dtype != dtype or not t.is_cpu:
        got = f"a {t.device.type} {t.dtype} tensor" if isinstance(t, torch.Tensor) else repr(t)
        raise TypeError(f"{what}: the C kernels need a cpu {dtype} tensor, got {got}")
    if t.dim() != ndim:
        raise ValueError(f"{what}: expected {ndim} dimensions, got shape {list(t.shape)}")
    if not t.is_contiguous() and not (rows and t.stride(-1) == 1):
        layout = "rows contiguous" if rows else "contiguous"
        raise ValueError(f"{what}: must be {layout}, got strides {t.stride()}")


def _misfit(name: str, expected: str, **tensors: torch.Tensor | None) -> ValueError:
    shapes = ", ".join(f"{k} {list(t.shape)}" for k, t in tensors.items() if t is not None)
    return ValueError(f"{name}: shapes do not fit {expected}: got {shapes}")


def _halves(kv_cache: torch.Tensor) -> tuple[int, int]:
    """The pointers of kv_cache[0] and kv_cache[1] (keys, values) of a contiguous cache,
    without making the two views."""
    base = kv_cache.data_ptr()
    return base, base + kv_cache.stride(0) * kv_cache.element_size()


def _done(name: str, code: int) -> None:
    if code == _ENOMEM:
        raise MemoryError(f"the C kernel {name} could not allocate its scratch memory")
    if code != 0:
        raise RuntimeError(f"the C kernel {name} failed with code {code}")


class CpuKernels:
    """The loaded library for one dtype; methods take torch tensors and check them."""

    def __init__(self, library: ctypes.CDLL, dtype: torch.dtype) -> None:
        suffix = _SUFFIX[dtype]
        self.dtype = dtype
        self._weights: dict[int, tuple[QuantWeight, tuple]] = {}  # see _quant_args
        self._rope_cache = getattr(library, f"rope_cache_{suffix}")
        self._rope_cache.argtypes = [_P, _I64, _I64, _I, _I, _I, _P, _P, _P, _P, _I]
        self._rope_cache.restype = None
        self._decode = getattr(library, f"decode_attention_{suffix}")
        self._decode.argtypes = [_P, _I64, _I, _I, _I, _I, _P, _P, _I, _P, _I, _P, _I, _F, _P, _I]
        self._decode.restype = _I
        self._add_rms_norm = getattr(library, f"add_rms_norm_{suffix}")
        self._add_rms_norm.argtypes = [_P, _P, _P, _P, _I64, _I64, _F, _I]
        self._add_rms_norm.restype = None
        self._silu_mul = getattr(library, f"silu_mul_{suffix}")
        self._silu_mul.argtypes = [_P, _I64, _P, _I64, _I64, _I]
        self._silu_mul.restype = None
        self._lora = getattr(library, f"lora_{suffix}")
        self._lora.argtypes = [_P, _I64, _P, _I64, _P, _I64, _P, _P, _I64, _I64, _I64, _I]
        self._lora.restype = _I
        self._quant_matmul = getattr(library, f"quant_matmul_{suffix}")
        self._quant_matmul.argtypes = [_P, _I64, _I64, _P, _I, _I64, _I64, _P, _P, _I64, _I]
        self._quant_matmul.restype = _I
        self._quant_dequantize = getattr(library, f"quant_dequantize_{suffix}")
        self._quant_dequantize.argtypes = [_P, _I, _I64, _I64, _P, _P, _I]
        self._quant_dequantize.restype = None
        self._quant_matmul_i8 = getattr(library, f"quant_matmul_i8_{suffix}")
        self._quant_matmul_i8.argtypes = [_P, _I64, _I64, _P, _I, _I64, _I64, _P, _I64, _I]
        self._quant_matmul_i8.restype = _I
        self._quant_gemm = getattr(library, f"quant_gemm_{suffix}")
        self._quant_gemm.argtypes = [_P, _I64, _I64, _P, _I, _I64, _I64, _P, _P, _I64, _I]
        self._quant_gemm.restype = _I
        gemm = library.quant_gemm_path()
        # the batched kernel's loop, None in the portable build (quant_gemm is not there);
        # float32 x runs AVX-512F where bf16 runs AVX512-BF16
        self.quant_gemm_path = _GEMM_PATHS[2 if gemm == 3 and dtype == torch.float32 else gemm]
        self.quant_path = _QUANT_PATHS[library.quant_path()]
        self.quant_i8_path = _I8_PATHS[library.quant_i8_path()]
        # bf16 x times q4_0 / q4_1 in AVX512-BF16 dot products (csrc/quant_kernels.c)
        self.quant_bf16_dot = bool(library.quant_bf16_dot())
        self.max_query_group = library.max_query_group()
        self._decode_path = library.decode_path
        self._decode_path.argtypes = [_I, _I, _I]

    def path(self, head_dim: int, query_group: int) -> str:
        """Which decode-attention loop the compiled library runs for this shape (its #ifdefs
        and shape checks answer), e.g. "C (AVX-512 decode attention)"."""
        code = self._decode_path(head_dim, query_group, int(self.dtype == torch.bfloat16))
        return _DECODE_PATHS[code]

    def lora(
        self,
        out: torch.Tensor,  # [T, out] rows contiguous, updated in place
        x: torch.Tensor,  # [T, in] rows contiguous
        a: torch.Tensor,  # [num_slots, in, R]
        b: torch.Tensor,  # [num_slots, R, out]
        row_slots: torch.Tensor,  # [T] int32, -1: no adapter
    ) -> None:
        """out[t] += (x[t] a[s]) b[s] with s = row_slots[t], for every row with a slot."""
        dtype = self.dtype
        _tensor("lora x", x, dtype, 2, rows=True)
        _tensor("lora out", out, dtype, 2, rows=True)
        _tensor("lora a", a, dtype, 3)
        _tensor("lora b", b, dtype, 3)
        _tensor("lora row_slots", row_slots, torch.int32, 1)
        (num_rows, in_features), (num_slots, _, rank) = x.shape, a.shape
        out_features = out.shape[1]
        if (
            out.shape[0] != num_rows
            or a.shape[1] != in_features
            or b.shape != (num_slots, rank, out_features)
            or row_slots.shape[0] != num_rows
        ):
            raise _misfit(
                "lora",
                "x [T, in], out [T, out], a [S, in, R], b [S, R, out], row_slots [T]",
                x=x,
                out=out,
                a=a,
                b=b,
                row_slots=row_slots,
            )
        code = self._lora(
            x.data_ptr(),
            x.stride(0),
            out.data_ptr(),
            out.stride(0),
            row_slots.data_ptr(),
            num_rows,
            a.data_ptr(),
            b.data_ptr(),
            in_features,
            rank,
            out_features,
            torch.get_num_threads(),
        )
        _done("lora", code)

    def quant_matmul(self, x: torch.Tensor, weight: QuantWeight) -> torch.Tensor:
        """x W^T [T, out] for x [T, in] (rows contiguous), W dequantised in registers."""
        data, qtype, out_features, in_features, scale = self._quant_args("quant_matmul", weight)
        _tensor("quant_matmul x", x, self.dtype, 2, rows=True)
        num_rows, width = x.shape
        if width != in_features:
            raise ValueError(
                f"quant_matmul: x [T, {width}] does not fit a weight of {list(weight.shape)}"
            )
        out = torch.empty(num_rows, out_features, dtype=self.dtype)
        if num_rows == 0:
            return out
        code = self._quant_matmul(
            x.data_ptr(),
            x.stride(0),
            num_rows,
            data,
            qtype,
            out_features,
            in_features,
            scale,
            out.data_ptr(),
            out_features,  # a fresh out's row stride
            torch.get_num_threads(),
        )
        if code:
            _done("quant_matmul", code)
        return out

    def quant_gemm(self, x: torch.Tensor, weight: QuantWeight) -> torch.Tensor:
        """x W^T [T, out] for x of many rows (rows contiguous, csrc/quant_gemm.c): W dequantised
        a panel of columns at a time into the microkernel's layout, in this dtype (what
        `quant_dequantize` gives), float32 sums. Needs `quant_gemm_path` and in_features a
        multiple of 32 (`quant_gemm_takes`)."""
        data, qtype, out_features, in_features, scale = self._quant_args("quant_gemm", weight)
        _tensor("quant_gemm x", x, self.dtype, 2, rows=True)
        num_rows, width = x.shape
        if width != in_features:
            raise ValueError(
                f"quant_gemm: x [T, {width}] does not fit a weight of {list(weight.shape)}"
            )
        if not self.quant_gemm_takes(weight):
            raise ValueError(
                f"quant_gemm: not for a weight of {list(weight.shape)} in this build "
                f"(path {self.quant_gemm_path}; in_features must be a multiple of 32)"
            )
        out = torch.empty(num_rows, out_features, dtype=self.dtype)
        if num_rows == 0:
            return out
        code = self._quant_gemm(
            x.data_ptr(),
            x.stride(0),
            num_rows,
            data,
            qtype,
            out_features,
            in_features,
            scale,
            out.data_ptr(),
            out_features,  # a fresh out's row stride
            torch.get_num_threads(),
        )
        if code:
            _done("quant_gemm", code)
        return out

    def quant_gemm_takes(self, weight: QuantWeight) -> bool:
        """Whether `quant_gemm` multiplies by `weight`: the kernel is built here and K is whole
        blocks of 32 (int8 weights may have any width)."""
        return self.quant_gemm_path is not None and weight.in_features % 32 == 0

    def quant_matmul_i8(self, x: torch.Tensor, weight: QuantWeight) -> torch.Tensor:
        """x W^T [T, out] with each row of x rounded to int8 blocks of 32 first
        (`formats.quant.round_activations`) and integer dot products (csrc/quant_i8.c);
        W in one of I8_TYPES."""
        data, qtype, out_features, in_features, _ = self._quant_args("quant_matmul_i8", weight)
        if qtype not in _I8_CODES:
            raise ValueError(f"quant_matmul_i8 takes {', '.join(I8_TYPES)}, not {weight.qtype}")
        _tensor("quant_matmul_i8 x", x, self.dtype, 2, rows=True)
        num_rows, width = x.shape
        if width != in_features:
            raise ValueError(
                f"quant_matmul_i8: x [T, {width}] does not fit a weight of {list(weight.shape)}"
            )
        out = torch.empty(num_rows, out_features, dtype=self.dtype)
        if num_rows == 0:
            return out
        code = self._quant_matmul_i8(
            x.data_ptr(),
            x.stride(0),
            num_rows,
            data,
            qtype,
            out_features,
            in_features,
            out.data_ptr(),
            out_features,  # a fresh out's row stride
            torch.get_num_threads(),
        )
        if code:
            _done("quant_matmul_i8", code)
        return out

    def _quant_args(self, name: str, weight: QuantWeight) -> tuple:
        """(data pointer, type code, out, in, scale pointer) of `weight`, checked on its first
        call and kept: the model's weights are the same objects step after step, and a
        QuantWeight is frozen. The entry holds the weight, so its id is not reused while
        cached; past _MAX_CACHED_WEIGHTS entries (weights made per call) the cache starts over."""
        entry = self._weights.get(id(weight))
        if entry is not None and entry[0] is weight:
            return entry[1]
        self._check_quant(name, weight)
        scale = weight.scale
        args = (
            weight.data.data_ptr(),
            _QUANT_TYPES[weight.qtype],
            weight.out_features,
            weight.in_features,
            None if scale is None else scale.data_ptr(),
        )
        if len(self._weights) >= _MAX_CACHED_WEIGHTS:
            self._weights.clear()
        self._weights[id(weight)] = (weight, args)
        return args

    def quant_dequantize(self, weight: QuantWeight) -> torch.Tensor:
        """W dense [out, in] in this library's dtype."""
        self._check_quant("quant_dequantize", weight)
        out = torch.empty(weight.shape, dtype=self.dtype)
        self._quant_dequantize(
            weight.data.data_ptr(),
            _QUANT_TYPES[weight.qtype],
            weight.out_features,
            weight.in_features,
            None if weight.scale is None else weight.scale.data_ptr(),
            out.data_ptr(),
            torch.get_num_threads(),
        )
        return out

    @staticmethod
    def _check_quant(name: str, weight: QuantWeight) -> None:
        if not isinstance(weight, QuantWeight):
            raise TypeError(f"{name}: expected a QuantWeight, got {type(weight).__name__}")
        data_dtype = torch.int8 if weight.qtype == "int8" else torch.uint8
        _tensor(f"{name} weight", weight.data, data_dtype, 2)
        if weight.scale is not None:
            _tensor(f"{name} scale", weight.scale, torch.float32, 1)

    def add_rms_norm(
        self, x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float
    ) -> torch.Tensor:
        """x += delta (in place, when given); returns RMSNorm(x) * weight. x [T, hidden]
        and delta contiguous, weight [hidden]."""
        _tensor("add_rms_norm x", x, self.dtype, 2)
        _tensor("add_rms_norm weight", weight, self.dtype, 1)
        if delta is not None:
            _tensor("add_rms_norm delta", delta, self.dtype, 2)
        shape = x.shape
        if weight.shape[0] != shape[1] or (delta is not None and delta.shape != shape):
            raise _misfit(
                "add_rms_norm",
                "x [T, hidden], delta [T, hidden], weight [hidden]",
                x=x,
                delta=delta,
                weight=weight,
            )
        out = torch.empty_like(x)
        self._add_rms_norm(
            x.data_ptr(),
            None if delta is None else delta.data_ptr(),
            weight.data_ptr(),
            out.data_ptr(),
            x.shape[0],
            x.shape[1],
            eps,
            torch.get_num_threads(),
        )
        return out

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """SiLU(gate) * up for gate_up [T, 2 I] (gate first, rows contiguous): [T, I]."""
        _tensor("silu_mul gate_up", gate_up, self.dtype, 2, rows=True)
        num_rows, width = gate_up.shape
        if width % 2:
            raise ValueError(f"silu_mul gate_up: expected an even width, got {width}")
        out = torch.empty(num_rows, width // 2, dtype=gate_up.dtype)
        self._silu_mul(
            gate_up.data_ptr(),
            gate_up.stride(0),
            out.data_ptr(),
            num_rows,
            width // 2,
            torch.get_num_threads(),
        )
        return out

    def rope_cache(
        self,
        qkv: torch.Tensor,  # [T, (H + 2 Hkv) D], rows contiguous
        rope: torch.Tensor,  # [T, D] float32: cos half, sin half
        slots: torch.Tensor,  # [T] int64
        kv_cache: torch.Tensor,  # [2, blocks, block_size, Hkv, D]
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
    ) -> None:
        """Rotary on the q and k heads of qkv (in place); k and v written to their slots."""
        num_rows = qkv.shape[0]
        self._check_qkv("rope_cache", qkv, kv_cache, num_heads, num_kv_heads, head_dim)
        _tensor("rope_cache rope", rope, torch.float32, 2)
        _tensor("rope_cache slots", slots, torch.int64, 1)
        if rope.shape != (num_rows, head_dim) or slots.shape[0] != num_rows:
            raise _misfit(
                "rope_cache",
                f"qkv [T, *], rope [T, {head_dim}], slots [T]",
                qkv=qkv,
                rope=rope,
                slots=slots,
            )
        if num_rows == 0:
            return
        self._rope_cache(
            qkv.data_ptr(),
            num_rows,
            qkv.stride(0),
            num_heads,
            num_kv_heads,
            head_dim,
            rope.data_ptr(),
            slots.data_ptr(),
            *_halves(kv_cache),
            torch.get_num_threads(),
        )

    def decode_attention(
        self,
        qkv: torch.Tensor,  # [B, (H + 2 Hkv) D]: the decoding rows, q heads first
        kv_cache: torch.Tensor,  # [2, blocks, block_size, Hkv, D]
        tables: torch.Tensor,  # [B, max_blocks] int32
        ctx_lens: torch.Tensor,  # [B] int32
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        window: int | None,
    ) -> torch.Tensor:  # [B, H D]
        """Each row's query heads over its sequence's cached keys and values."""
        num_seqs = qkv.shape[0]
        if num_heads % num_kv_heads or num_heads // num_kv_heads > self.max_query_group:
            raise ValueError(
                f"decode_attention: {num_heads} query heads on {num_kv_heads} kv heads "
                f"(a whole group of at most {self.max_query_group} per kv head)"
            )
        self._check_qkv("decode_attention", qkv, kv_cache, num_heads, num_kv_heads, head_dim)
        _tensor("decode_attention tables", tables, torch.int32, 2)
        _tensor("decode_attention ctx_lens", ctx_lens, torch.int32, 1)
        if tables.shape[0] != num_seqs or ctx_lens.shape[0] != num_seqs:
            raise _misfit(
                "decode_attention",
                "qkv [B, *], tables [B, *], ctx_lens [B]",
                qkv=qkv,
                tables=tables,
                ctx_lens=ctx_lens,
            )
        out = torch.empty(num_seqs, num_heads * head_dim, dtype=qkv.dtype)
        code = self._decode(
            qkv.data_ptr(),
            qkv.stride(0),
            num_seqs,
            num_heads,
            num_kv_heads,
            head_dim,
            *_halves(kv_cache),
            kv_cache.shape[2],
            tables.data_ptr(),
            tables.shape[1],
            ctx_lens.data_ptr(),
            window or 0,
            head_dim**-0.5,
            out.data_ptr(),
            torch.get_num_threads(),
        )
        _done("decode_attention", code)
        return out

    def _check_qkv(self, name, qkv, kv_cache, num_heads, num_kv_heads, head_dim) -> None:
        _tensor(f"{name} qkv", qkv, self.dtype, 2, rows=True)
        _tensor(f"{name} kv_cache", kv_cache, self.dtype, 5)
        cache = kv_cache.shape
        if (
            qkv.shape[1] != (num_heads + 2 * num_kv_heads) * head_dim
            or cache[0] != 2
            or cache[3] != num_kv_heads
            or cache[4] != head_dim
        ):
            raise _misfit(
                name,
                f"{num_heads} + 2 x {num_kv_heads} heads of {head_dim}: qkv [*, "
                f"{(num_heads + 2 * num_kv_heads) * head_dim}], kv_cache [2, *, *, "
                f"{num_kv_heads}, {head_dim}]",
                qkv=qkv,
                kv_cache=kv_cache,
            )


@cache
def _library() -> ctypes.CDLL:
    return ctypes.CDLL(str(build()))


def load(dtype: torch.dtype, device: torch.device, num_heads: int, num_kv_heads: int):
    """The kernels for this model, or None (with one log line saying why) to use torch."""
    if device.type != "cpu":
        log.info("the C kernels are for CPU, using the torch path on %s", device)
        return None
    if dtype not in _SUFFIX:
        log.info("the C kernels take float32 and bfloat16, using the torch path for %s", dtype)
        return None
    try:
        kernels = CpuKernels(_library(), dtype)
    except (OSError, RuntimeError, AttributeError) as e:
        log.warning("CPU kernels unavailable, using the torch path: %s", e)
        return None
    group = num_heads // num_kv_heads
    if group > kernels.max_query_group:
        log.info(
            "%d query heads per kv head is above the C kernels' %d, using the torch path",
            group,
            kernels.max_query_group,
        )
        return None
    return kernels
