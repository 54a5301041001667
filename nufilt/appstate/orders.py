"""Task orders: the paper's, seeded random ones and the user's own."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from ..evaluation import check_order, paper_orders
from .backbones import PAPER_GROUPS

ORDER_MODES = {
    "paper": "the paper's order",
    "random": "random, with a seed",
    "custom": "custom (typed)",
    "pool": "the pool's own order",
}


def order_modes(n_tasks: int) -> list[str]:
    """Order modes that apply to a task count (the paper has orders for 8, 14 and 20 tasks)."""
    return [m for m in ORDER_MODES if m != "paper" or n_tasks in PAPER_GROUPS]


def parse_custom_order(text: str, tasks: Sequence[str]) -> list[str]:
    """Task names or 1-based positions separated by commas, spaces, arrows or new lines."""
    parts = [p for p in re.split(r"[,\s;>→]+", text.replace("->", ",")) if p]
    if not parts:
        raise ValueError("the custom order is empty: type the task names (or 1-based numbers) in merge order")
    order = []
    for part in parts:
        if part.isdigit():
            index = int(part)
            if not 1 <= index <= len(tasks):
                raise ValueError(f"task number {index} is out of range 1..{len(tasks)}")
            order.append(tasks[index - 1])
        else:
            order.append(part)
    return check_order(order, list(tasks), len(tasks))


def resolve_order(tasks: Sequence[str], mode: str, paper_index: int = 1, seed: int = 0, custom: str = "") -> list[str]:
    """The merge order for `mode` (see `ORDER_MODES`); ValueError with the reason for bad input."""
    tasks = list(tasks)
    if mode == "paper":
        if len(tasks) not in PAPER_GROUPS:
            raise ValueError(f"the paper has task orders for {', '.join(map(str, PAPER_GROUPS))} tasks, "
                             f"not {len(tasks)}")
        return paper_orders(tasks, [paper_index])[0]
    if mode == "random":
        order = list(tasks)
        random.Random(seed).shuffle(order)
        return order
    if mode == "custom":
        return parse_custom_order(custom, tasks)
    if mode == "pool":
        return tasks
    raise ValueError(f"unknown order mode {mode!r}; known: {', '.join(ORDER_MODES)}")
