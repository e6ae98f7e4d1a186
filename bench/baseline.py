"""The loop users write by hand, the way the PyTorch tutorials write it: TensorDataset + DataLoader with
shuffle, loss.item() every step, evaluation under no_grad. The benchmarks compare trainq's engine with it."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from trainq.models.datasets import load
from trainq.models.layers import build_model
from trainq.models.spec import JobSpec


def tutorial_loop(spec: JobSpec, device: str = "cpu") -> dict:
    """Train the spec's model on its data for its epochs; return test accuracy. On a GPU the batches are copied
    to it one by one from the DataLoader, as the tutorials do."""
    torch.manual_seed(spec.training.seed)
    data = load(spec.dataset)
    model = build_model(spec, data.train.x.shape[1:]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.optimizer.lr)  # as the tutorials write it
    loss_fn = torch.nn.CrossEntropyLoss()
    # float32 tensors in memory, as a user's script holds them (trainq keeps 8-bit images as uint8)
    train_loader = DataLoader(TensorDataset(data.train.features(), data.train.y), batch_size=spec.training.batch_size,
                              shuffle=True)
    val_loader = DataLoader(TensorDataset(data.val.features(), data.val.y), batch_size=256)
    for _epoch in range(spec.training.epochs):
        model.train()
        running = 0.0
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            running += loss.item()
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in val_loader:
                x, y = x.to(device), y.to(device)
                out = model(x)
                correct += (out.argmax(1) == y).sum().item()
                total += len(y)
    model.eval()
    with torch.no_grad():
        test = data.test.to(device)
        accuracy = (model(test.features()).argmax(1) == test.y).float().mean().item()
    return {"test_accuracy": accuracy}


def bare_loop(spec: JobSpec, device: str = "cpu") -> dict:
    """The floor for eager PyTorch: in-memory tensors (on the device), randperm and indexing, no reporting."""
    torch.manual_seed(spec.training.seed)
    data = load(spec.dataset).to(device)
    model = build_model(spec, data.train.x.shape[1:]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.optimizer.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    x_all, y_all = data.train.features(), data.train.y
    size = spec.training.batch_size
    for _epoch in range(spec.training.epochs):
        model.train()
        order = torch.randperm(len(x_all), device=device)
        for start in range(0, len(x_all), size):
            idx = order[start:start + size]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x_all[idx]), y_all[idx]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(data.test.features()).argmax(1) == data.test.y).float().mean().item()
    return {"test_accuracy": accuracy}
