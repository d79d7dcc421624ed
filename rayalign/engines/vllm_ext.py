"""Methods vLLM mixes into its worker (``LLM(worker_extension_cls=...)``), called through
``llm.collective_rpc("<method>", args=...)``: they run where the model lives, which may be another
process (the serving engine's core; the batch engine runs in its caller's). Weights travel as a
safetensors file in shared memory (``write_weights``; only its path goes through the RPC), one way for
both engines: pushing 136 MB through vLLM's message hops (client -> engine core -> worker, as it was)
took 0.7 s, the file costs one write and one read of memory. A bare tensor argument would not do either: vLLM's RPC encoder turns it into an untyped
``[dtype, shape, buffer-index]`` list that the worker cannot rebuild.

Weights are loaded with vLLM's ``reload_weights``, not ``model.load_weights``: reload re-runs each
layer's post-load processing, which on CPU repacks every linear weight into a oneDNN kernel handle.
That repacking also leaves the linear layers' ``weight`` parameters empty, so the fingerprint reads such
a weight back through the layer's own kernel (``x @ W.T`` with ``x`` rows of the identity): it measures
the matrix the engine really multiplies by, not a copy kept on the side. It reads the columns the sync
fingerprint probes (``engines/base.probe``), not the whole matrix. Embedding tables keep their
``weight`` (the lookup) and get a packed copy too (the LM head's matmul, shared with the table when the
embeddings are tied); that copy is read back and must equal the table, else the fingerprint is NaN:
reload repacks a layer only when its own name arrives, so a tied model synced without ``lm_head.weight``
looks up new embeddings but scores logits with the old ones (measured: log-probs off by 0.17).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterable, Iterator

import safetensors.torch
import torch

from rayalign.engines.base import probe, probe_columns, weights_fingerprint
from rayalign.engines.flat_weights import FlatWeights

SHM = Path("/dev/shm")


def write_weights(weights: Iterable[tuple[str, torch.Tensor]]) -> Path:
    """HF-named tensors (or a :class:`FlatWeights`, written as it is) as one safetensors file, in shared
    memory when it has room (a container's /dev/shm is often 64 MB), else in the temp directory; the
    caller removes it."""
    flat = weights if isinstance(weights, FlatWeights) else FlatWeights.pack(weights)
    room = SHM.is_dir() and os.access(SHM, os.W_OK) and shutil.disk_usage(SHM).free > 2 * flat.buffer.size
    path = Path(SHM if room else tempfile.gettempdir()) / f"rayalign-weights-{uuid.uuid4().hex}.safetensors"
    flat.write(path)
    return path


def packed_columns(layer: torch.nn.Module, k: int, columns: torch.Tensor) -> torch.Tensor:
    """``W[:, columns].T`` of a layer's packed CPU kernel copy (vLLM's ``cpu_linear``), read through
    the kernel with rows of the identity; multiplying by the identity is exact in floating point."""
    rows = torch.zeros(len(columns), k, dtype=layer.weight.dtype)
    rows[torch.arange(len(columns)), columns] = 1
    return layer.cpu_linear(rows, layer.weight, None)


def running_tensors(model: torch.nn.Module, version: int) -> Iterator[torch.Tensor]:
    """Every weight the model computes with, probed as the sync fingerprint reads it at ``version``,
    each shared tensor once (vLLM ties lm_head by reusing the embedding module, which ``modules()``
    yields once; the data_ptr check covers shared parameters)."""
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            packed = name == "weight" and hasattr(module, "cpu_linear")
            if packed and param.numel() == 0:  # emptied by repacking: read back through the kernel
                k = getattr(module, "input_size_per_partition", None) or module.input_size  # ReplicatedLinear: whole
                yield packed_columns(module, k, probe_columns(k, version))
                continue
            if packed and param.numel() and not _packed_copy_matches(module, param, version):
                yield torch.tensor([float("nan")])  # its kernel multiplies by stale weights (checked for
                # every module: a tied LM head may be a second module sharing the table)
            if param.numel() and param.data_ptr() not in seen:
                seen.add(param.data_ptr())
                yield probe(param, version)


def _packed_copy_matches(module: torch.nn.Module, weight: torch.Tensor, version: int) -> bool:
    columns = probe_columns(weight.shape[1], version)
    return torch.equal(packed_columns(module, weight.shape[1], columns), weight[:, columns].t())


class WeightSyncExtension:
    """Mixed into vLLM's worker class; ``self`` is the worker (``self.model_runner`` holds the model).
    Method names must not clash with the worker's own (it has an ``update_weights``)."""

    @torch.no_grad()
    def load_hf_weights(self, path: str) -> None:
        """Load a safetensors file of HF-named tensors (see ``write_weights``), all in one call: reload
        processes a layer once all its tensors arrived, so a layer split over two calls would run
        half-loaded. The worker's ``reload_weights`` wraps the model runner's in the vLLM config
        context that layer post-processing reads."""
        self.reload_weights(weights_iterator=iter(safetensors.torch.load_file(path).items()))

    @torch.no_grad()
    def weights_fingerprint(self, version: int) -> tuple[float, float]:
        return weights_fingerprint(running_tensors(self.model_runner.get_model(), version))
