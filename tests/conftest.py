import torch


def small_mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(12, 48), torch.nn.ReLU(), torch.nn.Linear(48, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)
    )


def make_optimizer(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    raise ValueError(name)


def batch_for_step(step: int, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic data per step, so an interrupted run sees the same batches."""
    generator = torch.Generator().manual_seed(1000 + step)
    inputs = torch.randn(batch_size, 12, generator=generator)
    targets = (inputs[:, :4].argmax(dim=1) + (inputs[:, 4] > 0).long()) % 4
    return inputs, targets


def train_step(model, optimizer, step: int) -> float:
    inputs, targets = batch_for_step(step)
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(inputs), targets)
    loss.backward()
    optimizer.step()
    return loss.item()
