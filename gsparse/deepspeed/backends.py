"""DeepSpeed ZeRO backends: masks and counters live only for this rank's partition.

ZeRO-1/2 (and DeepSpeed's BF16 optimizer) flatten each parameter group and give every rank one
contiguous fp32 partition; ZeRO-3 splits every parameter on its own and packs the rank's slices
into fp32 sub-groups. Either way, a layer's local piece is one contiguous range of one flat fp32
tensor that the inner torch optimizer steps, and the rank's range of a parameter comes after the
ranges of lower ranks, which is what the shared tie rule needs.

The inner optimizer's step hooks fire at accumulation boundaries only, never on an fp16 overflow
step, with the flat partition's gradient already reduced, unscaled and clipped; they fire once
per group (ZeRO-1/2), per sub-group (ZeRO-3) or once for all (BF16 optimizer).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist

from gsparse.backends.base import Backend, zero_inactive_
from gsparse.backends.pytorch import TorchBackend
from gsparse.deepspeed.compat import UnsupportedLayout, require as _require
from gsparse.selection import LocalSlice


class ProcessGroupCommunicator:
    """Sums over a torch.distributed process group (the data-parallel group)."""

    def __init__(self, group=None):
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.bytes_reduced = 0  # payload of all sparse-state collectives so far (monitoring, benchmarks)

    def all_reduce_sum(self, tensor: torch.Tensor) -> None:
        self.bytes_reduced += tensor.numel() * tensor.element_size()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)


@dataclass(frozen=True)
class LocalPiece:
    """Where this rank's piece of one layer lives."""

    flat: int  # index of the flat fp32 tensor (group / sub-group)
    offset: int  # first element inside that flat tensor
    start: int  # global flat index of the first element inside the parameter
    length: int


class FlatPartitionBackend(Backend):
    """Layers as contiguous ranges of the inner optimizer's flat fp32 tensors."""

    def __init__(self, zero_optimizer, flats: Sequence[torch.Tensor], pieces: Sequence[LocalPiece], group):
        self.zero_optimizer = zero_optimizer
        self.optimizer = zero_optimizer.optimizer
        self.flats = list(flats)
        self.pieces = list(pieces)
        self.communicator = ProcessGroupCommunicator(group)
        self._flat_index = {id(flat): index for index, flat in enumerate(self.flats)}
        self._layers_of_flat: dict[int, list[int]] = {index: [] for index in range(len(self.flats))}
        for layer, piece in enumerate(self.pieces):
            self._layers_of_flat[piece.flat].append(layer)

    def _range(self, tensor: torch.Tensor, layer: int) -> torch.Tensor:
        piece = self.pieces[layer]
        return tensor.view(-1).narrow(0, piece.offset, piece.length)

    def local_slice(self, layer: int) -> LocalSlice:
        return LocalSlice(self.pieces[layer].start, self.pieces[layer].length)

    def weight(self, layer: int) -> torch.Tensor:
        return self._range(self.flats[self.pieces[layer].flat], layer).detach()

    def grad(self, layer: int) -> torch.Tensor | None:
        grad = self.flats[self.pieces[layer].flat].grad
        return None if grad is None else self._range(grad, layer).to(torch.float32)

    def mask_gradients(self, masks: Sequence[tuple[int, torch.Tensor]]) -> None:
        for layer, mask in masks:
            grad = self.flats[self.pieces[layer].flat].grad
            if grad is not None:
                zero_inactive_(self._range(grad, layer), mask)

    def add_to_gradient(self, layer: int, term: torch.Tensor) -> None:
        grad = self.flats[self.pieces[layer].flat].grad
        self._range(grad, layer).add_(term.to(grad.dtype))

    @torch.no_grad()
    def mask_weights(self, masks: Sequence[tuple[int, torch.Tensor]]) -> None:
        for layer, mask in masks:
            zero_inactive_(self._range(self.flats[self.pieces[layer].flat], layer), mask)

    @torch.no_grad()
    def write_weights(self, layer: int, positions: torch.Tensor, values: torch.Tensor) -> None:
        piece = self._range(self.flats[self.pieces[layer].flat], layer)
        piece[positions] = values[positions].to(piece.dtype)

    def reset_optimizer_state(self, layer: int, positions: torch.Tensor) -> None:
        flat = self.flats[self.pieces[layer].flat]
        for value in self.optimizer.state.get(flat, {}).values():
            if torch.is_tensor(value) and value.shape == flat.shape:
                self._range(value, layer).masked_fill_(positions, 0)

    def install_step_hooks(self, engine) -> list:
        last_flat = len(self.flats) - 1

        def stepping_flats(optimizer) -> list[int]:
            current = [self._flat_index.get(id(p)) for group in optimizer.param_groups for p in group["params"]]
            if any(index is None for index in current):
                raise UnsupportedLayout("the inner optimizer steps a tensor that is not a known fp32 partition")
            return sorted(current)

        def layers_of(flats: list[int]) -> list[int]:
            return [layer for index in flats for layer in self._layers_of_flat[index]]

        def before_step(optimizer, args, kwargs):
            flats = stepping_flats(optimizer)
            if flats and flats[0] == 0:
                engine.start_step()
            engine.before_layers_step(layers_of(flats))

        def after_step(optimizer, args, kwargs):
            flats = stepping_flats(optimizer)
            engine.after_layers_step(layers_of(flats))
            if flats and flats[-1] == last_flat:
                engine.finish_step()

        return [self.optimizer.register_step_pre_hook(before_step),
                self.optimizer.register_step_post_hook(after_step)]


def partitioned_groups_layout(zero_optimizer, params: Sequence[torch.nn.Parameter]
                              ) -> tuple[list[torch.Tensor], list[LocalPiece]]:
    """ZeRO-1/2 and ``BF16_Optimizer``: the flat fp32 partitions and each parameter's piece on this rank."""
    if hasattr(zero_optimizer, "single_partition_of_fp32_groups"):
        flats, groups = zero_optimizer.single_partition_of_fp32_groups, zero_optimizer.bit16_groups
    else:
        _require(zero_optimizer, "fp32_groups_flat_partition", "bf16_groups")
        flats, groups = zero_optimizer.fp32_groups_flat_partition, zero_optimizer.bf16_groups
    group_of = {id(p): index for index, group in enumerate(groups) for p in group}
    pieces = []
    for param in params:
        if id(param) not in group_of:
            raise UnsupportedLayout("a sparse parameter is not in any ZeRO parameter group (frozen?)")
        mapping = getattr(param, "_hp_mapping", None)
        if mapping is None:  # nothing of this parameter on this rank
            pieces.append(LocalPiece(group_of[id(param)], 0, 0, 0))
        else:
            pieces.append(LocalPiece(group_of[id(param)], mapping.hp_fragment_address.start,
                                     mapping.lp_fragment_address.start, mapping.lp_fragment_address.numel))
    return list(flats), pieces


def stage3_layout(zero_optimizer, params: Sequence[torch.nn.Parameter]) -> tuple[list[torch.Tensor], list[LocalPiece]]:
    """ZeRO-3: the fp32 sub-groups and each parameter's piece on this rank (rank ``r`` holds
    elements ``[r*pn, (r+1)*pn)`` of every parameter, the last rank's tail being padding)."""
    _require(zero_optimizer, "fp32_partitioned_groups_flat", "grad_position", "get_param_id", "dp_process_group")
    rank = dist.get_rank(zero_optimizer.dp_process_group)
    pieces = []
    for param in params:
        _require(param, "ds_tensor", "ds_numel")
        sub_group, offset, partition_numel = zero_optimizer.grad_position[zero_optimizer.get_param_id(param)]
        start = rank * partition_numel
        length = max(0, min(partition_numel, param.ds_numel - start))
        pieces.append(LocalPiece(int(sub_group), int(offset), min(start, param.ds_numel), length))
    return list(zero_optimizer.fp32_partitioned_groups_flat), pieces


def refresh_low_precision(zero_optimizer, sub_groups: Sequence[int] | None = None) -> None:
    """Copy the fp32 partitions into the model's parameters (all groups, or the given ZeRO-3 sub-groups)."""
    if not hasattr(zero_optimizer, "fp32_partitioned_groups_flat"):
        zero_optimizer.update_lp_params()
        return
    with torch.no_grad():
        for sub_group in range(len(zero_optimizer.fp32_partitioned_groups_flat)) if sub_groups is None else sub_groups:
            zero_optimizer.fp16_partitioned_groups_flat[sub_group].copy_(
                zero_optimizer.fp32_partitioned_groups_flat[sub_group])
        if zero_optimizer.persistent_parameters:
            zero_optimizer.persistent_parameters[0].all_gather(zero_optimizer.persistent_parameters)


class PartitionedGroupsBackend(FlatPartitionBackend):
    """ZeRO-1/2 (``DeepSpeedZeroOptimizer``) and ``BF16_Optimizer``: one fp32 partition per group."""

    def __init__(self, zero_optimizer, params: Sequence[torch.nn.Parameter]):
        if getattr(zero_optimizer, "round_robin_gradients", False):
            raise UnsupportedLayout("zero_optimization.round_robin_gradients is not supported (its fragment "
                                    "mapping is wrong in DeepSpeed 0.19); set it to false")
        if getattr(zero_optimizer, "cpu_offload", False):
            raise UnsupportedLayout("zero_optimization.offload_optimizer is not supported by gsparse")
        _require(zero_optimizer, "update_lp_params", "optimizer", "dp_process_group")
        flats, pieces = partitioned_groups_layout(zero_optimizer, params)
        super().__init__(zero_optimizer, flats, pieces, zero_optimizer.dp_process_group)

    def sync_weights(self) -> None:
        self.zero_optimizer.update_lp_params()


class Stage3Backend(FlatPartitionBackend):
    """ZeRO-3: every parameter split on its own across the ranks (see :func:`stage3_layout`)."""

    def __init__(self, zero_optimizer, params: Sequence[torch.nn.Parameter]):
        _require(zero_optimizer, "fp16_partitioned_groups_flat", "persistent_parameters")
        if getattr(zero_optimizer, "offload_optimizer", False) or getattr(zero_optimizer, "offload_param", False):
            raise UnsupportedLayout("ZeRO-3 offload (optimizer or parameters) is not supported by gsparse")
        flats, pieces = stage3_layout(zero_optimizer, params)
        self._sub_groups_with_layers = sorted({piece.flat for piece in pieces})
        super().__init__(zero_optimizer, flats, pieces, zero_optimizer.dp_process_group)

    def read_scalars(self, params: Sequence[torch.nn.Parameter]) -> list[float]:
        # Outside forward a ZeRO-3 parameter may hold no data: its element lives in the
        # partition (ds_tensor) of the rank whose range starts at 0; one all-reduce shares it.
        for param in params:
            _require(param, "ds_tensor")
        device = params[0].ds_tensor.device if params else None
        values = torch.zeros(len(params), dtype=torch.float64, device=device)  # NCCL sums device tensors only
        rank = self.communicator.rank
        for index, param in enumerate(params):
            if rank * param.ds_tensor.numel() == 0 and param.ds_tensor.numel():
                values[index] = float(param.ds_tensor.reshape(-1)[0])
        self.communicator.all_reduce_sum(values)
        return values.tolist()

    def sync_weights(self) -> None:
        refresh_low_precision(self.zero_optimizer, self._sub_groups_with_layers)


class ReplicatedMasterBackend(TorchBackend):
    """Replicated training with fp32 master copies per parameter (DeepSpeed's unfused fp16/bf16
    optimizer at ZeRO stage 0): the masters are stepped; the model's low-precision parameters are
    copies refreshed after every step by DeepSpeed and here after changes made outside a step."""

    def __init__(self, params, masters, inner_optimizer):
        super().__init__(masters, inner_optimizer)
        self.low_precision = list(params)

    @torch.no_grad()
    def sync_weights(self) -> None:
        for low_precision, master in zip(self.low_precision, self.params):
            low_precision.copy_(master)
