"""PyTorch reference of `models.CNN` for the benchmarks: the same nets, the obvious way.

Training throughput in eager mode on CPU or CUDA, in float32 or in bfloat16 autocast with
channels_last (PyTorch's usual fast path on NVIDIA GPUs).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from metaqnn import models
from metaqnn.architecture import FC, GAP, Architecture, Conv, Pool


def torch_net(arch: Architecture, shape: tuple[int, ...]) -> torch.nn.Module:
  """The same network as `models.CNN`, written the obvious way in PyTorch (NCHW)."""

  class GlobalMean(torch.nn.Module):
    def forward(self, x):
      return x.mean(dim=(2, 3))

  layers, channels, flat, in_shape = [], shape[-1], None, shape
  infos = models.layer_summary(arch, shape)
  for layer, info in zip(arch.layers, infos):
    if isinstance(layer, Conv):
      layers += [torch.nn.Conv2d(channels, layer.filters, layer.kernel, padding="same"),
                 torch.nn.ReLU()]
      channels = layer.filters
    elif isinstance(layer, Pool):
      layers.append(torch.nn.MaxPool2d(layer.kernel, layer.stride))
    elif isinstance(layer, GAP):
      layers += [torch.nn.Conv2d(channels, layer.classes, 1), GlobalMean()]
      flat = layer.classes
    elif not isinstance(arch.terminal, GAP) or isinstance(layer, FC):
      units = layer.units if isinstance(layer, FC) else layer.classes
      fan_in = flat if flat is not None else int(np.prod(in_shape))
      layers += [torch.nn.Flatten(), torch.nn.Linear(fan_in, units)]
      layers += [torch.nn.ReLU()] if isinstance(layer, FC) else []
      flat = units
    if info.dropout:
      layers.append(torch.nn.Dropout(info.dropout))
    in_shape = info.output_shape
  return torch.nn.Sequential(*layers)


def _sync(device: str) -> None:
  if device.startswith("cuda"):
    torch.cuda.synchronize()


def torch_throughput(arch: Architecture, shape: tuple[int, ...], batch: int, steps: int,
                     device: str = "cpu", bf16: bool = False, eval_examples: int = 0) -> dict:
  """Images/s of `steps` Adam steps in PyTorch eager, batches gathered from uint8 on the
  device; with `bf16`, bfloat16 autocast and channels_last. With `eval_examples`, also the
  seconds of one no-grad pass over that many examples."""
  torch.manual_seed(0)
  memory_format = torch.channels_last if bf16 else torch.contiguous_format
  net = torch_net(arch, shape).to(device, memory_format=memory_format)
  opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
  data = torch.randint(0, 256, (batch * steps, shape[2], shape[0], shape[1]),
                       dtype=torch.uint8, device=device)
  labels = torch.randint(0, 10, (batch * steps,), device=device)
  loss_fn = torch.nn.CrossEntropyLoss()
  autocast = lambda: torch.autocast(device.split(":")[0], torch.bfloat16, enabled=bf16)

  def batch_of(i):
    idx = torch.arange(i * batch, (i + 1) * batch, device=device) % len(labels)
    x = (data[idx].float() / 255.0 - 0.5).contiguous(memory_format=memory_format)
    return x, labels[idx]

  def step(i):
    x, y = batch_of(i)
    opt.zero_grad(set_to_none=True)
    with autocast():
      loss = loss_fn(net(x), y)
    loss.backward()
    opt.step()

  step(0)  # Warm-up.
  _sync(device)
  start = time.perf_counter()
  for i in range(steps):
    step(i)
  _sync(device)
  out = {"images_per_s": batch * steps / (time.perf_counter() - start)}
  if eval_examples:
    net.eval()
    start = time.perf_counter()
    with torch.no_grad(), autocast():
      for i in range(-(-eval_examples // batch)):
        net(batch_of(i)[0]).argmax(-1)
    _sync(device)
    out["eval_s"] = time.perf_counter() - start
  return out
