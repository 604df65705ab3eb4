"""A fake CUDA device for the CPU build of torch: CI has no GPU, yet every CUDA code path must run.

What it is: tensors that hold real CPU data but report ``device`` ``cuda:0`` and ``is_cuda`` True
(``FakeCudaTensor``), and a ``TorchFunctionMode`` (``FakeCuda``) that

- makes ``.to("cuda")``, ``.cuda()``, ``Module.to("cuda")`` (through
  ``torch.__future__.set_swap_module_params_on_conversion``) and factories with ``device="cuda"``
  give such tensors, and ``.cpu()`` / ``.to("cpu")`` plain ones;
- applies CUDA's device rules: an operation mixing a cuda tensor with a CPU tensor of dimension > 0
  raises as on a GPU (0-dim CPU scalars are allowed, and so are CPU index tensors in ``x[idx]``, as on
  a GPU); ``.numpy()`` of a cuda tensor raises; a random factory on cuda with a CPU generator (or the
  other way round) raises;
- stubs ``torch.cuda``: ``is_available``, ``device_count``, ``synchronize``, memory statistics
  (``mem_get_info`` reports a fake 80 GiB card), RNG state and seeding, ``get_device_name``, and
  ``torch.Generator(device="cuda")``; maps ``torch.autocast("cuda", ...)`` to CPU autocast;
- counts host-to-device copies (``FakeCuda.h2d_copies``), so a test can see a tensor copied to the
  device on every forward.

What it checks: device plumbing (every tensor on the device it should be, nothing mixed, nothing
copied each forward that could stay). What it cannot check: CUDA kernels and their numerics,
memory use, speed, ``torch.compile`` / CUDA graphs, Ray's GPU accounting: those are steps of the
GPU script (benchmarks/gpu/run.sh, docs/scale-out.md).

``DFLORA_FAKE_CUDA=1`` with ``tests/fake_cuda_site`` on ``PYTHONPATH`` puts a subprocess under it
too (a ``sitecustomize``), for ``dflora compare --jobs 2`` and the CLI.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

CUDA = torch.device("cuda", 0)
CPU = torch.device("cpu")
FAKE_TOTAL_MEMORY = 80 * 2**30  # mem_get_info: an H100-sized card


class DeviceError(RuntimeError):
    """What CUDA raises when tensors on two devices meet (the message starts like torch's own)."""


class FakeCudaTensor(torch.Tensor):
    """CPU data that says it lives on cuda:0."""

    @staticmethod
    def wrap(t: torch.Tensor) -> FakeCudaTensor:
        """A fresh result seen as cuda (no copy): a leaf stays a leaf, a result keeps its autograd graph."""
        if isinstance(t, FakeCudaTensor):
            return t
        with torch._C.DisableTorchFunctionSubclass():
            if t.grad_fn is None:
                return torch.Tensor._make_subclass(FakeCudaTensor, t, t.requires_grad)
            return t.as_subclass(FakeCudaTensor)

    @property
    def device(self) -> torch.device:  # noqa: D401 - mirrors torch.Tensor.device
        return CUDA

    @property
    def is_cuda(self) -> bool:
        return True

    @property
    def is_cpu(self) -> bool:
        return False

    def __repr__(self, **kw) -> str:
        with torch._C.DisableTorchFunctionSubclass():
            return f"FakeCuda({torch.Tensor.__repr__(self.as_subclass(torch.Tensor))})"

    def numpy(self, *a, **k):
        raise TypeError(
            "can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor to host memory first."
        )


class FakeGenerator(torch.Generator):
    """``torch.Generator(device="cuda")``: a CPU generator that reports cuda."""

    def __new__(cls, device="cpu"):
        return torch._C.Generator.__new__(cls)  # a CPU generator underneath

    def __init__(self, device="cpu"):
        self._fake_device = torch.device(device)
        if self._fake_device.type == "cuda":
            self._fake_device = CUDA

    @property
    def device(self) -> torch.device:
        return self._fake_device


def _is_cuda_device(device) -> bool:
    if device is None:
        return False
    if isinstance(device, int):
        return True
    return torch.device(device).type == "cuda"


def _copy(t: torch.Tensor) -> torch.Tensor:
    """A device move: a new plain tensor (differentiable, as a real copy between devices is)."""
    with torch._C.DisableTorchFunctionSubclass():
        return t.clone()


def _to_fake(x):
    return tree_map(
        lambda t: FakeCudaTensor.wrap(t) if isinstance(t, torch.Tensor) and not isinstance(t, FakeCudaTensor) else t, x
    )


_RANDOM = {torch.randn, torch.rand, torch.randint, torch.randperm, torch.normal, torch.bernoulli, torch.multinomial,
           torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.random_, torch.Tensor.bernoulli_,
           torch.Tensor.exponential_}  # fmt: skip
_INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__}
_PASS = {torch.Tensor.device.__get__, torch.Tensor.is_cuda.__get__}
# operations that accept tensors on two devices on a GPU too (copies, and torch's own bookkeeping)
_CROSS_DEVICE = {torch.Tensor.copy_, torch._has_compatible_shallow_copy_type}


def _parse_to(args, kwargs):
    """(device or None, the rest) of a Tensor.to call."""
    device = kwargs.get("device")
    for a in args:
        if isinstance(a, (str, torch.device, int)) and not isinstance(a, bool):
            with contextlib.suppress(RuntimeError, TypeError):
                return torch.device(a) if not isinstance(a, int) else CUDA
        if isinstance(a, torch.Tensor):
            return a.device
    return torch.device(device) if device is not None else None


class FakeCuda(TorchFunctionMode):
    """The mode (see the module docstring). Use ``with fake_cuda():``."""

    def __init__(self):
        super().__init__()
        self.h2d_copies = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _PASS:
            return func(*args, **kwargs)
        if func is torch.Tensor.cuda:
            if isinstance(args[0], FakeCudaTensor):
                return args[0]
            self.h2d_copies += 1
            return FakeCudaTensor.wrap(_copy(args[0]))
        if func is torch.Tensor.cpu:
            return _copy(args[0]) if isinstance(args[0], FakeCudaTensor) else args[0]
        if func is torch.Tensor.numpy and isinstance(args[0], FakeCudaTensor):
            args[0].numpy()
        if func is torch.Tensor.to:
            return self._to(args, kwargs)
        if (
            func is torch.Tensor.copy_
            and isinstance(args[0], FakeCudaTensor)
            and not isinstance(args[1], FakeCudaTensor)
        ):
            self.h2d_copies += 1
        self._check_generator(func, args, kwargs)
        device = kwargs.get("device")
        if device is not None and _is_cuda_device(device):
            kwargs["device"] = CPU
            with torch._C.DisableTorchFunctionSubclass():
                return _to_fake(func(*args, **kwargs))
        if device is not None:
            kwargs["device"] = torch.device(device)
        self._check_mixing(func, args, kwargs)
        fake = any(isinstance(t, FakeCudaTensor) for t in tree_flatten((args, kwargs))[0])
        with torch._C.DisableTorchFunctionSubclass():  # the tensors themselves: in-place changes stay theirs
            out = func(*args, **kwargs)
        if not fake or func in (torch.Tensor.tolist, torch.Tensor.item, torch.Tensor.numel, torch.Tensor.size,
                                torch.Tensor.dim):  # fmt: skip
            return out
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.startswith("_") and args and isinstance(args[0], FakeCudaTensor):
            return args[0]  # an in-place method returns its own tensor
        return _to_fake(out)

    def _to(self, args, kwargs):
        t, rest = args[0], args[1:]
        target = _parse_to(rest, kwargs)
        on_cuda = isinstance(t, FakeCudaTensor)
        to_cuda = on_cuda if target is None else target.type == "cuda"
        dtype = kwargs.get("dtype") or next((a for a in rest if isinstance(a, torch.dtype)), None)
        if to_cuda == on_cuda and (dtype is None or dtype == t.dtype) and not kwargs.get("copy", False):
            return t  # nothing to do: torch returns the tensor itself
        self.h2d_copies += to_cuda and not on_cuda
        with torch._C.DisableTorchFunctionSubclass():
            base = t.to(dtype) if dtype is not None and dtype != t.dtype else _copy(t)
        return FakeCudaTensor.wrap(base) if to_cuda else base

    @staticmethod
    def _check_generator(func, args, kwargs):
        gen = kwargs.get("generator")
        if gen is None or func not in _RANDOM:
            return
        gen_cuda = isinstance(gen, FakeGenerator) and gen.device.type == "cuda"
        if func in (torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.random_, torch.Tensor.bernoulli_,
                    torch.Tensor.exponential_):  # fmt: skip
            on_cuda = isinstance(args[0], FakeCudaTensor)
        else:
            on_cuda = _is_cuda_device(kwargs.get("device")) or any(isinstance(a, FakeCudaTensor) for a in args)
        if gen_cuda != on_cuda:
            raise DeviceError(f"Expected a '{'cuda' if on_cuda else 'cpu'}' device type for generator but found "
                              f"'{'cuda' if gen_cuda else 'cpu'}'")  # fmt: skip

    @staticmethod
    def _check_mixing(func, args, kwargs):
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if not any(isinstance(t, FakeCudaTensor) for t in tensors):
            return
        if func in _CROSS_DEVICE:
            return
        if func in _INDEXING:  # x[idx] and x[idx] = v accept CPU index tensors on a GPU
            tensors = [args[0]] + ([args[2]] if func is torch.Tensor.__setitem__ and len(args) > 2 else [])
        cpu = [t for t in tensors if not isinstance(t, FakeCudaTensor) and t.dim() > 0]
        if cpu:
            name = getattr(func, "__name__", str(func))
            raise DeviceError(
                "Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu! "
                f"(in {name}: a CPU tensor of shape {tuple(cpu[0].shape)})"
            )


class _Cuda:
    """What ``torch.cuda`` answers under the fake device."""

    def __init__(self):
        self.rng_seed = 0  # the global CUDA generator's state: what a seeding changed is visible to tests

    def manual_seed(self, seed):
        self.rng_seed = int(seed)

    manual_seed_all = manual_seed

    def get_rng_state(self, *a):
        return torch.tensor([self.rng_seed], dtype=torch.int64).view(torch.uint8)

    def set_rng_state(self, state, *a):
        self.rng_seed = int(state.view(torch.int64)[0])

    def get_rng_state_all(self):
        return [self.get_rng_state()]

    def set_rng_state_all(self, states):
        self.set_rng_state(states[0])

    is_available = staticmethod(lambda: True)
    device_count = staticmethod(lambda: 1)
    current_device = staticmethod(lambda: 0)
    is_initialized = staticmethod(lambda: True)
    synchronize = staticmethod(lambda *a, **k: None)
    empty_cache = staticmethod(lambda: None)
    get_device_name = staticmethod(lambda *a: "Fake CUDA (CPU tensors)")
    seed = staticmethod(lambda: None)
    is_bf16_supported = staticmethod(lambda *a, **k: True)

    @staticmethod
    def get_device_properties(*a):
        from types import SimpleNamespace

        return SimpleNamespace(name="Fake CUDA (CPU tensors)", total_memory=FAKE_TOTAL_MEMORY, major=9, minor=0,
                               multi_processor_count=132)  # fmt: skip

    @staticmethod
    def mem_get_info(*a):
        return FAKE_TOTAL_MEMORY - 2**30, FAKE_TOTAL_MEMORY

    @staticmethod
    def max_memory_allocated(*a, **k):
        return 2**20

    max_memory_reserved = memory_allocated = memory_reserved = max_memory_allocated

    @staticmethod
    def reset_peak_memory_stats(*a, **k):
        return None


def _autocast(real):
    class Autocast(real):  # torch.autocast("cuda", ...) runs CPU autocast on the CPU data
        def __init__(self, device_type, *a, **k):
            super().__init__("cpu" if device_type == "cuda" else device_type, *a, **k)

    return Autocast


_ACTIVE: list = []  # the mode in force, if any
REAL = os.environ.get("DFLORA_REAL_CUDA") == "1"  # the GPU script replays the coverage set on a real card


@contextlib.contextmanager
def fake_cuda():
    """Everything under the fake device: the mode, torch.cuda stubs, generators and autocast.

    Yields the mode; ``mode.cuda`` is the ``torch.cuda`` stub (its ``rng_seed``). With
    ``DFLORA_REAL_CUDA=1`` on a machine with a GPU it does nothing: the same tests run on the card."""
    from unittest import mock

    if REAL:
        if not torch.cuda.is_available():
            raise RuntimeError("DFLORA_REAL_CUDA=1 but torch sees no GPU")
        yield None
        return
    if _ACTIVE:  # already under it (a process put under it by tests/fake_cuda_site): one device, one mode
        yield _ACTIVE[-1]
        return
    stubs = _Cuda()
    names = [n for n in dir(_Cuda) if not n.startswith("_")]
    mode = FakeCuda()
    with contextlib.ExitStack() as stack:
        for n in names:
            stack.enter_context(mock.patch.object(torch.cuda, n, getattr(stubs, n), create=True))
        stack.enter_context(mock.patch.object(torch, "Generator", FakeGenerator))
        stack.enter_context(mock.patch.object(torch, "autocast", _autocast(torch.amp.autocast_mode.autocast)))
        stack.enter_context(mock.patch.object(torch.amp, "autocast", _autocast(torch.amp.autocast_mode.autocast)))
        old = torch.__future__.get_swap_module_params_on_conversion()
        torch.__future__.set_swap_module_params_on_conversion(True)
        stack.callback(torch.__future__.set_swap_module_params_on_conversion, old)
        stack.enter_context(mode)
        mode.cuda = stubs
        _ACTIVE.append(mode)
        stack.callback(_ACTIVE.pop)
        yield mode


_PROCESS: list = []  # the context entered for the whole process (kept alive here)


def install_for_process() -> None:
    """Enter the fake device for the rest of this process (the subprocesses' sitecustomize)."""
    ctx = fake_cuda()
    ctx.__enter__()
    _PROCESS.append(ctx)


def subprocess_env(env: dict | None = None) -> dict:
    """The environment that puts a child Python process under the fake device (tests/fake_cuda_site)."""
    out = dict(os.environ if env is None else env)
    if REAL:  # on a real card the child uses it as it is
        return out
    site = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_cuda_site")
    out["PYTHONPATH"] = os.pathsep.join([site, *filter(None, [out.get("PYTHONPATH")])])
    out["DFLORA_FAKE_CUDA"] = "1"
    return out
