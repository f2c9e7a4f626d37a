"""The PyTorch backend: a training session over the ``nn.Module`` that ``torch_lowering``
builds (optimizers, losses, precision, devices and memory), and the export artifacts
(TorchScript, torch.export). Weights pass through unchanged: PyTorch's layout is canonical."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnspec.backends.protocol import BackendError
from cnnspec.backends.torch_layout import channels_last_faster, convolutional, native_bf16
from cnnspec.backends.torch_lowering import LOWERINGS as LOWERINGS  # re-exported: the backend module is its front
from cnnspec.backends.torch_lowering import GraphModule
from cnnspec.backends.torch_lowering import build as build
from cnnspec.graph.dag import Graph
from cnnspec.graph.tuning import frozen_norm_layers, multipliers
from cnnspec.spec.training import TrainConfig

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda p, c, **fast: torch.optim.SGD(p, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov, weight_decay=c.weight_decay, **fast),
    "adagrad": lambda p, c, **fast: torch.optim.Adagrad(p, lr=c.lr, weight_decay=c.weight_decay, eps=c.eps, **fast),
    "rmsprop": lambda p, c, **fast: torch.optim.RMSprop(p, lr=c.lr, alpha=c.alpha, eps=c.eps, weight_decay=c.weight_decay, momentum=c.momentum),
    "adadelta": lambda p, c, **fast: torch.optim.Adadelta(p, lr=c.lr, rho=c.rho, eps=c.eps, weight_decay=c.weight_decay),
    "adam": lambda p, c, **fast: torch.optim.Adam(p, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay, **fast),
    "adamw": lambda p, c, **fast: torch.optim.AdamW(p, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay, **fast),
}


# Optimizers with one fused kernel for the whole update on CPU and CUDA: the same
# arithmetic as the per-parameter loop a hand-written script gets by default, in one pass
# over memory. On 2 cores, one step for the 11.7M weights of ResNet-18: SGD 5.7 -> 3.8 ms,
# Adam 29.5 -> 5.5 ms (benchmarks/bench_memory_format.py measures whole training steps).
FUSED = frozenset({"sgd", "adagrad", "adam", "adamw"})


def _one_hot_mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(outputs, F.one_hot(targets, outputs.shape[1]).to(outputs.dtype))


LOSSES: dict[str, Callable[[TrainConfig], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = {
    "cross_entropy": lambda c: nn.CrossEntropyLoss(label_smoothing=c.label_smoothing),
    "mse": lambda c: _one_hot_mse,  # outputs against one-hot targets
    "hinge": lambda c: nn.MultiMarginLoss(),  # multi-class hinge, margin 1 (Weston and Watkins)
}


_PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


class DeviceError(BackendError):
    """The device asked for is not there; the message says what is."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise DeviceError(f"unknown device '{device}': use auto, cpu, cuda, cuda:N or mps") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"device '{device}' asked for, but PyTorch {torch.__version__} sees no CUDA GPU")
        if resolved.index is not None and resolved.index >= count:
            raise DeviceError(f"device '{device}' asked for, but there are {count} CUDA GPU(s): cuda:0 .. cuda:{count - 1}")
    if resolved.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError("device 'mps' asked for, but this PyTorch has no MPS (Apple GPU) support here")
    return resolved


class TorchSession:
    """One network on one device with its optimizer: the harness's Session protocol."""

    def __init__(
        self, graph: Graph, config: TrainConfig, device: str = "auto", precision: str = "auto", compile: bool = False
    ) -> None:
        self.graph = graph
        self.config = config
        self._device = resolve_device(device)
        self.device = str(self._device)
        cuda = self._device.type == "cuda"
        if precision == "auto":
            precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
        if precision not in _PRECISIONS:
            raise DeviceError(f"unknown precision '{precision}': use bf16, fp16 or fp32")
        if precision == "fp16" and not cuda:
            raise DeviceError("fp16 training needs a CUDA GPU; use bf16 or fp32 on this device")
        self.precision = precision
        self._autocast_dtype = _PRECISIONS[precision]
        self._normalization: tuple[Any, ...] = (None,)  # (key, scale, mean, std on the device), made on first use
        torch.manual_seed(config.seed)
        module = GraphModule(graph).to(self._device)
        if config.memory_format != "auto":
            self._channels_last, self.layout = config.memory_format == "channels_last", f"{config.memory_format}: asked"
        elif cuda:
            self._channels_last, self.layout = True, "channels-last: cuDNN's faster layout for convolutions"
        else:  # no rule holds on every CPU: measured once per CPU and network (backends/torch_layout.py)
            self._channels_last, self.layout = channels_last_faster(graph, module, min(config.batch_size, 8))
            if precision == "fp32" and convolutional(graph) and native_bf16():
                self.layout += "; this CPU computes bf16 natively: --precision bf16 (mixed precision) may train several times faster"
        if self._channels_last:
            module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self._module = module
        self._forward: Callable[[torch.Tensor], torch.Tensor] = torch.compile(module) if compile else module
        self._train_forward = self._forward  # a distributed session trains through DDP
        self.optimizer, self._names = self._optimizer(graph, config, module)
        frozen = frozen_norm_layers(graph, config)
        self._frozen_norms = [module for name, module in module.named_modules() if name in frozen]
        for norm in self._frozen_norms:
            norm.eval()
        self._loss = LOSSES[config.loss](config)
        self._scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    @staticmethod
    def _optimizer(graph: Graph, config: TrainConfig, module: nn.Module) -> tuple[torch.optim.Optimizer, list[str]]:
        """Frozen parameters get no gradient and no optimizer state; the others are grouped
        by their (lr, weight decay) multipliers, one parameter group each."""
        scaled = multipliers(graph, config)
        groups: dict[tuple[float, float], list[str]] = {}
        for name, parameter in module.named_parameters():
            parameter.requires_grad_(name in scaled)
            if name in scaled:
                groups.setdefault(scaled[name], []).append(name)
        parameters = dict(module.named_parameters())
        c = config.optimizer
        param_groups = [
            {"params": [parameters[n] for n in names], "lr": c.lr * lr_mult, "weight_decay": c.weight_decay * decay_mult, "lr_mult": lr_mult}
            for (lr_mult, decay_mult), names in groups.items()
        ]
        devices = {parameter.device.type for parameter in parameters.values()}
        fast = {"fused": True} if c.name in FUSED and devices <= {"cpu", "cuda"} else {}
        return OPTIMIZERS[c.name](param_groups, c, **fast), [n for names in groups.values() for n in names]

    @property
    def model(self) -> nn.Module:
        return self._module

    # -- weights --

    def get_weights(self) -> dict[str, np.ndarray]:
        return {
            name: tensor.detach().float().cpu().numpy()
            for name, tensor in self._module.state_dict().items()
            if not name.endswith("num_batches_tracked")
        }

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        state = self._module.state_dict()
        for name, array in weights.items():
            if name not in state:
                raise KeyError(f"no weight '{name}' in the torch model")
            state[name].copy_(torch.from_numpy(np.ascontiguousarray(array)).to(state[name].dtype))

    # -- steps --

    def inputs(self, x: np.ndarray, scale: float, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
        """Raw pixels to the device as they are (uint8: a quarter of the bytes), then
        normalised there, with the float32 operations of ``Normalization.apply``."""
        if self._normalization[0] != (scale, mean, std):
            on_device = lambda values: torch.tensor(values, dtype=torch.float32, device=self._device)  # noqa: E731
            self._normalization = ((scale, mean, std), on_device(scale), on_device(mean).reshape(-1, 1, 1), on_device(std).reshape(-1, 1, 1))
        _, scale_t, mean_t, std_t = self._normalization
        tensor = torch.from_numpy(x).to(self._device, non_blocking=True)
        tensor = tensor.float() if tensor.dtype != torch.float32 else tensor.clone()  # a new tensor, normalised in place
        tensor.mul_(scale_t)
        if tensor.dim() == 4:
            tensor.sub_(mean_t).div_(std_t)
        return self._inputs(tensor)

    def _inputs(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        tensor = x if isinstance(x, torch.Tensor) else torch.from_numpy(x).to(self._device, non_blocking=True)
        return tensor.contiguous(memory_format=torch.channels_last) if self._channels_last and tensor.dim() == 4 else tensor

    def _autocast(self) -> Any:
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self._device.type, dtype=self._autocast_dtype)

    def _mode(self, training: bool) -> None:
        if self._module.training != training:  # .train() walks every module: only on a change
            self._module.train(training)
            for norm in self._frozen_norms:  # frozen batch norm keeps its running statistics
                norm.eval()

    def train_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        self._mode(True)
        inputs, targets = self._inputs(x), torch.from_numpy(y).to(self._device, non_blocking=True)
        with self._autocast():
            outputs = self._train_forward(inputs)
        loss = self._loss(outputs if outputs.dtype == torch.float32 else outputs.float(), targets)
        objective = self._objective(loss, outputs)
        self.optimizer.zero_grad(set_to_none=True)
        clip = self.config.clip_grad_norm
        if self._scaler is not None:
            self._scaler.scale(objective).backward()
            if clip is not None:
                self._scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self._module.parameters(), clip)
            self._scaler.step(self.optimizer)
            self._scaler.update()
        else:
            objective.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(self._module.parameters(), clip)
            self.optimizer.step()
        if not len(x):
            return 0.0, 0
        with torch.no_grad():
            stats = torch.stack([loss.detach() * len(x), (outputs.argmax(1) == targets).sum().float()])
        loss_sum, correct = stats.tolist()  # one device sync per step
        return loss_sum, int(correct)

    def _objective(self, loss: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        """What the backward pass differentiates: the batch's mean loss here."""
        return loss

    @torch.no_grad()
    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        self._mode(False)
        targets = torch.from_numpy(y).to(self._device)
        with self._autocast():
            outputs = self._forward(self._inputs(x)).float()
        return float(self._loss(outputs, targets)) * len(x), outputs.cpu().numpy()

    @torch.no_grad()
    def activations(self, x: np.ndarray, layers: Collection[str] | None = None) -> dict[str, np.ndarray]:
        self._mode(False)
        with self._autocast():
            values = self._module.activations(self._inputs(x), layers)
        return {name: value.float().contiguous().cpu().numpy() for name, value in values.items()}

    def gradients(self, x: np.ndarray, direction: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(every layer's output, and the input under 'input'; the gradient of
        sum(output * direction) with respect to each), evaluation mode, fp32."""
        self._mode(False)
        inputs = self._inputs(x).detach().float().requires_grad_(True)
        values = {"input": inputs} | self._module.activations(inputs)
        for value in values.values():
            if value.requires_grad and not value.is_leaf:
                value.retain_grad()
        output = values[self.graph.output]
        (output * torch.as_tensor(direction, dtype=output.dtype, device=output.device)).sum().backward()
        self._module.zero_grad(set_to_none=True)
        host = {name: value.detach().float().contiguous().cpu().numpy() for name, value in values.items()}
        grads = {name: (value.grad.float().contiguous().cpu().numpy() if value.grad is not None else np.zeros_like(host[name]))
                 for name, value in values.items()}
        return host, grads

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> np.ndarray:
        self._mode(False)
        with self._autocast():
            return self._forward(self._inputs(x)).float().cpu().numpy()

    def set_learning_rate(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)

    # -- optimizer state, keyed by weight name --

    def optimizer_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        state = self.optimizer.state_dict()
        arrays = {}
        for index, slots in state["state"].items():
            for slot, value in slots.items():
                arrays[f"{self._names[index]}::{slot}"] = torch.as_tensor(value).detach().float().cpu().numpy()
        groups = [{k: v for k, v in group.items() if k != "params"} for group in state["param_groups"]]
        return arrays, {"param_groups": groups}

    def load_optimizer_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        index = {name: i for i, name in enumerate(self._names)}
        parameters = dict(self._module.named_parameters())
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, array in arrays.items():
            name, slot = key.split("::")
            tensor = torch.from_numpy(np.array(array))
            if slot != "step" and tensor.shape == parameters[name].shape:
                # in the weight's own layout (channels-last for a convolution here): a fused
                # update walks weight, gradient and state as one flat buffer each
                tensor = torch.empty_like(parameters[name], dtype=tensor.dtype).copy_(tensor)
            state.setdefault(index[name], {})[slot] = tensor if slot == "step" else tensor.to(self._device)
        groups = self.optimizer.state_dict()["param_groups"]
        for group, saved in zip(groups, meta["param_groups"], strict=True):
            group.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})

    def available_memory(self) -> int | None:
        return _free_memory(self._device)


def _free_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return None


def workspace_bytes(graph: Graph) -> int:
    return 0  # oneDNN and cuDNN convolve without keeping im2col columns


def available_memory(device: str) -> tuple[str, int | None]:
    """(resolved device, its free bytes or None), before anything is allocated on it."""
    resolved = resolve_device(device)
    return str(resolved), _free_memory(resolved)


def open_session(
    graph: Graph, config: TrainConfig, device: str = "auto", precision: str = "auto", compile: bool = False
) -> TorchSession:
    return TorchSession(graph, config, device, precision, compile)


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """A PyTorch state_dict file, loaded safely (``weights_only``: tensors, never code)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.detach().float().numpy() for k, v in state.items() if isinstance(v, torch.Tensor)}


def _eval_module(graph: Graph, weights: dict[str, np.ndarray]) -> GraphModule:
    module = GraphModule(graph).eval()
    state = module.state_dict()
    for name, array in weights.items():
        state[name].copy_(torch.from_numpy(np.ascontiguousarray(array)))
    return module


def _runner(module: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[np.ndarray], np.ndarray]:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).detach().float().numpy()

    return run


class TorchScriptArtifact:
    def __init__(self, graph: Graph, weights: dict[str, np.ndarray], options: dict[str, Any]) -> None:
        example = torch.zeros((2, *graph.input_shape))
        with torch.no_grad():
            self.module = torch.jit.trace(_eval_module(graph, weights), example)
        self.run = _runner(self.module)

    def save(self, path: Path, metadata: dict[str, str]) -> None:
        import json

        torch.jit.save(self.module, str(path), _extra_files={"cnnspec.json": json.dumps(metadata)})


class TorchExportArtifact:
    """A torch.export ExportedProgram with a dynamic batch axis."""

    def __init__(self, graph: Graph, weights: dict[str, np.ndarray], options: dict[str, Any]) -> None:
        example = torch.zeros((2, *graph.input_shape))
        batch = torch.export.Dim("batch", min=1, max=1 << 20)
        self.program = torch.export.export(_eval_module(graph, weights), (example,), dynamic_shapes={"x": {0: batch}})
        self.run = _runner(self.program.module())

    def save(self, path: Path, metadata: dict[str, str]) -> None:
        import json

        torch.export.save(self.program, str(path), extra_files={"cnnspec.json": json.dumps(metadata)})


EXPORTS: dict[str, Callable[[Graph, dict[str, np.ndarray], dict[str, Any]], Any]] = {
    "torchscript": TorchScriptArtifact,
    "torch-export": TorchExportArtifact,
}


LOADERS: dict[str, Callable[[Path], Callable[[np.ndarray], np.ndarray]]] = {
    "torchscript": lambda path: _runner(torch.jit.load(str(path), map_location="cpu")),
    "torch-export": lambda path: _runner(torch.export.load(str(path)).module()),
}
