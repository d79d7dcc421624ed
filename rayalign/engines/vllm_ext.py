"""Methods vLLM mixes into its worker (``LLM(worker_extension_cls=...)``), called through
``llm.collective_rpc("<method>", args=...)``: they run where the model lives, which may be another
process (vLLM CPU runs engine core and worker in their own processes). Tensors travel as one
safetensors blob: vLLM's RPC encoder turns a bare tensor argument into an untyped
``[dtype, shape, buffer-index]`` list that the worker cannot rebuild, while bytes pass through intact.

Weights are loaded with vLLM's ``reload_weights``, not ``model.load_weights``: reload re-runs each
layer's post-load processing, which on CPU repacks every linear weight into a oneDNN kernel handle.
That repacking also leaves the linear layers' ``weight`` parameters empty, so the fingerprint reads such
a weight back through the layer's own kernel (``x @ W.T`` with ``x`` the identity): it measures the
matrix the engine really multiplies by, not a copy kept on the side. Embedding tables keep their
``weight`` (the lookup) and get a packed copy too (the LM head's matmul, shared with the table when the
embeddings are tied); that copy is read back and must equal the table, else the fingerprint is NaN:
reload repacks a layer only when its own name arrives, so a tied model synced without ``lm_head.weight``
looks up new embeddings but scores logits with the old ones (measured: log-probs off by 0.17).
"""

from __future__ import annotations

from typing import Iterable, Iterator

import safetensors.torch
import torch

from rayalign.engines.base import weights_fingerprint

PROBE_ROWS = 1024  # identity rows per kernel call when reading a packed weight back (bounds memory)


def pack_weights(weights: Iterable[tuple[str, torch.Tensor]]) -> bytes:
    """HF-named tensors as one safetensors blob. safetensors refuses tensors that share memory, so a
    tied tensor's second name (lm_head aliasing embed_tokens) gets its own copy."""
    seen: set[int] = set()
    tensors = {}
    for name, tensor in weights:
        tensor = tensor.detach().cpu().contiguous()
        if tensor.untyped_storage().data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        tensors[name] = tensor
    return safetensors.torch.save(tensors)


def packed_weight_rows(layer: torch.nn.Module, k: int) -> Iterator[torch.Tensor]:
    """The rows of ``W.T`` [k, N] of a layer's packed CPU kernel copy (vLLM's ``cpu_linear``), a block
    at a time. Multiplying by the identity is exact in floating point."""
    for start in range(0, k, PROBE_ROWS):
        stop = min(start + PROBE_ROWS, k)
        rows = torch.zeros(stop - start, k, dtype=layer.weight.dtype)
        rows[:, start:stop] = torch.eye(stop - start, dtype=rows.dtype)  # identity rows start..stop
        yield layer.cpu_linear(rows, layer.weight, None)


def running_tensors(model: torch.nn.Module) -> Iterator[torch.Tensor]:
    """Every weight the model computes with, each shared tensor once (vLLM ties lm_head by reusing the
    embedding module, which ``modules()`` yields once; the data_ptr check covers shared parameters)."""
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            packed = name == "weight" and hasattr(module, "cpu_linear")
            if packed and param.numel() == 0:
                yield from packed_weight_rows(module, module.input_size_per_partition)  # emptied by repacking
                continue
            if packed and param.numel() and not _packed_copy_matches(module, param):
                yield torch.tensor([float("nan")])  # its kernel multiplies by stale weights (checked for
                # every module: a tied LM head may be a second module sharing the table)
            if param.numel() and param.data_ptr() not in seen:
                seen.add(param.data_ptr())
                yield param


def _packed_copy_matches(module: torch.nn.Module, weight: torch.Tensor) -> bool:
    start = 0
    for rows in packed_weight_rows(module, weight.shape[1]):
        if not torch.equal(rows, weight[:, start:start + rows.shape[0]].t()):
            return False
        start += rows.shape[0]
    return True


class WeightSyncExtension:
    """Mixed into vLLM's worker class; ``self`` is the worker (``self.model_runner`` holds the model).
    Method names must not clash with the worker's own (it has an ``update_weights``)."""

    @torch.no_grad()
    def load_hf_weights(self, blob: bytes) -> None:
        """Load a safetensors blob of HF-named tensors (see ``pack_weights``), all in one call: reload
        processes a layer once all its tensors arrived, so a layer split over two calls would run
        half-loaded. The worker's ``reload_weights`` wraps the model runner's in the vLLM config
        context that layer post-processing reads."""
        self.reload_weights(weights_iterator=iter(safetensors.torch.load(bytes(blob)).items()))

    @torch.no_grad()
    def weights_fingerprint(self) -> tuple[float, float]:
        return weights_fingerprint(running_tensors(self.model_runner.get_model()))
