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


# ---------------------------------------------------------------------------------------------------------------------
# Graphs written by hand: the networks of examples/resnet8.yaml and examples/adding-lstm.yaml as a user writes them,
# as nn.Modules of their own (not built by trainq), to measure what trainq's graph costs per step
# ---------------------------------------------------------------------------------------------------------------------


class BasicBlock(torch.nn.Module):
    def __init__(self, channels_in: int, channels: int, stride: int):
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(channels_in, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Identity() if stride == 1 and channels_in == channels else nn.Sequential(
            nn.Conv2d(channels_in, channels, 1, stride, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet8(torch.nn.Module):
    def __init__(self, channels: int, classes: int):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 64, 2))
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class LastStepLstm(torch.nn.Module):
    def __init__(self, features: int, units: int, outputs: int):
        super().__init__()
        self.lstm = torch.nn.LSTM(features, units, batch_first=True)
        self.head = torch.nn.Linear(units, outputs)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def hand_written(spec: JobSpec, shape) -> torch.nn.Module:
    """The hand-written module for one of the two examples' specs."""
    if spec.dataset.name == "adding":
        return LastStepLstm(shape[-1], 32, 1)
    return ResNet8(shape[0], spec.dataset.info().classes)


def hand_loop(spec: JobSpec, device: str = "cpu", loader: bool = False) -> dict:
    """The hand-written module trained for the spec's epochs, with the validation loss each epoch and the test loss at
    the end, as any loop a user trusts does: over tensors already on the device (the bare loop: randperm and
    indexing), or fed by a DataLoader over a TensorDataset with loss.item() each step (the tutorial's loop).
    Returns the seconds of training and evaluating alone, without loading data or building the model."""
    import time

    torch.manual_seed(spec.training.seed)
    data = load(spec.dataset)
    model = hand_written(spec, tuple(data.train.x.shape[1:])).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.optimizer.lr)
    classes = spec.dataset.info().classes
    loss_fn = torch.nn.CrossEntropyLoss() if classes else torch.nn.MSELoss()
    target = (lambda y: y) if classes else (lambda y: y.float().view(-1, 1))
    size = spec.training.batch_size
    if loader:
        train = DataLoader(TensorDataset(data.train.features(), data.train.y), batch_size=size, shuffle=True)
        val = DataLoader(TensorDataset(data.val.features(), data.val.y), batch_size=256)
        test = DataLoader(TensorDataset(data.test.features(), data.test.y), batch_size=256)
    else:
        on = data.to(device)
        x_all, y_all = on.train.features(), on.train.y
        val = [(on.val.features()[i:i + 256], on.val.y[i:i + 256]) for i in range(0, len(on.val.y), 256)]
        test = [(on.test.features()[i:i + 256], on.test.y[i:i + 256]) for i in range(0, len(on.test.y), 256)]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()

    def evaluate(batches) -> float:
        model.eval()
        total = torch.zeros((), device=device)
        count = 0
        with torch.no_grad():
            for x, y in batches:
                x, y = x.to(device), y.to(device)
                total += loss_fn(model(x), target(y)) * len(y)
                count += len(y)
        return float(total) / count

    for _epoch in range(spec.training.epochs):
        model.train()
        if loader:
            for x, y in train:
                x, y = x.to(device), y.to(device)
                optimizer.zero_grad()
                loss = loss_fn(model(x), target(y))
                loss.backward()
                optimizer.step()
                loss.item()
        else:
            order = torch.randperm(len(x_all), device=device)
            for start in range(0, len(x_all), size):
                idx = order[start:start + size]
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model(x_all[idx]), target(y_all[idx])).backward()
                optimizer.step()
        evaluate(val)
    test_loss = evaluate(test)
    return {"seconds": time.perf_counter() - started, "test_loss": test_loss}
