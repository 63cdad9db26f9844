"""Model calls through ONNX Runtime's IO binding, for the providers that run on a GPU.

A plain `session.run` on CUDA or TensorRT copies each input to the device inside the call and
the output back at its end, from pageable memory. With a binding, each input is copied once per
batch into a device buffer that is kept while the batch shape stays the same, from a host
buffer that is page-locked (pinned) once and reused across batches, so the copy is a DMA rather
than a staged one; the output stays on the device until it is read back, once, after the run.
The device is one parameter: "cpu" gives the same path on a machine without a GPU, which is how
the tests check it against `session.run`.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np
import structlog

__all__ = ["BoundRun", "CudaHostPinner", "HostStaging", "Pinner"]

log = structlog.get_logger(__name__)

_CUDART_SONAMES = ("libcudart.so.12", "libcudart.so.13", "libcudart.so")


class Pinner(Protocol):
    """Page-locks host memory for fast copies to the device, and releases it."""

    def pin(self, buffer: np.ndarray) -> bool:
        """Lock `buffer`'s pages; False where that is not possible (it stays pageable)."""
        ...

    def unpin(self, buffer: np.ndarray) -> None:
        """Release a buffer `pin` locked."""
        ...


class CudaHostPinner:
    """`Pinner` through the CUDA runtime's cudaHostRegister, loaded with ctypes: the one that
    onnxruntime-gpu's CUDA provider has already loaded, so no other CUDA package is needed."""

    def __init__(self, load: Callable[[str], Any] = ctypes.CDLL) -> None:
        self._cudart: Any = None
        for soname in _CUDART_SONAMES:
            try:
                self._cudart = load(soname)
                break
            except OSError:
                continue

    def pin(self, buffer: np.ndarray) -> bool:
        if self._cudart is None:
            return False
        status = self._cudart.cudaHostRegister(
            ctypes.c_void_p(buffer.ctypes.data), ctypes.c_size_t(buffer.nbytes), ctypes.c_uint(0)
        )
        return int(status) == 0

    def unpin(self, buffer: np.ndarray) -> None:
        if self._cudart is not None:
            self._cudart.cudaHostUnregister(ctypes.c_void_p(buffer.ctypes.data))


class HostStaging:
    """One reusable host buffer per input, pinned once, grown (never shrunk) to the largest
    batch seen, into which each batch is copied before its one copy to the device."""

    def __init__(self, pinner: Pinner | None) -> None:
        self._pinner = pinner
        self._buffers: dict[str, tuple[np.ndarray, bool]] = {}

    def stage(self, name: str, array: np.ndarray) -> np.ndarray:
        """`array`'s values in the staging buffer of input `name`, with its shape and type."""
        buffer, pinned = self._buffers.get(name, (np.empty(0, np.uint8), False))
        if buffer.nbytes < array.nbytes:
            if pinned and self._pinner is not None:
                self._pinner.unpin(buffer)
            buffer = np.empty(max(array.nbytes, 2 * buffer.nbytes), dtype=np.uint8)
            pinned = self._pinner is not None and self._pinner.pin(buffer)
            if self._pinner is not None and not pinned:
                log.warning("host_buffer_not_pinned", input=name, bytes=buffer.nbytes)
            self._buffers[name] = (buffer, pinned)
        view = buffer[: array.nbytes].view(array.dtype).reshape(array.shape)
        np.copyto(view, array)
        return view

    @property
    def pinned(self) -> dict[str, bool]:
        """Whether each input's buffer is page-locked, for logs and tests."""
        return {name: pinned for name, (_, pinned) in self._buffers.items()}

    def close(self) -> None:
        """Release every pinned buffer."""
        for buffer, pinned in self._buffers.values():
            if pinned and self._pinner is not None:
                self._pinner.unpin(buffer)
        self._buffers.clear()


class BoundRun:
    """One model call through an IO binding on `device`: each input copied there once, the
    output read back once."""

    def __init__(
        self,
        session: Any,
        output_name: str,
        *,
        device: str,
        device_id: int = 0,
        staging: HostStaging | None = None,
    ) -> None:
        import onnxruntime  # here: `worker.scoring` says which extra to install without it

        self._ortvalue = onnxruntime.OrtValue
        self._session = session
        self._device = device
        self._device_id = device_id
        self._staging = staging
        self._output_name = output_name
        self._binding = session.io_binding()
        self._values: dict[str, Any] = {}

    def __call__(self, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        """The model's output for `feed`, on the host."""
        for name, array in feed.items():
            value = self._values.get(name)
            if value is None or tuple(value.shape()) != array.shape:
                value = self._ortvalue.ortvalue_from_shape_and_type(
                    list(array.shape), array.dtype.type, self._device, self._device_id
                )
                self._values[name] = value
                self._binding.bind_ortvalue_input(name, value)
            staged = self._staging.stage(name, array) if self._staging is not None else array
            value.update_inplace(np.ascontiguousarray(staged))
        # bound anew each call: the output ONNX Runtime allocated last time keeps its shape
        self._binding.bind_output(self._output_name, self._device, self._device_id)
        self._session.run_with_iobinding(self._binding)
        (out,) = self._binding.copy_outputs_to_cpu()
        return np.asarray(out)
